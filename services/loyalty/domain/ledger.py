"""The points ledger: entries with a cause, lots that expire first-in first-out (pure, no I/O).

Three running sums, each the sum of one column of the entries:

- ``balance`` (Σ ``points``): available, spendable points; always equal to Σ ``remaining`` of the
  open lots, and never negative;
- ``pending`` (Σ ``pending``): order points inside their return window, not yet spendable;
- ``debt`` (Σ ``debt``): points clawed back after the window that the balance could not cover.

Entry kinds (every entry names its cause, ``event_id``; an operation's entries share it):

==============  =========================================================  ====================
kind            what                                                       points/pending/debt
==============  =========================================================  ====================
earn_pending    an order's points, pending until its return window closes  0 / +n / 0
earn_available  the window closed (``mature``), or a bonus (``credit``)    +n / -n or 0 / 0
cancel          a refund inside the window, of that order's pending points  0 / -n / 0
clawback        a refund after the window: taken from the balance, one     -n / 0 / 0
                entry per lot; a shortfall entry records the rest as debt  0 / 0 / +s
recover         debt repaid from a later earning (mature or credit)        -n / 0 / -n
write_off       debt forgiven (merchant policy, or by an operator)         0 / 0 / -n
redeem          spent (checkout offset, mall), one entry per lot           -n / 0 / 0
restore         a redemption given back (an order paid with points was     +n / 0 / 0
                cancelled), onto the lots it came from
expire          a lot's unspent points at its expiry                       -n / 0 / 0
adjust          manual, with a reason and an operator: +n is a new lot,    ±n / 0 / 0
                -n is taken first-in first-out and cannot exceed the
                balance
==============  =========================================================  ====================

Lots: every credit to the balance (a matured order, a bonus, a positive adjustment) is a lot with
an expiry from the merchant's term (``lot_expiry``), counted from the moment the points became
available. Everything that takes points (redeem, clawback, recover, negative adjust) takes them
from the lots in ``fifo_key`` order: the lot that expires first, then the one earned first, then
by ``lot_id``. Under one term that is exactly earning order; if the merchant changes the term,
it still spends the points that would expire first. Every entry that changes the balance names
its lot, so Σ ``points`` per ``lot_id`` = that lot's ``remaining`` (``reconcile`` checks both).

Refunds: an order's points are removed in proportion to the refunded amount, cumulatively
(``common.removed_on_refund``: after refunds of R of P fen, ``ceil(points × R / P)`` are gone, so a
full refund removes exactly the points and partial refunds never leave a fraction behind). Before
the window closes that cancels pending points; at or after ``matures_at`` the order is matured
first (in the same operation, even if the sweep was late) and the points are clawed back.

Debt policy (``LedgerRules.debt_policy``): ``carry`` records a clawback shortfall as debt,
repaid first from the next earnings (``recover`` entries right after the earning, at most the
points earned, taken first in first out like every debit); manual adjustments and restored
redemptions do not repay it. ``write_off`` records the shortfall and forgives it at once (a
``clawback`` +s debt entry, then a ``write_off`` -s), so Σ debt of ``write_off`` entries is what
the merchant forgave. Either way the balance never goes below zero.

Expiry: ``expires_at`` is the first instant the points are gone (an "end of next year" lot earned
in 2026 expires at 2028-01-01 00:00 local, i.e. it is valid through 2027-12-31 23:59:59 local);
a lot is expired when ``at >= expires_at``. The sweep (``expire``) is idempotent: its entries are
dated at each lot's ``expires_at`` and caused by ``expire:<lot_id>``. Every operation that takes
points expires what is due first, so nothing expired is ever spent even when the sweep is late.

Every operation is a function ``(account, ...) -> Posting``: the new account (open lots and
debt), the entries to insert, and the order record when one is involved. The service layer
loads the customer's open lots and debt ``FOR UPDATE`` (or compare-and-sets a version), applies
the function, and writes the entries, the changed lots and the debt in one transaction. An
operation's entries may begin with ``expire`` entries of lots that fell due, and a mature's carry
the cause ``mature:<order_id>``. Given distinct ``event_id`` per operation, ``(event_id, kind,
lot_id)`` is unique over a customer's entries (``lot_id`` may be null: index it NULLS NOT
DISTINCT), so a replayed operation fails on the constraint instead of counting twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, tzinfo
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field, StrictInt, field_validator

from services.loyalty.domain.common import (
    Code,
    LoyaltyError,
    Strict,
    amount,
    local_day,
    local_midnight,
    removed_on_refund,
    require_aware,
    yuan,
    zone,
)

MAX_EXPIRY_DAYS = 3650
MAX_EXPIRY_YEARS = 10


class Kind(StrEnum):
    EARN_PENDING = "earn_pending"
    EARN_AVAILABLE = "earn_available"
    CANCEL = "cancel"
    CLAWBACK = "clawback"
    RECOVER = "recover"
    WRITE_OFF = "write_off"
    REDEEM = "redeem"
    RESTORE = "restore"
    EXPIRE = "expire"
    ADJUST = "adjust"


class DebtPolicy(StrEnum):
    CARRY = "carry"
    WRITE_OFF = "write_off"


# --- the merchant's rules -----------------------------------------------------------------------


class EndOfYear(Strict):
    """Lots expire at the end of the local year ``years_after`` years after the one they became
    available in: 1 = "the end of next year" (2026 → valid through 2027-12-31 23:59:59)."""

    type: Literal["end_of_year"] = "end_of_year"
    years_after: StrictInt = Field(default=1, description=f"0 = the end of this year, up to {MAX_EXPIRY_YEARS}.")

    @field_validator("years_after")
    @classmethod
    def _in_range(cls, v: int) -> int:
        if not 0 <= v <= MAX_EXPIRY_YEARS:
            raise ValueError(f"years_after must be 0..{MAX_EXPIRY_YEARS}, got {v}")
        return v


class AfterDays(Strict):
    """Lots are valid through the end of the local day ``days`` days after the one they became
    available on (365: available 2026-11-01 10:00 → valid through 2027-11-01 23:59:59)."""

    type: Literal["days"] = "days"
    days: StrictInt

    @field_validator("days")
    @classmethod
    def _in_range(cls, v: int) -> int:
        if not 1 <= v <= MAX_EXPIRY_DAYS:
            raise ValueError(f"days must be 1..{MAX_EXPIRY_DAYS}, got {v}")
        return v


class NeverExpires(Strict):
    type: Literal["never"] = "never"


ExpiryTerm = Annotated[EndOfYear | AfterDays | NeverExpires, Field(discriminator="type")]


class LedgerRules(Strict):
    """How long points live, what happens to a clawback shortfall, when to warn of expiry."""

    expiry: ExpiryTerm = Field(default_factory=EndOfYear)
    debt_policy: DebtPolicy = DebtPolicy.CARRY
    notice_days: StrictInt = Field(default=30, description="points.expiring goes out this many days before.")

    @field_validator("notice_days")
    @classmethod
    def _notice_in_range(cls, v: int) -> int:
        if not 0 <= v <= 365:
            raise ValueError(f"notice_days must be 0..365 (0 = no notice), got {v}")
        return v


def lot_expiry(term: EndOfYear | AfterDays | NeverExpires, available_at: datetime, tz: tzinfo | str) -> datetime | None:
    """The first instant a lot that became available at ``available_at`` is expired (local
    midnight starting the day after its last valid day), or None for a term that never expires."""
    require_aware("available_at", available_at)
    day = local_day(available_at, tz)
    if isinstance(term, EndOfYear):
        return local_midnight(day.replace(year=day.year + term.years_after + 1, month=1, day=1), tz)
    if isinstance(term, AfterDays):
        return local_midnight(day + timedelta(days=term.days + 1), tz)
    return None


# --- records ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Lot:
    """Points that became available together and expire together."""

    lot_id: str
    earned_at: datetime
    expires_at: datetime | None
    points: int
    remaining: int

    def __post_init__(self) -> None:
        require_aware("earned_at", self.earned_at)
        if self.expires_at is not None:
            require_aware("expires_at", self.expires_at)
            if self.expires_at <= self.earned_at:
                raise ValueError(f"lot {self.lot_id}: expires_at must be after earned_at")
        if not 0 <= self.remaining <= self.points:
            raise ValueError(f"lot {self.lot_id}: remaining {self.remaining} must be within 0..{self.points}")

    def expired(self, at: datetime) -> bool:
        return self.expires_at is not None and at >= self.expires_at


_FOREVER = datetime.max.replace(tzinfo=zone("UTC"))


def fifo_key(lot: Lot) -> tuple[datetime, datetime, str]:
    """The order lots are spent in: first to expire, then first earned, then lot_id (never-
    expiring lots last). In SQL: ``ORDER BY expires_at NULLS LAST, earned_at, lot_id``."""
    return (lot.expires_at or _FOREVER, lot.earned_at, lot.lot_id)


@dataclass(frozen=True, slots=True)
class Entry:
    """One change, with its cause. ``points``, ``pending`` and ``debt`` are signed changes to the
    three sums; ``lot_id`` is set on every entry that changes ``points``."""

    kind: Kind
    event_id: str
    at: datetime
    points: int = 0
    pending: int = 0
    debt: int = 0
    lot_id: str | None = None
    order_id: str | None = None
    reason: str | None = None
    operator: str | None = None


@dataclass(frozen=True, slots=True)
class OrderPoints:
    """What an order earned, and how much of it has been refunded. ``removed`` and ``pending``
    follow from it; the service keeps one row per order."""

    order_id: str
    paid_fen: int
    points: int
    matures_at: datetime
    refunded_fen: int = 0
    matured: bool = False

    def __post_init__(self) -> None:
        require_aware("matures_at", self.matures_at)
        if self.paid_fen < 0 or self.points < 0:
            raise ValueError(f"order {self.order_id}: paid_fen and points must not be negative")
        if not 0 <= self.refunded_fen <= self.paid_fen:
            raise ValueError(f"order {self.order_id}: refunded_fen must be within 0..{self.paid_fen}")

    @property
    def removed(self) -> int:
        """Points cancelled or clawed back so far: ``ceil(points × refunded / paid)``."""
        return removed_on_refund(self.points, self.paid_fen, self.refunded_fen)

    @property
    def pending(self) -> int:
        return 0 if self.matured else self.points - self.removed


@dataclass(frozen=True, slots=True)
class Account:
    """A customer's open lots (kept in ``fifo_key`` order; empty lots are dropped) and debt."""

    lots: tuple[Lot, ...] = ()
    debt: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.debt, bool) or not isinstance(self.debt, int) or self.debt < 0:
            raise ValueError(f"debt must be a non-negative integer, got {self.debt!r}")
        ids = [lot.lot_id for lot in self.lots]
        if len(set(ids)) != len(ids):
            raise ValueError("an account lists a lot twice")
        object.__setattr__(self, "lots", tuple(sorted((lot for lot in self.lots if lot.remaining), key=fifo_key)))

    @property
    def balance(self) -> int:
        """Σ remaining of the open lots = Σ entry.points."""
        return sum(lot.remaining for lot in self.lots)

    def spendable(self, at: datetime) -> int:
        """The balance at ``at``, leaving out lots that have expired but not been swept yet (what
        GET my-points shows: ``SUM(remaining) WHERE expires_at IS NULL OR expires_at > now``)."""
        require_aware("at", at)
        return sum(lot.remaining for lot in self.lots if not lot.expired(at))


