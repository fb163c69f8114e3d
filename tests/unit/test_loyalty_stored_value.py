"""Stored value: plans, the proportional split of spends, refunds of spends and of top-ups, errors;
and a property: over any sequence the balances never go negative, equal the sums of the entries,
and every fen of paid and bonus money is accounted for."""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from pydantic import ValidationError

from services.loyalty.domain.common import LoyaltyError
from services.loyalty.domain.stored_value import (
    Balance,
    Spend,
    SvEntry,
    SvKind,
    SvPosting,
    TopUp,
    TopUpPlan,
    TopUpPlans,
    reconcile,
    refund_spend,
    refund_top_up,
    refundable,
    spend,
    split_spend,
    top_up,
)

SH = ZoneInfo("Asia/Shanghai")
T0 = datetime(2026, 11, 1, 10, tzinfo=SH)


def topped(pay: int = 50_000, bonus: int = 5_000, balance: Balance | None = None) -> SvPosting[TopUp]:
    return top_up(balance or Balance(), pay, bonus, top_up_id="tu-1", event_id="pay-1", at=T0)


def refused(call: object) -> LoyaltyError:
    assert callable(call)
    with pytest.raises(LoyaltyError) as info:
        call()
    return info.value


# --- plans --------------------------------------------------------------------------------------


def test_a_plan_is_pay_and_bonus_in_whole_fen() -> None:
    plan = TopUpPlan.model_validate({"plan_id": "p500", "name": "充500送50", "pay_fen": 50_000, "bonus_fen": 5_000})
    assert (plan.pay_fen, plan.bonus_fen) == (50_000, 5_000)
    for bad, needle in (
        ({"pay_fen": 500.0}, "pay_fen"),
        ({"pay_fen": 0}, "pay_fen"),
        ({"bonus_fen": -1}, "bonus_fen"),
        ({"bonus_fen": 60_000}, "bonus_fen 60000 (¥600.00) is above pay_fen 50000"),
        ({"gift": 1}, "Extra inputs"),
    ):
        with pytest.raises(ValidationError, match=needle.replace("(", r"\(").replace(")", r"\)")):
            TopUpPlan.model_validate({"plan_id": "p", "name": "n", "pay_fen": 50_000, **bad})


def test_plans_are_distinct_and_looked_up_by_id() -> None:
    plans = TopUpPlans.model_validate(
        {
            "plans": [
                {"plan_id": "a", "name": "a", "pay_fen": 100},
                {"plan_id": "b", "name": "b", "pay_fen": 200, "bonus_fen": 20},
            ]
        }
    )
    assert plans.get("b").bonus_fen == 20
    err = refused(lambda: plans.get("c"))
    assert (err.code, err.http_status, err.field) == ("unknown_plan", 404, "plan_id")
    with pytest.raises(ValidationError, match="plan_id 'a' twice"):
        TopUpPlans.model_validate(
            {"plans": [{"plan_id": "a", "name": "a", "pay_fen": 100}, {"plan_id": "a", "name": "b", "pay_fen": 200}]}
        )
    with pytest.raises(ValidationError, match="same pay_fen 100"):
        TopUpPlans.model_validate(
            {
                "plans": [
                    {"plan_id": "a", "name": "a", "pay_fen": 100},
                    {"plan_id": "b", "name": "b", "pay_fen": 100, "bonus_fen": 5},
                ]
            }
        )


# --- top-up and spend ---------------------------------------------------------------------------


def test_a_top_up_fills_both_balances() -> None:
    posting = topped()
    assert posting.balance == Balance(50_000, 5_000) and posting.balance.total_fen == 55_000
    assert posting.entry == SvEntry(SvKind.TOP_UP, "pay-1", T0, 50_000, 5_000, "tu-1")
    assert posting.record == TopUp("tu-1", 50_000, 5_000)


def test_a_spend_takes_paid_and_bonus_in_proportion_with_the_bonus_floored() -> None:
    posting = spend(Balance(50_000, 5_000), 11_000, spend_id="s-1", event_id="o-1", at=T0)
    assert posting.record == Spend("s-1", 10_000, 1_000)
    assert posting.balance == Balance(40_000, 4_000)
    assert split_spend(50_000, 5_000, 98) == (90, 8)  # bonus ⌊98 × 5000 / 55000⌋ = ⌊8.9⌋; the odd fen is paid
    assert split_spend(50_000, 5_000, 55_000) == (50_000, 5_000)  # everything: exactly both
    assert split_spend(0, 300, 100) == (0, 100) and split_spend(300, 0, 100) == (100, 0)
    with pytest.raises(ValueError):
        split_spend(10, 10, 21)


