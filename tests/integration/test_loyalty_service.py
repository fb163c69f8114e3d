"""The points ledger driven by the shop's events (POST /v1/events) and the clock (run by hand at a
chosen moment), read back over HTTP and reconciled after every step, on SQLite and on PostgreSQL:
earning pending points that mature after the return window, refunds inside and after it (with
debt carried and recovered, or written off), first-in first-out expiry with a notice once per lot,
member levels (upgrade at once, downgrade at a review after the grace period), and bonuses with a
daily cap. What runs on SQLite alone is in tests/unit/test_loyalty_service.py.

Every moment is the suite's clock (held still by ``frozen_clock`` where a test reads it) and times
after it, never a calendar date."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from services.loyalty.entrypoints.common import PointsView
from shared import clock
from tests.conftest import Backend
from tests.loyalty_shop import (
    DAY,
    LADDER,
    SH,
    Shop,
    cancelled,
    error,
    event,
    local_midnight_after,
    open_shop,
    paid,
    refunded,
)


@pytest.fixture
async def shop(tmp_path: Path, backend: Backend) -> AsyncIterator[Shop]:
    async with open_shop(tmp_path, backend.database_url("loyalty")) as s:
        yield s


# ---------------------------------------------------------------- earning and maturing


async def test_a_paid_order_earns_pending_points_that_become_available_when_the_return_window_closes(
    shop: Shop, frozen_clock: clock.ManualClock
) -> None:
    now = frozen_clock.now()
    await shop.send(paid(shop, "u-1", "o-1", 8_099, at=now))  # ¥80.99 at 1 point per ¥1: 80 (floored)
    assert (await shop.points("u-1"))[("balance")] == 0
    assert (await shop.points("u-1"))["pending"] == 80

    assert (await shop.clock(now + 7 * DAY - timedelta(seconds=1)))["matured"] == 0  # the window is still open
    assert (await shop.points("u-1"))["pending"] == 80
    assert (await shop.clock(now + 7 * DAY))["matured"] == 1
    mine = await shop.points("u-1")
    assert (mine["balance"], mine["pending"]) == (80, 0)
    assert (await shop.clock(now + 8 * DAY))["matured"] == 0  # safe to run twice

    history = await shop.history("u-1")
    assert [(e["kind"], e["points"], e["pending"], e["order_id"]) for e in history] == [
        ("earn_pending", 0, 80, "o-1"),
        ("earn_available", 80, -80, "o-1"),
    ]
    assert history[1]["lot_id"] == "mature:o-1"
    earned = sorted(await shop.published("points.earned"), key=lambda e: e.data.status != "pending")
    assert [(e.data.status, e.data.points, e.data.cause) for e in earned] == [
        ("pending", 80, "order"),
        ("available", 80, "maturity"),
    ]
    # The end of the year after the one the points matured in (the default term), on the merchant's calendar.
    assert earned[1].data.expires_at == datetime((now + 7 * DAY).astimezone(SH).year + 2, 1, 1, tzinfo=SH)
    assert earned[1].data.balance == 80
    await shop.reconciled("u-1")


async def test_an_order_reported_after_its_window_closed_is_available_at_once(
    shop: Shop, frozen_clock: clock.ManualClock
) -> None:
    long_ago = frozen_clock.now() - 10 * DAY
    await shop.send(paid(shop, "u-1", "o-old", 5_000, at=long_ago))
    mine = await shop.points("u-1")
    assert (mine["balance"], mine["pending"]) == (50, 0)
    await shop.reconciled("u-1")


async def test_the_same_order_paid_twice_under_two_event_ids_earns_once(shop: Shop) -> None:
    await shop.send(paid(shop, "u-1", "o-1", 5_000), paid(shop, "u-1", "o-1", 5_000))
    assert (await shop.points("u-1"))["pending"] == 50
    await shop.reconciled("u-1")


# ---------------------------------------------------------------- refunds


async def test_a_refund_inside_the_window_cancels_pending_points_in_proportion(
    shop: Shop, frozen_clock: clock.ManualClock
) -> None:
    now = frozen_clock.now()
    await shop.send(paid(shop, "u-1", "o-1", 10_000, at=now))
    await shop.send(refunded(shop, "u-1", "o-1", 2_500, at=now + DAY))  # a quarter back: 25 points cancelled
    assert (await shop.points("u-1"))["pending"] == 75
    await shop.send(refunded(shop, "u-1", "o-1", 3_333, at=now + 2 * DAY))  # ceil(100 × 5833 / 10000) = 59 gone
    assert (await shop.points("u-1"))["pending"] == 41
    await shop.clock(now + 8 * DAY)
    mine = await shop.points("u-1")
    assert (mine["balance"], mine["pending"]) == (41, 0)
    assert [e["kind"] for e in await shop.history("u-1")] == ["earn_pending", "cancel", "cancel", "earn_available"]
    await shop.reconciled("u-1")


async def test_a_refund_after_the_window_claws_points_back_and_a_shortfall_is_recovered_from_later_earnings(
    shop: Shop, frozen_clock: clock.ManualClock
) -> None:
    now = frozen_clock.now()
    await shop.send(paid(shop, "u-1", "o-1", 10_000, at=now))
    await shop.clock(now + 8 * DAY)
    assert (await shop.points("u-1"))["balance"] == 100
    # The customer spends 80 of them.
    r = await shop.client.post(
        "/v1/loyalty/adjustments",
        headers=shop.headers,
        json={"customer_id": "u-1", "points": -80, "reason": "gift at the counter", "operator": "clerk-7"},
    )
    assert r.status_code == 201, r.text

    await shop.send(refunded(shop, "u-1", "o-1", 10_000, at=now + 9 * DAY, full=True))
    mine = await shop.points("u-1")
    assert (mine["balance"], mine["pending"], mine["debt"]) == (0, 0, 80)  # 20 clawed back, 80 owed
    await shop.reconciled("u-1")

    later = now + 10 * DAY
    await shop.send(paid(shop, "u-1", "o-2", 5_000, at=later))
    await shop.clock(later + 8 * DAY)
    mine = await shop.points("u-1")
    assert (mine["balance"], mine["debt"]) == (0, 30)  # the 50 earned repay 50 of the 80
    kinds = [e["kind"] for e in await shop.history("u-1")]
    assert kinds[-2:] == ["earn_available", "recover"]
    await shop.reconciled("u-1")


async def test_under_a_write_off_policy_a_clawback_shortfall_is_forgiven(shop: Shop) -> None:
    await shop.rules(ledger={"debt_policy": "write_off"}, earn={"return_window_days": 0})
    await shop.send(paid(shop, "u-1", "o-1", 10_000))
    await shop.client.post(
        "/v1/loyalty/adjustments",
        headers=shop.headers,
        json={"customer_id": "u-1", "points": -60, "reason": "spent", "operator": "ops"},
    )
    await shop.send(refunded(shop, "u-1", "o-1", 10_000, full=True))
    mine = await shop.points("u-1")
    assert (mine["balance"], mine["debt"]) == (0, 0)
    assert [e["kind"] for e in await shop.history("u-1")][-3:] == ["clawback", "clawback", "write_off"]
    await shop.reconciled("u-1")


async def test_a_cancelled_paid_order_loses_its_points_and_a_refund_before_the_payment_counts(shop: Shop) -> None:
    await shop.send(paid(shop, "u-1", "o-1", 6_000))
    await shop.send(cancelled(shop, "u-1", "o-1"))
    assert (await shop.points("u-1"))["pending"] == 0
    await shop.send(refunded(shop, "u-1", "o-1", 1_000))  # nothing left to refund: ignored
    # The refund of o-2 arrives before its payment (another channel, a retry): the payment earns
    # on what is left.
    await shop.send(refunded(shop, "u-2", "o-2", 4_000))
    await shop.send(paid(shop, "u-2", "o-2", 10_000))
    assert (await shop.points("u-2"))["pending"] == 60
    await shop.reconciled("u-1")
    await shop.reconciled("u-2")


# ---------------------------------------------------------------- expiry


async def test_lots_expire_first_in_first_out_with_one_notice_per_lot(
    shop: Shop, frozen_clock: clock.ManualClock
) -> None:
    await shop.rules(earn={"return_window_days": 0}, ledger={"expiry": {"type": "days", "days": 30}, "notice_days": 7})
    now = frozen_clock.now()
    t1, t2 = now - 20 * DAY, now - 10 * DAY
    await shop.send(paid(shop, "u-1", "o-1", 10_000, at=t1), paid(shop, "u-1", "o-2", 5_000, at=t2))
    first, second = local_midnight_after(t1, 31), local_midnight_after(t2, 31)
    assert (await shop.points("u-1"))["balance"] == 150
    # Taking 30 takes them from the lot that expires first.
    await shop.client.post(
        "/v1/loyalty/adjustments",
        headers=shop.headers,
        json={"customer_id": "u-1", "points": -30, "reason": "correction", "operator": "ops"},
    )
    assert [(e["lot_id"], e["points"]) for e in await shop.history("u-1")][-1] == ("mature:o-1", -30)

    assert (await shop.clock(first - 8 * DAY))["notified"] == 0
    assert (await shop.clock(first - 6 * DAY))["notified"] == 1
    assert (await shop.clock(first - 5 * DAY))["notified"] == 0  # once per lot
    [notice] = await shop.published("points.expiring")
    assert (notice.data.lot_id, notice.data.points, notice.data.expires_at) == ("mature:o-1", 70, first)
    assert notice.data.days_left == 5

    me = await shop.token("u-1")
    soon = (await shop.client.get("/v1/me/points", headers=me)).json()
    assert soon["balance"] == 120 and soon["expiring_within_days"] == 30
    assert [(datetime.fromisoformat(x["expires_at"]), x["points"]) for x in soon["expiring"]] == [
        (first, 70),
        (second, 50),
    ]
    assert PointsView.model_validate(soon).model_dump(mode="json") == soon
    done = await shop.clock(first + timedelta(seconds=1))
    assert done["expired"] == 1
    mine = await shop.points("u-1")
    assert mine["balance"] == 50
    assert [(e.data.lot_id, e.data.points) for e in await shop.published("points.expired")] == [("mature:o-1", 70)]
    expire = (await shop.history("u-1"))[-1]
    assert (expire["kind"], expire["points"], expire["cause"]) == ("expire", -70, "expire:mature:o-1")
    assert (await shop.clock(first + 2 * DAY))["expired"] == 0  # safe twice
    await shop.clock(second + DAY)
    assert (await shop.points("u-1"))["balance"] == 0
    await shop.reconciled("u-1")


# ---------------------------------------------------------------- levels


async def test_members_upgrade_at_once_and_are_downgraded_at_a_review_after_the_grace_period(shop: Shop) -> None:
    await shop.rules(levels=LADDER)
    me = await shop.token("u-1")
    await shop.send(paid(shop, "u-1", "o-1", 120_000))  # growth 1200: gold at once
    [up] = await shop.published("level.changed")
    assert (up.data.from_level, up.data.to_level, up.data.direction, up.data.growth) == (None, "gold", "upgrade", 1200)
    await shop.send(paid(shop, "u-1", "o-2", 10_000))  # at gold: 1.5 × 100
    assert (await shop.points("u-1"))["pending"] == 1200 + 150
    level = (await shop.client.get("/v1/me/level", headers=me)).json()
    assert (level["level"]["code"], level["progress"]["growth"], level["progress"]["next_level"]) == (
        "gold",
        1300,
        None,
    )
    mine = (await shop.client.get("/v1/me/points", headers=me)).json()
    assert mine["level"] == {"code": "gold", "name": "黄金会员"} and mine["progress"]["growth"] == 1300
    # Encoded by hand for speed: exactly what the documented model gives.
    assert PointsView.model_validate(mine).model_dump(mode="json") == mine
    assert level["benefits"]["pay_percent"] == 95 and level["downgrade_warning"] is False

    # Most of it goes back: the growth in the window falls to 100, below gold's keep threshold.
    await shop.send(refunded(shop, "u-1", "o-1", 120_000, full=True))
    review_at = datetime.fromisoformat(level["next_review_at"])
    assert (await shop.clock(review_at - timedelta(seconds=1)))["reviewed"] == 0
    assert (await shop.clock(review_at + timedelta(seconds=1)))["reviewed"] == 1  # warned: grace begins
    level = (await shop.client.get("/v1/me/level", headers=me)).json()
    assert level["level"]["code"] == "gold" and level["downgrade_warning"] is True
    assert len(await shop.published("level.changed")) == 1
    await shop.clock(review_at + 8 * DAY)
    down = [e for e in await shop.published("level.changed") if e.data.direction == "downgrade"]
    assert [(e.data.from_level, e.data.to_level, e.data.growth) for e in down] == [("gold", "silver", 100)]
    assert (await shop.points("u-1"))["level"] == {"code": "silver", "name": "白银会员"}
    assert (await shop.clock(review_at + 9 * DAY))["reviewed"] == 0  # nothing left to review at the first level
    await shop.reconciled("u-1")


# ---------------------------------------------------------------- bonuses and the daily cap


async def test_first_order_and_birthday_bonuses_respect_the_daily_cap_and_a_sign_in_counts_once_a_day(
    shop: Shop, frozen_clock: clock.ManualClock
) -> None:
    await shop.rules(
        earn={
            "bonuses": [
                {"event": "first_order", "points": 100},
                {"event": "birthday_month", "points": 200},
                {"event": "sign_in", "points": 5},
            ],
            "daily_cap": 300,
        }
    )
    now = frozen_clock.now()
    month = now.astimezone(SH).month
    await shop.send(event(shop, "customer.registered", "u-1", birthday=f"1990-{month:02d}-15"))
    await shop.send(paid(shop, "u-1", "o-1", 10_000, at=now))  # 100 pending + 100 first order + 100 of 200
    mine = await shop.points("u-1")
    assert (mine["pending"], mine["balance"]) == (100, 200)
    bonuses = sorted(
        (e.data.bonus, e.data.points, e.data.capped_by)
        for e in await shop.published("points.earned")
        if e.data.cause == "bonus"
    )
    assert bonuses == [("birthday_month", 100, 100), ("first_order", 100, 0)]
    await shop.send(paid(shop, "u-1", "o-2", 10_000, at=now))  # the day's cap is used up; not a first order
    assert (await shop.points("u-1"))["pending"] == 100

    tomorrow = local_midnight_after(now, 1) + timedelta(hours=9)
    body = {"customer_id": "u-1", "event": "sign_in", "occurred_at": tomorrow.isoformat()}
    got = (await shop.client.post("/v1/loyalty/bonuses", json=body, headers=shop.headers)).json()
    assert (got["awarded"], got["points"]) == (True, 5)
    again = (await shop.client.post("/v1/loyalty/bonuses", json=body, headers=shop.headers)).json()
    assert again["awarded"] is False
    assert (await shop.points("u-1"))["balance"] == 205
    r = await shop.client.post(
        "/v1/loyalty/bonuses", json={"customer_id": "u-1", "event": "review"}, headers=shop.headers
    )
    assert error(r, 422) == ("ref_required", "body.ref")
    await shop.reconciled("u-1")
