"""The loyalty clock: what time alone changes, each step incremental, resumable and safe to run
twice (or in two processes at once).

- ``mature_due``: orders whose return window has closed (index ``matured, matures_at``): their
  pending points become a lot (``points.earned``, status available).
- ``expire_due``: lots whose expiry has come (index ``expires_at``): what is left expires, first
  in first out, one ``expire`` entry per lot (``points.expired``).
- ``notify_expiring``: lots expiring within the merchant's ``notice_days``, once per lot
  (``lots.notified_at``, ``points.expiring``).
- ``review_due``: members whose review is due (index ``accounts.next_review_at``): keep, warn
  (the grace period starts) or downgrade (``level.changed``).

Each step reads only rows that crossed their moment, locks the accounts concerned with
``FOR UPDATE SKIP LOCKED`` (a customer busy in the consumer or another clock is left to the next
round), re-checks under the lock, applies the domain and writes in one transaction. A step
returns (due rows looked at, rows changed); ``run_clock`` repeats each step until a short one."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.loyalty.adapters.tables import accounts, lots, messaging, order_points
from services.loyalty.adapters.tables import rules as rules_table
from services.loyalty.domain import ledger, levels
from services.loyalty.domain.ledger import LedgerRules
from services.loyalty.service_layer import announce, books
from services.loyalty.service_layer.points import OrderRow, current_level, growth_in_window
from services.loyalty.service_layer.rules import in_force, in_force_many
from shared import clock
from shared.db import in_values
from shared.events import OutboundEvent
from shared.outbox import Outbox

log = structlog.get_logger("fugou.loyalty.clock")
outbox = Outbox(messaging.outbox)
CHUNK = 2000


def _by_merchant(rows: Iterable[Any]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for r in rows:
        out.setdefault(r.merchant_id, []).append(r)
    return out


async def mature_due(session: AsyncSession, now: datetime, limit: int = CHUNK) -> tuple[int, int]:
    o = order_points.c
    due = (
        await session.execute(
            select(o.merchant_id, o.customer_id)
            .where(o.matured.is_(False), o.matures_at <= now)
            .order_by(o.matures_at)
            .limit(limit)
        )
    ).all()
    if not due:
        return 0, 0
    grouped = _by_merchant(due)
    rules = await in_force_many(session, sorted(grouped))
    events: list[OutboundEvent] = []
    changed = 0
    for merchant_id, rows in grouped.items():
        r = rules[merchant_id]
        held = await books.lock(
            session, merchant_id, {x.customer_id for x in rows}, now, create=False, skip_locked=True
        )
        if not held:
            continue
        await books.load_lots(session, held, [cid for cid, b in held.items() if b.debt])
        # Re-read under the lock: the consumer may have matured, refunded or cancelled meanwhile.
        orders = (
            await session.execute(
                select(order_points)
                .where(
                    o.merchant_id == merchant_id,
                    in_values(o.customer_id, sorted(held)),
                    o.matured.is_(False),
                    o.matures_at <= now,
                    o.paid_fen.isnot(None),
                )
                .order_by(o.matures_at)
            )
        ).all()
        done = []
        for row in orders:
            book = held[row.customer_id]
            order = OrderRow(
                row.customer_id,
                row.paid_fen,
                row.points,
                row.growth,
                row.growth_removed,
                row.paid_at,
                row.matures_at,
                row.refunded_fen,
                row.matured,
                row.cancelled,
            ).domain(row.order_id)
            posting = ledger.mature(book.account(taking=False), order, at=now, rules=r.ledger, tz=r.tz)
            book.post(posting)
            done.append(row.order_id)
            if order.pending:
                lot = book.lots.get(f"mature:{row.order_id}")
                events.append(
                    announce.earned(
                        book,
                        cause="maturity",
                        points=order.pending,
                        status="available",
                        at=order.matures_at,
                        order_id=row.order_id,
                        lot_id=f"mature:{row.order_id}",
                        expires_at=lot.expires_at if lot else None,
                    )
                )
        await books.write(session, held.values(), now)
        if done:
            await session.execute(
                update(order_points)
                .where(o.merchant_id == merchant_id, in_values(o.order_id, done))
                .values(matured=True)
            )
        changed += len(done)
    await outbox.stage(session, events)
    return len(due), changed


async def expire_due(session: AsyncSession, now: datetime, limit: int = CHUNK) -> tuple[int, int]:
    lt = lots.c
    due = (
        await session.execute(
            select(lt.merchant_id, lt.customer_id)
            .where(lt.remaining > 0, lt.expires_at <= now)
            .order_by(lt.expires_at)
            .limit(limit)
        )
    ).all()
    if not due:
        return 0, 0
    events: list[OutboundEvent] = []
    changed = 0
    for merchant_id, rows in _by_merchant(due).items():
        held = await books.lock(
            session, merchant_id, {x.customer_id for x in rows}, now, create=False, skip_locked=True
        )
        if not held:
            continue
        await books.load_lots(session, held)
        for book in held.values():
            posting = ledger.expire(book.account(), at=now)
            book.post(posting)
            for e in posting.entries:
                assert e.lot_id is not None
                events.append(announce.expired(book, lot_id=e.lot_id, points=-e.points, expired_at=e.at))
            changed += len(posting.entries)
        await books.write(session, held.values(), now)
    await outbox.stage(session, events)
    return len(due), changed


async def notice_windows(session: AsyncSession) -> tuple[int, dict[int, list[str]]]:
    """(the default notice days, {days: merchants}) for merchants whose saved rules differ."""
    default = LedgerRules().notice_days
    custom: dict[int, list[str]] = {}
    for merchant_id, body in await session.execute(select(rules_table.c.merchant_id, rules_table.c.ledger_rules)):
        days = LedgerRules.model_validate_json(body).notice_days
        if days != default:
            custom.setdefault(days, []).append(merchant_id)
    return default, custom


async def notify_expiring(session: AsyncSession, now: datetime, limit: int = CHUNK) -> tuple[int, int]:
    """points.expiring for lots entering their merchant's notice window, once per lot: one range
    query per distinct window length (merchants with 0 days get none)."""
    lt = lots.c
    default, custom = await notice_windows(session)
    looked = done = 0
    events: list[OutboundEvent] = []
    zones: dict[str, str] = {}
    for days, only in [(default, None), *sorted(custom.items())]:
        if not days or looked >= limit:
            continue
        where = [
            lt.remaining > 0,
            lt.notified_at.is_(None),
            lt.expires_at > now,
            lt.expires_at <= now + timedelta(days=days),
        ]
        if only is not None:
            where.append(in_values(lt.merchant_id, only))
        elif custom:
            where.append(lt.merchant_id.not_in(sorted(m for ms in custom.values() for m in ms)))
        due = (
            await session.execute(
                select(lt.merchant_id, lt.customer_id, lt.lot_id)
                .where(*where)
                .order_by(lt.expires_at)
                .limit(limit - looked)
                .with_for_update(skip_locked=True)
            )
        ).all()
        looked += len(due)
        for merchant_id, rows in _by_merchant(due).items():
            if merchant_id not in zones:
                zones[merchant_id] = (await in_force(session, merchant_id)).tz
            by_customer: dict[str, list[str]] = {}
            for x in rows:
                by_customer.setdefault(x.customer_id, []).append(x.lot_id)
            for cid, lot_ids in by_customer.items():
                marked = (
                    await session.execute(
                        update(lots)
                        .where(
                            lt.merchant_id == merchant_id,
                            lt.customer_id == cid,
                            in_values(lt.lot_id, lot_ids),
                            lt.notified_at.is_(None),
                            lt.remaining > 0,
                        )
                        .values(notified_at=now)
                        .returning(lt.lot_id, lt.remaining, lt.expires_at)
                    )
                ).all()
                done += len(marked)
                events += [
                    announce.expiring(
                        merchant_id,
                        cid,
                        lot_id=m.lot_id,
                        points=m.remaining,
                        expires_at=m.expires_at,
                        now=now,
                        tz=zones[merchant_id],
                    )
                    for m in marked
                ]
    await outbox.stage(session, events)
    return looked, done


async def review_due(session: AsyncSession, now: datetime, limit: int = CHUNK) -> tuple[int, int]:
    a = accounts.c
    due = (
        await session.execute(
            select(a.merchant_id, a.customer_id).where(a.next_review_at <= now).order_by(a.next_review_at).limit(limit)
        )
    ).all()
    if not due:
        return 0, 0
    grouped = _by_merchant(due)
    rules = await in_force_many(session, sorted(grouped))
    events: list[OutboundEvent] = []
    changed = 0
    for merchant_id, rows in grouped.items():
        r = rules[merchant_id]
        held = await books.lock(
            session, merchant_id, {x.customer_id for x in rows}, now, create=False, skip_locked=True
        )
        held = {cid: b for cid, b in held.items() if b.next_review_at is not None and b.next_review_at <= now}
        if not held:
            continue
        changed += len(held)
        if r.levels is None:  # the merchant dropped its levels: nothing to review any more
            for b in held.values():
                b.next_review_at = b.warned_for = None
                b.touch()
            await books.write(session, held.values(), now)
            continue
        ladder = r.levels
        growth = await growth_in_window(session, merchant_id, sorted(held), levels.window_start(ladder, now, r.tz))
        for cid, b in held.items():
            g = growth.get(cid, 0)
            current = current_level(ladder, b.level, g)
            last = b.last_review_at or b.level_since or now
            outcome = levels.review(ladder, current, g, now=now, last_review=last, tz=r.tz)
            b.touch()
            if outcome.action == "not_due":
                b.next_review_at = outcome.next_review_at
                continue
            if outcome.action == "warn":
                b.warned_for, b.next_review_at = outcome.review_at, outcome.next_review_at
                continue
            b.last_review_at, b.warned_for = outcome.review_at, None
            if outcome.change is not None:
                previous = b.level
                b.level, b.level_since = outcome.change.to_code, now
                events.append(
                    announce.level_changed(
                        b, from_level=previous, to_level=outcome.change.to_code, direction="downgrade", growth=g, at=now
                    )
                )
            # At the first level there is nothing left to lose: no review to schedule.
            b.next_review_at = None if ladder.rank(b.level or current) == 0 else outcome.next_review_at
        await books.write(session, held.values(), now)
    await outbox.stage(session, events)
    return len(due), changed


STEPS = (("matured", mature_due), ("expired", expire_due), ("notified", notify_expiring), ("reviewed", review_due))


async def run_clock(
    sessions: async_sessionmaker[AsyncSession], now: datetime | None = None, chunk: int = CHUNK
) -> dict[str, int]:
    """Every step until nothing due is left at ``now`` (default: the current time), one committed
    chunk at a time, and what each step changed (orders matured, lots expired and notified,
    members reviewed). A step that changes nothing (everything due is locked by another worker)
    ends its round: the next round picks it up."""
    now = now or clock.now()
    out = {}
    for name, step in STEPS:
        total = 0
        looked, changed = chunk, 1
        while looked == chunk and changed:
            async with sessions() as session, session.begin():
                looked, changed = await step(session, now, chunk)
            total += changed
        out[name] = total
    return out


async def clock_worker(sessions: async_sessionmaker[AsyncSession], poll_s: float = 30.0) -> None:
    """Background (consumer role): the clock every ``poll_s`` seconds."""
    while True:
        try:
            done = await run_clock(sessions)
            if any(done.values()):
                log.info("loyalty.clock", **done)
            await asyncio.sleep(poll_s)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the database may be down: try again later, nothing is lost
            log.warning("loyalty.clock_failed", error=repr(exc))
            await asyncio.sleep(poll_s)
