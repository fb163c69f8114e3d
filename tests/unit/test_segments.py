"""Stored segments of an imported history: the import queues one re-scoring job for its
customers, and the worker scores them. (Scoring as orders arrive, re-scoring after a configuration
change and the summary, on both stacks, are tests/integration/test_segmentation_segments.py.)"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select

from services.embedded import build_embedded_app
from services.segmentation.adapters.tables import rescore_jobs, segments
from services.segmentation.entrypoints.importer import import_orders
from shared import clock
from tests.conftest import embedded_settings, running
from tests.factories import eventually

KEY = "fg_segments_key"
H = {"X-Api-Key": KEY}


async def test_an_imported_history_is_queued_for_scoring_and_scored(tmp_path: Path) -> None:
    csv_path = tmp_path / "orders.csv"
    paid = (clock.now() - timedelta(days=3)).isoformat()
    csv_path.write_text(
        "order_id,customer_id,paid_at,amount_fen\n" + "".join(f"o-{i},c-{i % 7},{paid},{1000 + i}\n" for i in range(50))
    )
    settings = embedded_settings(tmp_path, bootstrap_api_key=KEY)
    app = build_embedded_app(settings, announce=False)
    async with running(app) as client:
        url = settings.database_url("segmentation")
        await asyncio.to_thread(import_orders, csv_path, "demo", database_url=url)
        rt = app.state.runtimes["segmentation"]
        async with rt.sessions() as session:
            jobs = (await session.execute(select(rescore_jobs.c.total))).scalars().all()
        assert jobs == [7]

        async def scored() -> int:
            async with rt.sessions() as session:
                return len((await session.execute(select(segments.c.customer_id))).all())

        assert await eventually(scored, lambda n: n == 7) == 7
        assert (await client.get("/v1/segments/summary", headers=H)).json()["customers"] == 7
