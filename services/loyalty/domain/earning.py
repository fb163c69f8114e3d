"""Earning points: per yuan paid, level multipliers, bonus events, a daily cap (pure, validated).

    {"rate": {"points": 1, "per_fen": 100},
     "level_multipliers": {"gold": 1500, "diamond": 2000},
     "bonuses": [{"event": "first_order", "points": 100},
                 {"event": "sign_in", "points": 5, "trigger": "customer.signed_in"}],
     "daily_cap": 5000, "return_window_days": 7}

Order points, one floor at the end (no double rounding):

    points = ⌊amount_fen × rate.points × multiplier‰ / (rate.per_fen × 1000)⌋

so at 1 point per ¥1, ¥9.99 earns 9 points and, at 1.5× (1500‰), 14 (⌊14.985⌋). ``ratio(level)``
gives the reduced fraction for set-based SQL: ``amount_fen * num / den`` in integer division.
A level without a multiplier (or no level) earns at 1000‰. Multipliers apply to order points
only, never to bonuses.

Bonuses are fixed points for an action, each triggered by an inbound event type (``trigger``,
with a default per action). Each can be earned once per ``once_key``: ``first_order`` once ever,
``birthday_month`` once per local year and only in the customer's birthday month, ``sign_in``
once per local day, ``review`` once per reviewed order. ``BonusAward.event_id`` ("bonus:<key>")
is the cause to post it under, so a unique constraint on the entries' cause makes it
exactly-once even under concurrency. Whether an order is the first is the service's knowledge.

The daily cap (``daily_cap``) bounds all points earned on the merchant's local day, orders and
bonuses alike: ``earned_today`` is what the customer earned (gross, before any refund) from
causes on that day (``common.day_bounds``); ``capped_by`` says how much the cap took off.

Order points are pending for ``return_window_days`` (default 7) after the moment the window
starts (``matures_at``: the payment, or delivery if the service starts the window there); 0
makes them available at once. See ``ledger`` for pending, maturing and refunds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, datetime, timedelta, tzinfo
from typing import Annotated, Any

from pydantic import Field, StrictInt, ValidationInfo, field_validator, model_validator

from services.loyalty.domain.common import (
    BonusEvent,
    PositivePoints,
    Slug,
    Strict,
    amount,
    local_day,
    require_aware,
)

MAX_RETURN_WINDOW_DAYS = 90
MIN_MULTIPLIER, MAX_MULTIPLIER = 100, 10_000  # per mille: 0.1× .. 10×
EventType = Annotated[str, Field(pattern=r"^[a-z][a-z_]*(\.[a-z][a-z_]*)+$")]

# The inbound event type each bonus listens for, unless the merchant names another.
DEFAULT_TRIGGERS: dict[BonusEvent, str] = {
    BonusEvent.FIRST_ORDER: "order.paid",
    BonusEvent.BIRTHDAY_MONTH: "order.paid",
    BonusEvent.SIGN_IN: "customer.signed_in",
    BonusEvent.REVIEW: "review.posted",
}


def check_multiplier(name: str, permille: int) -> int:
    if not MIN_MULTIPLIER <= permille <= MAX_MULTIPLIER:
        raise ValueError(f"{name} is per mille (1500 = 1.5×), {MIN_MULTIPLIER}..{MAX_MULTIPLIER}, got {permille}")
    return permille


class EarnRate(Strict):
    """``points`` for every ``per_fen`` paid: 1 per 100 = 1 point per ¥1; 1 per 1000 = per ¥10."""

    points: StrictInt = 1
    per_fen: StrictInt = 100

    @field_validator("points", "per_fen")
    @classmethod
    def _positive(cls, v: int, info: ValidationInfo) -> int:
        if v < 1:
            raise ValueError(f"{info.field_name} must be at least 1, got {v}")
        return v


class Bonus(Strict):
    """A fixed number of ``points`` for ``event``, triggered by the inbound event type ``trigger``."""

    event: BonusEvent
    points: PositivePoints
    trigger: EventType

    @model_validator(mode="before")
    @classmethod
    def _default_trigger(cls, data: Any) -> Any:
        if isinstance(data, dict) and "trigger" not in data and data.get("event") in DEFAULT_TRIGGERS:
            return {**data, "trigger": DEFAULT_TRIGGERS[BonusEvent(data["event"])]}
        return data


class EarnRules(Strict):
    rate: EarnRate = Field(default_factory=EarnRate)
    level_multipliers: dict[Slug, StrictInt] = Field(
        default_factory=dict, description="Per level code, per mille: 1500 = 1.5× points."
    )
    bonuses: list[Bonus] = Field(default_factory=list)
    daily_cap: PositivePoints | None = Field(default=None, description="Most points per local day; null = none.")
    return_window_days: StrictInt = Field(default=7, description=f"0..{MAX_RETURN_WINDOW_DAYS} days pending.")

    @field_validator("level_multipliers")
    @classmethod
    def _multipliers(cls, v: dict[str, int]) -> dict[str, int]:
        for code, permille in v.items():
            check_multiplier(f"level_multipliers[{code!r}]", permille)
        return v

    @field_validator("bonuses")
    @classmethod
    def _one_per_event(cls, v: list[Bonus]) -> list[Bonus]:
        seen: set[BonusEvent] = set()
        for bonus in v:
            if bonus.event in seen:
                raise ValueError(f"bonuses lists {bonus.event.value!r} twice: one bonus per event")
            seen.add(bonus.event)
        return v

    @field_validator("return_window_days")
    @classmethod
    def _window(cls, v: int) -> int:
        if not 0 <= v <= MAX_RETURN_WINDOW_DAYS:
            raise ValueError(f"return_window_days must be 0..{MAX_RETURN_WINDOW_DAYS}, got {v}")
        return v

    def multiplier(self, level: str | None) -> int:
        """The level's multiplier per mille; 1000 for no level or one without a multiplier."""
        return self.level_multipliers.get(level, 1000) if level is not None else 1000

    def ratio(self, level: str | None = None) -> tuple[int, int]:
        """(num, den), reduced: order points = ``amount_fen * num // den`` (before the cap)."""
        num, den = self.rate.points * self.multiplier(level), self.rate.per_fen * 1000
        g = math.gcd(num, den)
        return num // g, den // g

    def bonus(self, event: BonusEvent | str) -> Bonus | None:
        return next((b for b in self.bonuses if b.event == event), None)

    def triggered_by(self, event_type: str) -> tuple[Bonus, ...]:
        """The bonuses an inbound event of ``event_type`` may award."""
        return tuple(b for b in self.bonuses if b.trigger == event_type)

    def with_level_multipliers(self, multipliers: dict[str, int]) -> EarnRules:
        """A validated copy whose multipliers come from the level ladder (``levels.multipliers``)."""
        return EarnRules.model_validate({**self.model_dump(), "level_multipliers": dict(multipliers)})


