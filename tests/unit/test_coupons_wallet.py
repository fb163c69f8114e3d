"""The wallet's state machine: lock, redeem, release, refund, expire, revoke, and their errors."""

from __future__ import annotations

import contextlib
from dataclasses import replace
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.coupons.domain.cart import Applied
from services.coupons.domain.templates import Reason
from services.coupons.domain.wallet import (
    Coupon,
    CouponError,
    State,
    Transition,
    expire,
    lock,
    redeem,
    refund,
    release,
    revoke,
)

SH = ZoneInfo("Asia/Shanghai")
T0 = datetime(2026, 11, 1, 10, tzinfo=SH)
END = T0 + timedelta(days=7)


def coupon(**over: object) -> Coupon:
    return replace(Coupon("c-1", "u-42", "tpl-1", starts_at=T0, expires_at=END), **over)  # type: ignore[arg-type]


def refused(call: object) -> CouponError:
    assert callable(call)
    with pytest.raises(CouponError) as info:
        call()
    return info.value


def test_lock_then_redeem_uses_the_coupon_and_records_events() -> None:
    locked = lock(coupon(), "o-1", T0 + timedelta(hours=1), "u-42")
    assert locked.changed and locked.event == "coupon.locked"
    assert (locked.coupon.state, locked.coupon.order_id, locked.coupon.version) == (State.LOCKED, "o-1", 1)
    used = redeem(locked.coupon, "o-1", now=T0 + timedelta(hours=2), owner="u-42")
    assert used.changed and used.event == "coupon.redeemed"
    assert (used.coupon.state, used.coupon.order_id, used.coupon.version) == (State.USED, "o-1", 2)
    assert used.coupon.used_at == T0 + timedelta(hours=2)


def test_redeeming_the_same_order_twice_is_a_no_op() -> None:
    used = redeem(coupon(), "o-1", now=T0, owner="u-42").coupon
    again = redeem(used, "o-1", now=T0 + timedelta(minutes=1), owner="u-42")
    assert not again.changed and again.coupon == used and again.event is None
    assert not lock(used, "o-1", T0, "u-42").changed  # order.created replayed after order.paid


def test_a_used_coupon_cannot_be_used_on_another_order() -> None:
    used = redeem(coupon(), "o-1", now=T0, owner="u-42").coupon
    err = refused(lambda: redeem(used, "o-2", now=T0, owner="u-42"))
    assert (err.code, err.http_status, err.coupon_id) == ("already_used", 409, "c-1")
    assert "o-1" in err.message
    assert refused(lambda: lock(used, "o-2", T0, "u-42")).code == "already_used"


def test_a_locked_coupon_belongs_to_its_order() -> None:
    locked = lock(coupon(), "o-1", T0, "u-42").coupon
    assert not lock(locked, "o-1", T0, "u-42").changed
    for attempt in (lambda: lock(locked, "o-2", T0, "u-42"), lambda: redeem(locked, "o-2", now=T0, owner="u-42")):
        err = refused(attempt)
        assert (err.code, err.http_status) == ("locked_to_other_order", 409)


def test_someone_elses_coupon_is_not_yours() -> None:
    err = refused(lambda: lock(coupon(), "o-1", T0, "u-7"))
    assert (err.code, err.http_status) == ("not_yours", 403)
    assert refused(lambda: redeem(coupon(), "o-1", now=T0, owner="u-7")).code == "not_yours"


def test_time_is_checked_when_taking_a_coupon() -> None:
    err = refused(lambda: lock(coupon(), "o-1", END, "u-42"))
    assert (err.code, err.http_status) == ("expired", 409)
    err = refused(lambda: lock(coupon(), "o-1", T0 - timedelta(seconds=1), "u-42"))
    assert (err.code, err.http_status) == ("not_yet_valid", 422)
    assert refused(lambda: redeem(coupon(), "o-1", now=END, owner="u-42")).code == "expired"


def test_a_lock_holds_the_coupon_past_its_expiry_until_the_order_is_paid() -> None:
    locked = lock(coupon(), "o-1", END - timedelta(minutes=5), "u-42").coupon
    assert not expire(locked, END + timedelta(hours=1)).changed
    assert redeem(locked, "o-1", now=END + timedelta(minutes=1), owner="u-42").coupon.state == State.USED


def test_a_coupon_that_does_not_apply_is_refused_with_422() -> None:
    check = Applied(0, "goods", Reason.OUT_OF_SCOPE, "nothing in the cart is covered by this coupon")
    err = refused(lambda: lock(coupon(), "o-1", T0, "u-42", check=check))
    assert (err.code, err.http_status, err.message) == ("out_of_scope", 422, check.message)
    below = CouponError.refused(Applied(0, "goods", Reason.BELOW_THRESHOLD, "¥50.00 more to go"))
    assert (below.code, below.http_status) == ("below_threshold", 422)
    assert lock(coupon(), "o-1", T0, "u-42", check=Applied(500, "goods")).changed
    with pytest.raises(ValueError, match="applies"):
        CouponError.refused(Applied(500, "goods"))


def test_a_cancelled_order_releases_its_coupon() -> None:
    locked = lock(coupon(), "o-1", T0, "u-42").coupon
    back = release(locked, "o-1", now=T0 + timedelta(hours=1))
    assert back.changed and back.event == "coupon.released"
    assert (back.coupon.state, back.coupon.order_id, back.coupon.locked_at) == (State.AVAILABLE, None, None)
    assert release(locked, "o-1", now=END).coupon.state == State.EXPIRED  # its window ended meanwhile


