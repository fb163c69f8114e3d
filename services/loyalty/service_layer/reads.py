"""Reading points: a customer's summary (the mini-program's my-points, in one round trip), the
history of entries, the level and the progress to the next, the reconciliation that proves a
ledger, and the merchant's liability with the expiry forecast."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import BigInteger, BindParameter, String, bindparam, column, func, or_, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from services.loyalty.adapters.tables import accounts, entries, lots, order_points, sv_accounts
from services.loyalty.domain import ledger, levels
from services.loyalty.domain.common import zone
from services.loyalty.domain.ledger import Difference, OrderPoints
from services.loyalty.service_layer.books import entry_of, lot_of
from services.loyalty.service_layer.points import current_level
from services.loyalty.service_layer.rules import InForce
from shared.db import UTCDateTime, fetch_rows

Conn = AsyncSession | AsyncConnection

# Expiring soon: the lots expiring within this many days (or the merchant's notice days, if longer).
EXPIRING_DAYS = 30


class _Row(NamedTuple):
    part: str
    n: int | None
    p: int
    d: int
    level: str | None
    at: datetime | None


@dataclass(frozen=True, slots=True)
class Summary:
    balance: int  # spendable now (lots expired but not swept yet left out)
    pending: int
    debt: int
    expiring: list[ledger.Expiring]
    expiring_within_days: int
    level: str | None
    growth: int | None
    progress: levels.Progress | None


_SUMMARY = """
SELECT 'a' AS part, balance AS n, pending AS p, debt AS d, level AS level, NULL AS at
  FROM accounts WHERE merchant_id = :m AND customer_id = :c
UNION ALL
SELECT 'l', remaining, 0, 0, NULL, expires_at
  FROM lots WHERE merchant_id = :m AND customer_id = :c AND remaining > 0 AND expires_at <= :horizon"""
_GROWTH = """
UNION ALL
SELECT 'g', CAST(sum(growth - growth_removed) AS BIGINT), 0, 0, NULL, NULL
  FROM order_points WHERE merchant_id = :m AND customer_id = :c AND paid_at >= :start AND growth > 0
UNION ALL
SELECT 'g', CAST(sum(growth) AS BIGINT), 0, 0, NULL, NULL
  FROM bonus_awards WHERE merchant_id = :m AND customer_id = :c AND awarded_at >= :start AND growth > 0"""


def _summary_statement(with_growth: bool) -> Any:
    binds: list[BindParameter[Any]] = [
        bindparam("m", type_=String()),
        bindparam("c", type_=String()),
        bindparam("horizon", type_=UTCDateTime()),
    ]
    if with_growth:
        binds.append(bindparam("start", type_=UTCDateTime()))
    return (
        text(_SUMMARY + (_GROWTH if with_growth else ""))
        .bindparams(*binds)
        .columns(
            column("part", String()),
            column("n", BigInteger()),
            column("p", BigInteger()),
            column("d", BigInteger()),
            column("level", String()),
            column("at", UTCDateTime()),
        )
    )


# Built once: a textual statement's cache key is its text, so a read compiles nothing per request.
_STATEMENTS = {False: _summary_statement(False), True: _summary_statement(True)}


async def summary(conn: Conn, rules: InForce, customer_id: str, now: datetime) -> Summary:
    """One statement: the account's sums, the lots that are expired or expire soon, and the growth
    in the window (when there are levels: orders paid in it net of refunds, bonus actions in it)."""
    days = max(EXPIRING_DAYS, rules.ledger.notice_days)
    ladder = rules.levels
    params: dict[str, Any] = {"m": rules.merchant_id, "c": customer_id, "horizon": now + timedelta(days=days)}
    if ladder is not None:
        params["start"] = levels.window_start(ladder, now, rules.tz)
    balance = pending = debt = gone = growth = 0
    stored_level: str | None = None
    soon: dict[datetime, int] = {}
    growing = ladder is not None
    rows = await fetch_rows(conn, _STATEMENTS[growing], params, key=("loyalty.summary", growing))
    for r in rows:
        r = _Row(*r)
        if r.part == "a":
            assert r.n is not None  # accounts.balance is NOT NULL
            balance, pending, debt, stored_level = r.n, r.p, r.d, r.level
        elif r.part == "l":
            # lots.remaining is NOT NULL; a lot that never expires (NULL) fails expires_at <= :horizon
            assert r.n is not None and r.at is not None
            if r.at <= now:
                gone += r.n
            else:
                soon[r.at] = soon.get(r.at, 0) + r.n
        elif r.n is not None:
            growth += int(r.n)
    level = progress = None
    if ladder is not None:
        level = current_level(ladder, stored_level, growth)
        progress = levels.progress(ladder, level, growth)
    return Summary(
        balance - gone,
        pending,
        debt,
        [ledger.Expiring(at, n) for at, n in sorted(soon.items())],
        days,
        level,
        growth if ladder is not None else None,
        progress,
    )


async def history(conn: Conn, merchant_id: str, customer_id: str, *, limit: int, before: int | None) -> list[Any]:
    """Entries newest first, ``limit`` at a time; ``before`` is the last page's smallest id."""
    e = entries.c
    q = select(entries).where(e.merchant_id == merchant_id, e.customer_id == customer_id)
    if before is not None:
        q = q.where(e.id < before)
    return list((await conn.execute(q.order_by(e.id.desc()).limit(limit))).all())


