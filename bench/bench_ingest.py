"""segmentation.ingest: order events/s from a Kafka topic into the segmentation store on
PostgreSQL, inbox, aggregates and outbox included (the relay publishing the outbox runs too).

Peer: raw aiokafka consumption of the same topic (getmany, no processing), same run, same data.

    python -m bench.bench_ingest --events 1000000 --kafka 127.0.0.1:9092 --pg postgresql://…
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from bench.common import result, run_checked, say, spawn, stop
from shared.bus.kafka import KafkaBus
from shared.events import new_event
from shared.tenancy import hash_api_key
from tests.infra import pg_scalar

MERCHANT = "bench"
TOPIC = "shop.orders"


def generate(n: int, customers: int, seed: int = 7) -> list[tuple[bytes, bytes]]:
    """n order.paid envelopes as (key, value), built directly as JSON for speed."""
    rng = random.Random(seed)
    start = datetime(2025, 11, 1, tzinfo=timezone(timedelta(hours=8)))
    out = []
    for i in range(n):
        c = f"c-{rng.randrange(customers)}"
        amount = rng.randrange(500, 50000)
        at = start + timedelta(seconds=i * 30)
        out.append(
            (
                f"{MERCHANT}:{c}".encode(),
                orjson.dumps(
                    {
                        "event_id": f"ev-{i}",
                        "type": "order.paid",
                        "merchant_id": MERCHANT,
                        "customer_id": c,
                        "occurred_at": at.isoformat(),
                        "data": {
                            "order_id": f"o-{i}",
                            "amount_fen": amount,
                            "items": [
                                {"sku": "milk-900g", "category": "milk-powder", "quantity": 1, "amount_fen": amount}
                            ],
                            "coupon_ids": [],
                        },
                    }
                ),
            )
        )
    return out


async def produce(bootstrap: str, topic: str, messages: list[tuple[bytes, bytes]]) -> float:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=20, max_batch_size=1 << 20
    )
    await producer.start()
    started = time.perf_counter()
    try:
        for i in range(0, len(messages), 20000):
            futs = [await producer.send(topic, v, key=k) for k, v in messages[i : i + 20000]]
            await asyncio.gather(*futs)
    finally:
        await producer.stop()
    return time.perf_counter() - started


async def raw_consume(bootstrap: str, topic: str, n: int) -> float:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"peer-{uuid.uuid4().hex[:6]}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=4 << 20,
        fetch_max_bytes=32 << 20,
    )
    await consumer.start()
    got = 0
    started = time.perf_counter()
    try:
        while got < n:
            batches = await consumer.getmany(timeout_ms=500, max_records=5000)
            got += sum(len(v) for v in batches.values())
            if batches:
                await consumer.commit()
    finally:
        await consumer.stop()
    return time.perf_counter() - started


async def run(n: int, customers: int, bootstrap: str, pg_dsn: str, pg_url: str) -> None:
    prefix = f"b{uuid.uuid4().hex[:6]}."
    bus = KafkaBus(bootstrap, prefix=prefix)
    await bus.start()
    await bus.ensure_topics([TOPIC, "fugou.merchants", "fugou.segments", "fugou.dlq"])
    merchant = new_event(
        "merchant.upserted",
        MERCHANT,
        data={
            "name": "bench",
            "timezone": "Asia/Shanghai",
            "api_key_hashes": [hash_api_key("k", "p")],
            "jwt_secret": "s",
            "active": True,
        },
    )
    from shared.bus.base import Message

    await bus.publish([Message("fugou.merchants", merchant.key, merchant.to_json())])
    await bus.stop()

    say(f"generating {n:,} order.paid events for {customers:,} customers")
    messages = generate(n, customers)
    say("producing to Kafka")
    produce_s = await produce(bootstrap, prefix + TOPIC, messages)
    say(f"produced in {produce_s:.1f}s ({n / produce_s:,.0f}/s)")
    del messages

    peer_s = await raw_consume(bootstrap, prefix + TOPIC, n)
    say(f"peer: raw aiokafka consumed {n:,} in {peer_s:.1f}s ({n / peer_s:,.0f}/s)")

    env = {
        **os.environ,
        "FUGOU_BUS": "kafka",
        "FUGOU_KAFKA_BOOTSTRAP": bootstrap,
        "FUGOU_KAFKA_PREFIX": prefix,
        "FUGOU_SEGMENTATION_DATABASE_URL": pg_url,
        "FUGOU_CONSUMER_BATCH": "5000",
        "FUGOU_RELAY_BATCH": "5000",
        "FUGOU_LOG_LEVEL": "WARNING",
        "FUGOU_ENV": "test",
    }
    # Migrate first, so the timed run measures consumption only.
    await run_checked([sys.executable, "-m", "services.segmentation", "migrate"], env)
    proc = await spawn(
        [sys.executable, "-m", "services.segmentation", "run", "--roles", "consumer,relay", "--port", "0"], env
    )
    started = time.perf_counter()
    try:
        last = -1
        while True:
            await asyncio.sleep(0.5)
            applied = await pg_scalar(pg_dsn, "SELECT count(*) FROM inbox")
            if applied >= n and await pg_scalar(pg_dsn, "SELECT count(*) FROM outbox") == 0:
                break
            if proc.returncode is not None:
                raise RuntimeError(f"segmentation exited with {proc.returncode}")
            if applied // 100_000 != last // 100_000:
                say(f"applied {applied:,} ({time.perf_counter() - started:.0f}s)")
            last = applied
        elapsed = time.perf_counter() - started
    finally:
        await stop(proc)
    customers_rows = await pg_scalar(pg_dsn, "SELECT count(*) FROM customers")
    total_orders = await pg_scalar(pg_dsn, "SELECT sum(paid_orders) FROM customers")
    assert total_orders == n, f"aggregates hold {total_orders} orders, expected {n}"
    result(
        "segmentation.ingest",
        "events_per_s",
        n / elapsed,
        "events/s",
        "raw aiokafka consumption of the same topic",
        n / peer_s,
        events=n,
        customers=customers_rows,
        seconds=round(elapsed, 1),
        produce_events_per_s=round(n / produce_s),
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--customers", type=int, default=200_000)
    parser.add_argument("--kafka", required=True)
    parser.add_argument("--pg-dsn", required=True, help="postgresql://… of an empty database")
    args = parser.parse_args()
    pg_url = args.pg_dsn.replace("postgresql://", "postgresql+asyncpg://")
    asyncio.run(run(args.events, args.customers, args.kafka, args.pg_dsn, pg_url))


if __name__ == "__main__":
    main()