@dataclass(frozen=True, slots=True)
class Posting:
    """The outcome of an operation: the new account, the entries to insert (in order), and the
    order record when the operation concerned one."""

    account: Account
    entries: tuple[Entry, ...] = ()
    order: OrderPoints | None = None

    @property
    def changed(self) -> bool:
        return bool(self.entries)


# --- the working copy every operation uses ------------------------------------------------------


class _Book:
    __slots__ = ("debt", "entries", "lots")

    def __init__(self, account: Account) -> None:
        self.lots: list[Lot] = list(account.lots)
        self.debt = account.debt
        self.entries: list[Entry] = []

    @property
    def balance(self) -> int:
        return sum(lot.remaining for lot in self.lots)

    def add_lot(self, lot: Lot) -> None:
        if any(existing.lot_id == lot.lot_id for existing in self.lots):
            raise ValueError(f"lot {lot.lot_id} already exists: an event_id can credit points once")
        self.lots.append(lot)
        self.lots.sort(key=fifo_key)

    def expire_due(self, at: datetime) -> None:
        keep = []
        for lot in self.lots:
            if lot.expired(at):
                assert lot.expires_at is not None
                self.entries.append(
                    Entry(Kind.EXPIRE, f"expire:{lot.lot_id}", lot.expires_at, points=-lot.remaining, lot_id=lot.lot_id)
                )
            else:
                keep.append(lot)
        self.lots = keep

    def take(
        self,
        points: int,
        kind: Kind,
        event_id: str,
        at: datetime,
        *,
        repays_debt: bool = False,
        order_id: str | None = None,
        reason: str | None = None,
        operator: str | None = None,
    ) -> int:
        """Take up to ``points`` from the lots, first in first out, one entry per lot touched."""
        left = points
        keep = []
        for lot in self.lots:
            if left and lot.remaining:
                n = min(left, lot.remaining)
                left -= n
                self.entries.append(
                    Entry(
                        kind,
                        event_id,
                        at,
                        points=-n,
                        debt=-n if repays_debt else 0,
                        lot_id=lot.lot_id,
                        order_id=order_id,
                        reason=reason,
                        operator=operator,
                    )
                )
                lot = replace(lot, remaining=lot.remaining - n)
            if lot.remaining:
                keep.append(lot)
        self.lots = keep
        taken = points - left
        if repays_debt:
            self.debt -= taken
        return taken

    def recover(self, earned: int, event_id: str, at: datetime) -> None:
        """Repay debt from an earning of ``earned`` points: at most that much, taken FIFO."""
        if self.debt:
            self.take(
                min(self.debt, earned, self.balance),
                Kind.RECOVER,
                event_id,
                at,
                repays_debt=True,
                reason="repays points clawed back earlier",
            )

    def post(self, *, order: OrderPoints | None = None) -> Posting:
        return Posting(Account(tuple(self.lots), self.debt), tuple(self.entries), order)


