"""Stored value (储值): plans, top-ups, spends and refunds over the domain's two balances.

Payments are confirmed by the merchant's backend, never by the mini-program: a customer's
``POST /v1/me/stored-value/top-up`` only records a *pending* top-up against the shop's payment
reference; the shop's backend confirms it (``POST /v1/loyalty/stored-value/top-ups/{id}/confirm``)
when its payment notification arrives, or creates and confirms one in a single call. A payment
reference credits once per merchant (unique), a confirmation twice is harmless.

Every change locks the customer's ``sv_accounts`` row (``FOR UPDATE``), applies the domain
(proportional paid/bonus split), writes the new balances (CHECKed non-negative), the entry (unique
cause) and the record, and stages ``stored_value.changed``: concurrent spends queue on the row and
never take more than the balance."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import select, update
from sqlalchemy.engine import CursorResult, Row
from sqlalchemy.ext.asyncio import AsyncSession

from services.loyalty.adapters.tables import sv_accounts, sv_entries, sv_plans, sv_spends, sv_top_ups
from services.loyalty.domain import stored_value as sv
from services.loyalty.domain.common import Code, LoyaltyError
from services.loyalty.domain.stored_value import Balance, SvPosting, TopUpPlan
from services.loyalty.service_layer import announce
from services.loyalty.service_layer.points import outbox
from services.loyalty.service_layer.spending import Conflict
from shared.db import bulk_insert


async def lock_balance(session: AsyncSession, merchant_id: str, customer_id: str, now: datetime) -> Balance:
    await bulk_insert(
        session,
        sv_accounts,
        ["merchant_id", "customer_id", "paid_fen", "bonus_fen", "version", "updated_at"],
        [(merchant_id, customer_id, 0, 0, 0, now)],
        conflict=["merchant_id", "customer_id"],
    )
    a = sv_accounts.c
    row = (
        await session.execute(
            select(a.paid_fen, a.bonus_fen)
            .where(a.merchant_id == merchant_id, a.customer_id == customer_id)
            .with_for_update()
        )
    ).one()
    return Balance(row.paid_fen, row.bonus_fen)


async def _post(
    session: AsyncSession, merchant_id: str, customer_id: str, posting: SvPosting[Any], now: datetime
) -> None:
    a, e = sv_accounts.c, posting.entry
    await session.execute(
        update(sv_accounts)
        .where(a.merchant_id == merchant_id, a.customer_id == customer_id)
        .values(
            paid_fen=posting.balance.paid_fen,
            bonus_fen=posting.balance.bonus_fen,
            version=a.version + 1,
            updated_at=now,
        )
    )
    await session.execute(
        sv_entries.insert().values(
            merchant_id=merchant_id,
            customer_id=customer_id,
            event_id=e.event_id,
            kind=e.kind.value,
            paid_fen=e.paid_fen,
            bonus_fen=e.bonus_fen,
            ref=e.ref,
            occurred_at=e.at,
        )
    )
    await outbox.stage(
        session,
        [
            announce.stored_value_changed(
                merchant_id,
                customer_id,
                kind=e.kind.value,
                ref=e.ref,
                paid_fen=e.paid_fen,
                bonus_fen=e.bonus_fen,
                balance_paid_fen=posting.balance.paid_fen,
                balance_bonus_fen=posting.balance.bonus_fen,
                at=e.at,
            )
        ],
    )


# ---------------------------------------------------------------- plans


def plan_of(r: Any) -> TopUpPlan:
    return TopUpPlan(plan_id=r.plan_id, name=r.name, pay_fen=r.pay_fen, bonus_fen=r.bonus_fen)


async def plans(session: AsyncSession, merchant_id: str, *, active_only: bool = False) -> list[tuple[TopUpPlan, bool]]:
    p = sv_plans.c
    q = select(sv_plans).where(p.merchant_id == merchant_id)
    if active_only:
        q = q.where(p.active.is_(True))
    return [(plan_of(r), r.active) for r in await session.execute(q.order_by(p.pay_fen))]


async def save_plan(
    session: AsyncSession, merchant_id: str, plan: TopUpPlan, *, active: bool, create: bool, now: datetime
) -> None:
    """Create or replace a plan. The active plans must stay distinct (``TopUpPlans``: one bonus
    per amount), checked against the others under a lock on the merchant's plans."""
    p = sv_plans.c
    existing = {
        r.plan_id: r
        for r in await session.execute(select(sv_plans).where(p.merchant_id == merchant_id).with_for_update())
    }
    if create and plan.plan_id in existing:
        raise Conflict("plan_exists", f"plan {plan.plan_id!r} exists; PUT it to change it", field="plan_id")
    if not create and plan.plan_id not in existing:
        raise LoyaltyError(Code.UNKNOWN_PLAN, f"no top-up plan {plan.plan_id!r}", field="plan_id")
    others = [plan_of(r) for pid, r in existing.items() if pid != plan.plan_id and r.active]
    sv.TopUpPlans(plans=[*others, *([plan] if active else [])])  # raises ValueError (pydantic) when not distinct
    values = {
        "name": plan.name,
        "pay_fen": plan.pay_fen,
        "bonus_fen": plan.bonus_fen,
        "active": active,
        "updated_at": now,
    }
    if create:
        await session.execute(
            sv_plans.insert().values(merchant_id=merchant_id, plan_id=plan.plan_id, created_at=now, **values)
        )
    else:
        await session.execute(
            update(sv_plans).where(p.merchant_id == merchant_id, p.plan_id == plan.plan_id).values(**values)
        )


