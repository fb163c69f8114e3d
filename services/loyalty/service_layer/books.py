"""Customers' points books under lock: the one way anything changes a balance.

Protocol (every writer follows it, so nothing can overspend):

1. ``lock``: ``SELECT … FOR UPDATE`` the ``accounts`` rows in customer-id order, then create the
   missing ones and lock those (``skip_locked`` for the background clock, which then leaves a busy
   customer to its next round). Everything else of those customers (lots, entries, orders,
   offsets, awards) is read and written only while their rows are held. API calls lock one
   customer; two consumers of one group hold different partitions, hence different customers.
   Should two batches ever lock overlapping customers in different orders (a customer created
   meanwhile), PostgreSQL aborts one as a deadlock, which the consumer retries (transient).
2. ``load_lots``: the open lots of the customers an operation may take points from (a debit is
   first-in first-out over *all* open lots); a pure credit needs none.
3. Apply ``domain.ledger`` operations in Python: ``Book.post`` keeps the three sums by adding up
   the entries, and remembers the lots that changed.
4. ``write``: one bulk statement each for the entries, the changed lots and the accounts.

The stored sums are the sums of the entries by construction (every change to them is an
entry's), the CHECK constraints refuse a negative, and the entries' unique cause refuses a
replay."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.loyalty.adapters.tables import accounts, entries, lots
from services.loyalty.domain.ledger import Account, Entry, Kind, Lot, Posting
from shared.db import bulk_insert, in_values

CHUNK = 5000  # customers per statement


class LotsNotLoaded(RuntimeError):
    """An operation that takes points ran on a book whose open lots were not all loaded (a bug)."""


@dataclass(slots=True)
class Book:
    """One customer's account row as locked, the open lots known, and what changed since."""

    merchant_id: str
    customer_id: str
    balance: int
    pending: int
    debt: int
    level: str | None
    level_since: datetime | None
    last_review_at: datetime | None
    next_review_at: datetime | None
    warned_for: datetime | None
    first_paid_at: datetime | None
    version: int
    lots: dict[str, Lot] = field(default_factory=dict)
    full: bool = False  # every open lot is in ``lots``
    changed_lots: dict[str, Lot] = field(default_factory=dict)
    entries: list[Entry] = field(default_factory=list)
    dirty: bool = False

    def account(self, *, taking: bool = True) -> Account:
        """The domain account. ``taking``: the operation may take points, so it needs every open
        lot (credits may run on a partial book: they add a lot and take nothing, unless there is
        debt to recover, which takes)."""
        if (taking or self.debt) and not self.full:
            raise LotsNotLoaded(f"{self.merchant_id}/{self.customer_id}: load the open lots first")
        return Account(tuple(self.lots.values()), self.debt)

    def post(self, posting: Posting) -> None:
        after = {lot.lot_id: lot for lot in posting.account.lots}
        for lot_id, lot in self.lots.items():
            if lot_id not in after:
                self.changed_lots[lot_id] = replace(lot, remaining=0)
        for lot_id, lot in after.items():
            if self.lots.get(lot_id) != lot:
                self.changed_lots[lot_id] = lot
        self.lots = after
        for e in posting.entries:
            self.balance += e.points
            self.pending += e.pending
            self.debt += e.debt
        if self.debt != posting.account.debt:
            raise AssertionError(f"{self.customer_id}: debt {self.debt} != the posting's {posting.account.debt}")
        if self.full and self.balance != posting.account.balance:
            raise AssertionError(f"{self.customer_id}: balance {self.balance} != Σ lots {posting.account.balance}")
        self.entries.extend(posting.entries)
        self.dirty = self.dirty or bool(posting.entries)

    def touch(self) -> None:
        """Something besides the ledger changed (level, review clock, first payment)."""
        self.dirty = True


_A = accounts.c


def _book(merchant_id: str, r: Any) -> Book:
    return Book(
        merchant_id,
        r.customer_id,
        r.balance,
        r.pending,
        r.debt,
        r.level,
        r.level_since,
        r.last_review_at,
        r.next_review_at,
        r.warned_for,
        r.first_paid_at,
        r.version,
    )


async def lock(
    session: AsyncSession,
    merchant_id: str,
    customer_ids: Iterable[str],
    now: datetime,
    *,
    create: bool = True,
    skip_locked: bool = False,
) -> dict[str, Book]:
    """Lock these customers' accounts (created when missing), in customer-id order."""
    ids = sorted(set(customer_ids))
    out: dict[str, Book] = {}

    async def select_locked(chunk: list[str]) -> None:
        rows = await session.execute(
            select(accounts)
            .where(_A.merchant_id == merchant_id, in_values(_A.customer_id, chunk))
            .order_by(_A.customer_id)
            .with_for_update(skip_locked=skip_locked)
        )
        out.update((r.customer_id, _book(merchant_id, r)) for r in rows)

    for i in range(0, len(ids), CHUNK):
        chunk = ids[i : i + CHUNK]
        await select_locked(chunk)
        missing = [cid for cid in chunk if cid not in out]
        if create and missing:  # new customers: their rows, then their locks
            await bulk_insert(
                session,
                accounts,
                ["merchant_id", "customer_id", "balance", "pending", "debt", "version", "updated_at"],
                [(merchant_id, cid, 0, 0, 0, 0, now) for cid in missing],
                conflict=["merchant_id", "customer_id"],
            )
            await select_locked(missing)
    return out


