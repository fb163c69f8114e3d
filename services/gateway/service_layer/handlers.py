"""The gateway's use cases: create merchants and keys, take shop events. Each commits once, at
the boundary, with the events it raises staged in the same transaction."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import select
from sqlalchemy.engine import CursorResult
from sqlalchemy.ext.asyncio import AsyncSession

from services.gateway.adapters.tables import messaging
from services.gateway.domain.ingestion import Outcome, validate_batch
from shared import clock
from shared.events import new_event
from shared.inbox import Inbox
from shared.outbox import Outbox
from shared.tenancy import hash_api_key, new_api_key, new_jwt_secret

outbox = Outbox(messaging.outbox)
inbox = Inbox(messaging.inbox)
merchants = messaging.merchants
keys = messaging.merchant_keys


class MerchantExists(Exception):
    pass


@dataclass(frozen=True)
class MerchantCredentials:
    merchant_id: str
    name: str
    timezone: str
    api_key: str
    jwt_secret: str
    created: bool


async def _publish_merchant(session: AsyncSession, merchant_id: str) -> None:
    row = (await session.execute(select(merchants).where(merchants.c.merchant_id == merchant_id))).one()
    hashes = list((await session.execute(select(keys.c.key_hash).where(keys.c.merchant_id == merchant_id))).scalars())
    await outbox.stage(
        session,
        [
            new_event(
                "merchant.upserted",
                merchant_id,
                data={
                    "name": row.name,
                    "timezone": row.timezone,
                    "api_key_hashes": sorted(hashes),
                    "jwt_secret": row.jwt_secret.decode(),
                    "active": row.active,
                },
            )
        ],
    )


async def create_merchant(
    session: AsyncSession, *, merchant_id: str, name: str, timezone_name: str, pepper: str, api_key: str | None = None
) -> MerchantCredentials:
    async with session.begin():
        exists = (
            await session.execute(select(merchants.c.merchant_id).where(merchants.c.merchant_id == merchant_id))
        ).first()
        if exists:
            raise MerchantExists(merchant_id)
        api_key = api_key or new_api_key()
        secret = new_jwt_secret()
        await session.execute(
            merchants.insert().values(
                merchant_id=merchant_id,
                name=name,
                timezone=timezone_name,
                jwt_secret=secret.encode(),
                active=True,
                updated_at=clock.now(),
            )
        )
        await session.execute(keys.insert().values(key_hash=hash_api_key(api_key, pepper), merchant_id=merchant_id))
        await _publish_merchant(session, merchant_id)
    return MerchantCredentials(merchant_id, name, timezone_name, api_key, secret, created=True)


async def add_api_key(session: AsyncSession, *, merchant_id: str, pepper: str, api_key: str | None = None) -> str:
    """Add a key to a merchant (rotation: add the new one, then revoke the old)."""
    api_key = api_key or new_api_key()
    digest = hash_api_key(api_key, pepper)
    async with session.begin():
        taken = (await session.execute(select(keys.c.merchant_id).where(keys.c.key_hash == digest))).first()
        if taken is None:
            await session.execute(keys.insert().values(key_hash=digest, merchant_id=merchant_id))
            await _publish_merchant(session, merchant_id)
    return api_key


async def revoke_api_key(session: AsyncSession, *, merchant_id: str, api_key: str, pepper: str) -> bool:
    digest = hash_api_key(api_key, pepper)
    async with session.begin():
        stmt = keys.delete().where(keys.c.key_hash == digest, keys.c.merchant_id == merchant_id)
        # A DELETE runs on a cursor: its result is a CursorResult (AsyncSession.execute says Result).
        result = cast("CursorResult[Any]", await session.execute(stmt))
        if result.rowcount:
            await _publish_merchant(session, merchant_id)
    return bool(result.rowcount)


async def ingest(session: AsyncSession, merchant_id: str, raw: list[Any]) -> list[Outcome]:
    """Validate, drop what was taken before (by event_id), and stage the rest for the shop topics,
    all in one transaction: an accepted event is never lost, a duplicate never published twice."""
    outcomes = validate_batch(raw, merchant_id)
    valid = [o for o in outcomes if o.status == "accepted"]
    if valid:
        async with session.begin():
            fresh = await inbox.claim(session, [o.event for o in valid if o.event is not None])
            fresh_ids = {e.event_id for e in fresh}  # one merchant per call
            for o in valid:
                if o.event_id not in fresh_ids:
                    o.status, o.reason, o.field = "duplicate", "event_id already received", "event_id"
            await outbox.stage(session, fresh)
    return outcomes
