"""Segmentation's aggregates on PostgreSQL against a plain pandas computation from the raw events
(issue 3, item 7): a generated history of a thousand customers fed through handle() in batches,
in order, then shuffled, duplicated and cut into uneven batches; both end exactly as pandas says."""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from shared.runtime import ServiceRuntime
from tests.segmentation_history import (
    MERCHANT,
    batches,
    diff,
    expected_tables,
    feed,
    generate_history,
    read_tables,
    redeliver,
    segmentation,
)

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(600)]
COMPARED = ("customers", "customer_categories")
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
