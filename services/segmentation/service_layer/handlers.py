"""Segmentation's event handlers: plain functions over a session, one batch at a time, with
set-based SQL (a few statements per batch, never a query per event)."""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import func
from sqlalchemy.ext.asyncio import AsyncSession

from services.segmentation.adapters.tables import customers, messaging, orders
from services.segmentation.domain.stats import PaidOrder, fold
from shared.db import dialect_name, insert_for
from shared.events import EnvelopeBase, new_event
from shared.outbox import Outbox

outbox = Outbox(messaging.outbox)
_CHUNK = 4000  # rows per statement: 7 columns stay well under the bound-parameter limits


async def record_paid_orders(session: AsyncSession, events: list[EnvelopeBase]) -> None:
    """Store newly paid orders and add them to their customers' aggregates.

    An order already stored (the same order paid twice under two event ids) adds nothing."""
    candidates = {}
    for e in events:
        key = (e.merchant_id, e.data.order_id)  # type: ignore[attr-defined]
        candidates.setdefault(key, PaidOrder(e.merchant_id, e.customer_id, e.data.order_id,  # type: ignore
                                             e.data.amount_fen, e.occurred_at))  # type: ignore[attr-defined]
    rows = list(candidates.values())
    new_orders: list[PaidOrder] = []
    for i in range(0, len(rows), _CHUNK):
        chunk = rows[i:i + _CHUNK]
        stmt = (insert_for(session, orders).values([
            {"merchant_id": o.merchant_id, "order_id": o.order_id, "customer_id": o.customer_id,
             "status": "paid", "amount_fen": o.amount_fen, "paid_at": o.paid_at} for o in chunk])
            .on_conflict_do_nothing(index_elements=[orders.c.merchant_id, orders.c.order_id])
            .returning(orders.c.merchant_id, orders.c.order_id))
        inserted = {(r.merchant_id, r.order_id) for r in await session.execute(stmt)}
        new_orders.extend(o for o in chunk if (o.merchant_id, o.order_id) in inserted)
    if not new_orders:
        return
    deltas = fold(new_orders)
    now = datetime.now(timezone.utc)
    least, greatest = (func.least, func.greatest) if dialect_name(session) == "postgresql" else (func.min, func.max)
    items = list(deltas.items())
    changed: list[EnvelopeBase] = []
    for i in range(0, len(items), _CHUNK):
        chunk = items[i:i + _CHUNK]
        ins = insert_for(session, customers).values([
            {"merchant_id": m, "customer_id": c, "paid_orders": d.orders, "paid_amount_fen": d.amount_fen,
             "first_order_at": d.first_at, "last_order_at": d.last_at, "updated_at": now}
            for (m, c), d in chunk])
        stmt = ins.on_conflict_do_update(
            index_elements=[customers.c.merchant_id, customers.c.customer_id],
            set_={
                "paid_orders": customers.c.paid_orders + ins.excluded.paid_orders,
                "paid_amount_fen": customers.c.paid_amount_fen + ins.excluded.paid_amount_fen,
                "first_order_at": least(func.coalesce(customers.c.first_order_at, ins.excluded.first_order_at),
                                        ins.excluded.first_order_at),
                "last_order_at": greatest(func.coalesce(customers.c.last_order_at, ins.excluded.last_order_at),
                                          ins.excluded.last_order_at),
                "updated_at": ins.excluded.updated_at,
            }).returning(customers.c.merchant_id, customers.c.customer_id, customers.c.paid_orders,
                         customers.c.paid_amount_fen, customers.c.first_order_at, customers.c.last_order_at)
        for r in await session.execute(stmt):
            changed.append(new_event("customer.stats.changed", r.merchant_id, customer_id=r.customer_id, data={
                "frequency": r.paid_orders, "monetary_fen": r.paid_amount_fen,
                "first_order_at": _iso(r.first_order_at), "last_order_at": _iso(r.last_order_at)}))
    await outbox.stage(session, changed)


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:  # RETURNING on SQLite bypasses the column type's result processing
        value = value.replace(tzinfo=timezone.utc)
    return value.isoformat()


HANDLERS = {
    "order.paid": record_paid_orders,
}


async def handle(session: AsyncSession, events: list[EnvelopeBase]) -> None:
    """Dispatch a batch by type, keeping each type's events in their delivered order."""
    by_type: dict[str, list[EnvelopeBase]] = {}
    for e in events:
        by_type.setdefault(e.type, []).append(e)  # type: ignore[attr-defined]
    for type_, batch in by_type.items():
        handler = HANDLERS.get(type_)
        if handler is not None:
            await handler(session, batch)
