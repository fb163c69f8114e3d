"""Tenant isolation on both stacks, the embedded one (in-process bus, SQLite) and the production
one (Kafka, PostgreSQL): a merchant can neither send events in another merchant's name nor read
another merchant's customer. The rest of the isolation tests (customer tokens, stored keys, event
ids) run on the embedded app in tests/unit/test_tenancy.py."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest

from services.embedded import build_embedded_app
from shared.settings import Settings
from tests.conftest import running
from tests.factories import eventually, order_paid
from tests.tenants import Tenants, rfm, two_tenants_with_orders


@pytest.fixture
async def tenants(stack: Callable[..., Settings]) -> AsyncIterator[Tenants]:
    settings = stack()
    async with running(build_embedded_app(settings, announce=False)) as client:
        yield await two_tenants_with_orders(client, settings)


async def events_for_another_merchant_are_rejected(t: Tenants) -> None:
    foreign = order_paid(t.b.merchant_id, "only-b", "o-forged", 5_000_000)
    own = order_paid(t.a.merchant_id, "only-a", "o-a3", 1)
    r = await t.client.post("/v1/events", json=[foreign, own], headers=t.a.auth)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["accepted"], body["rejected"]) == (1, 1)
    rejected = body["results"][0]
    assert rejected["status"] == "rejected" and rejected["field"] == "merchant_id"
    assert "merchant_id" in rejected["reason"]
    # And it had no effect on B: once A's own event is applied, B's customer is unchanged.
    await eventually(lambda: rfm(t.client, "only-a", t.a.auth), lambda r: r.json().get("frequency") == 2)
    b_view = (await rfm(t.client, "only-b", t.b.auth)).json()
    assert (b_view["frequency"], b_view["monetary_fen"]) == (1, 300)


async def another_merchants_customer_is_not_found(t: Tenants) -> None:
    r = await rfm(t.client, "only-b", t.a.auth)
    assert r.status_code == 404, r.text
    assert r.json()["error"]["code"] == "not_found"
    assert (await rfm(t.client, "only-b", t.b.auth)).status_code == 200
    # One customer id in two shops: each merchant sees its own customer only.
    a_same = (await rfm(t.client, "same", t.a.auth)).json()
    b_same = (await rfm(t.client, "same", t.b.auth)).json()
    assert (a_same["merchant_id"], a_same["monetary_fen"]) == (t.a.merchant_id, 100)
    assert (b_same["merchant_id"], b_same["monetary_fen"]) == (t.b.merchant_id, 9900)


async def test_a_merchant_can_neither_send_events_in_another_merchants_name_nor_read_its_customers(
    tenants: Tenants,
) -> None:
    # One app for both checks: starting the stack dominates the cost.
    await events_for_another_merchant_are_rejected(tenants)
    await another_merchants_customer_is_not_found(tenants)
