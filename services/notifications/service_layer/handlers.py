"""Notifications' event handler: one batch, one transaction (the consumer's, with the inbox).

Profiles first (contacts, consents, WeChat credits), then the triggers: each event of a trigger
type meets the merchant's active rules for it, and every rule whose conditions hold wants one
message for the event's customer (``enqueue`` picks the channel and dedupes).

``segment.changed`` carries two triggers: the segment itself, and ``replenishment.due`` when the
customer gains a ``replenish_due:<category>`` tag (segmentation's lifecycle tags)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.notifications.service_layer import profiles
from services.notifications.service_layer.config import NotifyRule, policies_of, rules_for
from services.notifications.service_layer.enqueue import Shop, Want, enqueue
from services.notifications.service_layer.state import public_url_of
from shared import clock
from shared.events import EnvelopeBase

EVENT_TRIGGERS = frozenset({"coupon.issued", "coupon.expiring", "points.expiring", "level.changed", "segment.changed"})
REPLENISH_TAG = "replenish_due:"


def _tags(side: dict[str, Any] | None) -> list[str]:
    return list((side or {}).get("tags") or [])


def matches(rule: NotifyRule, trigger: str, data: Any) -> bool:
    c = rule.conditions
    if trigger == "segment.changed":
        before, after = data.before or {}, data.after or {}
        if c.entered_tags:
            gained = set(_tags(after)) - set(_tags(before))
            if not gained & set(c.entered_tags):
                return False
        if c.to_tiers and not (after.get("tier") in c.to_tiers and before.get("tier") != after.get("tier")):
            return False
        return not c.to_classes or (
            after.get("rfm_class") in c.to_classes and before.get("rfm_class") != after.get("rfm_class")
        )
    if trigger == "level.changed":
        if c.direction and data.direction != c.direction:
            return False
        return not c.to_levels or data.to_level in c.to_levels
    if trigger in ("coupon.issued", "coupon.expiring"):
        if c.coupon_rules and data.rule_id not in c.coupon_rules:
            return False
        if c.coupon_templates and data.template_id not in c.coupon_templates:
            return False
    if trigger in ("coupon.expiring", "points.expiring"):
        return c.max_days_left is None or data.days_left <= c.max_days_left
    return True


def replenishments(data: Any) -> list[dict[str, Any]]:
    """The categories a segment change made due (each its own trigger)."""
    before, after = data.before or {}, data.after or {}
    gained = [t for t in _tags(after) if t.startswith(REPLENISH_TAG) and t not in _tags(before)]
    return [{"category": t[len(REPLENISH_TAG) :]} for t in gained]


def worth(trigger: str, data: Any) -> int:
    """What a trigger's message is worth by itself: a coupon's face value in fen, the points about
    to expire; a rule's own ``value`` (when set) comes first."""
    if trigger == "coupon.issued":
        return int(data.face_value_fen or 0)
    if trigger == "points.expiring":
        return int(data.points)
    return 0


async def shops(session: AsyncSession, merchant_ids: Sequence[str]) -> dict[str, Shop]:
    from services.notifications.adapters.tables import messaging

    m = messaging.merchants.c
    rows = await session.execute(
        select(m.merchant_id, m.name, m.timezone, m.jwt_secret).where(m.merchant_id.in_(list(merchant_ids)))
    )
    return {r.merchant_id: Shop(r.merchant_id, r.name, r.timezone, bytes(r.jwt_secret).decode()) for r in rows}


async def apply_triggers(session: AsyncSession, events: Sequence[EnvelopeBase], now: datetime) -> None:
    by_merchant: dict[str, list[EnvelopeBase]] = {}
    for e in events:
        if e.type in EVENT_TRIGGERS and e.customer_id:
            by_merchant.setdefault(e.merchant_id, []).append(e)
    if not by_merchant:
        return
    merchant_ids = sorted(by_merchant)
    wanted_triggers = {e.type for evs in by_merchant.values() for e in evs} | {"replenishment.due"}
    rules = await rules_for(session, merchant_ids, wanted_triggers)
    if not rules:
        return
    policies = await policies_of(session, [m for m in merchant_ids if m in rules])
    known = await shops(session, list(rules))
    for merchant_id, mine in rules.items():
        shop = known.get(merchant_id)
        if shop is None:
            continue
        wants: list[Want] = []
        for e in by_merchant[merchant_id]:
            t: str = e.type
            data: Any = e.data  # type: ignore[attr-defined]  # each registered envelope model declares its data; EnvelopeBase does not
            for rule in mine:
                if rule.trigger == t and matches(rule, t, data):
                    wants.append(
                        Want(
                            e.customer_id or "",
                            t,
                            e.event_id,
                            data,
                            rule.channels,
                            rule.effective_purpose,
                            rule.value or worth(t, data),
                            rule_id=rule.rule_id,
                        )
                    )
                elif rule.trigger == "replenishment.due" and t == "segment.changed":
                    wants.extend(
                        Want(
                            e.customer_id or "",
                            "replenishment.due",
                            f"{e.event_id}:{due['category']}",
                            due,
                            rule.channels,
                            rule.effective_purpose,
                            rule.value,
                            rule_id=rule.rule_id,
                        )
                        for due in replenishments(data)
                    )
        await enqueue(session, shop, wants, policies[merchant_id], now, public_url_of(session))


async def handle(session: AsyncSession, events: list[EnvelopeBase], now: datetime | None = None) -> None:
    now = now or clock.now()
    said = [e for e in events if e.type in profiles.PROFILE_TYPES]
    if said:
        await profiles.record_profiles(session, said)
    grants = [e for e in events if e.type == profiles.GRANT_TYPE]
    if grants:
        await profiles.record_grants(session, grants)
    await apply_triggers(session, events, now)
