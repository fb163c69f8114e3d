"""The event contract: one JSON envelope, the same on Kafka and over HTTP.

Every inbound and outbound event type is registered here with its payload model and schema
version. Validation is one pass through a pydantic discriminated union on ``type``, so a
malformed payload is reported with the exact field at fault (``data.amount_fen``).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal, Union

import orjson
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    create_model,
)

from shared import clock

Id = Annotated[str, StringConstraints(min_length=1, max_length=128, strip_whitespace=True)]
# Bounded so every amount fits a BIGINT with room for sums: ¥10 trillion.
MAX_FEN = 10**15
Fen = Annotated[int, Field(ge=0, le=MAX_FEN, description="Money in integer fen (分). 100 fen = ¥1.")]


class Payload(BaseModel):
    # Shops add fields of their own; keep them (forward compatible) rather than reject.
    model_config = ConfigDict(extra="allow", frozen=True)


# ---------------------------------------------------------------- inbound (from the shop)


class OrderItem(Payload):
    sku: Id
    category: Id | None = None
    quantity: Annotated[int, Field(ge=1)] = 1
    amount_fen: Fen


class CustomerData(Payload):
    region: str | None = None
    birthday: str | None = Field(None, pattern=r"^\d{4}-\d{2}-\d{2}$|^\d{2}-\d{2}$")
    phone: str | None = None
    email: str | None = None
    wechat_openid: str | None = None
    consents: dict[str, bool] = Field(default_factory=dict)


class OrderData(Payload):
    order_id: Id
    amount_fen: Fen
    items: list[OrderItem] = Field(default_factory=list)
    coupon_ids: list[Id] = Field(default_factory=list)


class OrderCancelledData(Payload):
    order_id: Id
    reason: str | None = None


class OrderRefundedData(Payload):
    order_id: Id
    refund_id: Id
    amount_fen: Annotated[int, Field(gt=0, le=MAX_FEN)]
    full: bool = False
    items: list[OrderItem] = Field(default_factory=list)


class ItemData(Payload):
    sku: Id
    category: Id | None = None
    quantity: Annotated[int, Field(ge=1)] = 1


class SearchData(Payload):
    query: Annotated[str, StringConstraints(max_length=256)]


class ReferralData(Payload):
    referrer_id: Id


class SubscriptionGrantData(Payload):
    template_id: Id
    count: Annotated[int, Field(ge=1)] = 1


# ---------------------------------------------------------------- platform


class MerchantData(Payload):
    name: str
    timezone: str = "Asia/Shanghai"
    api_key_hashes: list[str]
    jwt_secret: str
    active: bool = True


# ---------------------------------------------------------------- outbound (Fugou's facts)


class SegmentChangedData(Payload):
    """A customer's segment before and after (null: no segment, i.e. no paid order)."""

    before: dict[str, Any] | None
    after: dict[str, Any] | None
    config_version: int = 0


class CouponIssuedData(Payload):
    """A coupon landed in the customer's wallet."""

    coupon_id: Id
    template_id: Id
    template_name: str
    rule_id: Id | None = Field(None, description="The campaign rule that issued it; null when claimed.")
    kind: str = Field(description="percent, amount_off, no_threshold or free_shipping")
    face_value_fen: Fen | None = Field(None, description="The most it can take off (null: a percentage with no cap).")
    starts_at: AwareDatetime
    expires_at: AwareDatetime


class CouponRedeemedData(Payload):
    coupon_id: Id
    template_id: Id
    rule_id: Id | None = None
    order_id: Id
    discount_fen: Fen
    order_amount_fen: Fen


class CouponStateData(Payload):
    """A coupon's state moved (released from an order, restored after a refund, expired)."""

    coupon_id: Id
    template_id: Id
    rule_id: Id | None = None
    state: str
    order_id: Id | None = None


class CouponExpiringData(Payload):
    coupon_id: Id
    template_id: Id
    template_name: str
    rule_id: Id | None = None
    expires_at: AwareDatetime
    days_left: int


