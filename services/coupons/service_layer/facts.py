"""What coupons keeps of other systems' facts: the shop's orders (for Nth-order and goal
triggers, redemption and ROI), referrals, and each customer's segment as segmentation announced
it (for audience filters on tier, cell, class and tags). Idempotent and order-independent:
each fact is an upsert that ends the same whatever the delivery order."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import orjson
from sqlalchemy.ext.asyncio import AsyncSession

from services.coupons.adapters.tables import customer_segments, orders, referrals
from shared.db import bulk_insert
from shared.events import EnvelopeBase

ORDER_TYPES = frozenset({"order.created", "order.paid", "order.cancelled", "order.refunded"})


@dataclass
class _Order:
    """One order's row, as the events of a batch leave it."""

    merchant_id: str
    order_id: str
    customer_id: str | None
    amount_fen: int = 0
    paid_at: datetime | None = None
    cancelled_at: datetime | None = None
    refunded_fen: int = 0

    def row(self) -> tuple[str, str, str | None, int, datetime | None, datetime | None, int]:
        return (
            self.merchant_id,
            self.order_id,
            self.customer_id,
            self.amount_fen,
            self.paid_at,
            self.cancelled_at,
            self.refunded_fen,
        )


async def record_orders(session: AsyncSession, events: list[EnvelopeBase]) -> None:
    """One row per order: created or paid sets the amount (the payment's wins), paid_at is the
    earliest payment, cancelled_at the earliest cancellation; refunds are summed per order in the
    events of the batch and added (the inbox keeps each refund event to one application)."""
    rows: dict[tuple[str, str], _Order] = {}
    for e in events:
        t = e.type
        if t not in ORDER_TYPES:
            continue
        d = e.data  # type: ignore[attr-defined]  # data is declared by each registered envelope model
        key = (e.merchant_id, d.order_id)
        row = rows.setdefault(key, _Order(e.merchant_id, d.order_id, e.customer_id))
        if t == "order.paid":
            if row.paid_at is None or e.occurred_at < row.paid_at:
                row.amount_fen, row.paid_at = d.amount_fen, e.occurred_at
        elif t == "order.created":
            if row.paid_at is None:
                row.amount_fen = d.amount_fen
        elif t == "order.cancelled":
            row.cancelled_at = e.occurred_at if row.cancelled_at is None else min(row.cancelled_at, e.occurred_at)
        else:
            row.refunded_fen += d.amount_fen
    if not rows:
        return
    await bulk_insert(
        session,
        orders,
        ["merchant_id", "order_id", "customer_id", "amount_fen", "paid_at", "cancelled_at", "refunded_fen"],
        [r.row() for r in rows.values()],
        conflict=["merchant_id", "order_id"],
        update={
            # The earliest payment's amount wins; a creation's only until a payment is known.
            "amount_fen": "CASE WHEN excluded.paid_at IS NOT NULL AND ({t}.paid_at IS NULL "
            "OR excluded.paid_at < {t}.paid_at) THEN excluded.amount_fen "
            "WHEN {t}.paid_at IS NULL AND {t}.amount_fen = 0 THEN excluded.amount_fen "
            "ELSE {t}.amount_fen END",
            "paid_at": "{least}(coalesce({t}.paid_at, excluded.paid_at), coalesce(excluded.paid_at, {t}.paid_at))",
            "cancelled_at": "{least}(coalesce({t}.cancelled_at, excluded.cancelled_at), "
            "coalesce(excluded.cancelled_at, {t}.cancelled_at))",
            "refunded_fen": "{t}.refunded_fen + excluded.refunded_fen",
        },
    )


async def record_referrals(session: AsyncSession, events: list[EnvelopeBase]) -> None:
    """The first referral bound wins (a customer is referred once)."""
    rows: dict[tuple[str, str | None], tuple[str, str | None, str, datetime]] = {}
    for e in events:
        if e.type == "referral.bound":
            key = (e.merchant_id, e.customer_id)
            if key not in rows or e.occurred_at < rows[key][3]:
                referrer_id = e.data.referrer_id  # type: ignore[attr-defined]  # data is declared by each registered envelope model
                rows[key] = (e.merchant_id, e.customer_id, referrer_id, e.occurred_at)
    await bulk_insert(
        session,
        referrals,
        ["merchant_id", "customer_id", "referrer_id", "bound_at"],
        list(rows.values()),
        conflict=["merchant_id", "customer_id"],
        update={
            "referrer_id": "CASE WHEN excluded.bound_at < {t}.bound_at THEN excluded.referrer_id "
            "ELSE {t}.referrer_id END",
            "bound_at": "{least}({t}.bound_at, excluded.bound_at)",
        },
    )


async def record_segments(session: AsyncSession, events: list[EnvelopeBase]) -> None:
    """The latest segment.changed per customer wins (by occurrence, then event id)."""
    latest: dict[tuple[str, str], EnvelopeBase] = {}
    for e in events:
        if e.type == "segment.changed":
            key = (e.merchant_id, e.customer_id or "")
            cur = latest.get(key)
            if cur is None or (e.occurred_at, e.event_id) > (cur.occurred_at, cur.event_id):
                latest[key] = e
    rows = []
    for (m, c), e in latest.items():
        after = e.data.after or {}  # type: ignore[attr-defined]  # data is declared by each registered envelope model
        rows.append(
            (
                m,
                c,
                after.get("tier"),
                after.get("cell"),
                after.get("rfm_class"),
                orjson.dumps(after.get("tags") or []).decode(),
                e.occurred_at,
            )
        )
    await bulk_insert(
        session,
        customer_segments,
        ["merchant_id", "customer_id", "tier", "cell", "rfm_class", "tags", "updated_at"],
        rows,
        conflict=["merchant_id", "customer_id"],
        update={
            c: f"CASE WHEN excluded.updated_at >= {{t}}.updated_at THEN excluded.{c} ELSE {{t}}.{c} END"
            for c in ("tier", "cell", "rfm_class", "tags", "updated_at")
        },
    )
