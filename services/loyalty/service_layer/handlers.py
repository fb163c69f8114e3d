"""Loyalty's event handler: one batch, one transaction (the consumer's, with the inbox), profiles
first, then each merchant's order events and bonus triggers through ``points.Batch``: a few
set-based statements per merchant and batch, never a query per event.

Bonuses are triggered by the inbound event type each names (``earning.Bonus.trigger``): a
first-order or birthday-month bonus by ``order.paid`` by default. Sign-ins and reviews have no
shop event type yet: the shop reports them with ``POST /v1/loyalty/bonuses`` (or the mini-program
with ``POST /v1/me/sign-in``); a merchant whose shop sends them as events on ``shop.orders`` or
``shop.customers`` under a registered type can name that type as the trigger."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from services.loyalty.adapters.tables import profiles
from services.loyalty.domain.common import BonusEvent
from services.loyalty.domain.earning import once_key
from services.loyalty.service_layer import stored_value
from services.loyalty.service_layer.points import Action, Batch, Cancelled, Op, Paid, Refunded
from services.loyalty.service_layer.rules import InForce, in_force_many
from shared import clock
from shared.db import bulk_insert
from shared.events import EnvelopeBase

log = structlog.get_logger("fugou.loyalty")

PROFILE_TYPES = frozenset({"customer.registered", "customer.updated"})


async def record_profiles(session: AsyncSession, events: list[EnvelopeBase]) -> None:
    """The birthday the shop last stated, whatever the delivery order (latest occurred_at wins)."""
    latest: dict[tuple[str, str], Any] = {}
    for e in events:
        key = (e.merchant_id, e.customer_id or "")
        cur = latest.get(key)
        if cur is None or (e.occurred_at, e.event_id) > (cur.occurred_at, cur.event_id):
            latest[key] = e
    await bulk_insert(
        session,
        profiles,
        ["merchant_id", "customer_id", "birthday", "updated_at"],
        [(m, c, e.data.birthday, e.occurred_at) for (m, c), e in latest.items()],
        conflict=["merchant_id", "customer_id"],
        update={
            "birthday": "CASE WHEN excluded.updated_at >= {t}.updated_at THEN excluded.birthday ELSE {t}.birthday END",
            "updated_at": "{greatest}({t}.updated_at, excluded.updated_at)",
        },
    )


def operations(rules: InForce, events: list[EnvelopeBase]) -> list[Op]:
    """What each event asks of the ledger, in delivery order."""
    ops: list[Op] = []
    triggers: dict[str, tuple[Any, ...]] = {}
    for e in events:
        t: str = e.type
        d: Any = e.data  # type: ignore[attr-defined]  # data is declared by each registered envelope model
        cid = e.customer_id
        if cid is None:
            continue
        if t == "order.paid":
            ops.append(Paid(e.event_id, cid, d.order_id, d.amount_fen, e.occurred_at))
        elif t == "order.refunded":
            ops.append(Refunded(e.event_id, cid, d.order_id, d.amount_fen, d.full, e.occurred_at))
        elif t == "order.cancelled":
            ops.append(Cancelled(e.event_id, cid, d.order_id, e.occurred_at))
        if t not in triggers:
            triggers[t] = rules.earn.triggered_by(t)
        for bonus in triggers[t]:
            ref = getattr(d, "order_id", None)
            if bonus.event == BonusEvent.REVIEW and not ref:
                log.warning("loyalty.review_without_order", merchant_id=e.merchant_id, event_id=e.event_id)
                continue
            key = once_key(bonus.event, at=e.occurred_at, tz=rules.tz, ref=ref)
            first_of = d.order_id if bonus.event == BonusEvent.FIRST_ORDER and t == "order.paid" else None
            ops.append(Action(e.event_id, cid, bonus.event, e.occurred_at, key, ref, first_of))
    return ops


async def handle(session: AsyncSession, events: list[EnvelopeBase], now: datetime | None = None) -> None:
    said = [e for e in events if e.type in PROFILE_TYPES]
    if said:
        await record_profiles(session, said)
    by_merchant: dict[str, list[EnvelopeBase]] = {}
    for e in events:
        by_merchant.setdefault(e.merchant_id, []).append(e)
    if not by_merchant:
        return
    now = now or clock.now()
    rules = await in_force_many(session, sorted(by_merchant))
    for merchant_id, evs in by_merchant.items():
        ops = operations(rules[merchant_id], evs)
        if ops:
            await Batch(session, rules[merchant_id], now).run(ops)
        cancelled = [e.data.order_id for e in evs if e.type == "order.cancelled"]  # type: ignore[attr-defined]  # data is declared by each registered envelope model
        if cancelled:  # a cancelled order's stored-value payment comes back whole
            await stored_value.release_cancelled(session, merchant_id, cancelled, now)