def _points(name: str, value: object) -> int:
    return amount(name, value, unit="points")


def _credit_lot(
    book: _Book, lot_id: str, points: int, available_at: datetime, rules: LedgerRules, tz: tzinfo | str
) -> None:
    book.add_lot(Lot(lot_id, available_at, lot_expiry(rules.expiry, available_at, tz), points, points))


# --- operations ---------------------------------------------------------------------------------


def post_order(
    account: Account,
    *,
    order_id: str,
    paid_fen: int,
    points: int,
    event_id: str,
    at: datetime,
    matures_at: datetime,
    rules: LedgerRules,
    tz: tzinfo | str,
) -> Posting:
    """An order was paid and earned ``points`` (``earning.points_for_order``): they are pending
    until ``matures_at`` (``earning.matures_at``). A window already closed matures them at once.
    A zero-point order still gets its record (so its refunds are understood) but no entry."""
    require_aware("at", at)
    amount("paid_fen", paid_fen, unit="fen", allow_zero=True)
    amount("points", points, unit="points", allow_zero=True)
    order = OrderPoints(order_id, paid_fen, points, matures_at)
    book = _Book(account)
    if points:
        book.entries.append(Entry(Kind.EARN_PENDING, event_id, at, pending=points, order_id=order_id))
    posted = book.post(order=order)
    if at >= matures_at:
        matured = mature(posted.account, order, at=at, rules=rules, tz=tz)
        return Posting(matured.account, posted.entries + matured.entries, matured.order)
    return posted


