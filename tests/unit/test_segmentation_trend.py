"""Segments over time: one snapshot of each active merchant's counts per local day (the row of the
day replaced by a later snapshot of it), and GET /v1/segments/trend reading them oldest first with
today's counts computed live. The API runs alone (no worker): the tests take the snapshots with
explicit instants on either side of the merchant's midnight; the last test starts the consumer
role to see the clock registered and snapshotting at start-up. The service's clock stands still at
the instant the days below are counted from, so no midnight can pass between the two."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import select

from services.segmentation.adapters.tables import customer_tags, segment_snapshots, segments
from services.segmentation.service_layer.snapshots import snapshot_worker, take_snapshots
from services.segmentation.spec import SPEC
from shared import clock
from shared.cli import build_service_app
from shared.clock import ManualClock
from tests.conftest import embedded_settings, running
from tests.factories import CST, eventually, order_paid
from tests.segmentation_service import FIXED, Service, Shop, add_shop, serving

PEPPER = "fugou-development-only"
NOW = clock.now()  # the suite's now at import; each test's clock is set to it
TODAY = NOW.astimezone(CST).date()  # Asia/Shanghai has no DST: CST is its zone
# Yesterday's midnight in Shanghai (16:00 UTC the day before): one minute either side are two days.
MIDNIGHT = datetime.combine(TODAY - timedelta(days=1), time(0, 0), tzinfo=CST).astimezone(UTC)
BEFORE, AFTER = MIDNIGHT - timedelta(minutes=1), MIDNIGHT + timedelta(minutes=1)
DAY1, DAY2 = (TODAY - timedelta(days=2)).isoformat(), (TODAY - timedelta(days=1)).isoformat()


def orders(merchant_id: str, customer_id: str, n: int, amount: int, days_ago: int) -> list[dict[str, Any]]:
    return [
        order_paid(
            merchant_id, customer_id, f"{merchant_id}-{customer_id}-{i}", amount, at=NOW - timedelta(days=days_ago + i)
        )
        for i in range(n)
    ]


async def configured(service: Service, merchant_id: str) -> Shop:
    shop = await add_shop(service.rt, merchant_id, PEPPER)
    r = await service.client.put("/v1/segmentation/config", json=FIXED, headers=shop.h)
    assert r.status_code == 200, r.text
    await service.run_jobs()
    return shop


async def summary(service: Service, shop: Shop) -> dict[str, Any]:
    r = await service.client.get("/v1/segments/summary", headers=shop.h)
    assert r.status_code == 200, r.text
    return r.json()


async def lifecycle_tags(service: Service, merchant_id: str) -> dict[str, int]:
    """Customers per tag, from the segments' own tag lists (custom tags left out)."""
    async with service.rt.sessions() as session:
        lists = (await session.execute(select(segments.c.tags).where(segments.c.merchant_id == merchant_id))).scalars()
        return dict(Counter(t for tags in lists for t in orjson.loads(tags) if not t.startswith("custom:")))


async def snapshot_rows(service: Service, merchant_id: str) -> list[Any]:
    async with service.rt.sessions() as session:
        return (
            await session.execute(
                select(segment_snapshots)
                .where(segment_snapshots.c.merchant_id == merchant_id)
                .order_by(segment_snapshots.c.day)
            )
        ).all()


def assert_point_is_the_summary(point: dict[str, Any], s: dict[str, Any], tags: dict[str, int]) -> None:
    for k in (
        "config_version",
        "customers",
        "tiers",
        "classes",
        "cells",
        "repurchase_rate",
        "repeat_customers",
        "buying_customers",
    ):
        assert point[k] == s[k], k
    assert point["tags"] == tags


def as_point(row: Any) -> dict[str, Any]:
    return {
        "config_version": row.config_version,
        "customers": row.customers,
        "tiers": orjson.loads(row.tiers),
        "classes": orjson.loads(row.classes),
        "cells": orjson.loads(row.cells),
        "tags": orjson.loads(row.tags),
        "repeat_customers": row.repeat_buyers,
        "buying_customers": row.buyers,
        "repurchase_rate": round(row.repeat_buyers / row.buyers, 4) if row.buyers else 0.0,
    }


