"""The points ledger: pending and maturing, refunds in and after the window, debt, FIFO lots,
expiry, redemptions and their restoration, manual adjustments, and reconciliation; plus a
stateful property: after any sequence of operations the balance is never negative and equals the
sum of the entries and of the open lots."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from pydantic import ValidationError

from services.loyalty.domain.common import LoyaltyError
from services.loyalty.domain.ledger import (
    Account,
    AfterDays,
    DebtPolicy,
    EndOfYear,
    Entry,
    Kind,
    LedgerRules,
    Lot,
    NeverExpires,
    OrderPoints,
    Posting,
    adjust,
    credit,
    expire,
    expiring,
    fifo_key,
    lot_expiry,
    mature,
    post_order,
    reconcile,
    redeem,
    refund,
    restore,
    totals,
    write_off,
)

SH = ZoneInfo("Asia/Shanghai")
T0 = datetime(2026, 11, 1, 10, tzinfo=SH)
RULES = LedgerRules(expiry=AfterDays(days=30))


def day(n: float) -> datetime:
    return T0 + timedelta(days=n)


class Book:
    """A customer's ledger as the service would keep it: the account, every entry, the orders."""

    def __init__(self, rules: LedgerRules = RULES) -> None:
        self.rules = rules
        self.account = Account()
        self.entries: list[Entry] = []
        self.orders: dict[str, OrderPoints] = {}

    def apply(self, posting: Posting) -> Posting:
        self.account = posting.account
        self.entries.extend(posting.entries)
        if posting.order is not None:
            self.orders[posting.order.order_id] = posting.order
        return posting

    def order(self, order_id: str, points: int, at: datetime, *, paid_fen: int = 10_000, window: int = 7) -> Posting:
        return self.apply(
            post_order(
                self.account,
                order_id=order_id,
                paid_fen=paid_fen,
                points=points,
                event_id=f"paid:{order_id}",
                at=at,
                matures_at=at + timedelta(days=window),
                rules=self.rules,
                tz=SH,
            )
        )

    def mature(self, order_id: str, at: datetime) -> Posting:
        return self.apply(mature(self.account, self.orders[order_id], at=at, rules=self.rules, tz=SH))

    def credit(self, points: int, event_id: str, at: datetime) -> Posting:
        return self.apply(credit(self.account, points, event_id=event_id, at=at, rules=self.rules, tz=SH))

    def refund(self, order_id: str, fen: int, at: datetime, event_id: str = "refund") -> Posting:
        return self.apply(
            refund(self.account, self.orders[order_id], fen, event_id=event_id, at=at, rules=self.rules, tz=SH)
        )

    def redeem(self, points: int, at: datetime, event_id: str = "redeem") -> Posting:
        return self.apply(redeem(self.account, points, event_id=event_id, at=at))

    def check(self) -> None:
        proof = reconcile(self.entries, self.account.lots, debt=self.account.debt, orders=self.orders.values())
        assert proof.ok, proof.differences
        assert proof.totals.balance == self.account.balance >= 0
        assert proof.totals.debt == self.account.debt >= 0

    def lots(self) -> dict[str, int]:
        return {lot.lot_id: lot.remaining for lot in self.account.lots}


# --- expiry terms -------------------------------------------------------------------------------


def test_end_of_next_year_is_the_first_instant_of_the_year_after_on_the_merchant_clock() -> None:
    term = EndOfYear()
    assert lot_expiry(term, T0, SH) == datetime(2028, 1, 1, tzinfo=SH)  # valid through 2027-12-31 23:59:59
    new_year_in_shanghai = datetime(2026, 12, 31, 20, tzinfo=UTC)  # 2027-01-01 04:00 local
    assert lot_expiry(term, new_year_in_shanghai, SH) == datetime(2029, 1, 1, tzinfo=SH)
    assert lot_expiry(term, new_year_in_shanghai, "UTC") == datetime(2028, 1, 1, tzinfo=UTC)
    assert lot_expiry(EndOfYear(years_after=0), T0, SH) == datetime(2027, 1, 1, tzinfo=SH)


