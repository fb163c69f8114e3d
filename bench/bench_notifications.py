"""notifications.dispatch and notifications.campaign_100k, each with its peer measured in the
same run, against the fake SMS gateway (tests/providers.py) in its own process on loopback.

notifications.dispatch: N customers with phones and SMS consent (loaded with COPY), one
``coupon.issued`` each through the service's own handler (not timed), then the notifications
service — its own process, ``run --roles consumer``, its dispatcher as deployed — sends them all
to the generic SMS gateway. The rules are enforced on the way and checked exactly afterwards:
a tenth of the customers already had a marketing SMS today (the 1-a-day cap skips them), and a
second merchant whose quiet hours cover this moment has its messages held, none sent. The figure
is messages handed to the provider per second, from the moment they fall due (the service
already running) until the last one is recorded. Peer: bare httpx posting the same messages to
the same gateway, in the same batches (500 per request, 4 in flight), with no database.

notifications.campaign_100k: a campaign to 100,000 customers (an explicit customer-id audience:
segmentation does not run in this bench), created through the service's code and delivered by
the running service: seconds from its creation until every message is recorded sent. Peer: the
same bare httpx posting of 100,000 messages.

    python -m bench.bench_notifications --customers 100000 --pg-dsn postgresql://…
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from zoneinfo import ZoneInfo

import orjson

from bench.common import Process, result, say, spawn, stop
from shared import clock
from tests.infra import pg_scalar
from tests.providers import GENERIC_TOKEN, serve_in_process

MERCHANT = "bench"
QUIET = "bench-night"  # a merchant whose quiet hours cover the moment the bench runs
SMS_TEXT = "{{ shop.name }}送您{{ coupon.name }}，{{ coupon.expires_at | date }}前有效，退订回T"
CAMPAIGN_TEXT = "{{ shop.name }}「{{ campaign.name }}」今日开始，全场满199减30，退订回T"


async def prepare(dsn: str, url: str, n: int, gateway: str) -> tuple[int, int, int]:
    """Schema, merchants, templates, rules, channels; n customers (n/10 of them capped already,
    n/20 more at the quiet merchant), their coupon.issued messages queued. Returns (expected
    sent, expected capped, expected held)."""
    import asyncpg

    from services.notifications.domain import templates as dt
    from services.notifications.service_layer import config, handlers, templates
    from services.notifications.spec import SPEC
    from shared.db import create_engine, session_factory
    from shared.events import new_event
    from shared.runtime import migrate

    engine = create_engine(url)
    await migrate(engine, SPEC)
    sessions = session_factory(engine)
    now = clock.now()
    local = now.astimezone(ZoneInfo("Asia/Shanghai"))
    start = (local - timedelta(hours=1)).strftime("%H:00")
    end = (local + timedelta(hours=2)).strftime("%H:00")
    conn = await asyncpg.connect(dsn)
    try:
        for m in (MERCHANT, QUIET):
            await conn.execute(
                "INSERT INTO merchants (merchant_id, name, timezone, jwt_secret, active, updated_at) "
                "VALUES ($1, '贝贝母婴旗舰店', 'Asia/Shanghai', $2, true, now())",
                m,
                f"secret-{m}-0123456789".encode(),
            )
        quiet_n = max(1, n // 20)
        rows = [(MERCHANT, f"c{i:07d}", f"+86139{i:08d}", None, None, None, None, now) for i in range(n)]
        rows += [(QUIET, f"q{i:07d}", f"+86137{i:08d}", None, None, None, None, now) for i in range(quiet_n)]
        await conn.copy_records_to_table(
            "contacts",
            records=rows,
            columns=["merchant_id", "customer_id", "phone", "email", "openid", "birthday", "locale", "updated_at"],
        )
        await conn.copy_records_to_table(
            "consents",
            records=[(r[0], r[1], "sms", "granted", "event", now) for r in rows],
            columns=["merchant_id", "customer_id", "channel", "state", "source", "updated_at"],
        )
        # A tenth already had today's marketing SMS: the cap must skip their new one.
        capped = [f"c{i:07d}" for i in range(0, n, 10)]
        await conn.copy_records_to_table(
            "messages",
            records=[
                (
                    str(uuid.uuid4()),
                    MERCHANT,
                    c,
                    f"earlier|{c}|r",
                    "campaign",
                    "earlier",
                    None,
                    "earlier",
                    "sms",
                    "x",
                    1,
                    "marketing",
                    0,
                    "{}",
                    "sent",
                    None,
                    now,
                    1,
                    now,
                    now,
                    now,
                )
                for c in capped
            ],
            columns=[
                "message_id",
                "merchant_id",
                "customer_id",
                "dedupe_key",
                "trigger",
                "trigger_key",
                "rule_id",
                "campaign_id",
                "channel",
                "template_key",
                "template_version",
                "purpose",
                "value",
                "context",
                "status",
                "reason",
                "due_at",
                "attempts",
                "sent_at",
                "created_at",
                "updated_at",
            ],
        )
    finally:
        await conn.close()
    async with sessions() as s, s.begin():
        for m in (MERCHANT, QUIET):
            await templates.save(
                s,
                m,
                "cpn-sms",
                dt.TemplateSpec("sms", "zh-CN", "coupon.issued", dt.TemplateParts(text=SMS_TEXT)),
                [],
                now,
            )
            await templates.save(
                s,
                m,
                "cmp-sms",
                dt.TemplateSpec("sms", "zh-CN", "campaign", dt.TemplateParts(text=CAMPAIGN_TEXT)),
                [],
                now,
            )
            await config.save_rule(
                s,
                m,
                config.NotifyRule.model_validate(
                    {
                        "rule_id": "coupon-arrived",
                        "name": "券到账提醒",
                        "trigger": "coupon.issued",
                        "channels": [{"channel": "sms", "template": "cpn-sms"}],
                    }
                ),
                now,
            )
            quiet = {"start": start, "end": end} if m == QUIET else {"start": "00:00", "end": "00:00"}
            await config.save_policy(s, m, config.Policy.model_validate({"quiet_hours": quiet}), now)
            await config.save_channel(
                s,
                m,
                "sms",
                config.ChannelSettings(
                    provider="generic",
                    config={"url": f"{gateway}/sms", "token": GENERIC_TOKEN},
                    rate_per_s=100_000,
                    burst=100_000,
                ),
                now,
            )
    expires = (now + timedelta(days=7)).isoformat()
    customers = [(MERCHANT, f"c{i:07d}") for i in range(n)] + [(QUIET, f"q{i:07d}") for i in range(quiet_n)]
    for i in range(0, len(customers), 5000):
        events = [
            new_event(
                "coupon.issued",
                m,
                {
                    "coupon_id": f"k-{c}",
                    "template_id": "t-new",
                    "template_name": "新人满100减20",
                    "kind": "amount_off",
                    "face_value_fen": 2000,
                    "starts_at": now.isoformat(),
                    "expires_at": expires,
                },
                customer_id=c,
                occurred_at=now,
            )
            for m, c in customers[i : i + 5000]
        ]
        async with sessions() as s, s.begin():
            await handlers.handle(s, events, now)
    await engine.dispose()
    return n - len(capped), len(capped), quiet_n


async def start_service(url: str) -> tuple[Process, str]:
    """The service as deployed, up and ready (its port answers /readyz) before anything is timed."""
    from bench.http_load import free_port, wait_up

    data_dir = tempfile.mkdtemp(prefix="fgb-not-")
    port = free_port()
    env = {
        **os.environ,
        "FUGOU_NOTIFICATIONS_DATABASE_URL": url,
        "FUGOU_BUS": "inprocess",
        "FUGOU_DATA_DIR": data_dir,
        "FUGOU_ENV": "test",
        "FUGOU_LOG_LEVEL": "WARNING",
        "FUGOU_NOTIFY_BATCH": "2000",
        "FUGOU_NOTIFY_IDLE_MS": "50",
    }
    proc = await spawn(
        [sys.executable, "-m", "services.notifications", "run", "--roles", "api,consumer", "--port", str(port)], env
    )
    await wait_up(f"http://127.0.0.1:{port}/readyz")
    return proc, data_dir


async def stop_service(proc: Process, data_dir: str) -> None:
    try:
        await stop(proc)
    except TimeoutError:
        proc.kill()
        await proc.wait()
    shutil.rmtree(data_dir, ignore_errors=True)


async def wait_for(dsn: str, sql: str, target: int, proc: Process, timeout: float = 600) -> float:
    started = time.perf_counter()
    last = -1
    while True:
        got = await pg_scalar(dsn, sql)
        if got >= target:
            return time.perf_counter() - started
        if proc.returncode is not None:
            raise RuntimeError(f"notifications exited with {proc.returncode}")
        if time.perf_counter() - started > timeout:
            raise RuntimeError(f"only {got:,} of {target:,} after {timeout:.0f}s")
        if got // 20_000 != last // 20_000:
            say(f"{got:,} / {target:,} ({time.perf_counter() - started:.0f}s)")
        last = got
        await asyncio.sleep(0.5)  # each poll counts the table: not too often


async def peer(gateway: str, n: int, batch: int = 500, in_flight: int = 4) -> float:
    """Bare httpx: the same n messages, the same batches, no database."""
    import httpx

    bodies = [
        orjson.dumps(
            {
                "messages": [
                    {
                        "id": f"p-{i + k}",
                        "phone": f"+86139{(i + k) % 10**8:08d}",
                        "text": "贝贝母婴旗舰店送您新人满100减20，2026年12月1日前有效，退订回T",
                    }
                    for k in range(min(batch, n - i))
                ]
            }
        )
        for i in range(0, n, batch)
    ]
    headers = {"Authorization": f"Bearer {GENERIC_TOKEN}", "Content-Type": "application/json"}
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for b in bodies:
        queue.put_nowait(b)
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as client:

        async def worker() -> None:
            while not queue.empty():
                body = queue.get_nowait()
                r = await client.post("/sms", content=body, headers=headers)
                r.raise_for_status()

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(in_flight)))
        return time.perf_counter() - started


async def run(n: int, dsn: str, campaign_n: int) -> None:
    url = dsn.replace("postgresql://", "postgresql+asyncpg://")
    with serve_in_process(keep=0) as gateway:
        say(f"preparing {n:,} customers and their coupon.issued messages")
        t = time.perf_counter()
        expect_sent, expect_capped, expect_held = await prepare(dsn, url, n, gateway.base_url)
        say(f"prepared in {time.perf_counter() - t:.1f}s; dispatching")
        # Not due yet: the service starts (imports, migrations check, pools) before the clock does.
        await pg_scalar(
            dsn,
            "WITH u AS (UPDATE messages SET due_at = now() + interval '1 day' "
            "WHERE status = 'queued' RETURNING 1) SELECT count(*) FROM u",
        )
        before = gateway.count("generic")
        proc, data_dir = await start_service(url)
        try:
            await pg_scalar(
                dsn,
                "WITH u AS (UPDATE messages SET due_at = now() WHERE status = 'queued' "
                "RETURNING 1) SELECT count(*) FROM u",
            )
            done_sql = (
                "SELECT count(*) FROM messages WHERE trigger = 'coupon.issued' "
                "AND status IN ('sent', 'delivered', 'skipped', 'held', 'failed', 'dead')"
            )
            elapsed = await wait_for(dsn, done_sql, n + expect_held, proc)
            counts = dict(await _counts(dsn, "coupon.issued"))
            provider = gateway.count("generic") - before
            say(f"dispatch: {counts} in {elapsed:.1f}s; the provider got {provider:,}")
            assert counts.get("sent", 0) == expect_sent == provider, (counts, expect_sent, provider)
            assert counts.get("skipped:cap_reached", 0) == expect_capped, counts
            assert counts.get("held:quiet_hours", 0) == expect_held, counts
            peer_s = await peer(gateway.base_url, expect_sent)
            say(f"peer: bare httpx posted {expect_sent:,} in {peer_s:.2f}s")
            result(
                "notifications.dispatch",
                "messages_per_s",
                expect_sent / elapsed,
                "messages/s",
                "bare httpx posting the same messages to the same gateway (500 per request, 4 in flight)",
                expect_sent / peer_s,
                messages=expect_sent,
                capped=expect_capped,
                held=expect_held,
                seconds=round(elapsed, 2),
                provider="generic SMS gateway (tests/providers.py, own process)",
                enforced="exact: sent = expected = received by the provider; capped and held as expected",
            )

            # The campaign: created now, delivered by the same running service.
            from services.notifications.service_layer import campaigns
            from shared.db import create_engine, session_factory

            engine = create_engine(url)
            sessions = session_factory(engine)
            ids = [f"k{i:07d}" for i in range(campaign_n)]
            conn_rows = [
                (MERCHANT, c, f"+86136{i:08d}", None, None, None, None, clock.now()) for i, c in enumerate(ids)
            ]
            import asyncpg

            conn = await asyncpg.connect(dsn)
            try:
                await conn.copy_records_to_table(
                    "contacts",
                    records=conn_rows,
                    columns=[
                        "merchant_id",
                        "customer_id",
                        "phone",
                        "email",
                        "openid",
                        "birthday",
                        "locale",
                        "updated_at",
                    ],
                )
                await conn.copy_records_to_table(
                    "consents",
                    records=[(MERCHANT, c, "sms", "granted", "event", clock.now()) for c in ids],
                    columns=["merchant_id", "customer_id", "channel", "state", "source", "updated_at"],
                )
            finally:
                await conn.close()
            spec = campaigns.CampaignSpec.model_validate(
                {
                    "name": "双十二预热",
                    "audience": {"customer_ids": ids},
                    "channels": [{"channel": "sms", "template": "cmp-sms"}],
                }
            )
            before = gateway.count("generic")
            started = time.perf_counter()
            async with sessions() as s, s.begin():
                campaign_id = await campaigns.create(s, MERCHANT, spec, clock.now())
            await engine.dispose()
            sent_sql = (
                f"SELECT count(*) FROM messages WHERE campaign_id = '{campaign_id}' AND status IN ('sent', 'delivered')"
            )
            await wait_for(dsn, sent_sql, campaign_n, proc)
            campaign_s = time.perf_counter() - started
            provider = gateway.count("generic") - before
            say(f"campaign: {campaign_n:,} delivered in {campaign_s:.1f}s; the provider got {provider:,}")
            assert provider == campaign_n, (provider, campaign_n)
            peer_s = await peer(gateway.base_url, campaign_n)
        finally:
            await stop_service(proc, data_dir)
        scaled = {"scaled": True} if campaign_n < 100_000 else {}
        result(
            "notifications.campaign_100k",
            "seconds",
            campaign_s,
            "s",
            "bare httpx posting the same number of messages to the same gateway (500 per request, 4 in flight)",
            peer_s,
            customers=campaign_n,
            audience="explicit customer ids (segmentation not running)",
            provider="generic SMS gateway (tests/providers.py, own process)",
            **scaled,
        )


async def _counts(dsn: str, trigger: str) -> list[tuple[str, int]]:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT status, reason, count(*) AS n FROM messages WHERE trigger = $1 GROUP BY status, reason", trigger
        )
    finally:
        await conn.close()
    out: dict[str, int] = {}
    for r in rows:
        out[r["status"]] = out.get(r["status"], 0) + r["n"]
        if r["reason"]:
            out[f"{r['status']}:{r['reason']}"] = r["n"]
    return list(out.items())


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_notifications")
    parser.add_argument("--customers", type=int, default=100_000, help="messages of the dispatch bench")
    parser.add_argument("--campaign", type=int, default=100_000, help="customers of the campaign")
    parser.add_argument("--pg-dsn", required=True, help="postgresql://… of an empty database")
    args = parser.parse_args()
    random.seed(1)
    asyncio.run(run(args.customers, args.pg_dsn, args.campaign))


if __name__ == "__main__":
    main()
