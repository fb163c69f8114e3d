"""Segments over time: each merchant's counts (cells, tiers, classes, lifecycle tags, the
repurchase rate) kept once per local calendar day, for the merchant console's trend charts.

A background clock takes a snapshot of every active merchant at start-up and then hourly; the
row of the merchant's current local day is replaced each time (an upsert keyed by merchant and
day), so the last snapshot of a day stands once the day is over. Several replicas may run the
clock: two snapshots of one day race harmlessly (the later ``taken_at`` wins), and a replica
skips a merchant whose current day another one snapshotted less than an interval ago."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import structlog
from sqlalchemy import func, not_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.segmentation.adapters.tables import customer_tags, messaging, segment_snapshots
from services.segmentation.service_layer.rfm import SegmentCounts, repurchase_rate, segment_counts
from shared import clock
from shared.db import insert_for

log = structlog.get_logger("fugou.segmentation")
SNAPSHOT_EVERY = timedelta(hours=1)
RETRY_AFTER = timedelta(minutes=1)
CUSTOM = "custom:"  # merchants' own tags: not lifecycle, not in the snapshots


@dataclass(frozen=True, slots=True)
class Point:
    """A merchant's segment counts on one local day (a stored snapshot, or now)."""

    day: str
    taken_at: datetime
    config_version: int
    customers: int
    cells: dict[str, int]
    tiers: dict[str, int]
    classes: dict[str, int]
    tags: dict[str, int]
    buyers: int
    repeat_buyers: int

    @property
    def repurchase_rate(self) -> float:
        return repurchase_rate(self.repeat_buyers, self.buyers)

    @classmethod
    def of(cls, counts: SegmentCounts, tags: dict[str, int], day: str, taken_at: datetime) -> Point:
        return cls(
            day,
            taken_at,
            counts.config_version,
            counts.customers,
            counts.cells,
            counts.tiers,
            counts.classes,
            tags,
            counts.buying,
            counts.repeat,
        )

    @classmethod
    def from_row(cls, row: Any) -> Point:
        return cls(
            row.day,
            row.taken_at,
            row.config_version,
            int(row.customers),
            orjson.loads(row.cells),
            orjson.loads(row.tiers),
            orjson.loads(row.classes),
            orjson.loads(row.tags),
            int(row.buyers),
            int(row.repeat_buyers),
        )


def local_day(now: datetime, tz: str) -> date:
    """The merchant's calendar day at ``now``."""
    return now.astimezone(ZoneInfo(tz)).date()


async def tag_counts(session: AsyncSession, merchant_id: str) -> dict[str, int]:
    """Customers per lifecycle tag as last scored (interest, new, dormant, churn_risk,
    repurchase_cycle:<category>, replenish_due:<category>), tags nobody has left out."""
    t = customer_tags
    return {
        tag: int(n)
        for tag, n in await session.execute(
            select(t.c.tag, func.count())
            .where(t.c.merchant_id == merchant_id, not_(t.c.tag.startswith(CUSTOM)))
            .group_by(t.c.tag)
            .order_by(t.c.tag)
        )
    }


async def current_point(session: AsyncSession, merchant_id: str, tz: str, now: datetime) -> Point:
    """The merchant's counts now, over the stored segments (what a snapshot at ``now`` keeps)."""
    counts = await segment_counts(session, merchant_id, now)
    return Point.of(counts, await tag_counts(session, merchant_id), local_day(now, tz).isoformat(), now)


async def snapshot(session: AsyncSession, merchant_id: str, tz: str, now: datetime) -> Point:
    """Count the merchant's segments and store them as the row of its local day at ``now``
    (replacing an earlier one of that day; an older ``now`` than the stored one leaves it)."""
    p = await current_point(session, merchant_id, tz, now)
    s = segment_snapshots
    values = {
        "taken_at": p.taken_at,
        "config_version": p.config_version,
        "customers": p.customers,
        "buyers": p.buyers,
        "repeat_buyers": p.repeat_buyers,
        "tiers": orjson.dumps(p.tiers).decode(),
        "classes": orjson.dumps(p.classes).decode(),
        "cells": orjson.dumps(p.cells).decode(),
        "tags": orjson.dumps(p.tags).decode(),
    }
    stmt = insert_for(session, s).values(merchant_id=merchant_id, day=p.day, **values)
    await session.execute(
        stmt.on_conflict_do_update(
            index_elements=[s.c.merchant_id, s.c.day],
            set_={k: stmt.excluded[k] for k in values},
            where=s.c.taken_at <= stmt.excluded.taken_at,
        )
    )
    return p


async def take_snapshots(
    sessions: async_sessionmaker[AsyncSession], now: datetime, *, unless_within: timedelta | None = None
) -> int:
    """Snapshot every active merchant's segments as of its local day at ``now``, one merchant per
    transaction; return how many were taken. ``unless_within``: skip a merchant whose row of that
    day was taken less than this before ``now`` (by another replica, or before a restart)."""
    m = messaging.merchants
    async with sessions() as session:
        merchants = (
            await session.execute(select(m.c.merchant_id, m.c.timezone).where(m.c.active).order_by(m.c.merchant_id))
        ).all()
    taken = 0
    for merchant_id, tz in merchants:
        tz = tz or "Asia/Shanghai"
        async with sessions() as session, session.begin():
            if unless_within is not None:
                s = segment_snapshots
                last = (
                    await session.execute(
                        select(s.c.taken_at).where(
                            s.c.merchant_id == merchant_id, s.c.day == local_day(now, tz).isoformat()
                        )
                    )
                ).scalar()
                if last is not None and last > now - unless_within:
                    continue
            await snapshot(session, merchant_id, tz, now)
        taken += 1
    return taken


async def trend(
    session: AsyncSession, merchant_id: str, tz: str, days: int, now: datetime
) -> tuple[list[Point], Point]:
    """The merchant's snapshots of its last ``days`` local days (today included), oldest first,
    and its counts now."""
    today = local_day(now, tz)
    s = segment_snapshots
    rows = (
        await session.execute(
            select(s)
            .where(
                s.c.merchant_id == merchant_id,
                s.c.day >= (today - timedelta(days=days - 1)).isoformat(),
                s.c.day <= today.isoformat(),
            )
            .order_by(s.c.day)
        )
    ).all()
    return [Point.from_row(r) for r in rows], await current_point(session, merchant_id, tz, now)


async def snapshot_worker(
    sessions: async_sessionmaker[AsyncSession], every: timedelta = SNAPSHOT_EVERY, retry: timedelta = RETRY_AFTER
) -> None:
    """Background: snapshot every active merchant at start-up, then every ``every``. A merchant
    another replica snapshotted within most of an interval is skipped, so replicas share the
    work instead of repeating it; one that fails (the database is down) tries again soon."""
    while True:
        try:
            started = clock.now()
            taken = await take_snapshots(sessions, started, unless_within=every * 0.9)
            if taken:
                log.info(
                    "segmentation.snapshots",
                    taken=taken,
                    seconds=round((clock.now() - started).total_seconds(), 3),
                )
            await asyncio.sleep(every.total_seconds())
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the database may be down: try again later, nothing is lost
            log.warning("segmentation.snapshots_failed", error=repr(exc))
            await asyncio.sleep(retry.total_seconds())
