"""Campaigns: one message to every member of an audience, scheduled, with progress, pause,
resume and cancel.

The audience is a saved segmentation audience, a filter in segmentation's language (both read
through segmentation's API, streamed), or an explicit list of customer ids. The campaign worker
walks the audience in pages; each page is enqueued in one transaction that first locks the
campaign row, so a pause or a cancel between two pages is seen by the next one, and the page's
last customer id is the cursor a resumed (or restarted) walk skips to. Messages are deduplicated
by (campaign, customer): a page enqueued twice after a crash sends nothing twice.

Pause holds the campaign's waiting messages (``paused``) and stops the walk; resume releases them
and walks on; cancel ends both (``cancelled``). Messages already handed to a provider are not
called back."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any, Literal

import structlog
from pydantic import AwareDatetime, Field, model_validator
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.notifications.adapters.tables import campaigns, messages
from services.notifications.service_layer.config import ChannelChoice, Key, Purpose, Strict, policy_of
from services.notifications.service_layer.enqueue import Want, enqueue
from services.notifications.service_layer.handlers import shops
from shared import clock
from shared.db import bulk_insert
from shared.segmentation_api import AudienceNotFound, AudienceRejected, SegmentationClient, SegmentationUnavailable

log = structlog.get_logger("fugou.notifications")

PAGE = 5000
Status = Literal["scheduled", "running", "paused", "cancelled", "done", "failed"]


class Audience(Strict):
    audience_id: str | None = Field(None, description="A saved segmentation audience")
    filter: dict[str, Any] | None = Field(None, description="A filter in segmentation's audience language")
    customer_ids: list[Key] | None = Field(None, max_length=100_000, description="An explicit list")

    @model_validator(mode="after")
    def _one(self) -> Audience:
        given = [x for x in (self.audience_id, self.filter, self.customer_ids) if x is not None]
        if len(given) != 1:
            raise ValueError("exactly one of audience_id, filter, customer_ids")
        return self


class CampaignSpec(Strict):
    name: str = Field(min_length=1, max_length=128)
    audience: Audience
    channels: list[ChannelChoice] = Field(min_length=1, max_length=5)
    purpose: Purpose = "marketing"
    value: int = Field(0, ge=0)
    vars: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="Values of the variables the templates declare (read as vars.<name>)"
    )
    scheduled_at: AwareDatetime | None = Field(None, description="null: now")


async def create(session: AsyncSession, merchant_id: str, spec: CampaignSpec, now: datetime) -> str:
    campaign_id = f"cmp-{uuid.uuid4().hex[:16]}"
    at = spec.scheduled_at or now
    await bulk_insert(
        session,
        campaigns,
        [
            "merchant_id",
            "campaign_id",
            "body",
            "status",
            "scheduled_at",
            "cursor",
            "audience_done",
            "enqueued",
            "created_at",
            "updated_at",
        ],
        [(merchant_id, campaign_id, spec.model_dump_json(), "scheduled", at, None, False, 0, now, now)],
    )
    return campaign_id


async def get(session: AsyncSession, merchant_id: str, campaign_id: str, *, lock: bool = False) -> Any:
    q = select(campaigns).where(campaigns.c.merchant_id == merchant_id, campaigns.c.campaign_id == campaign_id)
    if lock:
        q = q.with_for_update()
    return (await session.execute(q)).first()


async def progress(session: AsyncSession, merchant_id: str, campaign_id: str) -> dict[str, int]:
    m = messages.c
    rows = await session.execute(
        select(m.status, func.count())
        .where(m.merchant_id == merchant_id, m.campaign_id == campaign_id)
        .group_by(m.status)
    )
    return {status: n for status, n in rows}


class Conflict(ValueError):
    pass


async def set_status(
    session: AsyncSession,
    merchant_id: str,
    campaign_id: str,
    action: Literal["pause", "resume", "cancel"],
    now: datetime,
) -> str | None:
    """The campaign's new status (None: no such campaign). Raises Conflict for an action its
    status does not allow (resume a cancelled campaign…)."""
    row = await get(session, merchant_id, campaign_id, lock=True)
    if row is None:
        return None
    m = messages.c
    mine = (m.merchant_id == merchant_id, m.campaign_id == campaign_id)
    if action == "pause":
        if row.status not in ("scheduled", "running"):
            raise Conflict(f"a {row.status} campaign cannot be paused")
        new = "paused"
        await session.execute(
            update(messages).where(*mine, m.status.in_(("queued", "held"))).values(status="paused", updated_at=now)
        )
    elif action == "resume":
        if row.status != "paused":
            raise Conflict(f"a {row.status} campaign cannot be resumed")
        new = "running" if row.audience_done is False else "done"
        await session.execute(
            update(messages).where(*mine, m.status == "paused").values(status="queued", due_at=now, updated_at=now)
        )
    else:
        if row.status in ("cancelled", "done", "failed"):
            raise Conflict(f"a {row.status} campaign cannot be cancelled")
        new = "cancelled"
        await session.execute(
            update(messages)
            .where(*mine, m.status.in_(("queued", "held", "paused")))
            .values(status="cancelled", reason="campaign_cancelled", updated_at=now)
        )
    await session.execute(
        update(campaigns)
        .where(campaigns.c.merchant_id == merchant_id, campaigns.c.campaign_id == campaign_id)
        .values(status=new, updated_at=now)
    )
    return new


async def _members(client: SegmentationClient | None, merchant_id: str, audience: Audience) -> AsyncIterator[list[str]]:
    if audience.customer_ids is not None:
        ids = sorted(set(audience.customer_ids))
        for i in range(0, len(ids), PAGE):
            yield ids[i : i + PAGE]
        return
    if client is None:
        raise SegmentationUnavailable("no segmentation client")
    body: dict[str, Any] = (
        {"audience_id": audience.audience_id} if audience.audience_id else {"filter": audience.filter}
    )
    async for chunk in client.members(merchant_id, body, PAGE):
        yield chunk


async def walk(
    sessions: async_sessionmaker[AsyncSession],
    client: SegmentationClient | None,
    merchant_id: str,
    campaign_id: str,
    public_url: str,
    wake: asyncio.Event | None = None,
) -> str:
    """Enqueue the campaign's audience from its cursor on; returns the status it ends in."""
    async with sessions() as session:
        row = await get(session, merchant_id, campaign_id)
    if row is None or row.status not in ("scheduled", "running"):
        return row.status if row is not None else "missing"
    spec = CampaignSpec.model_validate_json(row.body)
    cursor = row.cursor
    try:
        async for chunk in _members(client, merchant_id, spec.audience):
            if cursor is not None and chunk[-1] <= cursor:
                continue  # enqueued before a pause or a restart
            async with sessions() as session, session.begin():
                now = clock.now()
                current = await get(session, merchant_id, campaign_id, lock=True)
                if current is None or current.status not in ("scheduled", "running"):
                    return current.status if current is not None else "missing"
                shop = (await shops(session, [merchant_id])).get(merchant_id)
                if shop is None:
                    return current.status
                policy = await policy_of(session, merchant_id)
                data = {"id": campaign_id, "name": spec.name}
                wants = [
                    Want(
                        c,
                        "campaign",
                        campaign_id,
                        data,
                        spec.channels,
                        spec.purpose,
                        spec.value,
                        campaign_id=campaign_id,
                        vars=dict(spec.vars),
                    )
                    for c in chunk
                    if cursor is None or c > cursor
                ]
                done = await enqueue(session, shop, wants, policy, now, public_url)
                cursor = chunk[-1]
                await session.execute(
                    update(campaigns)
                    .where(campaigns.c.merchant_id == merchant_id, campaigns.c.campaign_id == campaign_id)
                    .values(
                        status="running",
                        cursor=cursor,
                        enqueued=campaigns.c.enqueued + done.queued + done.skipped,
                        updated_at=now,
                    )
                )
            if wake is not None:
                wake.set()  # the dispatcher starts on this page while the next one is read
    except (AudienceNotFound, AudienceRejected) as e:
        async with sessions() as session, session.begin():
            await session.execute(
                update(campaigns)
                .where(campaigns.c.merchant_id == merchant_id, campaigns.c.campaign_id == campaign_id)
                .values(status="failed", error=str(e)[:1000], updated_at=clock.now())
            )
        return "failed"
    async with sessions() as session, session.begin():
        current = await get(session, merchant_id, campaign_id, lock=True)
        if current is None or current.status not in ("scheduled", "running"):
            return current.status if current is not None else "missing"
        await session.execute(
            update(campaigns)
            .where(campaigns.c.merchant_id == merchant_id, campaigns.c.campaign_id == campaign_id)
            .values(status="done", audience_done=True, updated_at=clock.now())
        )
    return "done"


async def due(session: AsyncSession, now: datetime, limit: int = 10) -> list[tuple[str, str]]:
    c = campaigns.c
    rows = await session.execute(
        select(c.merchant_id, c.campaign_id)
        .where(c.status.in_(("scheduled", "running")), c.scheduled_at <= now)
        .order_by(c.scheduled_at)
        .limit(limit)
    )
    return [(r.merchant_id, r.campaign_id) for r in rows]


async def campaign_worker(runtime: Any, client_of_runtime: Any, wake: asyncio.Event, public_url: str) -> None:
    """Background task: walk every due campaign; nap when there is none."""
    while True:
        try:
            async with runtime.sessions() as session:
                todo = await due(session, clock.now())
            for merchant_id, campaign_id in todo:
                await walk(runtime.sessions, client_of_runtime(), merchant_id, campaign_id, public_url, wake)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # segmentation or the database down: the cursor keeps our place
            log.warning("notifications.campaign_walk_failed", error=repr(exc))
            await asyncio.sleep(2.0)
            continue
        await asyncio.sleep(1.0 if not todo else 0)