def test_days_terms_end_at_local_midnight_and_never_means_none() -> None:
    assert lot_expiry(AfterDays(days=365), T0, SH) == datetime(2027, 11, 2, tzinfo=SH)
    assert lot_expiry(NeverExpires(), T0, SH) is None


def test_rules_validate_terms_and_notice_days() -> None:
    with pytest.raises(ValidationError, match=r"days must be 1\.\.3650"):
        LedgerRules.model_validate({"expiry": {"type": "days", "days": 0}})
    with pytest.raises(ValidationError, match=r"years_after must be 0\.\.10"):
        LedgerRules.model_validate({"expiry": {"type": "end_of_year", "years_after": 11}})
    with pytest.raises(ValidationError, match=r"notice_days must be 0\.\.365"):
        LedgerRules.model_validate({"notice_days": -1})
    with pytest.raises(ValidationError, match="Extra inputs"):
        LedgerRules.model_validate({"expiry": {"type": "never", "days": 3}})
    assert LedgerRules().model_dump() == {
        "expiry": {"type": "end_of_year", "years_after": 1},
        "debt_policy": "carry",
        "notice_days": 30,
    }


# --- pending, maturing --------------------------------------------------------------------------


def test_order_points_are_pending_then_available_when_the_window_closes() -> None:
    book = Book()
    posted = book.order("o-1", 100, T0)
    assert [(e.kind, e.points, e.pending, e.event_id) for e in posted.entries] == [
        (Kind.EARN_PENDING, 0, 100, "paid:o-1")
    ]
    assert book.account.balance == 0 and book.orders["o-1"].pending == 100
    assert not book.mature("o-1", day(6.9)).changed  # the window is still open
    matured = book.mature("o-1", day(8))
    assert [(e.kind, e.points, e.pending, e.lot_id, e.at) for e in matured.entries] == [
        (Kind.EARN_AVAILABLE, 100, -100, "mature:o-1", day(7))
    ]  # dated when the window closed
    assert book.account.balance == 100 and book.account.lots[0].earned_at == day(7)
    assert not book.mature("o-1", day(9)).changed  # safe to run twice
    book.check()


def test_an_order_whose_window_already_closed_matures_at_once() -> None:
    book = Book()
    posted = book.order("o-1", 50, T0, window=0)
    assert [e.kind for e in posted.entries] == [Kind.EARN_PENDING, Kind.EARN_AVAILABLE]
    assert book.account.balance == 50 and book.orders["o-1"].matured
    book.check()


def test_a_zero_point_order_keeps_a_record_but_posts_nothing() -> None:
    book = Book()
    assert not book.order("o-1", 0, T0, paid_fen=50).changed
    assert not book.refund("o-1", 50, day(1)).changed
    assert not book.mature("o-1", day(8)).changed and book.orders["o-1"].matured


# --- refunds ------------------------------------------------------------------------------------


def test_a_refund_inside_the_window_cancels_pending_points_in_proportion() -> None:
    book = Book()
    book.order("o-1", 99, T0, paid_fen=10_000)
    first = book.refund("o-1", 3_333, day(1), "r1")  # ceil(99 × 3333 / 10000) = ceil(32.99) = 33
    assert [(e.kind, e.pending, e.order_id) for e in first.entries] == [(Kind.CANCEL, -33, "o-1")]
    book.refund("o-1", 3_333, day(2), "r2")  # ceil(65.99) = 66 in total
    assert book.orders["o-1"].pending == 33
    book.refund("o-1", 3_334, day(3), "r3")  # the full refund removes exactly the 99 points
    assert book.orders["o-1"].pending == 0
    assert sum(e.pending for e in book.entries) == 0
    assert not book.mature("o-1", day(8)).changed
    book.check()


