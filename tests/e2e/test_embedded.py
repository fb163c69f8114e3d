"""`make run` as a user runs it: the embedded process, killed with kill -9 under load and started
again on the same ./data. Accepted events are never lost and never applied twice."""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path

import httpx
import pytest

from tests.factories import eventually, order_paid
from tests.processes import ServiceProcess

KEY = "fg_e2e_embedded_key"


def embedded(tmp_path: Path) -> ServiceProcess:
    env = {
        "FUGOU_DATA_DIR": str(tmp_path / "data"),
        "FUGOU_BOOTSTRAP_API_KEY": KEY,
        "FUGOU_LOG_LEVEL": "WARNING",
        "FUGOU_BUS": "inprocess",
    }
    return ServiceProcess("services.embedded", env, log_path=tmp_path / "embedded.log")


def expected(events: list[dict]) -> dict[str, tuple[int, int]]:
    out: dict[str, tuple[int, int]] = {}
    for e in events:
        n, amount = out.get(e["customer_id"], (0, 0))
        out[e["customer_id"]] = (n + 1, amount + e["data"]["amount_fen"])
    return out


def stored(tmp_path: Path) -> dict[str, tuple[int, int]]:
    db = sqlite3.connect(tmp_path / "data" / "segmentation.sqlite")
    try:
        rows = db.execute("SELECT customer_id, paid_orders, paid_amount_fen FROM customers WHERE merchant_id = 'demo'")
        return {c: (n, a) for c, n, a in rows}
    finally:
        db.close()


async def test_kill_9_under_load_loses_no_accepted_event_and_applies_none_twice(tmp_path: Path) -> None:
    batches = [
        [order_paid("demo", f"c-{(b * 500 + i) % 300}", f"o-{b}-{i}", 100 + i) for i in range(500)] for b in range(12)
    ]
    proc = embedded(tmp_path).start()
    proc.wait_http()
    sent_ok = 0
    async with httpx.AsyncClient(base_url=proc.url, headers={"X-Api-Key": KEY}, timeout=30) as client:
        for batch in batches[:6]:
            r = await client.post("/v1/events", json=batch)
            assert r.json()["accepted"] == 500
            sent_ok += 1
    # Killed while the last batches are still travelling from the gateway's outbox to segmentation.
    proc.kill9()

    proc = embedded(tmp_path)
    proc.start()
    try:
        proc.wait_http()
        async with httpx.AsyncClient(base_url=proc.url, headers={"X-Api-Key": KEY}, timeout=30) as client:
            # The shop retries everything it is unsure of: the first six come back as duplicates.
            for i, batch in enumerate(batches):
                body = (await client.post("/v1/events", json=batch)).json()
                assert body["duplicates" if i < sent_ok else "accepted"] == 500, body
            want = expected([e for b in batches for e in b])

            async def current() -> dict[str, tuple[int, int]]:
                return stored(tmp_path)

            assert await eventually(current, lambda v: v == want, timeout=60) == want
            r = await client.get("/v1/customers/c-1/rfm")
            assert (r.json()["frequency"], r.json()["monetary_fen"]) == want["c-1"]
    finally:
        proc.stop()
    db = sqlite3.connect(tmp_path / "data" / "segmentation.sqlite")
    # Each order applied once (the inbox also holds loyalty's events, which segmentation reads).
    ids = [e["event_id"] for b in batches for e in b]
    applied = db.execute(f"SELECT count(*) FROM inbox WHERE event_id IN ({','.join('?' * len(ids))})", ids).fetchone()[
        0
    ]
    assert applied == 6000
    db.close()


@pytest.mark.parametrize("fault", ["consumer.after_db_commit", "relay.after_publish"])
async def test_a_crash_between_two_steps_of_delivery_is_recovered_on_restart(tmp_path: Path, fault: str) -> None:
    events = [order_paid("demo", f"c-{i % 50}", f"o-{uuid.uuid4().hex[:8]}", 1000 + i) for i in range(800)]
    proc = embedded(tmp_path).start()
    proc.wait_http()
    async with httpx.AsyncClient(base_url=proc.url, headers={"X-Api-Key": KEY}, timeout=30) as client:
        assert (await client.get("/v1/merchant")).status_code == 200
    proc.stop()

    # Armed now: the process dies at that point of delivering the events it is about to accept.
    proc = embedded(tmp_path).start({"FUGOU_FAULT": fault})
    proc.wait_http()
    try:
        async with httpx.AsyncClient(base_url=proc.url, headers={"X-Api-Key": KEY}, timeout=30) as client:
            r = await client.post("/v1/events", json=events)
            assert r.json()["accepted"] == 800
    except httpx.TransportError:
        pass  # it may die before answering; the events were committed before the relay ran
    assert proc.wait_exit(60) == 137, proc.tail()

    proc = embedded(tmp_path).start()
    try:
        proc.wait_http()
        want = expected(events)

        async def current() -> dict[str, tuple[int, int]]:
            return stored(tmp_path)

        assert await eventually(current, lambda v: v == want, timeout=60) == want
    finally:
        proc.stop()
