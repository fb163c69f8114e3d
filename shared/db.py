"""Async SQLAlchemy from a URL (``sqlite+aiosqlite`` or ``postgresql+asyncpg``), the column
types every service uses, and the few statements whose SQL differs between the two."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import ARRAY, BigInteger, Boolean, DateTime, Integer, MetaData, any_, bindparam, event
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import ColumnElement
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
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
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def create_engine(url: str, *, pool_size: int = 10, app_name: str = "fugou") -> AsyncEngine:
    """Build an engine; call it in a lifespan, never at import time."""
    if is_sqlite(url):
        database = make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, connect_args={"timeout": 30})
        _sqlite_pragmas(engine)
        return engine
    return create_async_engine(
        url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True,
        # Batches bind their ids as one array: plan each execution with the actual values
        # (a generic plan cannot see how few rows an id array selects).
        connect_args={"server_settings": {"application_name": app_name, "plan_cache_mode": "force_custom_plan"}},
    )


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
    return session.bind.dialect.name  # type: ignore[union-attr]


# ---------------------------------------------------------------- bulk statements
#
# SQLAlchemy compiles a multi-row VALUES anew for every batch (hundreds of thousands of bind
# parameters), which costs far more than running it. Hot paths use these instead: on PostgreSQL
# one INSERT … SELECT FROM unnest(arrays) with a constant number of parameters (one per column),
# on SQLite one multi-row VALUES with positional parameters; both through the session's own
# connection, so they are part of its transaction.

_PG_ARRAY_TYPES = {"String": "text", "BigInteger": "bigint", "Integer": "integer", "UTCDateTime": "timestamptz",
                   "LargeBinary": "bytea", "Boolean": "boolean"}
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
        v = value.astimezone(timezone.utc)
        return (f"{v.year:04d}-{v.month:02d}-{v.day:02d} {v.hour:02d}:{v.minute:02d}:{v.second:02d}"
                f".{v.microsecond:06d}")
    return value


def _sqlite_result(value: Any, type_name: str) -> Any:
    if type_name == "UTCDateTime" and isinstance(value, str):
        return datetime.fromisoformat(value).replace(tzinfo=timezone.utc)
    if type_name == "Boolean" and value is not None:
        return bool(value)
    return value


async def bulk_insert(session: AsyncSession, table: Any, columns: list[str], rows: list[tuple[Any, ...]], *,
                      conflict: list[str] | None = None, update: dict[str, str] | None = None,
                      returning: list[str] | None = None) -> list[tuple[Any, ...]]:
    """INSERT many rows in one statement (chunked on SQLite).

    ``conflict`` names the unique columns for ON CONFLICT; with no ``update`` the row is skipped
    (DO NOTHING), else ``update`` maps a column to an SQL expression where ``{t}`` is the table,
    ``excluded`` the proposed row, and ``{least}``/``{greatest}`` the dialect's two-argument
    min/max. ``returning`` lists columns to return (for the rows inserted or updated)."""
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
            fn = {"least": "least", "greatest": "greatest"} if dialect == "postgresql" else {"least": "min",
                                                                                               "greatest": "max"}
            sets = ", ".join(f"{q(c)} = {expr.format(t=name, **fn)}" for c, expr in update.items())
            tail = f" ON CONFLICT ({target}) DO UPDATE SET {sets}"
        else:
            tail = f" ON CONFLICT ({target}) DO NOTHING"
    if returning:
        tail += " RETURNING " + ", ".join(q(c) for c in returning)
    raw = (await conn.get_raw_connection()).driver_connection
    if dialect == "postgresql":
        if not raw.is_in_transaction():  # type: ignore[union-attr]
            # SQLAlchemy's asyncpg adapter opens the transaction lazily, at its first statement.
            await conn.exec_driver_sql("SELECT 1")
        types = [_PG_ARRAY_TYPES[_type_name(table.c[c])] for c in columns]
        args = ", ".join(f"${i + 1}::{t}[]" for i, t in enumerate(types))
        sql = f"INSERT INTO {name} ({cols}) SELECT * FROM unnest({args}){tail}"
        arrays = [list(col) for col in zip(*rows)]
        if returning:
            return [tuple(r) for r in await raw.fetch(sql, *arrays)]  # type: ignore[union-attr]
        await raw.execute(sql, *arrays)  # type: ignore[union-attr]
        return []
    out: list[tuple[Any, ...]] = []
    per_row = len(columns)
    chunk = max(1, _SQLITE_CHUNK_PARAMS // per_row)
    one = "(" + ", ".join("?" * per_row) + ")"
    result_types = [_type_name(table.c[c]) for c in returning or []]
    for i in range(0, len(rows), chunk):
        part = rows[i:i + chunk]
        sql = f"INSERT INTO {name} ({cols}) VALUES {', '.join([one] * len(part))}{tail}"
        params = [_sqlite_value(v) for row in part for v in row]
        cursor = await raw.execute(sql, params)  # type: ignore[union-attr]
        if returning:
            out.extend(tuple(_sqlite_result(v, t) for v, t in zip(r, result_types))
                       for r in await cursor.fetchall())
        await cursor.close()
    return out


class in_values(ColumnElement[bool]):  # noqa: N801 - reads as the SQL it stands for
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
    return compiler.process(element.column.in_(element.values), **kw)  # type: ignore[no-any-return]


@compiles(in_values, "postgresql")
def _in_values_postgresql(element: in_values, compiler: Any, **kw: Any) -> str:
    array = bindparam(None, element.values, type_=ARRAY(element.column.type))
    return compiler.process(element.column == any_(array), **kw)  # type: ignore[no-any-return]