def test_refunding_more_than_was_paid_is_refused() -> None:
    book = Book()
    book.order("o-1", 100, T0, paid_fen=10_000)
    book.refund("o-1", 6_000, day(1))
    with pytest.raises(LoyaltyError) as info:
        book.refund("o-1", 4_001, day(2))
    assert (info.value.code, info.value.http_status, info.value.field) == ("refund_exceeds", 409, "refund_fen")
    assert "¥100.01" in info.value.message and "¥100.00 paid" in info.value.message
    with pytest.raises(LoyaltyError) as neg:
        book.refund("o-1", -1, day(2))
    assert (neg.value.code, neg.value.http_status) == ("negative_amount", 422)


def test_a_refund_after_the_window_claws_back_from_the_oldest_lots_first() -> None:
    book = Book()
    book.credit(50, "bonus:first_order", T0)
    book.order("o-1", 100, T0)
    book.mature("o-1", day(7))
    clawed = book.refund("o-1", 10_000, day(10))
    assert [(e.kind, e.points, e.lot_id) for e in clawed.entries] == [
        (Kind.CLAWBACK, -50, "bonus:first_order"),
        (Kind.CLAWBACK, -50, "mature:o-1"),
    ]
    assert book.lots() == {"mature:o-1": 50} and book.account.debt == 0
    book.check()


def test_a_refund_at_the_window_end_matures_first_even_if_the_sweep_was_late() -> None:
    book = Book()
    book.order("o-1", 100, T0)
    posting = book.refund("o-1", 5_000, day(7))  # exactly at matures_at: after the window
    assert [(e.kind, e.points, e.pending) for e in posting.entries] == [
        (Kind.EARN_AVAILABLE, 100, -100),
        (Kind.CLAWBACK, -50, 0),
    ]
    assert book.account.balance == 50 and book.orders["o-1"].matured
    book.check()


def test_a_clawback_shortfall_is_debt_recovered_from_later_earnings_only() -> None:
    book = Book()
    book.order("o-1", 100, T0)
    book.mature("o-1", day(7))
    book.redeem(90, day(8))
    clawed = book.refund("o-1", 10_000, day(9))
    assert [(e.kind, e.points, e.debt) for e in clawed.entries] == [(Kind.CLAWBACK, -10, 0), (Kind.CLAWBACK, 0, 90)]
    assert (book.account.balance, book.account.debt) == (0, 90)
    book.apply(
        adjust(
            book.account, 10, reason="late delivery", operator="ops-1", event_id="adj-1", at=day(9), rules=RULES, tz=SH
        )
    )
    assert (book.account.balance, book.account.debt) == (10, 90)  # an operator's gift does not repay debt
    recovered = book.credit(50, "bonus:sign_in", day(10))
    assert [(e.kind, e.points, e.debt, e.lot_id) for e in recovered.entries] == [
        (Kind.EARN_AVAILABLE, 50, 0, "bonus:sign_in"),
        (Kind.RECOVER, -10, -10, "adj-1"),
        (Kind.RECOVER, -40, -40, "bonus:sign_in"),
    ]  # FIFO: the older lot first
    assert (book.account.balance, book.account.debt) == (10, 40)
    book.order("o-2", 60, day(10))
    book.mature("o-2", day(17))
    assert (book.account.balance, book.account.debt) == (30, 0)
    book.check()


def test_the_write_off_policy_forgives_the_shortfall_and_records_the_loss() -> None:
    book = Book(LedgerRules(expiry=AfterDays(days=30), debt_policy=DebtPolicy.WRITE_OFF))
    book.order("o-1", 100, T0)
    book.mature("o-1", day(7))
    book.redeem(70, day(8))
    clawed = book.refund("o-1", 10_000, day(9))
    assert [(e.kind, e.points, e.debt) for e in clawed.entries] == [
        (Kind.CLAWBACK, -30, 0),
        (Kind.CLAWBACK, 0, 70),
        (Kind.WRITE_OFF, 0, -70),
    ]
    assert book.account.debt == 0
    assert -sum(e.debt for e in book.entries if e.kind == Kind.WRITE_OFF) == 70
    book.check()


