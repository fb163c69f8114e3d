"""Stored value (储值): top-up plans, a paid and a bonus balance, spends and refunds (pure).

    {"plans": [{"plan_id": "p500", "name": "充500送50", "pay_fen": 50000, "bonus_fen": 5000},
               {"plan_id": "p1000", "name": "充1000送150", "pay_fen": 100000, "bonus_fen": 15000}]}

A customer's stored value is two balances in fen: ``paid`` (money the customer paid in, which the
merchant owes back on a top-up refund) and ``bonus`` (what the plans added, never paid out). Each
change is an ``SvEntry`` with signed ``paid_fen`` and ``bonus_fen``; the balances are the sums of
the entries and never go below zero.

Spend order: proportional, so every spend uses paid and bonus money in the ratio they are held
(the common practice, and what lets a refund restore each part). A spend of S from P paid and B
bonus takes ``bonus = ⌊S × B / (P + B)⌋`` and ``paid = S - bonus``: the odd fen is paid money, so
the bonus never runs down faster than its share; spending everything takes exactly P and B.

Refund of a spend (the goods went back): restores the same split. After refunds totalling R of
a spend of S = p + b, ``⌊b × R / S⌋`` of the bonus part is back and the rest of R is paid money:
cumulative, so partial refunds add up to exactly p and b. More than was spent is
``refund_exceeds`` (409).

Refund of a top-up (the customer takes the money back): only the unspent paid money of that
top-up, ``min(its pay_fen not yet refunded, the paid balance)`` (or less, if ``amount_fen``
asks less), and the top-up's bonus is forfeited in proportion to the paid money refunded:
cumulative ``⌈bonus_fen × refunded / pay_fen⌉`` (rounded in the merchant's favour: no one keeps a
fraction of a bonus for money taken back), never more than the bonus balance holds. What was
spent stays spent: a fully spent top-up refunds nothing (``nothing_to_refund``, 409).

Spending more than the balance is ``insufficient_balance`` (409). Concurrency is the service's:
the split depends on the balance, so it reads the balance row ``FOR UPDATE``, and guards the write
with ``paid >= :p AND bonus >= :b`` (or a CHECK constraint) so the database refuses a negative.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import Generic, TypeVar

from pydantic import Field, field_validator, model_validator

from services.loyalty.domain.common import (
    Code,
    Fen,
    Label,
    LoyaltyError,
    PositiveFen,
    Strict,
    amount,
    ceil_div,
    require_aware,
    yuan,
)


class TopUpPlan(Strict):
    """Pay ``pay_fen``, get ``pay_fen + bonus_fen`` of stored value ("充500送50")."""

    plan_id: Label
    name: Label
    pay_fen: PositiveFen
    bonus_fen: Fen = 0

    @model_validator(mode="after")
    def _bonus_at_most_the_payment(self) -> TopUpPlan:
        if self.bonus_fen > self.pay_fen:
            raise ValueError(
                f"bonus_fen {self.bonus_fen} ({yuan(self.bonus_fen)}) is above pay_fen {self.pay_fen} "
                f"({yuan(self.pay_fen)}): a bonus above 100% of the payment is almost surely a typo"
            )
        return self


class TopUpPlans(Strict):
    plans: list[TopUpPlan] = Field(default_factory=list)

    @field_validator("plans")
    @classmethod
    def _distinct(cls, v: list[TopUpPlan]) -> list[TopUpPlan]:
        ids: set[str] = set()
        pays: set[int] = set()
        for plan in v:
            if plan.plan_id in ids:
                raise ValueError(f"plans lists plan_id {plan.plan_id!r} twice")
            if plan.pay_fen in pays:
                raise ValueError(
                    f"two plans ask the same pay_fen {plan.pay_fen} ({yuan(plan.pay_fen)}): "
                    "a customer could not tell which bonus they get"
                )
            ids.add(plan.plan_id)
            pays.add(plan.pay_fen)
        return v

    def get(self, plan_id: str) -> TopUpPlan:
        """The plan, or ``unknown_plan`` (404)."""
        for plan in self.plans:
            if plan.plan_id == plan_id:
                return plan
        raise LoyaltyError(Code.UNKNOWN_PLAN, f"no top-up plan {plan_id!r}", field="plan_id")


@dataclass(frozen=True, slots=True)
class Balance:
    paid_fen: int = 0
    bonus_fen: int = 0

    def __post_init__(self) -> None:
        for name in ("paid_fen", "bonus_fen"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")

    @property
    def total_fen(self) -> int:
        return self.paid_fen + self.bonus_fen


class SvKind(StrEnum):
    TOP_UP = "top_up"
    SPEND = "spend"
    SPEND_REFUND = "spend_refund"
    TOP_UP_REFUND = "top_up_refund"


@dataclass(frozen=True, slots=True)
class SvEntry:
    """One change to the two balances (signed), with its cause and the top-up or spend it concerns."""

    kind: SvKind
    event_id: str
    at: datetime
    paid_fen: int
    bonus_fen: int
    ref: str


@dataclass(frozen=True, slots=True)
class TopUp:
    """A top-up, and how much of it was refunded (paid) and forfeited (bonus)."""

    top_up_id: str
    pay_fen: int
    bonus_fen: int
    refunded_fen: int = 0
    forfeited_fen: int = 0


@dataclass(frozen=True, slots=True)
class Spend:
    """A spend and its split, and how much of it was refunded."""

    spend_id: str
    paid_fen: int
    bonus_fen: int
    refunded_fen: int = 0

    @property
    def amount_fen(self) -> int:
        return self.paid_fen + self.bonus_fen

    def restored(self, refunded_fen: int) -> tuple[int, int]:
        """(paid, bonus) given back by refunds totalling ``refunded_fen``."""
        bonus = self.bonus_fen * refunded_fen // self.amount_fen
        return refunded_fen - bonus, bonus


R = TypeVar("R", TopUp, Spend)


@dataclass(frozen=True, slots=True)
class SvPosting(Generic[R]):
    """The new balances, the entry to insert, and the updated top-up or spend record."""

    balance: Balance
    entry: SvEntry
    record: R


def split_spend(paid_fen: int, bonus_fen: int, amount_fen: int) -> tuple[int, int]:
    """(paid, bonus) a spend of ``amount_fen`` takes from the balances (proportional, bonus
    floored). Plain values, for set-based SQL: ``bonus = amount * bonus_bal / (paid_bal + bonus_bal)``."""
    total = paid_fen + bonus_fen
    if not 0 < amount_fen <= total:
        raise ValueError(f"amount_fen {amount_fen} must be within 1..{total}")
    bonus = amount_fen * bonus_fen // total
    return amount_fen - bonus, bonus


def _apply(balance: Balance, paid: int, bonus: int) -> Balance:
    return Balance(balance.paid_fen + paid, balance.bonus_fen + bonus)


def top_up(
    balance: Balance, pay_fen: int, bonus_fen: int = 0, *, top_up_id: str, event_id: str, at: datetime
) -> SvPosting[TopUp]:
    """A paid top-up: ``pay_fen`` to the paid balance, ``bonus_fen`` (a plan's) to the bonus."""
    require_aware("at", at)
    amount("pay_fen", pay_fen, unit="fen")
    amount("bonus_fen", bonus_fen, unit="fen", allow_zero=True)
    entry = SvEntry(SvKind.TOP_UP, event_id, at, pay_fen, bonus_fen, top_up_id)
    return SvPosting(_apply(balance, pay_fen, bonus_fen), entry, TopUp(top_up_id, pay_fen, bonus_fen))


def spend(balance: Balance, amount_fen: int, *, spend_id: str, event_id: str, at: datetime) -> SvPosting[Spend]:
    """Pay ``amount_fen`` from stored value, split proportionally; more than the balance is
    ``insufficient_balance`` (409)."""
    require_aware("at", at)
    amount("amount_fen", amount_fen, unit="fen")
    if amount_fen > balance.total_fen:
        raise LoyaltyError(
            Code.INSUFFICIENT_BALANCE,
            f"paying {yuan(amount_fen)} needs more than the {yuan(balance.total_fen)} stored value "
            f"({yuan(balance.paid_fen)} paid + {yuan(balance.bonus_fen)} bonus)",
            field="amount_fen",
        )
    paid, bonus = split_spend(balance.paid_fen, balance.bonus_fen, amount_fen)
    entry = SvEntry(SvKind.SPEND, event_id, at, -paid, -bonus, spend_id)
    return SvPosting(_apply(balance, -paid, -bonus), entry, Spend(spend_id, paid, bonus))


def refund_spend(balance: Balance, spent: Spend, amount_fen: int, *, event_id: str, at: datetime) -> SvPosting[Spend]:
    """Give back ``amount_fen`` of a spend, in the spend's own split (cumulative)."""
    require_aware("at", at)
    amount("amount_fen", amount_fen, unit="fen")
    after = spent.refunded_fen + amount_fen
    if after > spent.amount_fen:
        raise LoyaltyError(
            Code.REFUND_EXCEEDS,
            f"refunding {yuan(amount_fen)} would bring spend {spent.spend_id}'s refunds to "
            f"{yuan(after)}, more than the {yuan(spent.amount_fen)} spent",
            field="amount_fen",
        )
    paid_before, bonus_before = spent.restored(spent.refunded_fen)
    paid_after, bonus_after = spent.restored(after)
    paid, bonus = paid_after - paid_before, bonus_after - bonus_before
    entry = SvEntry(SvKind.SPEND_REFUND, event_id, at, paid, bonus, spent.spend_id)
    return SvPosting(_apply(balance, paid, bonus), entry, replace(spent, refunded_fen=after))


def refundable(balance: Balance, topped: TopUp) -> int:
    """How much of a top-up's paid money can go back now: unrefunded, and still in the balance."""
    return max(0, min(topped.pay_fen - topped.refunded_fen, balance.paid_fen))


def refund_top_up(
    balance: Balance, topped: TopUp, *, event_id: str, at: datetime, amount_fen: int | None = None
) -> SvPosting[TopUp]:
    """Pay back a top-up's unspent paid money (all that is ``refundable``, or ``amount_fen`` of
    it) and forfeit its bonus in proportion (see the module docstring)."""
    require_aware("at", at)
    can = refundable(balance, topped)
    if amount_fen is None:
        if not can:
            raise LoyaltyError(
                Code.NOTHING_TO_REFUND,
                f"top-up {topped.top_up_id} has nothing left to refund: its money was spent or refunded already",
                field="top_up_id",
            )
        paid = can
    else:
        paid = amount("amount_fen", amount_fen, unit="fen")
        if paid > can:
            raise LoyaltyError(
                Code.REFUND_EXCEEDS,
                f"refunding {yuan(paid)} of top-up {topped.top_up_id} exceeds the {yuan(can)} "
                "of it that is unspent and unrefunded",
                field="amount_fen",
            )
    refunded = topped.refunded_fen + paid
    owed = ceil_div(topped.bonus_fen * refunded, topped.pay_fen) - topped.forfeited_fen
    bonus = max(0, min(owed, balance.bonus_fen))
    entry = SvEntry(SvKind.TOP_UP_REFUND, event_id, at, -paid, -bonus, topped.top_up_id)
    record = replace(topped, refunded_fen=refunded, forfeited_fen=topped.forfeited_fen + bonus)
    return SvPosting(_apply(balance, -paid, -bonus), entry, record)


@dataclass(frozen=True, slots=True)
class SvReconciliation:
    entries: tuple[int, int]  # (paid, bonus) summed from the entries
    record: Balance

    @property
    def ok(self) -> bool:
        return self.entries == (self.record.paid_fen, self.record.bonus_fen)


def reconcile(entries: Iterable[SvEntry], balance: Balance) -> SvReconciliation:
    """Compare the stored balances with the sums of the entries."""
    paid = bonus = 0
    for e in entries:
        paid += e.paid_fen
        bonus += e.bonus_fen
    return SvReconciliation((paid, bonus), balance)
