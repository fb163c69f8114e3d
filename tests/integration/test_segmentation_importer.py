"""The CSV importer on PostgreSQL: the same file imported into PostgreSQL and into SQLite (each
after the same order received live) stores exactly the same orders and customers. The rest of the
importer's behaviour is tested on SQLite in tests/unit/test_importer.py."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from services.segmentation.entrypoints.importer import ImportResult, import_orders
from tests.factories import order_paid
from tests.order_imports import generated_rows, receive_live, sqlite_url, state, write_csv

pytestmark = [pytest.mark.postgres]


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
