"""Loyalty's HTTP API on the embedded app: the checkout offset (quote, redeem, given back when the
order is cancelled or refunded), the points mall (stock, limits, coupon rewards announced for the
coupons service), stored value (plans, a top-up confirmed by the shop, proportional spends and
refunds), audited adjustments, and bad input: every refusal is a 4xx naming the field at fault,
and the ledger stays reconciled after it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from shared import clock
from tests.loyalty_shop import Shop, cancelled, error, open_shop, paid, refunded

GIFT = {"item_id": "mug", "name": "保温杯", "points": 300, "reward": {"type": "gift", "sku": "mug-500ml"}, "stock": 2}
COUPON = {
    "item_id": "c10",
    "name": "10元券",
    "points": 100,
    "reward": {"type": "coupon", "template_id": "tpl-10"},
    "per_customer_limit": 2,
}


@pytest.fixture
async def shop(tmp_path: Path) -> AsyncIterator[Shop]:
    async with open_shop(tmp_path) as s:
        await s.rules(earn={"return_window_days": 0})  # points available at once, to spend them
        yield s


async def rich(shop: Shop, customer_id: str, points: int) -> dict[str, str]:
    """A customer with ``points`` available (an order of points × ¥1), and their token."""
    await shop.send(paid(shop, customer_id, f"seed-{customer_id}", points * 100))
    return await shop.token(customer_id)


# ---------------------------------------------------------------- the checkout offset


async def test_points_pay_part_of_an_order_up_to_the_cap_and_come_back_when_it_is_cancelled(shop: Shop) -> None:
    me = await rich(shop, "u-1", 3_000)
    q = await shop.client.post("/v1/me/points/offset/quote", json={"order_fen": 10_000}, headers=me)
    assert q.status_code == 200, q.text
    assert q.json() == {
        "balance": 3_000,
        "cap_fen": 5_000,
        "max": {"points": 3_000, "fen": 3_000},
        "asked": None,
        "step_points": 1,
        "step_fen": 1,
    }
    r = await shop.client.post("/v1/me/points/offset/quote", json={"order_fen": 10_000, "points": 6_000}, headers=me)
    assert error(r, 409) == ("insufficient_points", "body.points")

    body = {"order_id": "o-9", "order_fen": 10_000, "points": 2_000}
    r = await shop.client.post("/v1/me/points/offset", json=body, headers=me)
    assert r.status_code == 201, r.text
    assert r.json() == {"order_id": "o-9", "points": 2_000, "offset_fen": 2_000, "balance": 1_000}
    again = await shop.client.post("/v1/me/points/offset", json=body, headers=me)
    assert (again.status_code, again.json()["balance"]) == (200, 1_000)  # the same call: the same offset
    r = await shop.client.post("/v1/me/points/offset", json={**body, "points": 500}, headers=me)
    assert error(r, 409) == ("offset_exists", "body.order_id")
    [redeemed] = await shop.published("points.redeemed")
    assert (redeemed.data.kind, redeemed.data.points, redeemed.data.offset_fen, redeemed.data.order_id) == (
        "offset",
        2_000,
        2_000,
        "o-9",
    )

    await shop.send(cancelled(shop, "u-1", "o-9"))  # the customer abandons the order
    assert (await shop.points("u-1"))["balance"] == 3_000
    assert [e["kind"] for e in await shop.history("u-1")][-1] == "restore"
    await shop.reconciled("u-1")


async def test_a_refund_gives_back_the_offset_in_proportion(shop: Shop) -> None:
    me = await rich(shop, "u-1", 1_000)
    r = await shop.client.post(
        "/v1/me/points/offset", json={"order_id": "o-1", "order_fen": 4_000, "points": 1_000}, headers=me
    )
    assert r.status_code == 201, r.text
    await shop.send(paid(shop, "u-1", "o-1", 3_000))  # ¥40 less ¥10 of points: 30 points earned
    assert (await shop.points("u-1"))["balance"] == 30
    r = await shop.client.post(
        "/v1/me/points/offset", json={"order_id": "o-1", "order_fen": 4_000, "points": 1}, headers=me
    )
    assert error(r, 409)[0] == "offset_exists"
    await shop.send(refunded(shop, "u-1", "o-1", 1_000))  # a third refunded: 10 points clawed back, 333 restored
    assert (await shop.points("u-1"))["balance"] == 30 - 10 + 333
    await shop.send(refunded(shop, "u-1", "o-1", 2_000, full=True))
    assert (await shop.points("u-1"))["balance"] == 1_000
    await shop.reconciled("u-1")


async def test_offset_refusals_name_the_field_and_leave_the_ledger_balanced(shop: Shop) -> None:
    await shop.rules(
        earn={"return_window_days": 0}, offset={"points_per_yuan": 100, "max_share_percent": 20, "min_points": 100}
    )
    me = await rich(shop, "u-1", 500)
    offset = "/v1/me/points/offset"
    assert error(
        await shop.client.post(offset, json={"order_id": "o", "order_fen": 10_000, "points": 5_000}, headers=me), 409
    ) == ("insufficient_points", "body.points")
    assert error(
        await shop.client.post(offset, json={"order_id": "o", "order_fen": 1_000, "points": 300}, headers=me), 422
    ) == ("exceeds_cap", "body.points")
    assert error(
        await shop.client.post(offset, json={"order_id": "o", "order_fen": 10_000, "points": 50}, headers=me), 422
    ) == ("below_minimum", "body.points")
    for bad in (-5, 0, 12.5, "300", True):
        assert (
            error(
                await shop.client.post(offset, json={"order_id": "o", "order_fen": 10_000, "points": bad}, headers=me),
                422,
            )[1]
            == "body.points"
        )
    assert (
        error(await shop.client.post(offset, json={"order_id": "o", "order_fen": -1, "points": 100}, headers=me), 422)[
            1
        ]
        == "body.order_fen"
    )
    assert (
        error(await shop.client.post(offset, json={"order_id": "o", "order_fen": 100}, headers=me), 422)[1]
        == "body.points"
    )
    await shop.send(paid(shop, "u-1", "o-paid", 100))
    assert error(
        await shop.client.post(offset, json={"order_id": "o-paid", "order_fen": 10_000, "points": 100}, headers=me), 409
    ) == ("order_closed", "body.order_id")
    assert (
        error(await shop.client.post(offset, json={"order_id": "o", "order_fen": 1, "points": 1}), 401)[0]
        == "unauthorized"
    )
    assert (await shop.points("u-1"))["balance"] == 501
    await shop.reconciled("u-1")


# ---------------------------------------------------------------- the points mall


async def test_the_points_mall_takes_stock_atomically_and_announces_coupon_rewards(shop: Shop) -> None:
    for item in (GIFT, COUPON, {**COUPON, "item_id": "hidden", "active": False}):
        r = await shop.client.post("/v1/loyalty/mall/items", json=item, headers=shop.headers)
        assert r.status_code == 201, r.text
    assert error(await shop.client.post("/v1/loyalty/mall/items", json=GIFT, headers=shop.headers), 409) == (
        "item_exists",
        "body.item_id",
    )
    me = await rich(shop, "u-1", 1_000)
    other = await rich(shop, "u-2", 1_000)
    shown = (await shop.client.get("/v1/mall/items", headers=me)).json()["items"]
    assert [(i["item_id"], i["stock_left"]) for i in shown] == [("mug", 2), ("c10", None)]

    redeem = "/v1/me/mall/redeem"
    r = await shop.client.post(redeem, json={"item_id": "mug"}, headers=me)
    assert r.status_code == 201, r.text
    assert (r.json()["points"], r.json()["balance"], r.json()["reward"]) == (300, 700, GIFT["reward"])
    assert error(await shop.client.post(redeem, json={"item_id": "mug", "quantity": 2}, headers=other), 409) == (
        "out_of_stock",
        "body.item_id",
    )
    assert (await shop.client.post(redeem, json={"item_id": "mug"}, headers=other)).status_code == 201
    assert error(await shop.client.post(redeem, json={"item_id": "mug"}, headers=me), 409)[0] == "out_of_stock"
    assert error(await shop.client.post(redeem, json={"item_id": "nope"}, headers=me), 404) == (
        "unknown_item",
        "body.item_id",
    )
    assert error(await shop.client.post(redeem, json={"item_id": "hidden"}, headers=me), 409)[0] == "item_unavailable"
    assert (
        error(await shop.client.post(redeem, json={"item_id": "c10", "quantity": 0}, headers=me), 422)[1]
        == "body.quantity"
    )

    r = await shop.client.post(redeem, json={"item_id": "c10", "quantity": 2}, headers=me)
    assert r.status_code == 201, r.text
    assert error(await shop.client.post(redeem, json={"item_id": "c10"}, headers=me), 409) == (
        "limit_reached",
        "body.quantity",
    )
    coupon = [e for e in await shop.published("points.redeemed") if e.data.item_id == "c10"]
    assert [(e.customer_id, e.data.reward, e.data.quantity, e.data.points) for e in coupon] == [
        ("u-1", {"type": "coupon", "template_id": "tpl-10"}, 2, 200)
    ]

    listed = {i["item_id"]: i for i in (await shop.client.get("/v1/loyalty/mall/items", headers=shop.headers)).json()}
    assert listed["mug"]["stock_left"] == 0
    r = await shop.client.put("/v1/loyalty/mall/items/mug", json={**GIFT, "stock": 1}, headers=shop.headers)
    assert error(r, 409) == ("stock_below_redeemed", "body.stock")
    r = await shop.client.put("/v1/loyalty/mall/items/mug", json={**GIFT, "stock": 5}, headers=shop.headers)
    assert (r.status_code, r.json()["stock_left"]) == (200, 3)
    assert (await shop.client.delete("/v1/loyalty/mall/items/c10", headers=shop.headers)).status_code == 204
    assert error(await shop.client.get("/v1/loyalty/mall/items/c10", headers=shop.headers), 404)[1] == "path.item_id"
    r = await shop.client.post(
        "/v1/loyalty/mall/items", json={**GIFT, "item_id": "x", "stock": None}, headers=shop.headers
    )
    assert error(r, 422)[0] == "validation_error"  # a gift needs stock
    assert (await shop.points("u-1"))["balance"] == 500
    await shop.reconciled("u-1")
    await shop.reconciled("u-2")


# ---------------------------------------------------------------- stored value


async def test_stored_value_top_ups_are_credited_when_the_shop_confirms_and_spend_paid_and_bonus_in_proportion(
    shop: Shop,
) -> None:
    plans = "/v1/loyalty/stored-value/plans"
    assert (
        await shop.client.post(
            plans,
            json={"plan_id": "p500", "name": "充500送50", "pay_fen": 50_000, "bonus_fen": 5_000},
            headers=shop.headers,
        )
    ).status_code == 201
    r = await shop.client.post(
        plans, json={"plan_id": "p500b", "name": "again", "pay_fen": 50_000, "bonus_fen": 0}, headers=shop.headers
    )
    assert error(r, 422)[0] == "validation_error"  # two plans for the same amount
    r = await shop.client.post(
        plans, json={"plan_id": "typo", "name": "送太多", "pay_fen": 100, "bonus_fen": 1_000}, headers=shop.headers
    )
    assert error(r, 422)[0] == "validation_error"
    me = await shop.token("u-1")
    assert [p["plan_id"] for p in (await shop.client.get("/v1/stored-value/plans", headers=me)).json()["plans"]] == [
        "p500"
    ]

    r = await shop.client.post(
        "/v1/me/stored-value/top-up", json={"plan_id": "p500", "payment_ref": "wx-1"}, headers=me
    )
    assert r.status_code == 201, r.text
    top_up = r.json()
    assert (top_up["status"], top_up["pay_fen"], top_up["bonus_fen"]) == ("pending", 50_000, 5_000)
    assert (await shop.client.get("/v1/me/stored-value", headers=me)).json()["total_fen"] == 0  # not paid yet
    again = await shop.client.post(
        "/v1/me/stored-value/top-up", json={"plan_id": "p500", "payment_ref": "wx-1"}, headers=me
    )
    assert (again.status_code, again.json()["top_up_id"]) == (200, top_up["top_up_id"])
    thief = await shop.token("u-2")
    r = await shop.client.post(
        "/v1/me/stored-value/top-up", json={"plan_id": "p500", "payment_ref": "wx-1"}, headers=thief
    )
    assert error(r, 409) == ("payment_ref_used", "body.payment_ref")
    assert error(
        await shop.client.post(
            "/v1/me/stored-value/top-up", json={"plan_id": "nope", "payment_ref": "wx-2"}, headers=me
        ),
        404,
    ) == ("unknown_plan", "body.plan_id")

    confirm = f"/v1/loyalty/stored-value/top-ups/{top_up['top_up_id']}/confirm"
    assert (await shop.client.post(confirm, headers=shop.headers)).json()["status"] == "confirmed"
    assert (await shop.client.post(confirm, headers=shop.headers)).status_code == 200  # twice: credited once
    mine = (await shop.client.get("/v1/me/stored-value", headers=me)).json()
    assert (mine["paid_fen"], mine["bonus_fen"]) == (50_000, 5_000)

    spends = "/v1/loyalty/stored-value/spends"
    r = await shop.client.post(
        spends, json={"customer_id": "u-1", "order_id": "o-1", "amount_fen": 11_000}, headers=shop.headers
    )
    assert r.status_code == 201, r.text
    assert (r.json()["paid_fen"], r.json()["bonus_fen"]) == (10_000, 1_000)  # ⌊11000 × 5000 / 55000⌋ bonus
    r = await shop.client.post(
        spends, json={"customer_id": "u-1", "order_id": "o-2", "amount_fen": 44_001}, headers=shop.headers
    )
    assert error(r, 409) == ("insufficient_balance", "body.amount_fen")
    r = await shop.client.post(
        spends, json={"customer_id": "u-1", "order_id": "o-3", "amount_fen": -5}, headers=shop.headers
    )
    assert error(r, 422)[1] == "body.amount_fen"
    refund = f"{spends}/o-1/refunds"
    r = await shop.client.post(refund, json={"refund_id": "rf-1", "amount_fen": 5_500}, headers=shop.headers)
    assert (r.json()["balance_paid_fen"], r.json()["balance_bonus_fen"]) == (45_000, 4_500)
    r = await shop.client.post(refund, json={"refund_id": "rf-1", "amount_fen": 5_500}, headers=shop.headers)
    assert r.json()["balance_paid_fen"] == 45_000  # the same refund id: once
    r = await shop.client.post(refund, json={"refund_id": "rf-2", "amount_fen": 5_501}, headers=shop.headers)
    assert error(r, 409) == ("refund_exceeds", "body.amount_fen")
    assert (
        error(
            await shop.client.post(
                f"{spends}/o-404/refunds", json={"refund_id": "x", "amount_fen": 1}, headers=shop.headers
            ),
            404,
        )[1]
        == "path.order_id"
    )

    # The customer takes the rest of the top-up back: the unspent paid money, the bonus in proportion.
    r = await shop.client.post(
        f"/v1/loyalty/stored-value/top-ups/{top_up['top_up_id']}/refunds",
        json={"refund_id": "tr-1", "amount_fen": 20_000},
        headers=shop.headers,
    )
    assert (r.status_code, r.json()["refunded_fen"], r.json()["forfeited_fen"]) == (200, 20_000, 2_000)
    mine = (await shop.client.get("/v1/me/stored-value", headers=me)).json()
    assert (mine["paid_fen"], mine["bonus_fen"]) == (25_000, 2_500)
    assert [e["kind"] for e in mine["entries"]] == ["top_up_refund", "spend_refund", "spend", "top_up"]
    changes = await shop.published("stored_value.changed")
    assert sorted(e.data.kind for e in changes) == ["spend", "spend_refund", "top_up", "top_up_refund"]

    r = await shop.client.post(
        "/v1/loyalty/stored-value/top-ups",
        headers=shop.headers,
        json={"customer_id": "u-1", "pay_fen": 1_000, "payment_ref": "pos-7"},
    )
    assert (r.status_code, r.json()["status"]) == (201, "confirmed")
    r = await shop.client.post(
        "/v1/loyalty/stored-value/top-ups",
        headers=shop.headers,
        json={"customer_id": "u-1", "pay_fen": 1_000, "plan_id": "p500", "payment_ref": "x"},
    )
    assert error(r, 422)[0] == "validation_error"
    proof = (await shop.client.get("/v1/loyalty/customers/u-1/reconciliation", headers=shop.headers)).json()
    assert proof["stored_value_ok"] is True
    assert proof["stored_value"]["paid_fen"] == proof["stored_value"]["entries_paid_fen"] == 26_000


async def test_a_cancelled_order_gives_its_stored_value_payment_back_once(shop: Shop) -> None:
    r = await shop.client.post(
        "/v1/loyalty/stored-value/top-ups",
        headers=shop.headers,
        json={"customer_id": "u-1", "pay_fen": 10_000, "payment_ref": "pos-1"},
    )
    assert r.status_code == 201, r.text
    spends = "/v1/loyalty/stored-value/spends"
    r = await shop.client.post(
        spends, json={"customer_id": "u-1", "order_id": "o-5", "amount_fen": 6_000}, headers=shop.headers
    )
    assert r.status_code == 201, r.text
    r = await shop.client.post(
        f"{spends}/o-5/refunds", json={"refund_id": "rf-1", "amount_fen": 1_000}, headers=shop.headers
    )
    assert r.status_code == 200, r.text
    me = await shop.token("u-1")
    assert (await shop.client.get("/v1/me/stored-value", headers=me)).json()["total_fen"] == 5_000
    await shop.send(cancelled(shop, "u-1", "o-5"))
    await shop.send(cancelled(shop, "u-1", "o-5"))  # the shop says it again: nothing more comes back
    mine = (await shop.client.get("/v1/me/stored-value", headers=me)).json()
    assert mine["total_fen"] == 10_000  # the 5,000 still spent on the order came back, not 6,000
    assert [e["kind"] for e in mine["entries"]][:2] == ["spend_refund", "spend_refund"]
    proof = (await shop.client.get("/v1/loyalty/customers/u-1/reconciliation", headers=shop.headers)).json()
    assert proof["stored_value_ok"] is True


# ---------------------------------------------------------------- adjustments and bad input


async def test_adjustments_are_audited_and_bad_ones_are_refused_with_the_field(shop: Shop) -> None:
    url = "/v1/loyalty/adjustments"
    ok = {
        "customer_id": "u-1",
        "points": 500,
        "reason": "compensation for a late parcel",
        "operator": "amy",
        "adjustment_id": "adj-1",
    }
    r = await shop.client.post(url, json=ok, headers=shop.headers)
    assert (r.status_code, r.json()["balance"]) == (201, 500)
    assert error(await shop.client.post(url, json=ok, headers=shop.headers), 409) == (
        "already_applied",
        "body.adjustment_id",
    )
    [entry] = await shop.history("u-1")
    assert (entry["kind"], entry["points"], entry["reason"], entry["operator"]) == (
        "adjust",
        500,
        "compensation for a late parcel",
        "amy",
    )
    earned = await shop.published("points.earned")
    assert [(e.data.cause, e.data.points) for e in earned] == [("adjustment", 500)]

    refusals = [
        ({"points": 0}, 422, "invalid_amount", "body.points"),
        ({"points": -501}, 409, "insufficient_points", "body.points"),
        ({"points": 12.5}, 422, "validation_error", "body.points"),
        ({"points": "100"}, 422, "validation_error", "body.points"),
        ({"reason": "   "}, 422, "reason_required", "body.reason"),
        ({"reason": ""}, 422, "validation_error", "body.reason"),
        ({"operator": None}, 422, "validation_error", "body.operator"),
    ]
    for change, status, code, field in refusals:
        body = {**ok, "adjustment_id": None, **change}
        assert error(await shop.client.post(url, json=body, headers=shop.headers), status) == (code, field), change
    assert (await shop.points("u-1"))["balance"] == 500
    r = await shop.client.post(url, json={**ok, "adjustment_id": "adj-2", "points": -200}, headers=shop.headers)
    assert r.json()["balance"] == 300
    await shop.reconciled("u-1")
    assert error(await shop.client.post(url, json=ok), 401)[1] == "header.X-Api-Key"


async def test_rules_are_validated_as_a_whole_naming_the_field(shop: Shop) -> None:
    bad = [
        ({"ledger": {"expiry": {"type": "days", "days": 0}}}, "body.ledger.expiry.days"),
        ({"earn": {"return_window_days": 91}}, "body.earn.return_window_days"),
        ({"offset": {"max_share_percent": 0}}, "body.offset.max_share_percent"),
        ({"earn": {"rate": {"points": 1, "per_fen": 100.5}}}, "body.earn.rate.per_fen"),
        ({"levels": {"levels": [{"code": "gold", "name": "金", "threshold": 10}]}}, "body.levels.levels"),
    ]
    for body, field in bad:
        r = await shop.client.put("/v1/loyalty/rules", json=body, headers=shop.headers)
        _, at = error(r, 422)
        assert at is not None and at.startswith(field), (body, r.text)
    assert (await shop.client.get("/v1/loyalty/rules", headers=shop.headers)).json()["version"] == 1


async def test_a_customer_token_of_another_shop_sees_nothing_here(shop: Shop) -> None:
    await rich(shop, "u-1", 100)
    other = await shop.other_merchant("m-2")
    theirs = await other.token("u-1")
    r = await shop.client.get("/v1/me/points", headers=theirs)
    assert (r.status_code, r.json()["balance"]) == (200, 0)
    assert error(await shop.client.get("/v1/me/points"), 401)[1] == "header.Authorization"
    history = (await shop.client.get("/v1/me/points/history", headers=theirs)).json()
    assert history["entries"] == []


async def test_points_history_pages_newest_first(shop: Shop, frozen_clock: clock.ManualClock) -> None:
    await shop.rules(earn={"return_window_days": 7})  # one entry per order: pending
    me = await shop.token("u-1")
    now = frozen_clock.now()
    await shop.send(*[paid(shop, "u-1", f"o-{i}", 100 * (i + 1), at=now - timedelta(minutes=10 - i)) for i in range(5)])
    first = (await shop.client.get("/v1/me/points/history?limit=3", headers=me)).json()
    assert [e["order_id"] for e in first["entries"]] == ["o-4", "o-3", "o-2"]
    rest = (await shop.client.get(f"/v1/me/points/history?limit=3&before={first['next_before']}", headers=me)).json()
    assert [e["order_id"] for e in rest["entries"]] == ["o-1", "o-0"] and rest["next_before"] is None
    assert "operator" not in first["entries"][0]
