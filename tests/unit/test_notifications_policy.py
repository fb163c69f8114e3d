"""The rules that protect the customer (consent, credits, quiet hours, caps, pacing), contact
addresses and opt-outs, and retries: pure decisions with an explicit clock and zone."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.notifications.domain.contacts import (
    InvalidContact,
    InvalidToken,
    is_opt_out_reply,
    mainland_national,
    normalize_email,
    normalize_openid,
    normalize_phone,
    sign_unsubscribe,
    verify_unsubscribe,
)
from services.notifications.domain.policy import (
    DEFAULT_CAPS,
    Candidate,
    Caps,
    ConsentPolicy,
    Credits,
    Decision,
    Facts,
    QuietHours,
    TokenBucket,
    choose_for_credits,
    decide,
    explain_text,
    local_instant,
)
from services.notifications.domain.retry import MAX_ATTEMPTS, backoff, next_step

SH = ZoneInfo("Asia/Shanghai")
NY = ZoneInfo("America/New_York")
NOON = datetime(2026, 11, 7, 12, 0, tzinfo=SH)  # a Saturday
OPENID = "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"


def sms(purpose: str = "marketing", **over: object) -> Candidate:
    return Candidate(channel="sms", purpose=purpose, trigger="campaign", **over)  # type: ignore[arg-type]


def facts(**over: object) -> Facts:
    base: dict[str, object] = {"tz": SH, "address": "13800138000", "consent": {"sms": "granted"}}
    return Facts(**{**base, **over})  # type: ignore[arg-type]


# ---------------------------------------------------------------- consent


def test_a_marketing_sms_with_consent_at_noon_is_sent() -> None:
    assert decide(sms(), facts(), NOON) == Decision("send", "ok", None, {"channel": "sms", "purpose": "marketing"})


def test_a_denial_blocks_even_a_transactional_message() -> None:
    d = decide(sms("transactional"), facts(consent={"sms": "denied"}), NOON)
    assert (d.action, d.reason) == ("skip", "consent_denied")


def test_unknown_consent_blocks_marketing_unless_the_merchant_allows_it() -> None:
    assert decide(sms(), facts(consent={}), NOON).reason == "consent_missing"
    lenient = ConsentPolicy(marketing_requires_explicit_consent=False)
    assert decide(sms(), facts(consent={}, consent_policy=lenient), NOON).reason == "ok"
    assert decide(sms(), facts(consent={"sms": "denied"}, consent_policy=lenient), NOON).reason == "consent_denied"


def test_unknown_consent_is_enough_for_a_transactional_message() -> None:
    assert decide(sms("transactional"), facts(consent={}), NOON).reason == "ok"


def test_consent_is_per_channel() -> None:
    assert decide(sms(), facts(consent={"email": "granted"}), NOON).reason == "consent_missing"


# ---------------------------------------------------------------- contact


def test_no_address_and_a_bad_address_are_told_apart() -> None:
    assert decide(sms(), facts(address=None), NOON).reason == "no_contact"
    bad = decide(sms(), facts(address="12345"), NOON)
    assert (bad.reason, bad.detail["field"]) == ("invalid_contact", "phone")


def test_webhook_and_console_need_no_address_and_no_explicit_consent() -> None:
    for channel in ("webhook", "console"):
        assert decide(Candidate(channel, "marketing", "campaign"), Facts(tz=SH), NOON).reason == "ok"


# ---------------------------------------------------------------- WeChat subscription credits


def test_a_wechat_message_needs_a_credit_for_its_template() -> None:
    wechat = Candidate("wechat", "transactional", "level.changed", template_id="tmpl-level")
    base = facts(address=OPENID, consent={"wechat": "granted"})
    assert decide(wechat, base, NOON).reason == "no_subscription_credit"
    other = facts(address=OPENID, consent={"wechat": "granted"}, credits={"tmpl-coupon": Credits(3)})
    assert decide(wechat, other, NOON).reason == "no_subscription_credit"
    granted = facts(address=OPENID, consent={"wechat": "granted"}, credits={"tmpl-level": Credits(1)})
    assert decide(wechat, granted, NOON).reason == "ok"
    long_term = facts(address=OPENID, consent={"wechat": "granted"}, credits={"tmpl-level": Credits(0, True)})
    assert decide(wechat, long_term, NOON).reason == "ok"


def test_credits_go_to_the_most_valuable_messages_ties_to_the_earliest() -> None:
    t0 = NOON
    a = Candidate("wechat", "marketing", "coupon.issued", "t", 500, t0)
    b = Candidate("wechat", "marketing", "coupon.issued", "t", 3000, t0 + timedelta(minutes=5))
    c = Candidate("wechat", "marketing", "coupon.issued", "t", 3000, t0)
    d = Candidate("wechat", "marketing", "coupon.expiring", "t", 100, t0)
    chosen, refused = choose_for_credits([a, b, c, d], Credits(2))
    assert chosen == [c, b]
    assert refused == [a, d]
    assert choose_for_credits([a, b], Credits(0, long_term=True)) == ([b, a], [])
    assert choose_for_credits([a, b], Credits(0)) == ([], [b, a])


@dataclass(frozen=True)
class Offer:
    value: int
    created_at: datetime | None


@given(
    st.lists(st.builds(Offer, st.integers(0, 10_000), st.none() | st.datetimes(timezones=st.just(UTC))), max_size=30),
    st.integers(0, 40),
)
def test_never_more_chosen_than_credits_and_every_chosen_is_worth_at_least_every_refused(
    offers: list[Offer], remaining: int
) -> None:
    chosen, refused = choose_for_credits(offers, Credits(remaining))
    assert len(chosen) == min(remaining, len(offers))
    assert sorted(map(id, chosen + refused)) == sorted(map(id, offers))
    if chosen and refused:
        assert min(o.value for o in chosen) >= max(o.value for o in refused)


# ---------------------------------------------------------------- quiet hours


def test_marketing_in_quiet_hours_is_held_until_the_window_opens_not_dropped() -> None:
    d = decide(sms(), facts(), datetime(2026, 11, 7, 22, 30, tzinfo=SH))
    assert (d.action, d.reason, d.until) == ("hold", "quiet_hours", datetime(2026, 11, 8, 9, 0, tzinfo=SH))


def test_quiet_hours_wrap_midnight() -> None:
    q = QuietHours(time(21), time(9))
    assert q.release_at(datetime(2026, 11, 7, 20, 59, tzinfo=SH), SH) is None
    assert q.release_at(datetime(2026, 11, 7, 21, 0, tzinfo=SH), SH) == datetime(2026, 11, 8, 9, tzinfo=SH)
    assert q.release_at(datetime(2026, 11, 8, 3, 0, tzinfo=SH), SH) == datetime(2026, 11, 8, 9, tzinfo=SH)
    assert q.release_at(datetime(2026, 11, 8, 9, 0, tzinfo=SH), SH) is None
    # The zone of `now` does not matter, the merchant's does: 13:30 UTC is 21:30 in Shanghai.
    assert q.release_at(datetime(2026, 11, 7, 13, 30, tzinfo=UTC), SH) == datetime(2026, 11, 8, 9, tzinfo=SH)


def test_quiet_hours_inside_one_day_and_never() -> None:
    lunch = QuietHours(time(12), time(14))
    assert lunch.release_at(NOON, SH) == datetime(2026, 11, 7, 14, tzinfo=SH)
    assert QuietHours(time(9), time(9)).release_at(NOON, SH) is None


def dst_changes(tz: ZoneInfo, year: int) -> tuple[date, date]:
    """The days of ``year`` on which the clocks of ``tz`` spring forward and fall back, read from the
    zone's rules rather than written down."""
    days = [date(year, 1, 1) + timedelta(days=n) for n in range(366)]
    offset = [datetime.combine(day, time(12), tz).utcoffset() or timedelta(0) for day in days]
    [spring] = [days[i] for i in range(1, len(days)) if offset[i] > offset[i - 1]]
    [fall] = [days[i] for i in range(1, len(days)) if offset[i] < offset[i - 1]]
    return spring, fall


