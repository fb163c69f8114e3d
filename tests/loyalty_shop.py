"""The loyalty scenarios' shop (no tests here): the embedded app (every service, the in-process
bus), with loyalty on SQLite or on a real PostgreSQL database. Events go in through POST
/v1/events, the mini-program and the merchant call the HTTP API, and loyalty's clock (maturing,
expiry, reviews) is run by hand at any moment. Used by the unit tests (SQLite) and the
integration tests (the same scenarios on SQLite and PostgreSQL)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
from sqlalchemy import func, select

from services.embedded import build_embedded_app
from services.loyalty.adapters.tables import messaging
from services.loyalty.service_layer.clock import run_clock
from shared import clock
from shared.events import parse_event
from shared.runtime import ServiceRuntime
from tests.conftest import ADMIN_TOKEN, embedded_settings, running
from tests.factories import eventually

KEY = "fg_loyalty_key"
SH = ZoneInfo("Asia/Shanghai")
DAY = timedelta(days=1)
LADDER = {
    "levels": [
        {"code": "silver", "name": "白银会员", "threshold": 0},
        {
            "code": "gold",
            "name": "黄金会员",
            "threshold": 1000,
            "keep_threshold": 600,
            "benefits": {"pay_percent": 95, "points_multiplier_permille": 1500},
        },
    ],
    "review": {"every_months": 1, "grace_days": 7},
}


def local_midnight_after(moment: datetime, days: int) -> datetime:
    """The local midnight starting the day ``days`` days after ``moment``'s local day."""
    d = moment.astimezone(SH).date() + timedelta(days=days)
    return datetime(d.year, d.month, d.day, tzinfo=SH)


@dataclass
class Shop:
    client: httpx.AsyncClient
    app: Any
    merchant_id: str
    headers: dict[str, str]

    @property
    def rt(self) -> ServiceRuntime:
        return self.app.state.runtimes["loyalty"]  # type: ignore[no-any-return]

    async def token(self, customer_id: str) -> dict[str, str]:
        r = await self.client.post("/v1/customer-tokens", json={"customer_id": customer_id}, headers=self.headers)
        assert r.status_code == 200, r.text
        return {"Authorization": f"Bearer {r.json()['token']}"}

    async def rules(self, **parts: Any) -> dict[str, Any]:
        r = await self.client.put("/v1/loyalty/rules", json=parts, headers=self.headers)
        assert r.status_code == 200, r.text
        return r.json()  # type: ignore[no-any-return]

    async def send(self, *events: dict[str, Any]) -> None:
        """Send events and wait until loyalty has applied them (its inbox holds their ids)."""
        r = await self.client.post("/v1/events", json=list(events), headers=self.headers)
        assert r.status_code == 200, r.text
        assert r.json()["accepted"] == len(events), r.text
        ids = [e["event_id"] for e in events]
        inbox = messaging.inbox

        async def applied() -> int:
            async with self.rt.sessions() as session:
                return int(
                    (
                        await session.execute(
                            select(func.count())
                            .select_from(inbox)
                            .where(inbox.c.merchant_id == self.merchant_id, inbox.c.event_id.in_(ids))
                        )
                    ).scalar_one()
                )

        await eventually(applied, lambda n: n == len(ids), timeout=30)

    async def clock(self, now: datetime) -> dict[str, int]:
        return await run_clock(self.rt.sessions, now)

    async def points(self, customer_id: str) -> dict[str, Any]:
        r = await self.client.get(f"/v1/loyalty/customers/{customer_id}/points", headers=self.headers)
        assert r.status_code == 200, r.text
        return r.json()  # type: ignore[no-any-return]

    async def history(self, customer_id: str) -> list[dict[str, Any]]:
        r = await self.client.get(f"/v1/loyalty/customers/{customer_id}/points/history", headers=self.headers)
        assert r.status_code == 200, r.text
        return list(reversed(r.json()["entries"]))  # oldest first

    async def reconciled(self, customer_id: str) -> dict[str, Any]:
        """The customer's reconciliation, asserted ok (balance == Σ entries == Σ lots, …)."""
        r = await self.client.get(f"/v1/loyalty/customers/{customer_id}/reconciliation", headers=self.headers)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["ok"], body
        assert body["balance"] == body["lots_remaining"] == body["stored"]["balance"], body
        return body  # type: ignore[no-any-return]

    async def published(self, type_: str) -> list[Any]:
        """Loyalty events of this merchant staged in the outbox or already on the bus."""
        async with self.rt.sessions() as session:
            found = [parse_event(p) for p in (await session.execute(select(messaging.outbox.c.payload))).scalars()]
        cur = await self.app.state.bus.db.execute("SELECT value FROM bus_log WHERE topic = 'fugou.loyalty'")
        found += [parse_event(r[0]) for r in await cur.fetchall()]
        await cur.close()
        unique = {e.event_id: e for e in found}
        return [e for e in unique.values() if e.type == type_ and e.merchant_id == self.merchant_id]

    async def other_merchant(self, merchant_id: str) -> Shop:
        """A second merchant on the same system, known to loyalty."""
        r = await self.client.post(
            "/v1/platform/merchants",
            json={"merchant_id": merchant_id, "name": merchant_id},
            headers={"X-Admin-Token": ADMIN_TOKEN},
        )
        assert r.status_code == 201, r.text
        headers = {"X-Api-Key": r.json()["api_key"]}

        async def known() -> int:
            return (await self.client.get("/v1/loyalty/status", headers=headers)).status_code

        await eventually(known, lambda s: s == 200)
        return Shop(self.client, self.app, merchant_id, headers)


def error(r: httpx.Response, status: int) -> tuple[str, str | None]:
    """(code, field) of a refusal, asserting its status."""
    assert r.status_code == status, r.text
    body = r.json()["error"]
    fields = body.get("fields") or [{}]
    return body["code"], fields[0].get("field")


def event(shop: Shop, type_: str, customer_id: str, at: datetime | None = None, **data: Any) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "type": type_,
        "merchant_id": shop.merchant_id,
        "customer_id": customer_id,
        "occurred_at": (at or clock.now()).isoformat(),
        "data": data,
    }


def paid(shop: Shop, customer_id: str, order_id: str, amount_fen: int, at: datetime | None = None) -> dict[str, Any]:
    return event(
        shop,
        "order.paid",
        customer_id,
        at,
        order_id=order_id,
        amount_fen=amount_fen,
        items=[{"sku": "milk-900g", "category": "milk-powder", "quantity": 1, "amount_fen": amount_fen}],
    )


def refunded(
    shop: Shop, customer_id: str, order_id: str, amount_fen: int, at: datetime | None = None, full: bool = False
) -> dict[str, Any]:
    return event(
        shop,
        "order.refunded",
        customer_id,
        at,
        order_id=order_id,
        refund_id=f"r-{uuid.uuid4().hex[:8]}",
        amount_fen=amount_fen,
        full=full,
    )


def cancelled(shop: Shop, customer_id: str, order_id: str, at: datetime | None = None) -> dict[str, Any]:
    return event(shop, "order.cancelled", customer_id, at, order_id=order_id)


@asynccontextmanager
async def open_shop(tmp_path: Path, database_url: str | None = None) -> AsyncIterator[Shop]:
    extra = {"loyalty_database_url": database_url} if database_url else {}
    app = build_embedded_app(embedded_settings(tmp_path, bootstrap_api_key=KEY, **extra), announce=False)
    async with running(app) as client:
        yield Shop(client, app, "demo", {"X-Api-Key": KEY})
