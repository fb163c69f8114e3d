"""The rules that protect the customer: whether a message goes now, later or not at all, and why
(pure, no I/O; ``now`` and the merchant's zone are always explicit).

``decide`` runs the checks in this fixed order; the first that fails decides, so ``explain`` gives
the same answer every time:

1. **duplicate**: an identical message already exists → skip ``duplicate``.
2. **contact**: WeChat, SMS and email need the customer's address (openid, phone, email): none
   → skip ``no_contact``; one that does not normalise → skip ``invalid_contact``. Webhook and
   console deliver to the merchant's own systems and need none.
3. **consent**, per channel: ``denied`` blocks every message on that channel, transactional
   included (never message someone who said no) → skip ``consent_denied``. Marketing needs
   ``granted``: ``unknown`` → skip ``consent_missing``, unless the merchant turned off
   ``marketing_requires_explicit_consent``, when unknown counts as granted. Transactional
   messages need only "not denied". On webhook and console unknown counts as granted.
4. **WeChat subscription credit**: a one-time subscribe message needs a credit for its template
   (each grant allows one send; a long-term grant has no limit), transactional included → skip
   ``no_subscription_credit``. ``choose_for_credits`` spends scarce credits on the most valuable
   messages first.
5. **quiet hours** (marketing only): in the merchant's quiet hours (default 21:00–09:00, may wrap
   midnight) a message is held, not dropped → hold ``quiet_hours`` until the first instant the
   window opens (DST-safe). A held message is decided again when released, so caps are counted
   against the moment it would really go out.
6. **frequency caps** (marketing only), per customer across all campaigns: each cap is a limit per
   calendar day or ISO week (Monday start) on the merchant's clock, for one channel or for all
   channels together. Defaults: SMS 1 a day and 3 a week, WeChat 1 a day and 4 a week, email 1 a
   day and 3 a week, none on webhook and console, none across channels. A capped message is
   dropped, not postponed (postponing would pile messages onto the next window, the very thing
   caps prevent) → skip ``cap_reached``, with the channel, window, limit, count and when it frees.

Transactional messages (they answer something the customer just did, or an account change) bypass
quiet hours and caps, and only those. ``TokenBucket`` paces sends to a provider's rate limit.
"""

from __future__ import annotations

import math
import time as _time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from functools import lru_cache
from typing import Any, Literal, Protocol, TypeVar
from zoneinfo import ZoneInfo

from services.notifications.domain.contacts import ADDRESS_FIELD, InvalidContact, normalize_address
from services.notifications.domain.templates import CHANNELS, Purpose

Consent = Literal["granted", "denied", "unknown"]
Window = Literal["day", "week"]
Action = Literal["send", "hold", "skip"]
Reason = Literal[
    "ok",
    "duplicate",
    "no_contact",
    "invalid_contact",
    "consent_denied",
    "consent_missing",
    "no_subscription_credit",
    "quiet_hours",
    "cap_reached",
]

# The checks of ``decide``, in order (for docs and explain views).
CHECKS: tuple[str, ...] = ("duplicate", "contact", "consent", "subscription_credit", "quiet_hours", "caps")
MERCHANT_SIDE = frozenset({"webhook", "console"})
DEFAULT_TZ = ZoneInfo("Asia/Shanghai")


def zone(tz: tzinfo | str) -> tzinfo:
    return ZoneInfo(tz) if isinstance(tz, str) else tz


# ---------------------------------------------------------------- local time, DST-safe


def _exists(local: datetime) -> bool:
    return local.astimezone(UTC).astimezone(local.tzinfo).replace(tzinfo=None) == local.replace(tzinfo=None)


def local_instant(day: date, at: time, tz: tzinfo | str) -> datetime:
    """The first instant at which the clock in ``tz`` on ``day`` shows ``at`` or later: the earlier
    of two in a fall-back overlap, the end of the gap when spring-forward skips ``at``."""
    tz = zone(tz)
    local = datetime.combine(day, at, tzinfo=tz)  # fold=0: the earlier of an ambiguous pair
    if _exists(local):
        return local
    # In a gap: fold=1 reads the time with the offset after the jump (an instant before it), fold=0
    # with the offset before (an instant after it). The jump itself is the answer.
    lo = math.floor(local.replace(fold=1).timestamp())
    hi = math.ceil(local.timestamp())
    after = datetime.fromtimestamp(hi, tz).utcoffset()
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, tz).utcoffset() == after:
            hi = mid
        else:
            lo = mid
    return datetime.fromtimestamp(hi, tz)


