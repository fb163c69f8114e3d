"""Segmentation's event handlers: plain functions over a session, one batch at a time, with
set-based SQL (a few statements per batch, never a query per event)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from services.segmentation.adapters.aggregates import (
    recompute_categories,
    recompute_customers,
    record_refunds,
    upsert_behaviours,
    upsert_orders,
)
from services.segmentation.adapters.tables import member_levels, profiles
from services.segmentation.domain.orders import BEHAVIOUR_KINDS, ORDER_TYPES, fold
from services.segmentation.service_layer.segments import merchant_timezone, rescore, scoring_for
from shared import clock
from shared.db import bulk_insert, dialect_name
from shared.events import EnvelopeBase

_CHUNK = 5000  # customers per recompute statement (bound parameters stay far below the limits)


async def apply_order_events(session: AsyncSession, events: list[EnvelopeBase]) -> None:
    """Store the facts of a batch of order and behaviour events, recompute the aggregates of the
    customers they touch, and re-score those whose aggregates or interest moved (segment.changed
    for those whose segment did).

    The same order paid under two event ids, a refund before its payment, a cancellation
    delivered twice: each ends in the state in-order, exactly-once delivery would give."""
    folded = fold(events)
    if folded.orders:
        await upsert_orders(session, folded.orders.values())
    await record_refunds(session, folded.refunds.values())
    if folded.behaviours:
        await upsert_behaviours(session, folded.behaviours.values())
    by_merchant: dict[str, list[str]] = {}
    for merchant_id, customer_id in folded.customers:
        by_merchant.setdefault(merchant_id, []).append(customer_id)
    interested: dict[str, set[str]] = {}
    for b in folded.behaviours.values():
        interested.setdefault(b.merchant_id, set()).add(b.customer_id)
    for merchant_id in interested:
        by_merchant.setdefault(merchant_id, [])
    if not by_merchant:
        return
    dialect = dialect_name(session)
    now = clock.now()
    for merchant_id, ids in by_merchant.items():
        ids.sort()
        moved: list[str] = []
        for i in range(0, len(ids), _CHUNK):
            chunk = ids[i : i + _CHUNK]
            moved.extend(
                r.customer_id for r in await session.execute(recompute_customers(dialect, merchant_id, chunk, now))
            )
            for stmt in recompute_categories(merchant_id, chunk):
                await session.execute(stmt)
        moved.extend(interested.get(merchant_id, ()))
        if moved:
            # Segments and tags move only where aggregates or interest moved (time moves the rest:
            # the sweep).
            scoring = await scoring_for(session, merchant_id, await merchant_timezone(session, merchant_id))
            await rescore(session, merchant_id, moved, scoring, now)


FACT_TYPES = ORDER_TYPES | set(BEHAVIOUR_KINDS)
PROFILE_TYPES = frozenset({"customer.registered", "customer.updated"})


async def apply_profiles(session: AsyncSession, events: list[EnvelopeBase]) -> None:
    """Keep what the shop says of each customer: the latest statement wins, whatever the delivery
    order (ties broken by event_id); registration time is the earliest registration seen."""
    latest: dict[tuple[str, str], EnvelopeBase] = {}
    registered: dict[tuple[str, str], datetime] = {}
    for e in events:
        key = (e.merchant_id, e.customer_id or "")  # customer.* events always name their customer
        cur = latest.get(key)
        if cur is None or (e.occurred_at, e.event_id) > (cur.occurred_at, cur.event_id):
            latest[key] = e
        if e.type == "customer.registered":
            registered[key] = min(registered.get(key, e.occurred_at), e.occurred_at)
    await bulk_insert(
        session,
        profiles,
        ["merchant_id", "customer_id", "region", "birthday", "registered_at", "updated_at"],
        [
            (m, c, e.data.region, e.data.birthday, registered.get((m, c)), e.occurred_at)  # type: ignore[attr-defined]  # data's model is its type's (CustomerData)
            for (m, c), e in latest.items()
        ],
        conflict=["merchant_id", "customer_id"],
        update={
            "region": "CASE WHEN excluded.updated_at >= {t}.updated_at THEN excluded.region ELSE {t}.region END",
            "birthday": "CASE WHEN excluded.updated_at >= {t}.updated_at THEN excluded.birthday ELSE {t}.birthday END",
            "registered_at": "{least}(coalesce({t}.registered_at, excluded.registered_at), "
            "coalesce(excluded.registered_at, {t}.registered_at))",
            "updated_at": "{greatest}({t}.updated_at, excluded.updated_at)",
        },
    )


async def apply_levels(session: AsyncSession, events: list[EnvelopeBase]) -> None:
    """Keep each customer's member level as loyalty announces it: the latest change wins, whatever
    the delivery order (ties broken by event_id)."""
    latest: dict[tuple[str, str], EnvelopeBase] = {}
    for e in events:
        key = (e.merchant_id, e.customer_id or "")
        cur = latest.get(key)
        if cur is None or (e.occurred_at, e.event_id) > (cur.occurred_at, cur.event_id):
            latest[key] = e
    await bulk_insert(
        session,
        member_levels,
        ["merchant_id", "customer_id", "level", "changed_at"],
        [(m, c, e.data.to_level, e.occurred_at) for (m, c), e in latest.items()],  # type: ignore[attr-defined]  # data's model is its type's (LevelChangedData)
        conflict=["merchant_id", "customer_id"],
        update={
            "level": "CASE WHEN excluded.changed_at >= {t}.changed_at THEN excluded.level ELSE {t}.level END",
            "changed_at": "{greatest}({t}.changed_at, excluded.changed_at)",
        },
    )


async def handle(session: AsyncSession, events: list[EnvelopeBase]) -> None:
    """The consumer's entry: one transaction per batch (the consumer's), facts first."""
    levels = [e for e in events if e.type == "level.changed"]
    if levels:
        await apply_levels(session, levels)
    said = [e for e in events if e.type in PROFILE_TYPES]
    if said:
        await apply_profiles(session, said)
    facts = [e for e in events if e.type in FACT_TYPES]
    if facts:
        await apply_order_events(session, facts)
