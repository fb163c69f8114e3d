"""Reading messages back: lists, explain (why a customer was or was not messaged for a
trigger), the funnel (queued → sent → delivered, and what caps, quiet hours and consent held
back), and the console channel's record. Also the writes that come from outside: provider
receipts and opt-outs."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, TypeGuard

import orjson
from sqlalchemy import func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.notifications.adapters.channels import Receipt
from services.notifications.adapters.tables import message_log, messages
from services.notifications.domain import policy as dp
from services.notifications.service_layer import profiles
from services.notifications.service_layer.enqueue import log_rows
from shared.db import bulk_update

_POLICY_REASONS: frozenset[dp.Reason] = frozenset(
    {
        "duplicate",
        "no_contact",
        "invalid_contact",
        "consent_denied",
        "consent_missing",
        "no_subscription_credit",
        "cap_reached",
        "quiet_hours",
    }
)


def _policy_reason(reason: str | None) -> TypeGuard[dp.Reason]:
    """A reason the policy's ``decide`` gives (and ``explain_text`` explains), not a dispatch status."""
    return reason in _POLICY_REASONS


def message_view(r: Any, log: Sequence[Any] | None = None, locale: str = "zh-CN") -> dict[str, Any]:
    out = {
        "message_id": r.message_id,
        "customer_id": r.customer_id,
        "trigger": r.trigger,
        "trigger_key": r.trigger_key,
        "rule_id": r.rule_id,
        "campaign_id": r.campaign_id,
        "channel": r.channel,
        "template": {"key": r.template_key, "version": r.template_version},
        "purpose": r.purpose,
        "status": r.status,
        "reason": r.reason,
        "attempts": r.attempts,
        "provider": r.provider,
        "provider_id": r.provider_id,
        "recipient": r.recipient,
        "due_at": r.due_at.isoformat() if r.due_at else None,
        "created_at": r.created_at.isoformat(),
        "sent_at": r.sent_at.isoformat() if r.sent_at else None,
        "delivered_at": r.delivered_at.isoformat() if r.delivered_at else None,
        "content": orjson.loads(r.rendered) if r.rendered else None,
    }
    if log is not None:
        # The log keeps what a rule or a provider decided; the row's own times fill in the rest.
        steps = [
            {
                "at": x.at.isoformat(),
                "status": x.status,
                "reason": x.reason,
                "detail": orjson.loads(x.detail) if x.detail else None,
            }
            for x in log
        ]
        for status, at in (
            ("sent", r.sent_at if r.status in ("sent", "delivered") else None),
            ("delivered", r.delivered_at),
        ):
            if at is not None:
                steps.append(
                    {
                        "at": at.isoformat(),
                        "status": status,
                        "reason": None,
                        "detail": {"provider": r.provider, "provider_id": r.provider_id},
                    }
                )
        out["steps"] = sorted(steps, key=lambda x: x["at"])
    out["why"] = why(r.status, r.reason, out.get("steps", []), locale)
    return out


_WHY = {
    "zh-CN": {
        "queued": "排队等待发送",
        "sending": "正在发送",
        "sent": "已交给服务商",
        "delivered": "已送达",
        "retrying": "服务商出错，稍后重试",
        "paused": "活动已暂停",
        "cancelled": "活动已取消",
        "dead": "多次重试仍失败，已放弃",
        "failed": "服务商拒绝",
        "render_error": "模板渲染失败",
        "template_missing": "模板不存在或渠道不符",
        "fallback": "首选渠道不可用，改用备选渠道",
    },
    "en": {
        "queued": "waiting to be sent",
        "sending": "being sent",
        "sent": "handed to the provider",
        "delivered": "delivered",
        "retrying": "provider error, retrying later",
        "paused": "campaign paused",
        "cancelled": "campaign cancelled",
        "dead": "gave up after repeated provider errors",
        "failed": "refused by the provider",
        "render_error": "the template failed to render",
        "template_missing": "no such template for this channel",
        "fallback": "the preferred channel was unavailable: a fallback was used",
    },
}