def test_an_operator_can_write_off_a_carried_debt() -> None:
    account = Account(debt=40)
    posting = write_off(account, event_id="wo-1", at=T0, reason="goodwill", operator="ops-1")
    assert posting.account.debt == 0
    assert [(e.kind, e.debt, e.operator) for e in posting.entries] == [(Kind.WRITE_OFF, -40, "ops-1")]
    assert not write_off(Account(), event_id="wo-2", at=T0, reason="none").changed


# --- redeeming, FIFO, expiry --------------------------------------------------------------------


def test_redeeming_takes_the_oldest_lots_first_one_entry_per_lot() -> None:
    book = Book()
    book.credit(30, "b1", T0)
    book.credit(30, "b2", day(1))
    book.credit(30, "b3", day(2))
    posting = book.redeem(45, day(3), "checkout:o-9")
    assert [(e.kind, e.points, e.lot_id, e.event_id) for e in posting.entries] == [
        (Kind.REDEEM, -30, "b1", "checkout:o-9"),
        (Kind.REDEEM, -15, "b2", "checkout:o-9"),
    ]
    assert book.lots() == {"b2": 15, "b3": 30}
    book.check()


def test_redeeming_more_than_the_balance_is_refused_and_changes_nothing() -> None:
    account = credit(Account(), 30, event_id="b1", at=T0, rules=RULES, tz=SH).account
    for points, code, status in (
        (31, "insufficient_points", 409),
        (-5, "negative_amount", 422),
        (0, "invalid_amount", 422),
        (1.5, "invalid_amount", 422),
    ):
        with pytest.raises(LoyaltyError) as info:
            redeem(account, points, event_id="r", at=T0)  # type: ignore[arg-type]
        assert (info.value.code, info.value.http_status, info.value.field) == (code, status, "points")
    assert account.balance == 30
    with pytest.raises(LoyaltyError, match="redeeming 31 points needs more than the 30 points available"):
        redeem(account, 31, event_id="r", at=T0)


def test_expired_points_are_never_spent_even_before_the_sweep() -> None:
    book = Book()
    book.credit(30, "b1", T0)  # expires at local midnight starting day 31
    book.credit(30, "b2", day(10))
    assert book.account.spendable(day(32)) == 30 and book.account.balance == 60
    with pytest.raises(LoyaltyError):
        redeem(book.account, 31, event_id="r", at=day(32))
    posting = book.redeem(20, day(32))
    assert [(e.kind, e.points, e.lot_id, e.event_id) for e in posting.entries] == [
        (Kind.EXPIRE, -30, "b1", "expire:b1"),
        (Kind.REDEEM, -20, "b2", "redeem"),
    ]
    assert posting.entries[0].at == datetime(2026, 12, 2, tzinfo=SH)
    book.check()


def test_the_expiry_sweep_is_dated_at_each_lot_expiry_and_safe_to_run_twice() -> None:
    book = Book()
    book.credit(30, "b1", T0)
    book.credit(40, "b2", day(5))
    swept = book.apply(expire(book.account, at=day(60)))
    assert [(e.kind, e.points, e.event_id, e.at) for e in swept.entries] == [
        (Kind.EXPIRE, -30, "expire:b1", datetime(2026, 12, 2, tzinfo=SH)),
        (Kind.EXPIRE, -40, "expire:b2", datetime(2026, 12, 7, tzinfo=SH)),
    ]
    assert not expire(book.account, at=day(61)).changed
    assert book.account.balance == 0
    book.check()


def test_fifo_spends_what_expires_first_when_the_term_changed() -> None:
    long = Lot("old-term", T0, datetime(2028, 1, 1, tzinfo=SH), 10, 10)
    short = Lot("new-term", day(1), datetime(2027, 1, 1, tzinfo=SH), 10, 10)
    forever = Lot("forever", T0 - timedelta(days=1), None, 10, 10)
    assert [lot.lot_id for lot in sorted([forever, long, short], key=fifo_key)] == ["new-term", "old-term", "forever"]
    assert [lot.lot_id for lot in Account((forever, long, short)).lots] == ["new-term", "old-term", "forever"]


