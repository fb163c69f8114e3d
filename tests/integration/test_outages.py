"""Outages of the infrastructure itself, against real servers: when Kafka or PostgreSQL is down,
/readyz fails and names what is down, the consumers and relays retry with backoff (the processes
stay up), and nothing is lost or applied twice when it comes back.

These tests stop their servers, so each starts its OWN broker or cluster (never the session-wide
ones), restarts it on the same ports and data dir, and removes it at the end."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import create_databases
from tests.factories import eventually, order_paid
from tests.infra import Kafka, Postgres, running_kafka, running_postgres
from tests.infra import pg_scalar as scalar
from tests.processes import ServiceProcess
from tests.real_stack import env_for, expected_totals, plain_dsn, publish, totals

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.timeout(240)]
KEY = "fg_outage_key"
MERCHANT = "demo"  # the merchant the gateway creates from FUGOU_BOOTSTRAP_API_KEY


@pytest.fixture
def own_postgres() -> Iterator[Postgres]:
    with running_postgres("fgo-") as cluster:
        yield cluster


@pytest.fixture
def own_kafka() -> Iterator[Kafka]:
    with running_kafka("fgok-") as broker:
        yield broker


def orders(start: int, n: int, customers: int = 15) -> list[dict]:
    return [order_paid(MERCHANT, f"c-{i % customers}", f"o-{i}", 100 + i) for i in range(start, start + n)]


async def readyz(svc: ServiceProcess) -> tuple[int, dict]:
    try:
        async with httpx.AsyncClient(timeout=15) as client:
            r = await client.get(svc.url + "/readyz")
        return r.status_code, r.json()
    except httpx.HTTPError as exc:
        return -1, {"error": repr(exc)}


async def rfm(svc: ServiceProcess, customer_id: str) -> dict:
    async with httpx.AsyncClient(timeout=15) as client:
        r = await client.get(f"{svc.url}/v1/customers/{customer_id}/rfm", headers={"X-Api-Key": KEY})
    return r.json() if r.status_code == 200 else {"status": r.status_code}


async def all_rfm(svc: ServiceProcess, want: dict[str, tuple[int, int]]) -> dict[str, tuple[int, int] | dict]:
    got: dict[str, tuple[int, int] | dict] = {}
    for customer in want:
        body = await rfm(svc, customer)
        got[customer] = (body["frequency"], body["monetary_fen"]) if "frequency" in body else body
    return got


async def metric(svc: ServiceProcess, name: str, **labels: str) -> float:
    """The sum of a Prometheus counter's samples whose labels include the given ones."""
    async with httpx.AsyncClient(timeout=15) as client:
        text = (await client.get(svc.url + "/metrics")).text
    total = 0.0
    for m in re.finditer(rf"^{name}{{([^}}]*)}} (\S+)$", text, re.M):
        have = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(m.group(2))
    return total


async def consumer_retries(svc: ServiceProcess, service: str) -> float:
    return await metric(svc, "fugou_consumer_retries_total", service=service)


async def dead_lettered(svc: ServiceProcess, service: str) -> float:
    return await metric(svc, "fugou_events_consumed_total", service=service, outcome="dead_lettered")


async def post_events(gateway: ServiceProcess, events: list[dict]) -> dict:
    async with httpx.AsyncClient(base_url=gateway.url, headers={"X-Api-Key": KEY}, timeout=30) as client:
        r = await client.post("/v1/events", json=events)
    assert r.status_code == 200, r.text
    return r.json()


def alive(*procs: ServiceProcess) -> None:
    for p in procs:
        assert p.proc is not None and p.proc.poll() is None, f"{p.module} died: {p.tail()}"


