"""Segmentation's aggregates against a plain pandas computation from the raw events (issue 3,
item 7), on SQLite: a generated history of hundreds of customers fed through handle() in batches,
and Hypothesis showing that reordering, duplicating and re-batching the events leave customers and
customer_categories unchanged. Also the pure fold: any permutation of one order's events gives the
same facts. The same checks run at scale (thousands of customers, many more examples) and on
PostgreSQL in tests/integration/test_segmentation_correctness.py.

Rules under test (services/segmentation): an order counts toward F and M iff it is paid, never
cancelled (before or after payment) and not wholly refunded (a refund flagged full, or refunds
adding up to the paid amount); it contributes the paid amount minus its refunds. The paid amount
and lines are the (earliest) payment's; F/M dates are the payment times; unpaid orders are created,
unpaid and not cancelled; per category: distinct counting orders with a line in it, the sum of
those lines, and the first and last payment times."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.segmentation.domain.orders import fold
from shared.events import parse_event
from tests.factories import local_day
from tests.segmentation_history import (
    MERCHANT,
    check_equal_to_pandas,
    check_redelivery_leaves_the_tables_unchanged,
    feed,
    generate_history,
    records,
    redeliver,
    segmentation,
    tables,
)

# ---------------------------------------------------------------- hundreds of customers vs pandas


async def test_hundreds_of_customers_equal_a_plain_pandas_computation(tmp_path: Path) -> None:
    # 2,000 in tests/integration/test_segmentation_correctness.py
    await check_equal_to_pandas(tmp_path, customers=300, seed=301)


# ---------------------------------------------------------------- order and duplicates do not matter


# Each example feeds two fresh stores batch by batch (up to a few hundred transactions): a few
# examples here, fifty in tests/integration/test_segmentation_correctness.py.
@pytest.mark.timeout(900)  # a failure's shrinking replays hundreds of examples; let it finish and report
@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    customers=st.integers(3, 6),
    rnd=st.randoms(use_true_random=False),
    duplicate=st.sampled_from([0.0, 0.2, 0.5]),
    max_batch=st.sampled_from([1, 3, 10, 40, 1000]),
)
def test_reordering_duplicating_and_rebatching_leave_the_tables_unchanged(
    seed: int, customers: int, rnd: random.Random, duplicate: float, max_batch: int
) -> None:
    check_redelivery_leaves_the_tables_unchanged(seed, customers, rnd, duplicate, max_batch)


# ---------------------------------------------------------------- the pure fold


def _single_orders(history: Sequence[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    by_order: dict[str, list[dict[str, Any]]] = {}
    for e in history:
        if "order_id" in e["data"]:
            by_order.setdefault(e["data"]["order_id"], []).append(e)
    yield from by_order.values()


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), rnd=st.randoms(use_true_random=False))
def test_fold_of_any_permutation_of_an_orders_events_gives_the_same_facts(seed: int, rnd: random.Random) -> None:
    history = generate_history(3, seed)
    for events in _single_orders(history):
        reference = fold(parse_event(e) for e in events)
        delivered = redeliver(events, rnd, duplicate=0.5)
        folded = fold(parse_event(e) for e in delivered)
        assert folded.orders == reference.orders
        # The same refunds (by id, amount, flag); a re-send may carry a later time, which no aggregate uses.
        assert {k: (r.order_id, r.amount_fen, r.full) for k, r in folded.refunds.items()} == {
            k: (r.order_id, r.amount_fen, r.full) for k, r in reference.refunds.items()
        }


def test_fold_of_every_permutation_of_a_refunded_then_cancelled_order() -> None:
    """Exhaustively, for one order with creation, payment, a re-sent payment, two refunds and a
    cancellation (720 orders of delivery)."""
    t = local_day(-30, 10)
    items = [
        {"sku": "mp-a2-900g", "category": "milk-powder", "quantity": 1, "amount_fen": 36800},
        {"sku": "sn-puffs", "category": "snacks", "quantity": 2, "amount_fen": 1980},
    ]

    def ev(type_: str, at: datetime, **data: Any) -> dict[str, Any]:
        return {
            "event_id": f"e-{type_}-{at.isoformat()}",
            "type": type_,
            "merchant_id": MERCHANT,
            "customer_id": "u-1",
            "occurred_at": at.isoformat(),
            "data": {"order_id": "o-1", **data},
        }

    events = [
        ev("order.created", t, amount_fen=38780, items=items),
        ev("order.paid", t + timedelta(minutes=2), amount_fen=37000, items=items),
        ev("order.paid", t + timedelta(days=1), amount_fen=37000, items=items),  # re-sent later
        ev("order.refunded", t + timedelta(days=3), refund_id="r-1", amount_fen=1980, full=False),
        ev("order.refunded", t + timedelta(days=4), refund_id="r-2", amount_fen=500, full=False),
        ev("order.cancelled", t + timedelta(days=5)),
    ]
    parsed = [parse_event(e) for e in events]
    reference = fold(parsed)
    facts = reference.orders[(MERCHANT, "o-1")]
    assert (facts.amount_fen, facts.paid_at, facts.created_at, facts.cancelled_at, facts.items_from_payment) == (
        37000,
        t + timedelta(minutes=2),
        t,
        t + timedelta(days=5),
        True,
    )
    for perm in itertools.permutations(parsed):
        folded = fold(perm)
        assert folded.orders == reference.orders and folded.refunds == reference.refunds


# ---------------------------------------------------------------- rules one at a time, end to end


@pytest.mark.parametrize(
    "delivery",
    [
        "one batch",
        "created first",
        "paid first",
    ],
)
async def test_payment_lines_replace_creation_lines_whatever_the_batching(tmp_path: Path, delivery: str) -> None:
    """The merchant edited the order before payment (a line removed, a price changed): the
    payment's lines alone count in customer_categories, whether the creation came in the same
    batch, an earlier one or a later one."""
    t = local_day(-30, 10)
    created = {
        "event_id": "e-c",
        "type": "order.created",
        "merchant_id": MERCHANT,
        "customer_id": "u-1",
        "occurred_at": t.isoformat(),
        "data": {
            "order_id": "o-1",
            "amount_fen": 40780,
            "items": [
                {"sku": "mp-a2-900g", "category": "milk-powder", "amount_fen": 36800},
                {"sku": "ty-bath-duck", "category": "toys", "amount_fen": 3980},
            ],
        },
    }
    paid_at = t + timedelta(minutes=5)
    paid = {
        "event_id": "e-p",
        "type": "order.paid",
        "merchant_id": MERCHANT,
        "customer_id": "u-1",
        "occurred_at": paid_at.isoformat(),
        "data": {
            "order_id": "o-1",
            "amount_fen": 35000,
            "items": [{"sku": "mp-a2-900g", "category": "milk-powder", "amount_fen": 35000}],
        },
    }
    parts = {"one batch": [[created, paid]], "created first": [[created], [paid]], "paid first": [[paid], [created]]}[
        delivery
    ]
    async with segmentation(tmp_path) as rt:
        await feed(rt, parts)
        got = await tables(rt)
    assert records("customers", got["customers"]) == {("u-1",): (1, 35000, paid_at, paid_at, 0)}
    assert records("customer_categories", got["customer_categories"]) == {
        ("u-1", "milk-powder"): (1, 35000, paid_at, paid_at)
    }


@pytest.mark.parametrize("delivery", ["one batch", "earliest first", "earliest last"])
async def test_the_earliest_payments_lines_win_like_its_amount(tmp_path: Path, delivery: str) -> None:
    """Two order.paid for one order that disagree (the shop re-sent the payment after the order's
    lines were edited): the earliest payment's amount counts, and so must its lines, whichever
    arrives last. (Once a bug: a later re-sent payment in a later batch replaced the lines.)"""
    t = local_day(-30, 10)

    def paid(event_id: str, at: datetime, lines: list[tuple[str, str, int]]) -> dict[str, Any]:
        return {
            "event_id": event_id,
            "type": "order.paid",
            "merchant_id": MERCHANT,
            "customer_id": "u-1",
            "occurred_at": at.isoformat(),
            "data": {
                "order_id": "o-1",
                "amount_fen": sum(a for _, _, a in lines),
                "items": [{"sku": s, "category": c, "amount_fen": a} for s, c, a in lines],
            },
        }

    earliest = paid("e-1", t, [("mp-a2-900g", "milk-powder", 36800), ("sn-puffs", "snacks", 990)])
    later = paid("e-2", t + timedelta(hours=6), [("dp-pampers-m", "diapers", 15900)])
    parts = {
        "one batch": [[later, earliest]],
        "earliest first": [[earliest], [later]],
        "earliest last": [[later], [earliest]],
    }[delivery]
    async with segmentation(tmp_path) as rt:
        await feed(rt, parts)
        got = await tables(rt)
    assert records("customers", got["customers"]) == {("u-1",): (1, 37790, t, t, 0)}
    assert records("customer_categories", got["customer_categories"]) == {
        ("u-1", "milk-powder"): (1, 36800, t, t),
        ("u-1", "snacks"): (1, 990, t, t),
    }