def test_expiring_sums_points_per_expiry_inside_the_horizon() -> None:
    lots = [
        Lot("a", T0, day(10), 10, 5),
        Lot("b", T0, day(10), 10, 10),
        Lot("c", T0, day(20), 10, 7),
        Lot("d", T0, day(40), 10, 10),
        Lot("e", T0, None, 10, 10),
        Lot("f", T0, day(15), 10, 0),
    ]
    soon = expiring(lots, 30, day(0))
    assert [(x.expires_at, x.points) for x in soon] == [(day(10), 15), (day(20), 7)]
    later = expiring(lots, 30, day(10))  # what expires at day 10 is gone by then; day 40 is now in reach
    assert [(x.expires_at, x.points) for x in later] == [(day(20), 7), (day(40), 10)]
    assert expiring(lots, 0, day(0)) == ()


# --- restoring a redemption ---------------------------------------------------------------------


def test_a_cancelled_redemption_goes_back_onto_its_lots() -> None:
    book = Book()
    book.credit(50, "b1", T0)
    book.credit(50, "b2", day(1))
    records = {lot.lot_id: lot for lot in book.account.lots}
    spent = book.redeem(70, day(2), "checkout:o-9").entries
    with pytest.raises(ValueError, match="lot b1 is neither open nor among the records"):
        restore(book.account, spent, event_id="cancel:o-9", at=day(3))
    back = book.apply(restore(book.account, spent, event_id="cancel:o-9", at=day(3), points=30, lots=records.values()))
    assert [(e.kind, e.points, e.lot_id) for e in back.entries] == [(Kind.RESTORE, 20, "b2"), (Kind.RESTORE, 10, "b1")]
    rest = book.apply(
        restore(book.account, spent, event_id="refund:o-9", at=day(3), already_restored=30, lots=records.values())
    )
    assert [(e.points, e.lot_id) for e in rest.entries] == [(40, "b1")]
    assert book.lots() == {"b1": 50, "b2": 50}
    with pytest.raises(LoyaltyError) as info:
        restore(book.account, spent, event_id="again", at=day(3), already_restored=70, lots=records.values())
    assert (info.value.code, info.value.http_status) == ("refund_exceeds", 409)
    book.check()


def test_restored_points_of_an_expired_lot_come_back_and_expire() -> None:
    book = Book()
    book.credit(50, "b1", T0)
    record = book.account.lots[0]
    spent = book.redeem(50, day(1)).entries
    back = book.apply(restore(book.account, spent, event_id="cancel", at=day(40), lots=[record]))
    assert [(e.kind, e.points, e.event_id) for e in back.entries] == [
        (Kind.RESTORE, 50, "cancel"),
        (Kind.EXPIRE, -50, "cancel"),
    ]
    assert book.account.balance == 0
    book.check()


def test_restore_takes_only_redeem_entries() -> None:
    with pytest.raises(ValueError, match="redeem entries"):
        restore(Account(), [Entry(Kind.ADJUST, "a", T0, points=-5, lot_id="x")], event_id="r", at=T0)


# --- manual adjustments -------------------------------------------------------------------------


