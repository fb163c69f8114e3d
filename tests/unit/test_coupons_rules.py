"""Campaign rules: triggers, schedules, audiences, caps, holdout, idempotency keys and presets."""

from __future__ import annotations

import calendar
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from services.coupons.domain.rules import (
    PRESETS,
    AudienceFilter,
    AudienceRef,
    CampaignRule,
    Goal,
    Preset,
    Schedule,
    fires_between,
    goal_crossed,
    goal_met,
    goal_orders_in_month,
    goal_spend_in_window,
    goal_trigger_key,
    goal_window,
    in_holdout,
    issuance_key,
    next_fire,
    schedule_trigger_key,
)
from services.coupons.domain.templates import CategoryScope, FreeShipping, PercentOff
from shared import clock
from tests.factories import local_day, month_start
from tests.infra import ROOT

SH = ZoneInfo("Asia/Shanghai")
ISSUE = {"issue": [{"template_id": "t-1", "count": 1}]}


def rule(**over: Any) -> CampaignRule:
    data: dict[str, Any] = {"name": "r", "trigger": {"type": "first_paid_order"}, "action": ISSUE}
    data.update(over)
    return CampaignRule.model_validate(data)


def rejection(**over: Any) -> tuple[str, str]:
    with pytest.raises(ValidationError) as info:
        rule(**over)
    errors = info.value.errors()
    assert len(errors) == 1, errors
    return ".".join(str(p) for p in errors[0]["loc"]), errors[0]["msg"]


def schedule(cron: str, tz: str = "Asia/Shanghai") -> Schedule:
    return Schedule(cron=cron, timezone=tz)


# --- triggers -----------------------------------------------------------------------------------


def test_a_rule_has_sensible_defaults() -> None:
    r = rule()
    assert r.audience is None and r.holdout_percent == 0
    assert r.caps.issues_per_customer == 1 and r.caps.budget_per_day_fen is None


def test_every_trigger_kind_validates() -> None:
    for trigger in (
        {"type": "nth_paid_order", "n": 3},
        {"type": "order_in_category", "category": "milk-powder"},
        {"type": "segment_changed", "into": {"tier": "A"}},
        {"type": "segment_changed", "into": {"rfm_class": "important_winback"}},
        {"type": "segment_changed", "into": {"tag": "replenish_due:milk-powder"}},
        {"type": "referral_conversion"},
        {"type": "goal", "metric": "paid_orders", "within_days": 30, "threshold": 5, "comparison": "gt"},
        {"type": "schedule", "cron": "0 9 1 * *", "timezone": "Asia/Shanghai"},
    ):
        assert rule(trigger=trigger).trigger.type == trigger["type"]


def test_bad_triggers_say_why() -> None:
    assert "first_paid_order" in rejection(trigger={"type": "nth_paid_order", "n": 1})[1]
    loc, msg = rejection(trigger={"type": "segment_changed", "into": {"tier": "A", "tag": "dormant"}})
    assert loc == "trigger.segment_changed.into" and "exactly one" in msg
    assert (
        rejection(trigger={"type": "segment_changed", "into": {"tier": "D"}})[0] == "trigger.segment_changed.into.tier"
    )
    assert rejection(trigger={"type": "birthday"})[0] == "trigger"


def test_a_goal_has_one_window_and_a_meaningful_threshold() -> None:
    start = datetime(2026, 11, 1, tzinfo=SH)
    base = {"type": "goal", "metric": "paid_fen", "threshold": 66600, "comparison": "gt"}
    assert rule(trigger={**base, "window_start": start, "window_end": start + timedelta(days=30)})
    assert (
        "not both"
        in rejection(
            trigger={**base, "within_days": 30, "window_start": start, "window_end": start + timedelta(days=1)}
        )[1]
    )
    assert "not both" in rejection(trigger=base)[1]
    assert "after window_start" in rejection(trigger={**base, "window_start": start, "window_end": start})[1]
    assert (
        "timezone"
        in rejection(
            trigger={**base, "window_start": "2026-11-01T00:00:00", "window_end": "2026-12-01T00:00:00+08:00"}
        )[1]
    )
    assert "met by everyone" in rejection(trigger={**base, "threshold": 0, "comparison": "gte", "within_days": 30})[1]
    assert rejection(trigger={**base, "metric": "visits", "within_days": 3})[0] == "trigger.goal.metric"


