"""The coupons scenarios' shop (no tests here): the embedded app (every service, one bus) driven
as the shop drives it (POST /v1/events, the admin API) and read back from coupons' own tables,
with the builders of the events and templates the scenarios send. Used by the unit tests (SQLite,
the in-process bus) and the integration tests (the same scenarios on Kafka and PostgreSQL).

Times are built from the suite's clock (tests.factories), never written as calendar dates."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
from fastapi import FastAPI
from sqlalchemy import func, insert, select

from services.coupons.adapters import segmentation as seg
from services.coupons.adapters.tables import coupons, customer_segments, issuances, messaging
from services.embedded import build_embedded_app
from shared.bus.base import Message
from shared.bus.inprocess import InProcessBus
from shared.db import create_engine
from shared.events import parse_event
from shared.settings import Settings
from tests.conftest import embedded_settings, running
from tests.factories import eventually, local_day, order_paid

KEY = "fg_coupons_issuance_key"
H = {"X-Api-Key": KEY}
M = "demo"
T0 = local_day(-30, 10)  # a month ago, 10:00 in Shanghai: when the scenarios' orders begin
LATER = local_day(4 * 365)  # crafted segments win over segmentation's own (stamped with the clock's now)


def paid(
    customer: str,
    order: str,
    fen: int = 8000,
    at: datetime = T0,
    category: str = "milk-powder",
    event_id: str | None = None,
) -> dict[str, Any]:
    return order_paid(M, customer, order, fen, at=at, category=category, event_id=event_id)


def cancelled(customer: str, order: str, at: datetime = T0) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "type": "order.cancelled",
        "merchant_id": M,
        "customer_id": customer,
        "occurred_at": at.isoformat(),
        "data": {"order_id": order},
    }


def referred(referee: str, referrer: str, at: datetime = T0 - timedelta(days=1)) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "type": "referral.bound",
        "merchant_id": M,
        "customer_id": referee,
        "occurred_at": at.isoformat(),
        "data": {"referrer_id": referrer},
    }


def registered(customer: str, region: str) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "type": "customer.registered",
        "merchant_id": M,
        "customer_id": customer,
        "occurred_at": T0.isoformat(),
        "data": {"region": region},
    }


def segment(
    customer: str, before: dict[str, Any] | None, after: dict[str, Any] | None, at: datetime = LATER
) -> dict[str, Any]:
    def state(s: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if s is None else {"tier": None, "cell": None, "rfm_class": None, "tags": [], **s}

    return {
        "event_id": str(uuid.uuid4()),
        "type": "segment.changed",
        "merchant_id": M,
        "customer_id": customer,
        "occurred_at": at.isoformat(),
        "schema_version": 1,
        "data": {"before": state(before), "after": state(after), "config_version": 1},
    }


def percent_template(name: str = "回购券", pay_percent: int = 85, **over: Any) -> dict[str, Any]:
    return {
        "name": name,
        "kind": {"type": "percent", "pay_percent": pay_percent},
        "valid_days": 30,
        "per_customer_limit": None,
        **over,
    }


def cash_template(fen: int = 1000, **over: Any) -> dict[str, Any]:
    return {
        "name": f"{fen // 100}元无门槛券",
        "kind": {"type": "no_threshold", "amount_off_fen": fen},
        "valid_days": 30,
        "per_customer_limit": None,
        **over,
    }


@dataclass
class Shop:
    """The embedded app under test, and what a test needs to drive and read it."""

    app: FastAPI
    client: httpx.AsyncClient
    sent: set[str] = field(default_factory=set)

    @property
    def rt(self) -> Any:
        return self.app.state.runtimes["coupons"]

    async def send(self, *events: dict[str, Any]) -> None:
        r = await self.client.post("/v1/events", json=list(events), headers=H)
        assert r.status_code == 200 and r.json()["rejected"] == 0, r.text
        self.sent.update(e["event_id"] for e in events)

    async def redeliver(self, *events: dict[str, Any]) -> None:
        """Put events on the bus again as they are, as a broker redelivering would."""
        topics = {
            "segment.changed": "fugou.segments",
            "referral.bound": "shop.customers",
            "customer.registered": "shop.customers",
        }
        await self.app.state.bus.publish(
            [
                Message(
                    topic=topics.get(e["type"], "shop.orders"),
                    key=f"{M}:{e['customer_id']}".encode(),
                    value=orjson.dumps(e),
                )
                for e in events
            ]
        )
        self.sent.update(e["event_id"] for e in events)

    async def settled(self) -> None:
        """Wait until coupons has applied every event sent so far (so "nothing more" is true)."""
        inbox = messaging.inbox

        async def applied() -> int:
            async with self.rt.sessions() as s:
                return int(
                    (
                        await s.execute(
                            select(func.count()).select_from(inbox).where(inbox.c.event_id.in_(sorted(self.sent)))
                        )
                    ).scalar_one()
                )

        await eventually(applied, lambda n: n == len(self.sent), timeout=30)

    async def template(self, body: dict[str, Any]) -> str:
        r = await self.client.post("/v1/coupons/templates", json=body, headers=H)
        assert r.status_code == 201, r.text
        return r.json()["template_id"]  # type: ignore[no-any-return]

    async def rule(self, body: dict[str, Any]) -> str:
        r = await self.client.post("/v1/coupons/rules", json={"name": "rule", **body}, headers=H)
        assert r.status_code == 201, r.text
        return r.json()["rule_id"]  # type: ignore[no-any-return]

    async def preset(self, name: str, **params: Any) -> dict[str, Any]:
        r = await self.client.post(f"/v1/coupons/presets/{name}", json=params, headers=H)
        assert r.status_code == 201, r.text
        return r.json()  # type: ignore[no-any-return]

    async def wallet(self, customer: str, rule_id: str | None = None) -> Counter[str]:
        """The customer's coupons, counted by template."""
        c = coupons.c
        q = select(c.template_id).where(c.merchant_id == M, c.customer_id == customer)
        async with self.rt.sessions() as s:
            return Counter((await s.execute(q if rule_id is None else q.where(c.rule_id == rule_id))).scalars())

    async def holders(self, rule_id: str) -> Counter[str]:
        """Coupons of a rule, counted by customer."""
        async with self.rt.sessions() as s:
            return Counter(
                (
                    await s.execute(
                        select(coupons.c.customer_id).where(coupons.c.merchant_id == M, coupons.c.rule_id == rule_id)
                    )
                ).scalars()
            )

    async def decisions(self, rule_id: str) -> list[tuple[str, str, str]]:
        i = issuances.c
        async with self.rt.sessions() as s:
            return sorted(
                (
                    await s.execute(
                        select(i.customer_id, i.trigger_key, i.outcome).where(i.merchant_id == M, i.rule_id == rule_id)
                    )
                ).all()
            )

    async def outcomes(self, rule_id: str) -> Counter[str]:
        return Counter(o for _, _, o in await self.decisions(rule_id))

    async def issued_events(self) -> list[Any]:
        """coupon.issued events, still in the outbox or already on the bus (either bus)."""
        async with self.rt.sessions() as s:
            found = [parse_event(p) for p in (await s.execute(select(messaging.outbox.c.payload))).scalars()]
        found += await self._published("fugou.coupons")
        unique = {e.event_id: e for e in found}  # one the relay moved in between is seen once
        return [e for e in unique.values() if e.type == "coupon.issued"]

    async def _published(self, topic: str) -> list[Any]:
        bus = self.app.state.bus
        if isinstance(bus, InProcessBus):
            cur = await bus.db.execute("SELECT value FROM bus_log WHERE topic = ?", (topic,))
            found = [parse_event(r[0]) for r in await cur.fetchall()]
            await cur.close()
            return found
        from aiokafka import AIOKafkaConsumer

        consumer = AIOKafkaConsumer(
            bus.prefix + topic,
            bootstrap_servers=bus.bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            group_id=None,
        )
        await consumer.start()
        found = []
        try:
            while batch := await consumer.getmany(timeout_ms=1500):
                found += [parse_event(m.value) for msgs in batch.values() for m in msgs]
        finally:
            await consumer.stop()
        return found