def test_releasing_for_another_order_or_twice_is_a_no_op() -> None:
    locked = lock(coupon(), "o-1", T0, "u-42").coupon
    assert not release(locked, "o-2", now=T0).changed
    assert not release(coupon(), "o-1", now=T0).changed
    used = redeem(locked, "o-1", now=T0, owner="u-42").coupon
    assert not release(used, "o-1", now=T0).changed  # a paid order gives coupons back by refund


def test_a_refund_restores_or_keeps_the_coupon_by_policy() -> None:
    used = redeem(coupon(), "o-1", now=T0, owner="u-42").coupon
    restored = refund(used, "o-1", "restore", now=T0 + timedelta(days=1))
    assert restored.changed and restored.event == "coupon.restored" and restored.coupon.state == State.AVAILABLE
    assert not refund(used, "o-1", "keep_used", now=T0).changed
    assert not refund(used, "o-9", "restore", now=T0).changed
    assert not refund(restored.coupon, "o-1", "restore", now=T0).changed
    assert refund(used, "o-1", "restore", now=END).coupon.state == State.EXPIRED
    with pytest.raises(ValueError, match="policy"):
        refund(used, "o-1", "refund_cash", now=T0)  # type: ignore[arg-type]


def test_expiry_is_idempotent_and_only_touches_available_coupons() -> None:
    assert not expire(coupon(), END - timedelta(seconds=1)).changed
    gone = expire(coupon(), END)
    assert gone.changed and gone.event == "coupon.expired" and gone.coupon.state == State.EXPIRED
    assert not expire(gone.coupon, END + timedelta(days=1)).changed
    err = refused(lambda: lock(gone.coupon, "o-1", T0, "u-42"))
    assert (err.code, err.http_status) == ("expired", 409)


def test_a_revoked_coupon_cannot_be_used() -> None:
    gone = revoke(coupon())
    assert gone.changed and gone.coupon.state == State.REVOKED and not revoke(gone.coupon).changed
    assert refused(lambda: lock(gone.coupon, "o-1", T0, "u-42")).code == "revoked"
    locked = lock(coupon(), "o-1", T0, "u-42").coupon
    assert refused(lambda: revoke(locked)).code == "locked_to_other_order"


def test_a_coupon_keeps_its_invariants() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        Coupon("c", "u", "t", starts_at=T0.replace(tzinfo=None), expires_at=END)
    with pytest.raises(ValueError, match="after starts_at"):
        coupon(expires_at=T0)
    with pytest.raises(ValueError, match="needs order_id"):
        coupon(state=State.USED)
    with pytest.raises(ValueError, match="timezone-aware"):
        lock(coupon(), "o-1", (T0 + timedelta(hours=1)).replace(tzinfo=None), "u-42")


def test_of_two_concurrent_redemptions_only_one_wins_the_version() -> None:
    """The service layer's compare-and-set, modelled: both start from the same row."""
    row = coupon()
    first = redeem(row, "o-1", now=T0, owner="u-42")
    second = redeem(row, "o-2", now=T0, owner="u-42")
    stored = row
    for attempt in (first, second):
        if attempt.changed and stored.version == attempt.coupon.version - 1:
            stored = attempt.coupon
    assert stored.order_id == "o-1"
    with pytest.raises(CouponError, match="already used"):
        redeem(stored, "o-2", now=T0, owner="u-42")


operations = st.lists(
    st.tuples(
        st.sampled_from(["lock", "redeem", "release", "restore", "keep", "expire", "revoke"]),
        st.sampled_from(["o-1", "o-2", "o-3"]),
        st.sampled_from(["u-42", "u-42", "u-42", "u-7"]),
        st.integers(-1, 9),
    ),
    max_size=25,
)


def step(c: Coupon, op: str, order: str, owner: str, now: datetime) -> Transition:
    if op == "lock":
        return lock(c, order, now, owner)
    if op == "redeem":
        return redeem(c, order, now=now, owner=owner)
    if op == "release":
        return release(c, order, now=now)
    if op in ("restore", "keep"):
        return refund(c, order, "restore" if op == "restore" else "keep_used", now=now)
    if op == "expire":
        return expire(c, now)
    return revoke(c)


@settings(max_examples=300, deadline=None)
@given(operations)
def test_no_sequence_of_events_uses_one_coupon_on_two_orders(ops: list[tuple[str, str, str, int]]) -> None:
    c = coupon()
    used_on: str | None = None
    for op, order, owner, day in ops:
        now = T0 + timedelta(days=day)
        before = c
        try:
            t = step(c, op, order, owner, now)
        except CouponError as e:
            assert e.http_status in (403, 409, 422)
            continue
        c = t.coupon
        assert t.changed == (c != before) and c.version == before.version + t.changed
        assert (t.event is not None) == t.changed
        if c.state == State.USED:
            if before.state == State.USED:
                assert c.order_id == before.order_id  # never moved to a second order
            else:
                assert used_on is None
                used_on = c.order_id
        elif before.state == State.USED:
            used_on = None  # given back by a refund
        if c.state in (State.EXPIRED, State.REVOKED):  # final: nothing but an error or a no-op
            for later in ("lock", "redeem", "release", "restore", "expire", "revoke"):
                with contextlib.suppress(CouponError):
                    assert step(c, later, order, owner, now + timedelta(days=30)).coupon == c