def test_spending_more_than_the_balance_is_refused() -> None:
    err = refused(lambda: spend(Balance(100, 10), 111, spend_id="s", event_id="e", at=T0))
    assert (err.code, err.http_status, err.field) == ("insufficient_balance", 409, "amount_fen")
    assert err.message == "paying ¥1.11 needs more than the ¥1.10 stored value (¥1.00 paid + ¥0.10 bonus)"
    for amount, code in ((-1, "negative_amount"), (0, "invalid_amount"), (1.5, "invalid_amount")):
        err = refused(lambda amount=amount: spend(Balance(100, 10), amount, spend_id="s", event_id="e", at=T0))
        assert (err.code, err.http_status) == (code, 422)


# --- refunds ------------------------------------------------------------------------------------


def test_a_spend_refund_restores_the_same_split_cumulatively() -> None:
    spent = Spend("s-1", 91, 8)
    first = refund_spend(Balance(), spent, 50, event_id="r1", at=T0)
    assert (first.entry.paid_fen, first.entry.bonus_fen) == (46, 4)  # ⌊8 × 50 / 99⌋ = 4
    second = refund_spend(first.balance, first.record, 49, event_id="r2", at=T0)
    assert second.balance == Balance(91, 8)
    err = refused(lambda: refund_spend(second.balance, second.record, 1, event_id="r3", at=T0))
    assert (err.code, err.http_status) == ("refund_exceeds", 409)


def test_a_top_up_refund_pays_back_only_unspent_paid_money_and_forfeits_the_bonus_in_proportion() -> None:
    after_top_up = topped()
    after_spend = spend(after_top_up.balance, 22_000, spend_id="s-1", event_id="o-1", at=T0)
    assert after_spend.balance == Balance(30_000, 3_000)
    assert refundable(after_spend.balance, after_top_up.record) == 30_000
    back = refund_top_up(after_spend.balance, after_top_up.record, event_id="rf-1", at=T0)
    # ⌈5000 × 30000 / 50000⌉ = 3000 of the bonus goes with the 30000 paid back
    assert (back.entry.kind, back.entry.paid_fen, back.entry.bonus_fen) == (SvKind.TOP_UP_REFUND, -30_000, -3_000)
    assert back.balance == Balance(0, 0)
    assert back.record == TopUp("tu-1", 50_000, 5_000, refunded_fen=30_000, forfeited_fen=3_000)
    err = refused(lambda: refund_top_up(back.balance, back.record, event_id="rf-2", at=T0))
    assert (err.code, err.http_status, err.field) == ("nothing_to_refund", 409, "top_up_id")


def test_a_partial_top_up_refund_rounds_the_forfeit_up_and_never_exceeds_the_bonus_held() -> None:
    first = refund_top_up(Balance(333, 33), TopUp("tu", 333, 33), event_id="a", at=T0, amount_fen=100)
    assert (first.entry.paid_fen, first.entry.bonus_fen) == (-100, -10)  # ⌈9.9⌉
    rest = refund_top_up(first.balance, first.record, event_id="b", at=T0)
    assert (rest.entry.paid_fen, rest.entry.bonus_fen) == (-233, -23) and rest.balance == Balance(0, 0)
    thin = refund_top_up(Balance(1_000, 5), TopUp("tu", 1_000, 100), event_id="c", at=T0)
    assert thin.entry.bonus_fen == -5 and thin.balance == Balance(0, 0)
    err = refused(lambda: refund_top_up(Balance(100, 0), TopUp("tu", 500, 0), event_id="d", at=T0, amount_fen=101))
    assert (err.code, err.http_status, err.field) == ("refund_exceeds", 409, "amount_fen")
    assert "exceeds the ¥1.00 of it that is unspent" in err.message


def test_balances_cannot_be_built_negative_or_from_floats() -> None:
    with pytest.raises(ValueError, match="paid_fen"):
        Balance(-1, 0)
    with pytest.raises(ValueError, match="bonus_fen"):
        Balance(0, 1.5)  # type: ignore[arg-type]


