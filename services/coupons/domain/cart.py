"""Pricing a cart with coupons: what one coupon takes off, and the best combination (pure).

Rounding and bounds, all in integer fen:

- percent: ``floor(in_scope_fen * (100 - pay_percent) / 100)``, i.e. rounded in the customer's
  disfavour by under 1 fen, then capped at ``max_discount_fen`` and at the in-scope amount;
- amount_off / no_threshold: ``amount_off_fen``, never more than the in-scope amount;
- free_shipping: the cart's ``shipping_fen``, capped at ``max_shipping_fen``.

Thresholds and percentages count the in-scope lines only, at the cart's amounts (each coupon is
priced against the cart as given, not after another coupon). When coupons combine, the total off
each line never exceeds the line's amount and the shipping discount never exceeds the fee: the
chosen coupons are applied in (expires_at, coupon_id) order, each taking at most what is left of
its in-scope lines, spread over them in proportion to what is left (largest remainder, ties to
the earlier line), so every pick also says how much it took off each line (for refunds).

A coupon that gives nothing says why in a machine-readable ``reason`` (``templates.Reason``):
``not_yet_valid``, ``expired``, ``outside_weekdays``, ``outside_hours`` (usability at a moment),
``out_of_scope``, ``below_threshold``, ``not_nth_order_today``, ``nothing_to_discount`` (the cart).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from services.coupons.domain.templates import (
    AmountOff,
    CouponTemplate,
    Fen,
    FreeShipping,
    Label,
    NoThreshold,
    PercentOff,
    Reason,
    in_scope,
    require_aware,
    usable_at,
    yuan,
)

# The search keeps, per stack group, the few best coupons, and at most this many groups: at most
# (PER_GROUP + 1) ** MAX_GROUPS = 1,024 combinations priced, plus one per exclusive coupon.
PER_GROUP = 3
MAX_GROUPS = 5

On = Literal["goods", "shipping"]


class CartLine(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    sku: Label
    category: Label | None = None
    quantity: Annotated[int, Field(strict=True, ge=1)]
    amount_fen: Fen = Field(description="The line total (unit price × quantity) before coupons.")


class Cart(BaseModel):
    """An order being priced. ``paid_orders_today`` counts the customer's orders already paid on
    the merchant's local day (so this order is number ``paid_orders_today + 1``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    lines: list[CartLine] = Field(min_length=1)
    shipping_fen: Fen = 0
    paid_orders_today: Annotated[int, Field(strict=True, ge=0)] = 0

    @property
    def goods_fen(self) -> int:
        return sum(line.amount_fen for line in self.lines)

    def scoped(self, template: CouponTemplate) -> list[int]:
        """Indexes of the lines the template applies to."""
        return [i for i, line in enumerate(self.lines) if in_scope(template.scope, line.sku, line.category)]

    def in_scope_fen(self, template: CouponTemplate) -> int:
        return sum(self.lines[i].amount_fen for i in self.scoped(template))


@dataclass(frozen=True, slots=True)
class Applied:
    """What one coupon takes off this cart on its own; ``reason`` is None when it applies."""

    discount_fen: int
    on: On
    reason: Reason | None = None
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.reason is None


def _refused(on: On, reason: Reason, message: str) -> Applied:
    return Applied(0, on, reason, message)


def discount_for(template: CouponTemplate, cart: Cart) -> Applied:
    """What the template takes off the cart, ignoring time (see ``evaluate`` for a held coupon)."""
    kind = template.kind
    scoped = cart.scoped(template)
    if isinstance(kind, FreeShipping):
        if not scoped:
            return _refused("shipping", Reason.OUT_OF_SCOPE, "nothing in the cart is covered by this coupon")
        order_number = cart.paid_orders_today + 1
        if kind.nth_order_today is not None and order_number < kind.nth_order_today:
            return _refused(
                "shipping",
                Reason.NOT_NTH_ORDER_TODAY,
                f"ships free from the customer's paid order number {kind.nth_order_today} of the day; "
                f"this is number {order_number}",
            )
        off = cart.shipping_fen if kind.max_shipping_fen is None else min(cart.shipping_fen, kind.max_shipping_fen)
        if off == 0:
            return _refused("shipping", Reason.NOTHING_TO_DISCOUNT, "this order has no shipping fee")
        return Applied(off, "shipping")

    if not scoped:
        return _refused("goods", Reason.OUT_OF_SCOPE, "nothing in the cart is covered by this coupon")
    base = sum(cart.lines[i].amount_fen for i in scoped)
    if isinstance(kind, PercentOff):
        off = base * (100 - kind.pay_percent) // 100
        if kind.max_discount_fen is not None:
            off = min(off, kind.max_discount_fen)
    elif isinstance(kind, AmountOff):
        if base < kind.threshold_fen:
            return _refused(
                "goods",
                Reason.BELOW_THRESHOLD,
                f"the covered items come to {yuan(base)}, below the threshold {yuan(kind.threshold_fen)} "
                f"({yuan(kind.threshold_fen - base)} more to go)",
            )
        off = kind.amount_off_fen
    else:
        assert isinstance(kind, NoThreshold)
        off = kind.amount_off_fen
    off = min(off, base)
    if off == 0:
        return _refused(
            "goods", Reason.NOTHING_TO_DISCOUNT, f"the covered items come to {yuan(base)}: nothing to take off"
        )
    return Applied(off, "goods")


