"""Import a merchant's historical orders from CSV into the segmentation store.

    python -m services.segmentation import-orders --merchant demo orders.csv \
        [--timezone Asia/Shanghai] [--database-url URL] [--chunk 50000] [--restart]

The CSV has a header row with the columns ``order_id, customer_id, paid_at, amount_fen`` and an
optional ``status`` (only rows whose status is empty or ``paid`` count). ``paid_at`` is ISO 8601;
a value without an offset is in ``--timezone`` (default: the merchant's time zone, else
Asia/Shanghai). A bad row is reported with its line number and skipped; only an unusable file
(unreadable, no header, missing columns) makes the command fail.

How it works, per chunk of rows and in ONE transaction:

1. the chunk's rows go into a temporary table (one executemany; a duplicate order inside the
   file keeps its first occurrence, as the live handler does within a batch);
2. rows whose order is already stored (imported before, or received live as ``order.paid``)
   are dropped, so they add nothing;
3. ``INSERT INTO orders ... SELECT`` the rest;
4. the customers are upserted from ``GROUP BY customer_id``, adding counts and amounts and
   taking min/max dates: exactly what ``record_paid_orders`` does for live events;
5. the checkpoint (byte offset after the chunk, totals) is written to ``import_jobs``.

A run that is killed resumes from the last committed chunk, and its end state equals that of
one uninterrupted run. A job is identified by the file's absolute path, size and the SHA-256 of
its first 64 KiB, so a changed file is a new job (still harmless: stored orders add nothing).

SQLite (the embedded store) is written through a synchronous engine on the file; PostgreSQL
runs the very same statements through the service's async engine (``run_sync``), with a
``SHARE ROW EXCLUSIVE`` lock on ``orders`` per chunk so that a live consumer inserting the same
order cannot slip in between steps 2 and 3 (on SQLite, ``BEGIN IMMEDIATE`` already serialises
writers). Importing scores nobody per chunk: a bulk back-fill would announce each customer once
per chunk. When the import finishes, one re-score job scores everyone (and announces each
segment once).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import hashlib
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import BigInteger, Column, MetaData, String, Table, delete, event, func, insert, literal, select, true
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy.engine import URL, Connection, make_url

from services.segmentation.adapters.aggregates import recompute_categories, recompute_customers
from services.segmentation.adapters.tables import customers, import_jobs, messaging, orders, rescore_jobs, rfm_configs
from shared import clock, faults
from shared.cli import process_settings
from shared.db import UTCDateTime, create_engine, insert_for
from shared.runtime import migrate
from shared.settings import Settings

REQUIRED_COLUMNS = ("order_id", "customer_id", "paid_at", "amount_fen")
DEFAULT_TIMEZONE = "Asia/Shanghai"
DEFAULT_CHUNK = 50_000
SAMPLE_REASONS = 10  # bad rows kept for the final summary
REPORT_LIMIT = 100  # bad rows reported one by one as they are met (all are counted)
_HEAD_BYTES = 64 * 1024
_MAX_ID = 128  # orders.order_id / customer_id are String(128)
_MAX_FEN = 2**63 - 1  # BIGINT
_FUTURE_SLACK = timedelta(days=1)
_UTC = UTC

_staging_metadata = MetaData()
# One per connection (TEMPORARY); emptied at the start of every chunk.
staged = Table(
    "segmentation_import_staged",
    _staging_metadata,
    Column("order_id", String(_MAX_ID), primary_key=True),
    Column("customer_id", String(_MAX_ID), nullable=False),
    Column("amount_fen", BigInteger, nullable=False),
    Column("paid_at", UTCDateTime, nullable=False),
    prefixes=["TEMPORARY"],
)


class UnusableFile(Exception):
    """The file cannot be imported at all (unreadable, no header, required columns missing)."""


class ConcurrentImport(Exception):
    """Another process advanced this job's checkpoint under us."""


