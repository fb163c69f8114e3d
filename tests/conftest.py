"""Fixtures. Unit tests need nothing; tests that ask for `kafka` or `postgres` get the real thing,
started once per session on free loopback ports and stopped at the end."""

from __future__ import annotations

import asyncio
import atexit
import faulthandler
import functools
import os
import shutil
import sys
import tempfile
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from shared import clock
from shared.settings import SERVICES, Settings
from tests.infra import ROOT, Kafka, Postgres, running_kafka, running_postgres

os.environ.setdefault("FUGOU_LOG_LEVEL", "WARNING")
ADMIN_TOKEN = "test-admin-token"


# After the last report, the interpreter still joins its non-daemon threads (executors' workers)
# on the way out. One that never returns would hang `make test` with every result already printed
# (seen once, not reproduced): then the threads' stacks are printed, to find it, and the process
# exits with the session's own status.
EXIT_GRACE_S = 120
_exit_status = 0


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    global _exit_status
    _exit_status = int(exitstatus)


def pytest_unconfigure(config: pytest.Config) -> None:
    def stuck() -> None:
        print(
            f"\npytest: the process has not exited {EXIT_GRACE_S} s after the session ended; "
            "the threads still running:",
            file=sys.stderr,
            flush=True,
        )
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        os._exit(_exit_status)

    timer = threading.Timer(EXIT_GRACE_S, stuck)
    timer.daemon = True
    timer.start()


def pytest_configure(config: pytest.Config) -> None:
    """The suite's clock: the wall clock moved by FUGOU_CLOCK_OFFSET (``FUGOU_CLOCK_OFFSET=P365D make
    test`` runs it a year ahead), installed before test modules are imported so that the times they
    build at import are read from it too. Service processes the tests start inherit the variable."""
    clock.install(clock.SystemClock(Settings(env="test").clock_offset))


@pytest.fixture
def frozen_clock() -> Iterator[clock.ManualClock]:
    """A clock that stands still at the suite's now until the test moves it (``advance``, ``set``)."""
    with clock.installed(clock.ManualClock(clock.now())) as manual:
        yield manual


@pytest.fixture(scope="session")
def kafka() -> Iterator[Kafka]:
    with running_kafka() as broker:
        yield broker


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    with running_postgres() as cluster:
        yield cluster


async def create_databases(pg: Postgres, names: list[str]) -> None:
    conn = await asyncpg.connect(pg.dsn())
    try:
        for name in names:
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


def fresh_databases(pg: Postgres) -> dict[str, str]:
    """A fresh database per service. Sync (its own loop in a thread), so sync fixtures can use it."""
    tag = uuid.uuid4().hex[:10]
    names = {svc: f"t_{tag}_{svc}" for svc in SERVICES}
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, create_databases(pg, list(names.values()))).result()
    return {svc: pg.url(db) for svc, db in names.items()}


@pytest.fixture
def pg_urls(postgres: Postgres) -> dict[str, str]:
    return fresh_databases(postgres)


def embedded_settings(tmp_path: Path, **overrides: object) -> Settings:
    """Settings of the embedded system for a test, its SQLite files (those of services without a
    database URL of their own) already migrated to the latest schema."""
    settings = Settings(
        env="test",
        data_dir=tmp_path / "data",
        admin_token=ADMIN_TOKEN,  # type: ignore[arg-type]
        consumer_poll_ms=50,
        relay_idle_ms=20,
        **overrides,
    )
    if not settings.data_dir.exists():
        settings.data_dir.mkdir(parents=True)
        for name in SERVICES:
            if not getattr(settings, f"{name}_database_url"):
                shutil.copyfile(_migrated_sqlite() / f"{name}.sqlite", settings.data_dir / f"{name}.sqlite")
    return settings