@dataclass(frozen=True, slots=True)
class Held:
    """A coupon in the customer's wallet, as the pricing needs it (available ones only)."""

    coupon_id: str
    template: CouponTemplate
    expires_at: datetime
    starts_at: datetime | None = None

    def __post_init__(self) -> None:
        require_aware("expires_at", self.expires_at)
        if self.starts_at is not None:
            require_aware("starts_at", self.starts_at)


def evaluate(held: Held, cart: Cart, now: datetime, tz: tzinfo | str) -> Applied:
    """A held coupon on this cart at ``now`` (merchant clock ``tz``): time first, then the cart."""
    verdict = usable_at(held.template, now, tz, starts_at=held.starts_at, expires_at=held.expires_at)
    on: On = "shipping" if isinstance(held.template.kind, FreeShipping) else "goods"
    if verdict.code is not None:
        return _refused(on, verdict.code, verdict.message)
    return discount_for(held.template, cart)


@dataclass(frozen=True, slots=True)
class Pick:
    """One coupon's share of a combination. ``lines_fen`` is what it took off each cart line (by
    index, zeros for lines out of its scope); empty for a shipping discount."""

    coupon_id: str
    discount_fen: int
    on: On
    lines_fen: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Combination:
    """The best set of coupons for a cart; ``usable`` lists every usable coupon priced alone
    (best first) and ``refused`` the others with their reason."""

    chosen: tuple[Pick, ...]
    goods_discount_fen: int
    shipping_discount_fen: int
    usable: tuple[Pick, ...] = ()
    refused: Mapping[str, Applied] = field(default_factory=dict)
    considered: int = 0

    @property
    def total_discount_fen(self) -> int:
        return self.goods_discount_fen + self.shipping_discount_fen

    @property
    def coupon_ids(self) -> tuple[str, ...]:
        return tuple(p.coupon_id for p in self.chosen)


@dataclass(frozen=True, slots=True)
class _Candidate:
    held: Held
    applied: Applied
    scoped: tuple[int, ...]

    @property
    def order(self) -> tuple[datetime, str]:
        return self.held.expires_at, self.held.coupon_id


