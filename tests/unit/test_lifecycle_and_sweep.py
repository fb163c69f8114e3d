"""Lifecycle tags, and the sweep that moves segments when time alone crosses a boundary."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import select

from services.embedded import build_embedded_app
from services.segmentation.adapters.tables import customer_tags, segments
from services.segmentation.domain.lifecycle import (
    CategoryHistory,
    LifecycleConfig,
    TagInputs,
    lifecycle_tags,
    next_recency_change,
)
from services.segmentation.service_layer.segments import sweep
from shared.clock import ManualClock
from tests.conftest import embedded_settings, running
from tests.factories import eventually, local_day, order_paid

NOW = local_day(0, 12)  # noon today in Shanghai: the rules are given their now
CFG = LifecycleConfig(
    interest_days=7,
    new_days=30,
    dormant_days=90,
    churn_factor=2.0,
    replenish_lead_days=3,
    category_cycles={"milk-powder": 30},
)


def tags_of(**kw: object) -> tuple[list[str], datetime | None]:
    base = {"paid_orders": 0, "first_order_at": None, "last_order_at": None, "last_interest_at": None, "categories": ()}
    return lifecycle_tags(TagInputs(**(base | kw)), CFG, NOW)  # type: ignore[arg-type]


def test_a_cart_without_a_purchase_since_is_interest_until_its_window_closes() -> None:
    carted = NOW - timedelta(days=2)
    tags, until = tags_of(last_interest_at=carted)
    assert tags == ["interest"] and until == carted + timedelta(days=7)
    # A purchase after the cart ends the interest; a cart after the purchase starts it again.
    assert (
        "interest"
        not in tags_of(
            paid_orders=1,
            first_order_at=NOW - timedelta(days=1),
            last_order_at=NOW - timedelta(days=1),
            last_interest_at=carted,
        )[0]
    )
    assert tags_of(last_interest_at=NOW - timedelta(days=8))[0] == []


def test_one_recent_order_is_new_and_a_long_silence_is_dormant() -> None:
    first = NOW - timedelta(days=10)
    tags, until = tags_of(paid_orders=1, first_order_at=first, last_order_at=first)
    assert tags == ["new"] and until == first + timedelta(days=30)
    old = NOW - timedelta(days=100)
    assert tags_of(paid_orders=1, first_order_at=old, last_order_at=old)[0] == ["dormant"]


def test_well_past_the_usual_interval_is_churn_risk() -> None:
    # Every 10 days, three times; the last 25 days ago: past 2 x 10 days.
    first, last = NOW - timedelta(days=45), NOW - timedelta(days=25)
    tags, _ = tags_of(paid_orders=3, first_order_at=first, last_order_at=last)
    assert tags == ["churn_risk"]
    tags, soon = tags_of(paid_orders=3, first_order_at=NOW - timedelta(days=25), last_order_at=NOW - timedelta(days=5))
    assert tags == [] and soon == NOW - timedelta(days=5) + timedelta(days=20)


def test_category_cycles_come_from_the_merchant_or_the_customers_own_rhythm() -> None:
    milk = CategoryHistory("milk-powder", 1, NOW - timedelta(days=28), NOW - timedelta(days=28))
    snacks = CategoryHistory("snacks", 3, NOW - timedelta(days=20), NOW - timedelta(days=2))  # every 9 days
    toys = CategoryHistory("toys", 1, NOW - timedelta(days=5), NOW - timedelta(days=5))  # no cycle known
    tags, soon = tags_of(
        paid_orders=5,
        first_order_at=NOW - timedelta(days=28),
        last_order_at=NOW - timedelta(days=2),
        categories=(milk, snacks, toys),
    )
    assert tags == ["replenish_due:milk-powder", "repurchase_cycle:snacks"]
    assert soon == NOW - timedelta(days=2) + timedelta(days=9) - timedelta(days=3)


def test_recency_passes_a_boundary_at_the_merchants_midnight() -> None:
    last = local_day(-40, 23, 30)  # day D in Shanghai, though 15:30 UTC on D as well
    at = next_recency_change(last, local_day(-36), "Asia/Shanghai", [30, 90])  # D + 4 days
    assert at == local_day(-9, 0, 0)  # 00:00 on D + 31 days in Shanghai: recency becomes 31 days
    assert next_recency_change(last, local_day(80), "Asia/Shanghai", [30, 90]) is None  # D + 120: past both


async def test_the_sweep_moves_exactly_the_customers_who_crossed_and_is_idempotent(
    tmp_path: Path, frozen_clock: ManualClock
) -> None:
    key = "fg_sweep_key"
    app = build_embedded_app(embedded_settings(tmp_path, bootstrap_api_key=key), announce=False)
    now = frozen_clock.now()  # the service scores at this instant; the sweep is told its own
    config = {
        "period_days": None,
        "levels": 3,
        "boundaries": {
            "mode": "fixed",
            "recency_days": [30, 90],
            "frequency": [2, 4],
            "monetary_fen": [10_000, 50_000],
        },
        "class_split": {"mode": "fixed", "recency_days": 30, "frequency": 2, "monetary_fen": 20_000},
    }
    async with running(app) as client:
        h = {"X-Api-Key": key}
        assert (await client.put("/v1/segmentation/config", json=config, headers=h)).status_code == 200
        # 20 customers last bought 29 days ago (R level 3 for one more day), 80 bought yesterday.
        events = [order_paid("demo", f"old-{i}", f"a-{i}", 5000, at=now - timedelta(days=29)) for i in range(20)]
        events += [order_paid("demo", f"new-{i}", f"b-{i}", 5000, at=now - timedelta(days=1)) for i in range(80)]
        assert (await client.post("/v1/events", json=events, headers=h)).json()["accepted"] == 100

        async def customers() -> int:
            return (await client.get("/v1/segments/summary", headers=h)).json()["customers"]

        await eventually(customers, lambda n: n == 100)
        rt = app.state.runtimes["segmentation"]
        later = now + timedelta(days=2, hours=1)  # the 20 are now at 31 days; the 80 at 3
        async with rt.sessions() as session, session.begin():
            looked_at = await sweep(session, later)
        assert looked_at == 20
        async with rt.sessions() as session:
            rows = dict((await session.execute(select(segments.c.customer_id, segments.c.r_level))).all())
            tagged = set(
                (
                    await session.execute(select(customer_tags.c.customer_id).where(customer_tags.c.tag == "new"))
                ).scalars()
            )
        assert all(rows[f"old-{i}"] == 2 for i in range(20)) and all(rows[f"new-{i}"] == 3 for i in range(80))
        # 'new' lasts 30 days after the one order: the 20 lost it in the same sweep, the 80 keep it.
        assert tagged == {f"new-{i}" for i in range(80)}
        async with rt.sessions() as session, session.begin():
            assert await sweep(session, later) == 0  # nothing left to do at that time