@asynccontextmanager
async def open_shop(settings: Settings) -> AsyncIterator[Shop]:
    """The embedded app on ``settings``, whose ``bootstrap_api_key`` must be KEY."""
    app = build_embedded_app(settings, announce=False)
    async with running(app) as client:
        yield Shop(app, client)


def shop(tmp_path: Path, **overrides: Any) -> AbstractAsyncContextManager[Shop]:
    """The shop on SQLite and the in-process bus (the unit tests')."""
    return open_shop(embedded_settings(tmp_path, bootstrap_api_key=KEY, **overrides))


# ---------------------------------------------------------------- local audience filters

LOCAL_FILTERS: list[dict[str, Any]] = [
    {"tier": ["A", "B"]},
    {"not": {"tier": ["C"]}},
    {"cell": ["3-3-3"]},
    {"rfm_class": ["important_value"]},
    {"tag": ["replenish_due:milk_powder"]},
    {"not": {"tag": ["dormant", "x%"]}},
    {"and": [{"or": [{"tier": ["A"]}, {"tag": ["vip"]}]}, {"not": {"rfm_class": ["general_winback"]}}]},
]


async def check_local_filters(url: str) -> None:
    """The event path evaluates a filter per customer (seg.matches), a scheduled fire in SQL
    (seg.where): the same members, NULLs and LIKE wildcards included ('_' and '%' are literal)."""
    rows = [
        ("c-1", "A", "3-3-3", "important_value", ["vip"]),
        ("c-2", "C", "1-1-1", "general_winback", ["dormant"]),
        ("c-3", None, None, None, []),
        ("c-4", "B", "2-2-2", None, ["replenish_due:milk_powder", "x%"]),
        ("c-5", "C", "1-2-1", "general_value", ["replenish_due:milkXpowder", "vip"]),
    ]
    engine = create_engine(url)
    async with engine.begin() as conn:
        await conn.run_sync(customer_segments.create)
        await conn.execute(
            insert(customer_segments),
            [
                {
                    "merchant_id": M,
                    "customer_id": c,
                    "tier": t,
                    "cell": cell,
                    "rfm_class": k,
                    "tags": orjson.dumps(tags).decode(),
                    "updated_at": T0,
                }
                for c, t, cell, k, tags in rows
            ],
        )

    def in_python(f: dict[str, Any]) -> set[str]:
        return {c for c, t, cell, k, tags in rows if seg.matches(f, seg.Segment(t, cell, k, frozenset(tags)))}

    try:
        for f in LOCAL_FILTERS:
            assert seg.is_local(f) and seg.check_local(f) is None
            async with engine.connect() as conn:
                in_sql = set(
                    (
                        await conn.execute(
                            select(customer_segments.c.customer_id).where(seg.where(f, customer_segments))
                        )
                    ).scalars()
                )
            assert in_python(f) == in_sql, f
        assert in_python({"tag": ["replenish_due:milk_powder"]}) == {"c-4"}
        assert in_python({"not": {"tier": ["C"]}}) == {"c-1", "c-3", "c-4"}
    finally:
        await engine.dispose()
