"""Earning and losing points from what the shop says (and from the bonus calls), one merchant's
batch at a time, set-based: the customers' books are locked in one statement, what the operations
need is loaded in a few queries (orders, lots of the customers that may lose points, today's
earnings when there is a daily cap, growth in the window when there are levels, bonuses already
awarded, offsets to give back), the domain runs in Python, and everything is written back with one
bulk statement per table.

- ``Paid``: the order's points (rate, the member's level multiplier, the daily cap in the
  merchant's zone) go pending until the return window closes (at once for a window of 0, or when
  the event arrives after its window), growth is added and an upgrade happens at once. A second
  payment of the same order under another event id earns nothing.
- ``Refunded``: the order's points are cancelled (inside the window) or clawed back (after it) in
  proportion to the refunded amount, growth likewise; a checkout offset on the order comes back in
  the same proportion. A refund beyond what is left of the order is cut to what is left.
- ``Cancelled``: everything left of the order is taken back as by a refund, and its offset is
  restored whole (also for an order that was never paid: the points were held for it).
- ``Action``: a bonus (first order, birthday month, sign-in, review), once per once-key.

A refund or cancellation that arrives before its payment is kept on the order's row and applied
when the payment arrives."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import structlog
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.loyalty.adapters.tables import (
    bonus_awards,
    daily_earned,
    entries,
    messaging,
    offsets,
    order_points,
    profiles,
)
from services.loyalty.domain import earning, ledger, levels
from services.loyalty.domain.common import BonusEvent, local_day
from services.loyalty.domain.ledger import Entry, Kind, Lot, OrderPoints
from services.loyalty.service_layer import announce, books
from services.loyalty.service_layer.books import Book
from services.loyalty.service_layer.rules import InForce
from shared.db import bulk_insert, in_values
from shared.events import OutboundEvent
from shared.outbox import Outbox

log = structlog.get_logger("fugou.loyalty")
outbox = Outbox(messaging.outbox)


@dataclass(frozen=True, slots=True)
class Paid:
    event_id: str
    customer_id: str
    order_id: str
    amount_fen: int
    at: datetime


@dataclass(frozen=True, slots=True)
class Refunded:
    event_id: str
    customer_id: str
    order_id: str
    amount_fen: int
    full: bool
    at: datetime


@dataclass(frozen=True, slots=True)
class Cancelled:
    event_id: str
    customer_id: str
    order_id: str
    at: datetime


@dataclass(frozen=True, slots=True)
class Action:
    """A bonus action. ``first_order_of``: a first-order bonus triggered by this order's payment
    (awarded only when it is the customer's first paid order)."""

    event_id: str
    customer_id: str
    bonus: BonusEvent
    at: datetime
    once_key: str
    ref: str | None = None
    first_order_of: str | None = None


Op = Paid | Refunded | Cancelled | Action


@dataclass(frozen=True, slots=True)
class Awarded:
    bonus: str
    once_key: str
    points: int
    capped_by: int
    growth: int


@dataclass(slots=True)
class OrderRow:
    customer_id: str
    paid_fen: int | None  # None: not paid (yet): a refund or cancellation came first
    points: int = 0
    growth: int = 0
    growth_removed: int = 0
    paid_at: datetime | None = None
    matures_at: datetime | None = None
    refunded_fen: int = 0
    matured: bool = False
    cancelled: bool = False

    def domain(self, order_id: str) -> OrderPoints:
        assert self.paid_fen is not None and self.matures_at is not None
        return OrderPoints(order_id, self.paid_fen, self.points, self.matures_at, self.refunded_fen, self.matured)


@dataclass(slots=True)
class OffsetRow:
    customer_id: str
    points: int
    restored: int
    redeemed: list[Entry] = field(default_factory=list)
    lots: list[Lot] = field(default_factory=list)


def birthday_of(text: str | None) -> date | None:
    """The birthday's month as a date (the domain reads only the month), from YYYY-MM-DD or MM-DD."""
    if not text:
        return None
    try:
        month = int(text[-5:-3])
        return date(2000, month, 1) if 1 <= month <= 12 else None
    except ValueError:
        return None


class Batch:
    """One merchant's operations in the caller's transaction (see the module docstring)."""

    def __init__(self, session: AsyncSession, rules: InForce, now: datetime) -> None:
        self.session = session
        self.rules = rules
        self.merchant_id = rules.merchant_id
        self.now = now
        self.books: dict[str, Book] = {}
        self.orders: dict[str, OrderRow] = {}
        self.stored_orders: set[str] = set()  # those with a row in order_points already
        self.changed_orders: set[str] = set()
        self.daily: dict[tuple[str, str], int] = {}
        self.changed_daily: set[tuple[str, str]] = set()
        self.growth: dict[str, int] = {}
        self.awarded: set[tuple[str, str]] = set()
        self.award_rows: list[tuple[Any, ...]] = []
        self.birthdays: dict[str, str | None] = {}
        self.offsets: dict[str, OffsetRow] = {}
        self.changed_offsets: set[str] = set()
        self.first_orders: set[tuple[str, str]] = set()
        self.events: list[OutboundEvent] = []
        self.window_start = levels.window_start(rules.levels, now, rules.tz) if rules.levels is not None else None

    # ------------------------------------------------------------------ loading

    async def load(self, ops: Sequence[Op]) -> None:
        s, m, tz = self.session, self.merchant_id, self.rules.tz
        customers = sorted({op.customer_id for op in ops})
        self.books = await books.lock(s, m, customers, self.now)
        order_ids = sorted({op.order_id for op in ops if not isinstance(op, Action)})
        if order_ids:
            o = order_points.c
            for r in await s.execute(select(order_points).where(o.merchant_id == m, in_values(o.order_id, order_ids))):
                self.stored_orders.add(r.order_id)
                self.orders[r.order_id] = OrderRow(
                    r.customer_id,
                    r.paid_fen,
                    r.points,
                    r.growth,
                    r.growth_removed,
                    r.paid_at,
                    r.matures_at,
                    r.refunded_fen,
                    r.matured,
                    r.cancelled,
                )
        # A payment whose refund or cancellation came first takes points back at once.
        early = {
            op.order_id: op.customer_id
            for op in ops
            if isinstance(op, Paid) and op.order_id in self.orders and self.orders[op.order_id].paid_fen is None
        }
        takers = {op.customer_id for op in ops if isinstance(op, (Refunded, Cancelled))} | set(early.values())
        takers |= {cid for cid, b in self.books.items() if b.debt}
        await books.load_lots(s, self.books, takers)
        earning_days = (
            {(op.customer_id, local_day(op.at, tz).isoformat()) for op in ops if isinstance(op, (Paid, Action))}
            if self.rules.earn.daily_cap is not None
            else set()
        )
        if earning_days:
            d = daily_earned.c
            rows = await s.execute(
                select(d.customer_id, d.day, d.points).where(
                    d.merchant_id == m,
                    in_values(d.customer_id, customers),
                    in_values(d.day, sorted({day for _, day in earning_days})),
                )
            )
            self.daily = {(r.customer_id, r.day): r.points for r in rows}
        if self.window_start is not None:
            self.growth = await growth_in_window(s, m, customers, self.window_start)
        actions = [op for op in ops if isinstance(op, Action)]
        if actions:
            a = bonus_awards.c
            awarded = await s.execute(
                select(a.customer_id, a.once_key).where(
                    a.merchant_id == m,
                    in_values(a.customer_id, sorted({op.customer_id for op in actions})),
                    in_values(a.once_key, sorted({op.once_key for op in actions})),
                )
            )
            self.awarded = {(r.customer_id, r.once_key) for r in awarded}
            if any(op.bonus == BonusEvent.BIRTHDAY_MONTH for op in actions):
                p = profiles.c
                born = await s.execute(
                    select(p.customer_id, p.birthday).where(
                        p.merchant_id == m, in_values(p.customer_id, sorted({op.customer_id for op in actions}))
                    )
                )
                self.birthdays = {r.customer_id: r.birthday for r in born}
        giving_back = sorted({op.order_id for op in ops if isinstance(op, (Refunded, Cancelled))} | set(early))
        if giving_back:
            await self._load_offsets(giving_back)

    async def _load_offsets(self, order_ids: list[str]) -> None:
        s, m = self.session, self.merchant_id
        f = offsets.c
        for r in await s.execute(
            select(f.order_id, f.customer_id, f.points, f.restored).where(
                f.merchant_id == m, in_values(f.order_id, order_ids)
            )
        ):
            self.offsets[r.order_id] = OffsetRow(r.customer_id, r.points, r.restored)
        if not self.offsets:
            return
        e = entries.c
        causes = {offset_cause(oid): oid for oid in self.offsets}
        rows = await s.execute(
            select(entries)
            .where(e.merchant_id == m, in_values(e.event_id, sorted(causes)), e.kind == Kind.REDEEM.value)
            .order_by(e.id)
        )
        for r in rows:
            row = self.offsets[causes[r.event_id]]
            if r.customer_id == row.customer_id:
                row.redeemed.append(books.entry_of(r))
        for row in self.offsets.values():
            if row.redeemed:
                row.lots = await books.lot_records(s, m, row.customer_id, {x.lot_id for x in row.redeemed if x.lot_id})

    # ------------------------------------------------------------------ applying

    async def run(self, ops: Sequence[Op]) -> list[Awarded | None]:
        """Load, apply every operation in order, write; returns what each Action awarded."""
        await self.load(ops)
        out: list[Awarded | None] = []
        for op in ops:
            if isinstance(op, Paid):
                self.paid(op)
            elif isinstance(op, Refunded):
                self.refunded(op)
            elif isinstance(op, Cancelled):
                self.cancelled(op)
            else:
                out.append(self.action(op))
        await self.write()
        return out

    def _order(self, order_id: str, customer_id: str) -> OrderRow | None:
        row = self.orders.get(order_id)
        if row is None:
            row = self.orders[order_id] = OrderRow(customer_id, None)
            self.changed_orders.add(order_id)
        if row.customer_id != customer_id:
            log.warning(
                "loyalty.order_of_another_customer",
                merchant_id=self.merchant_id,
                order_id=order_id,
                customer_id=customer_id,
                owner=row.customer_id,
            )
            return None
        return row

    def paid(self, op: Paid) -> None:
        row = self._order(op.order_id, op.customer_id)
        if row is None:
            return
        if row.paid_fen is not None:
            log.info(
                "loyalty.order_paid_again", merchant_id=self.merchant_id, order_id=op.order_id, event_id=op.event_id
            )
            return
        rules, tz = self.rules, self.rules.tz
        book = self.books[op.customer_id]
        first = book.first_paid_at is None
        capped = rules.earn.daily_cap is not None
        day = local_day(op.at, tz).isoformat() if capped else ""
        got = earning.points_for_order(
            rules.earn,
            op.amount_fen,
            level=self._level(book),
            earned_today=self.daily.get((op.customer_id, day), 0) if capped else 0,
        )
        matures = earning.matures_at(rules.earn, op.at)
        posting = ledger.post_order(
            book.account(taking=False),
            order_id=op.order_id,
            paid_fen=op.amount_fen,
            points=got.points,
            event_id=op.event_id,
            at=op.at,
            matures_at=matures,
            rules=rules.ledger,
            tz=tz,
        )
        book.post(posting)
        order = posting.order
        assert order is not None
        early_refund, early_cancel = row.refunded_fen, row.cancelled
        row.paid_fen, row.points, row.paid_at, row.matures_at = op.amount_fen, got.points, op.at, matures
        row.refunded_fen, row.matured, row.cancelled = 0, order.matured, False
        self.changed_orders.add(op.order_id)
        if capped and got.points:
            self._earned_on(op.customer_id, day, got.points)
        if first:
            book.first_paid_at = op.at
            book.touch()
            self.first_orders.add((op.customer_id, op.order_id))
        if got.points:
            if order.matured:
                lot = book.lots.get(f"mature:{op.order_id}")
                self.events.append(
                    announce.earned(
                        book,
                        cause="order",
                        points=got.points,
                        status="available",
                        at=op.at,
                        order_id=op.order_id,
                        lot_id=f"mature:{op.order_id}",
                        expires_at=lot.expires_at if lot else None,
                        capped_by=got.capped_by,
                    )
                )
            else:
                self.events.append(
                    announce.earned(
                        book,
                        cause="order",
                        points=got.points,
                        status="pending",
                        at=op.at,
                        order_id=op.order_id,
                        matures_at=matures,
                        capped_by=got.capped_by,
                    )
                )
        if rules.levels is not None:
            row.growth = levels.growth_for_order(rules.levels, op.amount_fen)
            self._grow(book, row.growth, op.at)
        if not row.matured and self.now >= matures:  # the event came after its window closed
            self._mature(book, op.order_id, row)
        if early_cancel:
            self._take_back(
                book, op.order_id, row, row.paid_fen, op.event_id, op.at, reason="cancelled before the payment arrived"
            )
            row.cancelled = True
        elif early_refund:
            self._take_back(
                book, op.order_id, row, early_refund, op.event_id, op.at, reason="refunded before the payment arrived"
            )

    def _mature(self, book: Book, order_id: str, row: OrderRow) -> None:
        order = row.domain(order_id)
        posting = ledger.mature(
            book.account(taking=False), order, at=self.now, rules=self.rules.ledger, tz=self.rules.tz
        )
        book.post(posting)
        row.matured = True
        self.changed_orders.add(order_id)
        if order.pending:
            lot = book.lots.get(f"mature:{order_id}")
            self.events.append(
                announce.earned(
                    book,
                    cause="maturity",
                    points=order.pending,
                    status="available",
                    at=order.matures_at,
                    order_id=order_id,
                    lot_id=f"mature:{order_id}",
                    expires_at=lot.expires_at if lot else None,
                )
            )

    def refunded(self, op: Refunded) -> None:
        row = self._order(op.order_id, op.customer_id)
        if row is None:
            return
        if row.paid_fen is None:  # before its payment: remember it
            row.refunded_fen += op.amount_fen
            row.cancelled = row.cancelled or op.full
            self.changed_orders.add(op.order_id)
            return
        if row.cancelled:
            return
        book = self.books[op.customer_id]
        left = row.paid_fen - row.refunded_fen
        self._take_back(book, op.order_id, row, left if op.full else op.amount_fen, op.event_id, op.at)

    def cancelled(self, op: Cancelled) -> None:
        row = self._order(op.order_id, op.customer_id)
        if row is None:
            return
        book = self.books[op.customer_id]
        if row.paid_fen is not None and not row.cancelled:
            self._take_back(book, op.order_id, row, row.paid_fen - row.refunded_fen, op.event_id, op.at)
        if not row.cancelled:
            row.cancelled = True
            self.changed_orders.add(op.order_id)
        self._restore_offset(book, op.order_id, None, op.event_id, op.at)

    def _take_back(
        self,
        book: Book,
        order_id: str,
        row: OrderRow,
        amount_fen: int,
        event_id: str,
        at: datetime,
        reason: str | None = None,
    ) -> None:
        """Refund ``amount_fen`` of the order (cut to what is left): points, growth, offset."""
        assert row.paid_fen is not None
        left = row.paid_fen - row.refunded_fen
        if amount_fen > left:
            log.warning(
                "loyalty.refund_exceeds_order",
                merchant_id=self.merchant_id,
                order_id=order_id,
                event_id=event_id,
                refund_fen=amount_fen,
                left_fen=left,
            )
            amount_fen = left
        if amount_fen <= 0:
            return
        before = row.domain(order_id)
        posting = ledger.refund(
            book.account(), before, amount_fen, event_id=event_id, at=at, rules=self.rules.ledger, tz=self.rules.tz
        )
        if reason is not None:
            posting = ledger.Posting(
                posting.account,
                tuple(e if e.reason else _with_reason(e, reason) for e in posting.entries),
                posting.order,
            )
        book.post(posting)
        after = posting.order
        assert after is not None
        if after.matured and not before.matured and before.pending:
            lot = book.lots.get(f"mature:{order_id}")
            self.events.append(
                announce.earned(
                    book,
                    cause="maturity",
                    points=before.pending,
                    status="available",
                    at=before.matures_at,
                    order_id=order_id,
                    lot_id=f"mature:{order_id}",
                    expires_at=lot.expires_at if lot else None,
                )
            )
        if row.growth:
            g = levels.growth_to_remove(row.growth, row.paid_fen, row.refunded_fen, amount_fen)
            row.growth_removed += g
            assert row.paid_at is not None
            self._grow(book, -g, row.paid_at)  # counted where the order's growth was
        row.refunded_fen, row.matured = after.refunded_fen, after.matured
        self.changed_orders.add(order_id)
        paid = row.paid_fen
        share = None if row.refunded_fen >= paid else (row.refunded_fen, paid)
        self._restore_offset(book, order_id, share, event_id, at)

    def _restore_offset(
        self, book: Book, order_id: str, share: tuple[int, int] | None, event_id: str, at: datetime
    ) -> None:
        """Give back the order's checkout offset: all of it (``share`` None) or ``refunded/paid``
        of it (floored), less what came back before."""
        off = self.offsets.get(order_id)
        if off is None or off.customer_id != book.customer_id or not off.redeemed:
            return
        target = off.points if share is None else off.points * share[0] // share[1]
        want = target - off.restored
        if want <= 0:
            return
        posting = ledger.restore(
            book.account(),
            off.redeemed,
            event_id=event_id,
            at=at,
            points=want,
            already_restored=off.restored,
            lots=off.lots,
        )
        book.post(posting)
        off.restored += want
        self.changed_offsets.add(order_id)

    def action(self, op: Action) -> Awarded | None:
        cid = op.customer_id
        if op.first_order_of is not None and (cid, op.first_order_of) not in self.first_orders:
            return None
        if (cid, op.once_key) in self.awarded:
            return None
        rules, tz = self.rules, self.rules.tz
        birthday = birthday_of(self.birthdays.get(cid))
        if op.bonus == BonusEvent.BIRTHDAY_MONTH and (birthday is None or local_day(op.at, tz).month != birthday.month):
            return None
        day = local_day(op.at, tz).isoformat()
        capped = rules.earn.daily_cap is not None
        award = earning.bonus_points(
            rules.earn,
            op.bonus,
            at=op.at,
            tz=tz,
            birthday=birthday,
            ref=op.ref,
            earned_today=self.daily.get((cid, day), 0) if capped else 0,
        )
        growth = levels.growth_for_bonus(rules.levels, op.bonus) if rules.levels is not None else 0
        if award is None and not growth:
            return None
        book = self.books[cid]
        points = award.points if award is not None else 0
        cause = f"bonus:{op.once_key}"
        if points:
            posting = ledger.credit(
                book.account(taking=False),
                points,
                event_id=cause,
                at=op.at,
                rules=rules.ledger,
                tz=tz,
                reason=f"{op.bonus.value} bonus ({op.event_id})",
            )
            book.post(posting)
            if capped:
                self._earned_on(cid, day, points)
            lot = book.lots.get(cause)
            self.events.append(
                announce.earned(
                    book,
                    cause="bonus",
                    points=points,
                    status="available",
                    at=op.at,
                    bonus=op.bonus.value,
                    lot_id=cause,
                    expires_at=lot.expires_at if lot else None,
                    capped_by=award.capped_by if award else 0,
                )
            )
        if growth:
            self._grow(book, growth, op.at)
        self.awarded.add((cid, op.once_key))
        self.award_rows.append((self.merchant_id, cid, op.once_key, op.bonus.value, points, growth, op.event_id, op.at))
        return Awarded(op.bonus.value, op.once_key, points, award.capped_by if award else 0, growth)

    # ------------------------------------------------------------------ levels and growth

    def _level(self, book: Book) -> str | None:
        ladder = self.rules.levels
        if ladder is None:
            return None
        return current_level(ladder, book.level, self.growth.get(book.customer_id, 0))

    def _grow(self, book: Book, delta: int, at: datetime) -> None:
        """Growth ``delta`` counted at ``at`` (the order's payment, the bonus's action)."""
        if self.window_start is None or not delta or at < self.window_start:
            return  # no levels, or outside the window that counts now
        cid = book.customer_id
        self.growth[cid] = self.growth.get(cid, 0) + delta
        if delta < 0:
            return  # growth lost never downgrades at once: reviews do that
        self.upgrade(book, at)

    def upgrade(self, book: Book, at: datetime) -> None:
        """Move the member up at once if the growth in the window reaches a higher level."""
        ladder = self.rules.levels
        assert ladder is not None
        growth = self.growth.get(book.customer_id, 0)
        change = levels.on_growth(ladder, current_level(ladder, book.level, growth), growth)
        if change is None:
            return
        previous = book.level
        book.level, book.level_since, book.last_review_at = change.to_code, at, at
        book.next_review_at = levels.next_review_at(ladder, at, self.rules.tz)
        book.warned_for = None
        book.touch()
        self.events.append(
            announce.level_changed(
                book, from_level=previous, to_level=change.to_code, direction="upgrade", growth=growth, at=at
            )
        )

    def _earned_on(self, customer_id: str, day: str, points: int) -> None:
        key = (customer_id, day)
        self.daily[key] = self.daily.get(key, 0) + points
        self.changed_daily.add(key)

    # ------------------------------------------------------------------ writing

    async def write(self) -> None:
        s, m, now = self.session, self.merchant_id, self.now
        await books.write(s, self.books.values(), now)
        if self.changed_orders:
            cols = [
                "paid_fen",
                "points",
                "growth",
                "growth_removed",
                "paid_at",
                "matures_at",
                "refunded_fen",
                "matured",
                "cancelled",
            ]
            new: list[tuple[Any, ...]] = []
            changed: list[tuple[Any, ...]] = []
            for oid in self.changed_orders:
                r = self.orders[oid]
                (changed if oid in self.stored_orders else new).append(
                    (
                        m,
                        oid,
                        r.customer_id,
                        r.paid_fen,
                        r.points,
                        r.growth,
                        r.growth_removed,
                        r.paid_at,
                        r.matures_at,
                        r.refunded_fen,
                        r.matured,
                        r.cancelled,
                    )
                )
            names = ["merchant_id", "order_id", "customer_id", *cols]
            await bulk_insert(s, order_points, names, new)  # the orders' locked customers make them ours alone
            await bulk_insert(
                s,
                order_points,
                names,
                changed,
                conflict=["merchant_id", "order_id"],
                update={c: f"excluded.{c}" for c in cols},
            )
        await bulk_insert(
            s,
            daily_earned,
            ["merchant_id", "customer_id", "day", "points"],
            [(m, cid, day, self.daily[(cid, day)]) for cid, day in sorted(self.changed_daily)],
            conflict=["merchant_id", "customer_id", "day"],
            update={"points": "excluded.points"},
        )
        await bulk_insert(
            s,
            bonus_awards,
            ["merchant_id", "customer_id", "once_key", "event", "points", "growth", "cause", "awarded_at"],
            self.award_rows,
        )
        for oid in self.changed_offsets:
            await s.execute(
                offsets.update()
                .where(offsets.c.merchant_id == m, offsets.c.order_id == oid)
                .values(restored=self.offsets[oid].restored)
            )
        await outbox.stage(s, self.events)


def _with_reason(e: Entry, reason: str) -> Entry:
    return Entry(e.kind, e.event_id, e.at, e.points, e.pending, e.debt, e.lot_id, e.order_id, reason, e.operator)


def offset_cause(order_id: str) -> str:
    """The cause of a checkout offset's redeem entries: one offset per order."""
    return f"offset:{order_id}"


async def growth_in_window(conn: Any, merchant_id: str, customer_ids: Sequence[str], start: datetime) -> dict[str, int]:
    """Each customer's growth value in the window from ``start``: the growth of the orders paid
    since, net of their refunds, and of the bonus actions since."""
    o, a = order_points.c, bonus_awards.c
    ids = sorted(set(customer_ids))
    out: dict[str, int] = {}
    for q in (
        select(o.customer_id, func.sum(o.growth - o.growth_removed))
        .where(o.merchant_id == merchant_id, in_values(o.customer_id, ids), o.paid_at >= start, o.growth > 0)
        .group_by(o.customer_id),
        select(a.customer_id, func.sum(a.growth))
        .where(a.merchant_id == merchant_id, in_values(a.customer_id, ids), a.awarded_at >= start, a.growth > 0)
        .group_by(a.customer_id),
    ):
        for cid, total in await conn.execute(q):
            out[cid] = out.get(cid, 0) + int(total)
    return out


def current_level(ladder: levels.LevelRules, stored: str | None, growth: int) -> str:
    """The member's level on the ladder in force: the stored one, the first level when none is
    stored yet, or, when the ladder no longer has the stored code, where the growth places them."""
    if stored is None:
        return ladder.levels[0].code
    if any(level.code == stored for level in ladder.levels):
        return stored
    return levels.level_for(ladder, growth).code
