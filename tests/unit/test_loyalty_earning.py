"""Earning points: the rules' validation, order points and their rounding, bonuses, the daily cap,
and the shared helpers (errors, integer amounts, the merchant's clock, proportional refunds)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from fractions import Fraction
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from services.loyalty.domain.common import (
    BonusEvent,
    LoyaltyError,
    add_months,
    amount,
    day_bounds,
    local_day,
    removed_on_refund,
    require_aware,
    zone,
)
from services.loyalty.domain.earning import (
    Earned,
    EarnRules,
    bonus_points,
    matures_at,
    once_key,
    points_for_order,
)

SH = ZoneInfo("Asia/Shanghai")
T0 = datetime(2026, 11, 1, 10, tzinfo=SH)


def rules(**over: object) -> EarnRules:
    return EarnRules.model_validate(over)


def refused(**over: object) -> str:
    with pytest.raises(ValidationError) as info:
        rules(**over)
    return str(info.value)


# --- the rules ----------------------------------------------------------------------------------


def test_default_rules_earn_one_point_per_yuan_pending_seven_days() -> None:
    r = EarnRules()
    assert (r.rate.points, r.rate.per_fen, r.return_window_days, r.daily_cap) == (1, 100, 7, None)
    assert r.ratio() == (1, 100)


def test_rules_refuse_unknown_fields_and_floats_for_amounts() -> None:
    assert "points_per_yuna\n  Extra inputs are not permitted" in refused(points_per_yuna=1)
    assert "daily_cap" in refused(daily_cap=10.5)
    assert "points" in refused(rate={"points": 1.5, "per_fen": 100})
    assert "per_fen must be at least 1" in refused(rate={"points": 1, "per_fen": 0})


def test_multipliers_are_per_mille_within_a_tenth_and_ten_times() -> None:
    assert "level_multipliers['gold'] is per mille" in refused(level_multipliers={"gold": 15})
    assert "10000" in refused(level_multipliers={"gold": 20_000})
    assert "level_multipliers" in refused(level_multipliers={"gold": 1.5})
    assert rules(level_multipliers={"gold": 1500}).multiplier("gold") == 1500


def test_a_bonus_event_is_listed_once_and_gets_its_default_trigger() -> None:
    assert "'sign_in' twice" in refused(bonuses=[{"event": "sign_in", "points": 5}, {"event": "sign_in", "points": 6}])
    r = rules(
        bonuses=[
            {"event": "first_order", "points": 100},
            {"event": "sign_in", "points": 5},
            {"event": "review", "points": 20, "trigger": "review.approved"},
        ]
    )
    assert [b.trigger for b in r.bonuses] == ["order.paid", "customer.signed_in", "review.approved"]
    assert [b.event for b in r.triggered_by("order.paid")] == [BonusEvent.FIRST_ORDER]
    assert "trigger" in refused(bonuses=[{"event": "review", "points": 5, "trigger": "not an event"}])
    assert "points" in refused(bonuses=[{"event": "review", "points": 0}])


def test_the_return_window_is_zero_to_ninety_days() -> None:
    assert "return_window_days must be 0..90, got 91" in refused(return_window_days=91)
    assert "return_window_days must be 0..90, got -1" in refused(return_window_days=-1)
    assert matures_at(rules(return_window_days=0), T0) == T0
    assert matures_at(EarnRules(), T0) == T0 + timedelta(days=7)
    with pytest.raises(ValueError, match="naive"):
        matures_at(EarnRules(), T0.replace(tzinfo=None))


# --- order points -------------------------------------------------------------------------------


def test_order_points_floor_once_at_the_end() -> None:
    r = rules(level_multipliers={"gold": 1500})
    assert points_for_order(r, 999).points == 9  # ¥9.99 at 1 point per ¥1
    assert points_for_order(r, 999, level="gold").points == 14  # ⌊14.985⌋, not ⌊9⌋ × 1.5 = 13
    assert points_for_order(r, 0).points == 0
    assert points_for_order(rules(rate={"points": 1, "per_fen": 1000}), 99_999).points == 99  # 1 per ¥10


def test_a_level_without_a_multiplier_earns_at_one_times() -> None:
    r = rules(level_multipliers={"gold": 2000})
    assert points_for_order(r, 10_000, level="silver").points == 100
    assert points_for_order(r, 10_000, level=None).points == 100
    assert points_for_order(r, 10_000, level="gold").points == 200


def test_ratio_is_the_reduced_fraction_for_set_based_sql() -> None:
    r = rules(rate={"points": 3, "per_fen": 200}, level_multipliers={"gold": 1500})
    assert r.ratio("gold") == (9, 400)
    assert all(points_for_order(r, fen, level="gold").points == fen * 9 // 400 for fen in (0, 1, 399, 400, 12_345))


def test_the_daily_cap_says_how_much_it_took_off() -> None:
    r = rules(daily_cap=500)
    assert points_for_order(r, 30_000, earned_today=0) == Earned(300, 0)
    assert points_for_order(r, 30_000, earned_today=300) == Earned(200, 100)
    assert points_for_order(r, 30_000, earned_today=700) == Earned(0, 300)
    assert Earned(200, 100).uncapped == 300


@pytest.mark.parametrize(
    ("value", "code"),
    [(-1, "negative_amount"), (12.5, "invalid_amount"), (True, "invalid_amount"), ("100", "invalid_amount")],
)
def test_order_amounts_must_be_whole_non_negative_fen(value: object, code: str) -> None:
    with pytest.raises(LoyaltyError) as info:
        points_for_order(EarnRules(), value)  # type: ignore[arg-type]
    assert (info.value.code, info.value.http_status, info.value.field) == (code, 422, "amount_fen")


@given(
    fen=st.integers(0, 10**9),
    points=st.integers(1, 50),
    per_fen=st.integers(1, 10_000),
    permille=st.integers(100, 10_000),
    today=st.integers(0, 10**6),
    cap=st.none() | st.integers(1, 10**6),
)
def test_order_points_are_the_exact_floor_and_never_exceed_the_cap(
    fen: int, points: int, per_fen: int, permille: int, today: int, cap: int | None
) -> None:
    r = rules(rate={"points": points, "per_fen": per_fen}, level_multipliers={"x": permille}, daily_cap=cap)
    earned = points_for_order(r, fen, level="x", earned_today=today)
    exact = Fraction(fen * points * permille, per_fen * 1000)
    assert earned.uncapped == int(exact) and earned.uncapped <= exact < earned.uncapped + 1
    assert earned.points >= 0 and earned.capped_by >= 0
    if cap is not None:
        assert earned.points <= max(0, cap - today)
    assert points_for_order(r, fen + 1, level="x").uncapped >= earned.uncapped


# --- bonuses ------------------------------------------------------------------------------------


BONUSES = rules(
    bonuses=[
        {"event": e, "points": p}
        for e, p in (("first_order", 100), ("birthday_month", 200), ("sign_in", 5), ("review", 20))
    ],
    daily_cap=210,
)


def test_sign_in_is_once_per_merchant_local_day() -> None:
    late_utc = datetime(2026, 10, 31, 17, tzinfo=UTC)  # 2026-11-01 01:00 in Shanghai
    award = bonus_points(BONUSES, "sign_in", at=late_utc, tz="Asia/Shanghai")
    assert award is not None and (award.points, award.once_key) == (5, "sign_in:2026-11-01")
    assert award.event_id == "bonus:sign_in:2026-11-01"
    assert bonus_points(BONUSES, "sign_in", at=late_utc, tz="UTC").once_key == "sign_in:2026-10-31"  # type: ignore[union-attr]


def test_birthday_bonus_only_in_the_birthday_month_on_the_merchant_clock() -> None:
    nov_in_shanghai = datetime(2026, 10, 31, 16, 30, tzinfo=UTC)
    award = bonus_points(BONUSES, "birthday_month", at=nov_in_shanghai, tz=SH, birthday=date(1990, 11, 20))
    assert award is not None and award.once_key == "birthday_month:2026" and award.points == 200
    assert bonus_points(BONUSES, "birthday_month", at=nov_in_shanghai, tz=SH, birthday=date(1990, 10, 5)) is None
    assert bonus_points(BONUSES, "birthday_month", at=nov_in_shanghai, tz=SH, birthday=None) is None


def test_first_order_and_review_keys() -> None:
    assert once_key("first_order", at=T0, tz=SH) == "first_order"
    assert once_key("review", at=T0, tz=SH, ref="o-9") == "review:o-9"
    with pytest.raises(ValueError, match="reviewed order"):
        once_key("review", at=T0, tz=SH)


def test_bonuses_count_toward_the_daily_cap_and_ignore_level_multipliers() -> None:
    award = bonus_points(BONUSES, "first_order", at=T0, tz=SH, earned_today=150)
    assert award is not None and (award.points, award.capped_by) == (60, 40)
    r = rules(bonuses=[{"event": "sign_in", "points": 5}], level_multipliers={"gold": 3000})
    assert bonus_points(r, "sign_in", at=T0, tz=SH).points == 5  # type: ignore[union-attr]


def test_a_bonus_the_merchant_does_not_give_is_none() -> None:
    assert bonus_points(EarnRules(), "sign_in", at=T0, tz=SH) is None
    with pytest.raises(ValueError):
        bonus_points(EarnRules(), "checked_in", at=T0, tz=SH)


def test_level_multipliers_can_come_from_the_level_ladder() -> None:
    r = EarnRules().with_level_multipliers({"gold": 1500})
    assert r.multiplier("gold") == 1500
    with pytest.raises(ValidationError):
        EarnRules().with_level_multipliers({"gold": 50})


# --- shared helpers -----------------------------------------------------------------------------


def test_errors_carry_code_status_and_field() -> None:
    with pytest.raises(LoyaltyError) as info:
        amount("points", -5, unit="points")
    err = info.value
    assert (err.code, err.http_status, err.field) == ("negative_amount", 422, "points")
    assert err.as_dict() == {
        "code": "negative_amount",
        "message": "points must not be negative, got -5 points",
        "field": "points",
    }
    assert "negative_amount" in repr(err)
    assert amount("points", 0, unit="points", allow_zero=True) == 0
    with pytest.raises(LoyaltyError, match="at least 1 points"):
        amount("points", 0, unit="points")


def test_the_clock_is_the_merchants() -> None:
    moment = datetime(2026, 10, 31, 17, tzinfo=UTC)
    assert local_day(moment, "Asia/Shanghai") == date(2026, 11, 1)
    start, end = day_bounds(date(2026, 11, 1), "Asia/Shanghai")
    assert start == datetime(2026, 10, 31, 16, tzinfo=UTC) and end - start == timedelta(days=1)
    assert add_months(datetime(2026, 1, 31, 9, tzinfo=SH), 1, SH) == datetime(2026, 2, 28, 9, tzinfo=SH)
    assert add_months(datetime(2028, 1, 31, 9, tzinfo=SH), 1, SH) == datetime(2028, 2, 29, 9, tzinfo=SH)
    assert add_months(datetime(2026, 3, 15, tzinfo=SH), -14, SH) == datetime(2025, 1, 15, tzinfo=SH)
    with pytest.raises(ValueError, match="unknown time zone"):
        zone("Mars/Olympus")
    with pytest.raises(ValueError, match="naive"):
        require_aware("at", T0.replace(tzinfo=None))
    with pytest.raises(TypeError):
        require_aware("at", "2026-01-01")  # type: ignore[arg-type]


@given(total=st.integers(0, 10**6), paid=st.integers(1, 10**7), data=st.data())
def test_proportional_removal_is_cumulative_and_exact_at_full_refund(
    total: int, paid: int, data: st.DataObject
) -> None:
    cuts = sorted(data.draw(st.lists(st.integers(0, paid), max_size=6)))
    removed = [removed_on_refund(total, paid, r) for r in [0, *cuts, paid]]
    assert removed[0] == 0 and removed[-1] == total
    assert removed == sorted(removed)  # partial refunds never give points back
    for r, gone in zip([0, *cuts, paid], removed, strict=True):
        assert total - gone == total * (paid - r) // paid  # the customer keeps the floor
