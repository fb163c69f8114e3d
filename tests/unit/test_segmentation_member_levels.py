"""Member levels from loyalty (level.changed) in segmentation's audiences: the latest change
wins whatever the delivery order, and `member_level` filters select by it (NOT includes the
customers with no level)."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter
from sqlalchemy import func, select

from services.segmentation.adapters.audience_sql import Compiler
from services.segmentation.adapters.tables import member_levels
from services.segmentation.domain.audience import Filter
from shared import clock
from tests.factories import order_paid
from tests.segmentation_history import feed, segmentation

FILTER: TypeAdapter[Any] = TypeAdapter(Filter)
M = "demo"
NOW = clock.now()


def level_changed(customer: str, to: str, at: datetime) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "type": "level.changed",
        "merchant_id": M,
        "customer_id": customer,
        "occurred_at": at.isoformat(),
        "data": {"from_level": None, "to_level": to, "direction": "upgrade", "growth": 100},
    }


async def test_levels_from_loyalty_select_audiences(tmp_path: Path) -> None:
    async with segmentation(tmp_path) as rt:
        orders = [order_paid(M, f"c{i}", f"o{i}", 10_000, at=NOW - timedelta(days=3)) for i in range(4)]
        # c0: silver then gold, delivered newest first; c1: gold then downgraded to silver; c2: no level.
        await feed(
            rt,
            [
                orders,
                [
                    level_changed("c0", "gold", NOW - timedelta(days=1)),
                    level_changed("c1", "silver", NOW - timedelta(hours=1)),
                ],
                [
                    level_changed("c0", "silver", NOW - timedelta(days=2)),
                    level_changed("c1", "gold", NOW - timedelta(days=5)),
                    level_changed("c3", "silver", NOW - timedelta(days=1)),
                ],
            ],
        )
        async with rt.sessions() as session:
            held = dict((await session.execute(select(member_levels.c.customer_id, member_levels.c.level))).all())
            assert held == {"c0": "gold", "c1": "silver", "c3": "silver"}

            async def members(f: dict[str, Any]) -> set[str]:
                parsed = FILTER.validate_python(f)
                comp = Compiler(M, NOW, "Asia/Shanghai", for_filter=parsed)
                return set((await session.execute(comp.select(parsed))).scalars())

            assert await members({"member_level": ["gold"]}) == {"c0"}
            assert await members({"member_level": ["silver", "gold"]}) == {"c0", "c1", "c3"}
            assert await members({"not": {"member_level": ["gold"]}}) == {"c1", "c2", "c3"}
            assert await members({"and": [{"member_level": ["silver"]}, {"not": {"region": ["北京"]}}]}) == {"c1", "c3"}
            other = Compiler("other", NOW, "Asia/Shanghai")
            parsed = FILTER.validate_python({"member_level": ["gold"]})
            assert (
                await session.execute(select(func.count()).select_from(other.select(parsed).subquery()))
            ).scalar_one() == 0
