"""The consumer loop on the in-process bus and SQLite, through segmentation's real runtime and
handler: redeliveries apply once, bad records go to the dead-letter topic with the reason while
the rest of the batch is applied, and events of a merchant not yet known wait for the merchant
copy before being judged."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.segmentation.adapters.tables import customers
from services.segmentation.service_layer.handlers import handle
from services.segmentation.spec import SPEC
from shared.bus.base import Message, Record
from shared.bus.inprocess import InProcessBus
from shared.consumer import BatchHandler, EventConsumer, MerchantFollower
from shared.events import EnvelopeBase, parse_event
from shared.runtime import MERCHANTS_TOPIC, ServiceRuntime
from shared.topics import DEAD_LETTER
from tests.conftest import embedded_settings
from tests.factories import eventually, merchant_upserted, order_paid

TOPIC = "shop.orders"


@dataclass
class Harness:
    bus: InProcessBus
    runtime: ServiceRuntime
    follower: MerchantFollower
    tasks: list[asyncio.Task[Any]]

    def consumer(self, handler: BatchHandler = handle) -> EventConsumer:
        return EventConsumer(
            service="segmentation",
            group_id=SPEC.group_id,
            subscriber=self.bus.subscriber(SPEC.group_id, [TOPIC]),
            bus=self.bus,
            sessions=self.runtime.sessions,
            inbox=self.runtime.inbox,
            tenancy=self.runtime.tenancy,
            handler=handler,
            merchants=self.follower,
            batch=100,
            poll_ms=20,
        )

    async def fetch(self, consumer: EventConsumer) -> list[Record]:
        await consumer.subscriber.start()
        return await consumer.subscriber.fetch(100, 200)

    async def publish(self, *items: dict[str, Any] | bytes, topic: str = TOPIC) -> None:
        msgs = []
        for item in items:
            if isinstance(item, bytes):
                msgs.append(Message(topic=topic, key=b"m:x", value=item))
            else:
                e = parse_event(item)
                msgs.append(Message(topic=topic, key=e.key, value=e.to_json()))
        await self.bus.publish(msgs)

    async def know_merchant(self, merchant_id: str) -> None:
        """Put a merchant in segmentation's copy directly (as the follower would)."""
        async with self.runtime.sessions() as session, session.begin():
            await self.runtime.tenancy.apply(session, [parse_event(merchant_upserted(merchant_id, "k-" + merchant_id))])

    def run_follower(self) -> None:
        self.tasks.append(asyncio.create_task(self.follower.run()))

    async def totals(self, merchant_id: str) -> dict[str, tuple[int, int]]:
        async with self.runtime.sessions() as session:
            rows = await session.execute(
                select(customers.c.customer_id, customers.c.paid_orders, customers.c.paid_amount_fen).where(
                    customers.c.merchant_id == merchant_id
                )
            )
            return {r.customer_id: (r.paid_orders, r.paid_amount_fen) for r in rows}

    async def inbox_size(self) -> int:
        async with self.runtime.sessions() as session:
            return int((await session.execute(select(func.count()).select_from(self.runtime.inbox.table))).scalar_one())

    async def dead_letters(self) -> list[Record]:
        # A new group each time, so every call reads the whole dead-letter topic.
        reader = self.bus.subscriber(f"dlq-reader-{uuid.uuid4().hex}", [DEAD_LETTER])
        await reader.start()
        return await reader.fetch(100, 50)


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    bus = InProcessBus(tmp_path / "bus.sqlite", prune_every_s=3600)
    await bus.start()
    runtime = ServiceRuntime(SPEC, embedded_settings(tmp_path), bus)
    await runtime.start(relay=False, consumer=False)
    follower = MerchantFollower(
        service="segmentation",
        subscriber=bus.subscriber(f"{SPEC.group_id}-merchants", [MERCHANTS_TOPIC]),
        sessions=runtime.sessions,
        tenancy=runtime.tenancy,
        poll_ms=20,
    )
    harness = Harness(bus, runtime, follower, [])
    try:
        yield harness
    finally:
        for t in harness.tasks:
            t.cancel()
        await asyncio.gather(*harness.tasks, return_exceptions=True)
        await runtime.stop()
        await bus.stop()