async def delete_plan(session: AsyncSession, merchant_id: str, plan_id: str) -> bool:
    p = sv_plans.c
    # A DELETE runs on a cursor: its result is a CursorResult (AsyncSession.execute says Result).
    result = cast(
        "CursorResult[Any]",
        await session.execute(sv_plans.delete().where(p.merchant_id == merchant_id, p.plan_id == plan_id)),
    )
    return bool(result.rowcount)


# ---------------------------------------------------------------- top-ups


@dataclass(frozen=True, slots=True)
class TopUpView:
    top_up_id: str
    customer_id: str
    plan_id: str
    payment_ref: str
    pay_fen: int
    bonus_fen: int
    status: str
    refunded_fen: int
    forfeited_fen: int
    created_at: datetime
    confirmed_at: datetime | None
    balance: Balance | None = None


def _top_up(r: Any, balance: Balance | None = None) -> TopUpView:
    return TopUpView(
        r.top_up_id,
        r.customer_id,
        r.plan_id,
        r.payment_ref,
        r.pay_fen,
        r.bonus_fen,
        r.status,
        r.refunded_fen,
        r.forfeited_fen,
        r.created_at,
        r.confirmed_at,
        balance,
    )


async def request_top_up(
    session: AsyncSession,
    merchant_id: str,
    customer_id: str,
    *,
    plan_id: str | None,
    pay_fen: int | None,
    payment_ref: str,
    now: datetime,
) -> tuple[TopUpView, bool]:
    """A pending top-up for a plan (or, from the merchant, a plain amount with no bonus), against
    the shop's payment reference. The same reference again for the same customer and amount
    answers the same top-up (False: not new); for anything else it is a conflict."""
    if plan_id is not None:
        p = sv_plans.c
        row = (
            await session.execute(
                select(sv_plans).where(p.merchant_id == merchant_id, p.plan_id == plan_id, p.active.is_(True))
            )
        ).first()
        if row is None:
            raise LoyaltyError(Code.UNKNOWN_PLAN, f"no top-up plan {plan_id!r}", field="plan_id")
        pay, bonus = row.pay_fen, row.bonus_fen
    else:
        assert pay_fen is not None
        pay, bonus, plan_id = pay_fen, 0, ""
    t = sv_top_ups.c
    have = (
        await session.execute(select(sv_top_ups).where(t.merchant_id == merchant_id, t.payment_ref == payment_ref))
    ).first()
    if have is not None:
        if (have.customer_id, have.plan_id, have.pay_fen) == (customer_id, plan_id, pay):
            return _top_up(have), False
        raise Conflict(
            "payment_ref_used", f"payment {payment_ref!r} is already recorded for another top-up", field="payment_ref"
        )
    top_up_id = f"tu_{uuid.uuid4().hex}"
    await session.execute(
        sv_top_ups.insert().values(
            merchant_id=merchant_id,
            top_up_id=top_up_id,
            customer_id=customer_id,
            plan_id=plan_id,
            payment_ref=payment_ref,
            pay_fen=pay,
            bonus_fen=bonus,
            status="pending",
            refunded_fen=0,
            forfeited_fen=0,
            created_at=now,
            confirmed_at=None,
        )
    )
    row = (
        await session.execute(select(sv_top_ups).where(t.merchant_id == merchant_id, t.top_up_id == top_up_id))
    ).one()
    return _top_up(row), True


