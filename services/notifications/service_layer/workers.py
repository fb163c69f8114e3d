"""The notifications runtime's background work: the dispatcher, the campaign walker and the
birthday clock, sharing one Notifier (channels, buckets) and one segmentation client."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.notifications.adapters.tables import contacts, messaging
from services.notifications.service_layer.campaigns import campaign_worker
from services.notifications.service_layer.config import policy_of, rules_for
from services.notifications.service_layer.dispatch import dispatcher
from services.notifications.service_layer.enqueue import Want, enqueue
from services.notifications.service_layer.handlers import shops
from services.notifications.service_layer.state import notifier_for, release
from shared import clock, segmentation_api

log = structlog.get_logger("fugou.notifications")

BIRTHDAY_EVERY_S = 600.0


async def birthdays_once(sessions: async_sessionmaker[AsyncSession], public_url: str, now: datetime) -> int:
    """Enqueue today's birthday messages of every merchant with a birthday rule (its own day, on
    its own clock). Keyed birthday:<year>, so running it again the same day sends nothing twice."""
    queued = 0
    async with sessions() as session:
        m = messaging.merchants.c
        merchant_ids = [r.merchant_id for r in await session.execute(select(m.merchant_id).where(m.active.is_(True)))]
        rules = await rules_for(session, merchant_ids, {"birthday"})
    for merchant_id, mine in rules.items():
        async with sessions() as session, session.begin():
            shop = (await shops(session, [merchant_id])).get(merchant_id)
            if shop is None:
                continue
            local = now.astimezone(ZoneInfo(shop.tz))
            c = contacts.c
            who = [
                r.customer_id
                for r in await session.execute(
                    select(c.customer_id).where(
                        c.merchant_id == merchant_id, c.birthday == f"{local.month:02d}-{local.day:02d}"
                    )
                )
            ]
            wants = [
                Want(
                    cid,
                    "birthday",
                    f"birthday:{local.year}",
                    {"month": local.month, "day": local.day},
                    rule.channels,
                    rule.effective_purpose,
                    rule.value,
                    rule_id=rule.rule_id,
                )
                for rule in mine
                for cid in who
            ]
            done = await enqueue(session, shop, wants, await policy_of(session, merchant_id), now, public_url)
            queued += done.queued
    return queued


async def birthday_clock(runtime: Any) -> None:
    while True:
        try:
            await birthdays_once(runtime.sessions, runtime.settings.public_url, clock.now())
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("notifications.birthdays_failed", error=repr(exc))
        await asyncio.sleep(BIRTHDAY_EVERY_S)


def background(runtime: Any) -> Any:
    """Called as the runtime starts its background work: registers the Notifier at once (the
    consumer's handlers find it through the engine), then runs the three loops."""
    notifier = notifier_for(runtime)

    async def run() -> None:
        client = segmentation_api.client_for(runtime)
        try:
            await asyncio.gather(
                dispatcher(runtime, notifier),
                campaign_worker(runtime, lambda: client, notifier.wake, runtime.settings.public_url),
                birthday_clock(runtime),
            )
        finally:
            await release(runtime)
            await segmentation_api.release(runtime)

    return run()