@pytest.fixture
async def service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, frozen_clock: ManualClock) -> Any:
    frozen_clock.set(NOW)
    async with serving(tmp_path, monkeypatch) as s:
        yield s


async def test_a_snapshot_per_local_day_keeps_the_summary_of_its_moment_and_the_trend_reads_them(
    service: Service,
) -> None:
    a = await configured(service, "m-a")
    b = await configured(service, "m-b")
    await add_shop(service.rt, "m-off", PEPPER)
    await service.sql(
        service.rt.spec.tables.merchants.update()
        .where(service.rt.spec.tables.merchants.c.merchant_id == "m-off")
        .values(active=False)
    )
    # m-a: a head customer, a new one (one order 10 days ago), a dormant one (100 days ago).
    await service.feed(
        orders("m-a", "vip", 5, 30_000, 3) + orders("m-a", "fresh", 1, 5_000, 10) + orders("m-a", "gone", 1, 5_000, 100)
    )
    await service.feed(orders("m-b", "only", 2, 8_000, 5))
    await service.sql(customer_tags.insert().values(merchant_id="m-a", customer_id="vip", tag="custom:vip"))

    # 15:59 UTC: the day before yesterday in Shanghai. Every active merchant, the inactive one not.
    assert await take_snapshots(service.rt.sessions, BEFORE) == 2
    first = await summary(service, a)
    first_tags = await lifecycle_tags(service, "m-a")
    assert first["customers"] == 3 and first_tags["new"] == first_tags["dormant"] == 1
    assert "replenish_due:milk-powder" in first_tags  # the vip's milk powder, 30-day cycle
    rows = await snapshot_rows(service, "m-a")
    assert [r.day for r in rows] == [DAY1] and rows[0].taken_at == BEFORE
    assert_point_is_the_summary(as_point(rows[0]), first, first_tags)
    assert await snapshot_rows(service, "m-off") == []

    # Two more customers, then 16:01 UTC: yesterday in Shanghai, a second row; the first stands.
    await service.feed(orders("m-a", "twice", 2, 20_000, 1) + orders("m-a", "once", 1, 3_000, 2))
    assert await take_snapshots(service.rt.sessions, AFTER) == 2
    second = await summary(service, a)
    second_tags = await lifecycle_tags(service, "m-a")
    assert second["customers"] == 5 and second != first
    rows = await snapshot_rows(service, "m-a")
    assert [r.day for r in rows] == [DAY1, DAY2]
    assert_point_is_the_summary(as_point(rows[0]), first, first_tags)
    assert_point_is_the_summary(as_point(rows[1]), second, second_tags)

    # Later the same day: still one row for it, with the later counts; an earlier instant arriving
    # late (another replica's slower snapshot) does not take them back.
    await service.feed(orders("m-a", "third", 3, 9_000, 1))
    later = AFTER + timedelta(hours=2)
    assert await take_snapshots(service.rt.sessions, later) == 2
    assert await take_snapshots(service.rt.sessions, AFTER + timedelta(hours=1)) == 2
    third = await summary(service, a)
    third_tags = await lifecycle_tags(service, "m-a")
    rows = await snapshot_rows(service, "m-a")
    assert [r.day for r in rows] == [DAY1, DAY2] and rows[1].taken_at == later
    assert third["customers"] == 6
    assert_point_is_the_summary(as_point(rows[1]), third, third_tags)
    # And a replica asked to skip what was snapshotted within the hour skips it.
    assert (
        await take_snapshots(service.rt.sessions, later + timedelta(minutes=30), unless_within=timedelta(hours=1)) == 0
    )

    # The trend: oldest first, only the days with a snapshot, and today computed live.
    r = await service.client.get("/v1/segments/trend", headers=a.h)
    assert r.status_code == 200, r.text
    trend = r.json()
    assert trend["timezone"] == "Asia/Shanghai"
    assert [d["day"] for d in trend["days"]] == [DAY1, DAY2]
    assert_point_is_the_summary(trend["days"][0], first, first_tags)
    assert_point_is_the_summary(trend["days"][1], third, third_tags)
    assert trend["today"]["day"] == TODAY.isoformat()
    assert_point_is_the_summary(trend["today"], await summary(service, a), third_tags)
    assert trend["class_names"] == first["class_names"]
    assert trend["class_names"]["important_value"] == {"zh_cn": "重要价值客户", "en": "Important value"}
    # days counts back from today, today included: 2 days are yesterday and today.
    r = await service.client.get("/v1/segments/trend", params={"days": 2}, headers=a.h)
    assert [d["day"] for d in r.json()["days"]] == [DAY2]

    # The other merchant sees its own counts only.
    trend_b = (await service.client.get("/v1/segments/trend", params={"days": 400}, headers=b.h)).json()
    assert [d["day"] for d in trend_b["days"]] == [DAY1, DAY2]
    tiers_b = (await summary(service, b))["tiers"]
    assert all(d["customers"] == 1 and d["tiers"] == tiers_b for d in trend_b["days"])
    assert trend_b["today"]["customers"] == 1 and trend_b["today"]["tags"] == await lifecycle_tags(service, "m-b")
    assert "new" not in trend_b["today"]["tags"]  # m-a's new customer


