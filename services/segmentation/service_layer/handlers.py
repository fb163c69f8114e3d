"""Segmentation's event handlers: plain functions over a session, one batch at a time, with
set-based SQL (a few statements per batch, never a query per event)."""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy.ext.asyncio import AsyncSession

from services.segmentation.adapters.tables import customers, messaging, orders
from services.segmentation.domain.stats import PaidOrder, fold
from shared.db import bulk_insert
from shared.events import EnvelopeBase, OutboundEvent
from shared.outbox import Outbox

outbox = Outbox(messaging.outbox)


async def record_paid_orders(session: AsyncSession, events: list[EnvelopeBase]) -> None:
    """Store newly paid orders and add them to their customers' aggregates.

    An order already stored (the same order paid twice under two event ids) adds nothing."""
    candidates: dict[tuple[str, str], PaidOrder] = {}
    for e in events:
        d = e.data  # type: ignore[attr-defined]
        candidates.setdefault((e.merchant_id, d.order_id),
                              PaidOrder(e.merchant_id, e.customer_id, d.order_id, d.amount_fen,  # type: ignore
                                        e.occurred_at))
    inserted = {(m, o) for m, o in await bulk_insert(
        session, orders, ["merchant_id", "order_id", "customer_id", "status", "amount_fen", "paid_at"],
        [(o.merchant_id, o.order_id, o.customer_id, "paid", o.amount_fen, o.paid_at) for o in candidates.values()],
        conflict=["merchant_id", "order_id"], returning=["merchant_id", "order_id"])}
    new_orders = [o for key, o in candidates.items() if key in inserted]
    if not new_orders:
        return
    now = datetime.now(timezone.utc)
    rows = [(m, c, d.orders, d.amount_fen, d.first_at, d.last_at, now) for (m, c), d in fold(new_orders).items()]
    changed = await bulk_insert(
        session, customers,
        ["merchant_id", "customer_id", "paid_orders", "paid_amount_fen", "first_order_at", "last_order_at",
         "updated_at"], rows,
        conflict=["merchant_id", "customer_id"],
        update={
            "paid_orders": "{t}.paid_orders + excluded.paid_orders",
            "paid_amount_fen": "{t}.paid_amount_fen + excluded.paid_amount_fen",
            "first_order_at": "{least}(coalesce({t}.first_order_at, excluded.first_order_at), excluded.first_order_at)",
            "last_order_at": "{greatest}(coalesce({t}.last_order_at, excluded.last_order_at), excluded.last_order_at)",
            "updated_at": "excluded.updated_at",
        },
        returning=["merchant_id", "customer_id", "paid_orders", "paid_amount_fen", "first_order_at", "last_order_at"])
    await outbox.stage(session, [
        OutboundEvent("customer.stats.changed", m, customer_id=c, data={
            "frequency": n, "monetary_fen": amount, "first_order_at": first, "last_order_at": last})
        for m, c, n, amount, first, last in changed])


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