class PointsEarnedData(Payload):
    """Points credited: an order's points while its return window is open (``pending``), the same
    points when the window closes, a bonus, or a positive manual adjustment (``available``)."""

    cause: Literal["order", "maturity", "bonus", "adjustment"]
    points: int = Field(ge=1)
    status: Literal["pending", "available"]
    order_id: Id | None = None
    bonus: str | None = Field(None, description="first_order, birthday_month, sign_in or review (cause bonus).")
    lot_id: str | None = Field(None, description="The lot the points went into (available points).")
    expires_at: AwareDatetime | None = Field(None, description="When the lot expires (null: never, or pending).")
    matures_at: AwareDatetime | None = Field(None, description="Pending points: when the return window closes.")
    capped_by: int = Field(0, ge=0, description="Points the daily cap took off.")
    balance: int = Field(ge=0, description="Available points after the change.")
    pending: int = Field(ge=0, description="Pending points after the change.")


class PointsRedeemedData(Payload):
    """Points spent: a cash offset at checkout, or a points-mall item. A mall item whose reward is
    a coupon names its template: the coupons service issues it when it sees this event."""

    redemption_id: Id
    kind: Literal["offset", "mall"]
    points: int = Field(ge=1)
    order_id: Id | None = Field(None, description="offset: the order the points pay for.")
    offset_fen: Fen | None = Field(None, description="offset: what the points take off the order.")
    item_id: Id | None = Field(None, description="mall: the item redeemed.")
    quantity: int | None = Field(None, ge=1)
    reward: dict[str, Any] | None = Field(
        None, description='mall: {"type": "coupon", "template_id": …} or {"type": "gift", "sku": …}'
    )
    balance: int = Field(ge=0, description="Available points after the redemption.")


class PointsExpiringData(Payload):
    """A lot's unspent points expire soon (once per lot, ``notice_days`` before)."""

    lot_id: str
    points: int = Field(ge=1)
    expires_at: AwareDatetime
    days_left: int = Field(ge=0, description="Local calendar days until the last valid day (0: today).")


class PointsExpiredData(Payload):
    lot_id: str
    points: int = Field(ge=1)
    expired_at: AwareDatetime
    balance: int = Field(ge=0, description="Available points after the expiry.")


class LevelChangedData(Payload):
    """A member's level moved: an upgrade as soon as the growth reaches it, a downgrade at a review
    after the grace period."""

    from_level: str | None = Field(description="null: the member had no level yet.")
    to_level: str
    direction: Literal["upgrade", "downgrade"]
    growth: int = Field(description="Growth value in the merchant's window when it changed.")


class StoredValueChangedData(Payload):
    """Stored value (储值) moved: signed changes of the paid and the bonus balance, and the balances after."""

    kind: Literal["top_up", "spend", "spend_refund", "top_up_refund"]
    ref: str = Field(description="The top-up id (top_up, top_up_refund) or the order id (spend, spend_refund).")
    paid_fen: int
    bonus_fen: int
    balance_paid_fen: Fen
    balance_bonus_fen: Fen


class EventType(BaseModel):
    """What the registry knows about one event type."""

    name: str
    topic: str
    payload: type[Payload]
    schema_version: int
    customer_scoped: bool
    direction: Literal["inbound", "outbound", "platform"]
    description: str


