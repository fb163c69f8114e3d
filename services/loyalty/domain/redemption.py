"""Redeeming points: a cash offset at checkout, and the points mall (pure, validated).

    {"points_per_yuan": 100, "max_share_percent": 50, "max_fen_per_order": 10000,
     "min_points": 100, "whole_yuan": false}

Cash offset: ``points_per_yuan`` points = ¥1, on at most ``max_share_percent`` % of the amount
the offset may apply to (``order_fen``: the service decides, e.g. goods after coupons, without
shipping), and at most ``max_fen_per_order`` if set. The cap is ``⌊order_fen × share / 100⌋``
fen.

Exchange unit: points and fen move together in whole units that convert exactly, ``u_points =
N / g`` points for ``u_fen = 100 / g`` fen where ``g = gcd(100, N)`` (N = 100: 1 point = 1 fen;
N = 10: 1 point = 10 fen; N = 150: 3 points = 2 fen); ``whole_yuan`` makes the unit ¥1 (N points).
Every offset is a whole number of units, so the customer never pays for a fraction of a point
and the shop never gives a fen the points do not buy. ``max_offset`` floors to the units that
both the cap and the balance allow; ``offset_for_points`` refuses a count that is not a whole
number of units (``invalid_amount``) rather than round it silently.

Points mall: items cost ``points`` each and give a coupon (``reward.template_id``: the coupons
service issues it, triggered by the loyalty event) or a gift (``reward.sku``, with ``stock``).
``redeem_item`` checks, in this order: ``unknown_item`` (404), ``item_unavailable`` (inactive or
outside its window, 409), a bad quantity (``invalid_amount``/``negative_amount``, 422),
``limit_reached`` (the per-customer limit, 409), ``out_of_stock`` (409), ``insufficient_points``
(409). The stock and balance checks here answer the customer precisely; the database enforces
both under concurrency (``UPDATE … SET left = left - :q WHERE left >= :q``, and the ledger's
locked balance).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Literal

from pydantic import (
    AwareDatetime,
    Field,
    StrictBool,
    StrictInt,
    field_validator,
    model_validator,
)

from services.loyalty.domain.common import (
    Code,
    Label,
    LoyaltyError,
    PositiveFen,
    PositivePoints,
    Strict,
    amount,
    require_aware,
    yuan,
)

MAX_QUANTITY = 99


class OffsetRules(Strict):
    points_per_yuan: PositivePoints = Field(default=100, description="N points = ¥1.")
    max_share_percent: StrictInt = Field(default=50, description="At most this share of the order, 1..100.")
    max_fen_per_order: PositiveFen | None = Field(default=None, description="At most this much off one order.")
    min_points: StrictInt = Field(default=0, description="Fewer points than this cannot be used.")
    whole_yuan: StrictBool = Field(default=False, description="Offsets in whole yuan only.")

    @field_validator("max_share_percent")
    @classmethod
    def _share(cls, v: int) -> int:
        if not 1 <= v <= 100:
            raise ValueError(f"max_share_percent must be 1..100, got {v}")
        return v

    @field_validator("min_points")
    @classmethod
    def _min(cls, v: int) -> int:
        if v < 0:
            raise ValueError(f"min_points must not be negative, got {v}")
        return v

    @property
    def unit(self) -> tuple[int, int]:
        """(points, fen) of one exchange unit."""
        n = self.points_per_yuan
        if self.whole_yuan:
            return n, 100
        g = math.gcd(100, n)
        return n // g, 100 // g


@dataclass(frozen=True, slots=True)
class Offset:
    points: int = 0
    fen: int = 0


def cap_fen(rules: OffsetRules, order_fen: int) -> int:
    """The most the offset may take off an order of ``order_fen``."""
    amount("order_fen", order_fen, unit="fen", allow_zero=True)
    cap = order_fen * rules.max_share_percent // 100
    return cap if rules.max_fen_per_order is None else min(cap, rules.max_fen_per_order)


def max_offset(rules: OffsetRules, *, order_fen: int, balance: int) -> Offset:
    """The largest offset the cap and the balance allow (nothing if it is below ``min_points``)."""
    amount("balance", balance, unit="points", allow_zero=True)
    unit_points, unit_fen = rules.unit
    units = min(cap_fen(rules, order_fen) // unit_fen, balance // unit_points)
    if not units or units * unit_points < rules.min_points:
        return Offset()
    return Offset(units * unit_points, units * unit_fen)


def offset_for_points(rules: OffsetRules, points: int, *, order_fen: int, balance: int) -> Offset:
    """The offset ``points`` buy on this order, or the reason they cannot be used: a count that
    is not a whole number of units (``invalid_amount``), below ``min_points`` (``below_minimum``),
    above the balance (``insufficient_points``), or above the cap (``exceeds_cap``). 0 is no offset."""
    amount("points", points, unit="points", allow_zero=True)
    amount("balance", balance, unit="points", allow_zero=True)
    if not points:
        return Offset()
    unit_points, unit_fen = rules.unit
    if points % unit_points:
        raise LoyaltyError(
            Code.INVALID_AMOUNT,
            f"points are used in steps of {unit_points} ({yuan(unit_fen)} each); {points} is not "
            "a whole number of steps",
            field="points",
        )
    if points < rules.min_points:
        raise LoyaltyError(
            Code.BELOW_MINIMUM, f"at least {rules.min_points} points per order, got {points}", field="points"
        )
    if points > balance:
        raise LoyaltyError(
            Code.INSUFFICIENT_POINTS, f"using {points} points needs more than the {balance} available", field="points"
        )
    fen = points // unit_points * unit_fen
    cap = cap_fen(rules, order_fen)
    if fen > cap:
        most = cap // unit_fen * unit_points
        raise LoyaltyError(
            Code.EXCEEDS_CAP,
            f"{points} points would take {yuan(fen)} off, above the {yuan(cap)} cap "
            f"({rules.max_share_percent}% of {yuan(order_fen)}"
            + (f", at most {yuan(rules.max_fen_per_order)} per order" if rules.max_fen_per_order else "")
            + f"); use at most {most} points",
            field="points",
        )
    return Offset(points, fen)


# --- the points mall ----------------------------------------------------------------------------


class CouponReward(Strict):
    type: Literal["coupon"] = "coupon"
    template_id: Label


class GiftReward(Strict):
    type: Literal["gift"] = "gift"
    sku: Label


Reward = Annotated[CouponReward | GiftReward, Field(discriminator="type")]


class MallItem(Strict):
    item_id: Label
    name: Label
    points: PositivePoints = Field(description="Points per item.")
    reward: Reward
    stock: StrictInt | None = Field(default=None, description="Items ever available; required for a gift.")
    per_customer_limit: StrictInt | None = Field(default=None, description="Most one customer may redeem; null = any.")
    active: StrictBool = True
    available_from: AwareDatetime | None = None
    available_until: AwareDatetime | None = None

    @field_validator("stock")
    @classmethod
    def _stock(cls, v: int | None) -> int | None:
        if v is not None and v < 0:
            raise ValueError(f"stock must not be negative, got {v}")
        return v

    @field_validator("per_customer_limit")
    @classmethod
    def _limit(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError(f"per_customer_limit must be at least 1 (null = no limit), got {v}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> MallItem:
        if isinstance(self.reward, GiftReward) and self.stock is None:
            raise ValueError(f"item {self.item_id!r}: a gift needs stock (how many there are to give)")
        if self.available_from and self.available_until and self.available_until <= self.available_from:
            raise ValueError(f"item {self.item_id!r}: available_until must be after available_from")
        return self


class Catalogue(Strict):
    items: list[MallItem] = Field(default_factory=list)

    @field_validator("items")
    @classmethod
    def _unique(cls, v: list[MallItem]) -> list[MallItem]:
        seen: set[str] = set()
        for item in v:
            if item.item_id in seen:
                raise ValueError(f"items lists item_id {item.item_id!r} twice")
            seen.add(item.item_id)
        return v

    def get(self, item_id: str) -> MallItem:
        """The item, or ``unknown_item`` (404)."""
        for item in self.items:
            if item.item_id == item_id:
                return item
        raise LoyaltyError(Code.UNKNOWN_ITEM, f"no mall item {item_id!r}", field="item_id")

    def on_sale(self, now: datetime) -> tuple[MallItem, ...]:
        """The items a customer can see at ``now`` (active and inside their window)."""
        require_aware("now", now)
        return tuple(item for item in self.items if _unavailable(item, now) is None)


def _unavailable(item: MallItem, now: datetime) -> str | None:
    if not item.active:
        return "is withdrawn"
    if item.available_from is not None and now < item.available_from:
        return f"is on sale from {item.available_from.isoformat()}"
    if item.available_until is not None and now >= item.available_until:
        return f"was on sale until {item.available_until.isoformat()}"
    return None


@dataclass(frozen=True, slots=True)
class MallRedemption:
    """What to do: take ``points`` (``ledger.redeem``), then issue or ship the ``reward``."""

    item_id: str
    quantity: int
    points: int
    reward: CouponReward | GiftReward


def redeem_item(
    catalogue: Catalogue,
    item_id: str,
    *,
    balance: int,
    now: datetime,
    quantity: int = 1,
    stock_left: int | None = None,
    redeemed_before: int = 0,
) -> MallRedemption:
    """Check a mall redemption. ``stock_left`` is the live stock (default: the item's configured
    ``stock``); ``redeemed_before`` is how many of the item the customer already has."""
    require_aware("now", now)
    item = catalogue.get(item_id)
    why = _unavailable(item, now)
    if why is not None:
        raise LoyaltyError(Code.ITEM_UNAVAILABLE, f"item {item_id!r} {why}", field="item_id")
    amount("quantity", quantity, unit="items")
    if quantity > MAX_QUANTITY:
        raise LoyaltyError(Code.INVALID_AMOUNT, f"quantity must be 1..{MAX_QUANTITY}, got {quantity}", field="quantity")
    amount("balance", balance, unit="points", allow_zero=True)
    limit = item.per_customer_limit
    if limit is not None and redeemed_before + quantity > limit:
        raise LoyaltyError(
            Code.LIMIT_REACHED,
            f"item {item_id!r} is limited to {limit} per customer; you have "
            f"{redeemed_before}, so {max(0, limit - redeemed_before)} more at most",
            field="quantity",
        )
    left = item.stock if stock_left is None else stock_left
    if left is not None and quantity > left:
        raise LoyaltyError(
            Code.OUT_OF_STOCK, f"item {item_id!r} has {max(0, left)} left, {quantity} asked", field="item_id"
        )
    points = item.points * quantity
    if points > balance:
        raise LoyaltyError(
            Code.INSUFFICIENT_POINTS,
            f"{quantity} × {item_id!r} costs {points} points, more than the {balance} available",
            field="points",
        )
    return MallRedemption(item_id, quantity, points, item.reward)
