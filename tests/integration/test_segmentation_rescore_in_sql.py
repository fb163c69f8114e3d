"""A configuration change that moves only boundaries, tiers or the class split is re-scored in SQL
(levels, cell, tier, class and the recency moment; F, M and tags as stored). It must store exactly
what the whole Python path stores for the same configuration, and announce exactly the customers
whose cell, tier or class moved: checked here by re-scoring through the whole path afterwards,
which must find nothing to change, on SQLite and PostgreSQL, in a zone with and without DST. The
clock stands still while a test runs, so the two paths score at the same instant. (That a change
of period or lifecycle takes the whole path is tests/unit/test_rescore_in_sql.py.)"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import delete, func, select, update

from services.segmentation.adapters.tables import messaging, rescore_jobs, segments
from services.segmentation.domain.config import RfmConfig
from services.segmentation.service_layer import segments as seg
from services.segmentation.service_layer.rfm import save_config
from shared.clock import ManualClock
from shared.events import parse_event
from shared.runtime import ServiceRuntime
from tests.conftest import Backend
from tests.segmentation_history import MERCHANT, feed, generate_history, segmentation

CONFIGS = {
    "fixed-3": {
        "levels": 3,
        "boundaries": {
            "mode": "fixed",
            "recency_days": [30, 120],
            "frequency": [2, 4],
            "monetary_fen": [30_000, 90_000],
        },
        "class_split": {"mode": "fixed", "recency_days": 60, "frequency": 3, "monetary_fen": 50_000},
    },
    "fixed-5-overrides": {
        "levels": 5,
        "boundaries": {
            "mode": "fixed",
            "recency_days": [7, 30, 60, 180],
            "frequency": [2, 3, 5, 8],
            "monetary_fen": [10_000, 30_000, 60_000, 120_000],
        },
        "tier_overrides": {"3-1-3": "A", "1-3-3": "S", "2-2-2": "C"},
    },
    "quantile-5": {"levels": 5},
}
ZONES = ["Asia/Shanghai", "America/New_York"]


async def run_job(rt: ServiceRuntime, job_id: str) -> dict[str, Any]:
    more = True
    while more:
        async with rt.sessions() as session, session.begin():
            more = await seg.run_rescore_step(session, job_id)
    async with rt.sessions() as session:
        return dict((await session.execute(select(rescore_jobs).where(rescore_jobs.c.job_id == job_id))).one()._mapping)


async def stored(rt: ServiceRuntime) -> dict[str, tuple[Any, ...]]:
    async with rt.sessions() as session:
        rows = await session.execute(
            select(
                segments.c.customer_id,
                *[segments.c[f] for f in seg.FIELDS],
                segments.c.frequency,
                segments.c.monetary_fen,
                segments.c.tags,
                segments.c.next_change_at,
            ).where(segments.c.merchant_id == MERCHANT)
        )
        return {r[0]: tuple(r[1:]) for r in rows}


async def announced(rt: ServiceRuntime, version: int) -> dict[str, Any]:
    async with rt.sessions() as session:
        payloads = (await session.execute(select(messaging.outbox.c.payload))).scalars()
        events = [parse_event(p) for p in payloads]
    return {e.customer_id: e for e in events if e.type == "segment.changed" and e.data.config_version == version}


@pytest.mark.parametrize("zone", ZONES)
@pytest.mark.parametrize("name", list(CONFIGS))
async def test_a_rescore_in_sql_stores_and_announces_what_the_whole_path_would(
    backend: Backend,
    tmp_path: Path,
    name: str,
    zone: str,
    monkeypatch: pytest.MonkeyPatch,
    frozen_clock: ManualClock,
) -> None:
    monkeypatch.setattr(seg, "SCORES_CHUNK", 70)  # several steps, the last one partial
    now = frozen_clock.now()
    events = generate_history(300, 4242, start=now - timedelta(days=420), days=415)
    async with segmentation(tmp_path, backend.database_url("segmentation")) as rt:
        async with rt.sessions() as session, session.begin():
            await session.execute(
                messaging.merchants.insert().values(
                    merchant_id=MERCHANT, name="m", timezone=zone, jwt_secret=b"s" * 32, active=True, updated_at=now
                )
            )
        await feed(rt, [events[i : i + 400] for i in range(0, len(events), 400)])  # scored as they arrive
        # A few rows whose moment has come and gone unswept: their stored F and M are stale, and the
        # job must re-score them through the whole path, not trust them.
        async with rt.sessions() as session, session.begin():
            stale = list(
                (
                    await session.execute(
                        select(segments.c.customer_id)
                        .where(segments.c.tier.isnot(None))
                        .order_by(segments.c.customer_id)
                        .limit(5)
                    )
                ).scalars()
            )
            await session.execute(
                update(segments)
                .where(segments.c.customer_id.in_(stale))
                .values(frequency=segments.c.frequency + 7, next_change_at=now - timedelta(minutes=1))
            )
        before = await stored(rt)
        assert len(before) > 200

        async with rt.sessions() as session, session.begin():
            version = await save_config(session, MERCHANT, RfmConfig.model_validate(CONFIGS[name]), zone)
            job_id = await seg.start_rescore(session, MERCHANT, version, config_change=True)
        job = await run_job(rt, job_id)
        assert job["mode"] == "scores" and job["status"] == "done"
        with_tier = sum(1 for v in before.values() if v[4] is not None)
        assert (job["total"], job["done"]) == (with_tier, with_tier)
        in_sql = await stored(rt)
        moved = {c for c, v in in_sql.items() if v[3:6] != before[c][3:6]}  # cell, tier, class
        said = await announced(rt, version)
        assert set(said) == moved and job["changed"] == len(moved) and moved
        for c, e in said.items():
            assert e.data.before == {
                **dict(zip(seg.FIELDS, before[c][:6], strict=True)),
                "tags": orjson.loads(before[c][8]),
            }
            assert e.data.after == {
                **dict(zip(seg.FIELDS, in_sql[c][:6], strict=True)),
                "tags": orjson.loads(in_sql[c][8]),
            }

        # The whole path, same configuration: nothing left to change, not even a moment.
        async with rt.sessions() as session, session.begin():
            await session.execute(delete(messaging.outbox))
            full_id = await seg.start_rescore(session, MERCHANT, version)
        full = await run_job(rt, full_id)
        assert full["mode"] == "full" and full["changed"] == 0 and await announced(rt, version) == {}
        assert await stored(rt) == in_sql


@pytest.mark.parametrize("zone", ZONES)
async def test_the_sweep_leaves_what_a_whole_rescore_at_that_moment_would(
    backend: Backend, tmp_path: Path, zone: str, frozen_clock: ManualClock
) -> None:
    """Days later, the sweep re-scores the due rows (those whose only moment was recency in SQL,
    the others through the whole path); a whole re-score of everyone at that moment then finds
    nothing to change or announce, and a second sweep nothing due."""
    now = frozen_clock.now()
    events = generate_history(300, 99, start=now - timedelta(days=420), days=415)
    async with segmentation(tmp_path, backend.database_url("segmentation")) as rt:
        async with rt.sessions() as session, session.begin():
            await session.execute(
                messaging.merchants.insert().values(
                    merchant_id=MERCHANT, name="m", timezone=zone, jwt_secret=b"s" * 32, active=True, updated_at=now
                )
            )
            await save_config(session, MERCHANT, RfmConfig.model_validate(CONFIGS["fixed-3"]), zone)
        await feed(rt, [events[i : i + 400] for i in range(0, len(events), 400)])
        later = now + timedelta(days=17, hours=5)
        async with rt.sessions() as session:
            due = (
                await session.execute(
                    select(func.count()).select_from(segments).where(segments.c.next_change_at <= later)
                )
            ).scalar_one()
        assert due > 20
        swept = seg.JOB_CHUNK
        while swept == seg.JOB_CHUNK:
            async with rt.sessions() as session, session.begin():
                swept = await seg.sweep(session, later)
        after_sweep = await stored(rt)
        async with rt.sessions() as session, session.begin():
            await session.execute(delete(messaging.outbox))
            scoring = await seg.scoring_for(session, MERCHANT, zone)
            ids = list((await session.execute(select(segments.c.customer_id))).scalars())
            assert await seg.rescore(session, MERCHANT, ids, scoring, later) == 0
        assert await stored(rt) == after_sweep
        async with rt.sessions() as session, session.begin():
            assert await seg.sweep(session, later) == 0