def test_quiet_hours_across_spring_forward_release_at_the_exact_local_opening() -> None:
    spring, fall = dst_changes(NY, NOON.year)  # 02:00 EST → 03:00 EDT: the night is an hour shorter
    assert (spring.month, spring.weekday(), fall.month, fall.weekday()) == (3, 6, 11, 6)  # Sundays
    release = QuietHours().release_at(datetime.combine(spring - timedelta(days=1), time(22), NY), NY)
    assert release == datetime.combine(spring, time(9), NY)
    assert release.astimezone(UTC) == datetime.combine(spring, time(13), UTC)  # 09:00 EDT, not 09:00 EST


def test_quiet_hours_across_fall_back_release_at_the_exact_local_opening() -> None:
    _, fall = dst_changes(NY, NOON.year)  # 02:00 EDT → 01:00 EST: the night is an hour longer
    release = QuietHours().release_at(datetime.combine(fall - timedelta(days=1), time(23), NY), NY)
    assert release.astimezone(UTC) == datetime.combine(fall, time(14), UTC)  # 09:00 EST


def test_a_window_opening_inside_a_dst_gap_opens_when_the_clock_jumps() -> None:
    spring, fall = dst_changes(NY, NOON.year)
    q = QuietHours(time(1), time(2, 30))  # 02:30 does not exist in New York the night clocks spring forward
    release = q.release_at(datetime.combine(spring, time(1, 15), NY), NY)
    assert release is not None and release.astimezone(UTC) == datetime.combine(spring, time(7), UTC)  # 03:00 EDT
    assert local_instant(fall, time(1, 30), NY).astimezone(UTC).hour == 5  # the first 01:30


