"""What a merchant configures: the policy that protects customers (caps, quiet hours, consent,
retries), the rules that turn triggers into messages, and the provider behind each channel.

Stored as JSON bodies of these models and validated on the way in, so that a bad setting is a
422 naming its field when saved, never a surprise when a message goes out."""

from __future__ import annotations

import re
from datetime import time
from typing import Annotated, Any, Literal, cast

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from sqlalchemy import select
from sqlalchemy.engine import CursorResult
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from services.notifications.adapters.tables import policies, rules
from services.notifications.domain import policy as dp
from services.notifications.domain import retry
from services.notifications.domain.templates import CHANNELS, TRIGGERS

Channel = Literal["wechat", "sms", "email", "webhook", "console"]
Purpose = Literal["transactional", "marketing"]
Key = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")]
_HHMM = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CapRule(Strict):
    limit: int = Field(ge=0, le=1000)
    window: Literal["day", "week"]


class QuietWindow(Strict):
    start: str = Field("21:00", description="HH:MM on the merchant's clock, inclusive")
    end: str = Field("09:00", description="HH:MM, exclusive; before start: the window wraps midnight")

    @field_validator("start", "end")
    @classmethod
    def _hhmm(cls, v: str) -> str:
        if not _HHMM.match(v):
            raise ValueError("a time of day as HH:MM (00:00–23:59)")
        return v

    def domain(self) -> dp.QuietHours:
        return dp.QuietHours(time.fromisoformat(self.start), time.fromisoformat(self.end))


def _default_caps() -> dict[Channel, list[CapRule]]:
    return {
        "sms": [CapRule(limit=1, window="day"), CapRule(limit=3, window="week")],
        "wechat": [CapRule(limit=1, window="day"), CapRule(limit=4, window="week")],
        "email": [CapRule(limit=1, window="day"), CapRule(limit=3, window="week")],
    }


class Policy(Strict):
    """Marketing caps per channel (calendar day and ISO week on the merchant's clock) and across
    channels; quiet hours (null: none); consent; retries. Transactional messages bypass caps and
    quiet hours; nothing bypasses a denied consent."""

    caps: dict[Channel, list[CapRule]] = Field(default_factory=_default_caps)
    all_channels_caps: list[CapRule] = Field(default_factory=list)
    quiet_hours: QuietWindow | None = Field(default_factory=QuietWindow)
    marketing_requires_explicit_consent: bool = True
    max_attempts: int = Field(retry.MAX_ATTEMPTS, ge=1, le=30)
    unsubscribe_base_url: str | None = Field(
        None,
        description="Public base URL of this service for unsubscribe links (e.g. https://shop.example.com); "
        "null: FUGOU_PUBLIC_URL",
    )

    def domain_caps(self) -> dp.Caps:
        return dp.Caps.of(
            {ch: [(c.limit, c.window) for c in caps] for ch, caps in self.caps.items()},
            [(c.limit, c.window) for c in self.all_channels_caps],
        )

    def consent_policy(self) -> dp.ConsentPolicy:
        return dp.ConsentPolicy(self.marketing_requires_explicit_consent)


class ChannelChoice(Strict):
    channel: Channel
    template: Key = Field(description="The template key to render on this channel")


class Conditions(Strict):
    """Which trigger events a rule answers (every condition given must hold)."""

    entered_tags: list[str] = Field(
        default_factory=list,
        description="segment.changed: any of these tags was gained (e.g. dormant; replenish_due:milk-powder)",
    )
    to_tiers: list[Literal["S", "A", "B", "C"]] = Field(
        default_factory=list, description="segment.changed: the tier after the change is one of these (and changed)"
    )
    to_classes: list[str] = Field(
        default_factory=list,
        description="segment.changed: the RFM class after the change is one of these (and changed)",
    )
    direction: Literal["upgrade", "downgrade"] | None = Field(None, description="level.changed")
    to_levels: list[str] = Field(default_factory=list, description="level.changed: the new level is one of these")
    max_days_left: int | None = Field(None, ge=0, description="coupon.expiring / points.expiring")
    coupon_rules: list[str] = Field(
        default_factory=list,
        description="coupon.issued / coupon.expiring: the coupon "
        "was issued by one of these coupon rules (e.g. a playbook's own rule)",
    )
    coupon_templates: list[str] = Field(
        default_factory=list,
        description="coupon.issued / coupon.expiring: the coupon is of one of these coupon templates",
    )


