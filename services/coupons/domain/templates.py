"""Coupon templates: what a coupon gives, on what, when, and how it stacks (pure, no I/O).

A template is validated as a whole; every rejection names the field and says why. Money is
integer fen (1 yuan = 100 fen) and must be given as a JSON integer, never a float. Times are
timezone-aware; weekdays and hours are read on the merchant's local clock.

    {"name": "8折回购券",
     "kind": {"type": "percent", "pay_percent": 80, "max_discount_fen": 5000},
     "scope": {"categories": ["milk-powder"]},
     "valid_days": 30, "weekdays": [6, 7], "hours": [[9, 12], [18, 22]]}

Kinds (``kind.type``):

- ``percent``: the customer pays ``pay_percent`` % of the in-scope amount (8折 → 80), optionally
  capped at ``max_discount_fen``;
- ``amount_off`` (满减): ``amount_off_fen`` off once the in-scope amount reaches ``threshold_fen``;
- ``no_threshold`` (无门槛): ``amount_off_fen`` off any order with something in scope;
- ``free_shipping`` (包邮): the shipping fee, optionally capped at ``max_shipping_fen``, and
  optionally only on the ``nth_order_today``-th (or later) paid order of the local day.

Stacking: an ``exclusive`` coupon is used alone; otherwise at most one coupon per stack group per
order. Without an explicit ``stack_group`` the discount kinds share ``"discount"`` and
free shipping is ``"shipping"``, so by default one discount and one free shipping combine.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo
from enum import StrEnum
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    StrictInt,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)

DISCOUNT_GROUP = "discount"
SHIPPING_GROUP = "shipping"
MAX_VALID_DAYS = 3650

# Money: JSON integers only (strict: 12.5 or "1250" are refused, not coerced).
Fen = Annotated[int, Field(strict=True, ge=0)]
PositiveFen = Annotated[int, Field(strict=True, gt=0)]
Label = Annotated[str, Field(min_length=1, max_length=128)]


class Reason(StrEnum):
    """Why a coupon gives nothing here and now: machine-readable codes shared by cart and wallet."""

    NOT_YET_VALID = "not_yet_valid"
    EXPIRED = "expired"
    OUTSIDE_WEEKDAYS = "outside_weekdays"
    OUTSIDE_HOURS = "outside_hours"
    OUT_OF_SCOPE = "out_of_scope"
    BELOW_THRESHOLD = "below_threshold"
    NOT_NTH_ORDER_TODAY = "not_nth_order_today"
    NOTHING_TO_DISCOUNT = "nothing_to_discount"
    # A payment's coupon that cannot be combined with those before it (cart.stacking_conflict).
    STACKING_CONFLICT = "stacking_conflict"


@dataclass(frozen=True, slots=True)
class Verdict:
    """Usable or not, and if not, why (``code``) in words (``message``). Truthy when usable."""

    code: Reason | None = None
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.code is None

    def __bool__(self) -> bool:
        return self.code is None


USABLE = Verdict()


def yuan(fen: int) -> str:
    """¥12.34 for 1234 fen: for messages only, never for arithmetic."""
    sign = "-" if fen < 0 else ""
    return f"{sign}¥{abs(fen) // 100}.{abs(fen) % 100:02d}"


def zone(tz: tzinfo | str) -> tzinfo:
    """A tzinfo from an IANA name (e.g. Asia/Shanghai) or a tzinfo; unknown names raise ValueError."""
    if isinstance(tz, tzinfo):
        return tz
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as e:
        raise ValueError(f"unknown time zone {tz!r}: use an IANA name such as 'Asia/Shanghai'") from e


def require_aware(name: str, moment: datetime) -> None:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got the naive {moment.isoformat()}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- kinds --------------------------------------------------------------------------------------


class PercentOff(_Strict):
    """折扣券: pay ``pay_percent`` % of the in-scope amount (8折 → 80, 8.5折 → 85)."""

    type: Literal["percent"] = "percent"
    pay_percent: StrictInt = Field(description="The share the customer pays, 1..99: 8折 = 80.")
    max_discount_fen: PositiveFen | None = Field(default=None, description="The most one redemption takes off.")

    @field_validator("pay_percent")
    @classmethod
    def _a_real_discount(cls, v: int) -> int:
        hint = "pay_percent is the share the customer pays, 1..99 (8折 = 80)"
        if v < 0:
            raise ValueError(f"{hint}: {v} would be a discount above 100% (the shop would pay the customer)")
        if v == 0:
            raise ValueError(
                f"{hint}: 0 is a 100% discount, the goods for free; use a no_threshold coupon for a fixed amount off"
            )
        if v == 100:
            raise ValueError(f"{hint}: 100 gives no discount at all")
        if v > 100:
            raise ValueError(f"{hint}: {v} would charge {v}% of the price, a negative discount")
        return v


class AmountOff(_Strict):
    """满减券: ``amount_off_fen`` off once the in-scope amount reaches ``threshold_fen``."""

    type: Literal["amount_off"] = "amount_off"
    amount_off_fen: PositiveFen
    threshold_fen: Fen

    @field_validator("threshold_fen")
    @classmethod
    def _threshold_covers_the_discount(cls, v: int, info: ValidationInfo) -> int:
        if v == 0:
            raise ValueError("threshold_fen is 0: a coupon without a threshold is the no_threshold kind")
        off = info.data.get("amount_off_fen")
        if off is not None and v < off:
            raise ValueError(
                f"threshold_fen {v} ({yuan(v)}) is below the discount amount_off_fen {off} "
                f"({yuan(off)}): the threshold must be at least the amount taken off"
            )
        return v


class NoThreshold(_Strict):
    """无门槛券: ``amount_off_fen`` off any order with something in scope (never below zero)."""

    type: Literal["no_threshold"] = "no_threshold"
    amount_off_fen: PositiveFen


class FreeShipping(_Strict):
    """包邮券: the shipping fee, capped at ``max_shipping_fen`` if given; with ``nth_order_today``
    = N only on the customer's N-th (or later) paid order of the same local day."""

    type: Literal["free_shipping"] = "free_shipping"
    nth_order_today: StrictInt | None = Field(default=None, description="2 = the second paid order of the local day.")
    max_shipping_fen: PositiveFen | None = None

    @field_validator("nth_order_today")
    @classmethod
    def _second_or_later(cls, v: int | None) -> int | None:
        if v is not None and v < 2:
            raise ValueError(f"nth_order_today must be 2 or more (the first order of a day needs no counting), got {v}")
        return v