@dataclass
class ImportResult:
    source: str
    already_imported: bool = False
    merchant_known: bool = True  # False: no merchant.upserted seen by segmentation for this id
    resumed_from: int = 0  # byte offset this run started at (0 = from the top)
    rows: int = 0  # data rows read by this run
    imported: int = 0  # orders newly stored by this run
    present: int = 0  # duplicates in the file or orders already stored
    not_paid: int = 0  # rows skipped for their status
    bad: int = 0  # rows skipped as invalid
    bad_samples: list[tuple[int, str]] = field(default_factory=list)
    job_rows_done: int = 0  # totals over all runs of this job
    job_rows_imported: int = 0
    seconds: float = 0.0

    @property
    def skipped(self) -> int:
        return self.bad + self.not_paid

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        if self.already_imported:
            return (
                f"already imported: {self.job_rows_imported:,} orders from {self.job_rows_done:,} rows "
                f"({self.source}); use --restart to import again"
            )
        resumed = f" (resumed at byte {self.resumed_from:,})" if self.resumed_from else ""
        return (
            f"imported {self.imported:,} orders; skipped {self.skipped:,} rows "
            f"({self.bad:,} bad, {self.not_paid:,} not paid); {self.present:,} already present or "
            f"duplicate; {self.rows:,} rows in {self.seconds:.1f} s = {self.rows_per_s:,.0f} rows/s{resumed}"
        )


# -- the file ---------------------------------------------------------------------------------------


def source_key(path: Path) -> str:
    """The job's identity: absolute path, size and SHA-256 of the first 64 KiB."""
    path = path.resolve()
    size = path.stat().st_size
    with path.open("rb") as f:
        digest = hashlib.sha256(f.read(_HEAD_BYTES)).hexdigest()
    name = str(path)
    if len(name) > 400:  # import_jobs.source is String(512)
        name = "path-sha256:" + hashlib.sha256(name.encode()).hexdigest()
    return f"{name}|{size}|{digest}"


class _Lines:
    """The decoded lines of a binary file, counting the bytes handed out.

    ``csv.reader`` pulls exactly the lines of the record it returns and no more, so after a
    record ``pos`` is the byte offset just past it: the resume point."""

    def __init__(self, f: BinaryIO, pos: int):
        self.f = f
        self.pos = pos
        self.undecodable = False  # set when a line of the current record is not UTF-8

    def __iter__(self) -> Iterator[str]:
        for raw in self.f:
            self.pos += len(raw)
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError:
                self.undecodable = True
                yield raw.decode("utf-8", "replace")


def _read_header(f: BinaryIO) -> tuple[dict[str, int], int, int]:
    """Column indexes by (lower-cased) name, the byte offset after the header, its line count."""
    lines = _Lines(f, 0)
    reader = csv.reader(lines)
    try:
        header = next(reader)
    except StopIteration:
        raise UnusableFile("the file is empty (a header row is required)") from None
    except csv.Error as exc:
        raise UnusableFile(f"the header row is not valid CSV: {exc}") from None
    if lines.undecodable:
        raise UnusableFile("the header row is not UTF-8")
    if header:
        header[0] = header[0].lstrip("\ufeff")  # byte order mark written by Excel
    index: dict[str, int] = {}
    for i, name in enumerate(header):
        index.setdefault(name.strip().lower(), i)
    missing = [c for c in REQUIRED_COLUMNS if c not in index]
    if missing:
        raise UnusableFile(
            f"missing column(s): {', '.join(missing)} (header: {', '.join(header)}; "
            f"required: {', '.join(REQUIRED_COLUMNS)}; optional: status)"
        )
    return index, lines.pos, reader.line_num


def _lines_before(f: BinaryIO, pos: int) -> int:
    f.seek(0)
    count, left = 0, pos
    while left > 0:
        block = f.read(min(left, 1 << 20))
        if not block:
            break
        count += block.count(b"\n")
        left -= len(block)
    return count


# -- the database -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Urls:
    async_url: URL  # for migrations (and for the import itself on PostgreSQL)
    sync_url: URL | None  # SQLite only


def _urls(database_url: str) -> _Urls:
    url = make_url(database_url)
    backend = url.get_backend_name()
    if backend == "sqlite":
        if not url.database or url.database == ":memory:":
            raise ValueError("an in-memory SQLite database cannot be imported into; give a file")
        return _Urls(url.set(drivername="sqlite+aiosqlite"), url.set(drivername="sqlite"))
    if backend == "postgresql":
        return _Urls(url.set(drivername="postgresql+asyncpg"), None)
    raise ValueError(f"unsupported database URL {url.render_as_string()!r}: use SQLite or PostgreSQL")


def _sqlite_engine(url: URL) -> Any:
    engine = create_sync_engine(url, connect_args={"timeout": 30})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # As shared.db does for the services: WAL + synchronous=NORMAL (a commit is durable
        # against a process crash, the checkpoint with it), BEGIN IMMEDIATE per transaction.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        for pragma in (
            "journal_mode=WAL",
            "synchronous=NORMAL",
            "busy_timeout=30000",
            "foreign_keys=ON",
            "cache_size=-262144",
            "temp_store=MEMORY",
        ):
            cur.execute(f"PRAGMA {pragma}")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