# Topic names are the registry's, so code and deploy files share one list (see topics.py).
_TYPES: list[EventType] = [
    EventType(
        name="customer.registered",
        topic="shop.customers",
        payload=CustomerData,
        schema_version=1,
        customer_scoped=True,
        direction="inbound",
        description="A customer signed up in the shop.",
    ),
    EventType(
        name="customer.updated",
        topic="shop.customers",
        payload=CustomerData,
        schema_version=1,
        customer_scoped=True,
        direction="inbound",
        description="Profile, contact or consent changed.",
    ),
    EventType(
        name="order.created",
        topic="shop.orders",
        payload=OrderData,
        schema_version=1,
        customer_scoped=True,
        direction="inbound",
        description="An order was placed, not yet paid.",
    ),
    EventType(
        name="order.paid",
        topic="shop.orders",
        payload=OrderData,
        schema_version=1,
        customer_scoped=True,
        direction="inbound",
        description="An order was paid.",
    ),
    EventType(
        name="order.cancelled",
        topic="shop.orders",
        payload=OrderCancelledData,
        schema_version=1,
        customer_scoped=True,
        direction="inbound",
        description="An unpaid or paid order was cancelled.",
    ),
    EventType(
        name="order.refunded",
        topic="shop.orders",
        payload=OrderRefundedData,
        schema_version=1,
        customer_scoped=True,
        direction="inbound",
        description="A full or partial refund.",
    ),
    EventType(
        name="cart.added",
        topic="shop.behaviour",
        payload=ItemData,
        schema_version=1,
        customer_scoped=True,
        direction="inbound",
        description="An item was put in the cart.",
    ),
    EventType(
        name="item.favorited",
        topic="shop.behaviour",
        payload=ItemData,
        schema_version=1,
        customer_scoped=True,
        direction="inbound",
        description="An item was favourited.",
    ),
    EventType(
        name="search.performed",
        topic="shop.behaviour",
        payload=SearchData,
        schema_version=1,
        customer_scoped=True,
        direction="inbound",
        description="The customer searched the shop.",
    ),
    EventType(
        name="referral.bound",
        topic="shop.customers",
        payload=ReferralData,
        schema_version=1,
        customer_scoped=True,
        direction="inbound",
        description="The customer was referred by another.",
    ),
    EventType(
        name="wechat.subscription.granted",
        topic="shop.customers",
        payload=SubscriptionGrantData,
        schema_version=1,
        customer_scoped=True,
        direction="inbound",
        description="One-time WeChat subscribe-message credits were granted.",
    ),
    EventType(
        name="merchant.upserted",
        topic="fugou.merchants",
        payload=MerchantData,
        schema_version=1,
        customer_scoped=False,
        direction="platform",
        description="A merchant was created or changed (keys, secret, time zone). Compacted by merchant.",
    ),
    EventType(
        name="segment.changed",
        topic="fugou.segments",
        payload=SegmentChangedData,
        schema_version=1,
        customer_scoped=True,
        direction="outbound",
        description="A customer's tier, cell, class or tags changed (before and after).",
    ),
    EventType(
        name="coupon.issued",
        topic="fugou.coupons",
        payload=CouponIssuedData,
        schema_version=1,
        customer_scoped=True,
        direction="outbound",
        description="A coupon was issued to the customer (by a rule, or claimed).",
    ),
    EventType(
        name="coupon.redeemed",
        topic="fugou.coupons",
        payload=CouponRedeemedData,
        schema_version=1,
        customer_scoped=True,
        direction="outbound",
        description="A coupon was used on a paid order.",
    ),
    EventType(
        name="coupon.released",
        topic="fugou.coupons",
        payload=CouponStateData,
        schema_version=1,
        customer_scoped=True,
        direction="outbound",
        description="A coupon is available again: its order was cancelled, or refunded under a restore policy.",
    ),
    EventType(
        name="coupon.expiring",
        topic="fugou.coupons",
        payload=CouponExpiringData,
        schema_version=1,
        customer_scoped=True,
        direction="outbound",
        description="An unused coupon expires within the merchant's reminder window (once per coupon).",
    ),
    EventType(
        name="coupon.expired",
        topic="fugou.coupons",
        payload=CouponStateData,
        schema_version=1,
        customer_scoped=True,
        direction="outbound",
        description="An unused coupon expired.",
    ),
    EventType(
        name="points.earned",
        topic="fugou.loyalty",
        payload=PointsEarnedData,
        schema_version=1,
        customer_scoped=True,
        direction="outbound",
        description=(
            "Points credited: pending from a paid order, available when its return window closes, "
            "a bonus or an adjustment."
        ),
    ),
    EventType(
        name="points.redeemed",
        topic="fugou.loyalty",
        payload=PointsRedeemedData,
        schema_version=1,
        customer_scoped=True,
        direction="outbound",
        description=(
            "Points spent on a checkout offset or a points-mall item (a coupon item names the template to issue)."
        ),
    ),
    EventType(
        name="points.expiring",
        topic="fugou.loyalty",
        payload=PointsExpiringData,
        schema_version=1,
        customer_scoped=True,
        direction="outbound",
        description="A lot of points expires within the merchant's notice days (once per lot).",
    ),
    EventType(
        name="points.expired",
        topic="fugou.loyalty",
        payload=PointsExpiredData,
        schema_version=1,
        customer_scoped=True,
        direction="outbound",
        description="A lot's unspent points expired.",
    ),
    EventType(
        name="level.changed",
        topic="fugou.loyalty",
        payload=LevelChangedData,
        schema_version=1,
        customer_scoped=True,
        direction="outbound",
        description="A member's level changed: an upgrade at once, a downgrade at a review after the grace period.",
    ),
    EventType(
        name="stored_value.changed",
        topic="fugou.loyalty",
        payload=StoredValueChangedData,
        schema_version=1,
        customer_scoped=True,
        direction="outbound",
        description="Stored value was topped up, spent or refunded (paid and bonus parts, balances after).",
    ),
]

