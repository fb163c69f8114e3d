"""The CSV importer of historical orders (python -m services.segmentation import-orders)."""

from __future__ import annotations

import asyncio
import csv
import os
import random
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import insert, select

from services.segmentation.adapters.tables import customers, import_jobs, messaging, orders
from services.segmentation.entrypoints import importer
from services.segmentation.entrypoints.importer import ImportResult, import_orders
from services.segmentation.service_layer.handlers import apply_order_events
from services.segmentation.spec import SPEC
from shared.db import create_engine, session_factory
from shared.events import parse_event
from shared.runtime import migrate
from tests.factories import order_paid

ROOT = Path(__file__).resolve().parents[2]
CST = timezone(timedelta(hours=8))
SHANGHAI = ZoneInfo("Asia/Shanghai")
HEADER = ["order_id", "customer_id", "paid_at", "amount_fen", "status"]


@dataclass(frozen=True)
class Row:
    order_id: str
    customer_id: str
    paid_at: str
    amount_fen: int
    status: str = "paid"


def write_csv(path: Path, rows: list[Row] | list[list[str]], header: list[str] = HEADER) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        for r in rows:
            w.writerow([r.order_id, r.customer_id, r.paid_at, r.amount_fen, r.status] if isinstance(r, Row) else r)
    return path


