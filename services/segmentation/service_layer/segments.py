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

import orjson
import structlog
from pydantic import TypeAdapter
from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.segmentation.adapters.audience_sql import Compiler
from services.segmentation.adapters.tables import (
    behaviours,
    customer_categories,
    customer_tags,
    customers,
    messaging,
    rescore_jobs,
    rfm_stats,
    segments,
    tag_rules,
)
from services.segmentation.domain.audience import Filter
from services.segmentation.domain.config import RfmConfig
from services.segmentation.domain.lifecycle import CategoryHistory, TagInputs, lifecycle_tags, next_recency_change
from services.segmentation.domain.rfm import Boundaries, Split, score
from services.segmentation.service_layer.rfm import (
    Stats,
    applied,
    current_config,
    customer_values,
    refresh_stats,
)
from shared.db import bulk_insert, in_values
from shared.events import OutboundEvent
from shared.outbox import Outbox

log = structlog.get_logger("fugou.segmentation")
outbox = Outbox(messaging.outbox)
FIELDS = ("r_level", "f_level", "m_level", "cell", "tier", "rfm_class")
JOB_CHUNK = 5000
STATS_REFRESH = timedelta(hours=1)
_FILTER: TypeAdapter[Any] = TypeAdapter(Filter)
# Set by the API when a tag rule changes, so the worker applies it without waiting a minute.
custom_requested = asyncio.Event()


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
    bounds, split = applied(config, stats)
    return Scoring(version, config, stats, bounds, split, tz)


async def tag_inputs(session: AsyncSession, merchant_id: str, customer_ids: list[str]
                     ) -> tuple[dict[str, datetime], dict[str, list[CategoryHistory]]]:
    """Last interest (cart, favourite) and per-category history of these customers."""
    b, cc = behaviours, customer_categories
    interest = {r[0]: r[1] for r in await session.execute(
        select(b.c.customer_id, func.max(b.c.last_at))
        .where(b.c.merchant_id == merchant_id, in_values(b.c.customer_id, customer_ids)).group_by(b.c.customer_id))}
    cats: dict[str, list[CategoryHistory]] = {}
    for r in await session.execute(select(cc.c.customer_id, cc.c.category, cc.c.orders, cc.c.first_at, cc.c.last_at)
                                   .where(cc.c.merchant_id == merchant_id, in_values(cc.c.customer_id, customer_ids))):
        cats.setdefault(r.customer_id, []).append(CategoryHistory(r.category, r.orders, r.first_at, r.last_at))
    return interest, cats


CUSTOM = "custom:"


async def tag_rule_filters(session: AsyncSession, merchant_id: str) -> dict[str, Any]:
    rows = await session.execute(select(tag_rules.c.name, tag_rules.c.filter).where(
        tag_rules.c.merchant_id == merchant_id))
    return {name: _FILTER.validate_json(body) for name, body in rows}


async def custom_tags(session: AsyncSession, merchant_id: str, customer_ids: list[str], tz: str,
                      now: datetime) -> dict[str, list[str]]:
    """custom:<name> for each of these customers that the merchant's rule <name> selects.
    A rule sees the other tags as of the last scoring (rules do not chain within one pass)."""
    out: dict[str, list[str]] = {}
    rules = await tag_rule_filters(session, merchant_id)
    if not rules:
        return out
    comp = Compiler(merchant_id, now, tz)
    for name, f in rules.items():
        q = comp.select(f).where(in_values(comp.u.c.customer_id, customer_ids))
        for (cid,) in await session.execute(q):
            out.setdefault(cid, []).append(CUSTOM + name)
    return out


