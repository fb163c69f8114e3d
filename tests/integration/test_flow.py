"""The thin flow, end to end, on both buses: an order.paid event reaches segmentation, which keeps
the customer's paid order count and amount. The same test runs on the in-process bus with SQLite
and on real Kafka with real PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from services.embedded import build_embedded_app
from shared.bus.base import Message
from shared.bus.kafka import KafkaBus
from shared.events import parse_event
from shared.settings import Settings
from tests.conftest import kafka_pg_settings, running
from tests.factories import eventually, local_day, order_paid

KEY = "fg_test_demo_key"


@pytest.fixture
def settings(stack: Callable[..., Settings]) -> Settings:
    """The shared stack (in-process bus and SQLite, then Kafka and PostgreSQL), with the demo key."""
    return stack(bootstrap_api_key=KEY)


async def rfm(client: httpx.AsyncClient, customer_id: str) -> dict:
    r = await client.get(f"/v1/customers/{customer_id}/rfm", headers={"X-Api-Key": KEY})
    return r.json() if r.status_code == 200 else {"status": r.status_code}


async def test_order_paid_over_http_reaches_segmentation(settings: Settings) -> None:
    app = build_embedded_app(settings, announce=False)
    first, last = local_day(-40, 9), local_day(-8, 21, 30)  # 09:00 forty days ago, 21:30 eight days ago
    async with running(app) as client:
        events = [
            order_paid("demo", "u-1", "o-1", 8000, at=first),
            order_paid("demo", "u-1", "o-2", 4500, at=last),
            order_paid("demo", "u-2", "o-3", 12000),
        ]
        r = await client.post("/v1/events", json=[*events, events[0]], headers={"X-Api-Key": KEY})
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["accepted"], body["duplicates"], body["rejected"]) == (3, 1, 0)

        u1 = await eventually(lambda: rfm(client, "u-1"), lambda v: v.get("frequency") == 2)
        assert u1["monetary_fen"] == 12500
        assert datetime.fromisoformat(u1["last_order_at"]) == last
        assert datetime.fromisoformat(u1["first_order_at"]) == first
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


async def test_a_first_order_earns_a_coupon_and_the_customer_hears_of_it_once(settings: Settings) -> None:
    """Across three services and the bus: the shop's order.paid → coupons' first-order rule issues a
    coupon → coupon.issued on fugou.coupons → notifications renders the merchant's template and
    delivers it (console channel), once, with the SMS consent the shop reported."""
    app = build_embedded_app(settings, announce=False)
    h = {"X-Api-Key": KEY}
    async with running(app) as client:
        r = await client.post(
            "/v1/coupons/templates",
            headers=h,
            json={"name": "10元无门槛券", "kind": {"type": "no_threshold", "amount_off_fen": 1000}, "valid_days": 30},
        )
        assert r.status_code == 201, r.text
        r = await client.post(
            "/v1/coupons/rules",
            headers=h,
            json={
                "name": "首单礼",
                "trigger": {"type": "first_paid_order"},
                "action": {"issue": [{"template_id": r.json()["template_id"]}]},
            },
        )
        assert r.status_code == 201, r.text
        r = await client.post(
            "/v1/notifications/templates",
            headers=h,
            json={
                "key": "coupon-sms",
                "channel": "sms",
                "locale": "zh-CN",
                "trigger": "coupon.issued",
                "parts": {
                    "text": "{{ shop.name }}送您{{ coupon.name }}，{{ coupon.expires_at | date }}前有效。退订回T"
                },
            },
        )
        assert r.status_code == 201, r.text
        r = await client.put(
            "/v1/notifications/rules/coupon-arrived",
            headers=h,
            json={
                "name": "券到账",
                "trigger": "coupon.issued",
                "channels": [{"channel": "sms", "template": "coupon-sms"}],
            },
        )
        assert r.status_code == 200, r.text
        r = await client.put("/v1/notifications/policy", headers=h, json={"quiet_hours": None})
        assert r.status_code == 200, r.text
        profile = {
            "event_id": "reg-u-9",
            "type": "customer.registered",
            "merchant_id": "demo",
            "customer_id": "u-9",
            "occurred_at": local_day(-30, 10).isoformat(),  # registered a month ago
            "data": {"phone": "13800138009", "consents": {"sms": True}},
        }
        order = order_paid("demo", "u-9", "o-90", 8800)
        r = await client.post("/v1/events", headers=h, json=[profile, order, order])
        assert r.status_code == 200 and r.json()["accepted"] == 2, r.text

        async def console() -> list[dict]:
            got = await client.get("/v1/notifications/console", headers=h, params={"customer_id": "u-9"})
            return got.json() if got.status_code == 200 else []

        [message] = await eventually(console, lambda ms: len(ms) == 1 and ms[0]["status"] == "delivered", timeout=60)
        assert message["recipient"] == "+8613800138009" and message["trigger"] == "coupon.issued"
        assert "10元无门槛券" in message["content"]["text"]
        # A second paid order: not a first order, no coupon, no message.
        r = await client.post("/v1/events", headers=h, json=[order_paid("demo", "u-9", "o-91", 100)])
        assert r.status_code == 200
        await eventually(lambda: rfm(client, "u-9"), lambda v: v.get("frequency") == 2, timeout=60)
        funnel = (await client.get("/v1/notifications/funnel", headers=h)).json()
        assert (funnel["total"], funnel["delivered"]) == (1, 1)
