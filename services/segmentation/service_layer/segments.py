"""Stored segments: score customers, keep what changed, and say so with segment.changed.

Customers are scored where their aggregates change (the consumer, per batch) and all at once
after a configuration change or a statistics refresh (a resumable background job). Both go
through ``rescore``, which compares with the stored segment and writes and announces only the
customers whose segment changed, so running it twice changes nothing the second time."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import orjson
import structlog
from pydantic import TypeAdapter
from sqlalchemy import BigInteger, and_, cast, delete, func, literal, not_, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.segmentation.adapters.aggregates import counts
from services.segmentation.adapters.audience_sql import Compiler
from services.segmentation.adapters.scoring_sql import ScoreSql
from services.segmentation.adapters.tables import (
    behaviours,
    customer_categories,
    customer_tags,
    customers,
    messaging,
    orders,
    rescore_jobs,
    rfm_configs,
    rfm_stats,
    segments,
    tag_rules,
)
from services.segmentation.domain.audience import Filter
from services.segmentation.domain.config import RfmConfig
from services.segmentation.domain.lifecycle import CategoryHistory, TagInputs, lifecycle_tags
from services.segmentation.domain.rfm import Boundaries, Split
from services.segmentation.service_layer.rfm import (
    Stats,
    applied,
    current_config,
    refresh_stats,
)
from shared import clock
from shared.db import UTCDateTime, bulk_insert, earliest, in_values, json_object, json_text
from shared.events import OutboundEvent
from shared.outbox import Outbox

log = structlog.get_logger("fugou.segmentation")
outbox = Outbox(messaging.outbox)
FIELDS = ("r_level", "f_level", "m_level", "cell", "tier", "rfm_class")
JOB_CHUNK = 5000
SCORES_CHUNK = 25_000  # rows per step of a re-score in SQL
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


async def tag_inputs(
    session: AsyncSession, merchant_id: str, customer_ids: list[str]
) -> tuple[dict[str, datetime], dict[str, list[CategoryHistory]]]:
    """Last interest (cart, favourite) and per-category history of these customers."""
    b, cc = behaviours, customer_categories
    interest = {
        r[0]: r[1]
        for r in await session.execute(
            select(b.c.customer_id, func.max(b.c.last_at))
            .where(b.c.merchant_id == merchant_id, in_values(b.c.customer_id, customer_ids))
            .group_by(b.c.customer_id)
        )
    }
    cats: dict[str, list[CategoryHistory]] = {}
    for r in await session.execute(
        select(cc.c.customer_id, cc.c.category, cc.c.orders, cc.c.first_at, cc.c.last_at).where(
            cc.c.merchant_id == merchant_id, in_values(cc.c.customer_id, customer_ids)
        )
    ):
        cats.setdefault(r.customer_id, []).append(CategoryHistory(r.category, r.orders, r.first_at, r.last_at))
    return interest, cats


CUSTOM = "custom:"


async def tag_rule_filters(session: AsyncSession, merchant_id: str) -> dict[str, Any]:
    rows = await session.execute(
        select(tag_rules.c.name, tag_rules.c.filter).where(tag_rules.c.merchant_id == merchant_id)
    )
    return {name: _FILTER.validate_json(body) for name, body in rows}


async def custom_tags(
    session: AsyncSession, merchant_id: str, customer_ids: list[str], tz: str, now: datetime
) -> dict[str, list[str]]:
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
    merchants |= set(
        (
            await session.execute(
                select(customer_tags.c.merchant_id).where(customer_tags.c.tag.like(CUSTOM + "%")).distinct()
            )
        ).scalars()
    )  # rules deleted, holders left
    for merchant_id in merchants:
        tz = await merchant_timezone(session, merchant_id)
        comp = Compiler(merchant_id, now, tz)
        rules = await tag_rule_filters(session, merchant_id)
        moved: set[str] = set()
        for name, f in rules.items():
            want = set((await session.execute(comp.select(f))).scalars())
            have = set(
                (
                    await session.execute(
                        select(customer_tags.c.customer_id).where(
                            customer_tags.c.merchant_id == merchant_id, customer_tags.c.tag == CUSTOM + name
                        )
                    )
                ).scalars()
            )
            moved |= want ^ have
        # Holders of tags whose rule was deleted.
        stale = select(customer_tags.c.customer_id).where(
            customer_tags.c.merchant_id == merchant_id,
            customer_tags.c.tag.like(CUSTOM + "%"),
            customer_tags.c.tag.notin_([CUSTOM + n for n in rules]) if rules else customer_tags.c.tag.isnot(None),
        )
        moved |= set((await session.execute(stale)).scalars())
        ids = sorted(moved)
        if ids:
            scoring = await scoring_for(session, merchant_id, tz)
            for i in range(0, len(ids), JOB_CHUNK):
                await rescore(session, merchant_id, ids[i : i + JOB_CHUNK], scoring, now)
        touched += len(ids)
    return touched


async def scored_values(
    session: AsyncSession, merchant_id: str, customer_ids: list[str], scoring: Scoring, now: datetime
) -> dict[str, Any]:
    """For each of these customers with a paid order: the aggregates the tags need, F and M over
    the period, and the levels, cell, tier, class and next recency moment, scored in SQL."""
    c, o, cfg = customers, orders, scoring.config
    base: Any = c
    oldest: Any = literal(None, UTCDateTime())
    freq: Any = c.c.paid_orders
    mon: Any = c.c.paid_amount_fen
    if cfg.period_days is not None:
        period = (
            select(
                o.c.customer_id,
                func.count().label("f"),
                cast(func.sum(o.c.amount_fen - o.c.refunded_fen), BigInteger).label("m"),
                func.min(o.c.paid_at).label("oldest"),
            )
            .where(
                o.c.merchant_id == merchant_id,
                counts(o),
                o.c.paid_at >= now - timedelta(days=cfg.period_days),
                in_values(o.c.customer_id, customer_ids),
            )
            .group_by(o.c.customer_id)
            .subquery("period")
        )
        base = c.outerjoin(period, period.c.customer_id == c.c.customer_id)
        oldest, freq, mon = period.c.oldest, func.coalesce(period.c.f, 0), func.coalesce(period.c.m, 0)
    sql = ScoreSql(scoring.bounds, scoring.split, cfg.levels, cfg.tier_overrides, scoring.tz, now)
    last = c.c.last_order_at
    levels = (
        select(
            c.c.customer_id,
            c.c.paid_orders,
            c.c.first_order_at,
            last,
            freq.label("frequency"),
            mon.label("monetary_fen"),
            oldest.label("oldest"),
            sql.r_level(last).label("r"),
            sql.f_level(freq).label("f"),
            sql.m_level(mon).label("m"),
            sql.rfm_class(last, freq, mon).label("k"),
            sql.recency_change_at(last).label("recency_change"),
        )
        .select_from(base)
        .where(c.c.merchant_id == merchant_id, last.isnot(None), in_values(c.c.customer_id, customer_ids))
        .subquery("levels")
    )
    cell = ScoreSql.cell(levels.c.r, levels.c.f, levels.c.m)
    return {
        r.customer_id: r
        for r in await session.execute(select(levels, cell.label("cell"), sql.tier(cell).label("tier")))
    }


async def rescore(
    session: AsyncSession, merchant_id: str, customer_ids: list[str], scoring: Scoring, now: datetime
) -> int:
    """Score these customers, store what changed (and when time will next change it), announce
    the changed segments; return how many changed."""
    if not customer_ids:
        return 0
    customer_ids = sorted(set(customer_ids))
    cfg = scoring.config
    values = await scored_values(session, merchant_id, customer_ids, scoring, now)
    interest, cats = await tag_inputs(session, merchant_id, customer_ids)
    custom = await custom_tags(session, merchant_id, customer_ids, scoring.tz, now)
    old = {
        r.customer_id: r
        for r in await session.execute(
            select(
                segments.c.customer_id,
                *[segments.c[f] for f in FIELDS],
                segments.c.next_change_at,
                segments.c.tags_change_at,
                segments.c.period_change_at,
                segments.c.tags,
                segments.c.frequency,
                segments.c.monetary_fen,
            ).where(segments.c.merchant_id == merchant_id, in_values(segments.c.customer_id, customer_ids))
        )
    }
    period = timedelta(days=cfg.period_days) if cfg.period_days is not None else None
    nothing = (None,) * len(FIELDS)
    rows, events, gone, retag = [], [], [], []
    for cid in customer_ids:
        v = values.get(cid)
        tags, tags_change = lifecycle_tags(
            TagInputs(
                paid_orders=v.paid_orders if v else 0,
                first_order_at=v.first_order_at if v else None,
                last_order_at=v.last_order_at if v else None,
                last_interest_at=interest.get(cid),
                categories=tuple(cats.get(cid, ())),
            ),
            cfg.lifecycle,
            now,
        )
        if cid in custom:
            tags = sorted([*tags, *custom[cid]])
        tags_json = orjson.dumps(tags).decode()
        prev = old.get(cid)
        before = None if prev is None else tuple(prev[1 : len(FIELDS) + 1])
        if v is None and not tags:
            if prev is not None:  # no paid order and no tag left: nothing to hold
                gone.append(cid)
                events.append(_changed(merchant_id, cid, _state(before, prev.tags), None, scoring.version))
            continue
        moments: tuple[datetime | None, ...]
        if v is None:
            after, fm, period_change, moments = nothing, (None, None), None, (tags_change,)
        else:
            after = (v.r, v.f, v.m, v.cell, v.tier, v.k)
            fm = (v.frequency, v.monetary_fen)
            period_change = v.oldest + period if period is not None and v.oldest is not None else None
            moments = (tags_change, v.recency_change, period_change)
        next_change = min((m for m in moments if m is not None), default=None)
        moved = prev is None or after != before or prev.tags != tags_json
        if moved or (
            prev is not None  # (else moved)
            and (
                (prev.next_change_at, prev.tags_change_at, prev.period_change_at)
                != (next_change, tags_change, period_change)
                or (prev.frequency, prev.monetary_fen) != fm
            )
        ):
            rows.append(
                (
                    merchant_id,
                    cid,
                    scoring.version,
                    *after,
                    *fm,
                    tags_json,
                    next_change,
                    tags_change,
                    period_change,
                    now,
                )
            )
        if moved:
            events.append(
                _changed(
                    merchant_id,
                    cid,
                    None if prev is None else _state(before, prev.tags),
                    _state(after, tags),
                    scoring.version,
                )
            )
            if prev is None or prev.tags != tags_json:
                retag.append((cid, tags))
    if rows:
        stored = (
            "config_version",
            *FIELDS,
            "frequency",
            "monetary_fen",
            "tags",
            "next_change_at",
            "tags_change_at",
            "period_change_at",
            "scored_at",
        )
        await bulk_insert(
            session,
            segments,
            ["merchant_id", "customer_id", *stored],
            rows,
            conflict=["merchant_id", "customer_id"],
            update={c: f"excluded.{c}" for c in stored},
        )
    if gone:
        await session.execute(
            delete(segments).where(segments.c.merchant_id == merchant_id, segments.c.customer_id.in_(gone))
        )
        retag.extend((cid, []) for cid in gone)
    if retag:
        await session.execute(
            delete(customer_tags).where(
                customer_tags.c.merchant_id == merchant_id, customer_tags.c.customer_id.in_([c for c, _ in retag])
            )
        )
        await bulk_insert(
            session,
            customer_tags,
            ["merchant_id", "customer_id", "tag"],
            [(merchant_id, cid, t) for cid, tags in retag for t in tags],
        )
    await outbox.stage(session, events)
    return len(events)


async def sweep(session: AsyncSession, now: datetime, limit: int = JOB_CHUNK) -> int:
    """Re-score the customers whose next_change_at has come (one chunk); return how many were
    looked at. Cost follows the customers crossing a boundary, not all customers; running it again
    finds nothing to do, because each re-scored row gets its next moment."""
    s = segments
    due = (
        await session.execute(
            select(s.c.merchant_id, s.c.customer_id, s.c.tier, s.c.tags_change_at, s.c.period_change_at)
            .where(s.c.next_change_at <= now)
            .order_by(s.c.next_change_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    ).all()  # one sweeper per row
    by_merchant: dict[str, list[Any]] = {}
    for row in due:
        by_merchant.setdefault(row.merchant_id, []).append(row)
    for merchant_id, rows in by_merchant.items():
        tz = await merchant_timezone(session, merchant_id)
        scoring = await scoring_for(session, merchant_id, tz)
        # Only the recency moment has come (no tag window, no order leaving the period): F, M and
        # tags hold, so SQL re-scores them, unless a full re-score is still to run (the stored
        # F, M and tags may be of another period or windows).
        full_pending = (
            await session.execute(
                select(func.count())
                .select_from(rescore_jobs)
                .where(
                    rescore_jobs.c.merchant_id == merchant_id,
                    rescore_jobs.c.mode == "full",
                    rescore_jobs.c.status.in_(("pending", "running")),
                )
            )
        ).scalar_one()
        recency_only = (
            []
            if full_pending
            else [
                r.customer_id
                for r in rows
                if r.tier is not None
                and (r.tags_change_at is None or r.tags_change_at > now)
                and (r.period_change_at is None or r.period_change_at > now)
            ]
        )
        if recency_only:
            await score_in_sql(
                session,
                merchant_id,
                partial(_of_customers, merchant_id, recency_only),
                scoring,
                now,
            )
        rest = set(recency_only)
        await rescore(session, merchant_id, [r.customer_id for r in rows if r.customer_id not in rest], scoring, now)
    return len(due)


def _of_customers(merchant_id: str, customer_ids: list[str], t: Any) -> list[Any]:
    """The rows of table ``t`` of these customers of a merchant (the ``rows`` of score_in_sql)."""
    return [t.c.merchant_id == merchant_id, in_values(t.c.customer_id, customer_ids)]


def _state(fields: tuple[Any, ...] | None, tags: str | list[str]) -> dict[str, Any]:
    """A segment as segment.changed tells it (stored tags are already JSON)."""
    state = dict(zip(FIELDS, fields or (None,) * len(FIELDS), strict=True))
    state["tags"] = orjson.Fragment(tags) if isinstance(tags, str) else tags
    return state


def _changed(
    merchant_id: str, customer_id: str, before: dict[str, Any] | None, after: dict[str, Any] | None, version: int
) -> OutboundEvent:
    return OutboundEvent(
        "segment.changed",
        merchant_id,
        customer_id=customer_id,
        data={"before": before, "after": after, "config_version": version},
    )


# ---------------------------------------------------------------- the re-scoring job


async def rescore_mode(session: AsyncSession, merchant_id: str, version: int) -> str:
    """``scores`` when a re-score under this version can only move levels, cells, tiers and
    classes: every stored segment's F, M and tags were computed under a configuration with the
    same period and lifecycle windows (each row keeps the version that last wrote it, and every
    version since then agrees); else ``full``."""
    oldest = (
        await session.execute(select(func.min(segments.c.config_version)).where(segments.c.merchant_id == merchant_id))
    ).scalar()
    if oldest is None:
        return "full"
    bodies = dict(
        (
            await session.execute(
                select(rfm_configs.c.version, rfm_configs.c.body).where(
                    rfm_configs.c.merchant_id == merchant_id,
                    rfm_configs.c.version >= oldest,
                    rfm_configs.c.version <= version,
                )
            )
        ).all()
    )
    configs = [RfmConfig.model_validate_json(body) for body in bodies.values()]
    if oldest == 0:
        configs.append(RfmConfig())  # version 0: the default nobody saved
    new = RfmConfig.model_validate_json(bodies[version]) if version else RfmConfig()
    same = all(c.period_days == new.period_days and c.lifecycle == new.lifecycle for c in configs)
    return "scores" if same else "full"


async def start_rescore(session: AsyncSession, merchant_id: str, version: int, *, config_change: bool = False) -> str:
    """Queue a re-score of every customer (in the caller's transaction). After a configuration
    change or a statistics refresh (``config_change``) it re-scores in SQL when it can
    (``rescore_mode``); after new data, every customer goes through the whole path."""
    mode = await rescore_mode(session, merchant_id, version) if config_change else "full"
    counted = (
        select(func.count())
        .select_from(segments)
        .where(segments.c.merchant_id == merchant_id, segments.c.tier.isnot(None))
        if mode == "scores"
        else select(func.count()).select_from(customers).where(customers.c.merchant_id == merchant_id)
    )
    total = (await session.execute(counted)).scalar_one()
    job_id = str(uuid.uuid4())
    await session.execute(
        rescore_jobs.insert().values(
            job_id=job_id,
            merchant_id=merchant_id,
            config_version=version,
            status="pending",
            total=total,
            done=0,
            changed=0,
            cursor=None,
            mode=mode,
            created_at=clock.now(),
        )
    )
    return job_id


async def run_rescore_step(session: AsyncSession, job_id: str) -> bool:
    """Re-score the job's next chunk and record progress, in one transaction. False when done."""
    # Several segmentation processes may run the worker: one takes a job's step at a time.
    job = (
        await session.execute(
            select(rescore_jobs).where(rescore_jobs.c.job_id == job_id).with_for_update(skip_locked=True)
        )
    ).first()
    if job is None or job.status in ("done", "superseded"):
        return False
    newer = (
        await session.execute(
            select(func.count())
            .select_from(rescore_jobs)
            .where(
                rescore_jobs.c.merchant_id == job.merchant_id,
                rescore_jobs.c.created_at > job.created_at,
                rescore_jobs.c.status != "superseded",
            )
        )
    ).scalar_one()
    now = clock.now()
    if newer:  # a later configuration re-scores everyone anyway
        await session.execute(
            update(rescore_jobs).where(rescore_jobs.c.job_id == job_id).values(status="superseded", finished_at=now)
        )
        return False
    tz = await merchant_timezone(session, job.merchant_id)
    scoring = await scoring_for(session, job.merchant_id, tz)
    if job.mode == "scores":
        seen, changed, cursor = await rescore_scores(session, job.merchant_id, job.cursor, scoring, now)
        finished = cursor is None
        if finished:
            custom_requested.set()  # merchants' own tag rules may select by tier or class
    else:
        q = select(customers.c.customer_id).where(customers.c.merchant_id == job.merchant_id)
        if job.cursor is not None:
            q = q.where(customers.c.customer_id > job.cursor)
        ids = list((await session.execute(q.order_by(customers.c.customer_id).limit(JOB_CHUNK))).scalars())
        changed = await rescore(session, job.merchant_id, ids, scoring, now)
        seen, finished = len(ids), len(ids) < JOB_CHUNK
        cursor = ids[-1] if ids else job.cursor
    await session.execute(
        update(rescore_jobs)
        .where(rescore_jobs.c.job_id == job_id)
        .values(
            status="done" if finished else "running",
            done=job.done + seen,
            changed=job.changed + changed,
            cursor=cursor if not finished else job.cursor,
            finished_at=now if finished else None,
        )
    )
    return not finished


async def rescore_scores(
    session: AsyncSession,
    merchant_id: str,
    after: str | None,
    scoring: Scoring,
    now: datetime,
    chunk: int = SCORES_CHUNK,
) -> tuple[int, int, str | None]:
    """Re-score the next ``chunk`` stored segments after ``after`` in SQL; return (rows looked
    at, segments changed, the cursor to go on from, None at the end)."""
    s = segments

    def in_chunk(t: Any) -> list[Any]:  # on every table of the statements, so each reads its range only
        return [
            t.c.merchant_id == merchant_id,
            *([t.c.customer_id > after] if after is not None else []),
            *([t.c.customer_id <= upper] if upper is not None else []),
        ]

    upper = None
    upper = (
        await session.execute(
            select(s.c.customer_id)
            .where(*in_chunk(s), s.c.tier.isnot(None))
            .order_by(s.c.customer_id)
            .offset(chunk - 1)
            .limit(1)
        )
    ).scalar()
    seen = (
        chunk
        if upper is not None
        else (
            await session.execute(select(func.count()).select_from(s).where(*in_chunk(s), s.c.tier.isnot(None)))
        ).scalar_one()
    )
    # Rows whose moment has come (an order left the period, a tag's window turned) hold stale F, M
    # or tags until the sweep: the whole path re-scores them here, SQL the others.
    due = list(
        (
            await session.execute(
                select(s.c.customer_id).where(*in_chunk(s), s.c.tier.isnot(None), s.c.next_change_at <= now)
            )
        ).scalars()
    )
    changed = await score_in_sql(
        session,
        merchant_id,
        lambda t: [*in_chunk(t), *([not_(in_values(t.c.customer_id, due))] if due else [])],
        scoring,
        now,
    )
    changed += await rescore(session, merchant_id, due, scoring, now)
    return seen, changed, upper


async def score_in_sql(
    session: AsyncSession, merchant_id: str, rows: Callable[[Any], list[Any]], scoring: Scoring, now: datetime
) -> int:
    """Re-score the stored segments ``rows(table)`` selects, in SQL: levels, cell, tier, class
    and the recency moment from last_order_at and the stored F and M; tags and the other moments
    as stored. Announce the changed ones (built by the database); return how many changed."""
    s, c = segments, customers
    mine = [*rows(s), s.c.tier.isnot(None)]
    sql = ScoreSql(scoring.bounds, scoring.split, scoring.config.levels, scoring.config.tier_overrides, scoring.tz, now)
    last, freq, mon = c.c.last_order_at, s.c.frequency, s.c.monetary_fen
    levels = (
        select(
            s.c.customer_id.label("cid"),
            sql.r_level(last).label("r"),
            sql.f_level(freq).label("f"),
            sql.m_level(mon).label("m"),
            sql.rfm_class(last, freq, mon).label("k"),
            earliest(s.c.tags_change_at, s.c.period_change_at, sql.recency_change_at(last)).label("nxt"),
        )
        .select_from(s.join(c, and_(c.c.merchant_id == s.c.merchant_id, c.c.customer_id == s.c.customer_id)))
        .where(*mine, *rows(c))
        .subquery("levels")
    )
    cell = ScoreSql.cell(levels.c.r, levels.c.f, levels.c.m)
    n = select(levels, cell.label("cell"), sql.tier(cell).label("tier")).subquery("n")
    same_row = and_(*rows(s), s.c.customer_id == n.c.cid)
    moved = or_(s.c.cell != n.c.cell, s.c.tier != n.c.tier, s.c.rfm_class != n.c.k)
    # Hold the rows: the consumer may re-score one of them meanwhile, and the event's "before"
    # must be the row this statement replaces.
    await session.execute(
        select(func.count()).select_from(select(s.c.customer_id).where(*mine).with_for_update().subquery())
    )

    def state(r: Any, f: Any, m: Any, cell: Any, tier: Any, klass: Any) -> Any:
        return json_object(
            "r_level",
            r,
            "f_level",
            f,
            "m_level",
            m,
            "cell",
            cell,
            "tier",
            tier,
            "rfm_class",
            klass,
            "tags",
            json_text(s.c.tags),
        )

    changed = await outbox.stage_select(
        session,
        "segment.changed",
        select(
            s.c.merchant_id,
            s.c.customer_id,
            json_object(
                "before",
                state(s.c.r_level, s.c.f_level, s.c.m_level, s.c.cell, s.c.tier, s.c.rfm_class),
                "after",
                state(n.c.r, n.c.f, n.c.m, n.c.cell, n.c.tier, n.c.k),
                "config_version",
                literal(scoring.version),
            ).label("data"),
        ).where(same_row, moved),
    )
    await session.execute(
        update(s)
        .where(same_row, or_(moved, s.c.next_change_at.is_distinct_from(n.c.nxt)))
        .values(
            config_version=scoring.version,
            r_level=n.c.r,
            f_level=n.c.f,
            m_level=n.c.m,
            cell=n.c.cell,
            tier=n.c.tier,
            rfm_class=n.c.k,
            next_change_at=n.c.nxt,
            scored_at=now,
        )
    )
    return changed


async def refresh_due_stats(session: AsyncSession, now: datetime) -> list[str]:
    """Recompute statistics older than STATS_REFRESH for merchants whose boundaries or split
    depend on them, and queue a re-score for each (quantiles move as customers do)."""
    due = []
    # Merchants never scored (data from before segments existed, or only imported so far).
    merchants = messaging.merchants
    for merchant_id in (
        (
            await session.execute(
                select(merchants.c.merchant_id).where(
                    ~select(segments.c.customer_id).where(segments.c.merchant_id == merchants.c.merchant_id).exists(),
                    ~select(rescore_jobs.c.job_id)
                    .where(
                        rescore_jobs.c.merchant_id == merchants.c.merchant_id,
                        rescore_jobs.c.status.in_(("pending", "running")),
                    )
                    .exists(),
                    select(customers.c.customer_id).where(customers.c.merchant_id == merchants.c.merchant_id).exists(),
                )
            )
        )
        .scalars()
        .all()
    ):
        version, config = await current_config(session, merchant_id)
        await refresh_stats(session, merchant_id, version, config, await merchant_timezone(session, merchant_id), now)
        due.append(await start_rescore(session, merchant_id, version))
    rows = (
        (await session.execute(select(rfm_stats.c.merchant_id).where(rfm_stats.c.computed_at < now - STATS_REFRESH)))
        .scalars()
        .all()
    )
    for merchant_id in rows:
        version, config = await current_config(session, merchant_id)
        if config.fixed() is not None and config.class_split.mode == "fixed":
            continue
        tz = await merchant_timezone(session, merchant_id)
        await refresh_stats(session, merchant_id, version, config, tz, now)
        due.append(await start_rescore(session, merchant_id, version, config_change=True))
    return due


async def rescore_worker(sessions: async_sessionmaker[AsyncSession], poll_s: float = 1.0) -> None:
    """Background: run pending re-score jobs chunk by chunk, and refresh statistics hourly.
    Each step commits its progress, so a restart resumes where it stopped."""
    last_refresh = last_custom = datetime.min.replace(tzinfo=UTC)
    while True:
        try:
            now = clock.now()
            if now - last_refresh > timedelta(minutes=5):
                async with sessions() as session, session.begin():
                    await refresh_due_stats(session, now)
                last_refresh = now
            async with sessions() as session:
                pending = list(
                    (
                        await session.execute(
                            select(rescore_jobs.c.job_id)
                            .where(rescore_jobs.c.status.in_(("pending", "running")))
                            .order_by(rescore_jobs.c.created_at)
                        )
                    ).scalars()
                )
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
                    swept = await sweep(session, clock.now())
            if not pending:
                await asyncio.sleep(poll_s)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the database may be down: try again later, nothing is lost
            log.warning("segmentation.rescore_worker_failed", error=repr(exc))
            await asyncio.sleep(poll_s * 5)