async def test_a_merchant_without_snapshots_sees_one_point_today(service: Service) -> None:
    shop = await configured(service, "m-new")
    r = await service.client.get("/v1/segments/trend", headers=shop.h)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["days"] == [] and body["today"]["day"] == TODAY.isoformat()
    assert body["today"]["customers"] == 0 and body["today"]["repurchase_rate"] == 0.0
    assert body["today"]["tiers"] == {"S": 0, "A": 0, "B": 0, "C": 0} and len(body["today"]["cells"]) == 27


@pytest.mark.parametrize("days", ["0", "401", "-1", "many"])
async def test_days_out_of_range_is_a_422_on_query_days(service: Service, days: str) -> None:
    shop = await configured(service, "m-a")
    r = await service.client.get("/v1/segments/trend", params={"days": days}, headers=shop.h)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["fields"][0]["field"] == "query.days"


async def test_the_trend_needs_the_merchants_key(service: Service) -> None:
    r = await service.client.get("/v1/segments/trend")
    assert r.status_code == 401 and r.json()["error"]["fields"][0]["field"] == "header.X-Api-Key"


async def test_the_clock_snapshots_at_start_up(service: Service) -> None:
    shop = await configured(service, "m-a")
    await service.feed(orders("m-a", "vip", 5, 30_000, 3))
    worker = asyncio.create_task(snapshot_worker(service.rt.sessions))
    try:
        rows = await eventually(lambda: snapshot_rows(service, "m-a"), lambda rs: len(rs) == 1, timeout=10)
    finally:
        worker.cancel()
        with pytest.raises(asyncio.CancelledError):
            await worker
    assert rows[0].day == TODAY.isoformat()
    assert_point_is_the_summary(as_point(rows[0]), await summary(service, shop), await lifecycle_tags(service, "m-a"))


async def test_the_segmentation_runtime_runs_the_clock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, frozen_clock: ManualClock
) -> None:
    frozen_clock.set(NOW)
    async with serving(tmp_path, monkeypatch) as s:  # the merchant exists before the worker starts
        await add_shop(s.rt, "m-a", PEPPER)
    app = build_service_app(SPEC, embedded_settings(tmp_path), {"api", "migrate", "consumer"})
    async with running(app):
        rt = app.state.runtimes["segmentation"]

        async def days() -> list[str]:
            async with rt.sessions() as session:
                return list(
                    (
                        await session.execute(
                            select(segment_snapshots.c.day).where(segment_snapshots.c.merchant_id == "m-a")
                        )
                    ).scalars()
                )

        assert await eventually(days, lambda d: len(d) == 1, timeout=10) == [TODAY.isoformat()]
