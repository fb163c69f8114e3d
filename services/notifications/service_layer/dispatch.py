"""The dispatcher: due messages out to their providers, the rules that protect the customer
applied at the last moment, results recorded.

One round:

1. **Claim** (one transaction): the oldest due messages (``queued``, or ``held`` whose quiet
   hours ended; ``sending`` ones whose lease ran out, their sender having died), skipping rows
   another dispatcher holds. For the customers with marketing messages among them, their
   ``contacts`` rows are locked, then their marketing sends counted: a cap is checked and the
   message marked ``sending`` under that lock, so two dispatchers cannot both squeeze one more
   message under it. Each message is decided again with today's facts (consent may have been
   withdrawn since it was queued, quiet hours may have begun): ``send`` → ``sending`` with a lease
   and its rendered content; ``hold`` → ``held`` until the window opens; ``skip`` → ``skipped``
   with the reason. WeChat credits are spent here, on the most valuable messages first.
2. **Send**, outside any transaction: per (merchant, channel), in the provider's batch size, each
   provider's token bucket pacing it.
3. **Record** (one transaction): ``sent`` / ``delivered``; a provider error is retried with
   backoff (``queued`` again, later) until ``max_attempts``, then ``dead``; a refusal is
   ``failed``. A WeChat credit spent on a message that did not go is given back.

A crash between 1 and 3 leaves ``sending`` rows whose lease runs out: they are sent again, with
the same message id, which the providers that take one use as an idempotency key (Aliyun's
OutId, the webhook's X-Fugou-Message-Id, the generic gateway's id)."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import orjson
import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.notifications.adapters.channels import Outgoing, Rendered, SendResult
from services.notifications.adapters.tables import contacts, messages
from services.notifications.domain import policy as dp
from services.notifications.domain import retry
from services.notifications.domain import templates as dt
from services.notifications.domain.contacts import ADDRESS_FIELD
from services.notifications.service_layer import profiles
from services.notifications.service_layer.config import Policy, policies_of
from services.notifications.service_layer.enqueue import log_rows
from services.notifications.service_layer.handlers import shops
from services.notifications.service_layer.state import Notifier
from services.notifications.service_layer.templates import StoredTemplate, versions
from shared import clock
from shared.db import bulk_update, dialect_name, in_values

log = structlog.get_logger("fugou.notifications")

LEASE = timedelta(minutes=2)
SENT_STATES = ("sending", "sent", "delivered")


@dataclass
class Claimed:
    row: Any
    outgoing: Outgoing | None = None
    credit: tuple[str, str] | None = None  # (customer, WeChat template) a credit was spent on


@dataclass
class Round:
    claimed: int = 0
    sent: int = 0
    held: int = 0
    skipped: int = 0
    retried: int = 0
    failed: int = 0
    dead: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)


_COLUMNS = (
    "message_id",
    "merchant_id",
    "customer_id",
    "channel",
    "template_key",
    "template_version",
    "purpose",
    "value",
    "context",
    "status",
    "attempts",
    "trigger",
    "created_at",
    "campaign_id",
)


async def _claim_rows(session: AsyncSession, now: datetime, limit: int) -> list[Any]:
    m = messages.c
    cols = [getattr(m, c) for c in _COLUMNS]
    pg = dialect_name(session) == "postgresql"
    due = select(*cols).where(m.status.in_(("queued", "held")), m.due_at <= now).order_by(m.due_at).limit(limit)
    stale = select(*cols).where(m.status == "sending", m.lease_until < now).limit(max(1, limit // 10))
    if pg:
        due = due.with_for_update(skip_locked=True)
        stale = stale.with_for_update(skip_locked=True)
    rows = list(await session.execute(due))
    if len(rows) < limit:
        rows += list(await session.execute(stale))
    return rows


async def _recent_marketing(
    session: AsyncSession, merchant_id: str, customer_ids: list[str], now: datetime
) -> dict[str, list[tuple[str, datetime]]]:
    m = messages.c
    out: dict[str, list[tuple[str, datetime]]] = defaultdict(list)
    since = now - timedelta(days=8)  # a calendar week on any clock is within the last 8 days
    for i in range(0, len(customer_ids), 5000):
        part = customer_ids[i : i + 5000]
        for r in await session.execute(
            select(m.customer_id, m.channel, m.sent_at).where(
                m.merchant_id == merchant_id,
                in_values(m.customer_id, part),
                m.purpose == "marketing",
                m.status.in_(SENT_STATES),
                m.sent_at >= since,
            )
        ):
            out[r.customer_id].append((r.channel, r.sent_at))
    return out


async def _lock_customers(session: AsyncSession, merchant_id: str, customer_ids: list[str]) -> None:
    if dialect_name(session) != "postgresql" or not customer_ids:
        return  # SQLite: one writer at a time already
    c = contacts.c
    await session.execute(
        select(c.customer_id)
        .where(c.merchant_id == merchant_id, in_values(c.customer_id, customer_ids))
        .order_by(c.customer_id)
        .with_for_update()
    )


class _Templates:
    def __init__(self) -> None:
        self.cache: dict[tuple[str, str, int], StoredTemplate | None] = {}

    async def get(self, session: AsyncSession, merchant_id: str, key: str, version: int) -> StoredTemplate | None:
        k = (merchant_id, key, version)
        if k not in self.cache:
            found = await versions(session, merchant_id, key, version)
            self.cache[k] = found[0] if found else None
        return self.cache[k]


_TEMPLATES = _Templates()  # versions never change once written: safe to keep


def _rendered_json(r: Rendered) -> str:
    return orjson.dumps(
        {
            k: v
            for k, v in (
                ("subject", r.subject),
                ("text", r.text),
                ("html", r.html),
                ("fields", dict(r.fields)),
                ("provider_template", r.provider_template),
                ("page", r.page),
            )
            if v
        }
    ).decode()


async def claim(session: AsyncSession, now: datetime, limit: int) -> tuple[list[Claimed], Round]:
    """Step 1 (see the module docstring), in the caller's transaction."""
    rows = await _claim_rows(session, now, limit)
    stats = Round(claimed=len(rows))
    if not rows:
        return [], stats
    by_merchant: dict[str, list[Any]] = defaultdict(list)
    for r in rows:
        by_merchant[r.merchant_id].append(r)
    policies = await policies_of(session, sorted(by_merchant))
    known = await shops(session, sorted(by_merchant))
    out: list[Claimed] = []
    updates: list[
        tuple[Any, ...]
    ] = []  # message_id, status, reason, due_at, attempts, lease, sent_at, recipient, rendered, updated_at
    logs: list[tuple[Any, ...]] = []
    for merchant_id, mine in by_merchant.items():
        policy: Policy = policies[merchant_id]
        shop = known.get(merchant_id)
        tz = shop.tz if shop else "Asia/Shanghai"
        marketing = sorted({r.customer_id for r in mine if r.purpose == "marketing"})
        await _lock_customers(session, merchant_id, marketing)
        recent = await _recent_marketing(session, merchant_id, marketing, now)
        people, said, credits = await profiles.facts_of(session, merchant_id, [r.customer_id for r in mine])
        caps, quiet, consent_policy = (
            policy.domain_caps(),
            (policy.quiet_hours.domain() if policy.quiet_hours else None),
            policy.consent_policy(),
        )
        spent: dict[tuple[str, str], int] = defaultdict(int)
        # The most valuable first, so that scarce WeChat credits (and caps) go to them.
        for r in sorted(mine, key=lambda r: (-r.value, r.created_at)):
            tpl = await _TEMPLATES.get(session, merchant_id, r.template_key, r.template_version)
            person = people.get(r.customer_id)
            address = (
                getattr(person, ADDRESS_FIELD[r.channel])
                if (person is not None and r.channel in ADDRESS_FIELD)
                else None
            )
            template_id = tpl.provider_template if tpl is not None and r.channel == "wechat" else None
            cred = dict(credits.get(r.customer_id, {}))
            if template_id is not None and template_id in cred:
                n, lt = cred[template_id]
                cred[template_id] = (n - spent[(r.customer_id, template_id)], lt)
            d = dp.decide(
                dp.Candidate(r.channel, r.purpose, r.trigger, template_id=template_id, value=r.value),
                dp.Facts(
                    tz=tz,
                    address=address,
                    consent=said.get(r.customer_id, {}),
                    credits={t: dp.Credits(n, lt) for t, (n, lt) in cred.items()},
                    recent_marketing=recent.get(r.customer_id, ()),
                    caps=caps,
                    quiet_hours=quiet,
                    consent_policy=consent_policy,
                ),
                now,
            )
            if d.action == "skip" or tpl is None:
                reason = d.reason if tpl is not None else "template_missing"
                updates.append((r.message_id, "skipped", reason, now, r.attempts, None, None, None, None, now))
                logs.append((merchant_id, r.message_id, now, "skipped", reason, orjson.dumps(dict(d.detail)).decode()))
                stats.skipped += 1
                stats.by_reason[reason] = stats.by_reason.get(reason, 0) + 1
                continue
            if d.action == "hold":
                assert d.until is not None
                updates.append((r.message_id, "held", d.reason, d.until, r.attempts, None, None, None, None, now))
                logs.append((merchant_id, r.message_id, now, "held", d.reason, orjson.dumps(dict(d.detail)).decode()))
                stats.held += 1
                continue
            try:
                parts = dt.render(tpl.spec, orjson.loads(r.context))
            except dt.RenderError as e:
                updates.append((r.message_id, "failed", "render_error", now, r.attempts, None, None, None, None, now))
                logs.append(
                    (
                        merchant_id,
                        r.message_id,
                        now,
                        "failed",
                        "render_error",
                        orjson.dumps({"field": e.field, "message": e.message}).decode(),
                    )
                )
                stats.failed += 1
                continue
            rendered = Rendered(
                subject=parts.subject,
                text=parts.text,
                html=parts.html,
                fields=parts.fields,
                provider_template=parts.provider_template,
                page=parts.page,
                unsubscribe_url=parts.unsubscribe_url,
            )
            c = Claimed(r, Outgoing(r.message_id, merchant_id, r.customer_id, address or "", rendered))
            if template_id is not None and not cred.get(template_id, (0, False))[1]:
                spent[(r.customer_id, template_id)] += 1
                c.credit = (r.customer_id, template_id)
            if r.purpose == "marketing":
                recent.setdefault(r.customer_id, []).append((r.channel, now))
            updates.append(
                (
                    r.message_id,
                    "sending",
                    None,
                    now,
                    r.attempts + 1,
                    now + LEASE,
                    now,
                    address,
                    _rendered_json(rendered),
                    now,
                )
            )
            out.append(c)
        if spent:
            await profiles.spend_credits(session, merchant_id, dict(spent))
    await bulk_update(
        session,
        messages,
        ["message_id"],
        ["status", "reason", "due_at", "attempts", "lease_until", "sent_at", "recipient", "rendered", "updated_at"],
        updates,
    )
    await log_rows(session, logs)
    return out, stats