def test_adjustments_are_audited_and_never_take_more_than_the_balance() -> None:
    book = Book()
    plus = book.apply(
        adjust(book.account, 100, reason="compensation", operator="ops-1", event_id="adj-1", at=T0, rules=RULES, tz=SH)
    )
    assert [(e.kind, e.points, e.reason, e.operator, e.lot_id) for e in plus.entries] == [
        (Kind.ADJUST, 100, "compensation", "ops-1", "adj-1")
    ]
    minus = book.apply(
        adjust(
            book.account,
            -40,
            reason="duplicate credit",
            operator="ops-2",
            event_id="adj-2",
            at=day(1),
            rules=RULES,
            tz=SH,
        )
    )
    assert [(e.points, e.lot_id) for e in minus.entries] == [(-40, "adj-1")]
    cases = [
        (-61, "compensation", "ops", "insufficient_points", 409, "points"),
        (0, "x", "ops", "invalid_amount", 422, "points"),
        (5, " ", "ops", "reason_required", 422, "reason"),
        (5, "fine", "", "reason_required", 422, "operator"),
    ]
    for points, reason, operator, code, status, field in cases:
        with pytest.raises(LoyaltyError) as info:
            adjust(
                book.account, points, reason=reason, operator=operator, event_id="adj-3", at=day(2), rules=RULES, tz=SH
            )
        assert (info.value.code, info.value.http_status, info.value.field) == (code, status, field)
    book.check()


def test_an_event_can_credit_points_once() -> None:
    account = credit(Account(), 10, event_id="bonus:sign_in:2026-11-01", at=T0, rules=RULES, tz=SH).account
    with pytest.raises(ValueError, match="already exists"):
        credit(account, 10, event_id="bonus:sign_in:2026-11-01", at=T0, rules=RULES, tz=SH)


def test_naive_times_are_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        redeem(Account(), 1, event_id="r", at=T0.replace(tzinfo=None))
    with pytest.raises(ValueError, match="naive"):
        Lot("x", T0.replace(tzinfo=None), None, 1, 1)


def test_records_refuse_impossible_values() -> None:
    with pytest.raises(ValueError, match=r"remaining 11 must be within 0\.\.10"):
        Lot("x", T0, None, 10, 11)
    with pytest.raises(ValueError, match="expires_at must be after earned_at"):
        Lot("x", T0, T0, 10, 1)
    with pytest.raises(ValueError, match="debt"):
        Account(debt=-1)
    with pytest.raises(ValueError, match="twice"):
        Account((Lot("x", T0, None, 1, 1), Lot("x", T0, None, 1, 1)))
    with pytest.raises(ValueError, match="refunded_fen"):
        OrderPoints("o", 100, 1, T0, refunded_fen=101)


# --- reconciliation -----------------------------------------------------------------------------


def test_reconciliation_reports_every_difference() -> None:
    book = Book()
    book.order("o-1", 100, T0)
    book.credit(30, "b1", T0)
    book.check()
    lots = list(book.account.lots)
    tampered = [replace(lots[0], remaining=25)]
    stray = Entry(Kind.ADJUST, "stray", T0, points=5)
    proof = reconcile(
        [*book.entries, stray], tampered, debt=3, orders=[replace(book.orders["o-1"], points=90)], balance=40
    )
    assert not proof.ok
    assert {(d.check, d.entries, d.record, d.ref) for d in proof.differences} == {
        ("balance_vs_lots", 35, 25, None),
        ("unlotted", 5, 0, "stray"),
        ("lot", 30, 25, "b1"),
        ("debt", 0, 3, None),
        ("balance", 35, 40, None),
        ("pending", 100, 90, None),
        ("order_pending", 100, 90, "o-1"),
    }
    assert totals(book.entries).pending == 100
    negative = reconcile([Entry(Kind.REDEEM, "r", T0, points=-5, lot_id="x")], [])
    assert {d.check for d in negative.differences} == {"balance_vs_lots", "lot", "negative_balance"}


# --- properties ---------------------------------------------------------------------------------


@given(earned=st.integers(1, 500), spent_share=st.integers(0, 100), later=st.lists(st.integers(1, 300), max_size=5))
def test_a_shortfall_is_recovered_from_later_earnings_until_repaid(
    earned: int, spent_share: int, later: list[int]
) -> None:
    book = Book()
    book.order("o-1", earned, T0)
    book.mature("o-1", day(7))
    spent = earned * spent_share // 100
    if spent:
        book.redeem(spent, day(8))
    book.refund("o-1", 10_000, day(9))
    assert (book.account.balance, book.account.debt) == (0, spent)
    owed = spent
    for i, points in enumerate(later):
        book.credit(points, f"b{i}", day(10 + i))
        repaid = min(owed, points)
        owed -= repaid
        assert (book.account.balance, book.account.debt) == (sum(later[: i + 1]) - (spent - owed), owed)
        assert sum(-e.debt for e in book.entries if e.kind == Kind.RECOVER) == spent - owed
    book.check()


