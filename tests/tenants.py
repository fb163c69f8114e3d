"""Two merchants created through the platform API of a running app, each with a paid customer of
the same id and one of its own: the ground of the tenant isolation tests (tests/unit/
test_tenancy.py on the embedded app, tests/integration/test_tenancy.py on both stacks)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import httpx

from shared.settings import Settings
from tests.conftest import ADMIN_TOKEN
from tests.factories import eventually, order_paid


@dataclass(frozen=True)
class Tenant:
    merchant_id: str
    api_key: str
    jwt_secret: str

    @property
    def auth(self) -> dict[str, str]:
        return {"X-Api-Key": self.api_key}


@dataclass(frozen=True)
class Tenants:
    client: httpx.AsyncClient
    settings: Settings
    a: Tenant
    b: Tenant


async def create_tenant(client: httpx.AsyncClient, prefix: str) -> Tenant:
    mid = f"{prefix}-{uuid.uuid4().hex[:8]}"
    r = await client.post(
        "/v1/platform/merchants",
        headers={"X-Admin-Token": ADMIN_TOKEN},
        json={"merchant_id": mid, "name": f"Shop {prefix}"},
    )
    assert r.status_code == 201, r.text
    body = r.json()
    return Tenant(mid, body["api_key"], body["jwt_secret"])


async def rfm(client: httpx.AsyncClient, customer_id: str, headers: dict[str, str]) -> httpx.Response:
    return await client.get(f"/v1/customers/{customer_id}/rfm", headers=headers)


async def two_tenants_with_orders(client: httpx.AsyncClient, settings: Settings) -> Tenants:
    """Merchants A and B, each with a paid customer 'same' (one id, two shops) and one of their own."""
    a, b = await create_tenant(client, "a"), await create_tenant(client, "b")
    for tenant in (a, b):
        # Segmentation must know the merchant before its events are judged.
        await eventually(lambda t=tenant: rfm(client, "nobody", t.auth), lambda r: r.status_code == 404, timeout=30)
    events_a = [order_paid(a.merchant_id, "same", "o-a1", 100), order_paid(a.merchant_id, "only-a", "o-a2", 200)]
    events_b = [order_paid(b.merchant_id, "same", "o-b1", 9900), order_paid(b.merchant_id, "only-b", "o-b2", 300)]
    for tenant, events in ((a, events_a), (b, events_b)):
        r = await client.post("/v1/events", json=events, headers=tenant.auth)
        assert r.status_code == 200 and r.json()["accepted"] == 2, r.text
    await eventually(lambda: rfm(client, "only-a", a.auth), lambda r: r.status_code == 200, timeout=30)
    await eventually(lambda: rfm(client, "only-b", b.auth), lambda r: r.status_code == 200, timeout=30)
    await eventually(lambda: rfm(client, "same", b.auth), lambda r: r.status_code == 200, timeout=30)
    return Tenants(client, settings, a, b)
