"""Member levels by growth value (成长值): thresholds, benefits, upgrades and reviews (pure).

    {"levels": [{"code": "silver", "name": "白银会员", "threshold": 0},
                {"code": "gold", "name": "黄金会员", "threshold": 1000, "keep_threshold": 600,
                 "benefits": {"pay_percent": 95, "points_multiplier_permille": 1500}},
                {"code": "diamond", "name": "钻石会员", "threshold": 5000, "keep_threshold": 3000,
                 "benefits": {"pay_percent": 90, "points_multiplier_permille": 2000,
                              "free_shipping": true, "coupon_template_ids": ["t-vip"]}}],
     "growth_rate": {"growth": 1, "per_fen": 100},
     "growth_bonus": {"sign_in": 1, "review": 10},
     "window_months": 12,
     "review": {"every_months": 12, "grace_days": 30, "max_steps_down": null}}

Growth: ``⌊amount_fen × growth_rate.growth / growth_rate.per_fen⌋`` per paid order (one floor,
no level multiplier, no cap), plus a fixed ``growth_bonus`` per action. A refund takes growth back
in proportion, like points (``growth_to_remove``: cumulative, ceiling). Every decision reads "the
growth": what the customer earned in the last ``window_months`` (rolling, on the merchant's
calendar; ``window_start`` gives the SQL bound), net of refunds.

The ladder: the first level has threshold 0 (everyone has a level); thresholds rise strictly;
``keep_threshold`` (default: the threshold) is the growth a member needs in the window to keep
the level at a review, never above the threshold and never falling up the ladder.

- Upgrades happen at once (``on_growth``): as soon as the growth reaches a higher level's
  threshold, the member jumps straight to the highest level it reaches. ``on_growth`` never
  lowers a level.
- Downgrades happen only at a review (``review``), every ``every_months`` from the last one,
  counted on the merchant's calendar (Jan 31 + 1 month = Feb 28). At a due review, if the growth
  is below the level's keep threshold, the member is warned and keeps the level for
  ``grace_days``; when the grace ends, the review is decided on the growth at that moment: the
  member drops to the highest level (not above the current one) whose keep threshold the growth
  meets, at most ``max_steps_down`` levels (null = as far as the growth says). Reviews are a pure
  function of ``(last_review, now)``: a late sweep decides the latest due boundary, and the
  service stores ``review_at`` as the new ``last_review`` once a review is ``completed``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo
from typing import Literal

from pydantic import (
    Field,
    StrictBool,
    StrictInt,
    ValidationInfo,
    field_validator,
    model_validator,
)

from services.loyalty.domain.common import (
    BonusEvent,
    Code,
    Label,
    LoyaltyError,
    PositivePoints,
    Slug,
    Strict,
    add_months,
    amount,
    removed_on_refund,
    require_aware,
    zone,
)
from services.loyalty.domain.earning import check_multiplier

MAX_MONTHS = 60


def _growth(name: str, value: object) -> int:
    """Growth sums may be negative (refunds of growth earned before the window): any integer."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise LoyaltyError(Code.INVALID_AMOUNT, f"{name} must be a whole number, got {value!r}", field=name)
    return value


class Benefits(Strict):
    pay_percent: StrictInt = Field(default=100, description="What the member pays: 95 = 9.5折, 100 = no discount.")
    points_multiplier_permille: StrictInt = Field(default=1000, description="1500 = 1.5× points on orders.")
    free_shipping: StrictBool = False
    coupon_template_ids: list[Label] = Field(default_factory=list, description="Coupons only this level gets.")

    @field_validator("pay_percent")
    @classmethod
    def _percent(cls, v: int) -> int:
        if not 1 <= v <= 100:
            raise ValueError(f"pay_percent is the share the member pays, 1..100 (9.5折 = 95, none = 100), got {v}")
        return v

    @field_validator("points_multiplier_permille")
    @classmethod
    def _multiplier(cls, v: int) -> int:
        return check_multiplier("points_multiplier_permille", v)

    @field_validator("coupon_template_ids")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("coupon_template_ids lists a template twice")
        return v


class Level(Strict):
    code: Slug
    name: Label
    threshold: StrictInt = Field(description="Growth in the window that reaches this level.")
    keep_threshold: StrictInt | None = Field(
        default=None, description="Growth in the window that keeps it at a review; default the threshold."
    )
    benefits: Benefits = Field(default_factory=Benefits)

    @field_validator("threshold", "keep_threshold")
    @classmethod
    def _not_negative(cls, v: int | None, info: ValidationInfo) -> int | None:
        if v is not None and v < 0:
            raise ValueError(f"{info.field_name} must not be negative, got {v}")
        return v

    @model_validator(mode="after")
    def _keep_at_most_reach(self) -> Level:
        if self.keep_threshold is not None and self.keep_threshold > self.threshold:
            raise ValueError(
                f"level {self.code!r}: keep_threshold {self.keep_threshold} is above its threshold "
                f"{self.threshold}: a member who just reached it would lose it at the next review"
            )
        return self

    @property
    def keep(self) -> int:
        return self.threshold if self.keep_threshold is None else self.keep_threshold