def why(status: str, reason: str | None, steps: list[dict[str, Any]], locale: str = "zh-CN") -> str:
    """One line for a person: the policy's own explanation where a rule decided, else the status."""
    texts = _WHY["en" if locale == "en" else "zh-CN"]
    decided = next((s for s in reversed(steps) if s["status"] in ("skipped", "held") and s["reason"]), None)
    if status in ("skipped", "held") and decided is not None and _policy_reason(reason):
        d = dp.Decision(
            "skip" if status == "skipped" else "hold",
            reason,
            None,
            decided.get("detail") or {},
        )
        try:
            return dp.explain_text(d, locale)
        except (KeyError, ValueError, TypeError):
            pass
    return texts.get(reason or "", texts.get(status, status)) if status not in ("sent", "delivered") else texts[status]


async def one(session: AsyncSession, merchant_id: str, message_id: str) -> tuple[Any, list[Any]] | None:
    m = messages.c
    row = (
        await session.execute(select(messages).where(m.merchant_id == merchant_id, m.message_id == message_id))
    ).first()
    if row is None:
        return None
    log = list(
        await session.execute(
            select(message_log)
            .where(message_log.c.merchant_id == merchant_id, message_log.c.message_id == message_id)
            .order_by(message_log.c.id)
        )
    )
    return row, log


async def listing(
    session: AsyncSession,
    merchant_id: str,
    *,
    customer_id: str | None = None,
    status: str | None = None,
    channel: str | None = None,
    campaign_id: str | None = None,
    rule_id: str | None = None,
    trigger_key: str | None = None,
    limit: int = 50,
    before: datetime | None = None,
) -> list[Any]:
    m = messages.c
    q = select(messages).where(m.merchant_id == merchant_id)
    for col, value in (
        (m.customer_id, customer_id),
        (m.status, status),
        (m.channel, channel),
        (m.campaign_id, campaign_id),
        (m.rule_id, rule_id),
        (m.trigger_key, trigger_key),
    ):
        if value is not None:
            q = q.where(col == value)
    if before is not None:
        q = q.where(m.created_at < before)
    return list(await session.execute(q.order_by(m.created_at.desc(), m.message_id.desc()).limit(limit)))


async def explain(
    session: AsyncSession, merchant_id: str, customer_id: str, trigger_key: str | None, locale: str = "zh-CN"
) -> list[dict[str, Any]]:
    """Every message considered for this customer (for this trigger: the event id or campaign
    id), newest first, each with its steps and a sentence saying why."""
    rows = await listing(session, merchant_id, customer_id=customer_id, trigger_key=trigger_key, limit=200)
    if trigger_key is not None and not rows:  # a replenishment trigger's key is the event id + category
        m = messages.c
        rows = list(
            await session.execute(
                select(messages).where(
                    m.merchant_id == merchant_id, m.customer_id == customer_id, m.trigger_key.like(f"{trigger_key}:%")
                )
            )
        )
    logs: dict[str, list[Any]] = {r.message_id: [] for r in rows}
    if logs:  # every message's steps in one statement
        for x in await session.execute(
            select(message_log)
            .where(message_log.c.merchant_id == merchant_id, message_log.c.message_id.in_(list(logs)))
            .order_by(message_log.c.id)
        ):
            logs[x.message_id].append(x)
    return [message_view(r, logs[r.message_id], locale) for r in rows]


