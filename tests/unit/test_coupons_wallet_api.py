"""The wallet over HTTP on the embedded app (SQLite, in-process bus): listing, claiming, pricing a
cart, locking, and what the shop's order events do to coupons (redeem, release, refund by policy);
the clock (expiry sweep, expiring reminders) run twice; and merchants kept apart.

Templates and coupons are put in place through the service layer (the templates admin API is not
what is under test here); everything the customer and the shop do goes through HTTP."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from sqlalchemy import func, select, update

from services.coupons.adapters.tables import coupons, messaging, orders, templates
from services.coupons.domain.templates import CouponTemplate
from services.coupons.entrypoints.wallet import WalletView
from services.coupons.service_layer import wallet
from services.coupons.service_layer.issue import issue
from services.coupons.service_layer.templates import create_template, get_template
from services.embedded import build_embedded_app
from shared import clock
from shared.events import parse_event
from shared.runtime import ServiceRuntime
from tests.conftest import ADMIN_TOKEN, embedded_settings, running
from tests.factories import eventually

KEY = "fg_wallet_key"
H = {"X-Api-Key": KEY}
SH = ZoneInfo("Asia/Shanghai")

PERCENT_80 = {
    "name": "8折券",
    "kind": {"type": "percent", "pay_percent": 80, "max_discount_fen": 1000},
    "valid_days": 30,
}
MILK_300_OFF = {
    "name": "奶粉满20减3",
    "kind": {"type": "amount_off", "amount_off_fen": 300, "threshold_fen": 2000},
    "scope": {"categories": ["milk-powder"]},
    "valid_days": 30,
}
FREE_SHIPPING = {"name": "包邮券", "kind": {"type": "free_shipping"}, "valid_days": 30}
DIAPERS_500_OFF = {
    "name": "纸尿裤无门槛5元",
    "kind": {"type": "no_threshold", "amount_off_fen": 500},
    "scope": {"categories": ["diapers"]},
    "valid_days": 30,
}
CART = {
    "lines": [
        {"sku": "milk-900g", "category": "milk-powder", "quantity": 1, "amount_fen": 3000},
        {"sku": "crackers", "category": "snacks", "quantity": 2, "amount_fen": 1000},
    ],
    "shipping_fen": 800,
}
ITEMS = [
    {"sku": "milk-900g", "category": "milk-powder", "quantity": 1, "amount_fen": 3000},
    {"sku": "crackers", "category": "snacks", "quantity": 2, "amount_fen": 1000},
]


@dataclass
class Shop:
    client: httpx.AsyncClient
    app: Any
    merchant_id: str
    headers: dict[str, str]

    @property
    def rt(self) -> ServiceRuntime:
        return self.app.state.runtimes["coupons"]  # type: ignore[no-any-return]

    async def template(self, body: dict[str, Any], template_id: str | None = None, **over: Any) -> str:
        async with self.rt.sessions() as session, session.begin():
            stored = await create_template(
                session, self.merchant_id, CouponTemplate.model_validate(body | over), template_id
            )
        return stored.template_id

    async def issue(self, template_id: str, customer_id: str, count: int = 1) -> list[str]:
        async with self.rt.sessions() as session, session.begin():
            stored = await get_template(session, self.merchant_id, template_id)
            assert stored is not None
            result = await issue(session, self.merchant_id, stored, [customer_id], count=count, now=clock.now())
        return [cid for _, cid in result.issued]

    async def token(self, customer_id: str) -> dict[str, str]:
        r = await self.client.post("/v1/customer-tokens", json={"customer_id": customer_id}, headers=self.headers)
        assert r.status_code == 200, r.text
        return {"Authorization": f"Bearer {r.json()['token']}"}

    async def events(self, events: list[dict[str, Any]]) -> None:
        r = await self.client.post("/v1/events", json=events, headers=self.headers)
        assert r.status_code == 200 and r.json()["accepted"] == len(events), r.text

    async def coupon(self, coupon_id: str) -> Any:
        async with self.rt.sessions() as session:
            return (
                await session.execute(
                    select(coupons).where(coupons.c.merchant_id == self.merchant_id, coupons.c.coupon_id == coupon_id)
                )
            ).one()

    async def state(self, coupon_id: str) -> str:
        return (await self.coupon(coupon_id)).state  # type: ignore[no-any-return]

    async def end_window(self, coupon_id: str) -> None:
        """As if the coupon's window had ended a moment ago (and begun a day before)."""
        now = clock.now()
        await self.sql(
            update(coupons)
            .where(coupons.c.merchant_id == self.merchant_id, coupons.c.coupon_id == coupon_id)
            .values(starts_at=now - timedelta(days=1), expires_at=now - timedelta(seconds=1))
        )

    async def sql(self, statement: Any) -> None:
        async with self.rt.sessions() as session, session.begin():
            await session.execute(statement)

    async def published(self, type_: str) -> list[Any]:
        """Coupon events of this merchant staged in the outbox or already on the bus (the outbox
        read first: an event the relay moves in between is then seen once, not missed)."""
        async with self.rt.sessions() as session:
            found = [parse_event(p) for p in (await session.execute(select(messaging.outbox.c.payload))).scalars()]
        cur = await self.app.state.bus.db.execute("SELECT value FROM bus_log WHERE topic = 'fugou.coupons'")
        found += [parse_event(r[0]) for r in await cur.fetchall()]
        await cur.close()
        unique = {e.event_id: e for e in found}
        return [e for e in unique.values() if e.type == type_ and e.merchant_id == self.merchant_id]