async def refresh_custom_tags(session: AsyncSession, now: datetime) -> int:
    """Re-score the customers entering or leaving a custom tag since it was last computed (rules
    may depend on time or on other tables); return how many."""
    touched = 0
    merchants = set((await session.execute(select(tag_rules.c.merchant_id).distinct())).scalars())
    merchants |= set((await session.execute(select(customer_tags.c.merchant_id).where(
        customer_tags.c.tag.like(CUSTOM + "%")).distinct())).scalars())  # rules deleted, holders left
    for merchant_id in merchants:
        tz = await merchant_timezone(session, merchant_id)
        comp = Compiler(merchant_id, now, tz)
        rules = await tag_rule_filters(session, merchant_id)
        moved: set[str] = set()
        for name, f in rules.items():
            want = set((await session.execute(comp.select(f))).scalars())
            have = set((await session.execute(select(customer_tags.c.customer_id).where(
                customer_tags.c.merchant_id == merchant_id, customer_tags.c.tag == CUSTOM + name))).scalars())
            moved |= want ^ have
        # Holders of tags whose rule was deleted.
        stale = select(customer_tags.c.customer_id).where(
            customer_tags.c.merchant_id == merchant_id, customer_tags.c.tag.like(CUSTOM + "%"),
            customer_tags.c.tag.notin_([CUSTOM + n for n in rules]) if rules else customer_tags.c.tag.isnot(None))
        moved |= set((await session.execute(stale)).scalars())
        ids = sorted(moved)
        if ids:
            scoring = await scoring_for(session, merchant_id, tz)
            for i in range(0, len(ids), JOB_CHUNK):
                await rescore(session, merchant_id, ids[i:i + JOB_CHUNK], scoring, now)
        touched += len(ids)
    return touched


def _state(row: Any) -> dict[str, Any]:
    out = {f: getattr(row, f) for f in FIELDS}
    out["tags"] = orjson.loads(row.tags)
    return out


async def rescore(session: AsyncSession, merchant_id: str, customer_ids: list[str], scoring: Scoring,
                  now: datetime) -> int:
    """Score these customers, store what changed (and when time will next change it), announce
    the changed segments; return how many changed."""
    if not customer_ids:
        return 0
    customer_ids = sorted(set(customer_ids))
    cfg = scoring.config
    values = await customer_values(session, merchant_id, customer_ids, cfg, scoring.tz, now)
    interest, cats = await tag_inputs(session, merchant_id, customer_ids)
    custom = await custom_tags(session, merchant_id, customer_ids, scoring.tz, now)
    old = {r.customer_id: (r, _state(r)) for r in await session.execute(
        select(segments.c.customer_id, segments.c.next_change_at, segments.c.tags, segments.c.frequency,
               segments.c.monetary_fen, *[segments.c[f] for f in FIELDS])
        .where(segments.c.merchant_id == merchant_id, in_values(segments.c.customer_id, customer_ids)))}
    thresholds = (*scoring.bounds.recency_days, scoring.split.recency_days)
    rows, events, gone, retag = [], [], [], []
    for cid in customer_ids:
        v = values.get(cid)
        tags, tags_change = lifecycle_tags(TagInputs(
            paid_orders=v.paid_orders if v else 0, first_order_at=v.first_order_at if v else None,
            last_order_at=v.last_order_at if v else None, last_interest_at=interest.get(cid),
            categories=tuple(cats.get(cid, ()))), cfg.lifecycle, now)
        tags = sorted([*tags, *custom.get(cid, ())])
        prev_row, before = old.get(cid, (None, None))
        if v is None and not tags:
            if before is not None:  # no paid order and no tag left: nothing to hold
                gone.append(cid)
                events.append(_changed(merchant_id, cid, before, None, scoring.version))
            continue
        after: dict[str, Any] = dict.fromkeys(FIELDS)
        moments = [tags_change]
        if v is not None:
            sc = score(v.recency_days or 0, v.frequency, v.monetary_fen, boundaries=scoring.bounds,
                       levels=cfg.levels, split=scoring.split, tier_overrides=cfg.tier_overrides)
            after.update(r_level=sc.r_level, f_level=sc.f_level, m_level=sc.m_level, cell=sc.cell, tier=sc.tier,
                         rfm_class=sc.rfm_class.code)
            moments.append(next_recency_change(v.last_order_at, now, scoring.tz, thresholds)
                           if v.last_order_at else None)
            if cfg.period_days is not None and v.oldest_in_period is not None:
                moments.append(v.oldest_in_period + timedelta(days=cfg.period_days))
        after["tags"] = tags
        next_change = min((m for m in moments if m is not None), default=None)
        fm = (v.frequency, v.monetary_fen) if v else (None, None)
        if (after != before or prev_row is None or prev_row.next_change_at != next_change
                or (prev_row.frequency, prev_row.monetary_fen) != fm):
            rows.append((merchant_id, cid, scoring.version, after["r_level"], after["f_level"], after["m_level"],
                         after["cell"], after["tier"], after["rfm_class"], v.frequency if v else None,
                         v.monetary_fen if v else None, orjson.dumps(tags).decode(), next_change, now))
        if after != before:
            events.append(_changed(merchant_id, cid, before, after, scoring.version))
            if before is None or before["tags"] != tags:
                retag.append((cid, tags))
    if rows:
        stored = ("config_version", *FIELDS, "frequency", "monetary_fen", "tags", "next_change_at", "scored_at")
        await bulk_insert(session, segments, ["merchant_id", "customer_id", *stored], rows,
                          conflict=["merchant_id", "customer_id"], update={c: f"excluded.{c}" for c in stored})
    if gone:
        await session.execute(delete(segments).where(segments.c.merchant_id == merchant_id,
                                                     segments.c.customer_id.in_(gone)))
        retag.extend((cid, []) for cid in gone)
    if retag:
        await session.execute(delete(customer_tags).where(customer_tags.c.merchant_id == merchant_id,
                                                          customer_tags.c.customer_id.in_([c for c, _ in retag])))
        await bulk_insert(session, customer_tags, ["merchant_id", "customer_id", "tag"],
                          [(merchant_id, cid, t) for cid, tags in retag for t in tags])
    await outbox.stage(session, events)
    return len(events)


