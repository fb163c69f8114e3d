"""From "this customer should hear about this" to message rows, set-based.

A ``Want`` names a customer, a trigger (its key: the event id, the campaign id, a clock key such
as ``birthday:2026``), the payload the templates read, and the channels in order of preference,
each with its template. ``enqueue`` picks, per want, the first channel the customer can be
reached on now (an address, a consent that allows it, a WeChat credit for the template), renders
nothing yet (the dispatcher renders what it sends), and inserts one row per (trigger key,
customer, rule or campaign): the unique ``dedupe_key`` makes a redelivered trigger a no-op.

A want no channel can carry is still recorded, ``skipped`` with the first choice's reason, so
that explain can say why a customer heard nothing."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from services.notifications.adapters.tables import message_log, messages
from services.notifications.domain import policy as dp
from services.notifications.domain import templates as dt
from services.notifications.domain.contacts import ADDRESS_FIELD, sign_unsubscribe
from services.notifications.service_layer import profiles
from services.notifications.service_layer.config import ChannelChoice, Policy
from services.notifications.service_layer.templates import StoredTemplate, latest
from shared.db import bulk_insert

MESSAGE_COLUMNS = [
    "message_id",
    "merchant_id",
    "customer_id",
    "dedupe_key",
    "trigger",
    "trigger_key",
    "rule_id",
    "campaign_id",
    "channel",
    "template_key",
    "template_version",
    "purpose",
    "value",
    "context",
    "status",
    "reason",
    "due_at",
    "attempts",
    "recipient",
    "created_at",
    "updated_at",
]


@dataclass(frozen=True)
class Shop:
    merchant_id: str
    name: str
    tz: str
    secret: str  # the merchant's signing secret: unsubscribe links


@dataclass
class Want:
    customer_id: str
    trigger: str
    trigger_key: str
    data: Any
    choices: Sequence[ChannelChoice]
    purpose: dt.Purpose
    value: int = 0
    rule_id: str | None = None
    campaign_id: str | None = None
    vars: dict[str, Any] | None = None
    due_at: datetime | None = None
    status: str = "queued"  # "paused": a paused campaign's messages wait for resume

    @property
    def dedupe_key(self) -> str:
        return f"{self.trigger_key}|{self.customer_id}|{self.rule_id or self.campaign_id or ''}"


@dataclass
class Enqueued:
    queued: int = 0
    skipped: int = 0
    duplicates: int = 0
    reasons: dict[str, int] = field(default_factory=dict)


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError


def unsubscribe_url(base: str, shop: Shop, customer_id: str, channel: str) -> str:
    token = sign_unsubscribe(shop.secret.encode(), shop.merchant_id, customer_id, channel)
    return f"{base.rstrip('/')}/v1/notifications/unsubscribe?token={token}"


async def enqueue(
    session: Any, shop: Shop, wants: Sequence[Want], policy: Policy, now: datetime, public_url: str
) -> Enqueued:
    out = Enqueued()
    if not wants:
        return out
    people, said, credits = await profiles.facts_of(session, shop.merchant_id, [w.customer_id for w in wants])
    tpls = await latest(session, shop.merchant_id, {c.template for w in wants for c in w.choices})
    consent_policy = policy.consent_policy()
    base = policy.unsubscribe_base_url or public_url
    rows: list[tuple[Any, ...]] = []
    logs: list[tuple[Any, ...]] = []
    for w in wants:
        person = people.get(w.customer_id)
        chosen: tuple[ChannelChoice, StoredTemplate, str | None] | None = None
        first_refusal: tuple[ChannelChoice, str, dict[str, Any]] | None = None
        refusals: list[dict[str, Any]] = []
        for choice in w.choices:
            tpl = tpls.get(choice.template)
            if tpl is None or tpl.spec.channel != choice.channel:
                reason, detail = "template_missing", {"channel": choice.channel, "template": choice.template}
            else:
                address = (
                    getattr(person, ADDRESS_FIELD[choice.channel])
                    if (person is not None and choice.channel in ADDRESS_FIELD)
                    else None
                )
                cred = credits.get(w.customer_id, {})
                d = dp.decide(
                    dp.Candidate(
                        choice.channel,
                        w.purpose,
                        w.trigger,
                        template_id=tpl.provider_template,
                        value=w.value,
                    ),
                    dp.Facts(
                        tz=shop.tz,
                        address=address,
                        consent=said.get(w.customer_id, {}),
                        credits={t: dp.Credits(n, lt) for t, (n, lt) in cred.items()},
                        caps=dp.Caps(),
                        quiet_hours=None,
                        consent_policy=consent_policy,
                    ),
                    now,
                )
                if d.action != "skip":
                    chosen = (choice, tpl, address)
                    break
                reason, detail = d.reason, dict(d.detail)
            refusals.append({"channel": choice.channel, "reason": reason, **detail})
            if first_refusal is None:
                first_refusal = (choice, reason, detail)
        mid = str(uuid.uuid4())
        if chosen is None:
            assert first_refusal is not None
            choice, reason, detail = first_refusal
            tpl_version = tpls[choice.template].version if choice.template in tpls else 0
            rows.append(
                (
                    mid,
                    shop.merchant_id,
                    w.customer_id,
                    w.dedupe_key,
                    w.trigger,
                    w.trigger_key,
                    w.rule_id,
                    w.campaign_id,
                    choice.channel,
                    choice.template,
                    tpl_version,
                    w.purpose,
                    w.value,
                    "{}",
                    "skipped",
                    reason,
                    now,
                    0,
                    None,
                    now,
                    now,
                )
            )
            # The first choice's refusal, as the dispatcher logs one, and every channel tried.
            logs.append(
                (
                    shop.merchant_id,
                    mid,
                    now,
                    "skipped",
                    reason,
                    orjson.dumps({"channel": choice.channel, **detail, "tried": refusals}).decode(),
                )
            )
            out.skipped += 1
            out.reasons[reason] = out.reasons.get(reason, 0) + 1
            continue
        choice, tpl, address = chosen
        ctx = dt.build_context(
            w.trigger,
            w.data,
            customer={"id": w.customer_id},
            shop={"name": shop.name},
            now=now,
            tz=shop.tz,
            locale=tpl.spec.locale,
            vars=w.vars,
            unsubscribe_url=unsubscribe_url(base, shop, w.customer_id, choice.channel)
            if choice.channel in ADDRESS_FIELD
            else None,
        )
        rows.append(
            (
                mid,
                shop.merchant_id,
                w.customer_id,
                w.dedupe_key,
                w.trigger,
                w.trigger_key,
                w.rule_id,
                w.campaign_id,
                choice.channel,
                choice.template,
                tpl.version,
                w.purpose,
                w.value,
                orjson.dumps(ctx, default=_json_default).decode(),
                w.status,
                None,
                w.due_at or now,
                0,
                address,
                now,
                now,
            )
        )
        if refusals:  # a fallback channel: say why the preferred ones were passed over
            logs.append((shop.merchant_id, mid, now, "queued", "fallback", orjson.dumps({"tried": refusals}).decode()))
        out.queued += 1
    inserted = await bulk_insert(
        session, messages, MESSAGE_COLUMNS, rows, conflict=["merchant_id", "dedupe_key"], returning=["message_id"]
    )
    fresh = {r[0] for r in inserted}
    out.duplicates = len(rows) - len(fresh)
    if out.duplicates:  # already there: neither counted again nor logged again
        out.queued = sum(1 for r in rows if r[0] in fresh and r[14] != "skipped")
        out.skipped = sum(1 for r in rows if r[0] in fresh and r[14] == "skipped")
    await log_rows(session, [lg for lg in logs if lg[1] in fresh])
    return out


async def log_rows(session: Any, rows: list[tuple[Any, ...]]) -> None:
    """(merchant, message, at, status, reason, detail JSON) rows into message_log."""
    await bulk_insert(session, message_log, ["merchant_id", "message_id", "at", "status", "reason", "detail"], rows)
