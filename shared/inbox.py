"""The inbox: each applied ``(merchant_id, event_id)``, recorded in the same transaction as its effect.

``claim`` inserts the batch's ids with ON CONFLICT DO NOTHING and returns the events whose ids
were new. Redelivered events (a consumer restarted before its offset commit, a relay that
published twice, a shop that sent the same event again) find their id taken and are skipped."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Column, MetaData, String, Table
from sqlalchemy.ext.asyncio import AsyncSession

from shared import clock
from shared.db import UTCDateTime, bulk_insert
from shared.events import EnvelopeBase


def inbox_table(metadata: MetaData) -> Table:
    return Table(
        "inbox",
        metadata,
        # Keyed per merchant: one tenant reusing another's event_id must not swallow its event.
        Column("merchant_id", String(128), primary_key=True),
        Column("event_id", String(128), primary_key=True),
        Column("type", String(64), nullable=False),
        Column("applied_at", UTCDateTime, nullable=False),
    )


class Inbox:
    def __init__(self, table: Table):
        self.table = table

    async def claim(self, session: AsyncSession, events: Sequence[EnvelopeBase]) -> list[EnvelopeBase]:
        """Record the ids of events not applied before; return those events, in order."""
        unique: dict[tuple[str, str], EnvelopeBase] = {}
        for e in events:
            unique.setdefault((e.merchant_id, e.event_id), e)
        if not unique:
            return []
        now = clock.now()
        rows = [(e.merchant_id, e.event_id, e.type, now) for e in unique.values()]
        fresh = {
            (r[0], r[1])
            for r in await bulk_insert(
                session,
                self.table,
                ["merchant_id", "event_id", "type", "applied_at"],
                rows,
                conflict=["merchant_id", "event_id"],
                returning=["merchant_id", "event_id"],
            )
        }
        return [e for key, e in unique.items() if key in fresh]
