"""The consumer loop every service runs, on either bus.

For each fetched batch:
1. decode and validate every record; a malformed one is dead-lettered with the reason;
2. in ONE database transaction: dead-letter events of unknown merchants (once the merchant
   follower has caught up), claim the rest in the inbox (dropping redeliveries), apply the new ones;
3. publish the dead letters, then commit the offsets (``last + 1`` per partition).

So an offset is committed only after the database commit, and a crash anywhere before it means
redelivery, which the inbox absorbs. An infrastructure error (database or bus down) retries the
same batch with backoff, forever: nothing is skipped. Any other error is narrowed down by
splitting the batch until the one event that fails is found and dead-lettered, so the
partition keeps moving."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

import structlog
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared import clock, faults, metrics
from shared.bus.base import Bus, Message, Record, Subscriber
from shared.events import EnvelopeBase, InvalidEvent, parse_event
from shared.inbox import Inbox
from shared.tenancy import Tenancy
from shared.topics import DEAD_LETTER

log = structlog.get_logger("fugou.consumer")

BatchHandler = Callable[[AsyncSession, list[EnvelopeBase]], Awaitable[None]]
MERCHANT_EVENT = "merchant.upserted"
T = TypeVar("T")


class MerchantsNotSynced(Exception):
    """Events name a merchant this service does not know yet, and its copy is still catching up."""


@dataclass(slots=True)
class _Item:
    record: Record
    event: EnvelopeBase


# SQLSTATE classes and codes that say "try again", whatever the statement: connection
# exceptions, insufficient resources, operator intervention (starting up, shutting down, admin
# shutdown), serialization failures and deadlocks.
_RETRY_SQLSTATE_CLASSES = ("08", "53", "57P")
_RETRY_SQLSTATES = frozenset({"40001", "40P01"})


def is_transient(exc: BaseException) -> bool:
    """Errors that say 'the infrastructure is unwell', not 'this event is bad'."""
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        state = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
        if isinstance(state, str) and (state in _RETRY_SQLSTATES or state.startswith(_RETRY_SQLSTATE_CLASSES)):
            return True
    return isinstance(
        exc,
        (
            sa_exc.OperationalError,
            sa_exc.InterfaceError,
            sa_exc.TimeoutError,
            OSError,
            ConnectionError,
            TimeoutError,
            asyncio.TimeoutError,
        ),
    )


def dead_letter(record: Record, reason: str, group_id: str) -> Message:
    headers = (
        ("reason", reason[:2000].encode()),
        ("source_topic", record.topic.encode()),
        ("source_partition", str(record.partition).encode()),
        ("source_offset", str(record.offset).encode()),
        ("consumer_group", group_id.encode()),
        ("failed_at", clock.now().isoformat().encode()),
    )
    return Message(topic=DEAD_LETTER, key=record.key, value=record.value, headers=headers)


class MerchantFollower:
    """Keeps this service's copy of the merchants up to date from ``fugou.merchants``.

    It runs apart from the main consumer so that the main consumer can ask whether the copy is
    complete: a merchant is created (and its event published) before any event of its shop
    exists, so once the follower has read everything on the topic, a merchant it does not know
    is truly unknown and its events may be dead-lettered; before that, they wait."""

    def __init__(
        self,
        *,
        service: str,
        subscriber: Subscriber,
        sessions: async_sessionmaker[AsyncSession],
        tenancy: Tenancy,
        poll_ms: int = 200,
    ):
        self.service = service
        self.subscriber = subscriber
        self.sessions = sessions
        self.tenancy = tenancy
        self.poll_ms = poll_ms
        self._busy = True
        self.started = False

    async def caught_up(self) -> bool:
        if not self.started or self._busy:
            return False
        at_end = await self.subscriber.caught_up()
        # A fetch may have returned while we asked: then its merchants are not applied yet.
        return at_end and not self._busy

    async def run(self) -> None:
        await retry_forever(self.subscriber.start, self.service, "merchants.start")
        self.started = True
        try:
            while True:
                self._busy = False
                records = await retry_forever(
                    lambda: self.subscriber.fetch(500, self.poll_ms), self.service, "merchants.fetch"
                )
                if not records:
                    continue
                self._busy = True
                events = []
                for r in records:
                    try:
                        events.append(parse_event(r.value, check_encodable=False))
                    except InvalidEvent as bad:
                        log.error("merchants.invalid_event", service=self.service, reason=bad.reason)
                events = [e for e in events if e.type == MERCHANT_EVENT]
                await retry_forever(partial(self._apply, events), self.service, "merchants.apply")
                await retry_forever(partial(self.subscriber.commit, records), self.service, "merchants.commit")
        finally:
            self.started = False
            await asyncio.shield(self.subscriber.stop())

    async def _apply(self, events: list[EnvelopeBase]) -> None:
        if events:
            async with self.sessions() as session, session.begin():
                await self.tenancy.apply(session, events)


async def retry_forever(
    fn: Callable[[], Awaitable[T]], service: str, what: str, only: Callable[[Exception], bool] | None = None
) -> T:
    """Call fn until it succeeds, backing off exponentially to 30 s; re-raise errors `only` rejects."""
    backoff = 0.1
    while True:
        try:
            return await fn()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if only is not None and not only(exc):
                raise
            metrics.CONSUMER_RETRIES.labels(service).inc()
            log.warning("consumer.retry", service=service, step=what, error=repr(exc), retry_in=backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)


class EventConsumer:
    def __init__(
        self,
        *,
        service: str,
        group_id: str,
        subscriber: Subscriber,
        bus: Bus,
        sessions: async_sessionmaker[AsyncSession],
        inbox: Inbox,
        tenancy: Tenancy,
        handler: BatchHandler,
        merchants: MerchantFollower,
        batch: int = 2000,
        poll_ms: int = 200,
        on_applied: Callable[[], None] | None = None,
    ):
        self.service = service
        self.group_id = group_id
        self.subscriber = subscriber
        self.bus = bus
        self.sessions = sessions
        self.inbox = inbox
        self.tenancy = tenancy
        self.handler = handler
        self.merchants = merchants
        self.batch = batch
        self.poll_ms = poll_ms
        self.on_applied = on_applied
        self.started = False

    async def run(self) -> None:
        await self._retry(self.subscriber.start, "subscriber.start")
        self.started = True
        try:
            while True:
                records = await self._retry(lambda: self.subscriber.fetch(self.batch, self.poll_ms), "fetch")
                if records:
                    await self.process(records)
        finally:
            self.started = False
            await asyncio.shield(self.subscriber.stop())

    async def process(self, records: Sequence[Record]) -> None:
        """Apply one fetched batch, then commit its offsets."""
        started = time.perf_counter()
        dead: list[Message] = []
        items: list[_Item] = []
        for r in records:
            try:
                items.append(_Item(r, parse_event(r.value, check_encodable=False)))
            except InvalidEvent as bad:
                dead.append(dead_letter(r, f"invalid event: {bad.reason}", self.group_id))
                metrics.EVENTS_CONSUMED.labels(self.service, r.topic, "dead_lettered").inc()
        if items:
            dead.extend(await self._apply_narrowing(items))
        if dead:
            await self._retry(lambda: self.bus.publish(dead), "dead_letter.publish")
            log.warning(
                "consumer.dead_lettered",
                service=self.service,
                count=len(dead),
                reasons=sorted({dict(m.headers)["reason"].decode()[:200] for m in dead})[:5],
            )
        faults.point("consumer.after_db_commit")
        await self._retry(lambda: self.subscriber.commit(records), "offsets.commit")
        metrics.CONSUMER_BATCH_SECONDS.labels(self.service).observe(time.perf_counter() - started)
        if self.on_applied is not None:
            self.on_applied()

    async def _apply_narrowing(self, items: list[_Item]) -> list[Message]:
        try:
            return await self._retry(lambda: self._apply(items), "apply")
        except Exception as exc:  # not transient: find the event at fault
            if len(items) == 1:
                log.error(
                    "consumer.event_failed", service=self.service, event_id=items[0].event.event_id, error=repr(exc)
                )
                metrics.EVENTS_CONSUMED.labels(self.service, items[0].record.topic, "dead_lettered").inc()
                return [dead_letter(items[0].record, f"processing failed: {exc!r}", self.group_id)]
            mid = len(items) // 2
            return await self._apply_narrowing(items[:mid]) + await self._apply_narrowing(items[mid:])

    async def _apply(self, items: list[_Item]) -> list[Message]:
        dead: list[Message] = []
        async with self.sessions() as session, session.begin():
            merchant_ids = {i.event.merchant_id for i in items}
            known = await self.tenancy.known(session, merchant_ids)
            if known != merchant_ids:
                if not await self.merchants.caught_up():
                    # Maybe a merchant created a moment ago: wait for the copy, do not dead-letter.
                    raise MerchantsNotSynced(sorted(merchant_ids - known))
                # The copy is complete now; it may have become so while we asked.
                known = await self.tenancy.known(session, merchant_ids)
            accepted: list[_Item] = []
            for i in items:
                if i.event.merchant_id in known:
                    accepted.append(i)
                else:
                    dead.append(dead_letter(i.record, f"unknown merchant {i.event.merchant_id!r}", self.group_id))
                    metrics.EVENTS_CONSUMED.labels(self.service, i.record.topic, "dead_lettered").inc()
            fresh = await self.inbox.claim(session, [i.event for i in accepted])
            if fresh:
                await self.handler(session, fresh)
        fresh_ids = {(e.merchant_id, e.event_id) for e in fresh}
        outcomes = Counter(
            (i.record.topic, "applied" if (i.event.merchant_id, i.event.event_id) in fresh_ids else "duplicate")
            for i in accepted
        )
        for (topic, outcome), n in outcomes.items():
            metrics.EVENTS_CONSUMED.labels(self.service, topic, outcome).inc(n)
        return dead

    async def _retry(self, fn: Callable[[], Awaitable[T]], what: str) -> T:
        # Applying a batch retries only what says "the infrastructure is unwell" (or "the
        # merchant copy is catching up"); anything else is the batch's own fault: narrow it down.
        only = (lambda exc: is_transient(exc) or isinstance(exc, MerchantsNotSynced)) if what == "apply" else None
        return await retry_forever(fn, self.service, what, only=only)
