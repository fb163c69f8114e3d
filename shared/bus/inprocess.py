"""The embedded bus: a durable log in one SQLite file, read by consumer groups.

It behaves as a one-partition-per-topic Kafka: publishing appends to the log and returns after
the commit, each group keeps its committed position per topic, and a group that restarts
reads again from its committed position. So undelivered events survive a restart, kill -9
included, and the services run the same consumer loop as on Kafka."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import aiosqlite
import orjson
import structlog

from shared.bus.base import Message, Record, committed_positions

log = structlog.get_logger("fugou.bus")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS bus_log (
    "offset" INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    key BLOB,
    value BLOB NOT NULL,
    headers BLOB
);
CREATE INDEX IF NOT EXISTS ix_bus_log_topic_offset ON bus_log (topic, "offset");
CREATE TABLE IF NOT EXISTS bus_offsets (
    group_id TEXT NOT NULL,
    topic TEXT NOT NULL,
    next_offset INTEGER NOT NULL,
    PRIMARY KEY (group_id, topic)
);
"""


class InProcessBus:
    def __init__(self, path: Path, prune_every_s: float = 30.0):
        self.path = Path(path)
        self._db: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()
        self._subscribers: list[InProcessSubscriber] = []
        self._prune_every = prune_every_s
        self._prune_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._db is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Processes started together on one data dir (`run --workers N`) race to create the file
        # and switch it to WAL, which SQLite may refuse at once with "database is locked" rather
        # than wait on the busy timeout: that start is tried again.
        for attempt in range(50):
            db = await aiosqlite.connect(self.path, isolation_level=None, timeout=30)
            try:
                await db.execute("PRAGMA journal_mode=WAL")
                await db.execute("PRAGMA synchronous=NORMAL")
                await db.executescript(_SCHEMA)
            except sqlite3.OperationalError as e:
                await db.close()
                if "locked" not in str(e) or attempt == 49:
                    raise
                await asyncio.sleep(0.05 + 0.05 * attempt)
                continue
            self._db = db
            break
        self._prune_task = asyncio.create_task(self._prune_loop(), name="bus-prune")

    async def stop(self) -> None:
        if self._prune_task:
            self._prune_task.cancel()
            await asyncio.gather(self._prune_task, return_exceptions=True)
        if self._db is not None:
            await self._db.close()
            self._db = None

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("in-process bus is not started")
        return self._db

    async def ensure_topics(self, topics: Sequence[str]) -> None:
        return None  # topics exist by use

    async def ping(self) -> None:
        async with self._lock:
            await (await self.db.execute("SELECT 1")).close()

    async def publish(self, messages: Sequence[Message]) -> None:
        if not messages:
            return
        rows = [
            (
                m.topic,
                m.key,
                m.value,
                orjson.dumps([[k, v.decode("latin-1")] for k, v in m.headers]) if m.headers else None,
            )
            for m in messages
        ]
        async with self._lock:
            await self.db.execute("BEGIN IMMEDIATE")
            try:
                await self.db.executemany("INSERT INTO bus_log (topic, key, value, headers) VALUES (?, ?, ?, ?)", rows)
                await self.db.execute("COMMIT")
            except BaseException:
                await self.db.execute("ROLLBACK")
                raise
        topics = {m.topic for m in messages}
        for sub in self._subscribers:
            if topics & sub.topics:
                sub.wake.set()

    def subscriber(self, group_id: str, topics: Sequence[str]) -> InProcessSubscriber:
        sub = InProcessSubscriber(self, group_id, topics)
        self._subscribers.append(sub)
        return sub

    async def _fetch(self, positions: dict[str, int], limit: int) -> list[Record]:
        where = " OR ".join('(topic = ? AND "offset" >= ?)' for _ in positions)
        params: list[object] = [x for t, p in positions.items() for x in (t, p)]
        async with self._lock:
            cur = await self.db.execute(
                f'SELECT "offset", topic, key, value, headers FROM bus_log WHERE {where} ORDER BY "offset" LIMIT ?',
                (*params, limit),
            )
            rows = await cur.fetchall()
            await cur.close()
        return [
            Record(
                topic=r[1],
                partition=0,
                offset=r[0],
                key=r[2],
                value=r[3],
                headers=tuple((k, v.encode("latin-1")) for k, v in orjson.loads(r[4])) if r[4] else (),
            )
            for r in rows
        ]

    async def _committed(self, group_id: str, topics: Sequence[str]) -> dict[str, int]:
        async with self._lock:
            cur = await self.db.execute(
                f"SELECT topic, next_offset FROM bus_offsets WHERE group_id = ? AND topic IN "
                f"({','.join('?' * len(topics))})",
                (group_id, *topics),
            )
            rows: dict[str, int] = {topic: offset for topic, offset in await cur.fetchall()}
            await cur.close()
        return {t: int(rows.get(t, 0)) for t in topics}

    async def _ends(self, topics: Sequence[str]) -> dict[str, int]:
        async with self._lock:
            cur = await self.db.execute(
                f'SELECT topic, max("offset") + 1 FROM bus_log WHERE topic IN ({",".join("?" * len(topics))}) '
                f"GROUP BY topic",
                tuple(topics),
            )
            rows: dict[str, int] = {topic: offset for topic, offset in await cur.fetchall()}
            await cur.close()
        return {t: int(rows.get(t, 0)) for t in topics}

    async def _commit(self, group_id: str, positions: dict[str, int]) -> None:
        async with self._lock:
            await self.db.executemany(
                "INSERT INTO bus_offsets (group_id, topic, next_offset) VALUES (?, ?, ?) "
                "ON CONFLICT (group_id, topic) DO UPDATE SET next_offset = max(next_offset, excluded.next_offset)",
                [(group_id, t, o) for t, o in positions.items()],
            )

    async def prune(self) -> int:
        """Drop log rows that every known group has committed past."""
        groups: dict[str, set[str]] = {}
        for sub in self._subscribers:
            for t in sub.topics:
                groups.setdefault(t, set()).add(sub.group_id)
        deleted = 0
        for topic, gids in groups.items():
            async with self._lock:
                cur = await self.db.execute(
                    f"SELECT count(*), min(next_offset) FROM bus_offsets WHERE topic = ? AND group_id IN "
                    f"({','.join('?' * len(gids))})",
                    (topic, *gids),
                )
                n, low = await cur.fetchone()  # type: ignore[misc]  # an aggregate without GROUP BY: always one row
                await cur.close()
                if n != len(gids) or low is None:
                    continue
                cur = await self.db.execute('DELETE FROM bus_log WHERE topic = ? AND "offset" < ?', (topic, low))
                deleted += cur.rowcount
                await cur.close()
        return deleted

    async def _prune_loop(self) -> None:
        while True:
            await asyncio.sleep(self._prune_every)
            try:
                await self.prune()
            except Exception as exc:  # pruning is housekeeping; never take the bus down for it
                log.warning("bus.prune_failed", error=repr(exc))