def mature(account: Account, order: OrderPoints, *, at: datetime, rules: LedgerRules, tz: tzinfo | str) -> Posting:
    """The order's return window has closed (``at >= matures_at``): what is still pending
    becomes a lot, available from ``matures_at`` (so a late sweep dates it the same), caused by
    ``mature:<order_id>``; debt is repaid from it first. Before the window closes, or for an
    order already matured, nothing happens (safe to run twice)."""
    require_aware("at", at)
    if order.matured or at < order.matures_at:
        return Posting(account, (), order)
    done = replace(order, matured=True)
    points = order.pending
    book = _Book(account)
    if points:
        cause = f"mature:{order.order_id}"
        _credit_lot(book, cause, points, order.matures_at, rules, tz)
        book.entries.append(
            Entry(
                Kind.EARN_AVAILABLE,
                cause,
                order.matures_at,
                points=points,
                pending=-points,
                lot_id=cause,
                order_id=order.order_id,
            )
        )
        book.expire_due(at)
        book.recover(points, cause, order.matures_at)
    return book.post(order=done)


def credit(
    account: Account,
    points: int,
    *,
    event_id: str,
    at: datetime,
    rules: LedgerRules,
    tz: tzinfo | str,
    reason: str | None = None,
) -> Posting:
    """Points available at once (a bonus: ``earning.bonus_points``), as a new lot named
    ``event_id``; debt is repaid from it first."""
    require_aware("at", at)
    _points("points", points)
    book = _Book(account)
    _credit_lot(book, event_id, points, at, rules, tz)
    book.entries.append(Entry(Kind.EARN_AVAILABLE, event_id, at, points=points, lot_id=event_id, reason=reason))
    book.expire_due(at)
    book.recover(points, event_id, at)
    return book.post()