async def test_the_same_event_twice_in_one_batch_and_again_later_applies_once(h: Harness) -> None:
    await h.know_merchant("m1")
    event = order_paid("m1", "u1", "o1", 8000)
    await h.publish(event, event)
    consumer = h.consumer()
    batch = await h.fetch(consumer)
    assert len(batch) == 2
    await consumer.process(batch)
    assert await h.totals("m1") == {"u1": (1, 8000)}

    # Redelivered in a later batch (a relay that published twice): still one effect.
    await h.publish(event)
    await consumer.process(await h.fetch(consumer))
    assert await h.totals("m1") == {"u1": (1, 8000)}
    assert await h.inbox_size() == 1
    assert await h.dead_letters() == []


async def test_a_processed_batch_is_committed_so_a_restart_does_not_see_it_again(h: Harness) -> None:
    await h.know_merchant("m1")
    await h.publish(order_paid("m1", "u1", "o1", 100))
    consumer = h.consumer()
    await consumer.process(await h.fetch(consumer))
    restarted = h.consumer()
    assert await h.fetch(restarted) == []


async def test_a_poison_record_is_dead_lettered_with_the_reason_and_the_rest_is_applied(h: Harness) -> None:
    await h.know_merchant("m1")
    negative = order_paid("m1", "u3", "o3", 100)
    negative["data"]["amount_fen"] = -5
    await h.publish(order_paid("m1", "u1", "o1", 100), b"{not json", order_paid("m1", "u2", "o2", 200))
    # A schema-invalid event written by a producer that skipped validation.
    await h.bus.publish([Message(topic=TOPIC, key=b"m1:u3", value=orjson.dumps(negative))])
    consumer = h.consumer()
    batch = await h.fetch(consumer)
    await consumer.process(batch)

    assert await h.totals("m1") == {"u1": (1, 100), "u2": (1, 200)}
    dead = await h.dead_letters()
    assert [d.value for d in dead] == [b"{not json", batch[3].value]
    headers = [dict(d.headers) for d in dead]
    assert all(hd["reason"].startswith(b"invalid event") for hd in headers)
    assert b"data.amount_fen" in headers[1]["reason"]
    assert headers[0]["source_topic"] == TOPIC.encode()
    assert headers[0]["source_offset"] == str(batch[1].offset).encode()
    assert headers[0]["consumer_group"] == SPEC.group_id.encode()
    # The partition moved on: nothing comes back after a restart.
    assert await h.fetch(h.consumer()) == []


async def test_a_handler_failure_dead_letters_only_the_event_at_fault(h: Harness) -> None:
    await h.know_merchant("m1")
    events = [order_paid("m1", f"u{i}", f"o{i}", 100 * (i + 1), event_id=f"e{i}") for i in range(7)]
    calls: list[int] = []

    async def fails_on_e4(session: AsyncSession, batch: list[EnvelopeBase]) -> None:
        calls.append(len(batch))
        await handle(session, batch)  # writes first, so a rollback is needed to undo them
        if any(e.event_id == "e4" for e in batch):
            raise ValueError("cannot apply e4")

    await h.publish(*events)
    consumer = h.consumer(fails_on_e4)
    await consumer.process(await h.fetch(consumer))

    # Every other event applied exactly once: the failed attempts were rolled back.
    assert await h.totals("m1") == {f"u{i}": (1, 100 * (i + 1)) for i in range(7) if i != 4}
    assert await h.inbox_size() == 6
    (dead,) = await h.dead_letters()
    assert parse_event(dead.value).event_id == "e4"
    assert b"processing failed" in dict(dead.headers)["reason"]
    assert b"cannot apply e4" in dict(dead.headers)["reason"]
    # Narrowed by halving, not one by one from the start.
    assert calls[0] == 7 and len(calls) < 2 * 7


async def test_an_infrastructure_error_retries_the_batch_instead_of_dead_lettering(h: Harness) -> None:
    await h.know_merchant("m1")
    failures = [sa_exc.OperationalError("INSERT", {}, Exception("database is locked"))]

    async def flaky(session: AsyncSession, batch: list[EnvelopeBase]) -> None:
        await handle(session, batch)
        if failures:
            raise failures.pop()

    await h.publish(order_paid("m1", "u1", "o1", 100), order_paid("m1", "u2", "o2", 200))
    consumer = h.consumer(flaky)
    await asyncio.wait_for(consumer.process(await h.fetch(consumer)), 10)
    assert await h.totals("m1") == {"u1": (1, 100), "u2": (1, 200)}
    assert await h.dead_letters() == []


