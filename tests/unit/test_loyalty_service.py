"""The points ledger on the embedded app (SQLite), what SQLite alone shows: a ladder refused with
the earn rules' own multipliers, the mini-program's sign-in once a day, a replayed refund refused by
the ledger's own unique key, merchants kept apart, and the liability report's expiry forecast.
The main flows (earning, maturing, refunds, expiry, levels, bonuses) run on SQLite and on
PostgreSQL in tests/integration/test_loyalty_service.py."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy.exc import IntegrityError

from services.loyalty.service_layer.handlers import handle
from shared import clock
from shared.events import parse_event
from tests.loyalty_shop import DAY, LADDER, Shop, error, local_midnight_after, open_shop, paid, refunded


@pytest.fixture
async def shop(tmp_path: Path) -> AsyncIterator[Shop]:
    async with open_shop(tmp_path) as s:
        yield s


# ---------------------------------------------------------------- levels and bonuses


async def test_a_ladder_with_its_own_multipliers_in_the_earn_rules_is_refused(shop: Shop) -> None:
    r = await shop.client.put(
        "/v1/loyalty/rules",
        headers=shop.headers,
        json={"levels": LADDER, "earn": {"level_multipliers": {"gold": 2000}}},
    )
    code, _ = error(r, 422)
    assert code == "validation_error" and "level_multipliers" in r.text


async def test_the_mini_program_sign_in_awards_its_bonus_once_a_day(shop: Shop) -> None:
    await shop.rules(earn={"bonuses": [{"event": "sign_in", "points": 5}]})
    me = await shop.token("u-1")
    first = (await shop.client.post("/v1/me/sign-in", headers=me)).json()
    second = (await shop.client.post("/v1/me/sign-in", headers=me)).json()
    assert (first["awarded"], first["points"], second["awarded"]) == (True, 5, False)
    assert (await shop.client.get("/v1/me/points", headers=me)).json()["balance"] == 5


# ---------------------------------------------------------------- exactly once, and tenants apart


async def test_a_replayed_refund_fails_on_the_entries_unique_cause_instead_of_counting_twice(shop: Shop) -> None:
    await shop.send(paid(shop, "u-1", "o-1", 10_000))
    refund = refunded(shop, "u-1", "o-1", 1_000)
    await shop.send(refund)
    assert (await shop.points("u-1"))["pending"] == 90
    # Past the inbox (as if it had lost its row): the ledger's own key refuses the second effect.
    with pytest.raises((IntegrityError, sqlite3.IntegrityError), match="UNIQUE constraint failed: entries"):
        async with shop.rt.sessions() as session, session.begin():
            await handle(session, [parse_event(refund)])
    assert (await shop.points("u-1"))["pending"] == 90
    await shop.reconciled("u-1")


async def test_merchants_are_kept_apart(shop: Shop) -> None:
    a = shop
    b = await a.other_merchant("m-other")
    await a.send(paid(a, "u-1", "o-1", 10_000))
    await b.send(paid(b, "u-1", "o-1", 3_000))  # the same customer and order ids at another shop
    assert (await a.points("u-1"))["pending"] == 100
    assert (await b.points("u-1"))["pending"] == 30
    await b.rules(earn={"return_window_days": 0})
    assert (await a.client.get("/v1/loyalty/rules", headers=a.headers)).json()["version"] == 0
    r = await a.client.post(
        "/v1/loyalty/adjustments",
        headers=b.headers,
        json={"customer_id": "u-1", "points": -50, "reason": "x", "operator": "y"},
    )
    assert error(r, 409)[0] == "insufficient_points"  # b's u-1 has nothing available
    await a.reconciled("u-1")
    await b.reconciled("u-1")
    liability_a = (await a.client.get("/v1/loyalty/reports/liability", headers=a.headers)).json()
    assert (liability_a["pending"], liability_a["customers"]) == (100, 1)


async def test_the_liability_report_forecasts_expiry_by_month(shop: Shop, frozen_clock: clock.ManualClock) -> None:
    await shop.rules(earn={"return_window_days": 0}, ledger={"expiry": {"type": "days", "days": 40}})
    now = frozen_clock.now()
    await shop.send(
        paid(shop, "u-1", "o-1", 10_000, at=now),
        paid(shop, "u-2", "o-2", 20_000, at=now),
        paid(shop, "u-3", "o-3", 30_000, at=now - 60 * DAY),
    )
    await shop.send(paid(shop, "u-4", "o-4", 1_000, at=now))
    r = (await shop.client.get("/v1/loyalty/reports/liability", headers=shop.headers)).json()
    last_day = (local_midnight_after(now, 41) - timedelta(microseconds=1)).strftime("%Y-%m")
    assert r["points"] == 100 + 200 + 300 + 10 and r["customers"] == 4
    assert r["expiry_forecast"] == [{"month": last_day, "points": 310}]
    assert r["expired_unswept"] == 300  # u-3's lot is past its expiry, not swept yet
    assert r["points_value_fen"] == 610  # 100 points = ¥1
    assert (await shop.points("u-3"))["balance"] == 0  # not spendable any more all the same
    await shop.clock(now)
    r = (await shop.client.get("/v1/loyalty/reports/liability", headers=shop.headers)).json()
    assert (r["points"], r["expired_unswept"]) == (310, 0)
