"""Benchmark: CSV import of historical orders into the embedded (SQLite) segmentation store.

Generates 1,000,000 orders of 200,000 customers (seeded RNG) in a temp dir, imports them with
``services.segmentation.entrypoints.importer.import_orders`` into a fresh SQLite file, and
prints one JSON line. The peer, measured in the same run: plain ``sqlite3`` executemany of the
same, already parsed rows into a table with no indexes (same WAL / synchronous=NORMAL settings,
one transaction): the floor cost of getting the rows into SQLite at all.

    python bench/bench_import.py [--orders 1000000] [--customers 200000] [--chunk 50000]
"""

from __future__ import annotations

import argparse
import csv
import random
import sqlite3
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import result, say
from services.segmentation.entrypoints.importer import import_orders

CST = timezone(timedelta(hours=8))


def generate(path: Path, orders: int, customers: int, seed: int = 20261124) -> None:
    rng = random.Random(seed)
    start = datetime(2024, 1, 1, tzinfo=CST)
    span = 2 * 365 * 86400
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["order_id", "customer_id", "paid_at", "amount_fen", "status"])
        for i in range(orders):
            at = start + timedelta(seconds=rng.randrange(span))
            w.writerow(
                [f"o-{i:08d}", f"u-{rng.randrange(customers):06d}", at.isoformat(), rng.randrange(100, 200_000), "paid"]
            )


def peer(path: Path, db: Path) -> tuple[float, int]:
    """sqlite3 executemany of the parsed rows into a bare table; (rows/s, rows)."""
    utc = UTC
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        next(reader)
        rows = [
            ("demo", o, c, s, int(a), datetime.fromisoformat(p).astimezone(utc).isoformat(" ", "microseconds")[:26])
            for o, c, p, a, s in reader
        ]
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(
        "CREATE TABLE orders (merchant_id TEXT, order_id TEXT, customer_id TEXT, status TEXT, "
        "amount_fen INTEGER, paid_at TEXT)"
    )
    t0 = time.perf_counter()
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO orders VALUES (?, ?, ?, ?, ?, ?)", rows)
    conn.execute("COMMIT")
    elapsed = time.perf_counter() - t0
    conn.close()
    return len(rows) / elapsed, len(rows)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--orders", type=int, default=1_000_000)
    parser.add_argument("--customers", type=int, default=None, help="default: orders / 5")
    parser.add_argument("--chunk", type=int, default=50_000)
    args = parser.parse_args()
    customers = args.customers or max(1, args.orders // 5)
    with tempfile.TemporaryDirectory(prefix="fugou-bench-import-") as tmp:
        root = Path(tmp)
        csv_path = root / "orders.csv"
        say(f"import: generating {args.orders:,} orders of {customers:,} customers")
        generate(csv_path, args.orders, customers)
        url = f"sqlite+aiosqlite:///{(root / 'segmentation.sqlite').as_posix()}"
        t0 = time.perf_counter()
        imported = import_orders(csv_path, "demo", database_url=url, chunk=args.chunk)
        elapsed = time.perf_counter() - t0
        assert imported.imported == args.orders, imported.summary()
        say(f"import: {imported.summary()}")
        value = imported.imported / elapsed
        peer_value, _ = peer(csv_path, root / "peer.sqlite")
    result(
        "segmentation.csv_import",
        "orders_per_s",
        value,
        "orders/s",
        "sqlite3 executemany of the same rows into a bare table",
        peer_value,
    )


if __name__ == "__main__":
    main()