@pytest.fixture
async def shop(tmp_path: Path) -> AsyncIterator[Shop]:
    app = build_embedded_app(embedded_settings(tmp_path, bootstrap_api_key=KEY), announce=False)
    async with running(app) as client:
        yield Shop(client, app, "demo", H)


def paid(
    shop: Shop,
    customer_id: str,
    order_id: str,
    coupon_ids: list[str],
    amount_fen: int = 3500,
    items: list[dict[str, Any]] | None = None,
    at: datetime | None = None,
) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "type": "order.paid",
        "merchant_id": shop.merchant_id,
        "customer_id": customer_id,
        "occurred_at": (at or clock.now()).isoformat(),
        "data": {
            "order_id": order_id,
            "amount_fen": amount_fen,
            "items": ITEMS if items is None else items,
            "coupon_ids": coupon_ids,
        },
    }


def order_event(shop: Shop, type_: str, customer_id: str, order_id: str, **data: Any) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "type": type_,
        "merchant_id": shop.merchant_id,
        "customer_id": customer_id,
        "occurred_at": clock.now().isoformat(),
        "data": {"order_id": order_id, **data},
    }


def error(r: httpx.Response, status: int) -> tuple[str, str | None]:
    assert r.status_code == status, r.text
    body = r.json()["error"]
    fields = body.get("fields") or [{}]
    return body["code"], fields[0].get("field")


# ---------------------------------------------------------------- listing