def refund(
    account: Account,
    order: OrderPoints,
    refund_fen: int,
    *,
    event_id: str,
    at: datetime,
    rules: LedgerRules,
    tz: tzinfo | str,
) -> Posting:
    """``refund_fen`` of the order was refunded. Inside the window the order's pending points
    are cancelled in proportion; at or after ``matures_at`` they are matured (if the sweep has not
    yet) and clawed back from the balance, first in first out; a shortfall follows the debt policy.
    Refunding more than was paid, in total, is ``refund_exceeds`` (409)."""
    require_aware("at", at)
    amount("refund_fen", refund_fen, unit="fen")
    if order.refunded_fen + refund_fen > order.paid_fen:
        raise LoyaltyError(
            Code.REFUND_EXCEEDS,
            f"refunding {yuan(refund_fen)} would bring order {order.order_id}'s refunds to "
            f"{yuan(order.refunded_fen + refund_fen)}, more than the {yuan(order.paid_fen)} paid",
            field="refund_fen",
        )
    entries: tuple[Entry, ...] = ()
    if not order.matured and at >= order.matures_at:
        matured = mature(account, order, at=at, rules=rules, tz=tz)
        account, order, entries = matured.account, matured.order or order, matured.entries
    after = replace(order, refunded_fen=order.refunded_fen + refund_fen)
    points = after.removed - order.removed
    book = _Book(account)
    book.entries.extend(entries)
    if not points:
        return book.post(order=after)
    if not order.matured:
        book.entries.append(Entry(Kind.CANCEL, event_id, at, pending=-points, order_id=order.order_id))
        return book.post(order=after)
    book.expire_due(at)
    taken = book.take(points, Kind.CLAWBACK, event_id, at, order_id=order.order_id)
    shortfall = points - taken
    if shortfall:
        book.debt += shortfall
        book.entries.append(
            Entry(
                Kind.CLAWBACK,
                event_id,
                at,
                debt=shortfall,
                order_id=order.order_id,
                reason=f"shortfall: the balance covered {taken} of {points} points",
            )
        )
        if rules.debt_policy == DebtPolicy.WRITE_OFF:
            book.debt -= shortfall
            book.entries.append(
                Entry(
                    Kind.WRITE_OFF,
                    event_id,
                    at,
                    debt=-shortfall,
                    order_id=order.order_id,
                    reason="clawback shortfall written off by policy",
                )
            )
    return book.post(order=after)


def redeem(
    account: Account,
    points: int,
    *,
    event_id: str,
    at: datetime,
    order_id: str | None = None,
    reason: str | None = None,
) -> Posting:
    """Spend ``points`` (a checkout offset, a mall item), first in first out. More than the
    spendable balance at ``at`` is ``insufficient_points`` (409); nothing is taken then."""
    require_aware("at", at)
    _points("points", points)
    book = _Book(account)
    book.expire_due(at)
    if points > book.balance:
        raise LoyaltyError(
            Code.INSUFFICIENT_POINTS,
            f"redeeming {points} points needs more than the {book.balance} points available",
            field="points",
        )
    book.take(points, Kind.REDEEM, event_id, at, order_id=order_id, reason=reason)
    return book.post()


