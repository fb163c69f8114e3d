"""Limits that hold under concurrency, against real PostgreSQL (the issue's "exactly once"):

- 500 concurrent claims of a public coupon with stock 100 issue exactly 100;
- a per-customer limit of 1 holds against 50 concurrent claims by one customer;
- two redemptions of one coupon (two paid orders naming it, applied in two concurrent
  transactions that both read it before either writes) never both succeed;
- two concurrent locks of one coupon to two orders: one wins, the other answers 409;
- concurrent expiry sweeps expire each coupon once (FOR UPDATE SKIP LOCKED).

Claims and locks go over HTTP to the coupons API (each request its own session and connection
from the pool); redemptions and sweeps call the service layer with a session each."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from services.coupons.adapters.tables import coupons, customer_limits, messaging, redemption_refusals, templates
from services.coupons.domain.templates import CouponTemplate
from services.coupons.service_layer import wallet
from services.coupons.service_layer.issue import issue
from services.coupons.service_layer.templates import create_template, get_template
from services.coupons.spec import SPEC
from shared import clock
from shared.cli import build_service_app
from shared.events import parse_event
from shared.runtime import ServiceRuntime
from shared.tenancy import mint_customer_token
from tests.conftest import embedded_settings, running

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(300)]

MERCHANT = "m-race"
SECRET = "race-secret-0123456789abcdefghijklmnopqrstuvwxyz"
PERCENT = {"name": "抢券 8折", "kind": {"type": "percent", "pay_percent": 80}, "valid_days": 7}
CART = {"lines": [{"sku": "milk-900g", "category": "milk-powder", "quantity": 1, "amount_fen": 3000}]}


@dataclass
class Api:
    client: httpx.AsyncClient
    rt: ServiceRuntime

    async def template(self, **over: Any) -> str:
        async with self.rt.sessions() as session, session.begin():
            return (await create_template(session, MERCHANT, CouponTemplate.model_validate(PERCENT | over))).template_id

    async def issue(self, template_id: str, customer_id: str, count: int = 1) -> list[str]:
        async with self.rt.sessions() as session, session.begin():
            stored = await get_template(session, MERCHANT, template_id)
            assert stored is not None
            result = await issue(session, MERCHANT, stored, [customer_id], count=count, now=clock.now())
        return [c for _, c in result.issued]

    async def scalar(self, statement: Any) -> Any:
        async with self.rt.sessions() as session:
            return (await session.execute(statement)).scalar()

    async def claim(self, customer_id: str, template_id: str) -> httpx.Response:
        token = mint_customer_token(MERCHANT, customer_id, SECRET)
        return await self.client.post(
            "/v1/me/coupons/claim", json={"template_id": template_id}, headers={"Authorization": f"Bearer {token}"}
        )


@pytest.fixture
async def api(tmp_path: Path, pg_urls: dict[str, str]) -> AsyncIterator[Api]:
    """The coupons API alone on PostgreSQL (no consumer, no relay: the outbox keeps every event)."""
    app = build_service_app(
        SPEC, embedded_settings(tmp_path, coupons_database_url=pg_urls["coupons"]), {"api", "migrate"}
    )
    async with running(app) as client:
        rt = app.state.runtimes["coupons"]
        async with rt.sessions() as session, session.begin():
            await session.execute(
                messaging.merchants.insert().values(
                    merchant_id=MERCHANT,
                    name=MERCHANT,
                    timezone="Asia/Shanghai",
                    jwt_secret=SECRET.encode(),
                    active=True,
                    updated_at=clock.now(),
                )
            )
        yield Api(client, rt)


async def outbox_events(rt: ServiceRuntime, type_: str) -> list[Any]:
    async with rt.sessions() as session:
        payloads = (await session.execute(select(messaging.outbox.c.payload))).scalars()
        return [e for e in map(parse_event, payloads) if e.type == type_]


async def test_500_concurrent_claims_of_a_coupon_with_stock_100_issue_exactly_100(api: Api) -> None:
    tid = await api.template(public=True, stock=100)
    responses = await asyncio.gather(*(api.claim(f"u-{i}", tid) for i in range(500)))
    statuses = Counter(r.status_code for r in responses)
    assert statuses == {201: 100, 409: 400}, statuses
    assert {r.json()["error"]["code"] for r in responses if r.status_code == 409} == {"out_of_stock"}
    winners = {r.json()["coupon_id"] for r in responses if r.status_code == 201}
    assert len(winners) == 100
    assert await api.scalar(select(func.count()).select_from(coupons).where(coupons.c.template_id == tid)) == 100
    assert await api.scalar(select(templates.c.issued).where(templates.c.template_id == tid)) == 100
    # Nobody refused keeps a count against the per-customer limit; each winner holds one.
    assert (
        await api.scalar(select(func.sum(customer_limits.c.issued)).where(customer_limits.c.template_id == tid)) == 100
    )
    assert (
        await api.scalar(select(func.count(func.distinct(coupons.c.customer_id))).where(coupons.c.template_id == tid))
        == 100
    )
    assert {e.data.coupon_id for e in await outbox_events(api.rt, "coupon.issued")} == winners


async def test_a_per_customer_limit_of_1_holds_against_50_concurrent_claims_by_one_customer(api: Api) -> None:
    tid = await api.template(public=True, stock=1000, per_customer_limit=1)
    responses = await asyncio.gather(*(api.claim("greedy", tid) for _ in range(50)))
    statuses = Counter(r.status_code for r in responses)
    assert statuses == {201: 1, 409: 49}, statuses
    assert {r.json()["error"]["code"] for r in responses if r.status_code == 409} == {"limit_reached"}
    assert (
        await api.scalar(
            select(func.count())
            .select_from(coupons)
            .where(coupons.c.template_id == tid, coupons.c.customer_id == "greedy")
        )
        == 1
    )
    assert await api.scalar(select(templates.c.issued).where(templates.c.template_id == tid)) == 1
    assert await api.scalar(select(customer_limits.c.issued).where(customer_limits.c.template_id == tid)) == 1


def paid(customer_id: str, order_id: str, coupon_ids: list[str]) -> Any:
    return parse_event(
        {
            "event_id": str(uuid.uuid4()),
            "type": "order.paid",
            "merchant_id": MERCHANT,
            "customer_id": customer_id,
            "occurred_at": clock.now().isoformat(),
            "data": {
                "order_id": order_id,
                "amount_fen": 2400,
                "coupon_ids": coupon_ids,
                "items": [{"sku": "milk-900g", "category": "milk-powder", "quantity": 1, "amount_fen": 3000}],
            },
        }
    )


async def redeem_concurrently(rt: ServiceRuntime, events: list[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """Apply each event in its own transaction, all at once; every transaction reads the coupons
    before any of them writes (a barrier after each one's first read)."""
    barrier = asyncio.Barrier(len(events))
    first_read: set[asyncio.Task[Any]] = set()
    load = wallet._load

    async def load_then_wait(*args: Any, **kwargs: Any) -> Any:
        rows = await load(*args, **kwargs)
        task = asyncio.current_task()
        assert task is not None
        if task not in first_read:
            first_read.add(task)
            await barrier.wait()
        return rows

    monkeypatch.setattr(wallet, "_load", load_then_wait)

    async def apply(event: Any) -> None:
        async with rt.sessions() as session, session.begin():
            await wallet.apply_order_events(session, [event])

    await asyncio.wait_for(asyncio.gather(*(apply(e) for e in events)), 60)
    monkeypatch.setattr(wallet, "_load", load)


async def test_two_concurrent_redemptions_of_one_coupon_never_both_succeed(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    tid = await api.template(per_customer_limit=None)
    ids = await api.issue(tid, "u-1", count=20)
    for i, coupon_id in enumerate(ids):
        await redeem_concurrently(
            api.rt, [paid("u-1", f"o-{i}-a", [coupon_id]), paid("u-1", f"o-{i}-b", [coupon_id])], monkeypatch
        )
    async with api.rt.sessions() as session:
        rows = (
            await session.execute(
                select(coupons.c.coupon_id, coupons.c.state, coupons.c.order_id, coupons.c.version).where(
                    coupons.c.template_id == tid
                )
            )
        ).all()
        refused = (
            await session.execute(
                select(redemption_refusals.c.coupon_id, redemption_refusals.c.order_id, redemption_refusals.c.code)
            )
        ).all()
    assert {r.state for r in rows} == {"used"} and {r.version for r in rows} == {1}
    used_on = {r.coupon_id: r.order_id for r in rows}
    # Exactly one redemption per coupon: one coupon.redeemed, and the other order refused.
    redeemed = Counter(e.data.coupon_id for e in await outbox_events(api.rt, "coupon.redeemed"))
    assert redeemed == Counter({c: 1 for c in ids})
    assert {e.data.order_id for e in await outbox_events(api.rt, "coupon.redeemed")} == set(used_on.values())
    assert len(refused) == 20 and {r.code for r in refused} == {"already_used"}
    assert all(used_on[r.coupon_id] != r.order_id for r in refused)


async def test_two_concurrent_locks_of_one_coupon_to_two_orders_one_wins(api: Api) -> None:
    ids = await api.issue(await api.template(per_customer_limit=None), "u-1", count=10)
    token = {"Authorization": f"Bearer {mint_customer_token(MERCHANT, 'u-1', SECRET)}"}
    for round_, coupon_id in enumerate(ids):
        responses = await asyncio.gather(
            *(
                api.client.post(
                    f"/v1/me/coupons/{coupon_id}/lock",
                    json={"order_id": f"o-{round_}-{k}", "cart": CART},
                    headers=token,
                )
                for k in range(2)
            )
        )
        assert sorted(r.status_code for r in responses) == [200, 409], [r.text for r in responses]
        loser = next(r for r in responses if r.status_code == 409).json()["error"]
        assert loser["code"] in ("locked_to_other_order", "concurrent_change")
        winner = next(r for r in responses if r.status_code == 200).json()
        assert (
            await api.scalar(select(coupons.c.order_id).where(coupons.c.coupon_id == coupon_id)) == winner["order_id"]
        )


async def test_concurrent_expiry_sweeps_expire_each_coupon_once(api: Api) -> None:
    tid = await api.template(per_customer_limit=None)
    ids = []
    for i in range(10):
        ids += await api.issue(tid, f"u-{i}", count=300)
    later = clock.now() + timedelta(days=8)
    results = await asyncio.gather(*(wallet.run_clock(api.rt.sessions, later, chunk=250) for _ in range(3)))
    assert sum(expired for expired, _ in results) == len(ids) == 3000
    assert await api.scalar(select(func.count()).select_from(coupons).where(coupons.c.state == "expired")) == 3000
    events = Counter(e.data.coupon_id for e in await outbox_events(api.rt, "coupon.expired"))
    assert len(events) == 3000 and set(events.values()) == {1}
    assert await wallet.run_clock(api.rt.sessions, later) == (0, 0)