async def test_my_wallet_lists_my_coupons_by_state_soonest_expiry_first(shop: Shop) -> None:
    me = await shop.token("u-1")
    soon = await shop.template(PERCENT_80, valid_days=5)
    later = await shop.template(MILK_300_OFF)
    [a] = await shop.issue(soon, "u-1")
    [b] = await shop.issue(later, "u-1")
    [gone] = await shop.issue(await shop.template(FREE_SHIPPING), "u-1")
    await shop.issue(later, "u-2")  # someone else's
    # One expired by the clock but not swept yet: it shows as expired all the same.
    await shop.end_window(gone)

    r = await shop.client.get("/v1/me/coupons", headers=me)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["customer_id"] == "u-1" and body["has_more"] is False
    assert [(c["coupon_id"], c["state"]) for c in body["coupons"]] == [
        (a, "available"),
        (b, "available"),
        (gone, "expired"),
    ]
    first = body["coupons"][0]
    assert (
        first["name"],
        first["kind"]["type"],
        first["kind"]["pay_percent"],
        first["face_value_fen"],
        first["scope"],
        first["order_id"],
    ) == ("8折券", "percent", 80, 1000, "all", None)
    assert body["coupons"][1]["scope"] == {"categories": ["milk-powder"]}
    assert body["coupons"][1]["face_value_fen"] == 300
    # Encoded by hand for speed: exactly what the documented model would give, and the merchant's view.
    assert WalletView.model_validate(body).model_dump(mode="json") == body
    support = (await shop.client.get("/v1/customers/u-1/coupons", headers=H)).json()["coupons"]
    assert [{k: c[k] for k in body["coupons"][0]} for c in support] == body["coupons"]

    avail = (await shop.client.get("/v1/me/coupons?state=available", headers=me)).json()["coupons"]
    assert [c["coupon_id"] for c in avail] == [a, b]
    expired = (await shop.client.get("/v1/me/coupons?state=expired", headers=me)).json()["coupons"]
    assert [c["coupon_id"] for c in expired] == [gone]
    assert (await shop.client.get("/v1/me/coupons?state=used", headers=me)).json()["coupons"] == []
    limited = (await shop.client.get("/v1/me/coupons?limit=1", headers=me)).json()
    assert [c["coupon_id"] for c in limited["coupons"]] == [a] and limited["has_more"] is True

    assert error(await shop.client.get("/v1/me/coupons?state=lost", headers=me), 422)[1] == "query.state"
    assert error(await shop.client.get("/v1/me/coupons"), 401) == ("unauthorized", "header.Authorization")
    assert (
        error(await shop.client.get("/v1/me/coupons", headers={"Authorization": "Bearer nope"}), 401)[0]
        == "unauthorized"
    )


# ---------------------------------------------------------------- claiming


async def test_claiming_a_public_coupon_respects_the_limit_and_the_stock(shop: Shop) -> None:
    me, other, third = await shop.token("u-1"), await shop.token("u-2"), await shop.token("u-3")
    public = await shop.template(PERCENT_80, public=True, stock=2)
    private = await shop.template(MILK_300_OFF)

    r = await shop.client.post("/v1/me/coupons/claim", json={"template_id": public}, headers=me)
    assert r.status_code == 201, r.text
    got = r.json()
    assert (got["template_id"], got["state"], got["name"]) == (public, "available", "8折券")
    assert error(await shop.client.post("/v1/me/coupons/claim", json={"template_id": public}, headers=me), 409) == (
        "limit_reached",
        "body.template_id",
    )
    assert (
        await shop.client.post("/v1/me/coupons/claim", json={"template_id": public}, headers=other)
    ).status_code == 201
    assert error(await shop.client.post("/v1/me/coupons/claim", json={"template_id": public}, headers=third), 409) == (
        "out_of_stock",
        "body.template_id",
    )
    async with shop.rt.sessions() as session:
        issued = (await session.execute(select(templates.c.issued).where(templates.c.template_id == public))).scalar()
    assert issued == 2

    # A template that is not public is not there for customers; nor is one that does not exist.
    assert error(await shop.client.post("/v1/me/coupons/claim", json={"template_id": private}, headers=me), 404) == (
        "not_found",
        "body.template_id",
    )
    assert (
        error(await shop.client.post("/v1/me/coupons/claim", json={"template_id": "tpl_nope"}, headers=me), 404)[0]
        == "not_found"
    )
    stopped = await shop.template(FREE_SHIPPING, public=True)
    await shop.sql(update(templates).where(templates.c.template_id == stopped).values(active=False))
    assert (
        error(await shop.client.post("/v1/me/coupons/claim", json={"template_id": stopped}, headers=third), 409)[0]
        == "inactive"
    )
    assert (
        error(await shop.client.post("/v1/me/coupons/claim", json={"template": public}, headers=me), 422)[1]
        == "body.template_id"
    )
    assert len(await shop.published("coupon.issued")) == 2


# ---------------------------------------------------------------- pricing a cart