CONDITION_TRIGGERS: dict[str, tuple[str, ...]] = {
    "entered_tags": ("segment.changed",),
    "to_tiers": ("segment.changed",),
    "to_classes": ("segment.changed",),
    "direction": ("level.changed",),
    "to_levels": ("level.changed",),
    "max_days_left": ("coupon.expiring", "points.expiring"),
    "coupon_rules": ("coupon.issued", "coupon.expiring"),
    "coupon_templates": ("coupon.issued", "coupon.expiring"),
}
assert set(CONDITION_TRIGGERS) == set(Conditions.model_fields)


class RuleFields(Strict):
    """A rule's fields and checks; ``rule_id`` is a stored rule's (``NotifyRule``), a request body's
    may be left to the path."""

    rule_id: Key | None = None
    name: str = Field(min_length=1, max_length=128)
    trigger: str = Field(
        description="coupon.issued, coupon.expiring, points.expiring, level.changed, "
        "segment.changed, replenishment.due or birthday"
    )
    conditions: Conditions = Field(default_factory=Conditions)
    channels: list[ChannelChoice] = Field(
        min_length=1,
        max_length=5,
        description="In order of preference: the "
        "first the customer can be reached on (contact, consent, credit) is used",
    )
    purpose: Purpose | None = Field(None, description="null: the trigger's default")
    value: int = Field(
        0,
        ge=0,
        description="What the message is worth: WeChat credits and caps go to the most "
        "valuable first. 0: the trigger's own worth (a coupon's face value in "
        "fen, the points about to expire)",
    )
    active: bool = True

    @field_validator("trigger")
    @classmethod
    def _trigger(cls, v: str) -> str:
        if v not in TRIGGERS or v == "campaign":
            raise ValueError(f"unknown trigger {v!r}: one of {', '.join(t for t in TRIGGERS if t != 'campaign')}")
        return v

    @model_validator(mode="after")
    def _distinct(self) -> RuleFields:
        seen = [c.channel for c in self.channels]
        if len(set(seen)) != len(seen):
            raise ValueError("channels: each channel at most once")
        return self

    @model_validator(mode="after")
    def _conditions_apply(self) -> RuleFields:
        """A condition the trigger never carries would be ignored silently: refused instead."""
        for name in self.conditions.model_fields_set:
            if getattr(self.conditions, name) in (None, []):
                continue
            if self.trigger not in CONDITION_TRIGGERS[name]:
                raise ValueError(
                    f"conditions.{name} applies to {' and '.join(CONDITION_TRIGGERS[name])}, not to {self.trigger}"
                )
        return self

    @property
    def effective_purpose(self) -> Purpose:
        return self.purpose or TRIGGERS[self.trigger].purpose


class NotifyRule(RuleFields):
    rule_id: Key


assert set(CHANNELS) == {"wechat", "sms", "email", "webhook", "console"}


# ---------------------------------------------------------------- reading them

Conn = AsyncSession | AsyncConnection


async def policy_of(conn: Conn, merchant_id: str) -> Policy:
    row = (await conn.execute(select(policies.c.body).where(policies.c.merchant_id == merchant_id))).first()
    return Policy.model_validate_json(row.body) if row else Policy()


async def policies_of(conn: Conn, merchant_ids: list[str]) -> dict[str, Policy]:
    found = {
        r.merchant_id: Policy.model_validate_json(r.body)
        for r in await conn.execute(
            select(policies.c.merchant_id, policies.c.body).where(policies.c.merchant_id.in_(merchant_ids))
        )
    }
    return {m: found.get(m) or Policy() for m in merchant_ids}


async def rules_for(conn: Conn, merchant_ids: list[str], triggers: set[str]) -> dict[str, list[NotifyRule]]:
    """The active rules of these merchants for these triggers."""
    out: dict[str, list[NotifyRule]] = {}
    if not merchant_ids or not triggers:
        return out
    r = rules.c
    for row in await conn.execute(
        select(r.merchant_id, r.body)
        .where(r.merchant_id.in_(merchant_ids), r.trigger.in_(sorted(triggers)), r.active.is_(True))
        .order_by(r.merchant_id, r.rule_id)
    ):
        out.setdefault(row.merchant_id, []).append(NotifyRule.model_validate_json(row.body))
    return out