async def test_an_unknown_merchant_waits_until_the_merchant_copy_is_caught_up_then_is_dead_lettered(h: Harness) -> None:
    await h.know_merchant("m1")
    # Another merchant's record is on the merchants topic, so catching up means reading it.
    await h.publish(merchant_upserted("m2", "k2"), topic=MERCHANTS_TOPIC)
    await h.publish(order_paid("m1", "u1", "o1", 100), order_paid("ghost", "u9", "o9", 900))
    consumer = h.consumer()
    batch = await h.fetch(consumer)
    processing = asyncio.create_task(consumer.process(batch))
    await asyncio.sleep(0.4)
    # The follower has not started: 'ghost' may be a merchant created a moment ago.
    assert not processing.done()
    assert await h.dead_letters() == []
    assert await h.totals("m1") == {}

    h.run_follower()
    await asyncio.wait_for(processing, 10)
    assert await h.totals("m1") == {"u1": (1, 100)}
    (dead,) = await h.dead_letters()
    assert dict(dead.headers)["reason"] == b"unknown merchant 'ghost'"
    assert parse_event(dead.value).merchant_id == "ghost"


async def test_a_merchant_replicated_while_its_events_wait_gets_them_applied(h: Harness) -> None:
    await h.publish(order_paid("late", "u1", "o1", 300))
    consumer = h.consumer()
    processing = asyncio.create_task(consumer.process(await h.fetch(consumer)))
    await asyncio.sleep(0.2)
    assert not processing.done()
    # The merchant is created now; its copy arrives through the follower.
    await h.publish(merchant_upserted("late", "k-late"), topic=MERCHANTS_TOPIC)
    h.run_follower()
    await asyncio.wait_for(processing, 10)
    assert await h.totals("late") == {"u1": (1, 300)}
    assert await h.dead_letters() == []


async def test_an_inactive_merchant_is_treated_as_unknown(h: Harness) -> None:
    closed = merchant_upserted("closed", "k")
    closed["data"]["active"] = False
    async with h.runtime.sessions() as session, session.begin():
        await h.runtime.tenancy.apply(session, [parse_event(closed)])
    h.run_follower()
    await h.publish(order_paid("closed", "u1", "o1", 100))
    consumer = h.consumer()
    await asyncio.wait_for(consumer.process(await h.fetch(consumer)), 10)
    assert await h.totals("closed") == {}
    (dead,) = await h.dead_letters()
    assert b"unknown merchant" in dict(dead.headers)["reason"]


class SlowToAnswer:
    """The follower's real subscriber, except that, once armed, caught_up() answers only after the
    follower's next fetch has returned: on Kafka caught_up awaits a round trip to the broker
    (end_offsets), and a fetch may complete meanwhile. This makes that interleaving certain."""

    def __init__(self, inner: Any):
        self.inner = inner
        self.armed = False
        self.asked = asyncio.Event()
        self.fetched = asyncio.Event()

    async def start(self) -> None:
        await self.inner.start()

    async def stop(self) -> None:
        await self.inner.stop()

    async def fetch(self, max_records: int, timeout_ms: int) -> list[Record]:
        records: list[Record] = await self.inner.fetch(max_records, timeout_ms)
        if records:
            self.fetched.set()
        return records

    async def commit(self, records: Any) -> None:
        await self.inner.commit(records)

    async def caught_up(self) -> bool:
        if self.armed:
            self.asked.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.fetched.wait(), 5)
        return await self.inner.caught_up()  # type: ignore[no-any-return]


async def test_a_merchant_arriving_while_the_consumer_asks_whether_the_copy_is_complete_is_not_dead_lettered(
    h: Harness,
) -> None:
    slow = SlowToAnswer(h.bus.subscriber(f"{SPEC.group_id}-merchants", [MERCHANTS_TOPIC]))
    h.follower = MerchantFollower(
        service="segmentation", subscriber=slow, sessions=h.runtime.sessions, tenancy=h.runtime.tenancy, poll_ms=20
    )
    h.run_follower()
    # The follower is up and has read the (empty) merchants topic.
    await eventually(h.follower.caught_up, bool, timeout=5, interval=0.02)

    # A merchant is created and its shop sends an event at once: the relay publishes both together.
    await h.publish(order_paid("new", "u1", "o1", 300))
    consumer = h.consumer()
    batch = await h.fetch(consumer)
    slow.armed = True
    processing = asyncio.create_task(consumer.process(batch))
    asked = asyncio.create_task(slow.asked.wait())
    await asyncio.wait([asked, processing], timeout=5, return_when=asyncio.FIRST_COMPLETED)
    asked.cancel()
    await h.publish(merchant_upserted("new", "k-new"), topic=MERCHANTS_TOPIC)
    await asyncio.wait_for(processing, 10)

    assert await h.dead_letters() == []
    assert await h.totals("new") == {"u1": (1, 300)}