async def test_applicable_prices_every_coupon_and_finds_the_best_combination(shop: Shop) -> None:
    me = await shop.token("u-1")
    [pct] = await shop.issue(await shop.template(PERCENT_80), "u-1")
    [milk] = await shop.issue(await shop.template(MILK_300_OFF), "u-1")
    [ship] = await shop.issue(await shop.template(FREE_SHIPPING), "u-1")
    [diapers] = await shop.issue(await shop.template(DIAPERS_500_OFF), "u-1")
    await shop.issue(await shop.template(PERCENT_80), "u-2")  # not mine

    r = await shop.client.post("/v1/me/coupons/applicable", json=CART, headers=me)
    assert r.status_code == 200, r.text
    body = r.json()
    by_id = {c["coupon_id"]: c for c in body["coupons"]}
    assert set(by_id) == {pct, milk, ship, diapers}
    # 20% of 4,000 is 800 (under the cap of 1,000); 300 off the 3,000 of milk; the 800 shipping.
    assert {k: (v["applies"], v["discount_fen"], v["reason"]) for k, v in by_id.items()} == {
        pct: (True, 800, None),
        milk: (True, 300, None),
        ship: (True, 800, None),
        diapers: (False, 0, "out_of_scope"),
    }
    assert body["coupons"][-1]["coupon_id"] == diapers  # those that apply first
    best = body["best"]
    assert sorted(best["coupon_ids"]) == sorted([pct, ship])  # one discount and one shipping stack
    assert (best["goods_discount_fen"], best["shipping_discount_fen"], best["total_discount_fen"]) == (800, 800, 1600)
    assert (body["goods_fen"], body["shipping_fen"], body["payable_fen"]) == (4000, 800, 3200)

    small = {"lines": [{"sku": "milk-400g", "category": "milk-powder", "quantity": 1, "amount_fen": 1500}]}
    body = (await shop.client.post("/v1/me/coupons/applicable", json=small, headers=me)).json()
    by_id = {c["coupon_id"]: c for c in body["coupons"]}
    assert by_id[milk]["reason"] == "below_threshold" and "¥5.00 more" in by_id[milk]["message"]
    assert by_id[ship]["reason"] == "nothing_to_discount"

    bad = {"lines": [{"sku": "x", "quantity": 1, "amount_fen": 12.5}]}
    assert (
        error(await shop.client.post("/v1/me/coupons/applicable", json=bad, headers=me), 422)[1]
        == "body.lines.0.amount_fen"
    )
    assert (
        error(await shop.client.post("/v1/me/coupons/applicable", json={"lines": []}, headers=me), 422)[1]
        == "body.lines"
    )


# ---------------------------------------------------------------- locking


async def lock(
    shop: Shop, who: dict[str, str], coupon_id: str, order_id: str, cart: dict[str, Any] = CART
) -> httpx.Response:
    return await shop.client.post(
        f"/v1/me/coupons/{coupon_id}/lock", json={"order_id": order_id, "cart": cart}, headers=who
    )


