"""Segmentation's order.paid handler on SQLite: aggregates, order-level idempotency, and the
events it stages (which must be valid envelopes of the registered schema)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from services.segmentation.adapters.tables import customers, messaging
from services.segmentation.domain.stats import recency_days
from services.segmentation.service_layer.handlers import handle
from services.segmentation.spec import SPEC
from shared.bus.inprocess import InProcessBus
from shared.events import parse_event
from shared.runtime import ServiceRuntime
from shared.settings import Settings
from tests.factories import local_day, order_paid


async def runtime(tmp_path: Path) -> tuple[ServiceRuntime, InProcessBus]:
    bus = InProcessBus(tmp_path / "bus.sqlite")
    await bus.start()
    rt = ServiceRuntime(SPEC, Settings(data_dir=tmp_path), bus)
    await rt.start(relay=False, consumer=False)
    return rt, bus


def test_recency_counts_calendar_days_in_the_merchants_time_zone() -> None:
    # 23:30 yesterday in Shanghai is still yesterday there, though it is 15:30 UTC: 40 minutes
    # later, just past midnight in Shanghai, it is a day ago there and still the same day in UTC.
    last = local_day(-1, 23, 30)
    now = local_day(0, 0, 10)
    assert recency_days(last, now, "Asia/Shanghai") == 1
    assert recency_days(last, now, "UTC") == 0


async def test_the_same_order_paid_under_two_event_ids_counts_once_and_stages_valid_events(tmp_path: Path) -> None:
    rt, bus = await runtime(tmp_path)
    try:
        first = parse_event(order_paid("demo", "u-1", "o-1", 8000, at=local_day(-60, 9)))
        second = parse_event(order_paid("demo", "u-1", "o-2", 2000, at=local_day(-56, 9)))
        again = parse_event(order_paid("demo", "u-1", "o-1", 8000, at=local_day(-60, 9)))
        async with rt.sessions() as session, session.begin():
            await handle(session, [first, second])
        async with rt.sessions() as session, session.begin():
            await handle(session, [again])
        async with rt.sessions() as session:
            row = (await session.execute(select(customers))).one()
            staged = (
                await session.execute(
                    select(messaging.outbox.c.topic, messaging.outbox.c.payload).order_by(messaging.outbox.c.id)
                )
            ).all()
        assert (row.paid_orders, row.paid_amount_fen) == (2, 10000)
        assert row.first_order_at == first.occurred_at and row.last_order_at == second.occurred_at
        # For the batch that changed the customer: its first segment; for the repeat that changed
        # nothing, nothing.
        assert [r.topic for r in staged] == ["fugou.segments"]
        segment = parse_event(staged[0].payload)
        assert segment.type == "segment.changed" and segment.customer_id == "u-1"  # type: ignore[attr-defined]
        assert segment.data.before is None and segment.data.after["tier"] in "SABC"  # type: ignore[attr-defined]
    finally:
        await rt.stop()
        await bus.stop()
