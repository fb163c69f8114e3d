"""A configuration change that moves only boundaries, tiers or the class split is re-scored in SQL
(tests/integration/test_segmentation_rescore_in_sql.py checks, on SQLite and PostgreSQL, that it
stores and announces what the whole path would). A change of period or lifecycle, or rows still
written under an older period, must take the whole path."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from sqlalchemy import func, select

from services.segmentation.adapters.tables import segments
from services.segmentation.domain.config import RfmConfig
from services.segmentation.service_layer import segments as seg
from services.segmentation.service_layer.rfm import save_config
from shared import clock
from tests.segmentation_history import MERCHANT, feed, generate_history, segmentation


async def test_a_change_of_period_or_lifecycle_goes_through_the_whole_path(tmp_path: Path) -> None:
    now = clock.now()
    events = generate_history(40, 7, start=now - timedelta(days=200), days=190)
    async with segmentation(tmp_path) as rt:
        await feed(rt, [events])
        for changed in ({"period_days": 90}, {"lifecycle": {"dormant_days": 45}}):
            async with rt.sessions() as session, session.begin():
                version = await save_config(session, MERCHANT, RfmConfig.model_validate(changed), "Asia/Shanghai")
                assert await seg.rescore_mode(session, MERCHANT, version) == "full"
        # Back to the default: rows written under the period of 90 days still hold F and M of it.
        async with rt.sessions() as session, session.begin():
            version = await save_config(session, MERCHANT, RfmConfig(), "Asia/Shanghai")
            oldest = (await session.execute(select(func.min(segments.c.config_version)))).scalar()
            assert oldest == 0
            assert await seg.rescore_mode(session, MERCHANT, version) == "full"
