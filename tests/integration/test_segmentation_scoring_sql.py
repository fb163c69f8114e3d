"""The score computed in SQL (adapters/scoring_sql.py) equals the pure domain rules it is built
from (domain/rfm.score and domain/lifecycle.next_recency_change) on random configurations,
customers, instants (over the two years before the clock's now) and time zones (with and without
DST), on SQLite and PostgreSQL."""

from __future__ import annotations

import random
from datetime import timedelta
from pathlib import Path

from sqlalchemy import BigInteger, Column, Integer, MetaData, Table, insert, select

from services.segmentation.adapters.scoring_sql import ScoreSql
from services.segmentation.domain.lifecycle import next_recency_change
from services.segmentation.domain.rfm import TIERS, Boundaries, Split, score
from shared import clock
from shared.db import UTCDateTime, create_engine
from tests.conftest import Backend

ZONES = ["Asia/Shanghai", "America/New_York", "Europe/London", "UTC", "Australia/Lord_Howe"]
metadata = MetaData()
cases = Table(
    "scoring_cases",
    metadata,
    Column("i", Integer, primary_key=True),
    Column("last", UTCDateTime),
    Column("f", Integer),
    Column("m", BigInteger),
)


def ascending(rng: random.Random, n: int, low: float, high: float, integral: bool) -> tuple[float, ...]:
    picks = (
        sorted(rng.sample(range(int(low), int(high)), n))
        if integral
        else sorted(round(rng.uniform(low, high), 1) for _ in range(n))
    )
    return tuple(float(p) for p in picks)


async def test_sql_scores_equal_the_domain_rules(backend: Backend, tmp_path: Path) -> None:
    url = backend.database_url("segmentation") or f"sqlite+aiosqlite:///{tmp_path}/cases.sqlite"
    rng = random.Random(20261124)
    start = clock.now() - timedelta(days=730)  # the instants scored: any in the last two years
    engine = create_engine(url)
    checked = 0
    try:
        async with engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
            if conn.dialect.name == "postgresql":
                from shared.db import PG_DAY_START_PLUS

                await conn.exec_driver_sql(PG_DAY_START_PLUS)
        for _ in range(30):
            levels = rng.choice([3, 5])
            bounds = Boundaries(
                ascending(rng, levels - 1, 1, 400, rng.random() < 0.7),
                ascending(rng, levels - 1, 1, 12, True),
                ascending(rng, levels - 1, 100, 300_000, rng.random() < 0.5),
            )
            split = Split(rng.uniform(0, 300), rng.uniform(0, 8), rng.uniform(0, 200_000))
            overrides = {
                f"{rng.randint(1, 3)}-{rng.randint(1, 3)}-{rng.randint(1, 3)}": rng.choice(TIERS)
                for _ in range(rng.randint(0, 6))
            }
            tz = rng.choice(ZONES)
            now = start + timedelta(seconds=rng.randint(0, 730 * 86400))
            sql = ScoreSql(bounds, split, levels, overrides, tz, now)
            # Half anywhere, half on the edges: a local midnight around a boundary, or just before.
            edges = [int(b) + d for b in (*bounds.recency_days, split.recency_days) for d in (-1, 0, 1)]
            lasts = [now - timedelta(seconds=rng.randint(-3 * 86400, 500 * 86400)) for _ in range(30)]
            lasts += [sql._before(rng.choice(edges)) - timedelta(microseconds=rng.choice([0, 0, 1])) for _ in range(30)]
            values = [(rng.randint(0, 14), rng.randint(0, 400_000)) for _ in range(60)]
            for k in range(0, 60, 3):  # F and M on their boundaries too
                values[k] = (int(rng.choice(bounds.frequency)), int(rng.choice(bounds.monetary_fen)))
            rows = [
                {"i": i, "last": last, "f": f, "m": m}
                for i, (last, (f, m)) in enumerate(zip(lasts, values, strict=True))
            ]
            r, f, m = sql.r_level(cases.c.last), sql.f_level(cases.c.f), sql.m_level(cases.c.m)
            cell = ScoreSql.cell(r, f, m)
            q = select(
                cases.c.i,
                r,
                f,
                m,
                cell,
                sql.tier(cell),
                sql.rfm_class(cases.c.last, cases.c.f, cases.c.m),
                sql.recency_change_at(cases.c.last),
            ).order_by(cases.c.i)
            async with engine.begin() as conn:
                await conn.execute(cases.delete())
                await conn.execute(insert(cases), rows)
                got = (await conn.execute(q)).all()
            thresholds = (*bounds.recency_days, split.recency_days)
            for row, case in zip(got, rows, strict=True):
                days = (now.astimezone(sql.zone).date() - case["last"].astimezone(sql.zone).date()).days
                want = score(
                    days, case["f"], case["m"], boundaries=bounds, levels=levels, split=split, tier_overrides=overrides
                )
                moment = next_recency_change(case["last"], now, tz, thresholds)
                assert tuple(row[1:]) == (
                    want.r_level,
                    want.f_level,
                    want.m_level,
                    want.cell,
                    want.tier,
                    want.rfm_class.code,
                    moment,
                ), (case, tz, now, bounds, split)
                checked += 1
    finally:
        await engine.dispose()
    assert checked == 30 * 60