def dumps(model: BaseModel) -> str:
    return model.model_dump_json()


def loads(body: str | bytes) -> Any:
    return orjson.loads(body)


# ---------------------------------------------------------------- writing them


async def save_policy(session: AsyncSession, merchant_id: str, policy: Policy, now: Any) -> None:
    from shared.db import bulk_insert

    await bulk_insert(
        session,
        policies,
        ["merchant_id", "body", "updated_at"],
        [(merchant_id, policy.model_dump_json(), now)],
        conflict=["merchant_id"],
        update={"body": "excluded.body", "updated_at": "excluded.updated_at"},
    )


async def save_rule(session: AsyncSession, merchant_id: str, rule: NotifyRule, now: Any) -> None:
    from shared.db import bulk_insert

    await bulk_insert(
        session,
        rules,
        ["merchant_id", "rule_id", "trigger", "body", "active", "updated_at"],
        [(merchant_id, rule.rule_id, rule.trigger, rule.model_dump_json(), rule.active, now)],
        conflict=["merchant_id", "rule_id"],
        update={c: f"excluded.{c}" for c in ("trigger", "body", "active", "updated_at")},
    )


async def list_rules(conn: Conn, merchant_id: str) -> list[NotifyRule]:
    r = rules.c
    return [
        NotifyRule.model_validate_json(row.body)
        for row in await conn.execute(select(r.body).where(r.merchant_id == merchant_id).order_by(r.rule_id))
    ]


async def delete_rule(session: AsyncSession, merchant_id: str, rule_id: str) -> bool:
    from sqlalchemy import delete

    # A DELETE runs on a cursor: its result is a CursorResult (AsyncSession.execute says Result).
    res = cast(
        "CursorResult[Any]",
        await session.execute(delete(rules).where(rules.c.merchant_id == merchant_id, rules.c.rule_id == rule_id)),
    )
    return bool(res.rowcount)


class ChannelSettings(Strict):
    """A merchant's provider for one channel kind; ``config`` is validated by the provider's own
    model (adapters.channels.CONFIG_MODELS)."""

    provider: Literal["wechat", "aliyun", "generic", "smtp", "webhook", "console"]
    config: dict[str, Any] = Field(default_factory=dict)
    rate_per_s: int | None = Field(None, ge=1, le=100_000, description="null: the provider's default")
    burst: int | None = Field(None, ge=1, le=100_000)


async def save_channel(session: AsyncSession, merchant_id: str, kind: str, s: ChannelSettings, now: Any) -> None:
    """Validate the provider's settings (raises pydantic.ValidationError naming the field) and
    store them; the running dispatchers pick them up within seconds."""
    from services.notifications.adapters.channels import CHANNEL_KINDS, CONFIG_MODELS
    from services.notifications.adapters.tables import channel_configs
    from services.notifications.service_layer.state import DEFAULT_RATES
    from shared.db import bulk_insert

    if CHANNEL_KINDS[s.provider] != kind:
        raise ValueError(f"provider {s.provider!r} serves the {CHANNEL_KINDS[s.provider]} channel, not {kind}")
    checked = CONFIG_MODELS[s.provider].model_validate(s.config)
    body = checked.model_dump(mode="json")
    for name, value in checked:  # secrets are stored as given, not as "**********"
        if hasattr(value, "get_secret_value"):
            body[name] = value.get_secret_value()
    rate, burst = DEFAULT_RATES[s.provider]
    await bulk_insert(
        session,
        channel_configs,
        ["merchant_id", "channel", "provider", "config", "rate_per_s", "burst", "updated_at"],
        [
            (
                merchant_id,
                kind,
                s.provider,
                orjson.dumps(body).decode(),
                s.rate_per_s or rate,
                s.burst or max(s.rate_per_s or rate, burst),
                now,
            )
        ],
        conflict=["merchant_id", "channel"],
        update={c: f"excluded.{c}" for c in ("provider", "config", "rate_per_s", "burst", "updated_at")},
    )