class InProcessSubscriber:
    def __init__(self, bus: InProcessBus, group_id: str, topics: Sequence[str]):
        self.bus = bus
        self.group_id = group_id
        self.topics = frozenset(topics)
        self.wake = asyncio.Event()
        self._positions: dict[str, int] = {}

    async def start(self) -> None:
        self._positions = await self.bus._committed(self.group_id, sorted(self.topics))

    async def stop(self) -> None:
        self._positions = {}

    async def fetch(self, max_records: int, timeout_ms: int) -> list[Record]:
        self.wake.clear()  # before reading, so a publish in between is not missed
        records = await self.bus._fetch(self._positions, max_records)
        if not records:
            try:
                await asyncio.wait_for(self.wake.wait(), timeout_ms / 1000)
            except TimeoutError:
                return []
            records = await self.bus._fetch(self._positions, max_records)
        for r in records:
            self._positions[r.topic] = max(self._positions[r.topic], r.offset + 1)
        return records

    async def caught_up(self) -> bool:
        ends = await self.bus._ends(sorted(self.topics))
        return all(self._positions.get(t, 0) >= end for t, end in ends.items())

    async def commit(self, records: Sequence[Record]) -> None:
        if records:
            await self.bus._commit(self.group_id, {t: o for (t, _p), o in committed_positions(records).items()})