# --- properties ---------------------------------------------------------------------------------


class StoredValueMachine(RuleBasedStateMachine):
    """Top-ups, spends and both kinds of refund in any order."""

    def __init__(self) -> None:
        super().__init__()
        self.balance = Balance()
        self.entries: list[SvEntry] = []
        self.top_ups: list[TopUp] = []
        self.spends: list[Spend] = []
        self.now = T0
        self.n = 0

    def post(self, posting: SvPosting[TopUp] | SvPosting[Spend]) -> None:
        self.balance = posting.balance
        self.entries.append(posting.entry)
        self.now += timedelta(minutes=1)
        self.n += 1

    @rule(pay=st.integers(1, 100_000), share=st.integers(0, 100))
    def top_up(self, pay: int, share: int) -> None:
        posting = top_up(
            self.balance, pay, pay * share // 100, top_up_id=f"tu-{self.n}", event_id=f"e-{self.n}", at=self.now
        )
        self.top_ups.append(posting.record)
        self.post(posting)

    @rule(share=st.just(100) | st.integers(1, 100), over=st.integers(1, 100))
    def spend(self, share: int, over: int) -> None:
        with pytest.raises(LoyaltyError):
            spend(self.balance, self.balance.total_fen + over, spend_id="x", event_id="x", at=self.now)
        amount = self.balance.total_fen * share // 100
        if not amount:
            return
        before = self.balance
        posting = spend(self.balance, amount, spend_id=f"s-{self.n}", event_id=f"e-{self.n}", at=self.now)
        record = posting.record
        assert isinstance(record, Spend) and record.amount_fen == amount
        # proportional: the bonus share of the spend is the floor of the bonus share of the balance
        assert record.bonus_fen == amount * before.bonus_fen // before.total_fen
        self.spends.append(record)
        self.post(posting)

    @precondition(lambda self: bool(self.spends))
    @rule(data=st.data())
    def refund_spend(self, data: st.DataObject) -> None:
        i = data.draw(st.integers(0, len(self.spends) - 1))
        spent = self.spends[i]
        left = spent.amount_fen - spent.refunded_fen
        if not left:
            return
        posting = refund_spend(
            self.balance, spent, data.draw(st.just(left) | st.integers(1, left)), event_id=f"e-{self.n}", at=self.now
        )
        self.spends[i] = posting.record
        self.post(posting)

    @precondition(lambda self: bool(self.top_ups))
    @rule(data=st.data())
    def refund_top_up(self, data: st.DataObject) -> None:
        i = data.draw(st.integers(0, len(self.top_ups) - 1))
        record = self.top_ups[i]
        can = refundable(self.balance, record)
        if not can:
            with pytest.raises(LoyaltyError):
                refund_top_up(self.balance, record, event_id="x", at=self.now)
            return
        amount = data.draw(st.none() | st.integers(1, can))
        posting = refund_top_up(self.balance, record, event_id=f"e-{self.n}", at=self.now, amount_fen=amount)
        self.top_ups[i] = posting.record
        self.post(posting)

    @invariant()
    def balanced_never_negative_and_conserved(self) -> None:
        assert self.balance.paid_fen >= 0 and self.balance.bonus_fen >= 0
        assert reconcile(self.entries, self.balance).ok
        paid_in = sum(t.pay_fen for t in self.top_ups)
        bonus_in = sum(t.bonus_fen for t in self.top_ups)
        paid_spent = sum(s.paid_fen - s.restored(s.refunded_fen)[0] for s in self.spends)
        bonus_spent = sum(s.bonus_fen - s.restored(s.refunded_fen)[1] for s in self.spends)
        paid_back = sum(t.refunded_fen for t in self.top_ups)
        forfeited = sum(t.forfeited_fen for t in self.top_ups)
        assert self.balance.paid_fen == paid_in - paid_spent - paid_back
        assert self.balance.bonus_fen == bonus_in - bonus_spent - forfeited
        for s in self.spends:
            paid, bonus = s.restored(s.refunded_fen)
            assert 0 <= paid <= s.paid_fen and 0 <= bonus <= s.bonus_fen
        for t in self.top_ups:
            assert 0 <= t.refunded_fen <= t.pay_fen and 0 <= t.forfeited_fen <= t.bonus_fen


StoredValueMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
TestStoredValueMachine = StoredValueMachine.TestCase
