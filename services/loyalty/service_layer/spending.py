"""What customers and operators do to a balance through the API: the checkout offset, the points
mall, manual adjustments, and bonuses the shop reports (sign-in, review). Each runs in the
caller's transaction under the customer's account lock (``books.lock``), so concurrent calls
against one balance queue on that row and can never spend the same points twice; mall stock is
taken with one conditional UPDATE (``redeemed + q <= stock``).

Refusals are ``LoyaltyError`` (the domain's, with its code, HTTP status and field) or
``Conflict`` (a state of this service: an order that already has an offset, a replayed id)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.loyalty.adapters.tables import entries, lots, mall_items, mall_redemptions, offsets, order_points
from services.loyalty.domain import ledger, redemption
from services.loyalty.domain.common import BonusEvent, Code, LoyaltyError
from services.loyalty.domain.earning import once_key
from services.loyalty.domain.redemption import Catalogue, MallItem, Offset
from services.loyalty.service_layer import announce, books
from services.loyalty.service_layer.points import Action, Awarded, Batch, offset_cause, outbox
from services.loyalty.service_layer.rules import InForce


class Conflict(Exception):
    """Refused because of what this service already holds (HTTP 409 unless ``status`` says)."""

    def __init__(self, code: str, message: str, field: str | None = None, status: int = 409) -> None:
        super().__init__(message)
        self.code, self.message, self.field, self.status = code, message, field, status


async def _locked(session: AsyncSession, rules: InForce, customer_id: str, now: datetime) -> books.Book:
    held = await books.lock(session, rules.merchant_id, [customer_id], now)
    await books.load_lots(session, held)
    return held[customer_id]


# ---------------------------------------------------------------- checkout offset


@dataclass(frozen=True, slots=True)
class Quote:
    balance: int
    cap_fen: int
    max: Offset
    asked: Offset | None
    unit_points: int
    unit_fen: int


async def quote(
    session: AsyncSession, rules: InForce, customer_id: str, *, order_fen: int, points: int | None, now: datetime
) -> Quote:
    """What the customer can take off an order of ``order_fen`` (no lock: a quote holds nothing);
    with ``points``, what exactly those buy, or the refusal the redemption would give."""
    balance = await spendable(session, rules.merchant_id, customer_id, now)
    best = redemption.max_offset(rules.rules.offset, order_fen=order_fen, balance=balance)
    asked = (
        redemption.offset_for_points(rules.rules.offset, points, order_fen=order_fen, balance=balance)
        if points is not None
        else None
    )
    unit_points, unit_fen = rules.rules.offset.unit
    return Quote(balance, redemption.cap_fen(rules.rules.offset, order_fen), best, asked, unit_points, unit_fen)


async def spendable(session: AsyncSession, merchant_id: str, customer_id: str, now: datetime) -> int:
    lt = lots.c
    return int(
        (
            await session.execute(
                select(func.coalesce(func.sum(lt.remaining), 0)).where(
                    lt.merchant_id == merchant_id,
                    lt.customer_id == customer_id,
                    lt.remaining > 0,
                    or_(lt.expires_at.is_(None), lt.expires_at > now),
                )
            )
        ).scalar_one()
    )


@dataclass(frozen=True, slots=True)
class OffsetResult:
    order_id: str
    points: int
    fen: int
    balance: int
    replayed: bool = False


async def redeem_offset(
    session: AsyncSession,
    rules: InForce,
    customer_id: str,
    *,
    order_id: str,
    order_fen: int,
    points: int,
    now: datetime,
) -> OffsetResult:
    """Take ``points`` off the balance for ``order_id`` at once (one offset per order). The same
    call again answers the same offset (``replayed``); the points come back when the order is
    cancelled or refunded (see ``points``)."""
    m = rules.merchant_id
    book = await _locked(session, rules, customer_id, now)
    f = offsets.c
    have = (await session.execute(select(offsets).where(f.merchant_id == m, f.order_id == order_id))).first()
    if have is not None:
        if (have.customer_id, have.points, have.order_fen) == (customer_id, points, order_fen):
            return OffsetResult(order_id, have.points, have.fen, book.balance, replayed=True)
        raise Conflict("offset_exists", f"order {order_id!r} already has a points offset", field="order_id")
    o = order_points.c
    state = (
        await session.execute(
            select(o.customer_id, o.paid_fen, o.cancelled).where(o.merchant_id == m, o.order_id == order_id)
        )
    ).first()
    if state is not None and (state.customer_id != customer_id or state.paid_fen is not None or state.cancelled):
        why = (
            "belongs to another customer"
            if state.customer_id != customer_id
            else "is paid already"
            if state.paid_fen is not None
            else "was cancelled"
        )
        raise Conflict(
            "order_closed", f"order {order_id!r} {why}: points can only pay for an open order", field="order_id"
        )
    account = book.account()
    offset = redemption.offset_for_points(
        rules.rules.offset, points, order_fen=order_fen, balance=account.spendable(now)
    )
    cause = offset_cause(order_id)
    book.post(
        ledger.redeem(account, offset.points, event_id=cause, at=now, order_id=order_id, reason="checkout offset")
    )
    await books.write(session, [book], now)
    await session.execute(
        offsets.insert().values(
            merchant_id=m,
            order_id=order_id,
            customer_id=customer_id,
            points=offset.points,
            fen=offset.fen,
            order_fen=order_fen,
            restored=0,
            created_at=now,
        )
    )
    await outbox.stage(
        session,
        [
            announce.redeemed(
                book,
                redemption_id=cause,
                kind="offset",
                points=offset.points,
                at=now,
                order_id=order_id,
                offset_fen=offset.fen,
            )
        ],
    )
    return OffsetResult(order_id, offset.points, offset.fen, book.balance)


# ---------------------------------------------------------------- the points mall


@dataclass(frozen=True, slots=True)
class StoredItem:
    item: MallItem
    stock_left: int | None
    redeemed: int


async def get_item(session: AsyncSession, merchant_id: str, item_id: str, *, lock: bool = False) -> StoredItem | None:
    q = select(mall_items).where(mall_items.c.merchant_id == merchant_id, mall_items.c.item_id == item_id)
    row = (await session.execute(q.with_for_update() if lock else q)).first()
    return None if row is None else stored_item(row)


def stored_item(row: Any) -> StoredItem:
    return StoredItem(
        MallItem.model_validate_json(row.body), None if row.stock is None else row.stock - row.redeemed, row.redeemed
    )


@dataclass(frozen=True, slots=True)
class MallResult:
    redemption_id: str
    item_id: str
    quantity: int
    points: int
    reward: dict[str, Any]
    balance: int


async def redeem_item(
    session: AsyncSession, rules: InForce, customer_id: str, item_id: str, *, quantity: int, now: datetime
) -> MallResult:
    m = rules.merchant_id
    found = await get_item(session, m, item_id)
    if found is None:
        raise LoyaltyError(Code.UNKNOWN_ITEM, f"no mall item {item_id!r}", field="item_id")
    book = await _locked(session, rules, customer_id, now)
    r = mall_redemptions.c
    before = int(
        (
            await session.execute(
                select(func.coalesce(func.sum(r.quantity), 0)).where(
                    r.merchant_id == m, r.customer_id == customer_id, r.item_id == item_id
                )
            )
        ).scalar_one()
    )
    account = book.account()
    # The customer's precise answer (limit, stock as read, balance); the database decides the stock.
    plan = redemption.redeem_item(
        Catalogue(items=[found.item]),
        item_id,
        balance=account.spendable(now),
        now=now,
        quantity=quantity,
        stock_left=found.stock_left,
        redeemed_before=before,
    )
    if found.item.stock is not None:
        mi = mall_items.c
        took = (
            await session.execute(
                update(mall_items)
                .where(
                    mi.merchant_id == m, mi.item_id == item_id, mi.stock.isnot(None), mi.redeemed + quantity <= mi.stock
                )
                .values(redeemed=mi.redeemed + quantity)
                .returning(mi.item_id)
            )
        ).first()
        if took is None:
            raise LoyaltyError(Code.OUT_OF_STOCK, f"item {item_id!r} ran out of stock", field="item_id")
    redemption_id = f"rdm_{uuid.uuid4().hex}"
    book.post(
        ledger.redeem(
            account, plan.points, event_id=f"mall:{redemption_id}", at=now, reason=f"mall item {item_id} × {quantity}"
        )
    )
    await books.write(session, [book], now)
    reward = plan.reward.model_dump()
    await session.execute(
        mall_redemptions.insert().values(
            merchant_id=m,
            redemption_id=redemption_id,
            customer_id=customer_id,
            item_id=item_id,
            quantity=quantity,
            points=plan.points,
            reward=orjson.dumps(reward).decode(),
            created_at=now,
        )
    )
    await outbox.stage(
        session,
        [
            announce.redeemed(
                book,
                redemption_id=redemption_id,
                kind="mall",
                points=plan.points,
                at=now,
                item_id=item_id,
                quantity=quantity,
                reward=reward,
            )
        ],
    )
    return MallResult(redemption_id, item_id, quantity, plan.points, reward, book.balance)


# ---------------------------------------------------------------- adjustments and bonuses


@dataclass(frozen=True, slots=True)
class Adjusted:
    adjustment_id: str
    points: int
    balance: int
    entries: list[ledger.Entry]


async def adjust(
    session: AsyncSession,
    rules: InForce,
    customer_id: str,
    *,
    points: int,
    reason: str,
    operator: str,
    adjustment_id: str | None,
    now: datetime,
) -> Adjusted:
    """A manual adjustment, audited: the reason and the operator are on every entry it writes.
    ``adjustment_id`` (the caller's idempotency key) may be given once per customer."""
    adjustment_id = adjustment_id or f"adj_{uuid.uuid4().hex}"
    cause = f"adjust:{adjustment_id}"
    book = await _locked(session, rules, customer_id, now)
    e = entries.c
    if (
        await session.execute(
            select(e.id)
            .where(e.merchant_id == rules.merchant_id, e.customer_id == customer_id, e.event_id == cause)
            .limit(1)
        )
    ).first() is not None:
        raise Conflict("already_applied", f"adjustment {adjustment_id!r} was applied already", field="adjustment_id")
    posting = ledger.adjust(
        book.account(),
        points,
        reason=reason,
        operator=operator,
        event_id=cause,
        at=now,
        rules=rules.ledger,
        tz=rules.tz,
    )
    book.post(posting)
    await books.write(session, [book], now)
    if points > 0:
        lot = book.lots.get(cause)
        await outbox.stage(
            session,
            [
                announce.earned(
                    book,
                    cause="adjustment",
                    points=points,
                    status="available",
                    at=now,
                    lot_id=cause,
                    expires_at=lot.expires_at if lot else None,
                )
            ],
        )
    return Adjusted(adjustment_id, points, book.balance, list(posting.entries))


async def write_off_debt(
    session: AsyncSession, rules: InForce, customer_id: str, *, reason: str, operator: str, now: datetime
) -> int:
    """Forgive a customer's whole debt (points clawed back that the balance could not cover)."""
    book = await _locked(session, rules, customer_id, now)
    forgiven = book.debt
    book.post(
        ledger.write_off(
            book.account(), event_id=f"write_off:{uuid.uuid4().hex}", at=now, reason=reason, operator=operator
        )
    )
    await books.write(session, [book], now)
    return forgiven


async def award(
    session: AsyncSession,
    rules: InForce,
    customer_id: str,
    bonus: BonusEvent,
    *,
    at: datetime,
    ref: str | None,
    cause: str,
    now: datetime,
) -> Awarded | None:
    """A bonus the shop (or the mini-program) reports: once per once-key (sign-in per local day,
    review per order, …). None when nothing is due: already awarded, or no such bonus or growth."""
    try:
        key = once_key(bonus, at=at, tz=rules.tz, ref=ref)
    except ValueError as e:
        raise Conflict("ref_required", str(e), field="ref", status=422) from None
    [result] = await Batch(session, rules, now).run([Action(cause, customer_id, bonus, at, key, ref)])
    return result