@lru_cache(maxsize=256)  # a dispatcher asks the same question for every message of a round
def window_bounds(window: Window, now: datetime, tz: tzinfo | str) -> tuple[datetime, datetime]:
    """[start, end) of the calendar day or ISO week (Monday start) containing ``now`` in ``tz``."""
    today = now.astimezone(zone(tz)).date()
    if window == "day":
        first, days = today, 1
    elif window == "week":
        first, days = today - timedelta(days=today.weekday()), 7
    else:
        raise ValueError(f"unknown window {window!r}")
    return local_instant(first, time(0), tz), local_instant(first + timedelta(days=days), time(0), tz)


# ---------------------------------------------------------------- consent


@dataclass(frozen=True)
class ConsentPolicy:
    marketing_requires_explicit_consent: bool = True

    def refusal(self, consent: Consent, purpose: Purpose, channel: str = "sms") -> Reason | None:
        """``consent_denied`` / ``consent_missing`` when the message may not go, else None."""
        if consent == "denied":
            return "consent_denied"
        if (
            purpose == "marketing"
            and consent != "granted"
            and channel not in MERCHANT_SIDE
            and self.marketing_requires_explicit_consent
        ):
            return "consent_missing"
        return None


# ---------------------------------------------------------------- frequency caps


@dataclass(frozen=True)
class Cap:
    limit: int
    window: Window
    channel: str | None = None  # None: all channels together

    def __post_init__(self) -> None:
        if self.limit < 0:
            raise ValueError("a cap's limit is 0 or more")
        if self.window not in ("day", "week"):
            raise ValueError(f"unknown window {self.window!r}")


@dataclass(frozen=True)
class CapHit:
    channel: str  # "all" for a cap across channels
    window: Window
    limit: int
    used: int
    frees_at: datetime


@dataclass(frozen=True)
class Caps:
    rules: tuple[Cap, ...] = ()

    @classmethod
    def of(
        cls, per_channel: Mapping[str, Iterable[tuple[int, Window]]], all_channels: Iterable[tuple[int, Window]] = ()
    ) -> Caps:
        """``Caps.of({"sms": [(1, "day"), (3, "week")]}, all_channels=[(5, "week")])``."""
        rules = [Cap(limit, window, channel) for channel, caps in per_channel.items() for limit, window in caps]
        return cls(tuple(rules) + tuple(Cap(limit, window, None) for limit, window in all_channels))

    def check(
        self, channel: str, sent: Iterable[tuple[str, datetime]], now: datetime, tz: tzinfo | str
    ) -> CapHit | None:
        """Whether one more marketing message on ``channel`` exceeds a cap, given the customer's
        marketing sends. Of the caps it would exceed, the one freeing last (when one more fits)."""
        sent = list(sent)
        worst: CapHit | None = None
        for cap in self.rules:
            if cap.channel is not None and cap.channel != channel:
                continue
            start, end = window_bounds(cap.window, now, tz)
            used = sum(1 for ch, at in sent if start <= at < end and (cap.channel is None or ch == cap.channel))
            if used >= cap.limit and (worst is None or end > worst.frees_at):
                worst = CapHit(cap.channel or "all", cap.window, cap.limit, used, end)
        return worst


DEFAULT_CAPS = Caps.of(
    {"sms": [(1, "day"), (3, "week")], "wechat": [(1, "day"), (4, "week")], "email": [(1, "day"), (3, "week")]}
)


# ---------------------------------------------------------------- quiet hours


@dataclass(frozen=True)
class QuietHours:
    """Quiet from ``start`` (inclusive) to ``end`` (exclusive) on the merchant's clock; wraps
    midnight when ``end <= start``; ``start == end`` means never quiet."""

    start: time = time(21)
    end: time = time(9)

    def is_quiet(self, now: datetime, tz: tzinfo | str) -> bool:
        t = now.astimezone(zone(tz)).time().replace(tzinfo=None)
        if self.start == self.end:
            return False
        if self.start < self.end:
            return self.start <= t < self.end
        return t >= self.start or t < self.end

    def release_at(self, now: datetime, tz: tzinfo | str) -> datetime | None:
        """None when not quiet now; else the first instant the window opens."""
        if not self.is_quiet(now, tz):
            return None
        local = now.astimezone(zone(tz))
        day = local.date()
        if self.start > self.end and local.time().replace(tzinfo=None) >= self.start:
            day += timedelta(days=1)
        return local_instant(day, self.end, tz)


DEFAULT_QUIET_HOURS = QuietHours(time(21), time(9))


# ---------------------------------------------------------------- WeChat subscription credits


@dataclass(frozen=True)
class Credits:
    """A customer's one-time subscription credits for one template (``long_term``: unlimited)."""

    remaining: int = 0
    long_term: bool = False

    @property
    def available(self) -> float:
        return math.inf if self.long_term else max(0, self.remaining)