def test_transactional_messages_bypass_quiet_hours_and_caps() -> None:
    late = datetime(2026, 11, 7, 23, 0, tzinfo=SH)
    sent = [("sms", late - timedelta(hours=1))] * 5
    d = decide(sms("transactional"), facts(recent_marketing=sent), late)
    assert (d.action, d.reason) == ("send", "ok")
    assert d.detail["bypassed"] == ["quiet_hours", "caps"]


# ---------------------------------------------------------------- frequency caps


def test_the_daily_cap_is_a_calendar_day_in_the_merchants_zone() -> None:
    sent = [("sms", datetime(2026, 11, 6, 23, 59, tzinfo=SH))]
    awake = facts(quiet_hours=None, recent_marketing=sent)
    assert decide(sms(), awake, datetime(2026, 11, 7, 0, 1, tzinfo=SH)).reason == "ok"
    capped = decide(sms(), awake, datetime(2026, 11, 6, 23, 59, 30, tzinfo=SH))
    assert capped.reason == "cap_reached"
    assert capped.detail == {
        "channel": "sms",
        "window": "day",
        "limit": 1,
        "used": 1,
        "frees_at": "2026-11-07T00:00:00+08:00",
    }
    # Both are on 6 November in UTC (15:59 and 16:01): counting UTC days would have refused the second.
    assert sent[0][1].astimezone(UTC).date() == datetime(2026, 11, 7, 0, 1, tzinfo=SH).astimezone(UTC).date()


def test_the_weekly_cap_counts_the_iso_week_from_monday() -> None:
    week = [("sms", datetime(2026, 11, d, 10, tzinfo=SH)) for d in (2, 3, 4)]  # Mon, Tue, Wed
    d = decide(sms(), facts(recent_marketing=week), NOON)  # Saturday
    assert d.reason == "cap_reached"
    assert (d.detail["window"], d.detail["used"], d.detail["frees_at"]) == ("week", 3, "2026-11-09T00:00:00+08:00")
    last_week = [("sms", datetime(2026, 11, d, 10, tzinfo=SH)) for d in (1, 3, 4)]  # Sun 1 Nov is last week
    assert decide(sms(), facts(recent_marketing=last_week), NOON).reason == "ok"


def test_caps_count_per_channel_unless_a_cap_spans_all_channels() -> None:
    today = [("email", NOON - timedelta(hours=2)), ("wechat", NOON - timedelta(hours=1))]
    assert decide(sms(), facts(recent_marketing=today), NOON).reason == "ok"
    total = Caps.of({"sms": [(1, "day")]}, all_channels=[(2, "day")])
    d = decide(sms(), facts(recent_marketing=today, caps=total), NOON)
    assert (d.reason, d.detail["channel"]) == ("cap_reached", "all")


def test_when_two_caps_bind_the_one_freeing_last_is_reported() -> None:
    week = [("sms", datetime(2026, 11, d, 10, tzinfo=SH)) for d in (2, 3, 7)]
    d = decide(sms(), facts(recent_marketing=week), NOON)
    assert d.detail["window"] == "week"


def test_default_caps_are_the_documented_ones() -> None:
    assert {(c.channel, c.limit, c.window) for c in DEFAULT_CAPS.rules} == {
        ("sms", 1, "day"),
        ("sms", 3, "week"),
        ("wechat", 1, "day"),
        ("wechat", 4, "week"),
        ("email", 1, "day"),
        ("email", 3, "week"),
    }