def test_goals_compare_cross_and_key_their_window() -> None:
    more_than_5 = Goal(metric="paid_orders", within_days=30, threshold=5, comparison="gt")
    assert not goal_met(more_than_5, 5) and goal_met(more_than_5, 6)
    assert goal_crossed(more_than_5, 5, 6) and not goal_crossed(more_than_5, 6, 7)
    at_least_2 = Goal(metric="referee_orders", within_days=30, threshold=2)
    assert goal_met(at_least_2, 2) and goal_crossed(at_least_2, 1, 2)
    at = datetime(2026, 11, 30, 12, tzinfo=SH)
    start, end = goal_window(at_least_2, at)
    assert start == at - timedelta(days=30) and start <= at < end
    assert goal_trigger_key(at_least_2, at, "referee-7") == "goal:referee_orders:referee-7"
    with pytest.raises(ValueError, match="subject"):
        goal_trigger_key(at_least_2, at)
    month = goal_orders_in_month(year=2026, month=11).rule.trigger
    assert isinstance(month, Goal)
    assert goal_trigger_key(month, at) == goal_trigger_key(month, at + timedelta(hours=1))
    assert goal_trigger_key(month, at) == "goal:2026-10-31T16:00:00+00:00/2026-11-30T16:00:00+00:00"


# --- schedules ----------------------------------------------------------------------------------


def test_a_schedule_that_never_fires_is_refused_with_that_reason() -> None:
    loc, msg = rejection(trigger={"type": "schedule", "cron": "0 0 30 2 *", "timezone": "Asia/Shanghai"})
    assert loc == "trigger.schedule"
    assert "a schedule that never fires" in msg and "5 years" in msg
    with pytest.raises(ValidationError, match="never fires"):
        schedule("0 0 31 4,6,9,11 *")


def test_a_leap_day_schedule_fires_within_five_years(frozen_clock: clock.ManualClock) -> None:
    now = frozen_clock.now()
    s = schedule("0 0 29 2 *")  # validated against now: accepted whatever today is
    year = now.astimezone(SH).year
    while not (calendar.isleap(year) and datetime(year, 2, 29, tzinfo=SH) > now):
        year += 1
    fire = next_fire(s, now)
    assert fire == datetime(year, 2, 29, tzinfo=SH)  # the next leap day after today, at midnight in Shanghai
    assert (fire.tzinfo, fire.month, fire.day, fire.hour) == (UTC, 2, 28, 16)  # its instant in UTC
    assert fire - now < timedelta(days=5 * 365)


def test_the_never_fires_check_is_against_the_validation_moment() -> None:
    # Feb 29 at 2100 is not a leap day: from 2097 the next one is 2104, seven years away
    context = {"now": datetime(2097, 3, 1, tzinfo=UTC)}
    with pytest.raises(ValidationError, match="never fires"):
        Schedule.model_validate({"cron": "0 0 29 2 *"}, context=context)


def test_bad_crons_and_time_zones_are_refused() -> None:
    for cron, words in (
        ("61 * * * *", "not a valid cron"),
        ("* * * *", "has 4 fields"),
        ("0 9 1 * * 0", "has 6 fields"),
        ("@monthly", "has 1 fields"),
    ):
        loc, msg = rejection(trigger={"type": "schedule", "cron": cron})
        assert loc == "trigger.schedule.cron" and words in msg
    loc, msg = rejection(trigger={"type": "schedule", "cron": "0 9 1 * *", "timezone": "Asia/Beijing"})
    assert loc == "trigger.schedule.timezone" and "unknown time zone 'Asia/Beijing'" in msg


def test_the_monthly_schedule_fires_at_nine_on_the_merchants_clock(frozen_clock: clock.ManualClock) -> None:
    s = schedule("0 9 1 * *")

    def nine_on_the_1st(months: int) -> datetime:
        """09:00 on the 1st of the month ``months`` after this one, in Shanghai (01:00 UTC)."""
        return month_start(months, SH) + timedelta(hours=9)

    assert next_fire(s, month_start(0, SH) + timedelta(days=14)) == nine_on_the_1st(1)  # from the 15th
    assert next_fire(s, nine_on_the_1st(1)) == nine_on_the_1st(2)  # strictly after
    fires = fires_between(s, nine_on_the_1st(-2), nine_on_the_1st(1))
    assert fires == [nine_on_the_1st(m) for m in (-1, 0, 1)]  # (start, end]
    assert all(f.tzinfo == UTC and (f.day, f.hour, f.minute) == (1, 1, 0) for f in fires)