Kind = Annotated[PercentOff | AmountOff | NoThreshold | FreeShipping, Field(discriminator="type")]


# --- scope --------------------------------------------------------------------------------------


def _no_duplicates(field: str, values: list[str]) -> list[str]:
    seen: set[str] = set()
    for v in values:
        if v in seen:
            raise ValueError(f"{field} lists {v!r} twice")
        seen.add(v)
    return values


class CategoryScope(_Strict):
    categories: list[Label] = Field(min_length=1)

    @field_validator("categories")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        return _no_duplicates("categories", v)


class SkuScope(_Strict):
    skus: list[Label] = Field(min_length=1)

    @field_validator("skus")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        return _no_duplicates("skus", v)


def _scope_kind(value: object) -> str | None:
    if value == "all":
        return "all"
    if isinstance(value, dict):
        return next(iter(value)) if len(value) == 1 and next(iter(value)) in ("categories", "skus") else None
    if isinstance(value, CategoryScope):
        return "categories"
    return "skus" if isinstance(value, SkuScope) else None


Scope = Annotated[
    Annotated[Literal["all"], Tag("all")]
    | Annotated[CategoryScope, Tag("categories")]
    | Annotated[SkuScope, Tag("skus")],
    Discriminator(
        _scope_kind,
        custom_error_type="invalid_scope",
        custom_error_message='scope is "all", {"categories": [...]} or {"skus": [...]}',
    ),
]


def in_scope(scope: Literal["all"] | CategoryScope | SkuScope, sku: str, category: str | None) -> bool:
    """Whether a cart line (by its sku and category) is one the coupon applies to."""
    if isinstance(scope, CategoryScope):
        return category is not None and category in scope.categories
    if isinstance(scope, SkuScope):
        return sku in scope.skus
    return True