@functools.cache
def _migrated_sqlite() -> Path:
    """Each service's SQLite database at the latest migration, made once per session. Starting a
    service runs its migrations (a no-op at head), so a copy of these is what a fresh one would
    build, in a fraction of the time; tests/integration/test_migrations.py checks the migrations."""
    from services.registry import SPECS
    from shared.db import create_engine
    from shared.runtime import migrate

    folder = Path(tempfile.mkdtemp(prefix="fugou-migrated-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)

    async def build() -> None:
        for name, spec in SPECS.items():
            engine = create_engine(f"sqlite+aiosqlite:///{folder / f'{name}.sqlite'}")
            try:
                await migrate(engine, spec)
            finally:
                await engine.dispose()

    with ThreadPoolExecutor(1) as pool:  # its own loop, whatever loop the caller runs in
        pool.submit(asyncio.run, build()).result()
    return folder


def kafka_pg_settings(tmp_path: Path, kafka: Kafka, pg_urls: dict[str, str], **overrides: object) -> Settings:
    dbs = {f"{svc}_database_url": url for svc, url in pg_urls.items()}
    return embedded_settings(
        tmp_path,
        bus="kafka",
        kafka_bootstrap=kafka.bootstrap,
        kafka_prefix=f"t{uuid.uuid4().hex[:8]}.",
        **dbs,
        **overrides,
    )


@dataclass(frozen=True)
class Backend:
    """Where a test's services keep their data: SQLite files under the test's folder (the embedded
    default) or fresh databases, one per service, on the suite's real PostgreSQL cluster."""

    name: str
    pg_urls: dict[str, str] | None = None

    def database_url(self, service: str) -> str | None:
        """The service's database URL, or None for the SQLite default (Settings picks it)."""
        return None if self.pg_urls is None else self.pg_urls[service]

    def settings(self, tmp_path: Path, **overrides: object) -> Settings:
        dbs = {f"{svc}_database_url": url for svc, url in (self.pg_urls or {}).items()}
        return embedded_settings(tmp_path, **dbs, **overrides)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=[pytest.mark.postgres])])
def backend(request: pytest.FixtureRequest) -> Backend:
    """Runs the test once on SQLite and once on PostgreSQL (the same test, two stores)."""
    if request.param == "sqlite":
        return Backend("sqlite")
    return Backend("postgres", request.getfixturevalue("pg_urls"))


@pytest.fixture(
    params=["inprocess-sqlite", pytest.param("kafka-postgres", marks=[pytest.mark.kafka, pytest.mark.postgres])]
)
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[..., Settings]:
    """Settings of the embedded system once as ``make run`` runs it (in-process bus, SQLite) and once
    on the real parts (Kafka, PostgreSQL): ``stack(**overrides)``."""
    if request.param == "inprocess-sqlite":
        return lambda **overrides: embedded_settings(tmp_path, **overrides)
    kafka, urls = request.getfixturevalue("kafka"), request.getfixturevalue("pg_urls")
    return lambda **overrides: kafka_pg_settings(tmp_path, kafka, urls, **overrides)


_INFRASTRUCTURE = {"kafka": "kafka", "postgres": "postgres", "pg_urls": "postgres"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Marks each test by the real parts it asks for (so ``-m "not kafka"`` leaves them out), and
    holds the tiers apart: a test under tests/unit that needs Kafka, PostgreSQL or a browser is an
    error of the suite, not a slow unit test."""
    unit = ROOT / "tests" / "unit"
    misplaced = []
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        for fixture, marker in _INFRASTRUCTURE.items():
            if fixture in names:
                item.add_marker(getattr(pytest.mark, marker))
        if item.path.is_relative_to(unit) and any(item.get_closest_marker(m) for m in ("kafka", "postgres", "browser")):
            misplaced.append(item.nodeid)
    if misplaced:
        raise pytest.UsageError(
            "tests/unit needs no Kafka, PostgreSQL or browser; move these to tests/integration, tests/e2e or "
            "tests/browser:\n  " + "\n  ".join(misplaced)
        )


@asynccontextmanager
async def running(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """Run an app's lifespan and give an HTTP client to it (no socket)."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://fugou.test", timeout=30) as client:
            yield client
