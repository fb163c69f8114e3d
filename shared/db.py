"""Async SQLAlchemy from a URL (``sqlite+aiosqlite`` or ``postgresql+asyncpg``), the column
types every service uses, and the few statements whose SQL differs between the two."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from time import monotonic as time_monotonic
from typing import Any
from zoneinfo import ZoneInfo

import aiosqlite
from sqlalchemy import ARRAY, BigInteger, Boolean, DateTime, Integer, MetaData, any_, bindparam, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import ColumnElement, FunctionElement
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL wants BIGINT for large tables.
BigId = BigInteger().with_variant(Integer(), "sqlite")


def new_metadata() -> MetaData:
    return MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware datetimes, stored as UTC on both databases.

    SQLite has no time zone type; without this, offsets would be silently dropped."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime refused: times must carry their offset")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


class SqliteConnection(aiosqlite.Connection):
    """aiosqlite's connection, whose ``stop()`` may be called more than once.

    aiosqlite's ``stop()`` queues "close, then end the worker thread" each time it is called, and
    ``close()`` ends by calling it and awaiting that step. After a first ``stop()`` has ended the
    thread, a second step is never run, and whoever awaits it waits forever. SQLAlchemy does exactly
    this when a task is cancelled while its connection waits for SQLite's write lock (``BEGIN
    IMMEDIATE``, up to the busy timeout): its terminate starts a shielded graceful ``close()``, and
    on the cancellation calls ``stop()``; the graceful close then ends on a second ``stop()``. An
    app stopped while a worker waited on the lock left such a task behind, and the event loop never
    finished closing (the test session's 300 s teardown hang). Here every ``stop()`` after the
    first answers with the first one's step, which the thread does run."""

    _stopped: bool = False
    _stopping: asyncio.Future[Any] | None = None

    def stop(self) -> asyncio.Future[Any] | None:
        if not self._stopped:
            self._stopped = True
            self._stopping = super().stop()
        return self._stopping


def _sqlite_connector(database: str) -> Any:
    """SQLAlchemy's ``async_creator`` for SQLite: ``aiosqlite.connect`` with ``SqliteConnection``, the
    arguments SQLAlchemy's dialect would pass, and its worker thread a daemon as the dialect makes it."""

    def connect() -> SqliteConnection:
        connection = SqliteConnection(
            lambda: sqlite3.connect(database, check_same_thread=False, timeout=30), iter_chunk_size=64
        )
        connection._thread.daemon = True
        return connection

    return connect


def create_engine(url: str, *, pool_size: int = 10, app_name: str = "fugou") -> AsyncEngine:
    """Build an engine; call it in a lifespan, never at import time."""
    if is_sqlite(url):
        database = make_url(url).database or ":memory:"
        if database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, async_creator=_sqlite_connector(database))
        _sqlite_pragmas(engine)
        return engine
    engine = create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        # Batches bind their ids as one array: plan each execution with the actual values
        # (a generic plan cannot see how few rows an id array selects).
        connect_args={"server_settings": {"application_name": app_name, "plan_cache_mode": "force_custom_plan"}},
    )
    _ping_when_idle(engine)
    return engine


IDLE_PING_S = 2.0


def _ping_when_idle(engine: AsyncEngine) -> None:
    """Ping a pooled connection before use only when it sat idle for a while (a server restart
    or a dropped link since then is caught, and the pool opens a fresh one). A connection
    reused at once, as under load, goes without: ``pool_pre_ping`` would cost three round trips
    (BEGIN, the ping, ROLLBACK) on every checkout, about half of a one-row read."""
    pool_events = engine.sync_engine.pool

    @event.listens_for(pool_events, "checkin")
    def _checkin(_dbapi_conn: Any, record: Any) -> None:
        record.info["idle_since"] = time_monotonic()

    @event.listens_for(pool_events, "checkout")
    def _checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        since = record.info.pop("idle_since", None)
        if since is not None and time_monotonic() - since > IDLE_PING_S:
            try:
                dbapi_conn.ping()
            except Exception as exc:  # dead: the pool discards it and connects again
                raise DisconnectionError() from exc