class GrowthRate(Strict):
    """``growth`` for every ``per_fen`` paid: 1 per 100 = 1 growth per ¥1."""

    growth: StrictInt = 1
    per_fen: StrictInt = 100

    @field_validator("growth", "per_fen")
    @classmethod
    def _positive(cls, v: int, info: ValidationInfo) -> int:
        if v < 1:
            raise ValueError(f"{info.field_name} must be at least 1, got {v}")
        return v


class ReviewPolicy(Strict):
    every_months: StrictInt = Field(default=12, description=f"1..{MAX_MONTHS} months between reviews.")
    grace_days: StrictInt = Field(default=30, description="Days a member keeps the level after a failed review.")
    max_steps_down: StrictInt | None = Field(default=None, description="At most this many levels down per review.")

    @field_validator("every_months")
    @classmethod
    def _months(cls, v: int) -> int:
        if not 1 <= v <= MAX_MONTHS:
            raise ValueError(f"every_months must be 1..{MAX_MONTHS}, got {v}")
        return v

    @field_validator("max_steps_down")
    @classmethod
    def _steps(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError(f"max_steps_down must be at least 1 (null = no limit), got {v}")
        return v

    @model_validator(mode="after")
    def _grace_within_the_period(self) -> ReviewPolicy:
        shortest = self.every_months * 28
        if not 0 <= self.grace_days < shortest:
            raise ValueError(
                f"grace_days must be 0..{shortest - 1}, shorter than the {self.every_months}-month "
                f"review period, got {self.grace_days}"
            )
        return self


class LevelRules(Strict):
    levels: list[Level] = Field(min_length=1)
    growth_rate: GrowthRate = Field(default_factory=GrowthRate)
    growth_bonus: dict[BonusEvent, PositivePoints] = Field(default_factory=dict)
    window_months: StrictInt = Field(default=12, description="The rolling window growth is counted over.")
    review: ReviewPolicy = Field(default_factory=ReviewPolicy)

    @field_validator("levels")
    @classmethod
    def _a_ladder(cls, v: list[Level]) -> list[Level]:
        if v[0].threshold != 0:
            raise ValueError(
                f"the first level {v[0].code!r} must have threshold 0 so every member has a level, got {v[0].threshold}"
            )
        codes: set[str] = set()
        for lower, upper in itertools.pairwise(v):
            if upper.threshold <= lower.threshold:
                raise ValueError(
                    f"thresholds must rise: {upper.code!r} ({upper.threshold}) is not above "
                    f"{lower.code!r} ({lower.threshold})"
                )
            if upper.keep < lower.keep:
                raise ValueError(
                    f"keep thresholds must not fall up the ladder: {upper.code!r} keeps at "
                    f"{upper.keep}, below {lower.code!r} at {lower.keep}"
                )
        for level in v:
            if level.code in codes:
                raise ValueError(f"levels lists the code {level.code!r} twice")
            codes.add(level.code)
        return v

    @field_validator("window_months")
    @classmethod
    def _window(cls, v: int) -> int:
        if not 1 <= v <= MAX_MONTHS:
            raise ValueError(f"window_months must be 1..{MAX_MONTHS}, got {v}")
        return v

    def rank(self, code: str) -> int:
        """0 for the first level; ``unknown_level`` (422) for a code not on the ladder."""
        for i, level in enumerate(self.levels):
            if level.code == code:
                return i
        known = ", ".join(level.code for level in self.levels)
        raise LoyaltyError(Code.UNKNOWN_LEVEL, f"no level {code!r}; the levels are {known}", field="level")

    def level(self, code: str) -> Level:
        return self.levels[self.rank(code)]


def level_for(rules: LevelRules, growth: int) -> Level:
    """The highest level whose threshold ``growth`` reaches."""
    growth = _growth("growth", growth)
    return next(level for level in reversed(rules.levels) if growth >= level.threshold or level is rules.levels[0])


def multipliers(rules: LevelRules) -> dict[str, int]:
    """Points multipliers per level code, for ``earning.EarnRules.with_level_multipliers``."""
    return {level.code: level.benefits.points_multiplier_permille for level in rules.levels}


def growth_for_order(rules: LevelRules, amount_fen: int) -> int:
    amount("amount_fen", amount_fen, unit="fen", allow_zero=True)
    return amount_fen * rules.growth_rate.growth // rules.growth_rate.per_fen


def growth_for_bonus(rules: LevelRules, event: BonusEvent | str) -> int:
    """The growth an action earns (0 when the merchant gives none); once-only keys as in earning."""
    return rules.growth_bonus.get(BonusEvent(event), 0)


def growth_to_remove(growth: int, paid_fen: int, refunded_before_fen: int, refund_fen: int) -> int:
    """The growth a refund of ``refund_fen`` takes back from an order that earned ``growth`` on
    ``paid_fen`` after ``refunded_before_fen`` was refunded already (cumulative, ceiling)."""
    amount("refund_fen", refund_fen, unit="fen")
    after = refunded_before_fen + refund_fen
    if after > paid_fen:
        raise LoyaltyError(
            Code.REFUND_EXCEEDS, f"refunds would total {after} fen, more than the {paid_fen} paid", field="refund_fen"
        )
    return removed_on_refund(growth, paid_fen, after) - removed_on_refund(growth, paid_fen, refunded_before_fen)


def window_start(rules: LevelRules, now: datetime, tz: tzinfo | str) -> datetime:
    """The start of the growth window ending at ``now`` (``occurred_at >= window_start``)."""
    return add_months(now, -rules.window_months, tz)


@dataclass(frozen=True, slots=True)
class LevelChange:
    """A level.changed fact: ``direction`` upgrade (at once) or downgrade (at a review)."""

    from_code: str
    to_code: str
    direction: Literal["upgrade", "downgrade"]


def on_growth(rules: LevelRules, current: str, growth: int) -> LevelChange | None:
    """The upgrade ``growth`` earns at once, straight to the highest level it reaches; None when
    it reaches nothing above ``current`` (never a downgrade: that waits for a review)."""
    reached = level_for(rules, growth)
    if rules.rank(reached.code) > rules.rank(current):
        return LevelChange(current, reached.code, "upgrade")
    return None


@dataclass(frozen=True, slots=True)
class Review:
    """The outcome of ``review``.

    - ``not_due``: no boundary passed since ``last_review``; ``next_review_at`` is the next one.
    - ``keep``: the growth keeps the level.
    - ``warn``: the growth is short; ``level`` is kept until ``downgrade_at`` (the service may
      tell the member once per ``review_at``), when the review is decided again.
    - ``downgrade``: the grace is over and the growth is still short: ``change`` to ``target``.

    ``completed`` (keep, downgrade): store ``review_at`` as the new last_review."""

    action: Literal["not_due", "keep", "warn", "downgrade"]
    level: str
    next_review_at: datetime
    review_at: datetime | None = None
    target: str | None = None
    downgrade_at: datetime | None = None
    change: LevelChange | None = None

    @property
    def completed(self) -> bool:
        return self.action in ("keep", "downgrade")


def _sustained(rules: LevelRules, current: str, growth: int) -> str:
    """The level a review leaves: the highest not above ``current`` whose keep threshold the
    growth meets (the first level otherwise), at most ``max_steps_down`` below ``current``."""
    rank = rules.rank(current)
    kept = next((i for i in range(rank, 0, -1) if growth >= rules.levels[i].keep), 0)
    steps = rules.review.max_steps_down
    if steps is not None:
        kept = max(kept, rank - steps)
    return rules.levels[kept].code


def next_review_at(rules: LevelRules, last_review: datetime, tz: tzinfo | str) -> datetime:
    return add_months(last_review, rules.review.every_months, tz)


def review(
    rules: LevelRules, current: str, growth_in_window: int, *, now: datetime, last_review: datetime, tz: tzinfo | str
) -> Review:
    """The periodic review of a member at ``current`` with ``growth_in_window`` (as of ``now``).
    See ``Review`` for the outcomes; a review never upgrades (``on_growth`` does that)."""
    require_aware("now", now)
    require_aware("last_review", last_review)
    growth = _growth("growth_in_window", growth_in_window)
    every = rules.review.every_months
    first = add_months(last_review, every, tz)
    if now < first:
        return Review("not_due", current, first)
    # The latest boundary at or before now, counted from last_review (no drift from clamping).
    here, start = now.astimezone(zone(tz)), last_review.astimezone(zone(tz))
    elapsed = (here.year * 12 + here.month) - (start.year * 12 + start.month)
    k = max(1, elapsed // every + 1)
    while k > 1 and add_months(last_review, k * every, tz) > now:
        k -= 1
    review_at = add_months(last_review, k * every, tz)
    following = add_months(last_review, (k + 1) * every, tz)
    target = _sustained(rules, current, growth)
    if target == current:
        return Review("keep", current, following, review_at)
    downgrade_at = review_at + timedelta(days=rules.review.grace_days)
    if now < downgrade_at:
        return Review("warn", current, downgrade_at, review_at, target, downgrade_at)
    return Review(
        "downgrade", target, following, review_at, target, downgrade_at, LevelChange(current, target, "downgrade")
    )


@dataclass(frozen=True, slots=True)
class Progress:
    """Where a member stands: ``needed`` growth to reach ``next`` (None at the top), the share of
    the way from the current level's threshold (``permille``, floored, 0..1000), and the growth
    still needed in the window to keep the level at the next review (``keep_needed``)."""

    level: Level
    next: Level | None
    growth: int
    needed: int
    permille: int
    keep_needed: int


def progress(rules: LevelRules, current: str, growth: int) -> Progress:
    growth = _growth("growth", growth)
    rank = rules.rank(current)
    level = rules.levels[rank]
    keep_needed = max(0, level.keep - growth)
    if rank + 1 == len(rules.levels):
        return Progress(level, None, growth, 0, 1000, keep_needed)
    nxt = rules.levels[rank + 1]
    band = nxt.threshold - level.threshold
    permille = min(1000, max(0, (growth - level.threshold) * 1000 // band))
    return Progress(level, nxt, growth, max(0, nxt.threshold - growth), permille, keep_needed)