async def send(
    notifier: Notifier, sessions: async_sessionmaker[AsyncSession], claimed: list[Claimed]
) -> list[tuple[Claimed, SendResult, str]]:
    """Step 2: per (merchant, channel), in provider-sized batches, paced by each provider's bucket."""
    groups: dict[tuple[str, str], list[Claimed]] = defaultdict(list)
    for c in claimed:
        groups[(c.row.merchant_id, c.row.channel)].append(c)
    async with sessions() as session:
        routes = {k: await notifier.route(session, *k) for k in groups}

    async def one_group(key: tuple[str, str], items: list[Claimed]) -> list[tuple[Claimed, SendResult, str]]:
        route = routes[key]
        if route.channel is None:
            return [
                (c, SendResult("failed", code="not_configured", detail=f"no {key[1]} provider configured"), "none")
                for c in items
            ]
        out: list[tuple[Claimed, SendResult, str]] = []
        size = max(1, route.channel.max_batch)
        for i in range(0, len(items), size):
            part = items[i : i + size]
            wait = route.bucket.take(len(part))
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                results = await route.channel.send([c.outgoing for c in part if c.outgoing is not None])
                if len(results) != len(part):  # one result per message, in order: anything else is a channel bug
                    raise RuntimeError(f"{route.provider} answered {len(results)} results for {len(part)} messages")
            except Exception as exc:  # a channel bug or an outage it did not classify: retry, lose nothing
                log.warning("notifications.channel_raised", provider=route.provider, error=repr(exc))
                results = [SendResult("retry", code="channel_error", detail=repr(exc)[:300]) for _ in part]
            out.extend((c, res, route.provider) for c, res in zip(part, results, strict=True))
        return out

    done = await asyncio.gather(*(one_group(k, v) for k, v in groups.items()))
    return [x for part in done for x in part]