def restore(
    account: Account,
    redeemed: Sequence[Entry],
    *,
    event_id: str,
    at: datetime,
    points: int | None = None,
    already_restored: int = 0,
    lots: Iterable[Lot] = (),
) -> Posting:
    """Give back a redemption (its ``redeem`` entries): all of it, or ``points`` of it, onto the
    lots it came from, the last-taken (latest-expiring) first; ``already_restored`` is what
    earlier calls gave back. Lots that were emptied meanwhile are reopened from their records
    (``lots``: the service selects them by the entries' lot_ids). Points whose lot has expired
    by ``at`` come back and expire in the same operation, so the history shows both. Restoring
    more than was redeemed is ``refund_exceeds`` (409). Restores never repay debt."""
    require_aware("at", at)
    if not redeemed or any(e.kind != Kind.REDEEM or e.lot_id is None for e in redeemed):
        raise ValueError("restore takes the redeem entries of one redemption")
    total = -sum(e.points for e in redeemed)
    left = total - amount("already_restored", already_restored, unit="points", allow_zero=True)
    want = left if points is None else _points("points", points)
    if want > left or left <= 0:
        raise LoyaltyError(
            Code.REFUND_EXCEEDS,
            f"restoring {want} points exceeds the {max(left, 0)} left of a {total}-point redemption",
            field="points",
        )
    records = {lot.lot_id: lot for lot in lots}
    book = _Book(account)
    skip = already_restored
    for entry in reversed(redeemed):
        n = -entry.points
        used = min(skip, n)
        skip -= used
        n = min(n - used, want)
        if not n:
            continue
        want -= n
        assert entry.lot_id is not None
        lot = next((x for x in book.lots if x.lot_id == entry.lot_id), None)
        if lot is None:  # emptied meanwhile: reopen it from its record (the account says it holds 0)
            if entry.lot_id not in records:
                raise ValueError(f"lot {entry.lot_id} is neither open nor among the records passed in lots=")
            lot = replace(records[entry.lot_id], remaining=0)
        book.entries.append(Entry(Kind.RESTORE, event_id, at, points=n, lot_id=lot.lot_id, order_id=entry.order_id))
        if lot.expired(at):
            book.entries.append(
                Entry(Kind.EXPIRE, event_id, at, points=-n, lot_id=lot.lot_id, reason="restored after its lot expired")
            )
            continue
        book.lots = [x for x in book.lots if x.lot_id != lot.lot_id]
        if lot.remaining + n > lot.points:
            raise ValueError(f"lot {lot.lot_id}: restoring {n} would exceed its {lot.points} points")
        book.add_lot(replace(lot, remaining=lot.remaining + n))
    return book.post()


def expire(account: Account, *, at: datetime) -> Posting:
    """The expiry sweep: every lot expired by ``at`` loses what remains, one ``expire`` entry per
    lot dated at its ``expires_at``, caused by ``expire:<lot_id>``. Safe to run twice."""
    require_aware("at", at)
    book = _Book(account)
    book.expire_due(at)
    return book.post()


def adjust(
    account: Account,
    points: int,
    *,
    reason: str,
    operator: str,
    event_id: str,
    at: datetime,
    rules: LedgerRules,
    tz: tzinfo | str,
) -> Posting:
    """A manual adjustment, audited by ``reason`` and ``operator``. Positive: a new lot named
    ``event_id`` (debt is not repaid from it: the operator gives what they mean to give).
    Negative: taken first in first out, never more than the spendable balance
    (``insufficient_points``, 409). Zero is ``invalid_amount``; an empty reason or operator is
    ``reason_required`` (422)."""
    require_aware("at", at)
    if isinstance(points, bool) or not isinstance(points, int) or points == 0:
        raise LoyaltyError(
            Code.INVALID_AMOUNT, f"points must be a non-zero whole number, got {points!r}", field="points"
        )
    for name, text in (("reason", reason), ("operator", operator)):
        if not isinstance(text, str) or not text.strip():
            raise LoyaltyError(Code.REASON_REQUIRED, f"a manual adjustment needs a {name}", field=name)
    book = _Book(account)
    book.expire_due(at)
    if points > 0:
        _credit_lot(book, event_id, points, at, rules, tz)
        book.entries.append(
            Entry(Kind.ADJUST, event_id, at, points=points, lot_id=event_id, reason=reason, operator=operator)
        )
        return book.post()
    if -points > book.balance:
        raise LoyaltyError(
            Code.INSUFFICIENT_POINTS,
            f"taking {-points} points needs more than the {book.balance} points available",
            field="points",
        )
    book.take(-points, Kind.ADJUST, event_id, at, reason=reason, operator=operator)
    return book.post()


def write_off(account: Account, *, event_id: str, at: datetime, reason: str, operator: str | None = None) -> Posting:
    """Forgive the whole debt (policy change, or an operator's decision). No debt, no entry."""
    require_aware("at", at)
    if not account.debt:
        return Posting(account)
    entry = Entry(Kind.WRITE_OFF, event_id, at, debt=-account.debt, reason=reason, operator=operator)
    return Posting(Account(account.lots, 0), (entry,))


# --- reading ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Expiring:
    """``points`` that expire at ``expires_at`` (one points.expiring notice each; the service
    sends it once per customer and ``expires_at``)."""

    expires_at: datetime
    points: int


