"""Use cases of RFM scoring: the merchant's configuration (versioned), the statistics that
quantile boundaries and the average split need, and one customer's explained score."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import and_, func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from services.segmentation.adapters.aggregates import counts
from services.segmentation.adapters.tables import customers, orders, rfm_configs, rfm_stats
from services.segmentation.domain.config import RfmConfig
from services.segmentation.domain.rfm import Boundaries, Score, Split, quantile_bounds, score
from services.segmentation.domain.stats import recency_days
from shared import clock
from shared.db import in_values

STATS_MAX_AGE = timedelta(hours=24)


@dataclass(frozen=True, slots=True)
class Values:
    recency_days: int | None
    frequency: int
    monetary_fen: int
    first_order_at: datetime | None
    last_order_at: datetime | None
    paid_orders: int = 0  # all history (F is over the period)
    oldest_in_period: datetime | None = None  # the next order to leave the period


@dataclass(frozen=True, slots=True)
class Stats:
    config_version: int
    computed_at: datetime
    customers: int
    boundaries: dict[int, Boundaries]  # quantile boundaries for 3 and 5 levels
    averages: Split

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "customers": self.customers,
                "boundaries": {
                    str(k): {"recency_days": b.recency_days, "frequency": b.frequency, "monetary_fen": b.monetary_fen}
                    for k, b in self.boundaries.items()
                },
                "averages": {
                    "recency_days": self.averages.recency_days,
                    "frequency": self.averages.frequency,
                    "monetary_fen": self.averages.monetary_fen,
                },
            }
        )

    @classmethod
    def from_row(cls, row: Any) -> Stats:
        body = orjson.loads(row.body)
        return cls(
            config_version=row.config_version,
            computed_at=row.computed_at,
            customers=body["customers"],
            boundaries={
                int(k): Boundaries(tuple(v["recency_days"]), tuple(v["frequency"]), tuple(v["monetary_fen"]))
                for k, v in body["boundaries"].items()
            },
            averages=Split(**body["averages"]),
        )


async def current_config(session: AsyncSession | AsyncConnection, merchant_id: str) -> tuple[int, RfmConfig]:
    """(version, configuration) in force; version 0 is the default nobody saved."""
    row = (
        await session.execute(
            select(rfm_configs.c.version, rfm_configs.c.body)
            .where(rfm_configs.c.merchant_id == merchant_id)
            .order_by(rfm_configs.c.version.desc())
            .limit(1)
        )
    ).first()
    if row is None:
        return 0, RfmConfig()
    return row.version, RfmConfig.model_validate_json(row.body)


async def save_config(session: AsyncSession, merchant_id: str, config: RfmConfig, tz: str) -> int:
    """Store a new version and the statistics it needs (in the caller's transaction)."""
    version, _ = await current_config(session, merchant_id)
    version += 1
    await session.execute(
        rfm_configs.insert().values(
            merchant_id=merchant_id,
            version=version,
            body=config.model_dump_json(),
            created_at=clock.now(),
        )
    )
    if needs_stats(config):
        await refresh_stats(session, merchant_id, version, config, tz)
    return version


def needs_stats(config: RfmConfig) -> bool:
    """Whether scoring under this configuration depends on the merchant's statistics
    (quantile boundaries, or the class split at the averages)."""
    return config.fixed() is None or config.class_split.mode == "average"


async def customer_values(
    session: AsyncSession, merchant_id: str, customer_ids: list[str] | None, config: RfmConfig, tz: str, now: datetime
) -> dict[str, Values]:
    """R, F, M of the given customers (all when None) under the configuration's period."""
    c = customers
    where = [c.c.merchant_id == merchant_id, c.c.last_order_at.isnot(None)]
    if customer_ids is not None:
        where.append(in_values(c.c.customer_id, customer_ids))
    rows = (
        await session.execute(
            select(c.c.customer_id, c.c.paid_orders, c.c.paid_amount_fen, c.c.first_order_at, c.c.last_order_at).where(
                *where
            )
        )
    ).all()
    period: dict[str, tuple[int, int, datetime | None]] | None = None  # F, M and the oldest order in the period
    if config.period_days is not None and rows:
        since = now - timedelta(days=config.period_days)
        o = orders
        q = (
            select(o.c.customer_id, func.count(), func.sum(o.c.amount_fen - o.c.refunded_fen), func.min(o.c.paid_at))
            .where(o.c.merchant_id == merchant_id, counts(o), o.c.paid_at >= since)
            .group_by(o.c.customer_id)
        )
        if customer_ids is not None:
            q = q.where(in_values(o.c.customer_id, customer_ids))
        period = {r[0]: (int(r[1]), int(r[2] or 0), r[3]) for r in await session.execute(q)}
    out: dict[str, Values] = {}
    for r in rows:
        f, m, oldest = (
            (r.paid_orders, r.paid_amount_fen, None) if period is None else period.get(r.customer_id, (0, 0, None))
        )
        out[r.customer_id] = Values(
            recency_days(r.last_order_at, now, tz), f, m, r.first_order_at, r.last_order_at, r.paid_orders, oldest
        )
    return out


async def refresh_stats(
    session: AsyncSession, merchant_id: str, version: int, config: RfmConfig, tz: str, now: datetime | None = None
) -> Stats:
    now = now or clock.now()
    values = list((await customer_values(session, merchant_id, None, config, tz, now)).values())
    rec = sorted(float(v.recency_days or 0) for v in values)
    freq = sorted(float(v.frequency) for v in values)
    mon = sorted(float(v.monetary_fen) for v in values)
    n = len(values)
    stats = Stats(
        config_version=version,
        computed_at=now,
        customers=n,
        boundaries={
            lv: Boundaries(quantile_bounds(rec, lv), quantile_bounds(freq, lv), quantile_bounds(mon, lv))
            for lv in (3, 5)
        },
        averages=Split(sum(rec) / n if n else 0.0, sum(freq) / n if n else 0.0, sum(mon) / n if n else 0.0),
    )
    await session.execute(rfm_stats.delete().where(rfm_stats.c.merchant_id == merchant_id))
    await session.execute(
        rfm_stats.insert().values(
            merchant_id=merchant_id, config_version=version, body=stats.to_json().decode(), computed_at=now
        )
    )
    return stats


def stats_current(stats: Stats, version: int, config: RfmConfig, now: datetime) -> bool:
    """Whether stored statistics may be used as they are: always when the configuration does not
    score with them (they are only reported), else when made for this version and fresh."""
    return not needs_stats(config) or (stats.config_version == version and now - stats.computed_at < STATS_MAX_AGE)


async def stats_for(session: AsyncSession, merchant_id: str, version: int, config: RfmConfig, tz: str) -> Stats:
    """The stored statistics, recomputed when missing, or when the configuration scores with
    them and they are stale or made for another version (in the caller's transaction: the
    caller commits)."""
    return (await _stats_for(session, merchant_id, version, config, tz))[0]


async def _stats_for(
    session: AsyncSession, merchant_id: str, version: int, config: RfmConfig, tz: str
) -> tuple[Stats, bool]:
    """stats_for, and whether it wrote (recomputed) them."""
    row = (await session.execute(select(rfm_stats).where(rfm_stats.c.merchant_id == merchant_id))).first()
    if row is not None:
        stats = Stats.from_row(row)
        if stats_current(stats, version, config, clock.now()):
            return stats, False
    return await refresh_stats(session, merchant_id, version, config, tz), True


def applied(config: RfmConfig, stats: Stats) -> tuple[Boundaries, Split]:
    """The boundaries and class split a configuration applies: its own numbers where it sets
    them, the merchant's statistics (quantiles, averages) where it does not."""
    bounds = config.fixed() or stats.boundaries[config.levels]
    split = stats.averages if config.class_split.mode == "average" else config.class_split.as_split()
    return bounds, split


@dataclass(frozen=True, slots=True)
class Explained:
    values: Values
    score: Score | None
    boundaries: Boundaries
    split: Split
    version: int
    config: RfmConfig
    stats: Stats
    wrote: bool = False  # the statistics were recomputed on the way: the caller commits to keep them


async def explain_customer(session: AsyncSession, merchant_id: str, customer_id: str, tz: str) -> Explained | None:
    """One customer's R, F, M computed from their orders now and scored under the configuration in
    force (the statistics recomputed first when they must be)."""
    version, config = await current_config(session, merchant_id)
    now = clock.now()
    found = await customer_values(session, merchant_id, [customer_id], config, tz, now)
    if customer_id not in found:
        return None
    stats, wrote = await _stats_for(session, merchant_id, version, config, tz)
    bounds, split = applied(config, stats)
    v = found[customer_id]
    s = score(
        v.recency_days or 0,
        v.frequency,
        v.monetary_fen,
        boundaries=bounds,
        levels=config.levels,
        split=split,
        tier_overrides=config.tier_overrides,
    )
    return Explained(v, s, bounds, split, version, config, stats, wrote)


@dataclass(frozen=True, slots=True)
class SegmentCounts:
    """A merchant's stored segments counted per cell, tier and class, and the customers behind
    the repurchase rate: what the summary answers and a daily snapshot keeps."""

    config_version: int
    cells: dict[str, int]  # every cell of the configuration's levels listed
    tiers: dict[str, int]
    classes: dict[str, int]  # by class code
    buying: int  # customers with 1+ paid orders in the period
    repeat: int  # ... with 2+

    @property
    def customers(self) -> int:
        return sum(self.tiers.values())

    @property
    def repurchase_rate(self) -> float:
        return repurchase_rate(self.repeat, self.buying)


def repurchase_rate(repeat: int, buying: int) -> float:
    return round(repeat / buying, 4) if buying else 0.0


def class_names() -> dict[str, dict[str, str]]:
    from services.segmentation.domain.rfm import CLASSES

    return {c.code: {"zh_cn": c.zh_cn, "en": c.en} for c in CLASSES.values()}


async def segment_counts(session: AsyncSession, merchant_id: str, now: datetime) -> SegmentCounts:
    """Count the merchant's stored segments (GROUP BY in the database) under the configuration
    in force, the repurchase rate's period ending ``now``."""
    from itertools import product

    from services.segmentation.adapters.tables import segments
    from services.segmentation.domain.rfm import CLASSES, TIERS

    version, config = await current_config(session, merchant_id)
    sg = segments
    mine = and_(sg.c.merchant_id == merchant_id, sg.c.tier.isnot(None))  # rows with tags only have no tier
    levels = range(1, config.levels + 1)
    cells = {f"{r}-{f}-{m}": 0 for r, f, m in product(levels, levels, levels)}
    tiers = dict.fromkeys(TIERS, 0)
    classes = {c.code: 0 for c in CLASSES.values()}
    # One statement, so that cells, tiers and classes count the same rows while the consumer
    # keeps scoring (three statements could each see another moment).
    for cell, tier, klass, n in await session.execute(
        select(sg.c.cell, sg.c.tier, sg.c.rfm_class, func.count())
        .where(mine)
        .group_by(sg.c.cell, sg.c.tier, sg.c.rfm_class)
    ):
        cells[cell] = cells.get(cell, 0) + int(n)
        tiers[tier] = tiers.get(tier, 0) + int(n)
        classes[klass] = classes.get(klass, 0) + int(n)
    if config.period_days is None:
        c = customers
        buying, repeat = (
            await session.execute(
                select(func.count().filter(c.c.paid_orders >= 1), func.count().filter(c.c.paid_orders >= 2)).where(
                    c.c.merchant_id == merchant_id
                )
            )
        ).one()
    else:
        o = orders
        since = now - timedelta(days=config.period_days)
        per = (
            select(func.count().label("n"))
            .where(o.c.merchant_id == merchant_id, counts(o), o.c.paid_at >= since)
            .group_by(o.c.customer_id)
            .subquery()
        )
        buying, repeat = (await session.execute(select(func.count(), func.count().filter(per.c.n >= 2)))).one()
    return SegmentCounts(version, cells, tiers, classes, int(buying or 0), int(repeat or 0))


async def summary(session: AsyncSession, merchant_id: str, now: datetime | None = None) -> dict[str, Any]:
    """Counts of stored segments per cell, tier and class, and the repurchase rate."""
    n = await segment_counts(session, merchant_id, now or clock.now())
    return {
        "config_version": n.config_version,
        "customers": n.customers,
        "cells": n.cells,
        "tiers": n.tiers,
        "classes": n.classes,
        "class_names": class_names(),
        "repurchase_rate": n.repurchase_rate,
        "repeat_customers": n.repeat,
        "buying_customers": n.buying,
    }