async def record(
    session: AsyncSession,
    results: Sequence[tuple[Claimed, SendResult, str]],
    policies: dict[str, Policy],
    now: datetime,
    stats: Round,
) -> None:
    """Step 3, in the caller's transaction."""
    updates: list[
        tuple[Any, ...]
    ] = []  # message_id, status, reason, due_at, provider, provider_id, delivered_at, lease, updated_at
    logs: list[tuple[Any, ...]] = []
    back: dict[str, dict[tuple[str, str], int]] = defaultdict(lambda: defaultdict(int))
    for c, res, provider in results:
        r = c.row
        attempts = r.attempts + 1
        if res.outcome in ("sent", "delivered"):
            updates.append(
                (
                    r.message_id,
                    res.outcome,
                    None,
                    now,
                    provider,
                    res.provider_id,
                    now if res.outcome == "delivered" else None,
                    None,
                    now,
                )
            )
            stats.sent += 1
            continue
        detail = orjson.dumps({"code": res.code, "detail": res.detail, "attempt": attempts}).decode()
        policy = policies.get(r.merchant_id) or Policy()
        if res.outcome == "retry":
            step = retry.next_step(
                attempts,
                "rate_limited" if res.retry_after_s else "transient",
                res.retry_after_s,
                policy.max_attempts,
                now=now,
                jitter=random.random(),
            )
        else:
            step = ("dead", "permanent")
        if step[0] == "retry":
            updates.append((r.message_id, "queued", "retrying", step[1], provider, None, None, None, now))
            logs.append((r.merchant_id, r.message_id, now, "retrying", res.code or "provider_error", detail))
            stats.retried += 1
            continue
        status = "failed" if res.outcome == "failed" else "dead"
        updates.append((r.message_id, status, res.code or status, now, provider, None, None, None, now))
        logs.append((r.merchant_id, r.message_id, now, status, res.code or status, detail))
        if c.credit is not None:
            back[r.merchant_id][c.credit] += 1
        if status == "failed":
            stats.failed += 1
        else:
            stats.dead += 1
    # A retried message keeps its credit (it is still going out).
    for merchant_id, credits in back.items():
        await profiles.give_back_credits(session, merchant_id, dict(credits))
    await bulk_update(
        session,
        messages,
        ["message_id"],
        ["status", "reason", "due_at", "provider", "provider_id", "delivered_at", "lease_until", "updated_at"],
        updates,
    )
    await log_rows(session, logs)