REGISTRY: dict[str, EventType] = {t.name: t for t in _TYPES}
INBOUND_TYPES = frozenset(t.name for t in _TYPES if t.direction == "inbound")


class EnvelopeBase(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    event_id: Id = Field(description="Globally unique; the idempotency key.")
    merchant_id: Id
    customer_id: Id | None = None
    occurred_at: AwareDatetime = Field(description="ISO 8601 with its offset.")
    schema_version: Annotated[int, Field(ge=1)] = 1
    # Every envelope has a type; each registered model narrows it to its own name (a Literal, the
    # discriminator). Declared last so the envelopes' field order (and JSON) stays as it was.
    # ``data`` is left to the registered models: its type depends on ``type``.
    type: str

    @property
    def key(self) -> bytes:
        """Kafka key: one customer's events stay in one partition, in order."""
        return f"{self.merchant_id}:{self.customer_id or ''}".encode()

    def to_json(self) -> bytes:
        return orjson.dumps(self.model_dump(mode="json", exclude_none=False))


def _envelope_model(t: EventType) -> type[EnvelopeBase]:
    name = "".join(p.capitalize() for p in t.name.replace(".", "_").split("_")) + "Event"
    fields: dict[str, Any] = {
        "type": (Literal[t.name], ...),
        "data": (t.payload, ...),
        "schema_version": (Annotated[int, Field(ge=1, le=t.schema_version)], t.schema_version),
    }
    if t.customer_scoped:
        fields["customer_id"] = (Id, ...)
    model = create_model(name, __base__=EnvelopeBase, __doc__=t.description, **fields)
    return model


ENVELOPE_MODELS: dict[str, type[EnvelopeBase]] = {t.name: _envelope_model(t) for t in _TYPES}
# Every member of the Union is an EnvelopeBase, so the adapter yields one.
Envelope = Annotated[Union[tuple(ENVELOPE_MODELS.values())], Field(discriminator="type")]  # type: ignore[valid-type]  # noqa: UP007 - a Union built at run time from the registered models (X | Y cannot spread a tuple)
_adapter: TypeAdapter[EnvelopeBase] = TypeAdapter(Envelope)  # type: ignore[arg-type]  # the run-time Union above


class InvalidEvent(ValueError):
    """Why an event was refused, with the field at fault."""

    def __init__(self, reason: str, field: str | None = None, event_id: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.field = field
        self.event_id = event_id


def _first_error(exc: ValidationError) -> InvalidEvent:
    err = exc.errors(include_url=False)[0]
    loc = [str(p) for p in err["loc"]]
    # The union adds the discriminator value as the first location part; drop it.
    if loc and loc[0] in ENVELOPE_MODELS:
        loc = loc[1:]
    field = ".".join(loc) or None
    msg = err["msg"]
    if err["type"] == "union_tag_invalid":
        field, msg = (
            "type",
            f"unknown event type {err.get('input', {}).get('type')!r}"
            if isinstance(err.get("input"), dict)
            else "unknown event type",
        )
    elif err["type"] == "union_tag_not_found":
        field, msg = "type", "field required"
    return InvalidEvent(f"{field}: {msg}" if field else msg, field)


def parse_event(raw: bytes | str | dict[str, Any], *, check_encodable: bool = True) -> EnvelopeBase:
    """Validate one envelope; raise InvalidEvent naming the field at fault.

    Consumers reading events that came as JSON from the bus may skip the encodability check
    (they never re-encode the shop's payload); anything that takes events in from outside keeps it."""
    try:
        event = _adapter.validate_python(raw) if isinstance(raw, dict) else _adapter.validate_json(raw)
        if check_encodable:
            ensure_serializable(event)
        return event
    except ValidationError as exc:
        bad = _first_error(exc)
        if isinstance(raw, dict):
            bad.event_id = raw.get("event_id") if isinstance(raw.get("event_id"), str) else None
        raise bad from None


def ensure_serializable(event: EnvelopeBase) -> None:
    """Refuse what parses but cannot be carried on: a shop's extra payload fields may hold values
    (integers beyond 64 bits, lone surrogates) that JSON allows and the bus cannot encode."""
    try:
        event.to_json()
    except (TypeError, ValueError, orjson.JSONEncodeError) as exc:
        field = "data"
        for key, value in event.model_dump(mode="json").items():
            items = value.items() if key == "data" and isinstance(value, dict) else [(None, value)]
            for sub, v in items:
                try:
                    orjson.dumps(v)
                except (TypeError, ValueError, orjson.JSONEncodeError):
                    field = f"{key}.{sub}" if sub is not None else key
                    break
            else:
                continue
            break
        raise InvalidEvent(f"{field}: cannot be encoded ({exc})", field, event.event_id) from None


def new_event(
    type_: str,
    merchant_id: str,
    data: dict[str, Any] | Payload,
    customer_id: str | None = None,
    occurred_at: datetime | None = None,
    event_id: str | None = None,
) -> EnvelopeBase:
    """Build an outbound event (validated like any other)."""
    if isinstance(data, Payload):
        data = data.model_dump(mode="json")
    return parse_event(
        {
            "event_id": event_id or str(uuid.uuid4()),
            "type": type_,
            "merchant_id": merchant_id,
            "customer_id": customer_id,
            "occurred_at": (occurred_at or clock.now()).isoformat(),
            "schema_version": REGISTRY[type_].schema_version,
            "data": data,
        }
    )


class OutboundEvent:
    """An event Fugou raises itself, encoded once, straight to JSON.

    Hot paths raise thousands per batch; building and re-validating a pydantic model for each
    would cost more than the database work. Its shape is the registered envelope's (tests parse
    what the handlers stage)."""

    __slots__ = ("key", "merchant_id", "payload", "type")

    def __init__(
        self,
        type_: str,
        merchant_id: str,
        data: dict[str, Any],
        customer_id: str | None = None,
        occurred_at: datetime | None = None,
    ):
        self.merchant_id = merchant_id
        self.type = type_
        self.key = f"{merchant_id}:{customer_id or ''}".encode()
        self.payload = orjson.dumps(
            {
                "event_id": str(uuid.uuid4()),
                "type": type_,
                "merchant_id": merchant_id,
                "customer_id": customer_id,
                "occurred_at": occurred_at or clock.now(),
                "schema_version": REGISTRY[type_].schema_version,
                "data": data,
            }
        )

    def to_json(self) -> bytes:
        return self.payload


def json_schemas() -> dict[str, Any]:
    """JSON Schema of every event type, keyed by type."""
    return {name: model.model_json_schema() for name, model in ENVELOPE_MODELS.items()}