async def test_locking_says_which_rule_refuses_with_the_right_status(
    shop: Shop, frozen_clock: clock.ManualClock
) -> None:
    me, other = await shop.token("u-1"), await shop.token("u-2")
    [pct, pct2] = await shop.issue(await shop.template(PERCENT_80, per_customer_limit=2), "u-1", count=2)
    [diapers] = await shop.issue(await shop.template(DIAPERS_500_OFF), "u-1")
    [milk] = await shop.issue(await shop.template(MILK_300_OFF), "u-1")
    hour = frozen_clock.now().astimezone(SH).hour  # the clock stands still: two hours on is closed
    closed = (hour + 2) % 24
    [night] = await shop.issue(await shop.template(PERCENT_80, hours=[[closed, closed + 1]]), "u-1")
    [theirs] = await shop.issue(await shop.template(PERCENT_80), "u-2")
    [old] = await shop.issue(await shop.template(FREE_SHIPPING), "u-1")
    await shop.end_window(old)

    r = await lock(shop, me, pct, "o-1")
    assert r.status_code == 200, r.text
    assert (r.json()["state"], r.json()["order_id"], r.json()["discount_fen"]) == ("locked", "o-1", 800)
    again = await lock(shop, me, pct, "o-1")  # the same order again: nothing changes
    assert again.status_code == 200 and again.json() == r.json()

    assert error(await lock(shop, me, pct, "o-2"), 409) == ("locked_to_other_order", "path.coupon_id")
    assert error(await lock(shop, me, diapers, "o-2"), 422) == ("out_of_scope", "body.cart")
    small = {"lines": [{"sku": "milk-400g", "category": "milk-powder", "quantity": 1, "amount_fen": 1500}]}
    code, field = error(await lock(shop, me, milk, "o-2", small), 422)
    assert (code, field) == ("below_threshold", "body.cart")
    assert error(await lock(shop, me, night, "o-2"), 422)[0] == "outside_hours"
    assert error(await lock(shop, me, old, "o-2"), 409)[0] == "expired"
    # Two discounts on one order break the stacking rules (one per group).
    assert error(await lock(shop, me, pct2, "o-1"), 422) == ("stacking_conflict", "path.coupon_id")
    # Another customer's coupon is not found, exactly like one that does not exist.
    foreign = await lock(shop, me, theirs, "o-2")
    missing = await lock(shop, me, "cpn_does_not_exist", "o-2")
    assert error(foreign, 404) == error(missing, 404) == ("not_found", "path.coupon_id")
    assert foreign.json()["error"]["message"].replace(theirs, "X") == missing.json()["error"]["message"].replace(
        "cpn_does_not_exist", "X"
    )
    assert await shop.state(theirs) == "available"
    assert (
        error(await shop.client.post(f"/v1/me/coupons/{pct}/lock", json={"order_id": "o-1"}, headers=me), 422)[1]
        == "body.cart"
    )

    # Used: 409 already_used.
    await shop.events([paid(shop, "u-1", "o-1", [pct])])
    await eventually(lambda: shop.state(pct), lambda s: s == "used")
    assert error(await lock(shop, me, pct, "o-9"), 409)[0] == "already_used"
    # A paid order cannot hold a coupon any more.
    assert error(await lock(shop, me, pct2, "o-1"), 409) == ("order_paid", "body.order_id")
    # The customer gives up an order: the lock goes.
    assert (await lock(shop, me, pct2, "o-3")).status_code == 200
    r = await shop.client.post(f"/v1/me/coupons/{pct2}/release", json={"order_id": "o-3"}, headers=me)
    assert r.status_code == 200 and r.json()["state"] == "available" and r.json()["order_id"] is None
    assert (
        error(await shop.client.post(f"/v1/me/coupons/{theirs}/release", json={"order_id": "o-3"}, headers=me), 404)[0]
        == "not_found"
    )
    assert error(await lock(shop, other, pct2, "o-4"), 404)[0] == "not_found"


# ---------------------------------------------------------------- the shop's order events


