"""The CSV importer of historical orders (python -m services.segmentation import-orders), on SQLite
(tests/integration/test_segmentation_importer.py imports into PostgreSQL). Every paid_at is built
from the suite's clock: an import refuses times in the future, so written dates would go stale."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from sqlalchemy import insert

from services.segmentation.adapters.tables import messaging
from services.segmentation.entrypoints import importer
from services.segmentation.entrypoints.importer import import_orders
from services.segmentation.spec import SPEC
from shared import clock
from shared.db import create_engine
from shared.runtime import migrate
from tests.factories import local_day, order_paid
from tests.order_imports import (
    Row,
    expected_customers,
    generated_rows,
    job_row,
    read_state,
    receive_live,
    sqlite_url,
    state,
    stored_customers,
    write_csv,
)

ROOT = Path(__file__).resolve().parents[2]
BERLIN, NEW_YORK = ZoneInfo("Europe/Berlin"), ZoneInfo("America/New_York")
# 09:00 in Shanghai (01:00 UTC, the same day) two months ago: a time every import takes.
PAID = local_day(-60, 9)


def naive(at: datetime) -> str:
    """A wall-clock time without offset, as a shop's export writes it: "YYYY-MM-DD hh:mm:ss"."""
    return at.replace(tzinfo=None).isoformat(sep=" ")


def utc_on(day: datetime, hour: int, minute: int = 0) -> datetime:
    """``hour:minute`` UTC on the calendar day of ``day`` (its own wall-clock date)."""
    return datetime.combine(day.date(), time(hour, minute), tzinfo=UTC)


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    # The command reads its clock from FUGOU_CLOCK_OFFSET, inherited from the suite's environment.
    return subprocess.run(
        [sys.executable, "-m", "services.segmentation", "import-orders", "--no-progress", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


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
    evening = local_day(-35, 21, 30)  # written without offset: 21:30 in Shanghai is 13:30 UTC
    path = write_csv(
        tmp_path / "orders.csv",
        [
            Row("o-1", "u-1", PAID.isoformat(), 8000),
            Row("o-2", "u-1", naive(evening), 4500, ""),
            Row("o-1", "u-2", local_day(-5, 9).isoformat(), 1),
        ],
    )
    url = sqlite_url(tmp_path)
    import_orders(path, "demo", database_url=url)
    assert state(url)["orders"] == [
        ("demo", "o-1", "u-1", "paid", 8000, utc_on(PAID, 1, 0)),
        ("demo", "o-2", "u-1", "paid", 4500, utc_on(evening, 13, 30)),
    ]
    assert state(url)["customers"] == [
        (
            "demo",
            "u-1",
            2,
            12500,
            utc_on(PAID, 1, 0),
            utc_on(evening, 13, 30),
        )
    ]
    # Stored exactly as SQLAlchemy stores UTCDateTime on SQLite, so text comparisons (min/max) hold.
    with sqlite3.connect(tmp_path / "segmentation.sqlite") as conn:
        assert conn.execute("SELECT paid_at FROM orders WHERE order_id = 'o-1'").fetchone() == (
            f"{PAID.date().isoformat()} 01:00:00.000000",
        )


def test_an_order_repeated_in_the_file_counts_once_even_across_chunks(tmp_path: Path) -> None:
    next_day = PAID + timedelta(days=1)
    path = write_csv(
        tmp_path / "orders.csv",
        [
            Row("o-1", "u-1", PAID.isoformat(), 100),
            Row("o-1", "u-1", PAID.isoformat(), 100),  # same chunk
            Row("o-2", "u-1", next_day.isoformat(), 200),
            Row("o-1", "u-1", PAID.isoformat(), 100),  # a later chunk
            Row("o-2", "u-2", (PAID + timedelta(days=4)).isoformat(), 999),  # same order under another customer
        ],
    )
    url = sqlite_url(tmp_path)
    result = import_orders(path, "demo", database_url=url, chunk=3)
    assert (result.imported, result.present) == (2, 3)
    assert stored_customers(url) == {"u-1": (2, 300, utc_on(PAID, 1), utc_on(next_day, 1))}


def summer_noon() -> datetime:
    """Noon (naive) of the latest day before the clock's today on which both Berlin and New York
    keep summer time (CEST +02:00, EDT -04:00): within the last year, whatever the date."""
    day = local_day(-1, 12).replace(tzinfo=None)
    while (BERLIN.utcoffset(day), NEW_YORK.utcoffset(day)) != (timedelta(hours=2), timedelta(hours=-4)):
        day -= timedelta(days=1)
    return day


def test_paid_at_without_offset_is_read_in_the_merchants_time_zone_unless_one_is_given(tmp_path: Path) -> None:
    noon = summer_noon()
    path = write_csv(tmp_path / "orders.csv", [Row("o-1", "u-1", naive(noon), 100)])
    url = sqlite_url(tmp_path)
    asyncio.run(_add_merchant(url, "berlin-shop", "Europe/Berlin"))

    import_orders(path, "berlin-shop", database_url=url)
    import_orders(path, "unknown-shop", database_url=url)
    import_orders(path, "given-zone", database_url=url, timezone_name="America/New_York")

    paid = {r[0]: r[5] for r in state(url)["orders"]}
    assert paid["berlin-shop"] == utc_on(noon, 10, 0)  # CEST, +02:00
    assert paid["unknown-shop"] == utc_on(noon, 4, 0)  # Asia/Shanghai, +08:00
    assert paid["given-zone"] == utc_on(noon, 16, 0)  # EDT, -04:00


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
                    updated_at=clock.now(),
                )
            )
    finally:
        await engine.dispose()


