"""Stored segments: score customers, keep what changed, and say so with segment.changed.

Customers are scored where their aggregates change (the consumer, per batch) and all at once
after a configuration change or a statistics refresh (a resumable background job). Both go
through ``rescore``, which compares with the stored segment and writes and announces only the
customers whose segment changed, so running it twice changes nothing the second time."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import structlog
from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.segmentation.adapters.tables import customers, messaging, rescore_jobs, rfm_stats, segments
from services.segmentation.domain.config import RfmConfig
from services.segmentation.domain.rfm import Boundaries, Split, score
from services.segmentation.service_layer.rfm import Stats, current_config, customer_values, refresh_stats
from shared.db import bulk_insert
from shared.events import OutboundEvent
from shared.outbox import Outbox

log = structlog.get_logger("fugou.segmentation")
outbox = Outbox(messaging.outbox)
FIELDS = ("r_level", "f_level", "m_level", "cell", "tier", "rfm_class")
JOB_CHUNK = 5000
STATS_REFRESH = timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class Scoring:
    version: int
    config: RfmConfig
    stats: Stats
    bounds: Boundaries
    split: Split
    tz: str


async def merchant_timezone(session: AsyncSession, merchant_id: str) -> str:
    m = messaging.merchants
    tz = (await session.execute(select(m.c.timezone).where(m.c.merchant_id == merchant_id))).scalar()
    return tz or "Asia/Shanghai"


async def scoring_for(session: AsyncSession, merchant_id: str, tz: str) -> Scoring:
    """The configuration in force and the last statistics (computed now if there are none)."""
    version, config = await current_config(session, merchant_id)
    row = (await session.execute(select(rfm_stats).where(rfm_stats.c.merchant_id == merchant_id))).first()
    stats = Stats.from_row(row) if row is not None else await refresh_stats(session, merchant_id, version, config, tz)
    bounds = config.fixed() or stats.boundaries[config.levels]
    split = stats.averages if config.class_split.mode == "average" else config.class_split.as_split()
    return Scoring(version, config, stats, bounds, split, tz)


def _view(row: Any) -> dict[str, Any]:
    return {f: getattr(row, f) if not isinstance(row, dict) else row[f] for f in FIELDS}


async def rescore(session: AsyncSession, merchant_id: str, customer_ids: list[str], scoring: Scoring,
                  now: datetime) -> int:
    """Score these customers, store and announce the segments that changed; return how many."""
    if not customer_ids:
        return 0
    values = await customer_values(session, merchant_id, customer_ids, scoring.config, scoring.tz, now)
    old = {r.customer_id: _view(r) for r in await session.execute(
        select(segments.c.customer_id, *[segments.c[f] for f in FIELDS])
        .where(segments.c.merchant_id == merchant_id, segments.c.customer_id.in_(customer_ids)))}
    cfg = scoring.config
    rows, events, gone = [], [], []
    for cid in customer_ids:
        v = values.get(cid)
        before = old.get(cid)
        if v is None:
            if before is not None:  # no paid order left (refunded, cancelled): no segment
                gone.append(cid)
                events.append(_changed(merchant_id, cid, before, None, scoring.version))
            continue
        s = score(v.recency_days or 0, v.frequency, v.monetary_fen, boundaries=scoring.bounds, levels=cfg.levels,
                  split=scoring.split, tier_overrides=cfg.tier_overrides)
        after = {"r_level": s.r_level, "f_level": s.f_level, "m_level": s.m_level, "cell": s.cell, "tier": s.tier,
                 "rfm_class": s.rfm_class.code}
        if after != before:
            rows.append((merchant_id, cid, scoring.version, s.r_level, s.f_level, s.m_level, s.cell, s.tier,
                         s.rfm_class.code, now))
            events.append(_changed(merchant_id, cid, before, after, scoring.version))
    if rows:
        await bulk_insert(session, segments, ["merchant_id", "customer_id", "config_version", *FIELDS, "scored_at"],
                          rows, conflict=["merchant_id", "customer_id"],
                          update={c: f"excluded.{c}" for c in ("config_version", *FIELDS, "scored_at")})
    if gone:
        await session.execute(delete(segments).where(segments.c.merchant_id == merchant_id,
                                                     segments.c.customer_id.in_(gone)))
    await outbox.stage(session, events)
    return len(events)


def _changed(merchant_id: str, customer_id: str, before: dict[str, Any] | None, after: dict[str, Any] | None,
             version: int) -> OutboundEvent:
    return OutboundEvent("segment.changed", merchant_id, customer_id=customer_id,
                         data={"before": before, "after": after, "config_version": version})


# ---------------------------------------------------------------- the re-scoring job


async def start_rescore(session: AsyncSession, merchant_id: str, version: int) -> str:
    """Queue a re-score of every customer (in the caller's transaction)."""
    total = (await session.execute(select(func.count()).select_from(customers).where(
        customers.c.merchant_id == merchant_id))).scalar_one()
    job_id = str(uuid.uuid4())
    await session.execute(rescore_jobs.insert().values(
        job_id=job_id, merchant_id=merchant_id, config_version=version, status="pending", total=total, done=0,
        changed=0, cursor=None, created_at=datetime.now(timezone.utc)))
    return job_id


async def run_rescore_step(session: AsyncSession, job_id: str) -> bool:
    """Re-score the job's next chunk and record progress, in one transaction. False when done."""
    job = (await session.execute(select(rescore_jobs).where(rescore_jobs.c.job_id == job_id))).one()
    if job.status in ("done", "superseded"):
        return False
    newer = (await session.execute(select(func.count()).select_from(rescore_jobs).where(
        rescore_jobs.c.merchant_id == job.merchant_id, rescore_jobs.c.created_at > job.created_at,
        rescore_jobs.c.status != "superseded"))).scalar_one()
    now = datetime.now(timezone.utc)
    if newer:  # a later configuration re-scores everyone anyway
        await session.execute(update(rescore_jobs).where(rescore_jobs.c.job_id == job_id)
                              .values(status="superseded", finished_at=now))
        return False
    q = select(customers.c.customer_id).where(customers.c.merchant_id == job.merchant_id)
    if job.cursor is not None:
        q = q.where(customers.c.customer_id > job.cursor)
    ids = list((await session.execute(q.order_by(customers.c.customer_id).limit(JOB_CHUNK))).scalars())
    tz = await merchant_timezone(session, job.merchant_id)
    changed = await rescore(session, job.merchant_id, ids, await scoring_for(session, job.merchant_id, tz), now)
    finished = len(ids) < JOB_CHUNK
    await session.execute(update(rescore_jobs).where(rescore_jobs.c.job_id == job_id).values(
        status="done" if finished else "running", done=job.done + len(ids), changed=job.changed + changed,
        cursor=ids[-1] if ids else job.cursor, finished_at=now if finished else None))
    return not finished


async def refresh_due_stats(session: AsyncSession, now: datetime) -> list[str]:
    """Recompute statistics older than STATS_REFRESH for merchants whose boundaries or split
    depend on them, and queue a re-score for each (quantiles move as customers do)."""
    due = []
    rows = (await session.execute(select(rfm_stats.c.merchant_id).where(
        rfm_stats.c.computed_at < now - STATS_REFRESH))).scalars().all()
    for merchant_id in rows:
        version, config = await current_config(session, merchant_id)
        if config.fixed() is not None and config.class_split.mode == "fixed":
            continue
        tz = await merchant_timezone(session, merchant_id)
        await refresh_stats(session, merchant_id, version, config, tz, now)
        due.append(await start_rescore(session, merchant_id, version))
    return due


async def rescore_worker(sessions: async_sessionmaker[AsyncSession], poll_s: float = 1.0) -> None:
    """Background: run pending re-score jobs chunk by chunk, and refresh statistics hourly.
    Each step commits its progress, so a restart resumes where it stopped."""
    last_refresh = datetime.min.replace(tzinfo=timezone.utc)
    while True:
        try:
            now = datetime.now(timezone.utc)
            if now - last_refresh > timedelta(minutes=5):
                async with sessions() as session, session.begin():
                    await refresh_due_stats(session, now)
                last_refresh = now
            async with sessions() as session:
                pending = list((await session.execute(
                    select(rescore_jobs.c.job_id).where(rescore_jobs.c.status.in_(("pending", "running")))
                    .order_by(rescore_jobs.c.created_at))).scalars())
            for job_id in pending:
                more = True
                while more:
                    async with sessions() as session, session.begin():
                        more = await run_rescore_step(session, job_id)
            if not pending:
                await asyncio.sleep(poll_s)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the database may be down: try again later, nothing is lost
            log.warning("segmentation.rescore_worker_failed", error=repr(exc))
            await asyncio.sleep(poll_s * 5)
