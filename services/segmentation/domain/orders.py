"""Pure rules for what one order is, from the events about it, in any order.

Every rule here is commutative and idempotent (earliest time wins; a payment's amount and items
win over the creation's), so folding the same events in any order, any number of times, gives
the same facts. The database upsert applies the very same rules against the stored row."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

ORDER_TYPES = frozenset({"order.created", "order.paid", "order.cancelled", "order.refunded"})
BEHAVIOUR_KINDS = {"cart.added": "cart", "item.favorited": "favorite"}


@dataclass(frozen=True, slots=True)
class Item:
    line: int
    sku: str
    category: str | None
    quantity: int
    amount_fen: int


@dataclass(slots=True)
class OrderFacts:
    merchant_id: str
    order_id: str
    customer_id: str
    amount_fen: int = 0
    created_at: datetime | None = None
    paid_at: datetime | None = None
    cancelled_at: datetime | None = None
    items: tuple[Item, ...] = ()
    items_from_payment: bool = False

    @property
    def status(self) -> str:
        return "paid" if self.paid_at else "created" if self.created_at else "pending"


@dataclass(frozen=True, slots=True)
class Refund:
    merchant_id: str
    refund_id: str
    order_id: str
    customer_id: str
    amount_fen: int
    full: bool
    occurred_at: datetime


@dataclass(slots=True)
class Behaviour:
    merchant_id: str
    customer_id: str
    kind: str
    sku: str
    category: str | None
    count: int
    first_at: datetime
    last_at: datetime


@dataclass(slots=True)
class Folded:
    orders: dict[tuple[str, str], OrderFacts] = field(default_factory=dict)
    refunds: dict[tuple[str, str], Refund] = field(default_factory=dict)
    behaviours: dict[tuple[str, str, str, str], Behaviour] = field(default_factory=dict)

    @property
    def customers(self) -> set[tuple[str, str]]:
        """(merchant, customer) pairs whose aggregates this batch may change."""
        out = {(o.merchant_id, o.customer_id) for o in self.orders.values()}
        out.update((r.merchant_id, r.customer_id) for r in self.refunds.values())
        return out


def _earliest(a: datetime | None, b: datetime | None) -> datetime | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


def _items(data: Any) -> tuple[Item, ...]:
    return tuple(Item(i, it.sku, it.category, it.quantity, it.amount_fen) for i, it in enumerate(data.items))


def fold(events: Iterable[Any]) -> Folded:
    """Group a batch's order and behaviour events into one set of facts per order and behaviour."""
    out = Folded()
    for e in events:
        t, d = e.type, e.data
        if t in BEHAVIOUR_KINDS:
            bkey = (e.merchant_id, e.customer_id, BEHAVIOUR_KINDS[t], d.sku)
            b = out.behaviours.get(bkey)
            if b is None:
                out.behaviours[bkey] = Behaviour(
                    e.merchant_id, e.customer_id, bkey[2], d.sku, d.category, 1, e.occurred_at, e.occurred_at
                )
            else:
                b.count += 1
                b.first_at, b.last_at = min(b.first_at, e.occurred_at), max(b.last_at, e.occurred_at)
                b.category = b.category or d.category
            continue
        if t not in ORDER_TYPES:
            continue
        okey = (e.merchant_id, d.order_id)  # an order is one per merchant, as its table's primary key
        facts = out.orders.get(okey)
        if facts is None:
            facts = out.orders[okey] = OrderFacts(e.merchant_id, d.order_id, e.customer_id)
        at = e.occurred_at
        if t == "order.paid":
            if facts.paid_at is None or at < facts.paid_at:
                facts.amount_fen, facts.items, facts.items_from_payment = d.amount_fen, _items(d), True
            facts.paid_at = _earliest(facts.paid_at, at)
        elif t == "order.created":
            if facts.paid_at is None and (facts.created_at is None or at < facts.created_at):
                facts.amount_fen, facts.items = d.amount_fen, _items(d)
            facts.created_at = _earliest(facts.created_at, at)
        elif t == "order.cancelled":
            facts.cancelled_at = _earliest(facts.cancelled_at, at)
        else:  # order.refunded
            rkey = (e.merchant_id, d.refund_id)
            if rkey not in out.refunds:
                out.refunds[rkey] = Refund(
                    e.merchant_id, d.refund_id, d.order_id, e.customer_id, d.amount_fen, d.full, at
                )
    return out
