"""GET /v1/customers/{id}/rfm answers from the stored segment, with each merchant's configuration
and statistics cached in the process, and computes instead whenever the stored segment may not be
what scoring would give now; on SQLite and on PostgreSQL (there read through the driver itself).
The segmentation API runs alone (no consumer, no worker): the tests feed events and run
re-scoring jobs themselves, so every state in between can be looked at."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import select, update

from services.segmentation.adapters.tables import rescore_jobs, rfm_configs, segments
from services.segmentation.service_layer.rfm_read import StoredReads
from shared import clock
from shared.tenancy import mint_customer_token
from tests.conftest import Backend
from tests.factories import eventually, order_paid
from tests.segmentation_service import FIXED, Service, add_shop, serving

NOW = clock.now()  # read at import, after the suite's clock is installed


@pytest.fixture
async def service(backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Service]:
    async with serving(tmp_path, monkeypatch, backend.database_url("segmentation")) as s:
        yield s


def vip_orders(merchant_id: str, amount: int = 30_000) -> list[dict[str, Any]]:
    return [
        order_paid(merchant_id, "vip", f"{merchant_id}-v{i}", amount, at=NOW - timedelta(days=3 + i)) for i in range(5)
    ]


async def test_a_saved_configuration_shows_at_once_and_the_stored_segment_answers_once_re_scored(
    service: Service,
) -> None:
    shop = await add_shop(service.rt, "m-a", "fugou-development-only")
    await service.feed(vip_orders("m-a"))
    r = await service.client.put("/v1/segmentation/config", json=FIXED, headers=shop.h)
    assert r.status_code == 200 and r.json()["version"] == 1

    # The job has not run: the answer is computed under version 1 at once.
    computed, from_store = await service.stored(shop, "vip")
    assert not from_store
    assert computed["why"]["config_version"] == 1 and computed["why"]["boundaries"]["frequency"] == [2, 4]
    assert (computed["cell"], computed["tier"], computed["rfm_class"]["code"]) == ("3-3-3", "S", "important_value")

    await service.run_jobs()
    # Once the job is done (seen within the cache's TTL), the stored segment answers, the same.
    body, from_store = await eventually(lambda: service.stored(shop, "vip"), lambda v: v[1], timeout=10)
    assert body == computed
    async with service.rt.sessions() as session:
        tags = (await session.execute(select(segments.c.tags).where(segments.c.customer_id == "vip"))).scalar_one()
    assert body["tags"] == orjson.loads(tags) and "churn_risk" in body["tags"]  # daily buyer, quiet for 3 days

    # A second configuration through this process: shown at the next read, not after a TTL.
    r = await service.client.put(
        "/v1/segmentation/config",
        headers=shop.h,
        json=FIXED
        | {
            "boundaries": {
                "mode": "fixed",
                "recency_days": [1, 2],
                "frequency": [6, 7],
                "monetary_fen": [500_000, 900_000],
            }
        },
    )
    assert r.json()["version"] == 2
    body, from_store = await service.stored(shop, "vip")
    assert not from_store and body["why"]["config_version"] == 2
    assert (body["r_level"], body["f_level"], body["m_level"], body["tier"]) == (1, 1, 1, "C")
    await service.run_jobs()
    body2, _ = await eventually(lambda: service.stored(shop, "vip"), lambda v: v[1], timeout=10)
    assert body2 == body


async def test_a_segment_scored_under_an_older_configuration_is_never_served(service: Service) -> None:
    shop = await add_shop(service.rt, "m-a", "fugou-development-only")
    await service.feed(vip_orders("m-a"))
    await service.client.put("/v1/segmentation/config", json=FIXED, headers=shop.h)
    await service.run_jobs()
    await eventually(lambda: service.stored(shop, "vip"), lambda v: v[1], timeout=10)

    # Make the stored segment recognisable: served as long as it is trusted.
    mine = (segments.c.merchant_id == "m-a") & (segments.c.customer_id == "vip")
    await service.sql(update(segments).where(mine).values(tier="C"))
    service.forget()
    body, from_store = await service.stored(shop, "vip")
    assert from_store and body["tier"] == "C"

    # Version 2 saved, its re-scoring job still pending.
    r = await service.client.put(
        "/v1/segmentation/config", json=FIXED | {"tier_overrides": {"3-3-3": "A"}}, headers=shop.h
    )
    service.forget()
    body, from_store = await service.stored(shop, "vip")
    assert not from_store and (body["tier"], body["why"]["config_version"]) == ("A", 2)
    # A worker has started on it: still computed.
    await service.sql(update(rescore_jobs).where(rescore_jobs.c.job_id == r.json()["job_id"]).values(status="running"))
    service.forget()
    body, from_store = await service.stored(shop, "vip")
    assert not from_store and body["tier"] == "A"

    # A version with no re-scoring job queued at all (nothing pending): the segment is older than
    # it and nothing will cover it, so it is computed too.
    await service.sql(update(rescore_jobs).where(rescore_jobs.c.job_id == r.json()["job_id"]).values(status="done"))
    await service.sql(update(segments).where(mine).values(tier="C"))  # as version 1 left it
    async with service.rt.sessions() as session:
        body_v2 = (await session.execute(select(rfm_configs.c.body).where(rfm_configs.c.version == 2))).scalar_one()
    await service.sql(rfm_configs.insert().values(merchant_id="m-a", version=3, body=body_v2, created_at=NOW))
    service.forget()
    body, from_store = await service.stored(shop, "vip")
    assert not from_store and (body["tier"], body["why"]["config_version"]) == ("A", 3)

    # Time has moved the segment (its next change has come, the sweep not run): computed.
    await service.sql(
        rescore_jobs.insert().values(
            job_id="covers-3",
            merchant_id="m-a",
            config_version=3,
            status="done",
            total=1,
            done=1,
            changed=0,
            created_at=NOW,
        )
    )
    service.forget()
    body, from_store = await service.stored(shop, "vip")
    assert from_store and body["tier"] == "C"  # covered by a finished job of version 3: trusted
    await service.sql(update(segments).where(mine).values(next_change_at=NOW - timedelta(seconds=1)))
    body, from_store = await service.stored(shop, "vip")
    assert not from_store and body["tier"] == "A"

    # Another process saves version 4 (straight into the database: nothing tells this process, no
    # cache is dropped): the very next read sees it and computes.
    await service.sql(update(segments).where(mine).values(next_change_at=None))
    body, from_store = await service.stored(shop, "vip")
    assert from_store and body["tier"] == "C"
    await service.sql(rfm_configs.insert().values(merchant_id="m-a", version=4, body=body_v2, created_at=NOW))
    body, from_store = await service.stored(shop, "vip")
    assert not from_store and (body["tier"], body["why"]["config_version"]) == ("A", 4)


async def test_a_customer_with_paid_orders_and_no_segment_yet_is_computed(service: Service) -> None:
    shop = await add_shop(service.rt, "m-a", "fugou-development-only")
    await service.client.put("/v1/segmentation/config", json=FIXED, headers=shop.h)
    await service.feed(vip_orders("m-a"))
    await service.run_jobs()
    await eventually(lambda: service.stored(shop, "vip"), lambda v: v[1], timeout=10)
    await service.sql(segments.delete().where(segments.c.customer_id == "vip"))
    body, from_store = await service.stored(shop, "vip")
    assert not from_store and (body["frequency"], body["tier"]) == (5, "S")
    missing = await service.client.get("/v1/customers/nobody/rfm", headers=shop.h)
    assert missing.status_code == 404 and missing.json()["error"]["fields"][0]["field"] == "path.customer_id"


async def test_the_cache_keeps_each_merchants_configuration_and_data_apart(service: Service) -> None:
    pepper = "fugou-development-only"
    a, b = await add_shop(service.rt, "m-a", pepper), await add_shop(service.rt, "m-b", pepper)
    await service.client.put("/v1/segmentation/config", json=FIXED, headers=a.h)
    for _ in range(2):  # b at version 2, with boundaries of its own
        await service.client.put(
            "/v1/segmentation/config",
            headers=b.h,
            json=FIXED
            | {
                "boundaries": {
                    "mode": "fixed",
                    "recency_days": [1, 2],
                    "frequency": [9, 10],
                    "monetary_fen": [1_000_000, 2_000_000],
                }
            },
        )
    # One customer id in both shops, with different orders; one customer in b only.
    await service.feed(
        vip_orders("m-a", 30_000)
        + vip_orders("m-b", 1_000)
        + [order_paid("m-b", "only-b", "ob-1", 500, at=NOW - timedelta(days=1))]
    )
    await service.run_jobs()

    for _ in range(2):  # the second round is served from the cache of both merchants
        got_a, from_store_a = await service.stored(a, "vip")
        got_b, from_store_b = await service.stored(b, "vip")
        assert from_store_a and from_store_b
        assert (got_a["merchant_id"], got_a["monetary_fen"], got_a["tier"]) == ("m-a", 150_000, "S")
        assert (got_b["merchant_id"], got_b["monetary_fen"], got_b["tier"]) == ("m-b", 5_000, "C")
        assert (got_a["why"]["config_version"], got_a["why"]["boundaries"]["frequency"]) == (1, [2, 4])
        assert (got_b["why"]["config_version"], got_b["why"]["boundaries"]["frequency"]) == (2, [9, 10])
    assert (await service.client.get("/v1/customers/only-b/rfm", headers=a.h)).status_code == 404
    assert (await service.client.get("/v1/customers/only-b/rfm", headers=b.h)).status_code == 200

    # A customer token reads its own merchant's customer, through the same cache.
    token = mint_customer_token("m-b", "vip", b.jwt_secret)
    mine = (await service.client.get("/v1/me/rfm", headers={"Authorization": f"Bearer {token}"})).json()
    assert mine == got_b

    # A new configuration for a changes nothing for b.
    await service.client.put("/v1/segmentation/config", json=FIXED | {"tier_overrides": {"3-3-3": "A"}}, headers=a.h)
    got_b2, from_store_b = await service.stored(b, "vip")
    assert from_store_b and got_b2 == got_b
    got_a2, _ = await service.stored(a, "vip")
    assert (got_a2["tier"], got_a2["why"]["config_version"]) == ("A", 2)


async def test_reads_in_one_turn_share_a_query_per_merchant_and_never_mix_merchants(service: Service) -> None:
    pepper = "fugou-development-only"
    a, b = await add_shop(service.rt, "m-a", pepper), await add_shop(service.rt, "m-b", pepper)
    for shop in (a, b):
        await service.client.put("/v1/segmentation/config", json=FIXED, headers=shop.h)
    await service.feed(vip_orders("m-a", 30_000) + vip_orders("m-b", 1_000))
    await service.run_jobs()
    await eventually(lambda: service.stored(a, "vip"), lambda v: v[1], timeout=10)

    # Through HTTP: many concurrent reads of both merchants, each gets its own merchant's customer.
    asked = [a, b] * 20
    got = await asyncio.gather(*[service.client.get("/v1/customers/vip/rfm", headers=s.h) for s in asked])
    assert [(r.json()["merchant_id"], r.json()["monetary_fen"]) for r in got] == [
        ("m-a", 150_000) if s is a else ("m-b", 5_000) for s in asked
    ]
    missing = await asyncio.gather(
        *[service.client.get(f"/v1/customers/{c}/rfm", headers=a.h) for c in ("vip", "nobody", "vip")]
    )
    assert [r.status_code for r in missing] == [200, 404, 200]

    # Directly: one connection (one query) per merchant for all the reads asked in one turn.
    opened: list[int] = []
    engine = service.rt.engine
    assert engine is not None

    def connect() -> Any:
        opened.append(1)
        return engine.connect()

    reads = StoredReads(connect, pool_size=5)
    found = await asyncio.gather(
        *[reads.read(s.merchant_id, c, "Asia/Shanghai") for s in (a, b) for c in ("vip", "nobody", "vip")]
    )
    assert len(opened) == 2
    assert [(r.found, r.explained.values.monetary_fen if r.explained else None) for r in found] == [
        (True, 150_000),
        (False, None),
        (True, 150_000),
        (True, 5_000),
        (False, None),
        (True, 5_000),
    ]


async def test_a_failed_batch_fails_each_of_its_reads_and_the_next_one_works(service: Service) -> None:
    shop = await add_shop(service.rt, "m-a", "fugou-development-only")
    await service.feed(vip_orders("m-a"))
    engine = service.rt.engine
    assert engine is not None
    broken = [True]

    def connect() -> Any:
        if broken[0]:
            raise ConnectionError("database down")
        return engine.connect()

    reads = StoredReads(connect, pool_size=2)
    outcomes = await asyncio.gather(
        *[reads.read("m-a", "vip", "Asia/Shanghai") for _ in range(3)], return_exceptions=True
    )
    assert all(isinstance(o, ConnectionError) for o in outcomes)
    broken[0] = False
    assert (await reads.read(shop.merchant_id, "vip", "Asia/Shanghai")).found
