"""Reading one customer's RFM without re-scoring: the stored segment, with each merchant's
configuration and statistics cached in the process.

A read is one query by primary key: the customer's stored segment joined with their order dates
and, in the same statement, the merchant's state (``Seen``): the configuration version in force,
when the statistics were computed, whether a re-score or a history import is under way. So a
configuration saved or statistics refreshed by any process are seen at the very next read, with
no TTL and no second round trip; only their parsed form is cached (``InForceCache``), keyed by
that state. The reads asked for during one turn of the event loop share that query
(``StoredReads``): under load a round trip carries several customers.

Whether the stored segment answers, or the caller computes as before (``explain_customer``), is
``trusted``'s rule."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, NamedTuple

import orjson
from sqlalchemy import ARRAY, BindParameter, String, and_, any_, bindparam, exists, false, func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from services.segmentation.adapters.tables import (
    customers,
    import_jobs,
    rescore_jobs,
    rfm_configs,
    rfm_stats,
    segments,
)
from services.segmentation.domain.config import RfmConfig
from services.segmentation.domain.rfm import CLASSES, Boundaries, RfmClass, Score, Split
from services.segmentation.domain.stats import recency_days
from services.segmentation.service_layer.rfm import (
    Explained,
    Stats,
    Values,
    applied,
    current_config,
    needs_stats,
    stats_current,
)
from shared import clock
from shared.db import fetch_rows

COVERAGE_TTL_S = 10.0
_MAX_MERCHANTS = 10_000
CLASS_BY_CODE: dict[str, RfmClass] = {c.code: c for c in CLASSES.values()}


class Stored(NamedTuple):
    """A customer's order dates and stored segment (segment columns None when there is none)."""

    customer_id: str
    first_order_at: datetime | None
    last_order_at: datetime | None
    config_version: int | None
    r_level: int | None
    f_level: int | None
    m_level: int | None
    cell: str | None
    tier: str | None
    rfm_class: str | None
    frequency: int | None
    monetary_fen: int | None
    tags: str | None
    next_change_at: datetime | None
    scored_at: datetime | None


class Seen(NamedTuple):
    """A merchant's state as the read query saw it, beside the rows."""

    version: int  # of the configuration in force (0: the default nobody saved)
    stats_at: datetime | None  # when the statistics were computed
    busy: bool  # a re-scoring job or a history import is pending or running


def _stored_query(ids: Any) -> Any:
    """The columns of Stored, in its order, for the given customers of a merchant, then those of
    Seen (each computed once per statement)."""
    c, s = customers.c, segments.c
    m: BindParameter[str] = bindparam("merchant_id")
    jobs = rescore_jobs.c
    return (
        select(
            c.customer_id,
            c.first_order_at,
            c.last_order_at,
            s.config_version,
            s.r_level,
            s.f_level,
            s.m_level,
            s.cell,
            s.tier,
            s.rfm_class,
            s.frequency,
            s.monetary_fen,
            s.tags,
            s.next_change_at,
            s.scored_at,
            func.coalesce(
                select(func.max(rfm_configs.c.version)).where(rfm_configs.c.merchant_id == m).scalar_subquery(), 0
            ),
            select(rfm_stats.c.computed_at).where(rfm_stats.c.merchant_id == m).scalar_subquery(),
            # (two comparisons, not an IN: its values would be rendered into the text)
            or_(
                exists().where(jobs.merchant_id == m, or_(jobs.status == "pending", jobs.status == "running")),
                exists().where(import_jobs.c.merchant_id == m, import_jobs.c.finished_at.is_(None)),
            ),
        )
        .select_from(
            customers.outerjoin(segments, and_(s.merchant_id == c.merchant_id, s.customer_id == c.customer_id))
        )
        .where(c.merchant_id == m, ids, c.last_order_at.isnot(None))
    )


# On PostgreSQL the ids are one array parameter (the statement's text never changes); elsewhere an
# expanding IN.
_STORED_PG = _stored_query(customers.c.customer_id == any_(bindparam("customer_ids", type_=ARRAY(String))))
_STORED = _stored_query(customers.c.customer_id.in_(bindparam("customer_ids", expanding=True)))


def _split(rows: Any) -> tuple[dict[str, Stored], Seen | None]:
    stored, seen = {}, None
    for r in rows:
        stored[r[0]] = Stored(*r[:15])
        seen = Seen(int(r[15]), r[16], bool(r[17]))
    return stored, seen


async def fetch_stored(
    conn: AsyncConnection, merchant_id: str, customer_ids: list[str]
) -> tuple[dict[str, Stored], Seen | None]:
    """The one query of a batch of reads: the customers found (with a paid order), and the
    merchant's state (None when no customer was found); shared.db.fetch_rows runs it on the
    driver itself on PostgreSQL."""
    pg = conn.dialect.name == "postgresql"
    return _split(
        await fetch_rows(
            conn,
            _STORED_PG if pg else _STORED,
            {"merchant_id": merchant_id, "customer_ids": customer_ids},
            key="rfm.stored",
        )
    )