@dataclass(frozen=True, slots=True)
class Earned:
    """``points`` to credit, and how many the daily cap took off (``capped_by``)."""

    points: int
    capped_by: int = 0

    @property
    def uncapped(self) -> int:
        return self.points + self.capped_by


def apply_cap(rules: EarnRules, points: int, earned_today: int) -> Earned:
    """``points`` within what is left of the daily cap after ``earned_today``."""
    amount("earned_today", earned_today, unit="points", allow_zero=True)
    if rules.daily_cap is None:
        return Earned(points)
    room = max(0, rules.daily_cap - earned_today)
    return Earned(min(points, room), max(0, points - room))


def points_for_order(rules: EarnRules, amount_fen: int, *, level: str | None = None, earned_today: int = 0) -> Earned:
    """Points for a paid order of ``amount_fen`` (what the customer paid, after discounts and
    points offsets, without shipping if the merchant says so: the service decides the base),
    at the customer's ``level``, capped by what is left of the day's cap."""
    amount("amount_fen", amount_fen, unit="fen", allow_zero=True)
    num, den = rules.ratio(level)
    return apply_cap(rules, amount_fen * num // den, earned_today)


def matures_at(rules: EarnRules, window_starts_at: datetime) -> datetime:
    """When an order's points stop being pending: ``return_window_days`` × 24 h after the start."""
    require_aware("window_starts_at", window_starts_at)
    return window_starts_at + timedelta(days=rules.return_window_days)


def once_key(event: BonusEvent | str, *, at: datetime, tz: tzinfo | str, ref: str | None = None) -> str:
    """What makes a bonus once-only: first_order ever, birthday_month per local year, sign_in per
    local day, review per ``ref`` (the reviewed order)."""
    event = BonusEvent(event)
    if event == BonusEvent.FIRST_ORDER:
        return "first_order"
    if event == BonusEvent.BIRTHDAY_MONTH:
        return f"birthday_month:{local_day(at, tz).year}"
    if event == BonusEvent.SIGN_IN:
        return f"sign_in:{local_day(at, tz).isoformat()}"
    if not ref:
        raise ValueError("a review bonus needs ref, the reviewed order's id")
    return f"review:{ref}"


@dataclass(frozen=True, slots=True)
class BonusAward:
    event: BonusEvent
    points: int
    capped_by: int
    once_key: str

    @property
    def event_id(self) -> str:
        """The cause to post the bonus under (``ledger.credit(event_id=...)``)."""
        return f"bonus:{self.once_key}"


def bonus_points(
    rules: EarnRules,
    event: BonusEvent | str,
    *,
    at: datetime,
    tz: tzinfo | str,
    earned_today: int = 0,
    birthday: date | None = None,
    ref: str | None = None,
) -> BonusAward | None:
    """The bonus for ``event`` at ``at``, within the daily cap; None when the merchant gives no
    such bonus, or a birthday-month bonus outside the customer's birthday month (or with no
    birthday on file). A capped-to-zero award is still returned (``points`` 0)."""
    require_aware("at", at)
    event = BonusEvent(event)
    bonus = rules.bonus(event)
    if bonus is None:
        return None
    if event == BonusEvent.BIRTHDAY_MONTH and (birthday is None or local_day(at, tz).month != birthday.month):
        return None
    earned = apply_cap(rules, bonus.points, earned_today)
    return BonusAward(event, earned.points, earned.capped_by, once_key(event, at=at, tz=tz, ref=ref))