def generated_rows(n: int, customers_: int, seed: int = 7) -> list[Row]:
    """Offsets, naive local times, Z, empty and non-paid statuses, duplicates: a realistic export."""
    rng = random.Random(seed)
    start = datetime(2025, 1, 1, tzinfo=CST)
    rows = []
    for i in range(n):
        at = start + timedelta(seconds=rng.randrange(400 * 86400), microseconds=rng.randrange(1_000_000))
        style = i % 4
        paid_at = (
            at.isoformat()
            if style == 0
            else at.replace(tzinfo=None).isoformat(sep=" ")
            if style == 1
            else at.astimezone(UTC).isoformat().replace("+00:00", "Z")
            if style == 2
            else at.astimezone(timezone(timedelta(hours=-5))).isoformat()
        )
        status = rng.choice(["paid", "paid", "paid", "", "PAID", "refunded", "cancelled"])
        rows.append(Row(f"o-{i}", f"u-{rng.randrange(customers_)}", paid_at, rng.randrange(0, 100_000), status))
    for i in rng.sample(range(n), n // 20):  # 5% repeats of an earlier order (the first occurrence wins)
        first = rows[i]
        rows.append(Row(first.order_id, "u-somebody-else", first.paid_at, first.amount_fen + 1, "paid"))
    return rows


def expected_customers(rows: list[Row], zone: ZoneInfo = SHANGHAI) -> dict[str, tuple[int, int, datetime, datetime]]:
    """The aggregates computed in plain Python: first occurrence of each order, paid rows only."""
    seen: set[str] = set()
    out: dict[str, tuple[int, int, datetime, datetime]] = {}
    for r in rows:
        if r.status.lower() not in ("", "paid") or r.order_id in seen:
            continue
        seen.add(r.order_id)
        at = datetime.fromisoformat(r.paid_at)
        at = (at if at.tzinfo else at.replace(tzinfo=zone)).astimezone(UTC)
        n, amount, first, last = out.get(r.customer_id, (0, 0, at, at))
        out[r.customer_id] = (n + 1, amount + r.amount_fen, min(first, at), max(last, at))
    return out


def sqlite_url(tmp_path: Path, name: str = "segmentation") -> str:
    return f"sqlite+aiosqlite:///{(tmp_path / f'{name}.sqlite').as_posix()}"


def stored_customers(url: str) -> dict[str, tuple[int, int, datetime, datetime]]:
    return {r[1]: r[2:] for r in state(url)["customers"]}


def state(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Orders and customers as stored (updated_at left out: it is the time of the write)."""
    return asyncio.run(_state(url))


async def _state(url: str) -> dict[str, list[tuple[Any, ...]]]:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            o = (
                await conn.execute(
                    select(
                        orders.c.merchant_id,
                        orders.c.order_id,
                        orders.c.customer_id,
                        orders.c.status,
                        orders.c.amount_fen,
                        orders.c.paid_at,
                    ).order_by(orders.c.merchant_id, orders.c.order_id)
                )
            ).all()
            c = (
                await conn.execute(
                    select(
                        customers.c.merchant_id,
                        customers.c.customer_id,
                        customers.c.paid_orders,
                        customers.c.paid_amount_fen,
                        customers.c.first_order_at,
                        customers.c.last_order_at,
                    ).order_by(customers.c.merchant_id, customers.c.customer_id)
                )
            ).all()
        return {"orders": [tuple(r) for r in o], "customers": [tuple(r) for r in c]}
    finally:
        await engine.dispose()


def job_row(url: str) -> Any:
    async def read() -> Any:
        engine = create_engine(url)
        try:
            async with engine.connect() as conn:
                return (await conn.execute(select(import_jobs))).one()
        finally:
            await engine.dispose()

    return asyncio.run(read())


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.segmentation", "import-orders", "--no-progress", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


async def receive_live(url: str, events: list[dict[str, Any]]) -> None:
    """What the live consumer does with order.paid events (the real handler, one transaction)."""
    engine = create_engine(url)
    try:
        await migrate(engine, SPEC)
        async with session_factory(engine)() as session, session.begin():
            await apply_order_events(session, [parse_event(e) for e in events])
    finally:
        await engine.dispose()


# -- what an import stores --------------------------------------------------------------------------


def test_an_import_gives_each_customer_the_aggregates_of_their_paid_orders(tmp_path: Path) -> None:
    rows = generated_rows(3000, 250)
    path = write_csv(tmp_path / "orders.csv", rows)
    url = sqlite_url(tmp_path)

    result = import_orders(path, "demo", database_url=url, chunk=400)

    expected = expected_customers(rows)
    assert stored_customers(url) == expected
    paid_rows = sum(1 for r in rows if r.status.lower() in ("", "paid"))
    assert result.imported == sum(v[0] for v in expected.values())
    assert result.present == paid_rows - result.imported > 0
    assert result.not_paid == len(rows) - paid_rows > 0
    assert result.bad == 0
    assert result.rows == len(rows)
    assert len(state(url)["orders"]) == result.imported


def test_each_stored_order_keeps_its_first_row_in_utc_with_status_paid(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "orders.csv",
        [
            Row("o-1", "u-1", "2026-10-01T09:00:00+08:00", 8000),
            Row("o-2", "u-1", "2026-11-02 21:30:00", 4500, ""),
            Row("o-1", "u-2", "2026-12-01T09:00:00+08:00", 1),
        ],
    )
    url = sqlite_url(tmp_path)
    import_orders(path, "demo", database_url=url)
    assert state(url)["orders"] == [
        ("demo", "o-1", "u-1", "paid", 8000, datetime(2026, 10, 1, 1, 0, tzinfo=UTC)),
        ("demo", "o-2", "u-1", "paid", 4500, datetime(2026, 11, 2, 13, 30, tzinfo=UTC)),
    ]
    assert state(url)["customers"] == [
        (
            "demo",
            "u-1",
            2,
            12500,
            datetime(2026, 10, 1, 1, 0, tzinfo=UTC),
            datetime(2026, 11, 2, 13, 30, tzinfo=UTC),
        )
    ]
    # Stored exactly as SQLAlchemy stores UTCDateTime on SQLite, so text comparisons (min/max) hold.
    with sqlite3.connect(tmp_path / "segmentation.sqlite") as conn:
        assert conn.execute("SELECT paid_at FROM orders WHERE order_id = 'o-1'").fetchone() == (
            "2026-10-01 01:00:00.000000",
        )


def test_an_order_repeated_in_the_file_counts_once_even_across_chunks(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "orders.csv",
        [
            Row("o-1", "u-1", "2026-10-01T09:00:00+08:00", 100),
            Row("o-1", "u-1", "2026-10-01T09:00:00+08:00", 100),  # same chunk
            Row("o-2", "u-1", "2026-10-02T09:00:00+08:00", 200),
            Row("o-1", "u-1", "2026-10-01T09:00:00+08:00", 100),  # a later chunk
            Row("o-2", "u-2", "2026-10-05T09:00:00+08:00", 999),  # same order under another customer
        ],
    )
    url = sqlite_url(tmp_path)
    result = import_orders(path, "demo", database_url=url, chunk=3)
    assert (result.imported, result.present) == (2, 3)
    assert stored_customers(url) == {
        "u-1": (2, 300, datetime(2026, 10, 1, 1, tzinfo=UTC), datetime(2026, 10, 2, 1, tzinfo=UTC))
    }


def test_paid_at_without_offset_is_read_in_the_merchants_time_zone_unless_one_is_given(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "orders.csv", [Row("o-1", "u-1", "2026-07-01 12:00:00", 100)])
    url = sqlite_url(tmp_path)
    asyncio.run(_add_merchant(url, "berlin-shop", "Europe/Berlin"))

    import_orders(path, "berlin-shop", database_url=url)
    import_orders(path, "unknown-shop", database_url=url)
    import_orders(path, "given-zone", database_url=url, timezone_name="America/New_York")

    paid = {r[0]: r[5] for r in state(url)["orders"]}
    assert paid["berlin-shop"] == datetime(2026, 7, 1, 10, 0, tzinfo=UTC)  # CEST, +02:00
    assert paid["unknown-shop"] == datetime(2026, 7, 1, 4, 0, tzinfo=UTC)  # Asia/Shanghai, +08:00
    assert paid["given-zone"] == datetime(2026, 7, 1, 16, 0, tzinfo=UTC)  # EDT, -04:00


async def _add_merchant(url: str, merchant_id: str, tz: str) -> None:
    engine = create_engine(url)
    try:
        await migrate(engine, SPEC)
        async with engine.begin() as conn:
            await conn.execute(
                insert(messaging.merchants).values(
                    merchant_id=merchant_id,
                    name=merchant_id,
                    timezone=tz,
                    jwt_secret=b"x",
                    active=True,
                    updated_at=datetime.now(UTC),
                )
            )
    finally:
        await engine.dispose()


# -- bad input --------------------------------------------------------------------------------------


def test_bad_rows_are_skipped_and_reported_with_their_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "orders.csv"
    path.write_text(
        "order_id,customer_id,paid_at,amount_fen,status\n"  # line 1
        "o-1,u-1,2026-10-01T09:00:00+08:00,8000,paid\n"  # 2 ok
        "o-2,u-1,2026-10-01T09:00:00+08:00,-5,paid\n"  # 3 negative amount
        "o-3,u-1,yesterday,100,paid\n"  # 4 bad time
        '"o-4\nwith a newline",u-2,2026-10-01,100,paid\n'  # 5-6 ok (a quoted newline)
        "o-5,u-2,2026-10-01,12.50,paid\n"  # 7 not an integer
        "o-6,,2026-10-01,100,paid\n"  # 8 no customer
        "o-7,u-3\n"  # 9 too few fields
        "\n"  # 10 blank: ignored
        "o-8,u-3,2026-10-01,100,refunded\n"  # 11 not paid: skipped, not bad
        "o-9,u-3,2999-01-01T00:00:00+08:00,100,paid\n"  # 12 in the future
        "o-10,u-3,2026-10-01,7,paid\n",  # 13 ok
        encoding="utf-8",
    )
    url = sqlite_url(tmp_path)
    seen: list[tuple[int, str]] = []

    result = import_orders(path, "demo", database_url=url, chunk=4, on_bad=lambda line, why: seen.append((line, why)))

    assert [line for line, _ in result.bad_samples] == [3, 4, 7, 8, 9, 12]
    assert seen == result.bad_samples
    reasons = dict(result.bad_samples)
    assert "amount_fen" in reasons[3] and "paid_at" in reasons[4] and "amount_fen" in reasons[7]
    assert "customer_id" in reasons[8] and "fields" in reasons[9] and "future" in reasons[12]
    assert (result.imported, result.bad, result.not_paid, result.skipped) == (3, 6, 1, 7)
    assert sorted(r[1] for r in state(url)["orders"]) == ["o-1", "o-10", "o-4\nwith a newline"]


def test_the_command_prints_the_first_ten_reasons_and_still_succeeds(tmp_path: Path) -> None:
    rows = [[f"o-{i}", "u-1", "not a time", "1", "paid"] for i in range(15)]
    rows.append(["o-ok", "u-1", "2026-10-01T09:00:00+08:00", "1", "paid"])
    path = write_csv(tmp_path / "orders.csv", rows)

    proc = cli("--merchant", "demo", str(path), "--database-url", sqlite_url(tmp_path))

    assert proc.returncode == 0, proc.stderr
    summary = proc.stderr[proc.stderr.index("skipped 15 bad row(s); the first 10:") :]
    assert [line.split(":")[0].strip() for line in summary.splitlines()[1:]] == [f"line {n}" for n in range(2, 12)]
    assert "imported 1 orders; skipped 15 rows" in proc.stdout
    assert "rows/s" in proc.stdout


def test_a_file_missing_a_required_column_is_refused_with_a_non_zero_exit(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "orders.csv", [["o-1", "u-1", "100"]], header=["order_id", "customer_id", "amount_fen"])
    proc = cli("--merchant", "demo", str(path), "--database-url", sqlite_url(tmp_path))
    assert proc.returncode == 2
    assert "missing column(s): paid_at" in proc.stderr
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    assert cli("--merchant", "demo", str(empty), "--database-url", sqlite_url(tmp_path)).returncode == 2
    assert (
        cli("--merchant", "demo", str(tmp_path / "absent.csv"), "--database-url", sqlite_url(tmp_path)).returncode == 2
    )


def test_a_header_with_a_byte_order_mark_and_other_columns_in_any_order_is_understood(tmp_path: Path) -> None:
    path = tmp_path / "orders.csv"
    path.write_bytes(
        "\ufeffAmount_Fen,channel,Paid_At,customer_id,order_id\r\n"
        "100,wechat,2026-10-01T09:00:00+08:00,u-1,o-1\r\n".encode()
    )
    url = sqlite_url(tmp_path)
    result = import_orders(path, "demo", database_url=url)
    assert result.imported == 1
    assert stored_customers(url)["u-1"][:2] == (1, 100)


# -- resuming ---------------------------------------------------------------------------------------


def test_an_import_killed_after_a_chunk_resumes_to_the_same_state_as_one_clean_run(tmp_path: Path) -> None:
    rows = generated_rows(2000, 150, seed=11)
    path = write_csv(tmp_path / "orders.csv", rows)
    interrupted, clean = sqlite_url(tmp_path, "interrupted"), sqlite_url(tmp_path, "clean")

    killed = cli(
        "--merchant",
        "demo",
        str(path),
        "--database-url",
        interrupted,
        "--chunk",
        "300",
        env={"FUGOU_FAULT": "import.after_chunk"},
    )
    assert killed.returncode == 137, killed.stderr
    job = job_row(interrupted)
    assert job.finished_at is None and job.rows_done == 300 and 0 < job.position < path.stat().st_size
    assert len(state(interrupted)["orders"]) == job.rows_imported

    resumed = cli("--merchant", "demo", str(path), "--database-url", interrupted, "--chunk", "300")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed at byte {job.position:,}" in resumed.stdout
    import_orders(path, "demo", database_url=clean, chunk=300)

    assert state(interrupted) == state(clean)
    assert stored_customers(clean) == expected_customers(rows)
    assert job_row(interrupted).rows_done == len(rows) == job_row(clean).rows_done
    assert job_row(interrupted).rows_imported == job_row(clean).rows_imported


def test_line_numbers_stay_right_after_a_resume(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "orders.csv",
        [
            Row("o-1", "u-1", "2026-10-01T09:00:00+08:00", 1),
            Row("o-2\nx", "u-1", "2026-10-01T09:00:00+08:00", 1),  # lines 3-4
            Row("o-3", "u-1", "never", 1),  # line 5
        ],
    )
    url = sqlite_url(tmp_path)
    killed = cli(
        "--merchant",
        "demo",
        str(path),
        "--database-url",
        url,
        "--chunk",
        "2",
        env={"FUGOU_FAULT": "import.after_chunk"},
    )
    assert killed.returncode == 137
    result = import_orders(path, "demo", database_url=url, chunk=2)
    assert result.resumed_from > 0
    assert [line for line, _ in result.bad_samples] == [5]


def test_a_finished_import_run_again_says_already_imported_and_changes_nothing(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "orders.csv", generated_rows(500, 40))
    url = sqlite_url(tmp_path)
    first = import_orders(path, "demo", database_url=url, chunk=100)
    before, job_before = state(url), job_row(url)

    proc = cli("--merchant", "demo", str(path), "--database-url", url)

    assert proc.returncode == 0
    assert "already imported" in proc.stdout
    assert state(url) == before
    assert job_row(url) == job_before
    assert job_before.rows_imported == first.imported and job_before.finished_at is not None


def test_restart_reads_the_file_again_but_adds_nothing_twice(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "orders.csv", generated_rows(500, 40))
    url = sqlite_url(tmp_path)
    import_orders(path, "demo", database_url=url)
    before = state(url)

    again = import_orders(path, "demo", database_url=url, restart=True)

    assert not again.already_imported and again.imported == 0 and again.rows == 525
    assert state(url) == before


def test_a_changed_file_is_a_new_job_that_adds_only_the_new_orders(tmp_path: Path) -> None:
    rows = generated_rows(300, 30)
    path = write_csv(tmp_path / "orders.csv", rows)
    url = sqlite_url(tmp_path)
    import_orders(path, "demo", database_url=url)
    more = rows + [Row("o-new", "u-1", "2026-10-01T09:00:00+08:00", 5)]
    write_csv(path, more)

    result = import_orders(path, "demo", database_url=url)

    assert (result.already_imported, result.imported) == (False, 1)
    assert stored_customers(url) == expected_customers(more)


# -- with the live consumer -------------------------------------------------------------------------


async def test_orders_already_received_live_are_not_counted_twice(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    live = [
        order_paid("demo", "u-1", "o-1", 8000, at=datetime(2026, 10, 1, 9, 0, tzinfo=CST)),
        order_paid("demo", "u-2", "o-9", 500, at=datetime(2026, 11, 5, 9, 0, tzinfo=CST)),
    ]
    await receive_live(url, live)
    path = write_csv(
        tmp_path / "orders.csv",
        [
            Row("o-1", "u-1", "2026-10-01T09:00:00+08:00", 8000),  # the order the consumer stored
            Row("o-2", "u-1", "2026-09-01T09:00:00+08:00", 300),  # an older one, only in history
        ],
    )

    result = await asyncio.to_thread(import_orders, path, "demo", database_url=url)

    assert (result.imported, result.present) == (1, 1)
    customers_ = {r[1]: r[2:] for r in (await _state(url))["customers"]}
    assert customers_["u-1"] == (
        2,
        8300,
        datetime(2026, 9, 1, 1, tzinfo=UTC),
        datetime(2026, 10, 1, 1, tzinfo=UTC),
    )
    assert customers_["u-2"] == (
        1,
        500,
        datetime(2026, 11, 5, 1, tzinfo=UTC),
        datetime(2026, 11, 5, 1, tzinfo=UTC),
    )


async def test_an_imported_order_received_live_afterwards_adds_nothing(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    path = write_csv(tmp_path / "orders.csv", [Row("o-1", "u-1", "2026-10-01T09:00:00+08:00", 8000)])
    await asyncio.to_thread(import_orders, path, "demo", database_url=url)

    await receive_live(
        url,
        [
            order_paid("demo", "u-1", "o-1", 8000, at=datetime(2026, 10, 1, 9, 0, tzinfo=CST)),
            order_paid("demo", "u-1", "o-2", 100, at=datetime(2026, 12, 1, 9, 0, tzinfo=CST)),
        ],
    )

    customers_ = {r[1]: r[2:] for r in (await _state(url))["customers"]}
    assert customers_["u-1"] == (
        2,
        8100,
        datetime(2026, 10, 1, 1, tzinfo=UTC),
        datetime(2026, 12, 1, 1, tzinfo=UTC),
    )


def test_another_merchants_orders_with_the_same_ids_are_left_alone(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "orders.csv", [Row("o-1", "u-1", "2026-10-01T09:00:00+08:00", 100)])
    url = sqlite_url(tmp_path)
    import_orders(path, "shop-a", database_url=url)
    import_orders(path, "shop-b", database_url=url)
    assert [(r[0], r[1], r[2], r[3]) for r in state(url)["customers"]] == [
        ("shop-a", "u-1", 1, 100),
        ("shop-b", "u-1", 1, 100),
    ]


# -- PostgreSQL ---------------------------------------------------------------------------------------


def test_the_postgresql_statements_render(tmp_path: Path) -> None:
    """The PostgreSQL path shares the SQL; its full run is the postgres-marked test below."""
    from sqlalchemy.dialects import postgresql

    class _Conn:
        dialect = postgresql.asyncpg.dialect()

    sql = importer._Statements.build(_Conn(), "demo")  # type: ignore[arg-type]
    assert "ON CONFLICT DO NOTHING" in sql.stage and "$1" in sql.stage
    fold = str(sql.fold.compile(dialect=_Conn.dialect))
    assert "GROUP BY" in fold and "IS DISTINCT FROM" in fold and "FILTER (WHERE" in fold
    assert sql.lock and "orders" in sql.lock


@pytest.mark.postgres
def test_an_import_into_postgresql_stores_what_sqlite_stores(tmp_path: Path, pg_urls: dict[str, str]) -> None:
    rows = generated_rows(1500, 100, seed=3)
    path = write_csv(tmp_path / "orders.csv", rows)
    pg, lite = pg_urls["segmentation"], sqlite_url(tmp_path)
    asyncio.run(receive_live(pg, [order_paid("demo", "u-1", "o-1", 8000)]))
    asyncio.run(receive_live(lite, [order_paid("demo", "u-1", "o-1", 8000)]))

    on_pg: ImportResult = import_orders(path, "demo", database_url=pg, chunk=400)
    import_orders(path, "demo", database_url=lite, chunk=400)

    assert state(pg) == state(lite)
    assert on_pg.imported == len(state(pg)["orders"]) - 1
    assert import_orders(path, "demo", database_url=pg).already_imported


def test_an_unknown_merchant_is_imported_with_a_warning(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "orders.csv", [Row("o-1", "u-1", "2026-10-01T09:00:00+08:00", 100)])
    proc = cli("--merchant", "nobody", str(path), "--database-url", sqlite_url(tmp_path))
    assert proc.returncode == 0
    assert "warning: merchant 'nobody' is not known" in proc.stderr