# ---------------------------------------------------------------- order and explain


def test_checks_run_in_a_fixed_order() -> None:
    worst = facts(duplicate=True, address=None, consent={"sms": "denied"}, recent_marketing=[("sms", NOON)] * 9)
    assert decide(sms(), worst, NOON).reason == "duplicate"
    assert decide(sms(), Facts(**{**worst.__dict__, "duplicate": False}), NOON).reason == "no_contact"
    late = datetime(2026, 11, 7, 23, tzinfo=SH)
    capped_and_quiet = facts(recent_marketing=[("sms", late - timedelta(hours=1))])
    assert decide(sms(), capped_and_quiet, late).reason == "quiet_hours"  # decided again at 09:00, a new day


def test_explain_gives_one_line_in_chinese_or_english() -> None:
    d = decide(sms(), facts(recent_marketing=[("sms", NOON - timedelta(hours=1))]), NOON)
    assert explain_text(d) == "未发送：已达短信营销频次上限（每天 1 条，已发 1 条），2026-11-08 00:00 后恢复"
    assert explain_text(d, "en") == "not sent: SMS marketing cap reached (1 a day, 1 sent), frees at 2026-11-08 00:00"
    held = decide(sms(), facts(), datetime(2026, 11, 7, 22, tzinfo=SH))
    assert "2026-11-08 09:00" in explain_text(held)
    reasons = [
        decide(sms(), facts(consent={}), NOON),
        decide(sms(), facts(address=None), NOON),
        decide(sms(), facts(address="1"), NOON),
        decide(sms(), facts(duplicate=True), NOON),
        decide(sms("transactional"), facts(), NOON),
    ]
    for decision in reasons:
        for locale in ("zh-CN", "en"):
            line = explain_text(decision, locale)
            assert line and "\n" not in line and "?" not in line and "{" not in line


# ---------------------------------------------------------------- token bucket


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_a_bucket_allows_a_burst_then_paces_at_its_rate() -> None:
    clock = Clock()
    bucket = TokenBucket(rate_per_s=10, burst=3, clock=clock)
    assert [bucket.take() for _ in range(5)] == [0.0, 0.0, 0.0, pytest.approx(0.1), pytest.approx(0.2)]
    assert not bucket.try_take()
    clock.t = 1.0
    assert bucket.try_take(3)
    with pytest.raises(ValueError):
        bucket.take(4)


@given(
    st.floats(0.5, 100),
    st.integers(1, 10),
    st.lists(st.tuples(st.floats(0, 2), st.integers(1, 10)), min_size=1, max_size=60),
)
def test_a_bucket_never_grants_more_than_rate_times_t_plus_burst(
    rate: float, burst: int, steps: list[tuple[float, int]]
) -> None:
    clock = Clock()
    bucket = TokenBucket(rate, burst, clock=clock)
    grants: list[tuple[float, int]] = []  # (when the tokens may be used, how many)
    for gap, n in steps:
        clock.t += gap
        n = min(n, burst)
        if n % 2:
            grants.append((clock.t + bucket.take(n), n))
        elif bucket.try_take(n):
            grants.append((clock.t, n))
    grants.sort()
    for i, (start, _) in enumerate(grants):
        used = 0
        for end, n in grants[i:]:
            used += n
            assert used <= rate * (end - start) + burst + 1e-6


# ---------------------------------------------------------------- contacts


@pytest.mark.parametrize(
    "raw",
    [
        "13800138000",
        "+86 138-0013-8000",
        "008613800138000",
        "86 13800138000",
        "１３８ ００１３ ８０００",
        "(+86) 138.0013.8000",
    ],
)
def test_mainland_mobile_numbers_are_normalised_to_e164(raw: str) -> None:
    assert normalize_phone(raw) == "+8613800138000"
    assert mainland_national(normalize_phone(raw)) == "13800138000"


@pytest.mark.parametrize(
    "raw",
    [
        "12800138000",
        "1380013800",
        "138001380001",
        "+86 10 8888 6666",
        "phone",
        "",
        "+0044 20",
        "+1 23",
        "23800138000",
        "+86 138 0013 800a",
    ],
)
def test_bad_numbers_are_refused_with_the_field(raw: str) -> None:
    with pytest.raises(InvalidContact) as err:
        normalize_phone(raw)
    assert err.value.field == "phone"


