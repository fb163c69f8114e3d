"""The transactional outbox and its relay: rows go out in commit (id) order and are deleted only
once the bus has them, so a bus outage delays events but never loses them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
from sqlalchemy import func, select

from services.segmentation.spec import SPEC
from shared.bus.base import Message
from shared.bus.inprocess import InProcessBus
from shared.events import EnvelopeBase, new_event, parse_event
from shared.outbox import OutboxRelay
from shared.runtime import ServiceRuntime
from tests.conftest import embedded_settings


class FailingBus:
    """The real bus, except that publish fails the first `failures` times (a broker outage)."""

    def __init__(self, inner: InProcessBus, failures: int):
        self.inner = inner
        self.failures = failures
        self.attempts = 0

    async def publish(self, messages: Sequence[Message]) -> None:
        self.attempts += 1
        if self.failures:
            self.failures -= 1
            raise ConnectionError("broker unreachable")
        await self.inner.publish(messages)


@pytest.fixture
async def bus(tmp_path: Path) -> AsyncIterator[InProcessBus]:
    b = InProcessBus(tmp_path / "bus.sqlite", prune_every_s=3600)
    await b.start()
    try:
        yield b
    finally:
        await b.stop()


@pytest.fixture
async def runtime(tmp_path: Path, bus: InProcessBus) -> AsyncIterator[ServiceRuntime]:
    rt = ServiceRuntime(SPEC, embedded_settings(tmp_path), bus)
    await rt.start(relay=False, consumer=False)
    try:
        yield rt
    finally:
        await rt.stop()


def segment_event(customer_id: str, n: int) -> EnvelopeBase:
    return new_event(
        "segment.changed",
        "m1",
        customer_id=customer_id,
        data={"before": None, "after": {"tier": "C", "frequency": n}, "config_version": n},
    )


async def stage(rt: ServiceRuntime, *events: EnvelopeBase) -> None:
    async with rt.sessions() as session, session.begin():
        await rt.stage(session, events)


async def pending(rt: ServiceRuntime) -> int:
    async with rt.sessions() as session:
        return int((await session.execute(select(func.count()).select_from(SPEC.tables.outbox))).scalar_one())


async def read_all(bus: InProcessBus, topic: str) -> list[EnvelopeBase]:
    sub = bus.subscriber(f"reader-{topic}", [topic])
    await sub.start()
    return [parse_event(r.value) for r in await sub.fetch(1000, 50)]


async def test_staged_events_are_published_in_commit_order_and_then_deleted(
    runtime: ServiceRuntime, bus: InProcessBus
) -> None:
    events = [segment_event(f"u{i}", i + 1) for i in range(5)]
    # Three transactions: the bus must see them in the order they were committed.
    await stage(runtime, *events[:2])
    await stage(runtime, events[2])
    await stage(runtime, *events[3:])
    relay = OutboxRelay("segmentation", SPEC.tables.outbox, runtime.sessions, bus, batch=2)

    # One batch at a time, and each batch is gone from the outbox once published.
    assert await relay.publish_once() == 2
    assert await pending(runtime) == 3
    assert await relay.publish_once() == 2
    assert await relay.publish_once() == 1
    assert await relay.publish_once() == 0
    assert await pending(runtime) == 0

    got = await read_all(bus, "fugou.segments")
    assert [e.event_id for e in got] == [e.event_id for e in events]
    assert got == events


async def test_a_published_row_keeps_its_topic_and_customer_key(runtime: ServiceRuntime, bus: InProcessBus) -> None:
    event = segment_event("u42", 1)
    await stage(runtime, event)
    await OutboxRelay("segmentation", SPEC.tables.outbox, runtime.sessions, bus).publish_once()
    sub = bus.subscriber("keys", ["fugou.segments"])
    await sub.start()
    (record,) = await sub.fetch(10, 50)
    assert record.key == b"m1:u42"
    assert parse_event(record.value) == event


async def test_nothing_is_deleted_when_publish_fails_and_the_next_try_publishes_it(
    runtime: ServiceRuntime, bus: InProcessBus
) -> None:
    events = [segment_event(f"u{i}", 1) for i in range(3)]
    await stage(runtime, *events)
    broken = FailingBus(bus, failures=1)
    relay = OutboxRelay("segmentation", SPEC.tables.outbox, runtime.sessions, broken)  # type: ignore[arg-type]

    with pytest.raises(ConnectionError):
        await relay.publish_once()
    assert await pending(runtime) == 3
    assert await read_all(bus, "fugou.segments") == []

    assert await relay.publish_once() == 3
    assert await pending(runtime) == 0
    assert [e.event_id for e in await read_all(bus, "fugou.segments")] == [e.event_id for e in events]


async def test_the_relay_loop_rides_out_an_outage_and_publishes_everything_once(
    runtime: ServiceRuntime, bus: InProcessBus
) -> None:
    events = [segment_event(f"u{i}", 1) for i in range(4)]
    await stage(runtime, *events)
    broken = FailingBus(bus, failures=2)
    relay = OutboxRelay(
        "segmentation",
        SPEC.tables.outbox,
        runtime.sessions,
        broken,  # type: ignore[arg-type]
        idle_ms=10,
    )
    task = asyncio.create_task(relay.run())
    try:
        for _ in range(200):
            if await pending(runtime) == 0:
                break
            await asyncio.sleep(0.02)
        assert await pending(runtime) == 0
        assert broken.attempts >= 3
        # Rows staged while the relay idles are picked up too.
        late = segment_event("late", 1)
        await stage(runtime, late)
        relay.wake()
        for _ in range(200):
            if await pending(runtime) == 0:
                break
            await asyncio.sleep(0.02)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    got = await read_all(bus, "fugou.segments")
    assert [e.event_id for e in got] == [e.event_id for e in [*events, late]]