async def dispatch_once(
    notifier: Notifier, sessions: async_sessionmaker[AsyncSession], *, limit: int = 1000, now: datetime | None = None
) -> Round:
    clock_given = now is not None
    now = now or clock.now()
    async with sessions() as session, session.begin():
        claimed, stats = await claim(session, now, limit)
    if not claimed:
        return stats
    results = await send(notifier, sessions, claimed)
    async with sessions() as session, session.begin():
        policies = await policies_of(session, sorted({c.row.merchant_id for c in claimed}))
        await record(session, results, policies, now if clock_given else clock.now(), stats)
    return stats


async def dispatcher(runtime: Any, notifier: Notifier) -> None:
    """Background task: rounds while there is work, a short nap (or a wake-up) when there is none.
    On PostgreSQL several rounds run at once (one claims while another waits on its provider or
    its commit; SKIP LOCKED keeps their claims apart and the contacts lock keeps caps exact); on
    SQLite, one writer at a time, one."""
    workers = runtime.settings.notify_workers or (1 if runtime.engine.dialect.name == "sqlite" else 3)
    await asyncio.gather(*(_rounds(runtime, notifier) for _ in range(workers)))


async def _rounds(runtime: Any, notifier: Notifier) -> None:
    settings = runtime.settings
    idle = settings.notify_idle_ms / 1000
    while True:
        try:
            stats = await dispatch_once(notifier, runtime.sessions, limit=settings.notify_batch)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the database or a provider down: try again shortly, lose nothing
            log.warning("notifications.dispatch_failed", error=repr(exc))
            await asyncio.sleep(1.0)
            continue
        if stats.claimed < settings.notify_batch:
            notifier.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(notifier.wake.wait(), idle)
