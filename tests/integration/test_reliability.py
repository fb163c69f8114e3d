"""Reliability against real Kafka and PostgreSQL, with real processes killed at the worst moments.

Crash points (shared/faults.py) make a process die at once, as kill -9 would: no offset commit,
no outbox delete, no cleanup."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from shared.bus.base import Message
from shared.bus.kafka import KafkaBus
from shared.topics import DEAD_LETTER, partitions
from tests.factories import eventually, merchant_upserted, order_paid
from tests.infra import Kafka
from tests.infra import pg_scalar as scalar
from tests.processes import ServiceProcess
from tests.real_stack import env_for, expected_totals, plain_dsn, publish, totals

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]
KEY = "fg_reliability_key"


async def committed_offsets(kafka: Kafka, group: str, topic: str) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        total = 0
        for p in range(partitions(topic.split(".", 1)[1] if topic.count(".") > 1 else topic)):
            total += (await consumer.committed(TopicPartition(topic, p))) or 0
        return total
    finally:
        await consumer.stop()


def orders_for(merchant: str, n: int, customers: int = 40) -> list[dict]:
    return [order_paid(merchant, f"c-{i % customers}", f"o-{i}", 100 + i) for i in range(n)]


async def test_consumer_killed_after_db_commit_applies_nothing_twice(kafka, pg_urls, tmp_path: Path) -> None:
    prefix = f"r{uuid.uuid4().hex[:8]}."
    merchant = "m-crash"
    events = orders_for(merchant, 600)
    # Every event delivered twice, and some orders re-sent under new event ids (a retrying shop).
    resent = [dict(e, event_id=str(uuid.uuid4())) for e in events[:50]]
    seg_dsn = plain_dsn(pg_urls["segmentation"])
    env = env_for(kafka, pg_urls, prefix)
    # The service learns the merchant first, so that the batch it dies on is one of orders.
    await publish(kafka, prefix, [merchant_upserted(merchant, KEY)])
    first = ServiceProcess(
        "services.segmentation run", env, args=["--roles", "migrate,consumer"], log_path=tmp_path / "seg0.log"
    ).start()
    try:
        await eventually(lambda: scalar(seg_dsn, "SELECT count(*) FROM merchants"), lambda n: n == 1, timeout=60)
    finally:
        first.stop()
    await publish(kafka, prefix, events + events + resent)

    crashing = ServiceProcess(
        "services.segmentation run", env, args=["--roles", "migrate,consumer,relay"], log_path=tmp_path / "seg1.log"
    )
    crashing.start({"FUGOU_FAULT": "consumer.after_db_commit"})
    assert crashing.wait_exit(120) == 137, crashing.tail()
    applied_before_crash = await scalar(seg_dsn, "SELECT count(*) FROM inbox")
    assert applied_before_crash > 0  # the crash came after a database commit...
    assert (
        await committed_offsets(kafka, f"{prefix}fugou-segmentation", f"{prefix}shop.orders") == 0
    )  # ...and before the offset commit

    survivor = ServiceProcess(
        "services.segmentation run", env, args=["--roles", "consumer,relay"], log_path=tmp_path / "seg2.log"
    ).start()
    try:
        want = expected_totals(events)
        got = await eventually(lambda: totals(seg_dsn, merchant), lambda v: v == want, timeout=90)
        assert got == want
        # Every distinct event applied exactly once (the re-sent orders come last in the stream);
        # the redelivered batch was absorbed by the inbox and the aggregates did not move.
        await eventually(
            lambda: scalar(seg_dsn, f"SELECT count(*) FROM inbox WHERE merchant_id = '{merchant}'"),
            lambda n: n == 650,
            timeout=60,
        )
        assert await totals(seg_dsn, merchant) == want
    finally:
        survivor.stop()


async def test_relay_killed_between_publish_and_delete_loses_nothing(kafka, pg_urls, tmp_path: Path) -> None:
    prefix = f"r{uuid.uuid4().hex[:8]}."
    env = env_for(kafka, pg_urls, prefix) | {"FUGOU_BOOTSTRAP_API_KEY": KEY}
    gw_dsn = plain_dsn(pg_urls["gateway"])
    events = orders_for("demo", 300, customers=25)

    # 1. The gateway takes the events (API only: they wait in its outbox).
    api = ServiceProcess(
        "services.gateway run", env, args=["--roles", "migrate,api"], log_path=tmp_path / "gw-api.log"
    ).start()
    try:
        api.wait_http()
        async with httpx.AsyncClient(base_url=api.url, headers={"X-Api-Key": KEY}) as client:
            r = await client.post("/v1/events", json=events)
            assert r.json()["accepted"] == 300, r.text
    finally:
        api.stop()
    pending = await scalar(gw_dsn, "SELECT count(*) FROM outbox")
    assert pending == 301  # the merchant and the 300 orders

    # 2. The relay publishes them and dies before deleting them.
    relay = ServiceProcess("services.gateway run", env, args=["--roles", "relay"], log_path=tmp_path / "gw-r1.log")
    relay.start({"FUGOU_FAULT": "relay.after_publish"})
    assert relay.wait_exit(60) == 137, relay.tail()
    assert await scalar(gw_dsn, "SELECT count(*) FROM outbox") == pending

    # 3. Restarted, it publishes them again and only then forgets them.
    relay = ServiceProcess(
        "services.gateway run", env, args=["--roles", "relay"], log_path=tmp_path / "gw-r2.log"
    ).start()
    seg = ServiceProcess(
        "services.segmentation run", env, args=["--roles", "migrate,consumer"], log_path=tmp_path / "seg.log"
    ).start()
    try:
        await eventually(lambda: scalar(gw_dsn, "SELECT count(*) FROM outbox"), lambda n: n == 0, timeout=60)
        seg_dsn = plain_dsn(pg_urls["segmentation"])
        want = expected_totals(events)
        got = await eventually(lambda: totals(seg_dsn, "demo"), lambda v: v == want, timeout=90)
        assert got == want
        # The topic really holds each order twice: the duplicate publish happened and was absorbed.
        assert await committed_offsets(kafka, f"{prefix}fugou-segmentation", f"{prefix}shop.orders") == 600
    finally:
        relay.stop()
        seg.stop()


async def test_malformed_messages_go_to_the_dead_letter_topic_and_the_rest_is_processed(
    kafka, pg_urls, tmp_path: Path
) -> None:
    prefix = f"r{uuid.uuid4().hex[:8]}."
    merchant = "m-dlq"
    good_before = order_paid(merchant, "c-1", "o-1", 1000)
    good_after = order_paid(merchant, "c-1", "o-2", 2000)
    bad_amount = order_paid(merchant, "c-2", "o-3", 500)
    bad_amount["data"]["amount_fen"] = -5
    stranger = order_paid("m-nobody", "c-9", "o-9", 700)
    await publish(kafka, prefix, [merchant_upserted(merchant, KEY), good_before])
    await publish(kafka, prefix, [b"{not json", b'{"type": "order.teleported", "event_id": "x"}'])
    # bad_amount is sent raw: it is invalid, so it cannot be built through parse_event.
    bus = KafkaBus(kafka.bootstrap, prefix=prefix)
    await bus.start()
    import orjson

    await bus.publish([Message("shop.orders", b"m-dlq:c-2", orjson.dumps(bad_amount))])
    await bus.stop()
    await publish(kafka, prefix, [stranger, good_after])

    seg = ServiceProcess(
        "services.segmentation run",
        ({**env_for(kafka, pg_urls, prefix)}),
        args=["--roles", "migrate,consumer"],
        log_path=tmp_path / "seg.log",
    ).start()
    try:
        seg_dsn = plain_dsn(pg_urls["segmentation"])
        got = await eventually(lambda: totals(seg_dsn, merchant), lambda v: v.get("c-1") == (2, 3000), timeout=90)
        assert "c-2" not in got
        dead = await read_all(kafka, f"{prefix}{DEAD_LETTER}", expect=4)
    finally:
        seg.stop()
    reasons = sorted(dict(m.headers)["reason"].decode() for m in dead)
    assert any("invalid event" in r and "json" in r.lower() for r in reasons), reasons
    assert any("unknown event type" in r for r in reasons), reasons
    assert any("data.amount_fen" in r for r in reasons), reasons
    assert any("unknown merchant 'm-nobody'" in r for r in reasons), reasons
    for m in dead:
        headers = dict(m.headers)
        assert headers["source_topic"] == b"shop.orders" and headers["consumer_group"] == b"fugou-segmentation"


async def read_all(kafka: Kafka, topic: str, expect: int, timeout: float = 30) -> list:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=kafka.bootstrap, auto_offset_reset="earliest", enable_auto_commit=False, group_id=None
    )
    await consumer.start()
    got: list = []
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while len(got) < expect and asyncio.get_running_loop().time() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for msgs in batch.values():
                got.extend(msgs)
    finally:
        await consumer.stop()
    assert len(got) == expect, [dict(m.headers).get("reason") for m in got]
    return got