async def sweep(session: AsyncSession, now: datetime, limit: int = JOB_CHUNK) -> int:
    """Re-score the customers whose next_change_at has come (one chunk); return how many were
    looked at. Cost follows the customers crossing a boundary, not all customers; running it again
    finds nothing to do, because each re-scored row gets its next moment."""
    due = (await session.execute(select(segments.c.merchant_id, segments.c.customer_id)
                                 .where(segments.c.next_change_at <= now)
                                 .order_by(segments.c.next_change_at).limit(limit)
                                 .with_for_update(skip_locked=True))).all()  # one sweeper per row
    by_merchant: dict[str, list[str]] = {}
    for merchant_id, customer_id in due:
        by_merchant.setdefault(merchant_id, []).append(customer_id)
    for merchant_id, ids in by_merchant.items():
        tz = await merchant_timezone(session, merchant_id)
        await rescore(session, merchant_id, ids, await scoring_for(session, merchant_id, tz), now)
    return len(due)


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
    # Several segmentation processes may run the worker: one takes a job's step at a time.
    job = (await session.execute(select(rescore_jobs).where(rescore_jobs.c.job_id == job_id)
                                 .with_for_update(skip_locked=True))).first()
    if job is None or job.status in ("done", "superseded"):
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
    # Merchants never scored (data from before segments existed, or only imported so far).
    merchants = messaging.merchants
    for merchant_id in (await session.execute(select(merchants.c.merchant_id).where(
            ~select(segments.c.customer_id).where(segments.c.merchant_id == merchants.c.merchant_id).exists(),
            ~select(rescore_jobs.c.job_id).where(rescore_jobs.c.merchant_id == merchants.c.merchant_id,
                                                 rescore_jobs.c.status.in_(("pending", "running"))).exists(),
            select(customers.c.customer_id).where(customers.c.merchant_id == merchants.c.merchant_id)
            .exists()))).scalars().all():
        version, config = await current_config(session, merchant_id)
        await refresh_stats(session, merchant_id, version, config, await merchant_timezone(session, merchant_id), now)
        due.append(await start_rescore(session, merchant_id, version))
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
    last_refresh = last_custom = datetime.min.replace(tzinfo=timezone.utc)
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
            if now - last_custom > timedelta(seconds=60) or custom_requested.is_set():
                custom_requested.clear()
                async with sessions() as session, session.begin():
                    await refresh_custom_tags(session, now)
                last_custom = now
            swept = JOB_CHUNK
            while swept == JOB_CHUNK:
                async with sessions() as session, session.begin():
                    swept = await sweep(session, datetime.now(timezone.utc))
            if not pending:
                await asyncio.sleep(poll_s)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the database may be down: try again later, nothing is lost
            log.warning("segmentation.rescore_worker_failed", error=repr(exc))
            await asyncio.sleep(poll_s * 5)