def start_gateway_and_segmentation(env: dict[str, str], tmp_path: Path) -> tuple[ServiceProcess, ServiceProcess]:
    seg = ServiceProcess(
        "services.segmentation run",
        env,
        args=["--roles", "migrate,api,consumer,relay"],
        log_path=tmp_path / "segmentation.log",
    )
    # The gateway is the front door: it forwards segmentation's routes (see through_the_front_door).
    gateway = ServiceProcess(
        "services.gateway run",
        env | {"FUGOU_BOOTSTRAP_API_KEY": KEY, "FUGOU_SEGMENTATION_URL": seg.url},
        args=["--roles", "migrate,api,relay"],
        log_path=tmp_path / "gateway.log",
    ).start()
    seg.start()
    gateway.wait_http()
    seg.wait_http()
    return gateway, seg


async def services_on(kafka: Kafka, pg: Postgres, tmp_path: Path) -> tuple[ServiceProcess, ServiceProcess, str, str]:
    """Gateway and segmentation as processes on the given broker and cluster (databases created
    here); returns them, segmentation's DSN and the topic prefix."""
    tag = uuid.uuid4().hex[:8]
    dbs = {svc: f"o_{tag}_{svc}" for svc in ("gateway", "segmentation")}
    await create_databases(pg, list(dbs.values()))
    urls = {svc: pg.url(db) for svc, db in dbs.items()}
    prefix = f"o{tag}."
    gateway, seg = start_gateway_and_segmentation(env_for(kafka, urls, prefix), tmp_path)
    return gateway, seg, plain_dsn(urls["segmentation"]), prefix


async def first_batch_applied(gateway: ServiceProcess, seg: ServiceProcess, first: list[dict]) -> None:
    assert (await post_events(gateway, first))["accepted"] == len(first)
    want = expected_totals(first)
    await eventually(lambda: all_rfm(seg, want), lambda v: v == want, timeout=60, interval=0.3)
    status, body = await readyz(seg)
    assert status == 200, body


async def through_the_front_door(gateway: ServiceProcess, seg: ServiceProcess, customer_id: str) -> None:
    """The gateway process serves the console and answers segmentation's routes as segmentation does."""
    async with httpx.AsyncClient(timeout=15) as client:
        page = await client.get(gateway.url + "/console")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html"), page.text[:200]
        path = f"/v1/customers/{customer_id}/rfm"
        through = await client.get(gateway.url + path, headers={"X-Api-Key": KEY})
        direct = await client.get(seg.url + path, headers={"X-Api-Key": KEY})
    assert through.status_code == direct.status_code == 200, through.text
    assert through.json() == direct.json()


async def database_down(seg: ServiceProcess) -> dict:
    """Poll segmentation's /readyz until it answers 503 naming the database; return the body."""
    _, body = await eventually(
        lambda: readyz(seg),
        lambda v: v[0] == 503 and v[1]["checks"]["segmentation"]["database"].startswith("error"),
        timeout=30,
    )
    assert body["status"] == "unavailable"
    assert body["checks"]["bus"] == "ok", body  # only the database is blamed
    return body