def test_fires_between_is_bounded_and_resumable(frozen_clock: clock.ManualClock) -> None:
    every_minute = schedule("* * * * *")
    start = local_day(0, tz=UTC)
    first = fires_between(every_minute, start, start + timedelta(days=1), limit=100)
    assert len(first) == 100
    rest = fires_between(every_minute, first[-1], start + timedelta(days=1), limit=2000)
    assert len(first) + len(rest) == 24 * 60 and rest[0] == first[-1] + timedelta(minutes=1)


def test_a_wall_time_repeated_when_clocks_turn_back_fires_once(frozen_clock: clock.ManualClock) -> None:
    new_york = ZoneInfo("America/New_York")
    s = schedule("30 1 * * *", "America/New_York")
    # The next day New York turns its clocks back an hour (01:00-02:00 happens twice), after today.
    day = frozen_clock.now().astimezone(new_york).date()
    while True:
        day += timedelta(days=1)
        midnight = datetime(day.year, day.month, day.day, tzinfo=new_york)
        if (midnight + timedelta(days=1)).utcoffset() < midnight.utcoffset():
            break
    start = datetime(day.year, day.month, day.day, tzinfo=UTC) - timedelta(days=1)
    fires = fires_between(s, start, start + timedelta(days=3))
    assert fires == [
        start + timedelta(hours=5, minutes=30),  # 01:30 EDT (UTC-4)
        start + timedelta(days=1, hours=5, minutes=30),  # the first 01:30 of the day, still EDT
        start + timedelta(days=2, hours=6, minutes=30),  # 01:30 EST (UTC-5): the repeated one did not fire
    ]
    assert next_fire(s, fires[1]) == fires[2]


def test_schedule_trigger_keys_are_the_utc_instant() -> None:
    assert schedule_trigger_key(datetime(2026, 12, 1, 9, tzinfo=SH)) == "schedule:2026-12-01T01:00:00+00:00"
    with pytest.raises(ValueError, match="timezone-aware"):
        next_fire(schedule("0 9 1 * *"), local_day(0).replace(tzinfo=None))


# --- audience, action, caps, holdout ------------------------------------------------------------


def test_an_audience_is_a_saved_audience_a_filter_or_everyone() -> None:
    assert isinstance(rule(audience={"audience_id": "aud-1"}).audience, AudienceRef)
    assert isinstance(rule(audience={"filter": {"tier": ["A"]}}).audience, AudienceFilter)
    assert rule(audience=None).audience is None
    loc, msg = rejection(audience={"tier": ["A"]})
    assert loc == "audience" and "audience_id" in msg
    assert rejection(audience={"filter": {}})[0] == "audience.filter.filter"


def test_actions_and_caps_are_validated() -> None:
    assert rejection(action={"issue": []})[0] == "action.issue"
    assert rejection(action={"issue": [{"template_id": "t", "count": 0}]})[0] == "action.issue.0.count"
    assert "twice" in rejection(action={"issue": [{"template_id": "t"}, {"template_id": "t", "count": 2}]})[1]
    assert rejection(caps={"budget_per_day_fen": 0})[0] == "caps.budget_per_day_fen"
    assert rejection(caps={"budget_total_fen": 100.5})[0] == "caps.budget_total_fen"
    assert rejection(caps={"issues_per_customer": 0})[0] == "caps.issues_per_customer"
    assert rule(caps={"issues_per_customer": None}).caps.issues_per_customer is None
    assert rejection(holdout_percent=51) == ("holdout_percent", "Value error, holdout_percent must be 0..50, got 51")
    assert rejection(merchant_id="m-1")[0] == "merchant_id"


def test_the_holdout_share_converges_on_the_percent() -> None:
    ids = [f"u-{i}" for i in range(20_000)]
    for percent in (5, 10, 50):
        share = sum(in_holdout("rule-42", c, percent) for c in ids) / len(ids) * 100
        assert abs(share - percent) <= 1.5, (percent, share)