async def confirm_top_up(session: AsyncSession, merchant_id: str, top_up_id: str, now: datetime) -> TopUpView:
    """The payment arrived: credit the top-up (once; confirming again changes nothing)."""
    t = sv_top_ups.c
    row = (
        await session.execute(
            select(sv_top_ups.c.customer_id).where(t.merchant_id == merchant_id, t.top_up_id == top_up_id)
        )
    ).first()
    if row is None:
        raise Conflict("not_found", f"no top-up {top_up_id!r}", field="top_up_id", status=404)
    # The balance row first, as every stored-value change takes it (one lock order).
    balance = await lock_balance(session, merchant_id, row.customer_id, now)
    row = (
        await session.execute(
            select(sv_top_ups).where(t.merchant_id == merchant_id, t.top_up_id == top_up_id).with_for_update()
        )
    ).one()
    if row.status == "confirmed":
        return _top_up(row, balance)
    posting = sv.top_up(
        balance, row.pay_fen, row.bonus_fen, top_up_id=top_up_id, event_id=f"top_up:{top_up_id}", at=now
    )
    await _post(session, merchant_id, row.customer_id, posting, now)
    await session.execute(
        update(sv_top_ups)
        .where(t.merchant_id == merchant_id, t.top_up_id == top_up_id)
        .values(status="confirmed", confirmed_at=now)
    )
    row = (
        await session.execute(select(sv_top_ups).where(t.merchant_id == merchant_id, t.top_up_id == top_up_id))
    ).one()
    return _top_up(row, posting.balance)


async def refund_top_up(
    session: AsyncSession, merchant_id: str, top_up_id: str, *, refund_id: str, amount_fen: int | None, now: datetime
) -> TopUpView:
    """Pay back a confirmed top-up's unspent paid money (all of it, or ``amount_fen``); its bonus
    is forfeited in proportion. ``refund_id`` makes the call idempotent."""
    t = sv_top_ups.c
    row = (
        await session.execute(select(sv_top_ups).where(t.merchant_id == merchant_id, t.top_up_id == top_up_id))
    ).first()
    if row is None or row.status != "confirmed":
        raise Conflict("not_found", f"no confirmed top-up {top_up_id!r}", field="top_up_id", status=404)
    balance = await lock_balance(session, merchant_id, row.customer_id, now)
    cause = f"top_up_refund:{refund_id}"
    if await _applied(session, merchant_id, cause, sv.SvKind.TOP_UP_REFUND):
        return _top_up(row, balance)
    row = (
        await session.execute(
            select(sv_top_ups).where(t.merchant_id == merchant_id, t.top_up_id == top_up_id).with_for_update()
        )
    ).one()
    record = sv.TopUp(top_up_id, row.pay_fen, row.bonus_fen, row.refunded_fen, row.forfeited_fen)
    posting = sv.refund_top_up(balance, record, event_id=cause, at=now, amount_fen=amount_fen)
    await _post(session, merchant_id, row.customer_id, posting, now)
    await session.execute(
        update(sv_top_ups)
        .where(t.merchant_id == merchant_id, t.top_up_id == top_up_id)
        .values(refunded_fen=posting.record.refunded_fen, forfeited_fen=posting.record.forfeited_fen)
    )
    row = (
        await session.execute(select(sv_top_ups).where(t.merchant_id == merchant_id, t.top_up_id == top_up_id))
    ).one()
    return _top_up(row, posting.balance)


async def _applied(session: AsyncSession, merchant_id: str, cause: str, kind: sv.SvKind) -> bool:
    e = sv_entries.c
    return (
        await session.execute(
            select(e.id).where(e.merchant_id == merchant_id, e.event_id == cause, e.kind == kind.value)
        )
    ).first() is not None


# ---------------------------------------------------------------- spends


@dataclass(frozen=True, slots=True)
class SpendView:
    order_id: str
    customer_id: str
    paid_fen: int
    bonus_fen: int
    refunded_fen: int
    balance: Balance
    replayed: bool = False


