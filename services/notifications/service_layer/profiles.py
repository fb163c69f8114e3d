"""What notifications keeps of a customer: contact addresses and consents (from the shop's
customer.registered / customer.updated, latest wins), WeChat subscription credits (from
wechat.subscription.granted) and opt-outs (the API, an SMS reply, an unsubscribe link).

An address the shop sends that is not one (a landline, a malformed email) is kept out, logged,
and never blocks the rest of the profile: a message to that channel is then skipped
``no_contact`` and explain says so."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.notifications.adapters.tables import consents, contacts, wechat_credits
from services.notifications.domain.contacts import InvalidContact, normalize_email, normalize_openid, normalize_phone
from services.notifications.domain.policy import Consent
from shared.db import bulk_insert, in_values
from shared.events import EnvelopeBase

log = structlog.get_logger("fugou.notifications")

PROFILE_TYPES = frozenset({"customer.registered", "customer.updated"})
GRANT_TYPE = "wechat.subscription.granted"
# The shop's consent keys, as the event contract has them (customer.updated data.consents).
CONSENT_CHANNELS = {
    "sms": "sms",
    "email": "email",
    "wechat": "wechat",
    "marketing_sms": "sms",
    "marketing_email": "email",
    "marketing_wechat": "wechat",
}


def _clean(kind: str, raw: str | None, merchant_id: str, customer_id: str) -> str | None:
    if raw is None or not raw.strip():
        return None
    try:
        if kind == "phone":
            return normalize_phone(raw)
        if kind == "email":
            return normalize_email(raw)
        return normalize_openid(raw)
    except InvalidContact as e:
        log.warning(
            "notifications.contact_refused",
            merchant_id=merchant_id,
            customer_id=customer_id,
            field=kind,
            reason=e.reason,
        )
        return None


def _birthday(raw: str | None) -> str | None:
    return raw[-5:] if raw else None  # YYYY-MM-DD or MM-DD → MM-DD


async def record_profiles(session: AsyncSession, events: Sequence[EnvelopeBase]) -> None:
    """Contacts and consents, set-based; of one customer's events in a batch the latest wins,
    and a stored row newer than the event is kept (whatever the delivery order)."""
    latest: dict[tuple[str, str], Any] = {}
    for e in events:
        key = (e.merchant_id, e.customer_id or "")
        cur = latest.get(key)
        if cur is None or (e.occurred_at, e.event_id) > (cur.occurred_at, cur.event_id):
            latest[key] = e
    rows, consent_rows = [], []
    for (m, c), e in latest.items():
        d = e.data
        rows.append(
            (
                m,
                c,
                _clean("phone", d.phone, m, c),
                _clean("email", d.email, m, c),
                _clean("openid", d.wechat_openid, m, c),
                _birthday(d.birthday),
                None,
                e.occurred_at,
            )
        )
        for key, granted in d.consents.items():
            channel = CONSENT_CHANNELS.get(key)
            if channel is not None:
                consent_rows.append((m, c, channel, "granted" if granted else "denied", "event", e.occurred_at))
    newer = "excluded.updated_at >= {t}.updated_at"
    await bulk_insert(
        session,
        contacts,
        ["merchant_id", "customer_id", "phone", "email", "openid", "birthday", "locale", "updated_at"],
        rows,
        conflict=["merchant_id", "customer_id"],
        update={c: f"excluded.{c}" for c in ("phone", "email", "openid", "birthday", "updated_at")},
        update_where=newer,
    )
    await set_consents(session, consent_rows)


async def set_consents(session: AsyncSession, rows: Iterable[tuple[str, str, str, str, str, datetime]]) -> None:
    """(merchant, customer, channel, state, source, at) rows; a later statement wins."""
    latest: dict[tuple[str, str, str], tuple[str, str, str, str, str, datetime]] = {}
    for r in rows:
        k = (r[0], r[1], r[2])
        if k not in latest or r[5] >= latest[k][5]:
            latest[k] = r
    await bulk_insert(
        session,
        consents,
        ["merchant_id", "customer_id", "channel", "state", "source", "updated_at"],
        list(latest.values()),
        conflict=["merchant_id", "customer_id", "channel"],
        update={"state": "excluded.state", "source": "excluded.source", "updated_at": "excluded.updated_at"},
        update_where="excluded.updated_at >= {t}.updated_at",
    )


async def record_grants(session: AsyncSession, events: Sequence[EnvelopeBase]) -> None:
    """Each grant adds its credits (the inbox makes a redelivered grant count once)."""
    sums: dict[tuple[str, str, str], tuple[int, datetime]] = {}
    for e in events:
        k = (e.merchant_id, e.customer_id or "", e.data.template_id)  # type: ignore[attr-defined]  # data is declared by each registered envelope model
        n, at = sums.get(k, (0, e.occurred_at))
        sums[k] = (n + e.data.count, max(at, e.occurred_at))  # type: ignore[attr-defined]  # data is declared by each registered envelope model
    await bulk_insert(
        session,
        wechat_credits,
        ["merchant_id", "customer_id", "template_id", "credits", "long_term", "updated_at"],
        [(m, c, t, n, False, at) for (m, c, t), (n, at) in sums.items()],
        conflict=["merchant_id", "customer_id", "template_id"],
        update={"credits": "{t}.credits + excluded.credits", "updated_at": "excluded.updated_at"},
    )


async def customers_by_phone(session: AsyncSession, merchant_id: str, phone: str) -> list[str]:
    c = contacts.c
    return list(
        (await session.execute(select(c.customer_id).where(c.merchant_id == merchant_id, c.phone == phone))).scalars()
    )


async def spend_credits(session: AsyncSession, merchant_id: str, wanted: dict[tuple[str, str], int]) -> None:
    """Take n credits of (customer, template), never below zero (long-term ones are not spent):
    one statement, run for every pair (executemany)."""
    w = wechat_credits.c
    if wanted:
        await session.execute(
            update(wechat_credits)
            .where(
                w.merchant_id == merchant_id,
                w.customer_id == bindparam("c"),
                w.template_id == bindparam("t"),
                w.long_term.is_(False),
                w.credits >= bindparam("n"),
            )
            .values(credits=w.credits - bindparam("n")),
            [{"c": c, "t": t, "n": n} for (c, t), n in wanted.items()],
        )


async def give_back_credits(session: AsyncSession, merchant_id: str, back: dict[tuple[str, str], int]) -> None:
    """A message that spent a credit and then was not delivered (refused, dead) gives it back."""
    w = wechat_credits.c
    if back:
        await session.execute(
            update(wechat_credits)
            .where(
                w.merchant_id == merchant_id,
                w.customer_id == bindparam("c"),
                w.template_id == bindparam("t"),
                w.long_term.is_(False),
            )
            .values(credits=w.credits + bindparam("n")),
            [{"c": c, "t": t, "n": n} for (c, t), n in back.items()],
        )


async def facts_of(
    session: AsyncSession, merchant_id: str, customer_ids: Sequence[str]
) -> tuple[dict[str, Any], dict[str, dict[str, Consent]], dict[str, dict[str, tuple[int, bool]]]]:
    """(contacts, consents per channel, WeChat credits per template) of these customers."""
    ids = sorted(set(customer_ids))
    c, k, w = contacts.c, consents.c, wechat_credits.c
    people: dict[str, Any] = {}
    said: dict[str, dict[str, Consent]] = {}  # a stored state is "granted" or "denied" (set_consents' callers)
    credits: dict[str, dict[str, tuple[int, bool]]] = {}
    for i in range(0, len(ids), 5000):
        part = ids[i : i + 5000]
        for r in await session.execute(
            select(c.customer_id, c.phone, c.email, c.openid, c.birthday).where(
                c.merchant_id == merchant_id, in_values(c.customer_id, part)
            )
        ):
            people[r.customer_id] = r
        for s in await session.execute(
            select(k.customer_id, k.channel, k.state).where(
                k.merchant_id == merchant_id, in_values(k.customer_id, part)
            )
        ):
            said.setdefault(s.customer_id, {})[s.channel] = s.state
        for g in await session.execute(
            select(w.customer_id, w.template_id, w.credits, w.long_term).where(
                w.merchant_id == merchant_id, in_values(w.customer_id, part)
            )
        ):
            credits.setdefault(g.customer_id, {})[g.template_id] = (g.credits, g.long_term)
    return people, said, credits