async def test_an_order_paid_redeems_its_coupons_once_and_refuses_the_rest(shop: Shop) -> None:
    me = await shop.token("u-1")
    pct_t = await shop.template(PERCENT_80, cost_fen_per_redemption=500)
    [locked] = await shop.issue(pct_t, "u-1")
    [ship] = await shop.issue(await shop.template(FREE_SHIPPING), "u-1")
    [milk] = await shop.issue(await shop.template(MILK_300_OFF), "u-1")
    [diapers] = await shop.issue(await shop.template(DIAPERS_500_OFF), "u-1")
    [second] = await shop.issue(await shop.template(PERCENT_80), "u-1")
    [theirs] = await shop.issue(await shop.template(PERCENT_80), "u-2")
    assert (await lock(shop, me, locked, "o-1")).status_code == 200  # priced at 800 on CART

    # o-1 names its locked coupon and free shipping (not locked: priced from the order's items,
    # shipping as the shop sends it); o-2 names someone else's coupon, diapers (out of scope),
    # milk (applies), a second discount (one per stack group) and a made-up id; o-3 tries the
    # coupon o-1 used.
    e1 = paid(shop, "u-1", "o-1", [locked, ship], amount_fen=2400)
    e1["data"]["shipping_fen"] = 600
    await shop.events([e1])
    await eventually(lambda: shop.state(ship), lambda s: s == "used")
    await shop.events(
        [paid(shop, "u-1", "o-2", [theirs, diapers, milk, second, "cpn_forged"]), paid(shop, "u-1", "o-3", [locked])]
    )
    await eventually(lambda: shop.state(milk), lambda s: s == "used")

    got = {c: await shop.coupon(c) for c in (locked, ship, milk, diapers, second, theirs)}
    assert (got[locked].state, got[locked].order_id, got[locked].discount_fen, got[locked].order_amount_fen) == (
        "used",
        "o-1",
        800,
        2400,
    )
    assert (got[ship].state, got[ship].order_id, got[ship].discount_fen) == ("used", "o-1", 600)
    assert (got[milk].state, got[milk].order_id, got[milk].discount_fen) == ("used", "o-2", 300)
    assert (got[diapers].state, got[second].state, got[theirs].state) == ("available",) * 3

    redeemed = {e.data.coupon_id: e.data for e in await shop.published("coupon.redeemed")}
    assert set(redeemed) == {locked, ship, milk}
    assert (redeemed[locked].order_id, redeemed[locked].discount_fen, redeemed[locked].order_amount_fen) == (
        "o-1",
        800,
        2400,
    )

    view = (await shop.client.get("/v1/customers/u-1/coupons", headers=H)).json()
    refused = {(r["order_id"], r["coupon_id"]): r["code"] for r in view["refused_redemptions"]}
    assert refused == {
        ("o-2", diapers): "out_of_scope",
        ("o-2", theirs): "not_yours",
        ("o-2", second): "stacking_conflict",
        ("o-2", "cpn_forged"): "unknown_coupon",
        ("o-3", locked): "already_used",
    }
    used = [c for c in view["coupons"] if c["state"] == "used"]
    assert {c["coupon_id"]: (c["order_id"], c["order_amount_fen"]) for c in used} == {
        locked: ("o-1", 2400),
        ship: ("o-1", 2400),
        milk: ("o-2", 3500),
    }
    mine = (await shop.client.get("/v1/me/coupons?state=used", headers=me)).json()["coupons"]
    assert mine[0]["coupon_id"] == milk  # the latest use first


async def test_a_payment_without_its_locked_coupon_releases_it(shop: Shop) -> None:
    me = await shop.token("u-1")
    [c] = await shop.issue(await shop.template(PERCENT_80), "u-1")
    assert (await lock(shop, me, c, "o-1")).status_code == 200
    await shop.events([paid(shop, "u-1", "o-1", [])])
    await eventually(lambda: shop.state(c), lambda s: s == "available")
    assert (await shop.coupon(c)).discount_fen is None
    [released] = await shop.published("coupon.released")
    assert (released.data.coupon_id, released.data.state, released.data.order_id) == (c, "available", "o-1")


async def test_a_cancelled_order_gives_its_coupons_back(shop: Shop) -> None:
    me = await shop.token("u-1")
    t = await shop.template(PERCENT_80, per_customer_limit=3)
    [held, spent, late] = await shop.issue(t, "u-1", count=3)
    assert (await lock(shop, me, held, "o-1")).status_code == 200
    await shop.events([paid(shop, "u-1", "o-2", [spent])])
    assert (await lock(shop, me, late, "o-3")).status_code == 200
    await eventually(lambda: shop.state(spent), lambda s: s == "used")
    # late's window ends while its order is open: cancelled, it comes back expired.
    await shop.end_window(late)

    await shop.events(
        [
            order_event(shop, "order.cancelled", "u-1", "o-1"),
            order_event(shop, "order.cancelled", "u-1", "o-2"),
            order_event(shop, "order.cancelled", "u-1", "o-3"),
        ]
    )
    await eventually(lambda: shop.state(late), lambda s: s == "expired")
    assert (await shop.state(held), await shop.state(spent)) == ("available", "available")
    assert (await shop.coupon(spent)).order_id is None
    released = {e.data.coupon_id: (e.data.state, e.data.order_id) for e in await shop.published("coupon.released")}
    assert released == {held: ("available", "o-1"), spent: ("available", "o-2"), late: ("expired", "o-3")}


