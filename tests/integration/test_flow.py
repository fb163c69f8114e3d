"""The thin flow, end to end, on both buses: an order.paid event reaches segmentation, which keeps
the customer's paid order count and amount. The same test runs on the in-process bus with SQLite
and on real Kafka with real PostgreSQL."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import httpx
import pytest

from services.embedded import build_embedded_app
from shared.bus.kafka import KafkaBus
from shared.bus.base import Message
from shared.events import parse_event
from shared.settings import Settings
from tests.conftest import embedded_settings, kafka_pg_settings, running
from tests.factories import CST, eventually, order_paid

KEY = "fg_test_demo_key"


@pytest.fixture(params=["inprocess-sqlite", pytest.param("kafka-postgres", marks=[pytest.mark.kafka,
                                                                                    pytest.mark.postgres])])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    if request.param == "inprocess-sqlite":
        return embedded_settings(tmp_path, bootstrap_api_key=KEY)
    kafka = request.getfixturevalue("kafka")
    pg_urls = request.getfixturevalue("pg_urls")
    return kafka_pg_settings(tmp_path, kafka, pg_urls, bootstrap_api_key=KEY)


async def rfm(client: httpx.AsyncClient, customer_id: str) -> dict:
    r = await client.get(f"/v1/customers/{customer_id}/rfm", headers={"X-Api-Key": KEY})
    return r.json() if r.status_code == 200 else {"status": r.status_code}


async def test_order_paid_over_http_reaches_segmentation(settings: Settings) -> None:
    app = build_embedded_app(settings, announce=False)
    async with running(app) as client:
        events = [
            order_paid("demo", "u-1", "o-1", 8000, at=datetime(2026, 10, 1, 9, 0, tzinfo=CST)),
            order_paid("demo", "u-1", "o-2", 4500, at=datetime(2026, 11, 2, 21, 30, tzinfo=CST)),
            order_paid("demo", "u-2", "o-3", 12000),
        ]
        r = await client.post("/v1/events", json=events + [events[0]], headers={"X-Api-Key": KEY})
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["accepted"], body["duplicates"], body["rejected"]) == (3, 1, 0)

        u1 = await eventually(lambda: rfm(client, "u-1"), lambda v: v.get("frequency") == 2)
        assert u1["monetary_fen"] == 12500
        assert datetime.fromisoformat(u1["last_order_at"]) == datetime(2026, 11, 2, 21, 30, tzinfo=CST)
        assert datetime.fromisoformat(u1["first_order_at"]) == datetime(2026, 10, 1, 9, 0, tzinfo=CST)
        u2 = await eventually(lambda: rfm(client, "u-2"), lambda v: v.get("frequency") == 1)
        assert u2["monetary_fen"] == 12000

        # Sending the same events again (a shop retrying) changes nothing.
        r = await client.post("/v1/events", json=events, headers={"X-Api-Key": KEY})
        assert r.json()["duplicates"] == 3
        assert (await rfm(client, "u-1"))["frequency"] == 2


@pytest.mark.kafka
@pytest.mark.postgres
async def test_order_paid_on_kafka_reaches_segmentation(kafka, pg_urls, tmp_path: Path) -> None:
    settings = kafka_pg_settings(tmp_path, kafka, pg_urls, bootstrap_api_key=KEY)
    app = build_embedded_app(settings, announce=False)
    async with running(app) as client:
        producer = KafkaBus(kafka.bootstrap, prefix=settings.kafka_prefix)
        await producer.start()
        try:
            event = parse_event(order_paid("demo", "u-7", "o-70", 9900))
            # Delivered twice, as an at-least-once producer may: one effect.
            msg = Message(topic="shop.orders", key=event.key, value=event.to_json())
            await producer.publish([msg, msg])
        finally:
            await producer.stop()
        got = await eventually(lambda: rfm(client, "u-7"), lambda v: v.get("frequency") == 1)
        assert got["monetary_fen"] == 9900
