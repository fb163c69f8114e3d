"""What a service is made of at run time, and the one place that builds it.

A ``ServiceSpec`` is the static description a service exports (tables, migrations, routers,
topics, handler). A ``ServiceRuntime`` builds the engine, outbox relay and consumer from
settings and a bus: the concrete adapters are picked here and nowhere else."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from alembic import command
from alembic.config import Config
from fastapi import APIRouter
from sqlalchemy import MetaData, Table, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from shared.bus.base import Bus
from shared.consumer import BatchHandler, EventConsumer, MerchantFollower
from shared.db import create_engine, session_factory
from shared.events import EnvelopeBase, OutboundEvent
from shared.inbox import Inbox, inbox_table
from shared.outbox import Outbox, OutboxRelay, outbox_table
from shared.settings import Settings
from shared.tenancy import Tenancy, merchant_tables

log = structlog.get_logger("fugou.runtime")

MERCHANTS_TOPIC = "fugou.merchants"


@dataclass(frozen=True)
class MessagingTables:
    outbox: Table
    inbox: Table
    merchants: Table
    merchant_keys: Table

    @classmethod
    def on(cls, metadata: MetaData) -> MessagingTables:
        merchants, keys = merchant_tables(metadata)
        return cls(outbox=outbox_table(metadata), inbox=inbox_table(metadata), merchants=merchants, merchant_keys=keys)


@dataclass
class ServiceSpec:
    name: str
    metadata: MetaData
    tables: MessagingTables
    migrations: Path
    routers: list[APIRouter]
    topics: Sequence[str] = ()
    handler: BatchHandler | None = None
    # Every service but the gateway (which owns merchants) follows fugou.merchants.
    follows_merchants: bool = True
    description: str = ""
    # Long-running tasks of the service (scheduled jobs), started with the consumer role.
    background: Sequence[Callable[[ServiceRuntime], Awaitable[None]]] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def group_id(self) -> str:
        return f"fugou-{self.name}"


def alembic_config(spec: ServiceSpec) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(spec.migrations))
    cfg.set_main_option("version_table", f"alembic_version_{spec.name}")
    cfg.attributes["target_metadata"] = spec.metadata
    return cfg


async def migrate(engine: AsyncEngine, spec: ServiceSpec) -> None:
    """Upgrade the service's database to head (safe when several processes start at once)."""

    def _upgrade(sync_conn: Any) -> None:
        cfg = alembic_config(spec)
        cfg.attributes["connection"] = sync_conn
        command.upgrade(cfg, "head")

    async with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            await conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": f"migrate:{spec.name}"})
        await conn.run_sync(_upgrade)


class ServiceRuntime:
    def __init__(self, spec: ServiceSpec, settings: Settings, bus: Bus, database_url: str | None = None):
        self.spec = spec
        self.settings = settings
        self.bus = bus
        self.database_url = database_url or settings.database_url(spec.name)
        self.engine: AsyncEngine | None = None
        self.sessions: async_sessionmaker[AsyncSession] = None  # type: ignore[assignment]  # set by start(), before any use
        self.outbox = Outbox(spec.tables.outbox)
        self.inbox = Inbox(spec.tables.inbox)
        self.tenancy: Tenancy = None  # type: ignore[assignment]  # set by start(), before any use
        self.relay: OutboxRelay | None = None
        self.consumer: EventConsumer | None = None
        self.merchants: MerchantFollower | None = None
        self._tasks: list[asyncio.Task[None]] = []
        # The ASGI app serving every service of this process when they run in one (embedded
        # mode): how a service calls another's API in memory when no URL is configured.
        self.local_api: Any = None

    @property
    def name(self) -> str:
        return self.spec.name

    async def start(self, *, run_migrations: bool = True, relay: bool = True, consumer: bool = True) -> None:
        self.engine = create_engine(self.database_url, app_name=f"fugou-{self.name}")
        self.sessions = session_factory(self.engine)
        self.tenancy = Tenancy(
            self.spec.tables.merchants,
            self.spec.tables.merchant_keys,
            self.sessions,
            self.settings.api_key_pepper.get_secret_value(),
        )
        if run_migrations:
            await migrate(self.engine, self.spec)
        self.relay = OutboxRelay(
            self.name,
            self.spec.tables.outbox,
            self.sessions,
            self.bus,
            batch=self.settings.relay_batch,
            idle_ms=self.settings.relay_idle_ms,
        )
        if relay:
            self._spawn(self.relay.run(), "relay")
        if consumer and self.spec.follows_merchants:
            self.merchants = MerchantFollower(
                service=self.name,
                subscriber=self.bus.subscriber(f"{self.spec.group_id}-merchants", [MERCHANTS_TOPIC]),
                sessions=self.sessions,
                tenancy=self.tenancy,
                poll_ms=self.settings.consumer_poll_ms,
            )
            self._spawn(self.merchants.run(), "merchants")
        if consumer and self.spec.handler is not None and self.spec.topics and self.merchants is not None:
            self.consumer = EventConsumer(
                service=self.name,
                group_id=self.spec.group_id,
                subscriber=self.bus.subscriber(self.spec.group_id, list(self.spec.topics)),
                bus=self.bus,
                sessions=self.sessions,
                inbox=self.inbox,
                tenancy=self.tenancy,
                handler=self.spec.handler,
                merchants=self.merchants,
                batch=self.settings.consumer_batch,
                poll_ms=self.settings.consumer_poll_ms,
                on_applied=self.relay.wake,
            )
            self._spawn(self.consumer.run(), "consumer")
        if consumer:
            for i, task in enumerate(self.spec.background):
                self._spawn(task(self), f"background-{i}")

    def _spawn(self, coro: Any, role: str) -> None:
        task = asyncio.create_task(coro, name=f"{self.name}-{role}")
        task.add_done_callback(lambda t: _report_crash(t, self.name, role))
        self._tasks.append(task)

    async def stop(self) -> None:
        # Cancel until each task has ended: a cancellation that lands inside a database call may
        # come out of the driver as an ordinary error, which a worker's retry loop would take for
        # an outage and sleep on; cancelling again interrupts that sleep.
        pending = set(self._tasks)
        while pending:
            for t in pending:
                t.cancel()
            _, pending = await asyncio.wait(pending, timeout=1.0)
        self._tasks.clear()
        if self.engine is not None:
            await self.engine.dispose()
            self.engine = None

    async def stage(self, session: AsyncSession, events: Sequence[EnvelopeBase | OutboundEvent]) -> None:
        """Record outbound events in the caller's transaction; the relay publishes them."""
        await self.outbox.stage(session, events)

    def committed(self) -> None:
        """Call after a commit that staged events, to publish them without waiting."""
        if self.relay is not None:
            self.relay.wake()

    async def check(self) -> dict[str, str]:
        """Readiness of this service's own parts."""
        out: dict[str, str] = {}
        try:
            async with self.sessions() as session:
                await asyncio.wait_for(session.execute(text("SELECT 1")), 3)
            out["database"] = "ok"
        except Exception as exc:
            out["database"] = f"error: {type(exc).__name__}"
        for role in ("relay", "merchants", "consumer"):
            task = next((t for t in self._tasks if t.get_name() == f"{self.name}-{role}"), None)
            if task is not None:
                out[role] = "ok" if not task.done() else "stopped"
        return out


def _report_crash(task: asyncio.Task[None], service: str, role: str) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log.error("runtime.task_crashed", service=service, role=role, error=repr(exc))