def _sqlite_pragmas(engine: AsyncEngine) -> None:
    sync_engine = engine.sync_engine

    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take over transaction control from the driver so that every transaction starts with
        # BEGIN IMMEDIATE: a write lock is taken up front, so concurrent writers queue on the
        # busy timeout instead of failing with "database is locked" on lock upgrade.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()
        dbapi_conn.create_function(DAY_START_PLUS, 3, _day_start_plus_sqlite, deterministic=True)
        dbapi_conn.create_function("fugou_uuid4", 0, lambda: str(uuid.uuid4()))

    @event.listens_for(sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


def insert_for(session_or_dialect: Any, table: Any) -> Any:
    """A dialect-specific INSERT, which has ``on_conflict_do_nothing/do_update``."""
    name = session_or_dialect if isinstance(session_or_dialect, str) else session_or_dialect.bind.dialect.name
    return (postgresql.insert if name == "postgresql" else sqlite.insert)(table)


def dialect_name(session: AsyncSession) -> str:
    return session.get_bind().dialect.name


async def _driver_connection(conn: AsyncConnection) -> Any:
    """The driver's own connection (asyncpg's, or aiosqlite's) under ``conn``, to run SQL on it
    directly; Any: which driver depends on the URL."""
    driver = (await conn.get_raw_connection()).driver_connection
    if driver is None:  # only once the pooled connection was invalidated or closed
        raise RuntimeError("the database connection was invalidated or closed")
    return driver


# ---------------------------------------------------------------- hot reads

_DRIVER_SQL: dict[tuple[str, Any], tuple[str, tuple[str, ...], dict[str, Any]]] = {}


async def fetch_rows(
    conn: AsyncConnection | AsyncSession, stmt: Any, params: dict[str, Any], *, key: Any
) -> Sequence[Sequence[Any]]:
    """The rows of a read a hot endpoint repeats (GET one customer's segment, wallet, points).

    On PostgreSQL, through a connection, the statement is compiled once per ``key`` and run on
    asyncpg itself (prepared once per connection): for a one-row read SQLAlchemy's execution and
    result layers cost more than the query (measured about 140 µs against 90 µs). Elsewhere it
    runs through SQLAlchemy. Rows are sequences either way; parameters the statement carries as
    constants need not be given."""
    if isinstance(conn, AsyncConnection) and conn.dialect.name == "postgresql":
        found = _DRIVER_SQL.get((conn.dialect.name, key))
        if found is None:
            compiled = stmt.compile(dialect=conn.dialect, compile_kwargs={"render_postcompile": True})
            found = _DRIVER_SQL[(conn.dialect.name, key)] = (
                str(compiled),
                tuple(compiled.positiontup or ()),
                dict(compiled.params),
            )
        sql, names, constants = found
        driver = await _driver_connection(conn)
        return await driver.fetch(sql, *[params[n] if n in params else constants[n] for n in names])
    return (await conn.execute(stmt, params)).all()


# ---------------------------------------------------------------- bulk statements
#
# SQLAlchemy compiles a multi-row VALUES anew for every batch (hundreds of thousands of bind
# parameters), which costs far more than running it. Hot paths use these instead: on PostgreSQL
# one INSERT … SELECT FROM unnest(arrays) with a constant number of parameters (one per column),
# on SQLite one multi-row VALUES with positional parameters; both through the session's own
# connection, so they are part of its transaction.

_PG_ARRAY_TYPES = {
    "String": "text",
    "BigInteger": "bigint",
    "Integer": "integer",
    "UTCDateTime": "timestamptz",
    "LargeBinary": "bytea",
    "Boolean": "boolean",
}
_SQLITE_CHUNK_PARAMS = 30_000


def _type_name(column: Any) -> str:
    t = column.type
    if isinstance(t, UTCDateTime):
        return "UTCDateTime"
    for name in ("BigInteger", "Integer", "String", "LargeBinary", "Boolean"):
        if type(t).__name__ == name or any(c.__name__ == name for c in type(t).__mro__[:2]):
            return name
    if hasattr(t, "impl") or type(t).__name__ == "Variant":
        return "BigInteger"
    raise TypeError(f"no bulk mapping for {column.name}: {t!r}")


def _sqlite_value(value: Any) -> Any:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("naive datetime refused: times must carry their offset")
        v = value.astimezone(UTC)
        return f"{v.year:04d}-{v.month:02d}-{v.day:02d} {v.hour:02d}:{v.minute:02d}:{v.second:02d}.{v.microsecond:06d}"
    return value


def _sqlite_result(value: Any, type_name: str) -> Any:
    if type_name == "UTCDateTime" and isinstance(value, str):
        return datetime.fromisoformat(value).replace(tzinfo=UTC)
    if type_name == "Boolean" and value is not None:
        return bool(value)
    return value


async def bulk_insert(
    session: AsyncSession,
    table: Any,
    columns: list[str],
    rows: list[tuple[Any, ...]],
    *,
    conflict: list[str] | None = None,
    update: dict[str, str] | None = None,
    update_where: str | None = None,
    returning: list[str] | None = None,
) -> list[tuple[Any, ...]]:
    """INSERT many rows in one statement (chunked on SQLite).

    ``conflict`` names the unique columns for ON CONFLICT; with no ``update`` the row is skipped
    (DO NOTHING), else ``update`` maps a column to an SQL expression where ``{t}`` is the table,
    ``excluded`` the proposed row, and ``{least}``/``{greatest}`` the dialect's two-argument
    min/max; ``update_where`` (same placeholders) updates only the conflicting rows it holds for
    (the others are neither updated nor returned). ``returning`` lists columns to return (for the
    rows inserted or updated)."""
    if not rows:
        return []
    conn = await session.connection()
    dialect = conn.dialect.name
    name = table.name
    q = conn.dialect.identifier_preparer.quote  # columns named like keywords ("full")
    cols = ", ".join(q(c) for c in columns)
    tail = ""
    if conflict is not None:
        target = ", ".join(q(c) for c in conflict)
        if update:
            fn = (
                {"least": "least", "greatest": "greatest"}
                if dialect == "postgresql"
                else {"least": "min", "greatest": "max"}
            )
            sets = ", ".join(f"{q(c)} = {expr.format(t=name, **fn)}" for c, expr in update.items())
            tail = f" ON CONFLICT ({target}) DO UPDATE SET {sets}"
            if update_where:
                tail += f" WHERE {update_where.format(t=name, **fn)}"
        else:
            tail = f" ON CONFLICT ({target}) DO NOTHING"
    if returning:
        tail += " RETURNING " + ", ".join(q(c) for c in returning)
    raw = await _driver_connection(conn)
    if dialect == "postgresql":
        if not raw.is_in_transaction():
            # SQLAlchemy's asyncpg adapter opens the transaction lazily, at its first statement.
            await conn.exec_driver_sql("SELECT 1")
        types = [_PG_ARRAY_TYPES[_type_name(table.c[c])] for c in columns]
        args = ", ".join(f"${i + 1}::{t}[]" for i, t in enumerate(types))
        sql = f"INSERT INTO {name} ({cols}) SELECT * FROM unnest({args}){tail}"
        arrays = [list(col) for col in zip(*rows, strict=True)]  # every row holds one value per column
        if returning:
            return [tuple(r) for r in await raw.fetch(sql, *arrays)]
        await raw.execute(sql, *arrays)
        return []
    out: list[tuple[Any, ...]] = []
    per_row = len(columns)
    chunk = max(1, _SQLITE_CHUNK_PARAMS // per_row)
    one = "(" + ", ".join("?" * per_row) + ")"
    result_types = [_type_name(table.c[c]) for c in returning or []]
    for i in range(0, len(rows), chunk):
        part = rows[i : i + chunk]
        sql = f"INSERT INTO {name} ({cols}) VALUES {', '.join([one] * len(part))}{tail}"
        params = [_sqlite_value(v) for row in part for v in row]
        cursor = await raw.execute(sql, params)
        if returning:
            out.extend(
                tuple(_sqlite_result(v, t) for v, t in zip(r, result_types, strict=True))
                for r in await cursor.fetchall()
            )
        await cursor.close()
    return out


async def bulk_update(
    session: AsyncSession, table: Any, key: list[str], columns: list[str], rows: list[tuple[Any, ...]]
) -> None:
    """UPDATE many rows, each to its own values, in one statement on PostgreSQL (``UPDATE … FROM
    unnest(…)``) and one executemany on SQLite. Each row is the ``key`` values, then the
    ``columns`` values."""
    if not rows:
        return
    conn = await session.connection()
    q = conn.dialect.identifier_preparer.quote
    name = table.name
    raw = await _driver_connection(conn)
    names = [*key, *columns]
    if conn.dialect.name == "postgresql":
        if not raw.is_in_transaction():
            await conn.exec_driver_sql("SELECT 1")
        types = [_PG_ARRAY_TYPES[_type_name(table.c[c])] for c in names]
        args = ", ".join(f"${i + 1}::{t}[]" for i, t in enumerate(types))
        sets = ", ".join(f"{q(c)} = v.{q(c)}" for c in columns)
        match = " AND ".join(f"{name}.{q(k)} = v.{q(k)}" for k in key)
        sql = f"UPDATE {name} SET {sets} FROM unnest({args}) AS v({', '.join(q(c) for c in names)}) WHERE {match}"
        await raw.execute(sql, *[list(col) for col in zip(*rows, strict=True)])
        return
    sets = ", ".join(f"{q(c)} = ?" for c in columns)
    match = " AND ".join(f"{q(k)} = ?" for k in key)
    nk = len(key)
    await raw.executemany(
        f"UPDATE {name} SET {sets} WHERE {match}",
        [[_sqlite_value(v) for v in (*r[nk:], *r[:nk])] for r in rows],
    )


class in_values(ColumnElement[bool]):
    """``column IN (values)``: on PostgreSQL ``column = ANY($1)`` with the values as one array
    parameter, so a batch of thousands of ids is not rendered value by value at every statement;
    elsewhere an ordinary expanding IN."""

    inherit_cache = False  # the values are data, not part of the statement's shape
    type = Boolean()

    def __init__(self, column: Any, values: Any):
        self.column = column
        self.values = list(values)


@compiles(in_values)
def _in_values_default(element: in_values, compiler: Any, **kw: Any) -> str:
    return compiler.process(element.column.in_(element.values), **kw)


@compiles(in_values, "postgresql")
def _in_values_postgresql(element: in_values, compiler: Any, **kw: Any) -> str:
    array = bindparam(None, element.values, type_=ARRAY(element.column.type))
    return compiler.process(element.column == any_(array), **kw)


# ---------------------------------------------------------------- calendar days in SQL
#
# Set-based statements need "the start of the local day of ts, plus N days" in a merchant's zone
# (exact across DST changes). PostgreSQL has it in SQL (the function below, created by the
# migrations of the services that use it); SQLite gets the same function from Python at connect.

DAY_START_PLUS = "fugou_day_start_plus"
PG_DAY_START_PLUS = f"""
CREATE OR REPLACE FUNCTION {DAY_START_PLUS}(ts timestamptz, tz text, days integer)
RETURNS timestamptz LANGUAGE sql STABLE PARALLEL SAFE AS
$$ SELECT (date_trunc('day', ts AT TIME ZONE tz) + make_interval(days => days)) AT TIME ZONE tz $$
"""


def _day_start_plus_sqlite(ts: str | None, tz: str, days: int) -> str | None:
    if ts is None:
        return None
    zone = ZoneInfo(tz)
    local = datetime.fromisoformat(ts).replace(tzinfo=UTC).astimezone(zone)
    return _sqlite_value(datetime.combine(local.date() + timedelta(days=days), time.min, tzinfo=zone))


def day_start_plus(ts: Any, tz: str, days: int) -> Any:
    """SQL: the instant the local day (in ``tz``) of ``ts`` starts, plus ``days`` days."""
    from sqlalchemy import func

    return getattr(func, DAY_START_PLUS)(ts, tz, days, type_=UTCDateTime())


class earliest(FunctionElement[datetime]):
    """The earliest of several nullable instants (NULL only when all are NULL)."""

    inherit_cache = True
    type = UTCDateTime()
    name = "earliest"


_SQLITE_END_OF_TIME = "9999-12-31 23:59:59.999999"


@compiles(earliest)
def _earliest_sqlite(element: earliest, compiler: Any, **kw: Any) -> str:
    if len(element.clauses) == 1:  # min() of one argument is SQLite's aggregate
        return compiler.process(element.clauses, **kw)
    args = ", ".join(f"coalesce({compiler.process(a, **kw)}, '{_SQLITE_END_OF_TIME}')" for a in element.clauses)
    return f"nullif(min({args}), '{_SQLITE_END_OF_TIME}')"


@compiles(earliest, "postgresql")
def _earliest_postgresql(element: earliest, compiler: Any, **kw: Any) -> str:
    return f"least({compiler.process(element.clauses, **kw)})"


# ---------------------------------------------------------------- JSON built by the database
#
# Statements that announce thousands of changes at once build their events in SQL (see
# shared.outbox.Outbox.stage_select) instead of fetching every row into Python.


class json_object(FunctionElement[Any]):
    """A JSON object from alternating keys and values (values may be nested json_object)."""

    inherit_cache = True
    name = "json_object"


@compiles(json_object)
def _json_object_sqlite(element: json_object, compiler: Any, **kw: Any) -> str:
    return f"json_object({compiler.process(element.clauses, **kw)})"


@compiles(json_object, "postgresql")
def _json_object_postgresql(element: json_object, compiler: Any, **kw: Any) -> str:
    return f"json_build_object({compiler.process(element.clauses, **kw)})"


class json_text(FunctionElement[Any]):
    """Text that holds JSON, embedded as JSON (not as a string) in a json_object."""

    inherit_cache = True
    name = "json_text"


@compiles(json_text)
def _json_text_sqlite(element: json_text, compiler: Any, **kw: Any) -> str:
    return f"json({compiler.process(element.clauses, **kw)})"


@compiles(json_text, "postgresql")
def _json_text_postgresql(element: json_text, compiler: Any, **kw: Any) -> str:
    return f"CAST({compiler.process(element.clauses, **kw)} AS json)"


class utf8_bytes(FunctionElement[bytes]):
    """Text (JSON included) as UTF-8 bytes, for LargeBinary columns."""

    inherit_cache = True
    name = "utf8_bytes"


@compiles(utf8_bytes)
def _utf8_bytes_sqlite(element: utf8_bytes, compiler: Any, **kw: Any) -> str:
    return f"CAST({compiler.process(element.clauses, **kw)} AS BLOB)"


@compiles(utf8_bytes, "postgresql")
def _utf8_bytes_postgresql(element: utf8_bytes, compiler: Any, **kw: Any) -> str:
    return f"convert_to(CAST({compiler.process(element.clauses, **kw)} AS text), 'UTF8')"


class new_uuid(FunctionElement[str]):
    """A random UUID (version 4) as text, one per row."""

    inherit_cache = True
    name = "new_uuid"


@compiles(new_uuid)
def _new_uuid_sqlite(element: new_uuid, compiler: Any, **kw: Any) -> str:
    return "fugou_uuid4()"


@compiles(new_uuid, "postgresql")
def _new_uuid_postgresql(element: new_uuid, compiler: Any, **kw: Any) -> str:
    return "CAST(gen_random_uuid() AS text)"