@dataclass
class _Statements:
    """The chunk's SQL, the same on both databases but for the dialect's spelling."""

    stage: str
    purge: Any
    copy: Any
    fold: Any
    lock: str | None

    @classmethod
    def build(cls, conn: Connection, merchant_id: str) -> _Statements:
        dialect = conn.dialect.name
        # Staging goes straight to the driver's executemany with tuples: no per-row work in
        # SQLAlchemy. A repeated order_id keeps its first row.
        stage = insert(staged)
        stage = (
            stage.prefix_with("OR IGNORE")
            if dialect == "sqlite"
            else insert_for(dialect, staged).on_conflict_do_nothing()
        )
        compiled = stage.compile(dialect=conn.dialect, column_keys=["order_id", "customer_id", "amount_fen", "paid_at"])
        # An order already paid stays as it is; one known only from a live refund or cancellation
        # (a row without payment) takes the payment from the file.
        purge = delete(staged).where(
            select(literal(1))
            .where(
                orders.c.merchant_id == merchant_id,
                orders.c.order_id == staged.c.order_id,
                orders.c.paid_at.isnot(None),
            )
            .exists()
        )
        copy_ins = insert_for(dialect, orders).from_select(
            ["merchant_id", "order_id", "customer_id", "status", "amount_fen", "paid_at"],
            select(
                literal(merchant_id, String),
                staged.c.order_id,
                staged.c.customer_id,
                literal("paid", String),
                staged.c.amount_fen,
                staged.c.paid_at,
            ).where(true()),
        )
        copy = copy_ins.on_conflict_do_update(
            index_elements=[orders.c.merchant_id, orders.c.order_id],
            set_={
                "status": copy_ins.excluded.status,
                "amount_fen": copy_ins.excluded.amount_fen,
                "paid_at": copy_ins.excluded.paid_at,
            },
            where=orders.c.paid_at.is_(None),
        )
        # The live handler's definition of the aggregates, recomputed for the chunk's customers.
        fold = recompute_customers(dialect, merchant_id, select(staged.c.customer_id))
        lock = "LOCK TABLE orders IN SHARE ROW EXCLUSIVE MODE" if dialect == "postgresql" else None
        return cls(stage=str(compiled), purge=purge, copy=copy, fold=fold, lock=lock)


def _merchant_timezone(conn: Connection, merchant_id: str) -> str | None:
    with conn.begin():
        return conn.execute(
            select(messaging.merchants.c.timezone).where(messaging.merchants.c.merchant_id == merchant_id)
        ).scalar()


def _checkpoint(
    conn: Connection, merchant_id: str, source: str, position: int, rows_done: int, rows_imported: int, finished: bool
) -> None:
    now = clock.now()
    ins = insert_for(conn.dialect.name, import_jobs).values(
        merchant_id=merchant_id,
        source=source,
        position=position,
        rows_done=rows_done,
        rows_imported=rows_imported,
        finished_at=now if finished else None,
        updated_at=now,
    )
    conn.execute(
        ins.on_conflict_do_update(
            index_elements=[import_jobs.c.merchant_id, import_jobs.c.source],
            set_={
                "position": ins.excluded.position,
                "rows_done": ins.excluded.rows_done,
                "rows_imported": ins.excluded.rows_imported,
                "finished_at": ins.excluded.finished_at,
                "updated_at": ins.excluded.updated_at,
            },
        )
    )
    if finished and rows_imported:
        # History changes segments: have the service's worker re-score the merchant's customers.
        total = conn.execute(
            select(func.count()).select_from(customers).where(customers.c.merchant_id == merchant_id)
        ).scalar_one()
        version = conn.execute(
            select(func.coalesce(func.max(rfm_configs.c.version), 0)).where(rfm_configs.c.merchant_id == merchant_id)
        ).scalar_one()
        conn.execute(
            rescore_jobs.insert().values(
                job_id=str(uuid.uuid4()),
                merchant_id=merchant_id,
                config_version=version,
                status="pending",
                total=total,
                done=0,
                changed=0,
                cursor=None,
                created_at=now,
            )
        )


# -- the import -------------------------------------------------------------------------------------