# --- the template -------------------------------------------------------------------------------


class CouponTemplate(_Strict):
    """A coupon definition. Validity is either fixed (``valid_from``/``valid_until``) or
    ``valid_days`` from issue; ``weekdays`` (ISO, 1 = Monday) and ``hours`` ([start, end) local
    hours) narrow when it can be used. No merchant_id here: the service layer owns tenancy."""

    name: Annotated[str, Field(min_length=1, max_length=64)]
    description: Annotated[str, Field(max_length=1000)] = ""
    kind: Kind
    scope: Scope = "all"
    valid_from: AwareDatetime | None = None
    valid_until: AwareDatetime | None = None
    valid_days: StrictInt | None = Field(default=None, description=f"Days from issue, 1..{MAX_VALID_DAYS}.")
    weekdays: list[StrictInt] | None = Field(default=None, description="ISO weekdays it can be used on (1 = Monday).")
    hours: list[tuple[StrictInt, StrictInt]] | None = Field(
        default=None, description="Local [start_hour, end_hour) windows, e.g. [[9, 12], [18, 22]]."
    )
    stock: StrictInt | None = Field(default=None, description="How many coupons can ever be issued; null = unlimited.")
    per_customer_limit: StrictInt | None = Field(
        default=1, description="How many coupons of this template one customer can ever get; null = no limit."
    )
    exclusive: StrictBool = Field(default=False, description="Cannot be combined with any other coupon.")
    stack_group: Annotated[str, Field(min_length=1, max_length=32)] | None = Field(
        default=None, description='At most one coupon per group per order; default "discount" or "shipping".'
    )
    cost_fen_per_redemption: Fen | None = Field(
        default=None, description="The merchant's cost of one redemption; null = the discount actually given."
    )
    public: StrictBool = Field(default=False, description="Customers may claim it themselves.")

    @field_validator("valid_days")
    @classmethod
    def _days_in_range(cls, v: int | None) -> int | None:
        if v is not None and not 1 <= v <= MAX_VALID_DAYS:
            raise ValueError(f"valid_days must be 1..{MAX_VALID_DAYS}, got {v}")
        return v

    @field_validator("weekdays")
    @classmethod
    def _iso_weekdays(cls, v: list[int] | None) -> list[int] | None:
        if v is None:
            return v
        if not v:
            raise ValueError("weekdays is empty: the coupon could never be used; omit it to allow every day")
        for day in v:
            if not 1 <= day <= 7:
                raise ValueError(f"weekdays are ISO numbers 1 (Monday) .. 7 (Sunday), got {day}")
        if len(set(v)) != len(v):
            raise ValueError("weekdays lists a day twice")
        return sorted(v)

    @field_validator("hours")
    @classmethod
    def _hour_windows(cls, v: list[tuple[int, int]] | None) -> list[tuple[int, int]] | None:
        if v is None:
            return v
        if not v:
            raise ValueError("hours is empty: the coupon could never be used; omit it to allow all day")
        for start, end in v:
            if not (0 <= start < end <= 24):
                raise ValueError(f"hours window [{start}, {end}) must satisfy 0 <= start < end <= 24")
        ordered = sorted(v)
        for (_, end), (start, _) in itertools.pairwise(ordered):
            if start < end:
                raise ValueError(f"hours windows overlap at hour {start}")
        return ordered

    @field_validator("stock", "per_customer_limit")
    @classmethod
    def _at_least_one(cls, v: int | None, info: ValidationInfo) -> int | None:
        if v is not None and v < 1:
            raise ValueError(f"{info.field_name} must be at least 1, got {v}")
        return v

    @model_validator(mode="after")
    def _one_validity(self) -> CouponTemplate:
        fixed = self.valid_from is not None or self.valid_until is not None
        if fixed and self.valid_days is not None:
            raise ValueError("validity: give valid_days, or valid_from and valid_until, not both")
        if not fixed and self.valid_days is None:
            raise ValueError("validity: give valid_days (days from issue), or valid_from and valid_until")
        if fixed:
            if self.valid_from is None or self.valid_until is None:
                missing = "valid_from" if self.valid_from is None else "valid_until"
                raise ValueError(
                    f"validity: a fixed window needs both valid_from and valid_until; {missing} is missing"
                )
            if self.valid_until <= self.valid_from:
                raise ValueError(
                    f"valid_until {self.valid_until.isoformat()} must be after valid_from {self.valid_from.isoformat()}"
                )
        return self

    @property
    def group(self) -> str:
        """The effective stack group: ``stack_group`` or the kind's default."""
        if self.stack_group is not None:
            return self.stack_group
        return SHIPPING_GROUP if isinstance(self.kind, FreeShipping) else DISCOUNT_GROUP