async def test_a_full_refund_gives_coupons_back_only_under_the_restore_policy(shop: Shop) -> None:
    assert (await shop.client.get("/v1/coupons/policy", headers=H)).json() == {
        "refund_policy": "keep_used",
        "expiring_days_before": 3,
    }
    t = await shop.template(PERCENT_80, per_customer_limit=3)
    [kept, restored, partly] = await shop.issue(t, "u-1", count=3)
    await shop.events(
        [paid(shop, "u-1", "o-1", [kept]), paid(shop, "u-1", "o-2", [restored]), paid(shop, "u-1", "o-3", [partly])]
    )
    await eventually(lambda: shop.state(partly), lambda s: s == "used")

    await shop.events([order_event(shop, "order.refunded", "u-1", "o-1", refund_id="r-1", amount_fen=3500, full=True)])

    async def refunded() -> int:
        async with shop.rt.sessions() as session:
            return int(
                (
                    await session.execute(
                        select(orders.c.refunded_fen).where(
                            orders.c.merchant_id == shop.merchant_id, orders.c.order_id == "o-1"
                        )
                    )
                ).scalar_one()
            )

    await eventually(refunded, lambda fen: fen == 3500)  # applied under keep_used
    r = await shop.client.put("/v1/coupons/policy", json={"refund_policy": "restore"}, headers=H)
    assert r.status_code == 200 and r.json() == {"refund_policy": "restore", "expiring_days_before": 3}
    await shop.events(
        [
            order_event(shop, "order.refunded", "u-1", "o-2", refund_id="r-2", amount_fen=3500, full=True),
            order_event(shop, "order.refunded", "u-1", "o-3", refund_id="r-3", amount_fen=100),
        ]
    )
    await eventually(lambda: shop.state(restored), lambda s: s == "available")
    assert (await shop.state(kept), await shop.state(partly)) == ("used", "used")  # keep_used then; partial
    assert [e.data.coupon_id for e in await shop.published("coupon.released")] == [restored]

    assert (
        error(await shop.client.put("/v1/coupons/policy", json={"refund_policy": "give_back"}, headers=H), 422)[1]
        == "body.refund_policy"
    )
    assert (
        error(await shop.client.put("/v1/coupons/policy", json={"expiring_days_before": 0}, headers=H), 422)[1]
        == "body.expiring_days_before"
    )
    assert error(await shop.client.get("/v1/coupons/policy"), 401)[1] == "header.X-Api-Key"


# ---------------------------------------------------------------- the clock


async def every_coupon_event(shop: Shop) -> list[str]:
    """The ids of every coupon event raised so far, once the relay has published them all."""

    async def pending() -> int:
        async with shop.rt.sessions() as session:
            return int((await session.execute(select(func.count()).select_from(messaging.outbox))).scalar_one())

    await eventually(pending, lambda n: n == 0)
    cur = await shop.app.state.bus.db.execute("SELECT value FROM bus_log WHERE topic = 'fugou.coupons'")
    ids = sorted(parse_event(r[0]).event_id for r in await cur.fetchall())
    await cur.close()
    return ids


