"""Stored segments: scored as orders arrive, re-scored by a background job after a configuration
change (announcing only the customers whose segment changed), and summarised; on the embedded
stack (in-process bus, SQLite) and on Kafka and PostgreSQL. (An imported history queued for
scoring is tests/unit/test_segments.py.)"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from sqlalchemy import select

from services.embedded import build_embedded_app
from services.segmentation.adapters.tables import messaging
from shared import clock
from shared.events import parse_event
from shared.settings import Settings
from tests.conftest import running
from tests.factories import eventually, order_paid

KEY = "fg_segments_key"
H = {"X-Api-Key": KEY}
FIXED = {
    "period_days": None,
    "levels": 3,
    "boundaries": {"mode": "fixed", "recency_days": [30, 90], "frequency": [2, 4], "monetary_fen": [10_000, 50_000]},
    "class_split": {"mode": "fixed", "recency_days": 30, "frequency": 2, "monetary_fen": 20_000},
}


async def segment_events(app) -> list:  # type: ignore[no-untyped-def]
    """segment.changed events staged or already published by segmentation, from its outbox and the bus.
    The outbox is read first: an event the relay moves meanwhile is then read twice (deduplicated
    by event_id), never missed."""
    rt = app.state.runtimes["segmentation"]
    async with rt.sessions() as session:
        staged = [parse_event(p) for p in (await session.execute(select(messaging.outbox.c.payload))).scalars()]
    bus = app.state.bus
    if hasattr(bus, "db"):
        cur = await bus.db.execute("SELECT value FROM bus_log WHERE topic = 'fugou.segments'")
        rows = [parse_event(r[0]) for r in await cur.fetchall()]
        await cur.close()
    else:  # Kafka: read the topic from the start
        from aiokafka import AIOKafkaConsumer

        consumer = AIOKafkaConsumer(
            bus.prefix + "fugou.segments",
            bootstrap_servers=bus.bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            group_id=None,
        )
        await consumer.start()
        rows = []
        try:
            while True:
                batch = await consumer.getmany(timeout_ms=1500)
                if not batch:
                    break
                rows += [parse_event(m.value) for msgs in batch.values() for m in msgs]
        finally:
            await consumer.stop()
    unique = {e.event_id: e for e in [*staged, *rows]}
    return [e for e in unique.values() if e.type == "segment.changed"]


async def test_a_configuration_change_rescores_everyone_and_announces_only_the_changes(
    stack: Callable[..., Settings],
) -> None:
    app = build_embedded_app(stack(bootstrap_api_key=KEY), announce=False)
    now = clock.now()
    async with running(app) as client:
        assert (await client.put("/v1/segmentation/config", json=FIXED, headers=H)).status_code == 200
        events = []
        for i in range(30):  # 30 customers: c-0..c-9 buy 5 times, c-10..c-29 once
            n = 5 if i < 10 else 1
            events += [
                order_paid("demo", f"c-{i}", f"o-{i}-{k}", 12_000, at=now - timedelta(days=5 + k)) for k in range(n)
            ]
        assert (await client.post("/v1/events", json=events, headers=H)).json()["accepted"] == len(events)

        async def summary() -> dict:
            return (await client.get("/v1/segments/summary", headers=H)).json()

        # Every customer has a segment as soon as their first order is applied; the five-time buyers
        # reach 3-3-3 once all their orders are: wait for that, then read the counts of that moment.
        s = await eventually(summary, lambda v: v["customers"] == 30 and v["tiers"]["S"] == 10)
        assert s["tiers"] == {"S": 10, "A": 0, "B": 20, "C": 0}  # 3-3-3 (sum 9) and 3-1-2 (sum 6)
        assert s["cells"]["3-3-3"] == 10 and s["cells"]["3-1-2"] == 20 and len(s["cells"]) == 27
        assert s["classes"]["important_value"] == 10 and s["classes"]["general_development"] == 20
        assert (s["repeat_customers"], s["buying_customers"], s["repurchase_rate"]) == (10, 30, 0.3333)

        def of_version(events: list, v: int) -> list:
            return [e for e in events if e.data.config_version == v]

        assert len(of_version(await segment_events(app), 1)) == 30  # each customer's first segment

        # Raise the frequency boundaries: the five-time buyers drop to F level 2, the others stay.
        changed = FIXED | {"boundaries": FIXED["boundaries"] | {"frequency": [2, 6]}}
        job = (await client.put("/v1/segmentation/config", json=changed, headers=H)).json()["job_id"]

        async def progress() -> dict:
            return (await client.get(f"/v1/segmentation/jobs/{job}", headers=H)).json()

        done = await eventually(progress, lambda j: j["status"] == "done")
        assert (done["total"], done["done"], done["changed"], done["progress"]) == (30, 30, 10, 1.0)
        moved = of_version(await segment_events(app), 2)
        assert len(moved) == 10 and {e.customer_id for e in moved} == {f"c-{i}" for i in range(10)}
        assert all(e.data.before["cell"] == "3-3-3" and e.data.after["cell"] == "3-2-3" for e in moved)
        s = await summary()
        assert s["cells"]["3-2-3"] == 10 and s["config_version"] == 2

        # The same configuration again: a full re-score that changes nothing announces nothing.
        job = (await client.put("/v1/segmentation/config", json=changed, headers=H)).json()["job_id"]
        done = await eventually(progress, lambda j: j["status"] == "done")
        assert done["changed"] == 0 and of_version(await segment_events(app), 3) == []
        assert (await client.get("/v1/segmentation/jobs/nope", headers=H)).status_code == 404