def _coverage_query(merchant_id: str, version: int, stats_at: datetime | None) -> Any:
    jobs = rescore_jobs.c
    return select(
        exists().where(jobs.merchant_id == merchant_id, jobs.config_version == version),
        exists().where(jobs.merchant_id == merchant_id, jobs.created_at >= stats_at)
        if stats_at is not None
        else false(),
    )


@dataclass(frozen=True, slots=True)
class InForce:
    """A merchant's configuration in force and statistics, and where re-scoring stands."""

    seen: Seen  # the state these were read for
    config: RfmConfig
    stats: Stats | None
    boundaries: Boundaries | None
    split: Split | None
    # A re-scoring job of this version was queued: when none is left pending, every segment was
    # evaluated under it (a segment the job found unchanged keeps the version that last wrote it).
    version_covered: bool
    # A re-scoring job was queued after these statistics were computed (same reasoning).
    stats_covered: bool
    checked_at: float

    @property
    def version(self) -> int:
        return self.seen.version

    @property
    def busy(self) -> bool:
        return self.seen.busy


class InForceCache:
    """Each merchant's InForce, in this process. Every read brings the merchant's state (Seen):
    a new configuration version or new statistics are loaded at once, whichever process saved
    them. Whether jobs have covered them is re-read when a job starts or ends as seen here, and,
    while not yet covered, every ``coverage_ttl_s`` (a job may start and end between two reads:
    until then segments are computed, never served stale)."""

    def __init__(self, coverage_ttl_s: float = COVERAGE_TTL_S):
        self.coverage_ttl_s = coverage_ttl_s
        self._by_merchant: dict[str, InForce] = {}

    def invalidate(self, merchant_id: str | None = None) -> None:
        if merchant_id is None:
            self._by_merchant.clear()
        else:
            self._by_merchant.pop(merchant_id, None)

    async def get(self, conn: AsyncConnection, merchant_id: str, seen: Seen) -> InForce:
        hit = self._by_merchant.get(merchant_id)
        checked = time.monotonic()
        if (
            hit is not None
            and hit.seen == seen
            and ((hit.version_covered and hit.stats_covered) or checked - hit.checked_at < self.coverage_ttl_s)
        ):
            return hit
        if hit is not None and hit.seen[:2] == seen[:2]:  # the same configuration and statistics
            covered = (await conn.execute(_coverage_query(merchant_id, seen.version, seen.stats_at))).one()
            entry = replace(
                hit, seen=seen, version_covered=bool(covered[0]), stats_covered=bool(covered[1]), checked_at=checked
            )
        else:
            entry = await self._load(conn, merchant_id, seen, checked)
        if len(self._by_merchant) >= _MAX_MERCHANTS:
            self._by_merchant.clear()
        self._by_merchant[merchant_id] = entry
        return entry

    @staticmethod
    async def _load(conn: AsyncConnection, merchant_id: str, seen: Seen, checked: float) -> InForce:
        version, config = await current_config(conn, merchant_id)
        row = (await conn.execute(select(rfm_stats).where(rfm_stats.c.merchant_id == merchant_id))).first()
        stats = Stats.from_row(row) if row is not None else None
        covered = (await conn.execute(_coverage_query(merchant_id, seen.version, seen.stats_at))).one()
        bounds, split = applied(config, stats) if stats is not None else (None, None)
        entry = InForce(seen, config, stats, bounds, split, bool(covered[0]), bool(covered[1]), checked)
        if version != seen.version or (stats.computed_at if stats else None) != seen.stats_at:
            # Saved or refreshed since the rows were read: not what they are judged against.
            # Compute this time (busy); the next read sees the new state and loads it.
            entry = replace(entry, seen=seen._replace(busy=True), version_covered=False, stats_covered=False)
        return entry


def trusted(row: Stored, ctx: InForce, now: datetime) -> bool:
    """Whether the stored segment is what scoring would give now. It is not, and the caller
    computes instead, when:

    - there is no stored segment with levels (never scored, or not since the first paid order);
    - a re-scoring job or a history import of the merchant is pending or running (segments are
      being rewritten, some still under the previous configuration, statistics or history);
    - it was scored under an older configuration and no re-scoring job of the one in force was
      ever queued;
    - time has moved it: its next_change_at (a recency boundary or the period's edge at the
      merchant's midnight, a tag's window) has come and the sweep has not re-scored it yet;
    - there are no statistics to name in the answer (computing stores them), or the configuration
      scores with statistics and they are stale or of another version (computing refreshes them),
      or newer than the segment with no re-score queued since.
    """
    if row.tier is None or ctx.busy:
        return False
    if row.config_version != ctx.version and not ctx.version_covered:
        return False
    if row.next_change_at is not None and row.next_change_at <= now:
        return False
    stats = ctx.stats
    if stats is None:
        return False
    if needs_stats(ctx.config):
        if not stats_current(stats, ctx.version, ctx.config, now):
            return False
        if not ctx.stats_covered and (row.scored_at is None or row.scored_at < stats.computed_at):
            return False
    return True