@dataclass
class _Job:
    path: Path
    merchant_id: str
    timezone: str | None
    chunk: int
    restart: bool
    progress: bool
    on_bad: Callable[[int, str], None] | None


def _run(conn: Connection, job: _Job, result: ImportResult) -> None:
    """The whole import on one connection (sync on SQLite, through run_sync on PostgreSQL)."""
    started = time.perf_counter()
    merchant_tz = _merchant_timezone(conn, job.merchant_id)
    result.merchant_known = merchant_tz is not None
    zone = ZoneInfo(job.timezone or merchant_tz or DEFAULT_TIMEZONE)
    keys = (import_jobs.c.merchant_id == job.merchant_id) & (import_jobs.c.source == result.source)
    with conn.begin():
        if job.restart:
            conn.execute(delete(import_jobs).where(keys))
            saved = None
        else:
            saved = conn.execute(
                select(
                    import_jobs.c.position,
                    import_jobs.c.rows_done,
                    import_jobs.c.rows_imported,
                    import_jobs.c.finished_at,
                ).where(keys)
            ).first()
    if saved is not None and saved.finished_at is not None:
        result.already_imported = True
        result.job_rows_done, result.job_rows_imported = saved.rows_done, saved.rows_imported
        return
    is_sqlite = conn.dialect.name == "sqlite"
    with conn.begin():
        staged.create(conn)
    sql = _Statements.build(conn, job.merchant_id)

    with job.path.open("rb") as f:
        size = os.fstat(f.fileno()).st_size
        index, header_end, header_lines = _read_header(f)
        position = header_end
        rows_done = rows_imported = 0
        if saved is not None:
            position, rows_done, rows_imported = max(saved.position, header_end), saved.rows_done, saved.rows_imported
            result.resumed_from = position
        line_base = header_lines if position == header_end else _lines_before(f, position)
        f.seek(position)
        lines = _Lines(f, position)
        reader = csv.reader(lines)
        i_order, i_customer, i_paid, i_amount = (index[c] for c in REQUIRED_COLUMNS)
        i_status = index.get("status")
        width = max(i_order, i_customer, i_paid, i_amount, -1 if i_status is None else i_status) + 1
        latest = clock.now() + _FUTURE_SLACK
        samples = result.bad_samples
        reported = 0

        def bad(line: int, reason: str) -> None:
            nonlocal reported
            result.bad += 1
            if len(samples) < SAMPLE_REASONS:
                samples.append((line, reason))
            if job.on_bad is not None and reported < REPORT_LIMIT:
                reported += 1
                job.on_bad(line, reason)
                if reported == REPORT_LIMIT:
                    job.on_bad(line, f"further bad rows are counted but not shown (first {REPORT_LIMIT} shown)")

        bar = _progress(job, size, position)
        last_line = 0  # reader.line_num after the previous record
        try:
            done = False
            while not done:
                batch: list[tuple[str, str, int, Any]] = []
                append = batch.append
                read = 0
                done = True
                while True:
                    try:
                        row = next(reader)
                    except StopIteration:
                        break
                    except csv.Error as exc:  # e.g. a NUL byte, or an unclosed quote running past the field limit
                        read += 1
                        bad(line_base + last_line + 1, f"not valid CSV: {exc}")
                        last_line = reader.line_num
                        lines.undecodable = False
                    else:
                        start_line = line_base + last_line + 1
                        last_line = reader.line_num
                        if not row:
                            continue  # blank line
                        read += 1
                        if lines.undecodable:
                            lines.undecodable = False
                            bad(start_line, "not valid UTF-8")
                        elif len(row) < width:
                            bad(start_line, f"expected at least {width} fields, found {len(row)}")
                        else:
                            parsed = _parse(
                                row, i_order, i_customer, i_paid, i_amount, i_status, zone, latest, is_sqlite
                            )
                            if isinstance(parsed, tuple):
                                append(parsed)
                            elif parsed is None:
                                result.not_paid += 1
                            else:
                                bad(start_line, parsed)
                    if read >= job.chunk:
                        done = False
                        break
                result.rows += read
                imported, present = _commit_chunk(
                    conn,
                    sql,
                    job,
                    result.source,
                    batch,
                    expected=position,
                    position=lines.pos,
                    rows_done=rows_done + read,
                    rows_imported=rows_imported,
                    finished=done,
                )
                faults.point("import.after_chunk")
                result.imported += imported
                result.present += present
                rows_done += read
                rows_imported += imported
                if bar is not None:
                    bar.update(lines.pos - position)
                position = lines.pos
        finally:
            if bar is not None:
                bar.close()
    result.job_rows_done, result.job_rows_imported = rows_done, rows_imported
    with conn.begin():
        staged.drop(conn)
    result.seconds = time.perf_counter() - started


