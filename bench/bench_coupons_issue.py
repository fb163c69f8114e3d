"""coupons.issue_100k: a bundle of three templates issued by a scheduled rule to a 100,000-customer
audience on PostgreSQL, end to end, with a peer measured in the same run on the same rows.

Data (not timed): merchant "bench", N customers of tiers A/B in coupons's segment replica (the
audience: {"tier": ["A", "B"]}) and N/4 of tier C (not in it), loaded with COPY; three templates
(stock 10,000,000 each, one per customer) and a monthly rule (holdout 0, one issue per customer, a
total budget) created through the service layer.

Timed (``seconds``): ``issuance.fire_due`` — the rule claimed (FOR UPDATE SKIP LOCKED), the
audience resolved on the replica, one decision per customer in ``issuances``, the per-customer
and budget caps, stock and per-template limits, 3 × N coupons and their 3 × N coupon.issued events
staged in the outbox, next_fire_at moved on — committed chunk by chunk, as the worker does.
Also reported: the same fire run again (``rerun_s``: every issuance key already decided, nothing
issued). Peer: asyncpg COPY of the same 3 × N coupon rows into a bare table with the coupons
columns and no index (``peer_value``), and a plain INSERT … SELECT of them (``insert_select_s``).

    python -m bench.bench_coupons_issue --customers 100000 --pg-dsn postgresql://…/empty_db
"""

from __future__ import annotations

import argparse
import asyncio
import time
from datetime import timedelta

import asyncpg
from sqlalchemy import update

from bench.common import result, say
from shared import clock

MERCHANT = "bench"
TZ = "Asia/Shanghai"
CHUNK = 10_000


def cid(i: int) -> str:
    return f"c{i:08d}"


