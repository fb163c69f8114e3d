"""CSV files of historical orders for the importer's tests (tests/unit/test_importer.py on SQLite,
tests/integration/test_segmentation_importer.py on PostgreSQL), what an import must store from
them, and the store read back. Every time is built from the suite's clock, never written."""

from __future__ import annotations

import asyncio
import csv
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select

from services.segmentation.adapters.tables import customers, import_jobs, orders
from services.segmentation.service_layer.handlers import apply_order_events
from services.segmentation.spec import SPEC
from shared.db import create_engine, session_factory
from shared.events import parse_event
from shared.runtime import migrate
from tests.factories import local_day

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
    """Offsets, naive local times, Z, empty and non-paid statuses, duplicates: a realistic export,
    paid over the 400 days that end 20 days before the clock's today (none in the future)."""
    rng = random.Random(seed)
    start = local_day(-420)
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
    return asyncio.run(read_state(url))


async def read_state(url: str) -> dict[str, list[tuple[Any, ...]]]:
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


async def receive_live(url: str, events: list[dict[str, Any]]) -> None:
    """What the live consumer does with order.paid events (the real handler, one transaction)."""
    engine = create_engine(url)
    try:
        await migrate(engine, SPEC)
        async with session_factory(engine)() as session, session.begin():
            await apply_order_events(session, [parse_event(e) for e in events])
    finally:
        await engine.dispose()