def _allocate(amount: int, room: Sequence[int]) -> list[int]:
    """Split ``amount`` (<= sum(room)) over ``room`` in proportion, by largest remainder."""
    total = sum(room)
    if amount == 0 or total == 0:
        return [0] * len(room)
    shares = [amount * r // total for r in room]
    left = amount - sum(shares)
    by_remainder = sorted(range(len(room)), key=lambda i: (-(amount * room[i] % total), i))
    for i in by_remainder[:left]:
        shares[i] += 1
    return shares


def _price(combo: Iterable[_Candidate], cart: Cart) -> tuple[tuple[Pick, ...], int, int]:
    """Apply a set of coupons together: (picks, goods discount, shipping discount)."""
    remaining = [line.amount_fen for line in cart.lines]
    shipping_left = cart.shipping_fen
    picks: list[Pick] = []
    goods = shipping = 0
    for c in sorted(combo, key=lambda c: c.order):
        if c.applied.on == "shipping":
            off = min(c.applied.discount_fen, shipping_left)
            shipping_left -= off
            shipping += off
            picks.append(Pick(c.held.coupon_id, off, "shipping"))
            continue
        room = [remaining[i] for i in c.scoped]
        off = min(c.applied.discount_fen, sum(room))
        per_line = [0] * len(remaining)
        for i, share in zip(c.scoped, _allocate(off, room), strict=True):
            per_line[i] = share
            remaining[i] -= share
        goods += off
        picks.append(Pick(c.held.coupon_id, off, "goods", tuple(per_line)))
    return tuple(picks), goods, shipping


def _sort_out(
    coupons: Iterable[Held], cart: Cart, now: datetime, tz: tzinfo | str
) -> tuple[list[_Candidate], dict[str, Applied]]:
    """The coupons that apply to this cart now, and the others with why not."""
    require_aware("now", now)
    refused: dict[str, Applied] = {}
    candidates: list[_Candidate] = []
    seen: set[str] = set()
    for held in coupons:
        if held.coupon_id in seen:
            raise ValueError(f"coupon {held.coupon_id!r} is listed twice")
        seen.add(held.coupon_id)
        applied = evaluate(held, cart, now, tz)
        if applied.ok:
            candidates.append(_Candidate(held, applied, tuple(cart.scoped(held.template))))
        else:
            refused[held.coupon_id] = applied
    return candidates, refused


def _alone(candidates: Iterable[_Candidate]) -> tuple[Pick, ...]:
    return tuple(Pick(c.held.coupon_id, c.applied.discount_fen, c.applied.on) for c in candidates)


def stacking_conflict(coupons: Sequence[Held]) -> str | None:
    """Why these coupons cannot be used together in one order, or None when they can."""
    ids = [h.coupon_id for h in coupons]
    twice = next((i for i in ids if ids.count(i) > 1), None)
    if twice is not None:
        return f"coupon {twice!r} is listed twice"
    exclusive = [h.coupon_id for h in coupons if h.template.exclusive]
    if exclusive and len(coupons) > 1:
        return f"coupon {exclusive[0]!r} is exclusive: it cannot be combined with another coupon"
    by_group: dict[str, str] = {}
    for h in coupons:
        other = by_group.setdefault(h.template.group, h.coupon_id)
        if other != h.coupon_id:
            return (
                f"coupons {other!r} and {h.coupon_id!r} are both in stack group {h.template.group!r}: "
                "one per group per order"
            )
    return None


def combine(coupons: Sequence[Held], cart: Cart, now: datetime, tz: tzinfo | str) -> Combination:
    """Price exactly these coupons together (the customer's own choice). Raises ValueError when
    they break stacking (check ``stacking_conflict`` first to answer 422); coupons that do not
    apply are left out and listed in ``refused`` with their reason."""
    conflict = stacking_conflict(coupons)
    if conflict is not None:
        raise ValueError(conflict)
    candidates, refused = _sort_out(coupons, cart, now, tz)
    picks, goods, shipping = _price(candidates, cart)
    return Combination(picks, goods, shipping, _alone(candidates), refused, 1)


def _key(combo: Sequence[_Candidate], total: int) -> tuple[int, int, tuple[datetime, ...], tuple[str, ...]]:
    """Most off, then fewest coupons, then the soonest-expiring coupons, then by coupon id."""
    return (
        -total,
        len(combo),
        tuple(sorted(c.held.expires_at for c in combo)),
        tuple(sorted(c.held.coupon_id for c in combo)),
    )


def best_combination(coupons: Iterable[Held], cart: Cart, now: datetime, tz: tzinfo | str) -> Combination:
    """The usable coupons that take the most off this cart together, subject to stacking: an
    exclusive coupon alone, otherwise at most one coupon per stack group.

    Ties go to fewer coupons, then the soonest expiries, then the smaller coupon ids, so the
    answer is deterministic. The search keeps the PER_GROUP best coupons of each of the
    MAX_GROUPS groups with the largest discounts and prices every combination of them, plus
    every exclusive coupon alone: O((PER_GROUP + 1) ** MAX_GROUPS × coupons × lines) at worst,
    in practice a handful of combinations (two groups by default). The result is exact whenever
    no group has more than PER_GROUP usable coupons and there are no more than MAX_GROUPS groups;
    with the default groups it is always exact, since each group's best coupon prices alone."""
    candidates, refused = _sort_out(coupons, cart, now, tz)

    def rank(c: _Candidate) -> tuple[int, datetime, str]:
        return -c.applied.discount_fen, c.held.expires_at, c.held.coupon_id

    candidates.sort(key=rank)
    groups: dict[str, list[_Candidate]] = {}
    for c in candidates:
        if not c.held.template.exclusive:
            groups.setdefault(c.held.template.group, []).append(c)
    kept = sorted(groups.values(), key=lambda g: (rank(g[0])[0], g[0].held.template.group))[:MAX_GROUPS]
    options: list[tuple[_Candidate, ...]] = [
        tuple(c for c in choice if c is not None)
        for choice in itertools.product(*[[None, *g[:PER_GROUP]] for g in kept])
    ]
    options.extend((c,) for c in candidates if c.held.template.exclusive)

    best: tuple[tuple[int, int, tuple[datetime, ...], tuple[str, ...]], tuple[Pick, ...], int, int] | None = None
    for combo in options:
        picks, goods, shipping = _price(combo, cart)
        key = _key(combo, goods + shipping)
        if best is None or key < best[0]:
            best = (key, picks, goods, shipping)
    assert best is not None  # the empty combination is always an option
    return Combination(best[1], best[2], best[3], _alone(candidates), refused, len(options))