async def load(dsn: str, n: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        now = clock.now()
        await conn.execute(
            "INSERT INTO merchants (merchant_id, name, timezone, jwt_secret, active, updated_at) "
            "VALUES ($1, 'bench', $2, $3, true, now())",
            MERCHANT,
            TZ,
            b"bench-secret",
        )
        rows = [(MERCHANT, cid(i), "AB"[i % 2], "3-2-3", "important_value", "[]", now) for i in range(n)]
        rows += [(MERCHANT, cid(n + i), "C", "1-1-1", "general_winback", '["dormant"]', now) for i in range(n // 4)]
        t = time.perf_counter()
        await conn.copy_records_to_table(
            "customer_segments",
            records=rows,
            columns=["merchant_id", "customer_id", "tier", "cell", "rfm_class", "tags", "updated_at"],
        )
        await conn.execute("ANALYZE customer_segments")
        say(f"{len(rows)} segments copied in {time.perf_counter() - t:.1f}s")
    finally:
        await conn.close()


async def run(n: int, dsn: str, url: str) -> None:
    from services.coupons.adapters.tables import rules
    from services.coupons.domain.rules import (
        Action,
        AudienceFilter,
        CampaignRule,
        Caps,
        IssueItem,
        Schedule,
    )
    from services.coupons.domain.templates import CouponTemplate, NoThreshold, PercentOff
    from services.coupons.service_layer.issuance import fire_due
    from services.coupons.service_layer.rules import StoredRule, create_rule
    from services.coupons.service_layer.templates import create_template
    from services.coupons.spec import SPEC
    from shared.db import create_engine, session_factory
    from shared.runtime import migrate

    engine = create_engine(url, pool_size=4)
    await migrate(engine, SPEC)
    await load(dsn, n)
    sessions = session_factory(engine)
    now = clock.now()

    async def rule_with_bundle(limited: bool) -> StoredRule:
        """A monthly bundle of three templates. Unlimited, as the monthly_loyal preset makes it
        (a customer gets it again each month); limited: one per customer per template, and the
        rule once per customer (two more atomic upserts per customer and template)."""
        limit = 1 if limited else None
        async with sessions() as s, s.begin():
            bundle = [
                CouponTemplate(
                    name="8折券",
                    kind=PercentOff(pay_percent=80, max_discount_fen=3000),
                    valid_days=30,
                    stock=10_000_000,
                    per_customer_limit=limit,
                ),
                CouponTemplate(
                    name="8.5折券",
                    kind=PercentOff(pay_percent=85, max_discount_fen=2000),
                    valid_days=30,
                    stock=10_000_000,
                    per_customer_limit=limit,
                ),
                CouponTemplate(
                    name="10元无门槛",
                    kind=NoThreshold(amount_off_fen=1000),
                    valid_days=30,
                    stock=10_000_000,
                    per_customer_limit=limit,
                ),
            ]
            made = [await create_template(s, MERCHANT, t) for t in bundle]
            rule = CampaignRule(
                name="月度A/B回购",
                trigger=Schedule(cron="0 9 1 * *", timezone=TZ),
                audience=AudienceFilter(filter={"tier": ["A", "B"]}),
                action=Action(issue=[IssueItem(template_id=st.template_id) for st in made]),
                caps=Caps(budget_total_fen=10**12, issues_per_customer=limit),
                holdout_percent=0,
            )
            return await create_rule(s, MERCHANT, rule, now=now, client=None)

    async def timed_fire(stored: StoredRule) -> float:
        assert stored.next_fire_at is not None
        t = time.perf_counter()
        assert await fire_due(sessions, None, stored.next_fire_at + timedelta(minutes=1), chunk=CHUNK)
        return time.perf_counter() - t

    stored = await rule_with_bundle(limited=False)
    due = stored.next_fire_at
    assert due is not None
    at = due + timedelta(minutes=1)
    issue_s = await timed_fire(stored)

    conn = await asyncpg.connect(dsn)
    try:
        coupons_n = await conn.fetchval("SELECT count(*) FROM coupons")
        outbox_n = await conn.fetchval("SELECT count(*) FROM outbox WHERE topic = 'fugou.coupons'")
        decided = await conn.fetchval("SELECT count(*) FROM issuances WHERE outcome = 'issued'")
        assert (coupons_n, outbox_n, decided) == (3 * n, 3 * n, n), (coupons_n, outbox_n, decided)

        async with sessions() as s, s.begin():  # the same fire again: resumable, issues nothing
            await s.execute(update(rules).where(rules.c.rule_id == stored.rule_id).values(next_fire_at=due))
        t = time.perf_counter()
        assert await fire_due(sessions, None, at, chunk=CHUNK)
        rerun_s = time.perf_counter() - t
        assert await conn.fetchval("SELECT count(*) FROM coupons") == 3 * n
        with_limits_s = await timed_fire(await rule_with_bundle(limited=True))
        assert await conn.fetchval("SELECT count(*) FROM coupons") == 6 * n

        # Peers: the same rows, written with no logic, no index, no events.
        columns = [
            "merchant_id",
            "coupon_id",
            "customer_id",
            "template_id",
            "rule_id",
            "state",
            "starts_at",
            "expires_at",
            "issued_at",
            "version",
        ]
        records = [
            tuple(r)
            for r in await conn.fetch(f"SELECT {', '.join(columns)} FROM coupons WHERE rule_id = $1", stored.rule_id)
        ]
        await conn.execute("CREATE TABLE peer_coupons (LIKE coupons)")
        t = time.perf_counter()
        await conn.copy_records_to_table("peer_coupons", records=records, columns=columns)
        copy_s = time.perf_counter() - t
        await conn.execute("CREATE TABLE peer_coupons_select (LIKE coupons)")
        t = time.perf_counter()
        await conn.execute(
            f"INSERT INTO peer_coupons_select ({', '.join(columns)}) "
            f"SELECT {', '.join(columns)} FROM coupons WHERE rule_id = $1",
            stored.rule_id,
        )
        insert_select_s = time.perf_counter() - t
    finally:
        await conn.close()
        await engine.dispose()
    result(
        "coupons.issue_100k",
        "seconds",
        issue_s,
        "s",
        f"asyncpg COPY of the same {3 * n} coupon rows into a bare table",
        copy_s,
        customers=n,
        coupons=3 * n,
        outbox=3 * n,
        chunk=CHUNK,
        rerun_s=round(rerun_s, 3),
        with_limits_s=round(with_limits_s, 3),
        insert_select_s=round(insert_select_s, 3),
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--pg-dsn", required=True, help="postgresql://… of an empty database")
    args = parser.parse_args()
    url = args.pg_dsn.replace("postgresql://", "postgresql+asyncpg://")
    asyncio.run(run(args.customers, args.pg_dsn, url))


if __name__ == "__main__":
    main()