async def test_postgresql_down(kafka: Kafka, own_postgres: Postgres, tmp_path: Path) -> None:
    pg = own_postgres
    first, second = orders(0, 60), orders(60, 90)
    gateway, seg, seg_dsn, prefix = await services_on(kafka, pg, tmp_path)
    try:
        # 1. Everything up: a first batch goes through the gateway and reaches segmentation, whose
        #    API the gateway also answers (the front door), with the console beside it.
        await first_batch_applied(gateway, seg, first)
        await through_the_front_door(gateway, seg, "c-1")

        # 2. PostgreSQL goes down: readiness fails and names the database.
        pg.stop()
        await database_down(seg)
        status, body = await readyz(gateway)
        assert status == 503 and body["checks"]["gateway"]["database"].startswith("error"), body

        # 3. The shop keeps publishing to Kafka (the gateway is down with its database); some twice.
        retries_before = await consumer_retries(seg, "segmentation")
        await publish(kafka, prefix, second + second[:20])
        # The consumer fetches them, cannot apply them, and retries with backoff: it stays up.
        await eventually(
            lambda: consumer_retries(seg, "segmentation"), lambda n: n >= retries_before + 2, timeout=30, interval=0.3
        )
        status, body = await readyz(seg)
        assert status == 503 and body["checks"]["segmentation"]["consumer"] == "ok", body  # still running
        alive(gateway, seg)

        # 4. PostgreSQL comes back on the same port and data dir: everything is applied exactly once.
        pg.start()
        await eventually(lambda: readyz(seg), lambda v: v[0] == 200, timeout=60, interval=0.3)
        await eventually(lambda: readyz(gateway), lambda v: v[0] == 200, timeout=60, interval=0.3)
        want = expected_totals(first + second)
        got = await eventually(lambda: totals(seg_dsn, MERCHANT), lambda v: v == want, timeout=60, interval=0.3)
        assert got == want
        distinct = len({e["event_id"] for e in first + second})
        await eventually(
            lambda: scalar(seg_dsn, f"SELECT count(*) FROM inbox WHERE merchant_id = '{MERCHANT}'"),
            lambda n: n == distinct,
            timeout=30,
        )
        assert await all_rfm(seg, want) == want  # and the API serves them again
        assert await dead_lettered(seg, "segmentation") == 0
        alive(gateway, seg)
    finally:
        gateway.stop()
        seg.stop()