@dataclass(frozen=True, slots=True)
class Read:
    """What one read found: ``explained`` when the stored segment answers; else ``found`` says
    whether the customer has a paid order at all (then the caller computes)."""

    found: bool
    explained: Explained | None
    tags: tuple[str, ...]


def answer(row: Stored | None, ctx: InForce | None, tz: str, now: datetime) -> Read:
    if row is None or ctx is None:
        return Read(False, None, ())
    tags = tuple(orjson.loads(row.tags)) if row.tags else ()
    if not trusted(row, ctx, now):
        return Read(True, None, tags)
    assert ctx.stats is not None and ctx.boundaries is not None and ctx.split is not None
    assert row.r_level is not None and row.f_level is not None and row.m_level is not None
    assert row.cell is not None and row.tier is not None and row.rfm_class is not None
    values = Values(
        recency_days(row.last_order_at, now, tz),
        int(row.frequency or 0),
        int(row.monetary_fen or 0),
        row.first_order_at,
        row.last_order_at,
    )
    score = Score(row.r_level, row.f_level, row.m_level, row.cell, row.tier, CLASS_BY_CODE[row.rfm_class])
    return Read(True, Explained(values, score, ctx.boundaries, ctx.split, ctx.version, ctx.config, ctx.stats), tags)


_Waiting = dict[str, list["asyncio.Future[tuple[Stored | None, InForce | None]]"]]  # customer -> its readers


class StoredReads:
    """Reads of stored segments for one app, coalesced: the reads asked for during one turn of
    the event loop go to the database together, one query per merchant (customer_id = ANY), on
    one connection. Each round trip to the database costs system calls and a PostgreSQL statement
    whatever it carries, so under load this divides that cost by the batch; a lone read leaves at
    the end of the current turn and waits for nothing. Merchants are never mixed in a query.

    At most ``gate`` batches hold a connection at once, the pool's steady size: past it the pool
    opens overflow connections and closes them again on return, a new PostgreSQL backend per
    batch; waiting here is cheaper."""

    MAX_BATCH = 500

    def __init__(self, connect: Callable[[], Any], pool_size: int, cache: InForceCache | None = None):
        self.connect = connect  # () -> an AsyncConnection context manager
        self.cache = cache or InForceCache()
        self.gate = asyncio.Semaphore(max(1, pool_size))
        self._waiting: dict[str, _Waiting] = {}  # merchant -> reads asked for in this turn
        self._tasks: set[asyncio.Task[None]] = set()

    async def read(self, merchant_id: str, customer_id: str, tz: str) -> Read:
        """One customer's stored segment, and whether it answers (see ``trusted``)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[Stored | None, InForce | None]] = loop.create_future()
        if not self._waiting:
            loop.call_soon(self._flush)
        self._waiting.setdefault(merchant_id, {}).setdefault(customer_id, []).append(future)
        row, ctx = await future
        return answer(row, ctx, tz, clock.now())

    def _flush(self) -> None:
        waiting, self._waiting = self._waiting, {}
        for merchant_id, by_customer in waiting.items():
            ids = list(by_customer)
            for i in range(0, len(ids), self.MAX_BATCH):
                part = {cid: by_customer[cid] for cid in ids[i : i + self.MAX_BATCH]}
                task = asyncio.create_task(self._run(merchant_id, part))
                self._tasks.add(task)  # held until done (the loop keeps only weak references)
                task.add_done_callback(self._tasks.discard)

    async def _run(self, merchant_id: str, waiting: _Waiting) -> None:
        futures = [f for fs in waiting.values() for f in fs]
        try:
            async with self.gate, self.connect() as conn:
                rows, seen = await fetch_stored(conn, merchant_id, list(waiting))
                ctx = await self.cache.get(conn, merchant_id, seen) if seen is not None else None
        except Exception as exc:  # each read of the batch fails as its own query would have
            for f in futures:
                if not f.done():
                    f.set_exception(exc)
            return
        except BaseException:
            for f in futures:
                f.cancel()
            raise
        for customer_id, fs in waiting.items():
            for f in fs:
                if not f.done():  # its request may be gone (the client disconnected)
                    f.set_result((rows.get(customer_id), ctx))