def validity_window(template: CouponTemplate, issued_at: datetime) -> tuple[datetime, datetime]:
    """(starts_at, expires_at) of a coupon issued at ``issued_at``: the fixed window, or
    [issued_at, issued_at + valid_days × 24 h). Usable while starts_at <= moment < expires_at."""
    require_aware("issued_at", issued_at)
    if template.valid_days is not None:
        return issued_at, issued_at + timedelta(days=template.valid_days)
    assert template.valid_from is not None and template.valid_until is not None  # by validation
    return template.valid_from, template.valid_until


def issuable_at(template: CouponTemplate, moment: datetime) -> Verdict:
    """A fixed-window template can no longer be issued once its window has ended."""
    require_aware("moment", moment)
    if template.valid_until is not None and moment >= template.valid_until:
        return Verdict(
            Reason.EXPIRED,
            f"the template's validity ended at {template.valid_until.isoformat()}; "
            "a coupon issued now could never be used",
        )
    return USABLE


def usable_at(
    template: CouponTemplate,
    moment: datetime,
    tz: tzinfo | str,
    *,
    starts_at: datetime | None = None,
    expires_at: datetime | None = None,
) -> Verdict:
    """Whether a coupon of this template can be used at ``moment``, on the merchant's clock ``tz``.

    The window is the coupon's own (``starts_at``/``expires_at`` as stored at issue) or, when not
    given, the template's fixed window; a ``valid_days`` template needs the coupon's
    ``expires_at``. Checked in order: not_yet_valid, expired, outside_weekdays, outside_hours."""
    require_aware("moment", moment)
    if expires_at is None:
        if template.valid_until is None:
            raise ValueError("a valid_days template has no window of its own: pass the coupon's expires_at")
        expires_at = template.valid_until
    if starts_at is None:
        starts_at = template.valid_from
    if starts_at is not None and moment < starts_at:
        return Verdict(Reason.NOT_YET_VALID, f"usable from {starts_at.isoformat()}")
    if moment >= expires_at:
        return Verdict(Reason.EXPIRED, f"expired at {expires_at.isoformat()}")
    local = moment.astimezone(zone(tz))
    if template.weekdays is not None and local.isoweekday() not in template.weekdays:
        days = ", ".join(str(d) for d in template.weekdays)
        return Verdict(Reason.OUTSIDE_WEEKDAYS, f"usable on ISO weekdays {days} only; today is {local.isoweekday()}")
    if template.hours is not None and not any(s <= local.hour < e for s, e in template.hours):
        spans = ", ".join(f"{s:02d}:00-{e:02d}:00" for s, e in template.hours)
        return Verdict(Reason.OUTSIDE_HOURS, f"usable {spans} local time only; it is {local:%H:%M}")
    return USABLE


def face_value_fen(template: CouponTemplate) -> int | None:
    """The most one redemption can take off, or None when only the cart bounds it (a percent
    coupon without max_discount_fen, free shipping without max_shipping_fen)."""
    kind = template.kind
    if isinstance(kind, (AmountOff, NoThreshold)):
        return kind.amount_off_fen
    if isinstance(kind, PercentOff):
        return kind.max_discount_fen
    return kind.max_shipping_fen


def liability_fen(template: CouponTemplate) -> int | None:
    """What issuing one coupon can cost the merchant at most: ``cost_fen_per_redemption`` when
    set, else the face value; None when unbounded. Issuance budgets reserve this much."""
    if template.cost_fen_per_redemption is not None:
        return template.cost_fen_per_redemption
    return face_value_fen(template)
