"""A merchant's loyalty rules as one validated document: earning, the ledger (expiry, debt policy,
notice), the checkout offset and, optionally, the member levels. Saved whole (``PUT
/v1/loyalty/rules``), version bumped; read per batch by the consumer and cached briefly by the
read endpoints.

When a ladder of levels is set, the points multipliers come from its benefits
(``benefits.points_multiplier_permille``): ``earn.level_multipliers`` must then be empty, so
there is one place that says what a level earns."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from pydantic import Field, model_validator
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from services.loyalty.adapters.tables import messaging
from services.loyalty.adapters.tables import rules as rules_table
from services.loyalty.domain.common import Strict
from services.loyalty.domain.earning import EarnRules
from services.loyalty.domain.ledger import LedgerRules
from services.loyalty.domain.levels import LevelRules, multipliers
from services.loyalty.domain.redemption import OffsetRules
from shared import clock
from shared.db import in_values

DEFAULT_TZ = "Asia/Shanghai"


class LoyaltyRules(Strict):
    earn: EarnRules = Field(default_factory=EarnRules)
    ledger: LedgerRules = Field(default_factory=LedgerRules)
    offset: OffsetRules = Field(default_factory=OffsetRules)
    levels: LevelRules | None = Field(default=None, description="Member levels; null: none.")

    @model_validator(mode="after")
    def _one_source_of_multipliers(self) -> LoyaltyRules:
        if self.levels is not None and self.earn.level_multipliers:
            raise ValueError(
                "earn.level_multipliers must be empty when levels are set: give each level its "
                "multiplier in levels[].benefits.points_multiplier_permille"
            )
        return self

    def earning(self) -> EarnRules:
        """The earn rules with the ladder's multipliers (when there is a ladder)."""
        if self.levels is None:
            return self.earn
        return self.earn.with_level_multipliers(multipliers(self.levels))


@dataclass(frozen=True, slots=True)
class InForce:
    """The rules in force for one merchant, with what every operation derives from them."""

    merchant_id: str
    version: int
    rules: LoyaltyRules
    earn: EarnRules
    tz: str

    @property
    def ledger(self) -> LedgerRules:
        return self.rules.ledger

    @property
    def levels(self) -> LevelRules | None:
        return self.rules.levels


def _parse(r: Any) -> tuple[int, LoyaltyRules]:
    if r is None:
        return 0, LoyaltyRules()
    return r.version, LoyaltyRules(
        earn=EarnRules.model_validate_json(r.earn_rules),
        ledger=LedgerRules.model_validate_json(r.ledger_rules),
        offset=OffsetRules.model_validate_json(r.offset_rules),
        levels=LevelRules.model_validate_json(r.level_rules) if r.level_rules else None,
    )


async def in_force_many(session: AsyncSession | AsyncConnection, merchant_ids: list[str]) -> dict[str, InForce]:
    """The rules and time zone of each merchant (defaults where nothing was saved), two queries."""
    t, m = rules_table, messaging.merchants
    rows = {r.merchant_id: r for r in await session.execute(select(t).where(in_values(t.c.merchant_id, merchant_ids)))}
    zones = dict(
        (
            await session.execute(select(m.c.merchant_id, m.c.timezone).where(in_values(m.c.merchant_id, merchant_ids)))
        ).all()
    )
    out = {}
    for mid in merchant_ids:
        version, parsed = _parse(rows.get(mid))
        out[mid] = InForce(mid, version, parsed, parsed.earning(), zones.get(mid) or DEFAULT_TZ)
    return out


async def in_force(session: AsyncSession | AsyncConnection, merchant_id: str) -> InForce:
    return (await in_force_many(session, [merchant_id]))[merchant_id]


async def save(session: AsyncSession, merchant_id: str, body: LoyaltyRules) -> int:
    """Store the merchant's rules (whole), in the caller's transaction; returns the new version."""
    t = rules_table
    current = (
        await session.execute(select(t.c.version).where(t.c.merchant_id == merchant_id).with_for_update())
    ).scalar()
    version = (current or 0) + 1
    values = {
        "version": version,
        "earn_rules": body.earn.model_dump_json(),
        "ledger_rules": body.ledger.model_dump_json(),
        "offset_rules": body.offset.model_dump_json(),
        "level_rules": body.levels.model_dump_json() if body.levels is not None else None,
        "updated_at": clock.now(),
    }
    if current is None:
        await session.execute(t.insert().values(merchant_id=merchant_id, **values))
    else:
        await session.execute(t.update().where(t.c.merchant_id == merchant_id).values(**values))
    return version


class RulesCache:
    """Rules per merchant for the read endpoints, for ``ttl`` seconds (a save through this process
    invalidates at once; one made elsewhere shows within ``ttl``)."""

    def __init__(self, ttl: float = 2.0) -> None:
        self.ttl = ttl
        self._hits: dict[str, tuple[float, InForce]] = {}

    def invalidate(self, merchant_id: str) -> None:
        self._hits.pop(merchant_id, None)

    async def get(self, conn: AsyncSession | AsyncConnection, merchant_id: str) -> InForce:
        now = time.monotonic()
        hit = self._hits.get(merchant_id)
        if hit is not None and hit[0] > now:
            return hit[1]
        found = await in_force(conn, merchant_id)
        if len(self._hits) > 10_000:
            self._hits.clear()
        self._hits[merchant_id] = (now + self.ttl, found)
        return found
