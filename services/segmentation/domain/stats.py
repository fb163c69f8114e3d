"""Pure rules for a customer's paid-order aggregates."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime
from zoneinfo import ZoneInfo


@dataclass(frozen=True, slots=True)
class PaidOrder:
    merchant_id: str
    customer_id: str
    order_id: str
    amount_fen: int
    paid_at: datetime


@dataclass(slots=True)
class StatsDelta:
    """What a batch of newly paid orders adds to one customer's aggregates."""

    orders: int
    amount_fen: int
    first_at: datetime
    last_at: datetime

    def add(self, order: PaidOrder) -> None:
        self.orders += 1
        self.amount_fen += order.amount_fen
        self.first_at = min(self.first_at, order.paid_at)
        self.last_at = max(self.last_at, order.paid_at)


def fold(orders: Iterable[PaidOrder]) -> dict[tuple[str, str], StatsDelta]:
    """Group new paid orders by (merchant, customer)."""
    out: dict[tuple[str, str], StatsDelta] = {}
    for o in orders:
        key = (o.merchant_id, o.customer_id)
        delta = out.get(key)
        if delta is None:
            out[key] = StatsDelta(1, o.amount_fen, o.paid_at, o.paid_at)
        else:
            delta.add(o)
    return out


def recency_days(last_order_at: datetime | None, now: datetime, tz: str) -> int | None:
    """Calendar days since the last paid order, in the merchant's time zone."""
    if last_order_at is None:
        return None
    zone = ZoneInfo(tz)
    today: date = now.astimezone(zone).date()
    return (today - last_order_at.astimezone(zone).date()).days