def expiring(lots: Iterable[Lot], within_days: int, now: datetime) -> tuple[Expiring, ...]:
    """Points expiring after ``now`` and no later than ``now + within_days`` days, summed per
    expiry instant, soonest first. In SQL: ``WHERE remaining > 0 AND expires_at > :now AND
    expires_at <= :now + :days GROUP BY expires_at``."""
    require_aware("now", now)
    amount("within_days", within_days, unit="days", allow_zero=True)
    horizon = now + timedelta(days=within_days)
    sums: dict[datetime, int] = {}
    for lot in lots:
        if lot.remaining and lot.expires_at is not None and now < lot.expires_at <= horizon:
            sums[lot.expires_at] = sums.get(lot.expires_at, 0) + lot.remaining
    return tuple(Expiring(at, n) for at, n in sorted(sums.items()))


@dataclass(frozen=True, slots=True)
class Totals:
    balance: int = 0
    pending: int = 0
    debt: int = 0


def totals(entries: Iterable[Entry]) -> Totals:
    """The three sums (``SELECT sum(points), sum(pending), sum(debt)`` over the entries)."""
    balance = pending = debt = 0
    for e in entries:
        balance += e.points
        pending += e.pending
        debt += e.debt
    return Totals(balance, pending, debt)


@dataclass(frozen=True, slots=True)
class Difference:
    """One check that failed: what the entries say (``entries``) against the record (``record``)."""

    check: str
    entries: int
    record: int
    ref: str | None = None


@dataclass(frozen=True, slots=True)
class Reconciliation:
    """The proof: the sums of the entries, the sum of the lots, and every difference found."""

    totals: Totals
    lots: int
    differences: tuple[Difference, ...]

    @property
    def ok(self) -> bool:
        return not self.differences


def reconcile(
    entries: Iterable[Entry],
    lots: Iterable[Lot],
    *,
    debt: int | None = None,
    orders: Iterable[OrderPoints] | None = None,
    balance: int | None = None,
) -> Reconciliation:
    """Prove the ledger: Σ entry.points = Σ lot.remaining (``balance_vs_lots``), per lot
    (``lot``), no balance change without a lot (``unlotted``), neither sum below zero
    (``negative_balance``, ``negative_pending``, ``negative_debt``), and, when given, the stored
    ``debt`` and ``balance`` columns and the orders' pending points, in total and per order
    (``debt``, ``balance``, ``pending``, ``order_pending``). Pass every lot the entries name
    (closed ones may be left out: their entries must then sum to zero)."""
    entries = list(entries)
    lots = list(lots)
    sums = totals(entries)
    in_lots = sum(lot.remaining for lot in lots)
    found: list[Difference] = []
    if sums.balance != in_lots:
        found.append(Difference("balance_vs_lots", sums.balance, in_lots))
    per_lot: dict[str, int] = {}
    for e in entries:
        if e.lot_id is None:
            if e.points:
                found.append(Difference("unlotted", e.points, 0, e.event_id))
        else:
            per_lot[e.lot_id] = per_lot.get(e.lot_id, 0) + e.points
    remaining = {lot.lot_id: lot.remaining for lot in lots}
    found.extend(
        Difference("lot", per_lot.get(lot_id, 0), remaining.get(lot_id, 0), lot_id)
        for lot_id in sorted(per_lot.keys() | remaining.keys())
        if per_lot.get(lot_id, 0) != remaining.get(lot_id, 0)
    )
    for check, value in (
        ("negative_balance", sums.balance),
        ("negative_pending", sums.pending),
        ("negative_debt", sums.debt),
    ):
        if value < 0:
            found.append(Difference(check, value, 0))
    if debt is not None and debt != sums.debt:
        found.append(Difference("debt", sums.debt, debt))
    if balance is not None and balance != sums.balance:
        found.append(Difference("balance", sums.balance, balance))
    if orders is not None:
        orders = list(orders)
        recorded = sum(o.pending for o in orders)
        if recorded != sums.pending:
            found.append(Difference("pending", sums.pending, recorded))
        per_order: dict[str, int] = {}
        for e in entries:
            if e.pending and e.order_id is not None:
                per_order[e.order_id] = per_order.get(e.order_id, 0) + e.pending
        found.extend(
            Difference("order_pending", per_order.get(o.order_id, 0), o.pending, o.order_id)
            for o in orders
            if per_order.get(o.order_id, 0) != o.pending
        )
    return Reconciliation(sums, in_lots, tuple(found))