async def spend(
    session: AsyncSession, merchant_id: str, customer_id: str, *, order_id: str, amount_fen: int, now: datetime
) -> SpendView:
    """Pay ``amount_fen`` of an order from stored value (one spend per order; the same call again
    answers the same spend)."""
    balance = await lock_balance(session, merchant_id, customer_id, now)
    s = sv_spends.c
    have = (
        await session.execute(select(sv_spends).where(s.merchant_id == merchant_id, s.order_id == order_id))
    ).first()
    if have is not None:
        if have.customer_id == customer_id and have.paid_fen + have.bonus_fen == amount_fen:
            return SpendView(order_id, customer_id, have.paid_fen, have.bonus_fen, have.refunded_fen, balance, True)
        raise Conflict("spend_exists", f"order {order_id!r} was already paid with stored value", field="order_id")
    posting = sv.spend(balance, amount_fen, spend_id=order_id, event_id=f"spend:{order_id}", at=now)
    await _post(session, merchant_id, customer_id, posting, now)
    rec = posting.record
    await session.execute(
        sv_spends.insert().values(
            merchant_id=merchant_id,
            order_id=order_id,
            customer_id=customer_id,
            paid_fen=rec.paid_fen,
            bonus_fen=rec.bonus_fen,
            refunded_fen=0,
            created_at=now,
        )
    )
    return SpendView(order_id, customer_id, rec.paid_fen, rec.bonus_fen, 0, posting.balance)


async def refund_spend(
    session: AsyncSession, merchant_id: str, order_id: str, *, refund_id: str, amount_fen: int, now: datetime
) -> SpendView:
    """Give back ``amount_fen`` of an order's stored-value payment, in its own paid/bonus split;
    ``refund_id`` makes the call idempotent."""
    s = sv_spends.c
    row = (await session.execute(select(sv_spends).where(s.merchant_id == merchant_id, s.order_id == order_id))).first()
    if row is None:
        raise Conflict("not_found", f"no stored-value payment of order {order_id!r}", field="order_id", status=404)
    balance = await lock_balance(session, merchant_id, row.customer_id, now)
    cause = f"spend_refund:{refund_id}"
    row = (
        await session.execute(
            select(sv_spends).where(s.merchant_id == merchant_id, s.order_id == order_id).with_for_update()
        )
    ).one()
    if await _applied(session, merchant_id, cause, sv.SvKind.SPEND_REFUND):
        return SpendView(order_id, row.customer_id, row.paid_fen, row.bonus_fen, row.refunded_fen, balance, True)
    record = sv.Spend(order_id, row.paid_fen, row.bonus_fen, row.refunded_fen)
    posting = sv.refund_spend(balance, record, amount_fen, event_id=cause, at=now)
    await _post(session, merchant_id, row.customer_id, posting, now)
    await session.execute(
        update(sv_spends)
        .where(s.merchant_id == merchant_id, s.order_id == order_id)
        .values(refunded_fen=posting.record.refunded_fen)
    )
    return SpendView(
        order_id, row.customer_id, row.paid_fen, row.bonus_fen, posting.record.refunded_fen, posting.balance
    )


async def release_cancelled(session: AsyncSession, merchant_id: str, order_ids: list[str], now: datetime) -> int:
    """``order.cancelled``: what stored value paid for the order comes back whole (what a refund
    already returned excepted). Idempotent: the cause is ``spend_refund:cancel:<order>``. Returns
    how many orders gave something back."""
    s = sv_spends.c
    rows = (
        await session.execute(
            select(s.order_id, s.paid_fen, s.bonus_fen, s.refunded_fen).where(
                s.merchant_id == merchant_id, s.order_id.in_(sorted(set(order_ids)))
            )
        )
    ).all()
    given = 0
    for r in rows:
        left = r.paid_fen + r.bonus_fen - r.refunded_fen
        if left > 0:
            await refund_spend(
                session, merchant_id, r.order_id, refund_id=f"cancel:{r.order_id}", amount_fen=left, now=now
            )
            given += 1
    return given


# ---------------------------------------------------------------- reading


@dataclass(frozen=True, slots=True)
class SvStatement:
    balance: Balance
    entries: Sequence[Row[*tuple[Any, ...]]]  # sv_entries rows, newest first
    reconciliation: sv.SvReconciliation


async def statement(session: AsyncSession, merchant_id: str, customer_id: str, limit: int = 50) -> SvStatement:
    """The balances, the latest entries, and the proof that the balances are the entries' sums."""
    a, e = sv_accounts.c, sv_entries.c
    row = (
        await session.execute(
            select(a.paid_fen, a.bonus_fen).where(a.merchant_id == merchant_id, a.customer_id == customer_id)
        )
    ).first()
    balance = Balance(row.paid_fen, row.bonus_fen) if row is not None else Balance()
    every = (
        await session.execute(
            select(sv_entries).where(e.merchant_id == merchant_id, e.customer_id == customer_id).order_by(e.id.desc())
        )
    ).all()
    as_domain = [
        sv.SvEntry(sv.SvKind(r.kind), r.event_id, r.occurred_at, r.paid_fen, r.bonus_fen, r.ref) for r in every
    ]
    return SvStatement(balance, every[:limit], sv.reconcile(as_domain, balance))
