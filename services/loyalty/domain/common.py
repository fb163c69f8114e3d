"""What every loyalty rule shares (pure, no I/O): errors with codes, integer checks, the clock.

Money is integer fen (1 yuan = 100 fen), points and growth are integers: a float, a bool or a
string where an amount belongs is refused, never coerced. Every moment is timezone-aware (a naive
one is a programming error, ``ValueError``); the merchant's time zone, an IANA name such as
``Asia/Shanghai``, decides what "today", "this month" and "the end of next year" mean.

A refused operation raises ``LoyaltyError``: a machine-readable ``code``, the ``http_status`` to
answer (404 for something that does not exist, 409 for a balance or stock that cannot cover it,
422 for an amount that is wrong in itself), the ``field`` at fault when there is one, and a
message that says why in numbers.

Proportional removal on refunds (points, growth) is one rule, ``removed_on_refund``: after
refunds totalling ``refunded`` of ``paid`` fen, ``ceil(total × refunded / paid)`` of ``total``
are gone, so the customer keeps ``floor(total × (paid - refunded) / paid)`` (the shop's favour by
under one unit), a sequence of partial refunds removes exactly what one refund of the same sum
would, and a full refund removes exactly ``total``.
"""

from __future__ import annotations

import calendar
from datetime import date, datetime, time, timedelta, tzinfo
from enum import StrEnum
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field

MAX_FEN = 10**12  # ¥10 billion: far above any order, far below int64 overflow in SQL sums
MAX_POINTS = 10**12

# Validated model fields: JSON integers only (strict: 12.5, true or "100" are refused).
Fen = Annotated[int, Field(strict=True, ge=0, le=MAX_FEN)]
PositiveFen = Annotated[int, Field(strict=True, gt=0, le=MAX_FEN)]
PositivePoints = Annotated[int, Field(strict=True, gt=0, le=MAX_POINTS)]
Label = Annotated[str, Field(min_length=1, max_length=128)]
Slug = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$")]


class Strict(BaseModel):
    """Base of every rules model: unknown fields are refused, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class BonusEvent(StrEnum):
    """Actions that earn a fixed bonus (points in ``earning``, growth in ``levels``)."""

    FIRST_ORDER = "first_order"
    BIRTHDAY_MONTH = "birthday_month"
    SIGN_IN = "sign_in"
    REVIEW = "review"


class Code(StrEnum):
    """Why an operation was refused."""

    INVALID_AMOUNT = "invalid_amount"
    NEGATIVE_AMOUNT = "negative_amount"
    INSUFFICIENT_POINTS = "insufficient_points"
    INSUFFICIENT_BALANCE = "insufficient_balance"
    EXCEEDS_CAP = "exceeds_cap"
    BELOW_MINIMUM = "below_minimum"
    REFUND_EXCEEDS = "refund_exceeds"
    NOTHING_TO_REFUND = "nothing_to_refund"
    UNKNOWN_ITEM = "unknown_item"
    UNKNOWN_PLAN = "unknown_plan"
    UNKNOWN_LEVEL = "unknown_level"
    ITEM_UNAVAILABLE = "item_unavailable"
    OUT_OF_STOCK = "out_of_stock"
    LIMIT_REACHED = "limit_reached"
    REASON_REQUIRED = "reason_required"


# 422: the amount is wrong whatever the state; 409: the balance, stock or history cannot cover
# it now; 404: no such thing.
HTTP_STATUS: dict[str, int] = {
    Code.INVALID_AMOUNT: 422,
    Code.NEGATIVE_AMOUNT: 422,
    Code.EXCEEDS_CAP: 422,
    Code.BELOW_MINIMUM: 422,
    Code.UNKNOWN_LEVEL: 422,
    Code.REASON_REQUIRED: 422,
    Code.INSUFFICIENT_POINTS: 409,
    Code.INSUFFICIENT_BALANCE: 409,
    Code.REFUND_EXCEEDS: 409,
    Code.NOTHING_TO_REFUND: 409,
    Code.ITEM_UNAVAILABLE: 409,
    Code.OUT_OF_STOCK: 409,
    Code.LIMIT_REACHED: 409,
    Code.UNKNOWN_ITEM: 404,
    Code.UNKNOWN_PLAN: 404,
}


class LoyaltyError(Exception):
    """A refused operation: ``code`` (machine-readable), ``http_status``, ``field`` and a message."""

    def __init__(self, code: Code, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.code = str(code)
        self.message = message
        self.field = field
        self.http_status = HTTP_STATUS[code]

    def __repr__(self) -> str:
        return f"LoyaltyError({self.code!r}, {self.message!r}, field={self.field!r}, http_status={self.http_status})"

    def as_dict(self) -> dict[str, object]:
        """The body of the 4xx answer."""
        return {"code": self.code, "message": self.message, "field": self.field}


def yuan(fen: int) -> str:
    """¥12.34 for 1234 fen: for messages only, never for arithmetic."""
    sign = "-" if fen < 0 else ""
    return f"{sign}¥{abs(fen) // 100}.{abs(fen) % 100:02d}"


def amount(name: str, value: object, *, unit: str, allow_zero: bool = False) -> int:
    """``value`` as an integer amount (fen, points, growth), or ``LoyaltyError`` naming ``name``:
    ``invalid_amount`` for a non-integer (floats, bools and strings included) or a forbidden zero,
    ``negative_amount`` below zero."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise LoyaltyError(Code.INVALID_AMOUNT, f"{name} must be a whole number of {unit}, got {value!r}", field=name)
    if value < 0:
        raise LoyaltyError(Code.NEGATIVE_AMOUNT, f"{name} must not be negative, got {value} {unit}", field=name)
    if value == 0 and not allow_zero:
        raise LoyaltyError(Code.INVALID_AMOUNT, f"{name} must be at least 1 {unit}, got 0", field=name)
    return value


