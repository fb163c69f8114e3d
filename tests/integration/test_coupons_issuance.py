"""Issuance on both stacks, and exactly once on real PostgreSQL and Kafka.

On both stacks (the in-process bus with SQLite as ``make run`` runs it, and Kafka with
PostgreSQL): a preset issues its bundle once and announces each coupon; a local audience filter
means the same on one customer and in SQL (SQLite and PostgreSQL).

On Kafka and PostgreSQL: a trigger replayed concurrently (by the shop over HTTP, and by consumers
applying the same order at once) issues one bundle; caps hold when many transactions decide for
one referrer or one budget at once; and a scheduled rule to a few thousand customers issues
exactly once per customer, run twice at once, after a crash in the middle, and run again."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update

from services.coupons.adapters import segmentation as seg
from services.coupons.adapters.tables import coupons, issuances, rules
from services.coupons.service_layer import issuance
from services.coupons.service_layer.handlers import handle
from shared import clock
from shared.events import parse_event
from shared.settings import Settings
from tests.conftest import Backend, kafka_pg_settings
from tests.coupons_shop import (
    KEY,
    T0,
    H,
    Shop,
    cash_template,
    check_local_filters,
    open_shop,
    paid,
    percent_template,
    referred,
    registered,
)
from tests.factories import eventually

pytestmark = [pytest.mark.timeout(300)]


def on_kafka_and_postgres(tmp_path: Path, kafka: Any, pg_urls: dict[str, str]) -> AbstractAsyncContextManager[Shop]:
    return open_shop(kafka_pg_settings(tmp_path, kafka, pg_urls, bootstrap_api_key=KEY))


async def count(s: Shop, table: Any, *where: Any) -> int:
    async with s.rt.sessions() as session:
        return int((await session.execute(select(func.count()).select_from(table).where(*where))).scalar_one())


async def applied(s: Shop, events: list[dict[str, Any]]) -> None:
    """Apply events as concurrent consumers would: each in its own transaction, all at once."""

    async def one(e: dict[str, Any]) -> None:
        async with s.rt.sessions() as session, session.begin():
            await handle(session, [parse_event(e)])

    await asyncio.gather(*(one(e) for e in events))


# ---------------------------------------------------------------- on both stacks


async def test_the_first_order_preset_gives_one_8_zhe_and_two_85_coupons_once(
    stack: Callable[..., Settings],
) -> None:
    async with open_shop(stack(bootstrap_api_key=KEY)) as s:
        made = await s.preset("first_order_welcome", holdout_percent=0)
        welcome, repurchase = made["template_ids"]["welcome"], made["template_ids"]["repurchase"]
        rule_id = made["rule"]["rule_id"]
        for tid, pay in ((welcome, 80), (repurchase, 85)):
            body = (await s.client.get(f"/v1/coupons/templates/{tid}", headers=H)).json()
            assert body["template"]["kind"]["pay_percent"] == pay

        await s.send(paid("u-1", "o-1"))
        await s.settled()
        assert await s.wallet("u-1", rule_id) == Counter({welcome: 1, repurchase: 2})

        async def announced() -> list[Any]:
            return [e for e in await s.issued_events() if e.customer_id == "u-1"]

        events = await eventually(announced, lambda v: len(v) == 3)
        assert Counter(e.data.template_id for e in events) == Counter({welcome: 1, repurchase: 2})
        assert {e.data.rule_id for e in events} == {rule_id}
        assert all(
            e.data.kind == "percent" and e.data.expires_at - e.data.starts_at == timedelta(days=30) for e in events
        )

        await s.send(paid("u-1", "o-2", at=T0 + timedelta(days=3)))  # a second order is not a first
        await s.settled()
        assert sum((await s.wallet("u-1")).values()) == 3
        assert await s.decisions(rule_id) == [("u-1", "paid_orders:1", "issued")]


async def test_local_filters_mean_the_same_on_one_customer_and_in_sql(tmp_path: Path, backend: Backend) -> None:
    await check_local_filters(
        backend.database_url("coupons") or f"sqlite+aiosqlite:///{tmp_path / 'local.sqlite'}",
    )


# ---------------------------------------------------------------- on Kafka and PostgreSQL


async def test_a_trigger_replayed_concurrently_issues_once(tmp_path: Path, kafka: Any, pg_urls: dict[str, str]) -> None:
    async with on_kafka_and_postgres(tmp_path, kafka, pg_urls) as s:
        tid = await s.template(percent_template())  # no per-customer limit: only the issuance key holds
        rule_id = await s.rule(
            {
                "trigger": {"type": "first_paid_order"},
                "caps": {"issues_per_customer": None},
                "action": {"issue": [{"template_id": tid, "count": 2}]},
            }
        )
        # The shop sends one order's payment under 20 event ids at once, over Kafka.
        await asyncio.gather(*(s.send(paid("u-1", "o-1")) for _ in range(20)))
        await s.settled()
        # Consumers apply another order's payment, under 20 event ids, in 20 concurrent transactions.
        await applied(s, [paid("u-2", "o-2") for _ in range(20)])
        assert await s.holders(rule_id) == Counter({"u-1": 2, "u-2": 2})
        assert await count(s, issuances, issuances.c.rule_id == rule_id) == 2

        async def staged_or_published() -> int:
            return len([e for e in await s.issued_events() if e.data.rule_id == rule_id])

        assert await eventually(staged_or_published, lambda n: n >= 4) == 4


async def test_caps_hold_when_many_transactions_decide_at_once(
    tmp_path: Path, kafka: Any, pg_urls: dict[str, str]
) -> None:
    async with on_kafka_and_postgres(tmp_path, kafka, pg_urls) as s:
        ten = await s.template(cash_template(1000))
        # Referees are other customers (other partitions): their conversions reward one referrer at once.
        per_referrer = await s.rule(
            {
                "trigger": {"type": "referral_conversion"},
                "caps": {"issues_per_customer": 3},
                "action": {"issue": [{"template_id": ten}]},
            }
        )
        budget = await s.rule(
            {
                "trigger": {"type": "first_paid_order"},
                "caps": {"budget_total_fen": 5000, "issues_per_customer": None},
                "action": {"issue": [{"template_id": ten}]},
            }
        )
        referees = [f"r-{i:02d}" for i in range(20)]
        await applied(s, [referred(r, "u-1") for r in referees])
        await applied(s, [paid(r, f"o-{r}") for r in referees])
        assert await s.holders(per_referrer) == Counter({"u-1": 3})
        assert await s.outcomes(per_referrer) == Counter({"issued": 3, "capped_customer": 17})
        assert sum((await s.holders(budget)).values()) == 5
        assert await s.outcomes(budget) == Counter({"issued": 5, "capped_total": 15})
        detail = (await s.client.get(f"/v1/coupons/rules/{budget}", headers=H)).json()
        assert detail["spend"]["total_fen"] == 5000


async def test_a_scheduled_rule_to_thousands_issues_exactly_once_per_customer(
    tmp_path: Path,
    kafka: Any,
    pg_urls: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    frozen_clock: clock.ManualClock,  # the background scheduler never reaches the fire this test runs by hand
) -> None:
    n = 3000
    async with on_kafka_and_postgres(tmp_path, kafka, pg_urls) as s:
        people = [f"c-{i:05d}" for i in range(n)]
        for i in range(0, n, 500):
            await s.send(*[registered(c, "Shanghai") for c in people[i : i + 500]])
        await s.send(registered("elsewhere", "Beijing"))

        async def in_shanghai() -> int:
            r = await s.client.post(
                "/v1/audiences/query", json={"filter": {"region": ["Shanghai"]}, "limit": 1}, headers=H
            )
            return r.json()["count"]  # type: ignore[no-any-return]

        await eventually(in_shanghai, lambda k: k == n, timeout=120)
        saved = (
            await s.client.post("/v1/audiences", json={"name": "上海", "filter": {"region": ["Shanghai"]}}, headers=H)
        ).json()["audience_id"]
        tid = await s.template(percent_template())
        rule_id = await s.rule(
            {
                "trigger": {"type": "schedule", "cron": "0 9 1 * *"},
                "holdout_percent": 0,
                "caps": {"issues_per_customer": None},
                "audience": {"audience_id": saved},
                "action": {"issue": [{"template_id": tid}]},
            }
        )
        async with s.rt.sessions() as session:
            first = (await session.execute(select(rules.c.next_fire_at).where(rules.c.rule_id == rule_id))).scalar_one()
        client = seg.client_for(s.rt)
        at = first + timedelta(minutes=1)

        # A worker crashes after two chunks: next_fire_at stays, and what it committed stays.
        real, calls = issuance.decide, 0

        async def crashing(*args: Any, **kw: Any) -> Any:
            nonlocal calls
            calls += 1
            if calls == 3:
                raise RuntimeError("worker killed")
            return await real(*args, **kw)

        monkeypatch.setattr(issuance, "decide", crashing)
        with pytest.raises(RuntimeError):
            await issuance.fire_due(s.rt.sessions, client, at, chunk=500)
        monkeypatch.setattr(issuance, "decide", real)
        assert await count(s, coupons, coupons.c.rule_id == rule_id) == 1000

        # Two workers at once: one takes the rule (SKIP LOCKED), the other finds nothing due.
        fired = await asyncio.gather(*(issuance.fire_due(s.rt.sessions, client, at, chunk=500) for _ in range(2)))
        assert sorted(fired) == [False, True]
        # And the same fire once more, as if next_fire_at had not moved on.
        async with s.rt.sessions() as session, session.begin():
            await session.execute(update(rules).where(rules.c.rule_id == rule_id).values(next_fire_at=first))
        assert await issuance.fire_due(s.rt.sessions, client, at, chunk=700) is True

        async with s.rt.sessions() as session:
            per_customer = Counter(
                (await session.execute(select(coupons.c.customer_id).where(coupons.c.rule_id == rule_id))).scalars()
            )
            moved_on = (
                await session.execute(select(rules.c.next_fire_at).where(rules.c.rule_id == rule_id))
            ).scalar_one()
        assert per_customer == Counter({c: 1 for c in people})
        assert await count(s, issuances, issuances.c.rule_id == rule_id) == n
        assert moved_on > at
