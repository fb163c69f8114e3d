"""The SQL that keeps segmentation's facts and aggregates, set-based, on either database.

Facts (orders, items, refunds, behaviours) are upserted with the commutative rules of
domain/orders.py. Aggregates are then *recomputed* from the facts for the customers a batch
touched, never adjusted by deltas, so any delivery order ends in the same state, and the live
consumer and the CSV importer share one definition of F and M."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Integer, Select, and_, bindparam, case, delete, func, literal, not_, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.segmentation.adapters.tables import (
    behaviours,
    customer_categories,
    customers,
    order_items,
    orders,
    refunds,
)
from services.segmentation.domain.orders import Behaviour, OrderFacts, Refund
from shared.db import UTCDateTime, bulk_insert, in_values, insert_for

_EARLIEST = "{least}(coalesce({t}.%s, excluded.%s), coalesce(excluded.%s, {t}.%s))"
_ORDER_UPDATE = {
    # A payment's amount wins over the creation's; among payments (or creations), the earliest.
    "amount_fen": (
        "CASE WHEN excluded.paid_at IS NOT NULL AND ({t}.paid_at IS NULL OR excluded.paid_at < {t}.paid_at)"
        " THEN excluded.amount_fen WHEN {t}.paid_at IS NOT NULL THEN {t}.amount_fen"
        " WHEN excluded.created_at IS NOT NULL AND ({t}.created_at IS NULL"
        " OR excluded.created_at < {t}.created_at) THEN excluded.amount_fen ELSE {t}.amount_fen END"
    ),
    "status": (
        "CASE WHEN coalesce({t}.paid_at, excluded.paid_at) IS NOT NULL THEN 'paid'"
        " WHEN coalesce({t}.created_at, excluded.created_at) IS NOT NULL THEN 'created' ELSE {t}.status END"
    ),
    "created_at": _EARLIEST % (("created_at",) * 4),
    "paid_at": _EARLIEST % (("paid_at",) * 4),
    "cancelled_at": _EARLIEST % (("cancelled_at",) * 4),
}


async def upsert_orders(session: AsyncSession, facts: Iterable[OrderFacts]) -> None:
    facts = list(facts)
    await bulk_insert(
        session,
        orders,
        ["merchant_id", "order_id", "customer_id", "status", "amount_fen", "created_at", "paid_at", "cancelled_at"],
        [
            (f.merchant_id, f.order_id, f.customer_id, f.status, f.amount_fen, f.created_at, f.paid_at, f.cancelled_at)
            for f in facts
        ],
        conflict=["merchant_id", "order_id"],
        update=_ORDER_UPDATE,
    )
    columns = ["merchant_id", "order_id", "line", "sku", "category", "quantity", "amount_fen"]
    by_merchant: dict[str, tuple[list[OrderFacts], list[OrderFacts]]] = {}
    for f in facts:
        if f.items:
            by_merchant.setdefault(f.merchant_id, ([], []))[0 if f.items_from_payment else 1].append(f)
    for merchant_id, (paid, created) in by_merchant.items():
        if paid:
            # The earliest payment's lines replace the order's lines as a whole; a later re-sent
            # payment (the stored paid_at is earlier than its own) changes nothing.
            stored = dict(
                (
                    await session.execute(
                        select(orders.c.order_id, orders.c.paid_at).where(
                            orders.c.merchant_id == merchant_id,
                            in_values(orders.c.order_id, sorted({f.order_id for f in paid})),
                        )
                    )
                ).all()
            )
            paid = [f for f in paid if stored.get(f.order_id) == f.paid_at]
        if paid:
            await session.execute(
                delete(order_items).where(
                    order_items.c.merchant_id == merchant_id,
                    in_values(order_items.c.order_id, sorted({f.order_id for f in paid})),
                )
            )
        if created:
            # A creation's lines only stand for an order not paid (as far as we know now).
            unpaid = set(
                (
                    await session.execute(
                        select(orders.c.order_id).where(
                            orders.c.merchant_id == merchant_id,
                            in_values(orders.c.order_id, sorted({f.order_id for f in created})),
                            orders.c.paid_at.is_(None),
                        )
                    )
                ).scalars()
            )
            created = [f for f in created if f.order_id in unpaid]
        rows = [
            (f.merchant_id, f.order_id, i.line, i.sku, i.category, i.quantity, i.amount_fen)
            for f in (*paid, *created)
            for i in f.items
        ]
        await bulk_insert(session, order_items, columns, rows, conflict=["merchant_id", "order_id", "line"])


async def record_refunds(session: AsyncSession, found: Iterable[Refund]) -> None:
    found = list(found)
    if not found:
        return
    await bulk_insert(
        session,
        refunds,
        ["merchant_id", "refund_id", "order_id", "amount_fen", "full", "occurred_at"],
        [(r.merchant_id, r.refund_id, r.order_id, r.amount_fen, r.full, r.occurred_at) for r in found],
        conflict=["merchant_id", "refund_id"],
    )
    by_merchant: dict[str, set[str]] = {}
    for r in found:
        by_merchant.setdefault(r.merchant_id, set()).add(r.order_id)
    for merchant_id, order_ids in by_merchant.items():
        mine = and_(refunds.c.merchant_id == orders.c.merchant_id, refunds.c.order_id == orders.c.order_id)
        await session.execute(
            update(orders)
            .where(orders.c.merchant_id == merchant_id, in_values(orders.c.order_id, sorted(order_ids)))
            .values(
                refunded_fen=select(func.coalesce(func.sum(refunds.c.amount_fen), 0)).where(mine).scalar_subquery(),
                fully_refunded=select(func.coalesce(func.max(case((refunds.c.full, 1), else_=0)), 0) == 1)
                .where(mine)
                .scalar_subquery(),
            )
        )


def counts(o: Any = orders) -> Any:
    """Whether an order counts toward F and M: paid, not cancelled, not wholly refunded."""
    return and_(
        o.c.paid_at.isnot(None), o.c.cancelled_at.is_(None), not_(o.c.fully_refunded), o.c.refunded_fen < o.c.amount_fen
    )


AGGREGATES = ("paid_orders", "paid_amount_fen", "first_order_at", "last_order_at", "unpaid_orders")


def _in(column: Any, customer_ids: Sequence[str] | Select[Any]) -> Any:
    return column.in_(customer_ids) if isinstance(customer_ids, Select) else in_values(column, customer_ids)


def recompute_customers(
    dialect: str, merchant_id: str, customer_ids: Sequence[str] | Select[Any], now: datetime | None = None
) -> Any:
    """INSERT … SELECT … ON CONFLICT DO UPDATE of the customers' aggregates from their orders,
    RETURNING only the rows whose aggregates changed. ``customer_ids`` is a list or a SELECT of
    ids; without ``now``, the statement takes it as the bound parameter ``now``."""
    o = orders
    stamp = literal(now, UTCDateTime) if now is not None else bindparam("now", type_=UTCDateTime)
    ok = counts(o)
    unpaid = and_(o.c.paid_at.is_(None), o.c.cancelled_at.is_(None), o.c.created_at.isnot(None))
    source = (
        select(
            o.c.merchant_id,
            o.c.customer_id,
            func.count().filter(ok),
            func.coalesce(func.sum(o.c.amount_fen - o.c.refunded_fen).filter(ok), 0),
            func.min(o.c.paid_at).filter(ok),
            func.max(o.c.paid_at).filter(ok),
            func.count().filter(unpaid),
            stamp,
        )
        .where(o.c.merchant_id == merchant_id, _in(o.c.customer_id, customer_ids))
        .group_by(o.c.merchant_id, o.c.customer_id)
    )
    ins = insert_for(dialect, customers).from_select(["merchant_id", "customer_id", *AGGREGATES, "updated_at"], source)
    return ins.on_conflict_do_update(
        index_elements=[customers.c.merchant_id, customers.c.customer_id],
        set_={c: ins.excluded[c] for c in (*AGGREGATES, "updated_at")},
        where=or_(*[customers.c[c].is_distinct_from(ins.excluded[c]) for c in AGGREGATES]),
    ).returning(customers.c.merchant_id, customers.c.customer_id, *[customers.c[c] for c in AGGREGATES])


def recompute_categories(merchant_id: str, customer_ids: Sequence[str] | Select[Any]) -> list[Any]:
    """Statements that rebuild the customers' per-category history from their counting orders."""
    o, i = orders, order_items
    source = (
        select(
            o.c.merchant_id,
            o.c.customer_id,
            i.c.category,
            func.count(func.distinct(o.c.order_id)).cast(Integer),
            func.sum(i.c.amount_fen),
            func.min(o.c.paid_at),
            func.max(o.c.paid_at),
        )
        .select_from(o.join(i, and_(i.c.merchant_id == o.c.merchant_id, i.c.order_id == o.c.order_id)))
        .where(o.c.merchant_id == merchant_id, _in(o.c.customer_id, customer_ids), counts(o), i.c.category.isnot(None))
        .group_by(o.c.merchant_id, o.c.customer_id, i.c.category)
    )
    return [
        delete(customer_categories).where(
            customer_categories.c.merchant_id == merchant_id, _in(customer_categories.c.customer_id, customer_ids)
        ),
        customer_categories.insert().from_select(
            ["merchant_id", "customer_id", "category", "orders", "amount_fen", "first_at", "last_at"], source
        ),
    ]


async def upsert_behaviours(session: AsyncSession, found: Iterable[Behaviour]) -> None:
    rows = [(b.merchant_id, b.customer_id, b.kind, b.sku, b.category, b.count, b.first_at, b.last_at) for b in found]
    await bulk_insert(
        session,
        behaviours,
        ["merchant_id", "customer_id", "kind", "sku", "category", "count", "first_at", "last_at"],
        rows,
        conflict=["merchant_id", "customer_id", "kind", "sku"],
        update={
            "count": "{t}.count + excluded.count",
            "category": "coalesce({t}.category, excluded.category)",
            "first_at": "{least}({t}.first_at, excluded.first_at)",
            "last_at": "{greatest}({t}.last_at, excluded.last_at)",
        },
    )