async def test_the_expiry_sweep_and_the_reminders_touch_each_coupon_once(
    shop: Shop, frozen_clock: clock.ManualClock
) -> None:
    now = frozen_clock.now()
    me = await shop.token("u-1")
    t = await shop.template(PERCENT_80, valid_days=10, per_customer_limit=5)
    ids = await shop.issue(t, "u-1", count=5)
    assert (await lock(shop, me, ids[4], "o-1")).status_code == 200  # locked: it waits for its order
    later = await shop.template(MILK_300_OFF, valid_days=20)
    [far] = await shop.issue(later, "u-1")
    sessions = shop.rt.sessions
    relay = shop.rt.relay
    assert relay is not None

    async def step(fn: Any, at: datetime, limit: int = wallet.CHUNK) -> int:
        async with sessions() as session, session.begin():
            return await fn(session, at, limit)  # type: ignore[no-any-return]

    # Day 8: the first four enter the 3-day window (the locked one does not), in chunks of 3.
    day8 = now + timedelta(days=8)
    assert await step(wallet.remind_expiring, day8, 3) == 3
    assert await step(wallet.remind_expiring, day8, 3) == 1
    assert await step(wallet.remind_expiring, day8) == 0  # safe to run again: nothing new
    await relay.publish_once()
    reminders = await shop.published("coupon.expiring")
    assert sorted(e.data.coupon_id for e in reminders) == sorted(ids[:4])
    assert {e.data.days_left for e in reminders} == {2} and reminders[0].data.template_name == "8折券"
    assert await shop.state(ids[0]) == "available"

    # A merchant with a 15-day window is reminded of the 20-day coupon at day 8 too.
    assert (
        await shop.client.put("/v1/coupons/policy", json={"expiring_days_before": 15}, headers=H)
    ).status_code == 200
    assert await step(wallet.remind_expiring, day8) == 1
    assert await step(wallet.remind_expiring, day8) == 0
    assert far in {e.data.coupon_id for e in await shop.published("coupon.expiring")}

    # Day 11: the available ones expire; the locked one waits; the 20-day one is not due.
    day11 = now + timedelta(days=11)
    assert await step(wallet.expire_due, day11, 3) == 3
    assert await step(wallet.expire_due, day11, 3) == 1
    before = await every_coupon_event(shop)
    assert await step(wallet.expire_due, day11) == 0 and await step(wallet.remind_expiring, day11) == 0
    assert (await wallet.run_clock(sessions, day11)) == (0, 0)
    assert await every_coupon_event(shop) == before  # running again raised nothing
    assert [await shop.state(c) for c in ids] == ["expired"] * 4 + ["locked"]
    assert await shop.state(far) == "available"
    expired = await shop.published("coupon.expired")
    assert sorted(e.data.coupon_id for e in expired) == sorted(ids[:4])
    assert all(e.data.state == "expired" for e in expired)

    # A payment made before the expiry and delivered after the sweep still redeems the coupon.
    await shop.events([paid(shop, "u-1", "o-9", [ids[0]], at=now + timedelta(days=1))])
    await eventually(lambda: shop.state(ids[0]), lambda s: s == "used")


# ---------------------------------------------------------------- merchants apart


async def test_a_customer_token_of_one_merchant_never_reaches_another_merchants_coupons(shop: Shop) -> None:
    r = await shop.client.post(
        "/v1/platform/merchants", headers={"X-Admin-Token": ADMIN_TOKEN}, json={"merchant_id": "m-b", "name": "Shop B"}
    )
    assert r.status_code == 201, r.text
    b = Shop(shop.client, shop.app, "m-b", {"X-Api-Key": r.json()["api_key"]})
    await eventually(lambda: b.client.get("/v1/coupons/policy", headers=b.headers), lambda r: r.status_code == 200)

    # The same template ids at both shops: only the merchant keeps them apart.
    [a_coupon] = await shop.issue(await shop.template(PERCENT_80, "tpl-1"), "same")
    b_public = await b.template(PERCENT_80, "tpl-2", public=True)
    [b_coupon] = await b.issue(await b.template(MILK_300_OFF, "tpl-1"), "same")
    a_same, b_same = await shop.token("same"), await b.token("same")

    mine = (await shop.client.get("/v1/me/coupons", headers=a_same)).json()["coupons"]
    assert [c["coupon_id"] for c in mine] == [a_coupon]
    assert [c["coupon_id"] for c in (await b.client.get("/v1/me/coupons", headers=b_same)).json()["coupons"]] == [
        b_coupon
    ]
    assert error(await lock(shop, a_same, b_coupon, "o-1"), 404)[0] == "not_found"
    assert (
        error(await shop.client.post("/v1/me/coupons/claim", json={"template_id": b_public}, headers=a_same), 404)[0]
        == "not_found"
    )
    applicable = (await shop.client.post("/v1/me/coupons/applicable", json=CART, headers=a_same)).json()
    assert [c["coupon_id"] for c in applicable["coupons"]] == [a_coupon]
    assert [
        c["coupon_id"] for c in (await shop.client.get("/v1/customers/same/coupons", headers=H)).json()["coupons"]
    ] == [a_coupon]
    # A's order naming B's coupon redeems nothing at B.
    await shop.events([paid(shop, "same", "o-x", [b_coupon, a_coupon])])
    await eventually(lambda: shop.state(a_coupon), lambda s: s == "used")
    assert await b.state(b_coupon) == "available"