def _pg_ctl(pg: Postgres, *args: str) -> None:
    """pg_ctl on a cluster started by deploy/postgres/start.sh (as the postgres user when root)."""
    bin_dir = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda d: int(d.parent.name))[-1]
    cmd = [str(bin_dir / "pg_ctl"), *args, "-D", str(pg.run_dir / "data")]
    if os.getuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    proc = subprocess.run(cmd, cwd="/", capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"pg_ctl {args}: {proc.stdout}{proc.stderr}"


def start_not_accepting_connections(pg: Postgres) -> None:
    """Start the stopped cluster in a state where the server is up but refuses sessions with
    SQLSTATE 57P03 (cannot_connect_now), as it does while it starts up or recovers after a crash:
    a standby with hot_standby off, held there until ``promote``."""
    data = pg.run_dir / "data"
    script = f"touch {data}/standby.signal && echo 'hot_standby = off' >> {data}/postgresql.auto.conf"
    cmd = ["sh", "-c", script]
    if os.getuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    subprocess.run(cmd, cwd="/", check=True, timeout=30)
    _pg_ctl(pg, "start", "-w", "-t", "60", "-l", str(pg.run_dir / "postgres.log"))


async def test_postgresql_coming_back_through_startup_loses_nothing(
    kafka: Kafka, own_postgres: Postgres, tmp_path: Path
) -> None:
    pg = own_postgres
    first, second = orders(0, 40), orders(40, 20)
    gateway, seg, seg_dsn, prefix = await services_on(kafka, pg, tmp_path)
    try:
        await first_batch_applied(gateway, seg, first)

        # PostgreSQL goes down while events keep coming; the consumer retries.
        pg.stop()
        await database_down(seg)
        retries_before = await consumer_retries(seg, "segmentation")
        await publish(kafka, prefix, second)
        await eventually(
            lambda: consumer_retries(seg, "segmentation"), lambda n: n >= retries_before + 2, timeout=30, interval=0.3
        )

        # It comes back, but first spends a while starting up (refusing sessions with 57P03): still
        # not ready, and the consumer must go on retrying, not give up on the events.
        start_not_accepting_connections(pg)
        body = await database_down(seg)
        assert "DBAPIError" in body["checks"]["segmentation"]["database"], body  # 57P03, not a refused socket
        retries_before = await consumer_retries(seg, "segmentation")
        await eventually(
            lambda: asyncio.gather(consumer_retries(seg, "segmentation"), dead_lettered(seg, "segmentation")),
            lambda v: v[0] > retries_before or v[1] > 0,
            timeout=45,
            interval=0.3,
        )
        assert await dead_lettered(seg, "segmentation") == 0, "events dead-lettered while PostgreSQL started up"

        # Ready at last: everything applied exactly once.
        _pg_ctl(pg, "promote", "-w", "-t", "60")
        await eventually(lambda: readyz(seg), lambda v: v[0] == 200, timeout=60, interval=0.3)
        want = expected_totals(first + second)
        got = await eventually(lambda: totals(seg_dsn, MERCHANT), lambda v: v == want, timeout=60, interval=0.3)
        assert got == want
        assert await scalar(seg_dsn, f"SELECT count(*) FROM inbox WHERE merchant_id = '{MERCHANT}'") == 60
        assert await dead_lettered(seg, "segmentation") == 0
        alive(gateway, seg)
    finally:
        gateway.stop()
        seg.stop()


async def test_kafka_down(own_kafka: Kafka, pg_urls: dict[str, str], tmp_path: Path) -> None:
    kafka = own_kafka
    prefix = f"o{uuid.uuid4().hex[:8]}."
    env = env_for(kafka, pg_urls, prefix)
    seg_dsn, gw_dsn = plain_dsn(pg_urls["segmentation"]), plain_dsn(pg_urls["gateway"])
    first, second = orders(0, 60), orders(60, 90)
    gateway, seg = start_gateway_and_segmentation(env, tmp_path)
    try:
        # 1. Everything up.
        assert (await post_events(gateway, first))["accepted"] == len(first)
        want1 = expected_totals(first)
        await eventually(lambda: all_rfm(seg, want1), lambda v: v == want1, timeout=60, interval=0.3)
        await eventually(lambda: scalar(gw_dsn, "SELECT count(*) FROM outbox"), lambda n: n == 0, timeout=30)

        # 2. Kafka goes down: readiness fails on both services and names the bus.
        kafka.stop()
        status, body = await eventually(
            lambda: readyz(seg), lambda v: v[0] == 503 and v[1]["checks"]["bus"].startswith("error"), timeout=30
        )
        assert body["checks"]["segmentation"]["database"] == "ok", body  # only the bus is blamed
        await eventually(
            lambda: readyz(gateway), lambda v: v[0] == 503 and v[1]["checks"]["bus"].startswith("error"), timeout=30
        )

        # 3. The gateway still takes events: they wait in its outbox (PostgreSQL), the relay retries.
        assert (await post_events(gateway, second))["accepted"] == len(second)
        assert (await post_events(gateway, second[:20]))["duplicates"] == 20
        assert await scalar(gw_dsn, "SELECT count(*) FROM outbox") == len(second)
        status, body = await readyz(seg)
        assert status == 503 and body["checks"]["segmentation"]["consumer"] == "ok", body
        alive(gateway, seg)
        assert await totals(seg_dsn, MERCHANT) == want1

        # 4. Kafka comes back on the same ports and data dir: everything arrives exactly once.
        kafka.start()
        await eventually(lambda: readyz(seg), lambda v: v[0] == 200, timeout=60, interval=0.3)
        await eventually(lambda: readyz(gateway), lambda v: v[0] == 200, timeout=60, interval=0.3)
        await eventually(
            lambda: scalar(gw_dsn, "SELECT count(*) FROM outbox"), lambda n: n == 0, timeout=60, interval=0.3
        )
        want = expected_totals(first + second)
        got = await eventually(lambda: totals(seg_dsn, MERCHANT), lambda v: v == want, timeout=60, interval=0.3)
        assert got == want
        distinct = len({e["event_id"] for e in first + second})
        await eventually(
            lambda: scalar(seg_dsn, f"SELECT count(*) FROM inbox WHERE merchant_id = '{MERCHANT}'"),
            lambda n: n == distinct,
            timeout=30,
        )
        assert await all_rfm(seg, want) == want
        alive(gateway, seg)
    finally:
        gateway.stop()
        seg.stop()
