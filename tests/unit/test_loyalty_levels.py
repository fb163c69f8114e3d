"""Member levels: the ladder's validation, growth, immediate upgrades, reviews with a grace
period, progress; and a property: a level only ever falls at a completed review after its grace."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from services.loyalty.domain.common import LoyaltyError
from services.loyalty.domain.earning import EarnRules, points_for_order
from services.loyalty.domain.levels import (
    LevelChange,
    LevelRules,
    growth_for_bonus,
    growth_for_order,
    growth_to_remove,
    level_for,
    multipliers,
    next_review_at,
    on_growth,
    progress,
    review,
    window_start,
)

SH = ZoneInfo("Asia/Shanghai")
T0 = datetime(2026, 1, 1, tzinfo=SH)

LADDER: dict[str, Any] = {
    "levels": [
        {"code": "silver", "name": "白银会员", "threshold": 0},
        {
            "code": "gold",
            "name": "黄金会员",
            "threshold": 1000,
            "keep_threshold": 600,
            "benefits": {"pay_percent": 95, "points_multiplier_permille": 1500},
        },
        {
            "code": "platinum",
            "name": "铂金会员",
            "threshold": 3000,
            "keep_threshold": 2000,
            "benefits": {"pay_percent": 92, "points_multiplier_permille": 1800, "free_shipping": True},
        },
        {
            "code": "diamond",
            "name": "钻石会员",
            "threshold": 5000,
            "keep_threshold": 3000,
            "benefits": {
                "pay_percent": 90,
                "points_multiplier_permille": 2000,
                "free_shipping": True,
                "coupon_template_ids": ["t-vip"],
            },
        },
    ],
    "growth_bonus": {"sign_in": 1, "review": 10},
    "review": {"every_months": 12, "grace_days": 30},
}
RULES = LevelRules.model_validate(LADDER)


def ladder(**over: object) -> LevelRules:
    return LevelRules.model_validate({**LADDER, **over})


def refused(**over: object) -> str:
    with pytest.raises(ValidationError) as info:
        ladder(**over)
    return str(info.value)


def with_level(i: int, **over: object) -> list[dict[str, object]]:
    levels: list[dict[str, object]] = [dict(level) for level in LADDER["levels"]]
    levels[i] = {**levels[i], **over}
    return levels


# --- the ladder ---------------------------------------------------------------------------------


def test_the_first_level_is_for_everyone() -> None:
    assert "must have threshold 0" in refused(levels=with_level(0, threshold=10))
    assert "at least 1 item" in refused(levels=[])


def test_thresholds_rise_and_codes_are_unique() -> None:
    assert "'platinum' (1000) is not above 'gold' (1000)" in refused(
        levels=with_level(2, threshold=1000, keep_threshold=900)
    )
    assert "code 'gold' twice" in refused(levels=with_level(2, code="gold"))
    assert "code" in refused(levels=with_level(1, code="Gold!"))


def test_keep_thresholds_are_at_most_the_threshold_and_never_fall_up_the_ladder() -> None:
    assert "keep_threshold 1200 is above its threshold 1000" in refused(levels=with_level(1, keep_threshold=1200))
    assert "'platinum' keeps at 500, below 'gold' at 600" in refused(levels=with_level(2, keep_threshold=500))
    assert RULES.level("silver").keep == 0 and RULES.level("gold").keep == 600


def test_benefits_are_validated() -> None:
    assert "pay_percent is the share the member pays" in refused(levels=with_level(1, benefits={"pay_percent": 0}))
    assert "points_multiplier_permille is per mille" in refused(
        levels=with_level(1, benefits={"points_multiplier_permille": 15})
    )
    assert "lists a template twice" in refused(levels=with_level(1, benefits={"coupon_template_ids": ["a", "a"]}))
    assert "Extra inputs" in refused(levels=with_level(1, benefits={"discount": 95}))


def test_review_policy_is_validated() -> None:
    assert "grace_days must be 0..335" in refused(review={"every_months": 12, "grace_days": 400})
    assert "every_months must be 1..60" in refused(review={"every_months": 0})
    assert "max_steps_down must be at least 1" in refused(review={"max_steps_down": 0})
    assert "window_months must be 1..60" in refused(window_months=61)


def test_an_unknown_level_is_a_422() -> None:
    with pytest.raises(LoyaltyError) as info:
        on_growth(RULES, "bronze", 10)
    assert (info.value.code, info.value.http_status, info.value.field) == ("unknown_level", 422, "level")
    assert "silver, gold, platinum, diamond" in info.value.message


# --- growth -------------------------------------------------------------------------------------


def test_growth_is_floored_per_paid_amount_plus_bonuses() -> None:
    assert growth_for_order(RULES, 12_399) == 123
    assert growth_for_order(ladder(growth_rate={"growth": 3, "per_fen": 1000}), 12_399) == 37
    assert growth_for_bonus(RULES, "review") == 10 and growth_for_bonus(RULES, "first_order") == 0


def test_refunds_take_growth_back_in_proportion() -> None:
    assert growth_to_remove(123, 12_399, 0, 6_000) == 60  # ceil(59.52)
    assert growth_to_remove(123, 12_399, 6_000, 6_399) == 63  # the rest, exactly
    with pytest.raises(LoyaltyError) as info:
        growth_to_remove(123, 12_399, 6_000, 6_400)
    assert info.value.code == "refund_exceeds"


def test_the_growth_window_is_rolling_on_the_merchant_calendar() -> None:
    assert window_start(RULES, datetime(2026, 3, 31, 12, tzinfo=SH), SH) == datetime(2025, 3, 31, 12, tzinfo=SH)
    assert window_start(ladder(window_months=1), datetime(2026, 3, 31, tzinfo=SH), SH) == datetime(
        2026, 2, 28, tzinfo=SH
    )


def test_level_multipliers_feed_the_earn_rules() -> None:
    earn = EarnRules().with_level_multipliers(multipliers(RULES))
    assert points_for_order(earn, 10_000, level="diamond").points == 200
    assert points_for_order(earn, 10_000, level="silver").points == 100


# --- upgrades -----------------------------------------------------------------------------------


def test_level_for_growth_boundaries() -> None:
    assert [level_for(RULES, g).code for g in (-5, 0, 999, 1000, 2999, 3000, 5000, 10**9)] == [
        "silver",
        "silver",
        "silver",
        "gold",
        "gold",
        "platinum",
        "diamond",
        "diamond",
    ]


def test_upgrades_happen_at_once_straight_to_the_highest_level_reached() -> None:
    assert on_growth(RULES, "silver", 999) is None
    assert on_growth(RULES, "silver", 1000) == LevelChange("silver", "gold", "upgrade")
    assert on_growth(RULES, "silver", 5200) == LevelChange("silver", "diamond", "upgrade")


def test_falling_growth_never_downgrades_outside_a_review() -> None:
    assert on_growth(RULES, "diamond", 0) is None
    assert on_growth(RULES, "diamond", -100) is None


# --- reviews ------------------------------------------------------------------------------------


def test_no_review_before_the_period_ends() -> None:
    outcome = review(RULES, "gold", 0, now=T0 + timedelta(days=364), last_review=T0, tz=SH)
    assert (outcome.action, outcome.level, outcome.next_review_at) == (
        "not_due",
        "gold",
        datetime(2027, 1, 1, tzinfo=SH),
    )
    assert not outcome.completed
    assert next_review_at(RULES, T0, SH) == datetime(2027, 1, 1, tzinfo=SH)


def test_enough_growth_keeps_the_level() -> None:
    outcome = review(RULES, "gold", 600, now=datetime(2027, 1, 2, tzinfo=SH), last_review=T0, tz=SH)
    assert (outcome.action, outcome.level, outcome.review_at) == ("keep", "gold", datetime(2027, 1, 1, tzinfo=SH))
    assert outcome.completed and outcome.next_review_at == datetime(2028, 1, 1, tzinfo=SH)


def test_short_growth_warns_then_downgrades_after_the_grace() -> None:
    at_review = review(RULES, "diamond", 2500, now=datetime(2027, 1, 1, 9, tzinfo=SH), last_review=T0, tz=SH)
    assert (at_review.action, at_review.level, at_review.target) == ("warn", "diamond", "platinum")
    assert at_review.downgrade_at == datetime(2027, 1, 31, tzinfo=SH) == at_review.next_review_at
    assert not at_review.completed
    last_day = review(RULES, "diamond", 2500, now=datetime(2027, 1, 30, 23, 59, tzinfo=SH), last_review=T0, tz=SH)
    assert last_day.action == "warn"
    after = review(RULES, "diamond", 2500, now=datetime(2027, 1, 31, tzinfo=SH), last_review=T0, tz=SH)
    assert (after.action, after.level, after.change) == (
        "downgrade",
        "platinum",
        LevelChange("diamond", "platinum", "downgrade"),
    )
    assert after.completed and after.review_at == datetime(2027, 1, 1, tzinfo=SH)
    assert after.next_review_at == datetime(2028, 1, 1, tzinfo=SH)


def test_growth_earned_during_the_grace_keeps_the_level() -> None:
    outcome = review(RULES, "diamond", 3000, now=datetime(2027, 2, 15, tzinfo=SH), last_review=T0, tz=SH)
    assert (outcome.action, outcome.level) == ("keep", "diamond")


def test_a_downgrade_goes_as_far_as_the_growth_says_or_max_steps() -> None:
    late = datetime(2027, 3, 1, tzinfo=SH)
    assert review(RULES, "diamond", 700, now=late, last_review=T0, tz=SH).level == "gold"
    assert review(RULES, "diamond", 10, now=late, last_review=T0, tz=SH).level == "silver"
    one_step = ladder(review={"every_months": 12, "grace_days": 30, "max_steps_down": 1})
    assert review(one_step, "diamond", 10, now=late, last_review=T0, tz=SH).level == "platinum"


def test_a_review_never_upgrades() -> None:
    outcome = review(RULES, "gold", 9_000, now=datetime(2027, 1, 2, tzinfo=SH), last_review=T0, tz=SH)
    assert (outcome.action, outcome.level) == ("keep", "gold")
    assert review(RULES, "silver", 0, now=datetime(2027, 3, 1, tzinfo=SH), last_review=T0, tz=SH).action == "keep"


def test_a_late_sweep_decides_the_latest_boundary_counted_from_the_anchor() -> None:
    anchor = datetime(2026, 1, 31, 8, tzinfo=SH)
    monthly = ladder(review={"every_months": 1, "grace_days": 0})
    assert review(
        monthly, "gold", 600, now=datetime(2026, 2, 28, 8, tzinfo=SH), last_review=anchor, tz=SH
    ).review_at == datetime(2026, 2, 28, 8, tzinfo=SH)  # clamped to the month's end
    outcome = review(monthly, "gold", 600, now=datetime(2026, 5, 30, tzinfo=SH), last_review=anchor, tz=SH)
    assert outcome.review_at == datetime(2026, 4, 30, 8, tzinfo=SH)  # not yet May 31
    assert outcome.next_review_at == datetime(2026, 5, 31, 8, tzinfo=SH)  # the 31st again, no drift
    utc_now = datetime(2026, 3, 30, 16, tzinfo=UTC)  # 2026-03-31 00:00 in Shanghai
    assert review(monthly, "gold", 600, now=utc_now, last_review=anchor, tz=SH).review_at == datetime(
        2026, 2, 28, 8, tzinfo=SH
    )


def test_review_refuses_naive_times_and_non_integer_growth() -> None:
    with pytest.raises(ValueError, match="naive"):
        review(RULES, "gold", 0, now=(T0 + timedelta(days=365)).replace(tzinfo=None), last_review=T0, tz=SH)
    with pytest.raises(LoyaltyError) as info:
        review(RULES, "gold", 1.5, now=datetime(2027, 1, 1, tzinfo=SH), last_review=T0, tz=SH)  # type: ignore[arg-type]
    assert (info.value.code, info.value.field) == ("invalid_amount", "growth_in_window")


# --- progress -----------------------------------------------------------------------------------


def test_progress_to_the_next_level_and_to_keeping_this_one() -> None:
    p = progress(RULES, "gold", 2000)
    assert (p.level.code, p.next.code if p.next else None, p.needed, p.permille, p.keep_needed) == (
        "gold",
        "platinum",
        1000,
        500,
        0,
    )
    kept = progress(RULES, "platinum", 1500)  # kept from last year, growth now below the threshold
    assert (kept.needed, kept.permille, kept.keep_needed) == (3500, 0, 500)
    top = progress(RULES, "diamond", 6000)
    assert (top.next, top.needed, top.permille) == (None, 0, 1000)


# --- properties ---------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(
    steps=st.lists(st.tuples(st.integers(0, 120), st.integers(-500, 6000)), min_size=1, max_size=30),
    grace=st.integers(0, 60),
    every=st.sampled_from([1, 3, 6, 12]),
    max_steps=st.none() | st.integers(1, 3),
)
def test_upgrades_are_immediate_and_downgrades_only_at_a_review_after_the_grace(
    steps: list[tuple[int, int]], grace: int, every: int, max_steps: int | None
) -> None:
    rules = ladder(
        review={"every_months": every, "grace_days": min(grace, every * 28 - 1), "max_steps_down": max_steps}
    )
    now, last_review, level = T0, T0, "silver"
    for days, growth in steps:
        now += timedelta(days=days)
        change = on_growth(rules, level, growth)
        if change is not None:
            assert change.direction == "upgrade" and rules.rank(change.to_code) > rules.rank(level)
            level = change.to_code
        assert rules.rank(level) >= rules.rank(level_for(rules, growth).code)  # nothing reached is withheld
        outcome = review(rules, level, growth, now=now, last_review=last_review, tz=SH)
        if outcome.action == "downgrade":
            assert outcome.review_at is not None and outcome.downgrade_at is not None
            assert now >= outcome.review_at + timedelta(days=rules.review.grace_days) == outcome.downgrade_at
            assert now >= next_review_at(rules, last_review, SH)
            assert growth < rules.level(level).keep
            assert 0 < rules.rank(level) - rules.rank(outcome.level) <= (max_steps or 99)
        else:
            assert outcome.level == level
        if outcome.completed:
            assert outcome.review_at is not None and last_review < outcome.review_at <= now
            last_review = outcome.review_at
        level = outcome.level