def _parse(
    row: list[str],
    i_order: int,
    i_customer: int,
    i_paid: int,
    i_amount: int,
    i_status: int | None,
    zone: ZoneInfo,
    latest: datetime,
    is_sqlite: bool,
) -> tuple[str, str, int, Any] | str | None:
    """A staged row, None for a row that is not paid, or the reason the row is bad."""
    if i_status is not None:
        status = row[i_status].strip().lower()
        if status and status != "paid":
            return None
    order_id = row[i_order].strip()
    customer_id = row[i_customer].strip()
    if not order_id:
        return "order_id is empty"
    if not customer_id:
        return "customer_id is empty"
    if len(order_id) > _MAX_ID:
        return f"order_id is longer than {_MAX_ID} characters"
    if len(customer_id) > _MAX_ID:
        return f"customer_id is longer than {_MAX_ID} characters"
    amount = row[i_amount].strip()
    if not (amount.isdigit() and amount.isascii()):
        return f"amount_fen must be a non-negative integer (fen), got {amount[:40]!r}"
    fen = int(amount)
    if fen > _MAX_FEN:
        return f"amount_fen is too large: {amount[:40]}"
    paid = row[i_paid].strip()
    try:
        at = datetime.fromisoformat(paid)
        if at.tzinfo is None:
            at = at.replace(tzinfo=zone)
        at = at.astimezone(_UTC)
    except (ValueError, OverflowError):
        return f"paid_at is not an ISO 8601 time: {paid[:40]!r}"
    if at > latest:
        return f"paid_at is in the future: {paid[:40]}"
    # SQLite keeps UTCDateTime as naive UTC text in SQLAlchemy's DateTime format; build it here,
    # as the staged rows bypass SQLAlchemy's type processing.
    return (order_id, customer_id, fen, at.isoformat(" ", "microseconds")[:26] if is_sqlite else at)


def _commit_chunk(
    conn: Connection,
    sql: _Statements,
    job: _Job,
    source: str,
    batch: list[tuple[str, str, int, Any]],
    *,
    expected: int,
    position: int,
    rows_done: int,
    rows_imported: int,
    finished: bool,
) -> tuple[int, int]:
    """Store one chunk and its checkpoint in one transaction; (orders imported, rows already present)."""
    with conn.begin():
        if sql.lock:
            conn.exec_driver_sql(sql.lock)
        current = conn.execute(
            select(import_jobs.c.position).where(
                import_jobs.c.merchant_id == job.merchant_id, import_jobs.c.source == source
            )
        ).scalar()
        if current is not None and current != expected:
            raise ConcurrentImport(
                f"the checkpoint moved from byte {expected} to {current}: is another import of this file running?"
            )
        imported = 0
        if batch:
            conn.execute(delete(staged))
            conn.exec_driver_sql(sql.stage, batch)
            conn.execute(sql.purge)
            imported = conn.execute(select(func.count()).select_from(staged)).scalar_one()
            if imported:
                conn.execute(sql.copy)
                conn.execute(sql.fold, {"now": clock.now()})
                for stmt in recompute_categories(job.merchant_id, select(staged.c.customer_id)):
                    conn.execute(stmt)
            present = len(batch) - imported  # duplicates in the chunk, or orders already stored
        else:
            present = 0
        _checkpoint(conn, job.merchant_id, source, position, rows_done, rows_imported + imported, finished)
    return imported, present


def _progress(job: _Job, size: int, position: int) -> Any:
    if not job.progress:
        return None
    from tqdm import tqdm

    return tqdm(
        total=size,
        initial=position,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        file=sys.stderr,
        desc=f"import {job.merchant_id}",
        mininterval=0.5,
        dynamic_ncols=True,
    )


async def _migrate(url: URL) -> None:
    from services.segmentation.spec import SPEC

    engine = create_engine(url.render_as_string(hide_password=False))
    try:
        await migrate(engine, SPEC)
    finally:
        await engine.dispose()


async def _migrate_and_run_async(url: URL, job: _Job, result: ImportResult) -> None:
    from services.segmentation.spec import SPEC

    engine = create_engine(url.render_as_string(hide_password=False), pool_size=1)
    try:
        await migrate(engine, SPEC)
        async with engine.connect() as conn:
            await conn.run_sync(_run, job, result)
    finally:
        await engine.dispose()