async def funnel(
    session: AsyncSession, merchant_id: str, since: datetime | None = None, campaign_id: str | None = None
) -> dict[str, Any]:
    """Counts by status, and of the skipped and held, by reason."""
    m = messages.c
    cond = [m.merchant_id == merchant_id]
    if since is not None:
        cond.append(m.created_at >= since)
    if campaign_id is not None:
        cond.append(m.campaign_id == campaign_id)
    by_status = {s: n for s, n in await session.execute(select(m.status, func.count()).where(*cond).group_by(m.status))}
    reasons = {
        f"{s}:{r}": n
        for s, r, n in await session.execute(
            select(m.status, m.reason, func.count())
            .where(*cond, m.status.in_(("skipped", "held", "failed", "dead")))
            .group_by(m.status, m.reason)
        )
    }
    held_back: dict[str, dict[str, int]] = {}
    for key, n in reasons.items():
        s, r = key.split(":", 1)
        held_back.setdefault(s, {})[r or "unknown"] = n
    total = sum(by_status.values())
    sent = by_status.get("sent", 0) + by_status.get("delivered", 0)
    return {
        "total": total,
        "queued": by_status.get("queued", 0) + by_status.get("sending", 0),
        "held": by_status.get("held", 0),
        "sent": sent,
        "delivered": by_status.get("delivered", 0),
        "failed": by_status.get("failed", 0) + by_status.get("dead", 0),
        "skipped": by_status.get("skipped", 0),
        "paused": by_status.get("paused", 0),
        "cancelled": by_status.get("cancelled", 0),
        "by_status": by_status,
        "reasons": held_back,
    }


async def apply_receipts(
    session: AsyncSession, merchant_id: str, provider: str, receipts: Sequence[Receipt], now: datetime
) -> int:
    """Mark messages delivered or failed from a provider's report; returns how many matched.
    A receipt for a message already final in the same way is a no-op (providers resend). One
    read and one write for the whole report, whatever its size."""
    m = messages.c
    by_provider_id = sorted({rc.provider_id for rc in receipts if rc.provider_id})
    by_message_id = sorted({rc.message_id for rc in receipts if rc.message_id})
    if not by_provider_id and not by_message_id:
        return 0
    found: dict[str, list[Any]] = {}  # message id → [status, reason, delivered_at], as the report moves them
    ids: dict[str, str] = {}  # provider id → message id
    for r in await session.execute(
        select(m.message_id, m.provider_id, m.status, m.reason, m.delivered_at).where(
            m.merchant_id == merchant_id,
            m.provider == provider,
            or_(m.provider_id.in_(by_provider_id), m.message_id.in_(by_message_id)),
        )
    ):
        found[r.message_id] = [r.status, r.reason, r.delivered_at]
        if r.provider_id:
            ids[r.provider_id] = r.message_id
    matched = 0
    logs: list[tuple[Any, ...]] = []
    for rc in receipts:  # in the report's order: a later receipt of one message sees the earlier one
        mid = ids.get(rc.provider_id or "") or (rc.message_id if rc.message_id in found else None)
        if mid is None or found[mid][0] not in ("sending", "sent", "delivered"):
            continue
        matched += 1
        state = found[mid]
        if rc.status == "delivered":
            if state[0] != "delivered":
                state[0], state[2] = "delivered", rc.at or now
        else:
            state[0], state[1] = "failed", rc.code or "undelivered"
        logs.append(
            (
                merchant_id,
                mid,
                now,
                "delivered" if rc.status == "delivered" else "failed",
                rc.code,
                orjson.dumps({"receipt": provider}).decode(),
            )
        )
    touched = {lg[1] for lg in logs}
    await bulk_update(
        session,
        messages,
        ["message_id"],
        ["status", "reason", "delivered_at", "updated_at"],
        [(mid, *found[mid], now) for mid in sorted(touched)],
    )
    await log_rows(session, logs)
    return matched


async def opt_out(
    session: AsyncSession, merchant_id: str, customer_ids: Sequence[str], channel: str, source: str, now: datetime
) -> None:
    """Consent denied on a channel, and the customer's waiting marketing messages on it skipped."""
    await profiles.set_consents(session, [(merchant_id, c, channel, "denied", source, now) for c in customer_ids])
    m = messages.c
    if customer_ids:
        await session.execute(
            update(messages)
            .where(
                m.merchant_id == merchant_id,
                m.customer_id.in_(list(customer_ids)),
                m.channel == channel,
                m.status.in_(("queued", "held", "paused")),
            )
            .values(status="skipped", reason="consent_denied", updated_at=now)
        )
