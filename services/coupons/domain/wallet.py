"""A coupon's life in the customer's wallet: a small state machine (pure, no I/O).

    available ─lock(order)─► locked ─redeem(order)─► used ─refund(restore)─► available
        ▲                      │
        └───release(order)─────┘    (either goes to expired instead if the window ended meanwhile)
    available ─redeem(order)─► used      (the payment came with no lock before it)
    available ─expire(now)───► expired   (available only: a locked coupon waits for its order)
    available ─revoke()──────► revoked

Every transition is a function ``(coupon, ...) -> Transition``: the new coupon, whether it
changed, and the outbound event type to record in the outbox when it did. A refused
transition raises ``CouponError`` with a machine-readable ``code`` and the HTTP status to
answer (409 for a state conflict, 403 for someone else's coupon, 422 for a coupon that does not
apply). Transitions are idempotent where replays are natural: locking to the same order again,
redeeming the same order again, releasing or refunding an order the coupon is not tied to,
expiring an already expired coupon are no-ops (``changed`` is False).

Concurrency is the service layer's: it writes a changed coupon with a compare-and-set on
``version`` (``UPDATE … WHERE coupon_id = :id AND version = :old``), which every change bumps,
so of two concurrent redemptions only one can win.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import Literal, TypedDict, Unpack

from services.coupons.domain.cart import Applied
from services.coupons.domain.templates import Reason, require_aware


class State(StrEnum):
    AVAILABLE = "available"
    LOCKED = "locked"
    USED = "used"
    EXPIRED = "expired"
    REVOKED = "revoked"


class Code(StrEnum):
    """Why a transition was refused (beyond ``templates.Reason`` for a coupon that does not apply)."""

    NOT_YOURS = "not_yours"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    ALREADY_USED = "already_used"
    LOCKED_TO_OTHER_ORDER = "locked_to_other_order"
    REVOKED = "revoked"


# 409: the coupon's state forbids it; 403: another customer's coupon; 422: it does not apply here.
HTTP_STATUS: dict[str, int] = {
    Code.NOT_YOURS: 403,
    Code.EXPIRED: 409,
    Code.ALREADY_USED: 409,
    Code.LOCKED_TO_OTHER_ORDER: 409,
    Code.REVOKED: 409,
    Code.NOT_YET_VALID: 422,
    Reason.OUTSIDE_WEEKDAYS: 422,
    Reason.OUTSIDE_HOURS: 422,
    Reason.OUT_OF_SCOPE: 422,
    Reason.BELOW_THRESHOLD: 422,
    Reason.NOT_NTH_ORDER_TODAY: 422,
    Reason.NOTHING_TO_DISCOUNT: 422,
}


class CouponError(Exception):
    """A refused transition: ``code`` (machine-readable), ``http_status`` and a message."""

    def __init__(self, code: str, message: str, *, coupon_id: str = "") -> None:
        super().__init__(message)
        self.code = str(code)
        self.message = message
        self.coupon_id = coupon_id
        self.http_status = HTTP_STATUS.get(self.code, 409)

    def __repr__(self) -> str:
        return f"CouponError({self.code!r}, {self.message!r}, http_status={self.http_status})"

    @classmethod
    def refused(cls, applied: Applied, *, coupon_id: str = "") -> CouponError:
        """The error for a coupon that does not apply to an order (``cart.evaluate``'s answer)."""
        if applied.reason is None:
            raise ValueError("the coupon applies: nothing to refuse")
        return cls(applied.reason, applied.message or str(applied.reason), coupon_id=coupon_id)


@dataclass(frozen=True, slots=True)
class Coupon:
    """One issued coupon. ``order_id`` is the order it is locked to or was used on."""

    coupon_id: str
    owner_id: str
    template_id: str
    starts_at: datetime
    expires_at: datetime
    state: State = State.AVAILABLE
    order_id: str | None = None
    locked_at: datetime | None = None
    used_at: datetime | None = None
    version: int = 0

    def __post_init__(self) -> None:
        require_aware("starts_at", self.starts_at)
        require_aware("expires_at", self.expires_at)
        if self.expires_at <= self.starts_at:
            raise ValueError("expires_at must be after starts_at")
        if (self.state in (State.LOCKED, State.USED)) != (self.order_id is not None):
            raise ValueError(f"a {self.state} coupon {'needs' if self.order_id is None else 'has no'} order_id")


@dataclass(frozen=True, slots=True)
class Transition:
    coupon: Coupon
    changed: bool
    event: str | None = None  # the outbound event type when changed, e.g. "coupon.redeemed"


def _same(coupon: Coupon) -> Transition:
    return Transition(coupon, False)


class _Changes(TypedDict, total=False):
    """What a transition may change of a coupon (besides its version)."""

    state: State
    order_id: str | None
    locked_at: datetime | None
    used_at: datetime | None


def _to(coupon: Coupon, event: str, **changes: Unpack[_Changes]) -> Transition:
    return Transition(replace(coupon, version=coupon.version + 1, **changes), True, event)


def _err(coupon: Coupon, code: str, message: str) -> CouponError:
    return CouponError(code, message, coupon_id=coupon.coupon_id)


def _check_owner(coupon: Coupon, owner: str) -> None:
    if owner != coupon.owner_id:
        raise _err(coupon, Code.NOT_YOURS, "this coupon belongs to another customer")


def _check_window(coupon: Coupon, now: datetime) -> None:
    if now < coupon.starts_at:
        raise _err(coupon, Code.NOT_YET_VALID, f"usable from {coupon.starts_at.isoformat()}")
    if now >= coupon.expires_at:
        raise _err(coupon, Code.EXPIRED, f"expired at {coupon.expires_at.isoformat()}")


def _check_takeable(coupon: Coupon) -> None:
    """Refuse a coupon that is not available (the same order's lock or use is handled first)."""
    if coupon.state == State.USED:
        raise _err(coupon, Code.ALREADY_USED, f"already used on order {coupon.order_id}")
    if coupon.state == State.LOCKED:
        raise _err(
            coupon,
            Code.LOCKED_TO_OTHER_ORDER,
            f"held by order {coupon.order_id}; cancel that order or wait for it to be paid",
        )
    if coupon.state == State.EXPIRED:
        raise _err(coupon, Code.EXPIRED, f"expired at {coupon.expires_at.isoformat()}")
    if coupon.state == State.REVOKED:
        raise _err(coupon, Code.REVOKED, "this coupon was withdrawn by the shop")


def lock(coupon: Coupon, order_id: str, now: datetime, owner: str, *, check: Applied | None = None) -> Transition:
    """Hold the coupon for an order being placed (order.created). ``check`` is
    ``cart.evaluate``'s answer for the order: a coupon that does not apply is refused with 422.
    Locking to the same order again, or after that order already used it, changes nothing."""
    require_aware("now", now)
    _check_owner(coupon, owner)
    if coupon.order_id == order_id and coupon.state in (State.LOCKED, State.USED):
        return _same(coupon)
    _check_takeable(coupon)
    _check_window(coupon, now)
    if check is not None and check.reason is not None:
        raise CouponError.refused(check, coupon_id=coupon.coupon_id)
    return _to(coupon, "coupon.locked", state=State.LOCKED, order_id=order_id, locked_at=now)


def redeem(coupon: Coupon, order_id: str, *, now: datetime, owner: str) -> Transition:
    """The order was paid with this coupon (order.paid): locked to it (or available, when the
    payment comes with no lock before it) → used. Redeeming the same order again is a no-op; a
    lock holds the coupon, so a locked coupon redeems even after its window ended."""
    require_aware("now", now)
    _check_owner(coupon, owner)
    if coupon.order_id == order_id and coupon.state == State.USED:
        return _same(coupon)
    if coupon.order_id == order_id and coupon.state == State.LOCKED:
        return _to(coupon, "coupon.redeemed", state=State.USED, used_at=now)
    _check_takeable(coupon)
    _check_window(coupon, now)
    return _to(coupon, "coupon.redeemed", state=State.USED, order_id=order_id, locked_at=now, used_at=now)


def _back(coupon: Coupon, now: datetime, event: str) -> Transition:
    """Back to the wallet: available, or expired when the window ended meanwhile."""
    if now >= coupon.expires_at:
        return _to(coupon, event, state=State.EXPIRED, order_id=None, locked_at=None, used_at=None)
    return _to(coupon, event, state=State.AVAILABLE, order_id=None, locked_at=None, used_at=None)


def release(coupon: Coupon, order_id: str, *, now: datetime) -> Transition:
    """The order was cancelled before payment (order.cancelled): a coupon locked to it returns to
    the wallet (expired if its window ended meanwhile). Anything else is a no-op, including a
    coupon already used on that order: a paid order gives coupons back through ``refund``."""
    require_aware("now", now)
    if coupon.state != State.LOCKED or coupon.order_id != order_id:
        return _same(coupon)
    return _back(coupon, now, "coupon.released")


def refund(coupon: Coupon, order_id: str, policy: Literal["restore", "keep_used"], *, now: datetime) -> Transition:
    """The order it was used on was refunded (order.refunded). ``restore`` puts it back (expired
    if its window ended meanwhile); ``keep_used`` leaves it used. Which refunds restore (full
    only, or partial too) is the merchant's policy, applied by the service layer."""
    require_aware("now", now)
    if policy not in ("restore", "keep_used"):
        raise ValueError(f"policy must be 'restore' or 'keep_used', got {policy!r}")
    if policy == "keep_used" or coupon.state != State.USED or coupon.order_id != order_id:
        return _same(coupon)
    return _back(coupon, now, "coupon.restored")


def expire(coupon: Coupon, now: datetime) -> Transition:
    """The expiry sweep: an available coupon whose window has ended → expired. Safe to run twice;
    locked coupons wait for their order (``release`` expires them)."""
    require_aware("now", now)
    if coupon.state != State.AVAILABLE or now < coupon.expires_at:
        return _same(coupon)
    return _to(coupon, "coupon.expired", state=State.EXPIRED)


def revoke(coupon: Coupon) -> Transition:
    """The shop withdraws an available coupon. Revoking twice is a no-op; a locked, used or
    expired coupon cannot be withdrawn (409)."""
    if coupon.state == State.REVOKED:
        return _same(coupon)
    _check_takeable(coupon)
    return _to(coupon, "coupon.revoked", state=State.REVOKED)