def ceil_div(a: int, b: int) -> int:
    """⌈a / b⌉ for integers, b > 0 (exact, unlike math.ceil(a / b) on large values)."""
    return -(-a // b)


def removed_on_refund(total: int, paid_fen: int, refunded_fen: int) -> int:
    """How much of ``total`` (points or growth earned on ``paid_fen``) refunds totalling
    ``refunded_fen`` take away: ``ceil(total × refunded / paid)``. Callers take the difference
    between the totals before and after a refund; see the module docstring for why cumulative."""
    if paid_fen <= 0:
        return 0
    if not 0 <= refunded_fen <= paid_fen:
        raise ValueError(f"refunded_fen {refunded_fen} must be within 0..{paid_fen} (the paid amount)")
    return ceil_div(total * refunded_fen, paid_fen)


# --- the clock ----------------------------------------------------------------------------------


def zone(tz: tzinfo | str) -> tzinfo:
    """A tzinfo from an IANA name (e.g. Asia/Shanghai) or a tzinfo; unknown names raise ValueError."""
    if isinstance(tz, tzinfo):
        return tz
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as e:
        raise ValueError(f"unknown time zone {tz!r}: use an IANA name such as 'Asia/Shanghai'") from e


def require_aware(name: str, moment: datetime) -> None:
    if not isinstance(moment, datetime):
        raise TypeError(f"{name} must be a datetime, got {moment!r}")
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got the naive {moment.isoformat()}")


def local_day(moment: datetime, tz: tzinfo | str) -> date:
    """The merchant's calendar day of ``moment`` (the key of per-day caps and sign-ins)."""
    require_aware("moment", moment)
    return moment.astimezone(zone(tz)).date()


def local_midnight(day: date, tz: tzinfo | str) -> datetime:
    """The instant the merchant's local ``day`` begins."""
    return datetime.combine(day, time(), tzinfo=zone(tz))


def day_bounds(day: date, tz: tzinfo | str) -> tuple[datetime, datetime]:
    """[start, end) of the merchant's local ``day``, for ``occurred_at >= start AND < end`` in SQL."""
    return local_midnight(day, tz), local_midnight(day + timedelta(days=1), tz)


def add_months(moment: datetime, months: int, tz: tzinfo | str) -> datetime:
    """``moment`` plus whole calendar months on the merchant's clock, the day clamped to the
    month's end (Jan 31 + 1 month = Feb 28/29); the local time of day is kept."""
    require_aware("moment", moment)
    tzi = zone(tz)
    local = moment.astimezone(tzi)
    index = local.year * 12 + (local.month - 1) + months
    year, month = divmod(index, 12)
    month += 1
    day = min(local.day, calendar.monthrange(year, month)[1])
    return datetime.combine(date(year, month, day), local.timetz().replace(tzinfo=None), tzinfo=tzi)
