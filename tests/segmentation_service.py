"""The segmentation API alone (no consumer, no worker) for tests that feed events and run the
re-scoring jobs themselves, so that every state in between can be looked at: on SQLite, or on the
database given (tests/integration/test_segmentation_read_rfm.py, tests/unit/
test_segmentation_trend.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from services.segmentation.adapters.tables import messaging, rescore_jobs
from services.segmentation.entrypoints import api
from services.segmentation.service_layer.handlers import handle
from services.segmentation.service_layer.segments import run_rescore_step
from services.segmentation.spec import SPEC
from shared import clock
from shared.cli import build_service_app
from shared.events import parse_event
from shared.runtime import ServiceRuntime
from shared.tenancy import hash_api_key
from tests.conftest import embedded_settings, running

FIXED = {
    "period_days": None,
    "levels": 3,
    "boundaries": {"mode": "fixed", "recency_days": [30, 90], "frequency": [2, 4], "monetary_fen": [10_000, 100_000]},
    "class_split": {"mode": "fixed", "recency_days": 30, "frequency": 2, "monetary_fen": 20_000},
}


@dataclass
class Shop:
    merchant_id: str
    key: str
    jwt_secret: str

    @property
    def h(self) -> dict[str, str]:
        return {"X-Api-Key": self.key}


@dataclass
class Service:
    client: httpx.AsyncClient
    rt: ServiceRuntime
    app: Any
    computed: list[str]  # customer ids the endpoint computed (fell back) for, in order

    async def feed(self, events: list[dict[str, Any]]) -> None:
        async with self.rt.sessions() as session, session.begin():
            await handle(session, [parse_event(e) for e in events])

    async def run_jobs(self) -> None:
        """What the worker does with pending re-scoring jobs."""
        async with self.rt.sessions() as session:
            jobs = list(
                (
                    await session.execute(
                        select(rescore_jobs.c.job_id)
                        .where(rescore_jobs.c.status.in_(("pending", "running")))
                        .order_by(rescore_jobs.c.created_at)
                    )
                ).scalars()
            )
        for job_id in jobs:
            more = True
            while more:
                async with self.rt.sessions() as session, session.begin():
                    more = await run_rescore_step(session, job_id)

    async def sql(self, statement: Any) -> None:
        async with self.rt.sessions() as session, session.begin():
            await session.execute(statement)

    def forget(self) -> None:
        """As if the cache's TTL had run out (another process changed something)."""
        self.app.state.segmentation_reads.cache.invalidate()

    async def rfm(self, shop: Shop, customer_id: str) -> dict[str, Any]:
        r = await self.client.get(f"/v1/customers/{customer_id}/rfm", headers=shop.h)
        assert r.status_code == 200, r.text
        return r.json()

    async def stored(self, shop: Shop, customer_id: str) -> tuple[dict[str, Any], bool]:
        """The answer, and whether it came from the stored segment (nothing computed)."""
        before = len(self.computed)
        body = await self.rfm(shop, customer_id)
        return body, len(self.computed) == before


async def add_shop(rt: ServiceRuntime, merchant_id: str, pepper: str) -> Shop:
    shop = Shop(merchant_id, f"fg_{merchant_id}_key", f"secret-of-{merchant_id}-0123456789abcdefghijklmnopqrstuv")
    async with rt.sessions() as session, session.begin():
        await session.execute(
            messaging.merchants.insert().values(
                merchant_id=merchant_id,
                name=merchant_id,
                timezone="Asia/Shanghai",
                jwt_secret=shop.jwt_secret.encode(),
                active=True,
                updated_at=clock.now(),
            )
        )
        await session.execute(
            messaging.merchant_keys.insert().values(key_hash=hash_api_key(shop.key, pepper), merchant_id=merchant_id)
        )
    return shop


@asynccontextmanager
async def serving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, database_url: str | None = None
) -> AsyncIterator[Service]:
    """The segmentation API alone on SQLite, or on the given database; computing is counted."""
    settings = embedded_settings(tmp_path, **({"segmentation_database_url": database_url} if database_url else {}))
    app = build_service_app(SPEC, settings, {"api", "migrate"})
    computed: list[str] = []
    explain = api.explain_customer

    async def counting(session: Any, merchant_id: str, customer_id: str, tz: str) -> Any:
        computed.append(customer_id)
        return await explain(session, merchant_id, customer_id, tz)

    monkeypatch.setattr(api, "explain_customer", counting)
    async with running(app) as client:
        yield Service(client, app.state.runtimes["segmentation"], app, computed)
