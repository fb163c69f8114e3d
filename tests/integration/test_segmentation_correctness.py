"""Segmentation's aggregates against a plain pandas computation from the raw events (issue 3,
item 7), at a scale that is no unit test's: on SQLite, a history of two thousand customers fed
through handle() in batches, and fifty Hypothesis examples of reordered, duplicated and re-batched
delivery; on PostgreSQL, a history of a thousand customers fed in order, then shuffled, duplicated
and cut into uneven batches, both ending exactly as pandas says. tests/unit/
test_segmentation_correctness.py runs the same checks on smaller histories and fewer examples."""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.runtime import ServiceRuntime
from tests.segmentation_history import (
    COMPARED,
    MERCHANT,
    batches,
    check_equal_to_pandas,
    check_redelivery_leaves_the_tables_unchanged,
    diff,
    expected_tables,
    feed,
    generate_history,
    read_tables,
    redeliver,
    segmentation,
)

pytestmark = [pytest.mark.timeout(600)]
HISTORIES = pytest.mark.parametrize(
    "refunds",
    [
        pytest.param(True, id="with-refunds"),
        pytest.param(False, id="without-refunds"),
    ],
)


def history(customers: int, seed: int, refunds: bool) -> list[dict[str, Any]]:
    events = generate_history(customers, seed)
    return events if refunds else [e for e in events if e["type"] != "order.refunded"]


async def compare(rt: ServiceRuntime, expected: dict[str, Any], names: Sequence[str]) -> None:
    async with rt.sessions() as session:
        actual = await read_tables(session, MERCHANT)
    problems = [p for name in names for p in diff(name, expected[name], actual[name])]
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------- SQLite, at scale


async def test_thousands_of_customers_equal_a_plain_pandas_computation(tmp_path: Path) -> None:
    await check_equal_to_pandas(tmp_path, customers=2000, seed=301)


@pytest.mark.timeout(900)  # a failure's shrinking replays hundreds of examples; let it finish and report
@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
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


# ---------------------------------------------------------------- PostgreSQL


@pytest.mark.postgres
@HISTORIES
async def test_a_thousand_customers_equal_a_plain_pandas_computation(
    pg_urls: dict[str, str], tmp_path: Path, refunds: bool
) -> None:
    events = history(1000, 8080, refunds)
    expected = expected_tables(events)
    assert len(expected["customers"]) > 800 and len(expected["customer_categories"]) > 1500
    async with segmentation(tmp_path, pg_urls["segmentation"]) as rt:
        started = time.perf_counter()
        await feed(rt, [events[i : i + 500] for i in range(0, len(events), 500)])
        elapsed = time.perf_counter() - started
        await compare(rt, expected, (*COMPARED, "behaviours"))
    print(f"\n{len(events)} events in batches of 500 on PostgreSQL: {elapsed:.2f}s")


@pytest.mark.postgres
@HISTORIES
async def test_shuffled_duplicated_rebatched_delivery_ends_equal(
    pg_urls: dict[str, str], tmp_path: Path, refunds: bool
) -> None:
    events = history(1000, 4242, refunds)
    rng = random.Random(4242)
    delivered = redeliver(events, rng, duplicate=0.3)
    assert len(delivered) > len(events) * 1.25
    parts = batches(delivered, rng, 200)
    async with segmentation(tmp_path, pg_urls["segmentation"]) as rt:
        started = time.perf_counter()
        await feed(rt, parts)
        elapsed = time.perf_counter() - started
        # Exactly-once, in-order delivery gives pandas' tables (the test above); so must this.
        await compare(rt, expected_tables(events), COMPARED)
    print(
        f"\n{len(delivered)} events ({len(events)} distinct) in {len(parts)} shuffled batches on PostgreSQL: "
        f"{elapsed:.2f}s"
    )