def test_other_countries_need_the_international_form() -> None:
    assert normalize_phone("+1 (415) 555-2671") == "+14155552671"
    assert normalize_phone("0044 20 7946 0958") == "+442079460958"
    with pytest.raises(InvalidContact):
        normalize_phone("4155552671", default_region="US")
    with pytest.raises(InvalidContact):
        mainland_national("+14155552671")


def test_emails_are_checked_and_their_domain_lower_cased() -> None:
    assert normalize_email("  Xiao.Lin+vip@Example.COM ") == "Xiao.Lin+vip@example.com"
    for bad in [
        "no-at.example.com",
        "a@@b.com",
        "a..b@x.com",
        ".a@x.com",
        "a@localhost",
        "a@x.c0m",
        "a@-x.com",
        "a b@x.com",
        "a@x..com",
    ]:
        with pytest.raises(InvalidContact):
            normalize_email(bad)


def test_openids_are_url_safe_and_of_sane_length() -> None:
    assert normalize_openid(OPENID) == OPENID
    for bad in ["", "short", "o" * 65, "oUpF8uMuAJO M2pxb1Q9zNjWeS6o", "oUpF8uMuAJO/M2pxb1Q9zNjWeS6o"]:
        with pytest.raises(InvalidContact):
            normalize_openid(bad)


@pytest.mark.parametrize(
    "reply", ["T", "t", "Ｔ", " td ", "TD。", "退订", "退 订", "n", "STOP", "Stop!", "unsubscribe"]
)
def test_opt_out_replies_are_recognised(reply: str) -> None:
    assert is_opt_out_reply(reply)


@pytest.mark.parametrize("reply", ["OK", "谢谢", "", "好的", "TT", "not now", "stopper", "退订了吗？我还要买"])
def test_other_replies_are_not_opt_outs(reply: str) -> None:
    assert not is_opt_out_reply(reply)


def test_an_unsubscribe_token_round_trips() -> None:
    token = sign_unsubscribe(b"secret", "m-001", "客户-42", "email")
    assert verify_unsubscribe(b"secret", token) == ("m-001", "客户-42", "email")
    assert token.replace("-", "").replace("_", "").replace(".", "").isalnum()  # url-safe


def test_a_tampered_or_foreign_unsubscribe_token_is_refused() -> None:
    token = sign_unsubscribe(b"secret", "m-001", "u-42", "sms")
    payload, mac = token.split(".")
    other = sign_unsubscribe(b"secret", "m-001", "u-43", "sms").split(".")[0]
    for bad in [f"{other}.{mac}", f"{payload}.{mac[:-2]}AA", payload, "", "a.b.c", f"{payload}x.{mac}"]:
        with pytest.raises(InvalidToken):
            verify_unsubscribe(b"secret", bad)
    with pytest.raises(InvalidToken):
        verify_unsubscribe(b"another secret", token)


# ---------------------------------------------------------------- retries


def test_backoff_doubles_from_two_seconds_up_to_an_hour() -> None:
    waits = [backoff(a).total_seconds() for a in range(1, 15)]
    assert waits[:5] == [2, 4, 8, 16, 32]
    assert waits[-1] == 3600
    assert backoff(10_000).total_seconds() == 3600  # no overflow


@given(st.integers(1, 200), st.floats(0, 0.999))
def test_backoff_is_monotone_and_capped_for_any_jitter(attempt: int, jitter: float) -> None:
    a, b = backoff(attempt, jitter=jitter), backoff(attempt + 1, jitter=jitter)
    assert a <= b <= timedelta(seconds=3600)
    assert a >= backoff(attempt) / 2


def test_a_providers_retry_after_wins_when_longer() -> None:
    assert backoff(1, retry_after_s=30).total_seconds() == 30
    assert backoff(5, retry_after_s=1).total_seconds() == 32


def test_retries_end_in_the_dead_letter() -> None:
    assert next_step(1, "transient", now=NOON) == ("retry", NOON + timedelta(seconds=2))
    assert next_step(3, "rate_limited", 60, now=NOON) == ("retry", NOON + timedelta(seconds=60))
    assert next_step(MAX_ATTEMPTS, "transient", now=NOON) == ("dead", "max_attempts")
    assert next_step(1, "permanent", now=NOON) == ("dead", "permanent")
    assert next_step(2, "transient", max_attempts=2, now=NOON) == ("dead", "max_attempts")