class _Valued(Protocol):
    @property
    def value(self) -> int: ...

    @property
    def created_at(self) -> datetime | None: ...


V = TypeVar("V", bound=_Valued)


def choose_for_credits(candidates: Sequence[V], credits: Credits) -> tuple[list[V], list[V]]:
    """(chosen, refused): the most valuable candidates up to the available credits, ties going to
    the earliest created (then the given order); the rest are refused ``no_subscription_credit``."""
    order = sorted(
        range(len(candidates)),
        key=lambda i: (
            -candidates[i].value,
            (0, candidates[i].created_at) if candidates[i].created_at is not None else (1,),
            i,
        ),
    )
    ranked = [candidates[i] for i in order]
    n = len(ranked) if credits.long_term else max(0, credits.remaining)
    return ranked[:n], ranked[n:]


# ---------------------------------------------------------------- the decision


@dataclass(frozen=True)
class Candidate:
    channel: str
    purpose: Purpose
    trigger: str
    template_id: str | None = None  # WeChat: the subscribe template (credits are per template)
    value: int = 0  # what the message is worth: a coupon's face value in fen, or a rule's priority
    created_at: datetime | None = None


@dataclass(frozen=True)
class Facts:
    """What is known about the customer when a message is considered."""

    tz: tzinfo | str = DEFAULT_TZ
    address: str | None = None  # the customer's address on the candidate's channel
    consent: Mapping[str, Consent] = field(default_factory=dict)  # per channel; missing: unknown
    credits: Mapping[str, Credits] = field(default_factory=dict)  # WeChat, per template id
    recent_marketing: Sequence[tuple[str, datetime]] = ()  # (channel, sent_at) of marketing sends
    caps: Caps = DEFAULT_CAPS
    quiet_hours: QuietHours | None = DEFAULT_QUIET_HOURS
    consent_policy: ConsentPolicy = ConsentPolicy()
    duplicate: bool = False


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: Reason
    until: datetime | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)


def _skip(reason: Reason, **detail: Any) -> Decision:
    return Decision("skip", reason, None, detail)


def decide(candidate: Candidate, facts: Facts, now: datetime) -> Decision:
    """Send, hold or skip ``candidate``, by the checks of the module docstring, in order."""
    channel, purpose = candidate.channel, candidate.purpose
    if channel not in CHANNELS:
        raise ValueError(f"unknown channel {channel!r}")
    if purpose not in ("transactional", "marketing"):
        raise ValueError(f"unknown purpose {purpose!r}")
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    tz = zone(facts.tz)

    if facts.duplicate:
        return _skip("duplicate", channel=channel, trigger=candidate.trigger)

    if channel in ADDRESS_FIELD:
        if not facts.address or not facts.address.strip():
            return _skip("no_contact", channel=channel, field=ADDRESS_FIELD[channel])
        try:
            normalize_address(channel, facts.address)
        except InvalidContact as exc:
            return _skip("invalid_contact", channel=channel, field=exc.field, problem=exc.reason)

    consent = facts.consent.get(channel, "unknown")
    if (refusal := facts.consent_policy.refusal(consent, purpose, channel)) is not None:
        return _skip(refusal, channel=channel, consent=consent, purpose=purpose)

    if channel == "wechat":
        credits = facts.credits.get(candidate.template_id or "", Credits())
        if credits.available < 1:
            return _skip("no_subscription_credit", channel=channel, template_id=candidate.template_id)

    if purpose == "transactional":
        return Decision(
            "send", "ok", None, {"channel": channel, "purpose": purpose, "bypassed": ["quiet_hours", "caps"]}
        )

    if facts.quiet_hours is not None and (until := facts.quiet_hours.release_at(now, tz)) is not None:
        return Decision(
            "hold",
            "quiet_hours",
            until,
            {
                "channel": channel,
                "start": facts.quiet_hours.start.isoformat("minutes"),
                "end": facts.quiet_hours.end.isoformat("minutes"),
                "until": until.isoformat(),
            },
        )

    if (hit := facts.caps.check(channel, facts.recent_marketing, now, tz)) is not None:
        return _skip(
            "cap_reached",
            channel=hit.channel,
            window=hit.window,
            limit=hit.limit,
            used=hit.used,
            frees_at=hit.frees_at.isoformat(),
        )

    return Decision("send", "ok", None, {"channel": channel, "purpose": purpose})


# ---------------------------------------------------------------- explain


