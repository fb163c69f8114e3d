"""Points and stored value never overspend under concurrency, against real PostgreSQL:

- 100 concurrent redemptions (mall items and checkout offsets, mixed) against one balance:
  exactly ⌊balance / cost⌋ succeed, the others answer 409 insufficient_points, the balance ends
  at the remainder and never went negative, and the ledger reconciles;
- 100 concurrent stored-value spends against one balance: the same;
- two clocks at once mature each order exactly once (FOR UPDATE SKIP LOCKED);
- the consumer's batches and customers' redemptions on the same accounts at the same time leave
  every ledger reconciled.

Customers' calls go over HTTP to the loyalty API alone (each request its own session and pooled
connection); the consumer's batches and the clocks call the service layer with a session each."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from services.loyalty.adapters.tables import accounts, entries, messaging, order_points, sv_accounts
from services.loyalty.service_layer.clock import run_clock
from services.loyalty.service_layer.handlers import handle
from services.loyalty.spec import SPEC
from shared import clock
from shared.cli import build_service_app
from shared.events import parse_event
from shared.runtime import ServiceRuntime
from shared.tenancy import hash_api_key, mint_customer_token
from tests.conftest import embedded_settings, running

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(300)]

MERCHANT = "m-race"
SECRET = "race-secret-0123456789abcdefghijklmnopqrstuvwxyz"
KEY = "fg_race_key"


@dataclass
class Api:
    client: httpx.AsyncClient
    rt: ServiceRuntime
    admin: dict[str, str]

    def me(self, customer_id: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {mint_customer_token(MERCHANT, customer_id, SECRET)}"}

    async def scalar(self, statement: Any) -> Any:
        async with self.rt.sessions() as session:
            return (await session.execute(statement)).scalar()

    async def reconciled(self, customer_id: str) -> dict[str, Any]:
        r = await self.client.get(f"/v1/loyalty/customers/{customer_id}/reconciliation", headers=self.admin)
        assert r.status_code == 200, r.text
        assert r.json()["ok"], r.json()
        return r.json()  # type: ignore[no-any-return]


@pytest.fixture
async def api(tmp_path: Path, pg_urls: dict[str, str]) -> AsyncIterator[Api]:
    """The loyalty API alone on PostgreSQL (no consumer, no relay: the outbox keeps every event)."""
    settings = embedded_settings(tmp_path, loyalty_database_url=pg_urls["loyalty"])
    app = build_service_app(SPEC, settings, {"api", "migrate"})
    async with running(app) as client:
        rt = app.state.runtimes["loyalty"]
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
            await session.execute(
                messaging.merchant_keys.insert().values(
                    key_hash=hash_api_key(KEY, settings.api_key_pepper.get_secret_value()), merchant_id=MERCHANT
                )
            )
        yield Api(client, rt, {"X-Api-Key": KEY})


async def test_100_concurrent_redemptions_against_one_balance_never_overspend(api: Api) -> None:
    balance, cost = 1_050, 100
    r = await api.client.post(
        "/v1/loyalty/adjustments",
        headers=api.admin,
        json={"customer_id": "u-1", "points": balance, "reason": "race seed", "operator": "test"},
    )
    assert r.status_code == 201, r.text
    r = await api.client.post(
        "/v1/loyalty/mall/items",
        headers=api.admin,
        json={"item_id": "c1", "name": "1元券", "points": cost, "reward": {"type": "coupon", "template_id": "t1"}},
    )
    assert r.status_code == 201, r.text
    me = api.me("u-1")

    async def redeem(i: int) -> httpx.Response:
        if i % 2:
            return await api.client.post("/v1/me/mall/redeem", json={"item_id": "c1"}, headers=me)
        return await api.client.post(
            "/v1/me/points/offset", headers=me, json={"order_id": f"o-{i}", "order_fen": 100_000, "points": cost}
        )

    responses = await asyncio.gather(*(redeem(i) for i in range(100)))
    statuses = Counter(r.status_code for r in responses)
    assert statuses == {201: balance // cost, 409: 100 - balance // cost}, statuses
    assert {r.json()["error"]["code"] for r in responses if r.status_code == 409} == {"insufficient_points"}
    left = await api.scalar(select(accounts.c.balance).where(accounts.c.customer_id == "u-1"))
    assert left == balance % cost
    # Never negative at any point: every prefix of the entries, in commit order, stays at or above zero.
    running_total, lowest = 0, 0
    async with api.rt.sessions() as session:
        for (points,) in await session.execute(
            select(entries.c.points).where(entries.c.customer_id == "u-1").order_by(entries.c.id)
        ):
            running_total += points
            lowest = min(lowest, running_total)
    assert (running_total, lowest) == (balance % cost, 0)
    proof = await api.reconciled("u-1")
    assert proof["balance"] == balance % cost and proof["entries"] == 1 + balance // cost
    async with api.rt.sessions() as session:
        outbox = [parse_event(p) for p in (await session.execute(select(messaging.outbox.c.payload))).scalars()]
    assert sum(1 for e in outbox if e.type == "points.redeemed") == balance // cost


async def test_100_concurrent_stored_value_spends_never_overspend(api: Api) -> None:
    r = await api.client.post(
        "/v1/loyalty/stored-value/plans",
        headers=api.admin,
        json={"plan_id": "p500", "name": "充500送50", "pay_fen": 50_000, "bonus_fen": 5_000},
    )
    assert r.status_code == 201, r.text
    r = await api.client.post(
        "/v1/loyalty/stored-value/top-ups",
        headers=api.admin,
        json={"customer_id": "u-1", "plan_id": "p500", "payment_ref": "wx-1"},
    )
    assert r.status_code == 201, r.text
    total, cost = 55_000, 3_000

    async def pay(i: int) -> httpx.Response:
        return await api.client.post(
            "/v1/loyalty/stored-value/spends",
            headers=api.admin,
            json={"customer_id": "u-1", "order_id": f"o-{i}", "amount_fen": cost},
        )

    responses = await asyncio.gather(*(pay(i) for i in range(100)))
    statuses = Counter(r.status_code for r in responses)
    assert statuses == {201: total // cost, 409: 100 - total // cost}, statuses
    assert {r.json()["error"]["code"] for r in responses if r.status_code == 409} == {"insufficient_balance"}
    async with api.rt.sessions() as session:
        paid, bonus = (
            await session.execute(
                select(sv_accounts.c.paid_fen, sv_accounts.c.bonus_fen).where(sv_accounts.c.customer_id == "u-1")
            )
        ).one()
    assert paid + bonus == total % cost and paid >= 0 and bonus >= 0
    proof = await api.reconciled("u-1")
    assert proof["stored_value_ok"] is True


def _paid(customer_id: str, order_id: str, amount_fen: int, at: datetime) -> Any:
    return parse_event(
        {
            "event_id": str(uuid.uuid4()),
            "type": "order.paid",
            "merchant_id": MERCHANT,
            "customer_id": customer_id,
            "occurred_at": at.isoformat(),
            "data": {"order_id": order_id, "amount_fen": amount_fen},
        }
    )


async def test_two_clocks_at_once_mature_each_order_exactly_once(api: Api) -> None:
    now = clock.now()
    async with api.rt.sessions() as session, session.begin():
        await handle(session, [_paid(f"u-{i % 50}", f"o-{i}", 1_000, now) for i in range(300)])
    later = now + timedelta(days=8)
    first, second = await asyncio.gather(
        run_clock(api.rt.sessions, later, chunk=40), run_clock(api.rt.sessions, later, chunk=40)
    )
    await run_clock(api.rt.sessions, later, chunk=40)  # whatever a busy customer left for the next round
    assert (
        await api.scalar(select(func.count()).select_from(order_points).where(order_points.c.matured.is_(False))) == 0
    )
    assert await api.scalar(select(func.count()).select_from(entries).where(entries.c.kind == "earn_available")) == 300
    assert first["matured"] + second["matured"] <= 300
    assert await api.scalar(select(func.sum(accounts.c.balance))) == 300 * 10
    for i in range(0, 50, 7):
        await api.reconciled(f"u-{i}")


async def test_the_consumer_and_customers_on_the_same_accounts_at_once_keep_every_ledger_reconciled(api: Api) -> None:
    now = clock.now()
    customers = [f"u-{i}" for i in range(10)]
    for cid in customers:
        r = await api.client.post(
            "/v1/loyalty/adjustments",
            headers=api.admin,
            json={"customer_id": cid, "points": 500, "reason": "seed", "operator": "test"},
        )
        assert r.status_code == 201, r.text

    async def consume(batch: int) -> None:
        events = [_paid(cid, f"o-{batch}-{cid}", 2_000, now - timedelta(days=30)) for cid in customers]
        async with api.rt.sessions() as session, session.begin():
            await handle(session, events)

    async def spend(i: int) -> httpx.Response:
        cid = customers[i % len(customers)]
        return await api.client.post(
            "/v1/me/points/offset", headers=api.me(cid), json={"order_id": f"x-{i}", "order_fen": 100_000, "points": 90}
        )

    results = await asyncio.gather(*(consume(b) for b in range(5)), *(spend(i) for i in range(60)))
    statuses = Counter(r.status_code for r in results if isinstance(r, httpx.Response))
    assert set(statuses) <= {201, 409}, statuses
    # 500 seeded + 5 × 20 earned (the window closed long ago) = 600 each, spent 90 at a time.
    for cid in customers:
        proof = await api.reconciled(cid)
        assert proof["balance"] >= 0
    assert await api.scalar(select(func.sum(accounts.c.balance))) == 10 * 600 - 90 * statuses[201]