@given(st.text(min_size=1, max_size=20), st.text(min_size=1, max_size=20), st.integers(0, 49))
def test_raising_the_holdout_only_adds_customers(rule_id: str, customer_id: str, percent: int) -> None:
    if in_holdout(rule_id, customer_id, percent):
        assert in_holdout(rule_id, customer_id, percent + 1)
    assert not in_holdout(rule_id, customer_id, 0) and in_holdout(rule_id, customer_id, 100)


def test_holdout_and_issuance_keys_are_stable_across_processes() -> None:
    code = (
        "import json; from services.coupons.domain.rules import in_holdout, issuance_key; "
        "print(json.dumps([[in_holdout('r', f'u{i}', 10) for i in range(50)], issuance_key('r', 'evt-1', 'u1')]))"
    )
    here = [[in_holdout("r", f"u{i}", 10) for i in range(50)], issuance_key("r", "evt-1", "u1")]
    for seed in ("1", "2"):
        out = subprocess.run(
            [sys.executable, "-c", code],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout
        assert json.loads(out) == here


def test_a_replayed_trigger_has_the_same_issuance_key() -> None:
    key = issuance_key("rule-1", "evt-9", "u-42")
    assert key == issuance_key("rule-1", "evt-9", "u-42") and len(key) == 32
    others = {
        issuance_key("rule-2", "evt-9", "u-42"),
        issuance_key("rule-1", "evt-10", "u-42"),
        issuance_key("rule-1", "evt-9", "u-43"),
        issuance_key("rule-1", "evt-9u", "-42"),
    }
    assert key not in others and len(others) == 4
    with pytest.raises(ValueError, match="customer_id"):
        issuance_key("rule-1", "evt-9", "")


# --- presets ------------------------------------------------------------------------------------


def test_every_preset_builds_valid_rules_and_templates_that_bind() -> None:
    window = {"window_start": datetime(2026, 11, 1, tzinfo=SH), "window_end": datetime(2026, 12, 1, tzinfo=SH)}
    args: dict[str, dict[str, Any]] = {
        "goal_orders_in_month": {"year": 2026, "month": 11},
        "goal_spend_in_window": window,
    }
    limits: dict[str, dict[str, int | None]] = {}
    for name, make in PRESETS.items():
        preset = make(**args.get(name, {}))
        assert preset.name == name
        ids = {key: f"tpl-{i}" for i, key in enumerate(preset.templates)}
        bound = preset.bind(ids)
        assert {i.template_id for i in bound.action.issue} <= set(ids.values())
        assert CampaignRule.model_validate_json(bound.model_dump_json()) == bound
        with pytest.raises(ValueError, match="no template id"):
            preset.bind({})
        limits[name] = {key: t.per_customer_limit for key, t in preset.templates.items()}
    # a recurring rule needs templates a customer can get again and again
    assert limits == {
        "first_order_welcome": {"welcome": 1, "repurchase": 2},
        "monthly_loyal": {"repurchase": None},
        "goal_orders_in_month": {"reward": 1},
        "goal_spend_in_window": {"reward": 1},
        "referral_double_order": {"reward": 10},
        "category_replenishment": {"replenish": None},
        "tier_c_second_order_free_shipping": {"free_shipping": None},
        "audience_winback": {"winback": 1},
    }


def test_a_preset_cannot_issue_more_than_its_templates_allow() -> None:
    p = PRESETS["first_order_welcome"]()
    tight = {**p.templates, "repurchase": p.templates["repurchase"].model_copy(update={"per_customer_limit": 1})}
    with pytest.raises(ValueError, match="above its per_customer_limit 1"):
        Preset(p.name, p.rule, tight)


def test_first_order_welcome_gives_one_8_zhe_and_two_85_repurchase_coupons() -> None:
    p = PRESETS["first_order_welcome"]()
    assert p.rule.trigger.type == "first_paid_order"
    issued = {i.template_id: i.count for i in p.rule.action.issue}
    pays = {k: t.kind.pay_percent for k, t in p.templates.items() if isinstance(t.kind, PercentOff)}
    assert issued == {"welcome": 1, "repurchase": 2} and pays == {"welcome": 80, "repurchase": 85}
    assert p.templates["welcome"].name == "新客回购8折券" and p.templates["repurchase"].name == "回购8.5折券"


def test_monthly_loyal_targets_tiers_a_and_b_with_three_orders_each_month() -> None:
    p = PRESETS["monthly_loyal"](timezone="Asia/Urumqi")
    trigger = p.rule.trigger
    assert isinstance(trigger, Schedule) and (trigger.cron, trigger.timezone) == ("0 9 1 * *", "Asia/Urumqi")
    assert isinstance(p.rule.audience, AudienceFilter)
    assert p.rule.audience.filter == {"and": [{"tier": ["A", "B"]}, {"frequency": {"gte": 3}}]}
    assert p.rule.action.issue[0].count == 3 and p.rule.caps.issues_per_customer is None


def test_audience_winback_targets_lapsed_tier_b_daily_with_an_85_coupon_once_each() -> None:
    p = PRESETS["audience_winback"]()
    trigger = p.rule.trigger
    assert isinstance(trigger, Schedule) and (trigger.cron, trigger.timezone) == ("0 10 * * *", "Asia/Shanghai")
    assert isinstance(p.rule.audience, AudienceFilter)
    assert p.rule.audience.filter == {"and": [{"tier": ["B"]}, {"recency_days": {"gte": 30}}]}
    template = p.templates["winback"]
    assert isinstance(template.kind, PercentOff) and template.kind.pay_percent == 85
    assert template.name == "回购8.5折券" and template.valid_days == 7 and template.per_customer_limit == 1
    assert p.rule.caps.issues_per_customer == 1 and p.rule.holdout_percent == 10

    saved = PRESETS["audience_winback"](audience_id="aud_1", tiers=("S",), pay_percent=80, issues_per_customer=2)
    assert isinstance(saved.rule.audience, AudienceRef) and saved.rule.audience.audience_id == "aud_1"
    assert saved.templates["winback"].name == "回购8折券" and saved.templates["winback"].per_customer_limit == 2
    assert PRESETS["audience_winback"](tiers=("C", "B", "C")).rule.audience.filter["and"][0] == {"tier": ["B", "C"]}
    with pytest.raises(ValueError, match="tiers must be some of S, A, B, C"):
        PRESETS["audience_winback"](tiers=("X",))
    with pytest.raises(ValueError, match=r"inactive_days must be 1\.\.3650"):
        PRESETS["audience_winback"](inactive_days=0)


def test_goal_presets_encode_the_merchants_incentives() -> None:
    orders = goal_orders_in_month(year=2026, month=12).rule.trigger
    assert isinstance(orders, Goal) and (orders.metric, orders.comparison, orders.threshold) == ("paid_orders", "gt", 5)
    assert orders.window_start == datetime(2026, 12, 1, tzinfo=SH)
    assert orders.window_end == datetime(2027, 1, 1, tzinfo=SH)
    spend = goal_spend_in_window(
        window_start=datetime(2026, 11, 1, tzinfo=SH), window_end=datetime(2026, 11, 12, tzinfo=SH)
    ).rule.trigger
    assert isinstance(spend, Goal) and (spend.metric, spend.comparison, spend.threshold) == ("paid_fen", "gt", 66600)
    referral = PRESETS["referral_double_order"]().rule.trigger
    assert isinstance(referral, Goal)
    assert (referral.metric, referral.threshold, referral.within_days) == ("referee_orders", 2, 30)


def test_category_replenishment_scopes_the_coupon_to_the_category_when_it_is_due() -> None:
    p = PRESETS["category_replenishment"](category="diapers")
    assert p.rule.trigger.type == "segment_changed" and p.rule.trigger.into.tag == "replenish_due:diapers"
    assert p.templates["replenish"].scope == CategoryScope(categories=["diapers"])


def test_tier_c_ships_the_second_order_of_the_day_free() -> None:
    p = PRESETS["tier_c_second_order_free_shipping"]()
    kind = p.templates["free_shipping"].kind
    assert isinstance(kind, FreeShipping) and kind.nth_order_today == 2
    assert isinstance(p.rule.audience, AudienceFilter) and p.rule.audience.filter == {"tier": ["C"]}


def test_preset_parameters_are_validated_like_any_rule() -> None:
    with pytest.raises(ValidationError, match="discount above 100%"):
        PRESETS["first_order_welcome"](welcome_pay_percent=-10)
    with pytest.raises(ValidationError, match="never fires"):
        PRESETS["monthly_loyal"](cron="0 9 31 2 *")