@dataclass(frozen=True, slots=True)
class Proof:
    """The reconciliation of one customer's points: the domain's checks over every entry and lot,
    plus the stored pending sum."""

    reconciliation: ledger.Reconciliation
    stored: dict[str, int]
    entries: int
    lots: int
    differences: tuple[Difference, ...]

    @property
    def ok(self) -> bool:
        return not self.differences


async def reconcile(session: Conn, merchant_id: str, customer_id: str) -> Proof:
    a, e, lt, o = accounts.c, entries.c, lots.c, order_points.c
    row = (
        await session.execute(
            select(a.balance, a.pending, a.debt).where(a.merchant_id == merchant_id, a.customer_id == customer_id)
        )
    ).first()
    stored = (
        {"balance": row.balance, "pending": row.pending, "debt": row.debt}
        if row is not None
        else {"balance": 0, "pending": 0, "debt": 0}
    )
    every = [
        entry_of(r)
        for r in await session.execute(
            select(entries).where(e.merchant_id == merchant_id, e.customer_id == customer_id).order_by(e.id)
        )
    ]
    all_lots = [
        lot_of(r)
        for r in await session.execute(select(lots).where(lt.merchant_id == merchant_id, lt.customer_id == customer_id))
    ]
    orders = [
        OrderPoints(r.order_id, r.paid_fen, r.points, r.matures_at, r.refunded_fen, r.matured)
        for r in await session.execute(
            select(order_points).where(
                o.merchant_id == merchant_id, o.customer_id == customer_id, o.paid_fen.isnot(None)
            )
        )
    ]
    proof = ledger.reconcile(every, all_lots, debt=stored["debt"], orders=orders, balance=stored["balance"])
    found = list(proof.differences)
    if proof.totals.pending != stored["pending"]:
        found.append(Difference("stored_pending", proof.totals.pending, stored["pending"]))
    return Proof(proof, stored, len(every), len(all_lots), tuple(found))


@dataclass(frozen=True, slots=True)
class Liability:
    customers: int
    points: int
    pending: int
    debt: int
    points_value_fen: int
    by_expiry_month: list[tuple[str, int]]  # (YYYY-MM of the last valid day, points), soonest first
    expired_unswept: int
    never_expire: int
    stored_value_paid_fen: int
    stored_value_bonus_fen: int


async def liability(session: Conn, rules: InForce, now: datetime) -> Liability:
    """Points outstanding (available, pending, debt), what they are worth at the checkout rate,
    and when they expire, by the merchant's calendar month of their last valid day."""
    m = rules.merchant_id
    a, lt, v = accounts.c, lots.c, sv_accounts.c
    t = (
        await session.execute(
            select(
                func.count().filter(or_(a.balance > 0, a.pending > 0)),
                func.coalesce(func.sum(a.balance), 0),
                func.coalesce(func.sum(a.pending), 0),
                func.coalesce(func.sum(a.debt), 0),
            ).where(a.merchant_id == m)
        )
    ).one()
    months: dict[str, int] = {}
    gone = never = 0
    z = zone(rules.tz)
    for expires_at, n in await session.execute(
        select(lt.expires_at, func.sum(lt.remaining))
        .where(lt.merchant_id == m, lt.remaining > 0)
        .group_by(lt.expires_at)
    ):
        n = int(n)
        if expires_at is None:
            never += n
        elif expires_at <= now:
            gone += n
        else:
            month = (expires_at - timedelta(microseconds=1)).astimezone(z).strftime("%Y-%m")
            months[month] = months.get(month, 0) + n
    sv = (
        await session.execute(
            select(func.coalesce(func.sum(v.paid_fen), 0), func.coalesce(func.sum(v.bonus_fen), 0)).where(
                v.merchant_id == m
            )
        )
    ).one()
    unit_points, unit_fen = rules.rules.offset.unit
    points = int(t[1])
    return Liability(
        int(t[0]),
        points,
        int(t[2]),
        int(t[3]),
        points // unit_points * unit_fen,
        sorted(months.items()),
        gone,
        never,
        int(sv[0]),
        int(sv[1]),
    )
