"""Coupon templates: validated as a whole, every rejection naming the field and the reason."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from services.coupons.domain.templates import (
    DISCOUNT_GROUP,
    SHIPPING_GROUP,
    CategoryScope,
    CouponTemplate,
    Reason,
    face_value_fen,
    issuable_at,
    liability_fen,
    usable_at,
    validity_window,
    yuan,
)

SH = ZoneInfo("Asia/Shanghai")


def template(**over: Any) -> CouponTemplate:
    data: dict[str, Any] = {"name": "8折券", "kind": {"type": "percent", "pay_percent": 80}, "valid_days": 30}
    data.update(over)
    return CouponTemplate.model_validate(data)


def rejection(**over: Any) -> tuple[str, str]:
    """The (field path, message) of the one error a template gets."""
    with pytest.raises(ValidationError) as info:
        template(**over)
    errors = info.value.errors()
    assert len(errors) == 1, errors
    return ".".join(str(p) for p in errors[0]["loc"]), errors[0]["msg"]


def test_an_eight_zhe_coupon_is_pay_percent_80_in_the_discount_group() -> None:
    t = template()
    assert t.kind.type == "percent" and t.kind.pay_percent == 80
    assert t.scope == "all" and t.group == DISCOUNT_GROUP and t.per_customer_limit == 1 and not t.exclusive


def test_a_discount_above_100_percent_is_refused_with_that_reason() -> None:
    loc, msg = rejection(kind={"type": "percent", "pay_percent": -20})
    assert loc == "kind.percent.pay_percent"
    assert "a discount above 100%" in msg and "1..99" in msg


@pytest.mark.parametrize(("pay", "words"), [(0, "100% discount"), (100, "no discount"), (120, "negative discount")])
def test_pay_percent_must_leave_a_real_discount(pay: int, words: str) -> None:
    loc, msg = rejection(kind={"type": "percent", "pay_percent": pay})
    assert loc == "kind.percent.pay_percent" and words in msg and "8折 = 80" in msg


def test_a_threshold_below_the_discount_is_refused_with_that_reason() -> None:
    loc, msg = rejection(kind={"type": "amount_off", "amount_off_fen": 5000, "threshold_fen": 3000})
    assert loc == "kind.amount_off.threshold_fen"
    assert "is below the discount" in msg and "threshold_fen 3000" in msg and "amount_off_fen 5000" in msg


def test_a_zero_threshold_points_to_the_no_threshold_kind() -> None:
    _, msg = rejection(kind={"type": "amount_off", "amount_off_fen": 500, "threshold_fen": 0})
    assert "no_threshold" in msg


def test_a_threshold_equal_to_the_discount_is_allowed() -> None:
    t = template(kind={"type": "amount_off", "amount_off_fen": 5000, "threshold_fen": 5000})
    assert t.kind.type == "amount_off"


def test_money_must_be_integer_fen_not_floats_or_strings() -> None:
    for bad in (12.5, 1000.0, "1000"):
        loc, _ = rejection(kind={"type": "no_threshold", "amount_off_fen": bad})
        assert loc == "kind.no_threshold.amount_off_fen"
    loc, _ = rejection(kind={"type": "no_threshold", "amount_off_fen": 0})
    assert loc == "kind.no_threshold.amount_off_fen"


def test_free_shipping_is_its_own_stack_group_and_counts_orders_from_the_second() -> None:
    t = template(kind={"type": "free_shipping", "nth_order_today": 2})
    assert t.group == SHIPPING_GROUP
    loc, msg = rejection(kind={"type": "free_shipping", "nth_order_today": 1})
    assert loc == "kind.free_shipping.nth_order_today" and "2 or more" in msg


def test_an_unknown_kind_is_refused_by_its_type_tag() -> None:
    loc, _ = rejection(kind={"type": "buy_one_get_one"})
    assert loc == "kind"


def test_a_scope_is_all_categories_or_skus_without_duplicates() -> None:
    assert isinstance(template(scope={"categories": ["milk-powder"]}).scope, CategoryScope)
    assert rejection(scope="everything")[1].startswith('scope is "all"')
    assert rejection(scope={"categories": ["a"], "skus": ["b"]})[0] == "scope"
    loc, msg = rejection(scope={"skus": ["milk-900g", "milk-900g"]})
    assert loc == "scope.skus.skus" and "'milk-900g' twice" in msg
    assert rejection(scope={"categories": []})[0] == "scope.categories.categories"


def test_validity_is_a_fixed_window_or_days_from_issue_never_both() -> None:
    start = datetime(2026, 11, 1, tzinfo=SH)
    fixed = template(valid_days=None, valid_from=start, valid_until=start + timedelta(days=11))
    assert fixed.valid_until == start + timedelta(days=11)
    assert "not both" in rejection(valid_from=start, valid_until=start + timedelta(days=1))[1]
    assert "give valid_days" in rejection(valid_days=None)[1]
    assert "valid_until is missing" in rejection(valid_days=None, valid_from=start)[1]
    assert "must be after valid_from" in rejection(valid_days=None, valid_from=start, valid_until=start)[1]
    assert rejection(valid_days=0) == ("valid_days", "Value error, valid_days must be 1..3650, got 0")
    assert rejection(valid_days=3651)[0] == "valid_days"


def test_naive_times_are_refused() -> None:
    loc, msg = rejection(valid_days=None, valid_from="2026-11-01T00:00:00", valid_until="2026-11-12T00:00:00+08:00")
    assert loc == "valid_from" and "timezone" in msg
    with pytest.raises(ValueError, match="timezone-aware"):
        validity_window(template(), datetime.fromtimestamp(0, UTC).replace(tzinfo=None))  # naive


def test_weekdays_and_hours_are_validated() -> None:
    assert template(weekdays=[7, 6]).weekdays == [6, 7]
    assert rejection(weekdays=[0])[0] == "weekdays"
    assert "twice" in rejection(weekdays=[1, 1])[1]
    assert "never be used" in rejection(weekdays=[])[1]
    assert template(hours=[[18, 22], [9, 12]]).hours == [(9, 12), (18, 22)]
    assert "0 <= start < end <= 24" in rejection(hours=[[12, 9]])[1]
    assert "0 <= start < end <= 24" in rejection(hours=[[20, 25]])[1]
    assert "overlap" in rejection(hours=[[9, 12], [11, 14]])[1]


def test_limits_and_costs_are_validated() -> None:
    assert rejection(stock=0) == ("stock", "Value error, stock must be at least 1, got 0")
    assert rejection(per_customer_limit=0)[0] == "per_customer_limit"
    assert rejection(cost_fen_per_redemption=-1)[0] == "cost_fen_per_redemption"
    assert rejection(merchant_id="m-1")[0] == "merchant_id"  # tenancy is the service layer's
    assert template(stack_group="platform").group == "platform"


def test_a_days_from_issue_window_starts_at_issue() -> None:
    issued = datetime(2026, 11, 1, 10, tzinfo=SH)
    assert validity_window(template(valid_days=7), issued) == (issued, issued + timedelta(days=7))
    start = datetime(2026, 11, 11, tzinfo=SH)
    fixed = template(valid_days=None, valid_from=start, valid_until=start + timedelta(days=1))
    assert validity_window(fixed, issued) == (start, start + timedelta(days=1))


def test_a_fixed_template_cannot_be_issued_after_its_window() -> None:
    start = datetime(2026, 11, 11, tzinfo=SH)
    fixed = template(valid_days=None, valid_from=start, valid_until=start + timedelta(days=1))
    assert issuable_at(fixed, start - timedelta(days=5))
    assert issuable_at(fixed, start + timedelta(days=1)).code == Reason.EXPIRED
    assert issuable_at(template(), start)


def test_usable_at_reads_the_window_then_the_merchants_weekdays_and_hours() -> None:
    start = datetime(2026, 11, 2, tzinfo=SH)  # a Monday
    t = template(
        valid_days=None, valid_from=start, valid_until=start + timedelta(days=14), weekdays=[6, 7], hours=[[9, 12]]
    )
    saturday_10 = datetime(2026, 11, 7, 10, tzinfo=SH)
    assert usable_at(t, saturday_10, SH)
    # the same instant in UTC is still Saturday 10:00 on the merchant's clock
    assert usable_at(t, saturday_10.astimezone(UTC), "Asia/Shanghai")
    assert usable_at(t, start - timedelta(seconds=1), SH).code == Reason.NOT_YET_VALID
    assert usable_at(t, start + timedelta(days=14), SH).code == Reason.EXPIRED
    assert usable_at(t, datetime(2026, 11, 6, 10, tzinfo=SH), SH).code == Reason.OUTSIDE_WEEKDAYS
    late = usable_at(t, datetime(2026, 11, 7, 12, tzinfo=SH), SH)
    assert late.code == Reason.OUTSIDE_HOURS and "09:00-12:00" in late.message and not late


def test_a_days_from_issue_template_needs_the_coupons_own_window() -> None:
    now = datetime(2026, 11, 1, tzinfo=SH)
    with pytest.raises(ValueError, match="expires_at"):
        usable_at(template(), now, SH)
    assert usable_at(template(), now, SH, starts_at=now, expires_at=now + timedelta(days=1))
    with pytest.raises(ValueError, match="unknown time zone"):
        usable_at(template(), now, "Mars/Olympus", starts_at=now, expires_at=now + timedelta(days=1))


def test_face_value_and_liability() -> None:
    assert face_value_fen(template()) is None
    assert face_value_fen(template(kind={"type": "percent", "pay_percent": 80, "max_discount_fen": 3000})) == 3000
    assert face_value_fen(template(kind={"type": "amount_off", "amount_off_fen": 2000, "threshold_fen": 20000})) == 2000
    assert face_value_fen(template(kind={"type": "free_shipping", "max_shipping_fen": 1000})) == 1000
    assert liability_fen(template(cost_fen_per_redemption=700)) == 700
    assert liability_fen(template(kind={"type": "no_threshold", "amount_off_fen": 500})) == 500


def test_yuan_formats_fen_for_messages() -> None:
    assert [yuan(v) for v in (0, 5, 1234, 66600, -150)] == ["¥0.00", "¥0.05", "¥12.34", "¥666.00", "-¥1.50"]


def test_a_template_round_trips_through_json() -> None:
    t = template(scope={"skus": ["a", "b"]}, hours=[[9, 12]], weekdays=[1])
    assert CouponTemplate.model_validate_json(t.model_dump_json()) == t
