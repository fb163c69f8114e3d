"""A small shop's history for the audience tests (tests/unit/test_audiences.py through the API,
tests/unit/test_segmentation_read_audiences.py and tests/integration/
test_segmentation_read_audiences.py on the compiled queries), and the filters those compare with
the narrowest base each may start from. Times are counted back from the suite's clock."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from pydantic import TypeAdapter

from services.segmentation.domain.audience import Filter
from shared import clock
from tests.factories import order_paid

NOW = clock.now()  # read at import, after the suite's clock is installed
TZ = "Asia/Shanghai"
FILTER: TypeAdapter[Any] = TypeAdapter(Filter)


def parse(f: dict[str, Any]) -> Any:
    return FILTER.validate_python(f)


def event(type_: str, customer: str, data: dict[str, Any], days_ago: float, merchant: str = "demo") -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "type": type_,
        "merchant_id": merchant,
        "customer_id": customer,
        "occurred_at": (NOW - timedelta(days=days_ago)).isoformat(),
        "data": data,
    }


def paid(customer: str, order: str, amount: int, days_ago: float, category: str) -> dict[str, Any]:
    return order_paid("demo", customer, order, amount, at=NOW - timedelta(days=days_ago), category=category)


def history() -> list[dict[str, Any]]:
    ev = []
    # milk-10: bought milk powder 10 days ago, one order of ¥120 -> cell 3-1-2, tier B; never toys.
    ev += [paid("milk-10", "m10", 12_000, 10, "milk-powder")]
    # milk-200: milk powder 200 days ago -> R level 1: tier C (1-1-2).
    ev += [paid("milk-200", "m200", 12_000, 200, "milk-powder")]
    # milk-toys: milk 20 days ago and toys 15 days ago (3-2-1, tier B) -> excluded by "never toys".
    ev += [paid("milk-toys", "mt1", 4_000, 20, "milk-powder"), paid("milk-toys", "mt2", 5_000, 15, "toys")]
    # vip: 5 orders of ¥200 over the last 50 days -> 3-3-3, tier S.
    ev += [paid("vip", f"v{i}", 20_000, 2 + 10 * i, "diapers") for i in range(5)]
    # fan: favourited an item, never bought it; region Shanghai (no order: no tier).
    ev += [
        event("item.favorited", "fan", {"sku": "sku-toys", "category": "toys"}, 1),
        event("customer.registered", "fan", {"region": "上海"}, 30),
    ]
    # carted-then-bought: carted snacks, bought them after.
    ev += [
        event("cart.added", "buyer", {"sku": "sku-snacks", "category": "snacks"}, 5),
        paid("buyer", "b1", 3_000, 4, "snacks"),
    ]
    # unpaid: created an order, never paid.
    ev += [event("order.created", "unpaid", {"order_id": "u1", "amount_fen": 9_000}, 3)]
    ev += [event("customer.registered", "vip", {"region": "北京"}, 100)]
    return ev


def extra_history() -> list[dict[str, Any]]:
    """Customers known to one table only, beside ``history``."""
    return [
        event("customer.registered", "profile-only", {"region": "上海"}, 2),  # a profile, nothing else
        event("cart.added", "cart-only", {"sku": "sku-toys", "category": "toys"}, 2),
    ]  # a tags-only segment


ISSUE = {
    "and": [
        {"tier": ["B"]},
        {"bought_category": {"category": "milk-powder", "within_days": 90}},
        {"not": {"bought_category": {"category": "toys"}}},
    ]
}
SINCE = (NOW - timedelta(days=12)).isoformat()

# Each filter with the base it must start from; every one must select what the union selects.
CASES: list[tuple[dict[str, Any], str]] = [
    (ISSUE, "segments"),
    ({"tier": ["B"]}, "segments"),
    ({"or": [{"tier": ["S"]}, {"cell": ["1-1-2"]}]}, "segments"),
    ({"and": [{"tier": ["B", "C"]}, {"not": {"or": [{"cell": ["3-1-2"]}, {"region": ["北京"]}]}}]}, "segments"),
    ({"frequency": {"gte": 1}}, "segments"),
    ({"and": [{"recency_days": {"gte": 100}}, {"monetary_fen": {"gte": 5_000}}]}, "segments"),
    ({"recency_days": {"lte": 30}}, "customers"),
    ({"last_order_at": {"gte": SINCE}}, "customers"),
    ({"ordered_unpaid": True}, "customers"),
    ({"and": [{"first_order_at": {"lt": NOW.isoformat()}}, {"not": {"tier": ["S"]}}]}, "customers"),
    ({"and": [{"not": {"tier": ["B"]}}, {"region": ["上海", "北京"]}]}, "profiles"),
    # Nothing narrows these: a customer may hold them with no row in one table or another.
    ({"not": {"tier": ["B"]}}, "union"),
    ({"not": {"not": {"tier": ["B"]}}}, "union"),
    ({"or": [{"tier": ["S"]}, {"region": ["上海"]}]}, "union"),
    ({"frequency": {"lte": 1}}, "union"),  # no segment reads as 0
    ({"monetary_fen": {"gte": 0}}, "union"),
    ({"tag": ["interest", "dormant"]}, "union"),
    ({"interested_not_bought": "any"}, "union"),
    ({"not": {"bought_category": {"category": "toys"}}}, "union"),
    ({"and": [{"not": {"rfm_class": ["important_value"]}}, {"not": {"region": ["北京"]}}]}, "union"),
]