@given(sizes=st.lists(st.integers(1, 100), min_size=1, max_size=8), data=st.data())
def test_redemptions_consume_lots_strictly_first_in_first_out(sizes: list[int], data: st.DataObject) -> None:
    book = Book(LedgerRules(expiry=NeverExpires()))
    for i, size in enumerate(sizes):
        book.credit(size, f"b{i}", day(i))
    want = data.draw(st.integers(1, sum(sizes)))
    taken = [(e.lot_id, -e.points) for e in book.redeem(want, day(20)).entries]
    expected, left = [], want
    for i, size in enumerate(sizes):
        if left:
            expected.append((f"b{i}", min(size, left)))
            left -= min(size, left)
    assert taken == expected
    book.check()


class LedgerMachine(RuleBasedStateMachine):
    """Random sequences of every operation: the ledger stays balanced and never goes negative."""

    def __init__(self) -> None:
        super().__init__()
        self.book = Book()
        self.now = T0
        self.n = 0
        self.records: dict[str, Lot] = {}
        self.redemptions: list[tuple[tuple[Entry, ...], int]] = []

    @initialize(policy=st.sampled_from(list(DebtPolicy)), days=st.sampled_from([15, 45, 400]))
    def setup(self, policy: DebtPolicy, days: int) -> None:
        self.book = Book(LedgerRules(expiry=AfterDays(days=days), debt_policy=policy))

    def next_id(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}-{self.n}"

    def remember(self, posting: Posting) -> Posting:
        self.book.apply(posting)
        for lot in posting.account.lots:
            self.records[lot.lot_id] = lot
        return posting

    @rule(days=st.integers(0, 20), hours=st.integers(0, 23))
    def tick(self, days: int, hours: int) -> None:
        self.now += timedelta(days=days, hours=hours)

    @rule(points=st.integers(0, 400), paid=st.integers(1, 50_000), window=st.integers(0, 10))
    def order_paid(self, points: int, paid: int, window: int) -> None:
        order_id = self.next_id("o")
        self.remember(
            post_order(
                self.book.account,
                order_id=order_id,
                paid_fen=paid,
                points=points,
                event_id=f"paid:{order_id}",
                at=self.now,
                matures_at=self.now + timedelta(days=window),
                rules=self.book.rules,
                tz=SH,
            )
        )

    @rule()
    def mature_sweep(self) -> None:
        for order in list(self.book.orders.values()):
            self.remember(mature(self.book.account, order, at=self.now, rules=self.book.rules, tz=SH))

    @rule(points=st.integers(1, 300))
    def bonus(self, points: int) -> None:
        self.remember(
            credit(self.book.account, points, event_id=self.next_id("bonus"), at=self.now, rules=self.book.rules, tz=SH)
        )

    @rule(share=st.just(100) | st.integers(1, 100), over=st.integers(1, 50))
    def redeem_points(self, share: int, over: int) -> None:
        spendable = self.book.account.spendable(self.now)
        with pytest.raises(LoyaltyError):
            redeem(self.book.account, spendable + over, event_id="too-much", at=self.now)
        points = spendable * share // 100
        if not points:
            return
        open_lots = [lot for lot in self.book.account.lots if not lot.expired(self.now)]
        posting = self.remember(redeem(self.book.account, points, event_id=self.next_id("r"), at=self.now))
        taken = [e for e in posting.entries if e.kind == Kind.REDEEM]
        assert sum(-e.points for e in taken) == points
        # FIFO: every lot before the last one touched was emptied, in fifo order.
        assert [e.lot_id for e in taken] == [lot.lot_id for lot in open_lots[: len(taken)]]
        assert all(-e.points == lot.remaining for e, lot in zip(taken[:-1], open_lots, strict=False))
        self.redemptions.append((tuple(taken), 0))

    @rule(data=st.data())
    def refund_order(self, data: st.DataObject) -> None:
        open_orders = [o for o in self.book.orders.values() if o.refunded_fen < o.paid_fen]
        if not open_orders:
            return
        order = data.draw(st.sampled_from(open_orders))
        left = order.paid_fen - order.refunded_fen
        fen = data.draw(st.just(left) | st.integers(1, left))  # full refunds often: they make shortfalls
        before = self.book.account.debt
        posting = self.remember(
            refund(
                self.book.account,
                order,
                fen,
                event_id=self.next_id("refund"),
                at=self.now,
                rules=self.book.rules,
                tz=SH,
            )
        )
        kinds = {e.kind for e in posting.entries}
        assert not (Kind.CANCEL in kinds and Kind.CLAWBACK in kinds)
        if self.book.rules.debt_policy == DebtPolicy.WRITE_OFF:
            assert self.book.account.debt == before

    @rule(data=st.data())
    def spend_all_then_refund_after_the_window(self, data: st.DataObject) -> None:
        """The path to debt: the points are spent, then their order is refunded. Lots past their
        expiry are swept first: until then they count in the balance but cannot be spent."""
        matured = [o for o in self.book.orders.values() if o.matured and o.refunded_fen < o.paid_fen and o.points]
        if not matured:
            return
        self.remember(expire(self.book.account, at=self.now))
        if spendable := self.book.account.spendable(self.now):
            self.remember(redeem(self.book.account, spendable, event_id=self.next_id("r"), at=self.now))
        order = data.draw(st.sampled_from(matured))
        self.remember(
            refund(
                self.book.account,
                order,
                order.paid_fen - order.refunded_fen,
                event_id=self.next_id("refund"),
                at=self.now,
                rules=self.book.rules,
                tz=SH,
            )
        )
        assert self.book.account.balance == 0

    @rule()
    def sweep(self) -> None:
        self.remember(expire(self.book.account, at=self.now))

    @rule(points=st.integers(-300, 300).filter(bool))
    def manual(self, points: int) -> None:
        try:
            posting = adjust(
                self.book.account,
                points,
                reason="test",
                operator="ops",
                event_id=self.next_id("adj"),
                at=self.now,
                rules=self.book.rules,
                tz=SH,
            )
        except LoyaltyError as e:
            assert e.code == "insufficient_points" and -points > self.book.account.spendable(self.now)
            return
        self.remember(posting)

    @precondition(lambda self: bool(self.redemptions))
    @rule(data=st.data())
    def give_back(self, data: st.DataObject) -> None:
        i = data.draw(st.integers(0, len(self.redemptions) - 1))
        spent, restored = self.redemptions[i]
        left = -sum(e.points for e in spent) - restored
        if not left:
            return
        points = data.draw(st.integers(1, left))
        self.remember(
            restore(
                self.book.account,
                spent,
                event_id=self.next_id("restore"),
                at=self.now,
                points=points,
                already_restored=restored,
                lots=self.records.values(),
            )
        )
        self.redemptions[i] = (spent, restored + points)

    @rule()
    def forgive(self) -> None:
        self.remember(write_off(self.book.account, event_id=self.next_id("wo"), at=self.now, reason="test"))

    @invariant()
    def balanced_and_never_negative(self) -> None:
        self.book.check()
        assert all(lot.remaining > 0 for lot in self.book.account.lots)
        assert all(e.lot_id is not None for e in self.book.entries if e.points)
        assert all(o.pending >= 0 for o in self.book.orders.values())
        keys = [(e.event_id, e.kind, e.lot_id) for e in self.book.entries]
        assert len(set(keys)) == len(keys)  # the unique key the service can index


LedgerMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=50, deadline=None)
TestLedgerMachine = LedgerMachine.TestCase