_CHANNEL_NAMES = {
    "zh-CN": {
        "wechat": "微信",
        "sms": "短信",
        "email": "邮件",
        "webhook": "Webhook",
        "console": "控制台",
        "all": "所有渠道",
    },
    "en": {
        "wechat": "WeChat",
        "sms": "SMS",
        "email": "email",
        "webhook": "webhook",
        "console": "console",
        "all": "all channels",
    },
}
_WINDOWS = {"zh-CN": {"day": "天", "week": "周"}, "en": {"day": "day", "week": "week"}}
_TEXTS = {
    "zh-CN": {
        "ok": "发送：{channel}消息，所有检查通过",
        "ok_transactional": "发送：{channel}交易类消息（不受免打扰时段和频次上限限制）",
        "duplicate": "未发送：相同的消息已经存在",
        "no_contact": "未发送：客户没有{channel}联系方式",
        "invalid_contact": "未发送：客户的{channel}联系方式无效（{problem}）",
        "consent_denied": "未发送：客户已拒收{channel}消息",
        "consent_missing": "未发送：客户未同意接收{channel}营销消息",
        "no_subscription_credit": "未发送：客户没有微信订阅消息模板 {template_id} 的订阅次数",
        "quiet_hours": "暂缓：免打扰时段（{start}–{end}），将于 {until} 发送",
        "cap_reached": "未发送：已达{channel}营销频次上限（每{window} {limit} 条，已发 {used} 条），{frees_at} 后恢复",
    },
    "en": {
        "ok": "sent: {channel} message, all checks passed",
        "ok_transactional": "sent: transactional {channel} message (quiet hours and caps do not apply)",
        "duplicate": "not sent: an identical message already exists",
        "no_contact": "not sent: the customer has no {channel} address",
        "invalid_contact": "not sent: the customer's {channel} address is invalid ({problem})",
        "consent_denied": "not sent: the customer refused {channel} messages",
        "consent_missing": "not sent: the customer has not agreed to {channel} marketing",
        "no_subscription_credit": "not sent: no WeChat subscription credit for template {template_id}",
        "quiet_hours": "held: quiet hours ({start}–{end}), goes out at {until}",
        "cap_reached": "not sent: {channel} marketing cap reached ({limit} a {window}, {used} sent), "
        "frees at {frees_at}",
    },
}


def _when(value: Any) -> str:
    at = datetime.fromisoformat(value) if isinstance(value, str) else value
    return at.strftime("%Y-%m-%d %H:%M") if isinstance(at, datetime) else str(value)


def explain_text(decision: Decision, locale: str = "zh-CN") -> str:
    """One line saying why, in zh-CN or en (times on the merchant's clock)."""
    loc = locale if locale in _TEXTS else "zh-CN"
    d = dict(decision.detail)
    key: Reason | Literal["ok_transactional"] = decision.reason
    if key == "ok" and d.get("purpose") == "transactional":
        key = "ok_transactional"
    d["channel"] = _CHANNEL_NAMES[loc].get(str(d.get("channel")), str(d.get("channel")))
    if "window" in d:
        d["window"] = _WINDOWS[loc].get(d["window"], d["window"])
    for k in ("until", "frees_at"):
        if k in d:
            d[k] = _when(d[k])
    if decision.until is not None:
        d["until"] = _when(decision.until)
    return _TEXTS[loc][key].format_map(_Blank(d))


class _Blank(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return "?"


# ---------------------------------------------------------------- provider rate limits


class TokenBucket:
    """A provider's rate limit: ``rate_per_s`` tokens a second, at most ``burst`` saved up.

    ``take(n)`` reserves n tokens and returns how long to wait before using them (0: now); the
    reservations queue, so senders that each wait what they were told never exceed
    ``rate × t + burst`` in any interval of length t. ``try_take(n)`` takes only if they are there
    now. Deterministic given the clock (``time.monotonic`` by default); not thread-safe (one per
    event loop).
    """

    def __init__(self, rate_per_s: float, burst: int, clock: Callable[[], float] = _time.monotonic):
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("need rate_per_s > 0 and burst ≥ 1")
        self.rate = float(rate_per_s)
        self.burst = int(burst)
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock()

    def _refill(self) -> None:
        now = self._clock()
        if now > self._last:
            self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.rate)
            self._last = now

    def _check(self, n: int) -> None:
        if not 1 <= n <= self.burst:
            raise ValueError(f"take 1 to {self.burst} tokens at a time")

    @property
    def tokens(self) -> float:
        """Tokens available now (negative: reserved ahead)."""
        self._refill()
        return self._tokens

    def take(self, n: int = 1) -> float:
        self._check(n)
        self._refill()
        self._tokens -= n
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    def try_take(self, n: int = 1) -> bool:
        self._check(n)
        self._refill()
        if self._tokens >= n:
            self._tokens -= n
            return True
        return False