# -- bad input --------------------------------------------------------------------------------------


def test_bad_rows_are_skipped_and_reported_with_their_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "orders.csv"
    at, day = PAID.isoformat(), PAID.date().isoformat()  # a time with its offset; a date alone
    ahead = local_day(30).isoformat()  # a month ahead: far beyond the day of slack for clocks
    path.write_text(
        "order_id,customer_id,paid_at,amount_fen,status\n"  # line 1
        f"o-1,u-1,{at},8000,paid\n"  # 2 ok
        f"o-2,u-1,{at},-5,paid\n"  # 3 negative amount
        "o-3,u-1,yesterday,100,paid\n"  # 4 bad time
        f'"o-4\nwith a newline",u-2,{day},100,paid\n'  # 5-6 ok (a quoted newline)
        f"o-5,u-2,{day},12.50,paid\n"  # 7 not an integer
        f"o-6,,{day},100,paid\n"  # 8 no customer
        "o-7,u-3\n"  # 9 too few fields
        "\n"  # 10 blank: ignored
        f"o-8,u-3,{day},100,refunded\n"  # 11 not paid: skipped, not bad
        f"o-9,u-3,{ahead},100,paid\n"  # 12 in the future
        f"o-10,u-3,{day},7,paid\n",  # 13 ok
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
    rows.append(["o-ok", "u-1", PAID.isoformat(), "1", "paid"])
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
        f"\ufeffAmount_Fen,channel,Paid_At,customer_id,order_id\r\n100,wechat,{PAID.isoformat()},u-1,o-1\r\n".encode()
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
            Row("o-1", "u-1", PAID.isoformat(), 1),
            Row("o-2\nx", "u-1", PAID.isoformat(), 1),  # lines 3-4
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
    more = [*rows, Row("o-new", "u-1", PAID.isoformat(), 5)]
    write_csv(path, more)

    result = import_orders(path, "demo", database_url=url)

    assert (result.already_imported, result.imported) == (False, 1)
    assert stored_customers(url) == expected_customers(more)


# -- with the live consumer -------------------------------------------------------------------------


async def test_orders_already_received_live_are_not_counted_twice(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    older, later = local_day(-90, 9), local_day(-25, 9)
    live = [
        order_paid("demo", "u-1", "o-1", 8000, at=PAID),
        order_paid("demo", "u-2", "o-9", 500, at=later),
    ]
    await receive_live(url, live)
    path = write_csv(
        tmp_path / "orders.csv",
        [
            Row("o-1", "u-1", PAID.isoformat(), 8000),  # the order the consumer stored
            Row("o-2", "u-1", older.isoformat(), 300),  # an older one, only in history
        ],
    )

    result = await asyncio.to_thread(import_orders, path, "demo", database_url=url)

    assert (result.imported, result.present) == (1, 1)
    customers_ = {r[1]: r[2:] for r in (await read_state(url))["customers"]}
    assert customers_["u-1"] == (
        2,
        8300,
        utc_on(older, 1),
        utc_on(PAID, 1),
    )
    assert customers_["u-2"] == (
        1,
        500,
        utc_on(later, 1),
        utc_on(later, 1),
    )


async def test_an_imported_order_received_live_afterwards_adds_nothing(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    path = write_csv(tmp_path / "orders.csv", [Row("o-1", "u-1", PAID.isoformat(), 8000)])
    await asyncio.to_thread(import_orders, path, "demo", database_url=url)
    later = local_day(-5, 9)

    await receive_live(
        url,
        [
            order_paid("demo", "u-1", "o-1", 8000, at=PAID),
            order_paid("demo", "u-1", "o-2", 100, at=later),
        ],
    )

    customers_ = {r[1]: r[2:] for r in (await read_state(url))["customers"]}
    assert customers_["u-1"] == (
        2,
        8100,
        utc_on(PAID, 1),
        utc_on(later, 1),
    )


def test_another_merchants_orders_with_the_same_ids_are_left_alone(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "orders.csv", [Row("o-1", "u-1", PAID.isoformat(), 100)])
    url = sqlite_url(tmp_path)
    import_orders(path, "shop-a", database_url=url)
    import_orders(path, "shop-b", database_url=url)
    assert [(r[0], r[1], r[2], r[3]) for r in state(url)["customers"]] == [
        ("shop-a", "u-1", 1, 100),
        ("shop-b", "u-1", 1, 100),
    ]


# -- PostgreSQL ---------------------------------------------------------------------------------------


def test_the_postgresql_statements_render(tmp_path: Path) -> None:
    """The PostgreSQL path shares the SQL; its full run is in tests/integration/test_segmentation_importer.py."""
    from sqlalchemy.dialects import postgresql

    class _Conn:
        dialect = postgresql.asyncpg.dialect()

    sql = importer._Statements.build(_Conn(), "demo")  # type: ignore[arg-type]
    assert "ON CONFLICT DO NOTHING" in sql.stage and "$1" in sql.stage
    fold = str(sql.fold.compile(dialect=_Conn.dialect))
    assert "GROUP BY" in fold and "IS DISTINCT FROM" in fold and "FILTER (WHERE" in fold
    assert sql.lock and "orders" in sql.lock


def test_an_unknown_merchant_is_imported_with_a_warning(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "orders.csv", [Row("o-1", "u-1", PAID.isoformat(), 100)])
    proc = cli("--merchant", "nobody", str(path), "--database-url", sqlite_url(tmp_path))
    assert proc.returncode == 0
    assert "warning: merchant 'nobody' is not known" in proc.stderr
