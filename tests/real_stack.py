"""Helpers for tests that run services as real processes on Kafka and PostgreSQL
(tests/integration/test_reliability.py, tests/integration/test_outages.py): the processes'
environment, events published straight to Kafka as a shop's platform would, and the totals
segmentation must come to."""

from __future__ import annotations

from collections import Counter

import asyncpg

from shared.bus.base import Message
from shared.bus.kafka import KafkaBus
from shared.events import parse_event
from shared.topics import DEAD_LETTER
from tests.infra import Kafka


def plain_dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


def env_for(kafka: Kafka, pg_urls: dict[str, str], prefix: str) -> dict[str, str]:
    env = {
        "FUGOU_ENV": "test",
        "FUGOU_BUS": "kafka",
        "FUGOU_KAFKA_BOOTSTRAP": kafka.bootstrap,
        "FUGOU_KAFKA_PREFIX": prefix,
        "FUGOU_LOG_LEVEL": "WARNING",
        "FUGOU_CONSUMER_BATCH": "100",
        "FUGOU_CONSUMER_POLL_MS": "50",
        "FUGOU_RELAY_IDLE_MS": "20",
    }
    env.update({f"FUGOU_{svc.upper()}_DATABASE_URL": url for svc, url in pg_urls.items()})
    return env


async def publish(kafka: Kafka, prefix: str, events: list[dict] | list[bytes], topic: str = "shop.orders") -> None:
    bus = KafkaBus(kafka.bootstrap, prefix=prefix)
    await bus.start()
    try:
        await bus.ensure_topics([topic, "fugou.merchants", DEAD_LETTER])
        msgs = []
        for e in events:
            if isinstance(e, bytes):
                msgs.append(Message(topic=topic, key=b"m:x", value=e))
            else:
                env = parse_event(e)
                t = "fugou.merchants" if e["type"] == "merchant.upserted" else topic
                msgs.append(Message(topic=t, key=env.key, value=env.to_json()))
        await bus.publish(msgs)
    finally:
        await bus.stop()


async def totals(dsn: str, merchant_id: str) -> dict[str, tuple[int, int]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT customer_id, paid_orders, paid_amount_fen FROM customers WHERE merchant_id = $1", merchant_id
        )
    except asyncpg.UndefinedTableError:
        return {}
    finally:
        await conn.close()
    return {r["customer_id"]: (r["paid_orders"], r["paid_amount_fen"]) for r in rows}


def expected_totals(events: list[dict]) -> dict[str, tuple[int, int]]:
    seen: dict[str, dict] = {}
    for e in events:
        seen.setdefault(e["data"]["order_id"], e)
    out: Counter[str] = Counter()
    amounts: Counter[str] = Counter()
    for e in seen.values():
        out[e["customer_id"]] += 1
        amounts[e["customer_id"]] += e["data"]["amount_fen"]
    return {c: (out[c], amounts[c]) for c in out}