def lot_of(r: Any) -> Lot:
    return Lot(r.lot_id, r.earned_at, r.expires_at, r.points, r.remaining)


async def load_lots(session: AsyncSession, books: dict[str, Book], customer_ids: Iterable[str] | None = None) -> None:
    """Load every open lot of these customers (all the books when None) into their books."""
    want = sorted(set(books if customer_ids is None else customer_ids) - {c for c, b in books.items() if b.full})
    if not want:
        return
    merchant_id = books[want[0]].merchant_id
    lt = lots.c
    for i in range(0, len(want), CHUNK):
        chunk = want[i : i + CHUNK]
        rows = await session.execute(
            select(lt.customer_id, lt.lot_id, lt.earned_at, lt.expires_at, lt.points, lt.remaining).where(
                lt.merchant_id == merchant_id, in_values(lt.customer_id, chunk), lt.remaining > 0
            )
        )
        for r in rows:
            books[r.customer_id].lots[r.lot_id] = lot_of(r)
        for cid in chunk:
            books[cid].full = True


async def lot_records(session: AsyncSession, merchant_id: str, customer_id: str, lot_ids: Iterable[str]) -> list[Lot]:
    """Lots by id, open or emptied (a restore reopens emptied ones from these)."""
    lt = lots.c
    rows = await session.execute(
        select(lt.lot_id, lt.earned_at, lt.expires_at, lt.points, lt.remaining).where(
            lt.merchant_id == merchant_id, lt.customer_id == customer_id, in_values(lt.lot_id, sorted(set(lot_ids)))
        )
    )
    return [lot_of(r) for r in rows]


ENTRY_COLUMNS = [
    "merchant_id",
    "customer_id",
    "event_id",
    "kind",
    "lot_id",
    "points",
    "pending",
    "debt",
    "order_id",
    "reason",
    "operator",
    "occurred_at",
    "created_at",
]
_ACCOUNT_STATE = [
    "balance",
    "pending",
    "debt",
    "level",
    "level_since",
    "last_review_at",
    "next_review_at",
    "warned_for",
    "first_paid_at",
]


def entry_row(merchant_id: str, customer_id: str, e: Entry, now: datetime) -> tuple[Any, ...]:
    return (
        merchant_id,
        customer_id,
        e.event_id,
        e.kind.value,
        e.lot_id or "",
        e.points,
        e.pending,
        e.debt,
        e.order_id,
        e.reason[:500] if e.reason else None,
        e.operator,
        e.at,
        now,
    )


def entry_of(r: Any) -> Entry:
    return Entry(
        Kind(r.kind),
        r.event_id,
        r.occurred_at,
        r.points,
        r.pending,
        r.debt,
        r.lot_id or None,
        r.order_id,
        r.reason,
        r.operator,
    )


async def write(session: AsyncSession, books: Iterable[Book], now: datetime) -> int:
    """Write what the books changed: entries, lots, account rows (one bulk statement each).
    Returns how many entries were written. A replayed cause fails on the entries' unique key."""
    dirty = [b for b in books if b.dirty]
    if not dirty:
        return 0
    rows = [entry_row(b.merchant_id, b.customer_id, e, now) for b in dirty for e in b.entries]
    await bulk_insert(session, entries, ENTRY_COLUMNS, rows)
    lot_rows = [
        (b.merchant_id, b.customer_id, lot.lot_id, lot.earned_at, lot.expires_at, lot.points, lot.remaining)
        for b in dirty
        for lot in b.changed_lots.values()
    ]
    await bulk_insert(
        session,
        lots,
        ["merchant_id", "customer_id", "lot_id", "earned_at", "expires_at", "points", "remaining"],
        lot_rows,
        conflict=["merchant_id", "customer_id", "lot_id"],
        update={"remaining": "excluded.remaining"},
    )
    await bulk_insert(
        session,
        accounts,
        ["merchant_id", "customer_id", *_ACCOUNT_STATE, "version", "updated_at"],
        [
            (
                b.merchant_id,
                b.customer_id,
                b.balance,
                b.pending,
                b.debt,
                b.level,
                b.level_since,
                b.last_review_at,
                b.next_review_at,
                b.warned_for,
                b.first_paid_at,
                b.version + 1,
                now,
            )
            for b in dirty
        ],
        conflict=["merchant_id", "customer_id"],
        update={c: f"excluded.{c}" for c in (*_ACCOUNT_STATE, "version", "updated_at")},
    )
    for b in dirty:
        b.version += 1
        b.entries = []
        b.changed_lots = {}
        b.dirty = False
    return len(rows)
