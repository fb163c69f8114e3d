"""Stopping while a connection waits for SQLite's write lock ends: no close that waits forever.

SQLAlchemy terminates a cancelled connection with a graceful close and, when that is cancelled
too, aiosqlite's ``stop()``; the graceful close then calls ``stop()`` again. With aiosqlite's own
connection that second stop is a step no thread will ever run (the first one ended it), so the
close waits forever and the event loop never finishes closing: the suite's 300 s teardown hang."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import aiosqlite
import pytest
from sqlalchemy import text

from shared.db import SqliteConnection, create_engine, session_factory


@pytest.fixture
def locked(tmp_path: Path) -> Iterator[str]:
    """A database whose write lock another connection holds for the whole test."""
    path = str(tmp_path / "locked.sqlite")
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (x INTEGER)")
    holder.execute("BEGIN IMMEDIATE")
    yield path
    holder.rollback()
    holder.close()


async def stop_then_close(connection: aiosqlite.Connection) -> None:
    # The lock's busy timeout is 1 s: a close that ends does so within it; one that waits past 3 s
    # waits for a step no thread will run.
    """What SQLAlchemy's terminate does to a connection whose worker waits on the lock."""
    await connection
    waiting = asyncio.ensure_future(connection.execute("BEGIN IMMEDIATE"))
    await asyncio.sleep(0.2)  # the worker thread is in SQLite's busy handler now
    connection.stop()
    try:
        with contextlib.suppress(ValueError):  # "Connection closed": SQLAlchemy expects and ignores it
            await asyncio.wait_for(connection.close(), 3)
    finally:
        with contextlib.suppress(Exception):
            await waiting  # "database is locked" once the busy timeout ends


async def test_a_connection_stopped_while_waiting_for_the_lock_closes(locked: str) -> None:
    await stop_then_close(SqliteConnection(lambda: sqlite3.connect(locked, timeout=1), 64))


async def test_aiosqlites_own_connection_still_hangs_there(locked: str) -> None:
    """The reason for SqliteConnection: when this fails, aiosqlite has fixed it and the subclass can go."""
    with pytest.raises(TimeoutError):
        await stop_then_close(aiosqlite.Connection(lambda: sqlite3.connect(locked, timeout=1), 64))


async def test_workers_cancelled_while_one_holds_the_lock_stop_and_leave_no_task_behind(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'app.sqlite'}")
    sessions = session_factory(engine)
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE t (x INTEGER)"))

    async def writer(x: int) -> None:
        while True:
            async with sessions() as session:
                await session.execute(text("INSERT INTO t VALUES (:x)"), {"x": x})
                await asyncio.sleep(0.05)  # holds the lock while the others wait in BEGIN IMMEDIATE
                await session.commit()

    before = asyncio.all_tasks()
    workers = [asyncio.create_task(writer(x)) for x in range(4)]
    await asyncio.sleep(0.3)
    pending = set(workers)
    while pending:  # as ServiceRuntime.stop: cancel until each has ended
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=1.0)
    await asyncio.wait_for(engine.dispose(), 10)
    await asyncio.sleep(0.2)
    left = [t for t in asyncio.all_tasks() - before if not t.done()]
    assert not left, [t.get_coro() for t in left]