def import_orders(
    path: str | Path,
    merchant_id: str,
    *,
    database_url: str | None = None,
    timezone_name: str | None = None,
    chunk: int = DEFAULT_CHUNK,
    restart: bool = False,
    progress: bool = False,
    on_bad: Callable[[int, str], None] | None = None,
) -> ImportResult:
    """Import (or resume importing) a CSV of historical orders; see the module docstring.

    Raises UnusableFile when the file cannot be imported at all, ValueError for bad arguments."""
    if not merchant_id or len(merchant_id) > _MAX_ID:
        raise ValueError("merchant_id must be 1 to 128 characters")
    if chunk < 1:
        raise ValueError("chunk must be at least 1")
    if timezone_name is not None:
        try:
            ZoneInfo(timezone_name)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {timezone_name!r} (use an IANA name such as Asia/Shanghai)") from None
    path = Path(path)
    try:
        source = source_key(path)
    except OSError as exc:
        raise UnusableFile(f"cannot read {path}: {exc.strerror or exc}") from None
    urls = _urls(database_url or Settings().database_url("segmentation"))
    job = _Job(path, merchant_id, timezone_name, chunk, restart, progress, on_bad)
    result = ImportResult(source=source)
    started = time.perf_counter()
    if urls.sync_url is None:
        asyncio.run(_migrate_and_run_async(urls.async_url, job, result))
    else:
        database = urls.sync_url.database
        if database:
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        asyncio.run(_migrate(urls.async_url))
        engine = _sqlite_engine(urls.sync_url)
        try:
            with engine.connect() as conn:
                _run(conn, job, result)
        finally:
            engine.dispose()
    result.seconds = time.perf_counter() - started
    return result


# -- command line -----------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.segmentation import-orders",
        description="Import a merchant's historical orders from CSV (columns order_id, customer_id, paid_at, "
        "amount_fen; optional status). Resumable: a rerun continues where a killed run stopped.",
    )
    parser.add_argument("--merchant", required=True, help="the merchant_id the orders belong to")
    parser.add_argument("csv", help="the CSV file (UTF-8, header row)")
    parser.add_argument(
        "--timezone",
        default=None,
        help=f"time zone of paid_at values without offset (default: the merchant's, else {DEFAULT_TIMEZONE})",
    )
    parser.add_argument(
        "--database-url",
        default=None,
        help="segmentation database (default: FUGOU_SEGMENTATION_DATABASE_URL, else ./data/segmentation.sqlite)",
    )
    parser.add_argument("--chunk", type=int, default=DEFAULT_CHUNK, help="rows per transaction (default: %(default)s)")
    parser.add_argument("--restart", action="store_true", help="forget this file's checkpoint and start from the top")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    def on_bad(line: int, reason: str) -> None:
        _stderr(f"line {line}: {reason}")

    try:
        # The process's settings, with its logging and its clock (FUGOU_CLOCK_OFFSET) from them:
        # "now" (the time an import is stamped with, a paid_at too far ahead) is the services'.
        settings = process_settings()
        result = import_orders(
            args.csv,
            args.merchant,
            database_url=args.database_url or settings.database_url("segmentation"),
            timezone_name=args.timezone,
            chunk=args.chunk,
            restart=args.restart,
            progress=not args.no_progress,
            on_bad=on_bad,
        )
    except UnusableFile as exc:
        _stderr(f"error: {args.csv}: {exc}")
        return 2
    except (ValueError, ConcurrentImport) as exc:
        _stderr(f"error: {exc}")
        return 2
    except KeyboardInterrupt:
        _stderr("interrupted: the chunks committed so far are kept; run the same command again to resume")
        return 130
    if not result.merchant_known:
        _stderr(
            f"warning: merchant {args.merchant!r} is not known to segmentation (no merchant.upserted "
            "received); its orders are stored under that id all the same"
        )
    if result.bad_samples:
        _stderr(f"skipped {result.bad:,} bad row(s); the first {len(result.bad_samples)}:")
        for line, reason in result.bad_samples:
            _stderr(f"  line {line}: {reason}")
    print(result.summary(), flush=True)
    return 0


def _stderr(message: str) -> None:
    try:
        from tqdm import tqdm

        tqdm.write(message, file=sys.stderr)
    except ImportError:  # pragma: no cover
        print(message, file=sys.stderr)
