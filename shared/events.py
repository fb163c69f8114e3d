"""The event contract: one JSON envelope, the same on Kafka and over HTTP.

Every inbound and outbound event type is registered here with its payload model and schema
version. Validation is one pass through a pydantic discriminated union on ``type``, so a
malformed payload is reported with the exact field at fault (``data.amount_fen``).
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
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


class CustomerStatsData(Payload):
    frequency: int
    monetary_fen: Fen
    first_order_at: AwareDatetime | None
    last_order_at: AwareDatetime | None


class SegmentChangedData(Payload):
    """A customer's segment before and after (null: no segment, i.e. no paid order)."""

    before: dict[str, Any] | None
    after: dict[str, Any] | None
    config_version: int = 0


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
    EventType(name="customer.registered", topic="shop.customers", payload=CustomerData, schema_version=1,
              customer_scoped=True, direction="inbound", description="A customer signed up in the shop."),
    EventType(name="customer.updated", topic="shop.customers", payload=CustomerData, schema_version=1,
              customer_scoped=True, direction="inbound", description="Profile, contact or consent changed."),
    EventType(name="order.created", topic="shop.orders", payload=OrderData, schema_version=1,
              customer_scoped=True, direction="inbound", description="An order was placed, not yet paid."),
    EventType(name="order.paid", topic="shop.orders", payload=OrderData, schema_version=1,
              customer_scoped=True, direction="inbound", description="An order was paid."),
    EventType(name="order.cancelled", topic="shop.orders", payload=OrderCancelledData, schema_version=1,
              customer_scoped=True, direction="inbound", description="An unpaid or paid order was cancelled."),
    EventType(name="order.refunded", topic="shop.orders", payload=OrderRefundedData, schema_version=1,
              customer_scoped=True, direction="inbound", description="A full or partial refund."),
    EventType(name="cart.added", topic="shop.behaviour", payload=ItemData, schema_version=1,
              customer_scoped=True, direction="inbound", description="An item was put in the cart."),
    EventType(name="item.favorited", topic="shop.behaviour", payload=ItemData, schema_version=1,
              customer_scoped=True, direction="inbound", description="An item was favourited."),
    EventType(name="search.performed", topic="shop.behaviour", payload=SearchData, schema_version=1,
              customer_scoped=True, direction="inbound", description="The customer searched the shop."),
    EventType(name="referral.bound", topic="shop.customers", payload=ReferralData, schema_version=1,
              customer_scoped=True, direction="inbound", description="The customer was referred by another."),
    EventType(name="wechat.subscription.granted", topic="shop.customers", payload=SubscriptionGrantData,
              schema_version=1, customer_scoped=True, direction="inbound",
              description="One-time WeChat subscribe-message credits were granted."),
    EventType(name="merchant.upserted", topic="fugou.merchants", payload=MerchantData, schema_version=1,
              customer_scoped=False, direction="platform",
              description="A merchant was created or changed (keys, secret, time zone). Compacted by merchant."),
    EventType(name="customer.stats.changed", topic="fugou.segments", payload=CustomerStatsData,
              schema_version=1, customer_scoped=True, direction="outbound",
              description="A customer's paid order count, amount or dates changed."),
    EventType(name="segment.changed", topic="fugou.segments", payload=SegmentChangedData, schema_version=1,
              customer_scoped=True, direction="outbound",
              description="A customer's tier, cell, class or tags changed (before and after)."),
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

    @property
    def key(self) -> bytes:
        """Kafka key: one customer's events stay in one partition, in order."""
        return f"{self.merchant_id}:{self.customer_id or ''}".encode()

    def to_json(self) -> bytes:
        return orjson.dumps(self.model_dump(mode="json", exclude_none=False))


def _envelope_model(t: EventType) -> type[EnvelopeBase]:
    name = "".join(p.capitalize() for p in t.name.replace(".", "_").split("_")) + "Event"
    fields: dict[str, Any] = {
        "type": (Literal[t.name], ...),  # type: ignore[valid-type]
        "data": (t.payload, ...),
        "schema_version": (Annotated[int, Field(ge=1, le=t.schema_version)], t.schema_version),
    }
    if t.customer_scoped:
        fields["customer_id"] = (Id, ...)
    model = create_model(name, __base__=EnvelopeBase, __doc__=t.description, **fields)
    return model


ENVELOPE_MODELS: dict[str, type[EnvelopeBase]] = {t.name: _envelope_model(t) for t in _TYPES}
Envelope = Annotated[Union[tuple(ENVELOPE_MODELS.values())], Field(discriminator="type")]  # type: ignore[valid-type]
_adapter: TypeAdapter[EnvelopeBase] = TypeAdapter(Envelope)


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
        field, msg = "type", f"unknown event type {err.get('input', {}).get('type')!r}" if isinstance(
            err.get("input"), dict) else "unknown event type"
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


def new_event(type_: str, merchant_id: str, data: dict[str, Any] | Payload, customer_id: str | None = None,
              occurred_at: datetime | None = None, event_id: str | None = None) -> EnvelopeBase:
    """Build an outbound event (validated like any other)."""
    if isinstance(data, Payload):
        data = data.model_dump(mode="json")
    return parse_event({
        "event_id": event_id or str(uuid.uuid4()),
        "type": type_,
        "merchant_id": merchant_id,
        "customer_id": customer_id,
        "occurred_at": (occurred_at or datetime.now(timezone.utc)).isoformat(),
        "schema_version": REGISTRY[type_].schema_version,
        "data": data,
    })


class OutboundEvent:
    """An event Fugou raises itself, encoded once, straight to JSON.

    Hot paths raise thousands per batch; building and re-validating a pydantic model for each
    would cost more than the database work. Its shape is the registered envelope's (tests parse
    what the handlers stage)."""

    __slots__ = ("merchant_id", "type", "key", "payload")

    def __init__(self, type_: str, merchant_id: str, data: dict[str, Any], customer_id: str | None = None,
                 occurred_at: datetime | None = None):
        self.merchant_id = merchant_id
        self.type = type_
        self.key = f"{merchant_id}:{customer_id or ''}".encode()
        self.payload = orjson.dumps({
            "event_id": str(uuid.uuid4()), "type": type_, "merchant_id": merchant_id, "customer_id": customer_id,
            "occurred_at": occurred_at or datetime.now(timezone.utc),
            "schema_version": REGISTRY[type_].schema_version, "data": data})

    def to_json(self) -> bytes:
        return self.payload


def json_schemas() -> dict[str, Any]:
    """JSON Schema of every event type, keyed by type."""
    return {name: model.model_json_schema() for name, model in ENVELOPE_MODELS.items()}
