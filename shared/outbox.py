"""Transactional outbox, and the relay that publishes it.

A service writes its state change and the events it raises in one transaction (``stage``).
The relay reads committed rows in id order, publishes them, and only then deletes them. A
relay killed between publishing and deleting publishes the same rows again on restart: the
consumers' inbox makes that harmless, and nothing is lost."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any, cast

import structlog
from sqlalchemy import (
    Column,
    Index,
    LargeBinary,
    MetaData,
    Select,
    String,
    Table,
    delete,
    func,
    insert,
    literal,
    select,
    text,
)
from sqlalchemy.engine import CursorResult
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared import clock, faults, metrics
from shared.bus.base import Bus, Message
from shared.db import BigId, UTCDateTime, bulk_insert, dialect_name, json_object, json_text, new_uuid, utf8_bytes
from shared.events import REGISTRY, EnvelopeBase, OutboundEvent
from shared.topics import topic_for

log = structlog.get_logger("fugou.outbox")


def outbox_table(metadata: MetaData) -> Table:
    return Table(
        "outbox",
        metadata,
        Column("id", BigId, primary_key=True, autoincrement=True),
        Column("merchant_id", String(128), nullable=False),
        Column("topic", String(255), nullable=False),
        Column("key", LargeBinary, nullable=True),
        Column("payload", LargeBinary, nullable=False),
        Column("created_at", UTCDateTime, nullable=False),
        Index("ix_outbox_merchant_id", "merchant_id"),
    )


class Outbox:
    def __init__(self, table: Table):
        self.table = table

    async def stage_select(self, session: AsyncSession, type_: str, rows: Select[Any]) -> int:
        """Stage one ``type_`` event per row of ``rows`` (columns ``merchant_id``, ``customer_id``
        and ``data``, a json_object), the envelope built by the database in one INSERT … SELECT:
        for statements that announce thousands of changes at once. Returns how many."""
        now = clock.now()
        r = rows.subquery("announced")
        envelope = json_object(
            "event_id",
            new_uuid(),
            "type",
            literal(type_),
            "merchant_id",
            r.c.merchant_id,
            "customer_id",
            r.c.customer_id,
            "occurred_at",
            literal(now.isoformat()),
            "schema_version",
            literal(REGISTRY[type_].schema_version),
            "data",
            json_text(r.c.data),
        )
        key = utf8_bytes(r.c.merchant_id + literal(":") + func.coalesce(r.c.customer_id, literal("")))
        stmt = insert(self.table).from_select(
            ["merchant_id", "topic", "key", "payload", "created_at"],
            select(r.c.merchant_id, literal(topic_for(type_)), key, utf8_bytes(envelope), literal(now, UTCDateTime())),
        )
        # An INSERT runs on a cursor: its result is a CursorResult (AsyncSession.execute says Result).
        result = cast("CursorResult[Any]", await session.execute(stmt))
        return int(result.rowcount)

    async def stage(self, session: AsyncSession, events: Sequence[EnvelopeBase | OutboundEvent]) -> None:
        """Record events to publish, inside the caller's transaction."""
        if not events:
            return
        now = clock.now()
        await bulk_insert(
            session,
            self.table,
            ["merchant_id", "topic", "key", "payload", "created_at"],
            [(e.merchant_id, topic_for(e.type), e.key, e.to_json(), now) for e in events],
        )


class OutboxRelay:
    """Publishes one service's outbox. Run one per service (a PostgreSQL advisory lock keeps a
    second copy idle), so that per-key order on the bus is the order of the commits."""

    def __init__(
        self,
        service: str,
        table: Table,
        sessions: async_sessionmaker[AsyncSession],
        bus: Bus,
        batch: int = 2000,
        idle_ms: int = 100,
    ):
        self.service = service
        self.table = table
        self.sessions = sessions
        self.bus = bus
        self.batch = batch
        self.idle = idle_ms / 1000
        self._wake = asyncio.Event()
        self._lock_key = int.from_bytes(f"outbox:{service}".encode()[:8].ljust(8, b"\0"), "big") >> 1

    def wake(self) -> None:
        """Hint that rows were just committed (saves the idle wait in embedded mode)."""
        self._wake.set()

    async def publish_once(self) -> int:
        """Publish up to one batch; return how many rows were published."""
        async with self.sessions() as session, session.begin():
            if dialect_name(session) == "postgresql":
                got = (
                    await session.execute(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": self._lock_key})
                ).scalar()
                if not got:
                    return 0
            t = self.table
            rows = (
                await session.execute(
                    select(t.c.id, t.c.topic, t.c.key, t.c.payload).order_by(t.c.id).limit(self.batch)
                )
            ).all()
            if not rows:
                metrics.OUTBOX_PENDING.labels(self.service).set(0)
                return 0
            await self.bus.publish([Message(topic=r.topic, key=r.key, value=r.payload) for r in rows])
            faults.point("relay.after_publish")
            # Delete exactly what was published: a lower id still uncommitted when we read stays.
            await session.execute(delete(t).where(t.c.id.in_([r.id for r in rows])))
        metrics.OUTBOX_PUBLISHED.labels(self.service).inc(len(rows))
        return len(rows)

    async def pending(self) -> int:
        async with self.sessions() as session:
            return int((await session.execute(select(func.count()).select_from(self.table))).scalar_one())

    async def run(self) -> None:
        backoff = 0.1
        while True:
            try:
                n = await self.publish_once()
                backoff = 0.1
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # infrastructure down: keep the rows, retry with backoff
                log.warning("outbox.publish_failed", service=self.service, error=repr(exc), retry_in=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30)
                continue
            if n < self.batch:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.idle)
