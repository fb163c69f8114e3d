"""Tenant isolation on the embedded app (SQLite, in-process bus): two merchants created through
the platform API, and every way one of them could reach the other's data is closed. That events in
another merchant's name are refused and another merchant's customers are not found is checked on
both stacks (embedded, and Kafka with PostgreSQL) by tests/integration/test_tenancy.py."""

from __future__ import annotations

import hashlib
import sqlite3
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import jwt
import pytest
import pytest_asyncio

from services.embedded import build_embedded_app
from shared import clock
from shared.clock import ManualClock
from shared.tenancy import Merchant, Tenancy, hash_api_key, mint_customer_token
from tests.conftest import embedded_settings, running
from tests.factories import eventually, order_paid
from tests.tenants import Tenants, rfm, two_tenants_with_orders

# One app for the module, in one event loop for the module (its tasks live as long as it).
pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def tenants(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Tenants]:
    settings = embedded_settings(tmp_path_factory.mktemp("tenancy"))
    async with running(build_embedded_app(settings, announce=False)) as client:
        yield await two_tenants_with_orders(client, settings)


async def me(t: Tenants, token: str) -> httpx.Response:
    return await t.client.get("/v1/me/rfm", headers={"Authorization": f"Bearer {token}"})


async def test_a_minted_customer_token_reads_that_customer_only(tenants: Tenants) -> None:
    t = tenants
    r = await t.client.post("/v1/customer-tokens", json={"customer_id": "same", "ttl_seconds": 600}, headers=t.a.auth)
    assert r.status_code == 200, r.text
    assert r.json()["expires_in"] == 600
    token = r.json()["token"]
    got = await me(t, token)
    assert got.status_code == 200, got.text
    body = got.json()
    # A's 'same', not B's 'same' (9900), and not anybody else.
    assert (body["merchant_id"], body["customer_id"], body["monetary_fen"]) == (t.a.merchant_id, "same", 100)
    # PyJWT would judge iat and exp by the wall clock: they are judged here by the one clock.
    unchecked_times = {"verify_exp": False, "verify_iat": False, "verify_nbf": False}
    claims = jwt.decode(token, t.a.jwt_secret, algorithms=["HS256"], options=unchecked_times)
    assert (claims["mid"], claims["sub"]) == (t.a.merchant_id, "same")
    assert claims["exp"] - claims["iat"] == 600 and claims["iat"] <= clock.timestamp() < claims["exp"]


async def test_a_token_of_a_customer_without_orders_is_a_404_not_someone_elses_data(tenants: Tenants) -> None:
    token = mint_customer_token(tenants.a.merchant_id, "only-b", tenants.a.jwt_secret)
    assert (await me(tenants, token)).status_code == 404


WRONG_SECRET = "not-the-merchants-secret-but-as-long-as-one-0123456789"


@pytest.mark.parametrize(
    "forge",
    [
        pytest.param(lambda a, b: mint_customer_token(a.merchant_id, "same", WRONG_SECRET), id="wrong-secret"),
        pytest.param(
            lambda a, b: mint_customer_token(a.merchant_id, "same", a.jwt_secret, ttl=timedelta(minutes=-5)),
            id="expired",
        ),
        pytest.param(lambda a, b: mint_customer_token(b.merchant_id, "same", a.jwt_secret), id="mid-b-signed-by-a"),
        pytest.param(
            lambda a, b: jwt.encode({"sub": "same", "mid": a.merchant_id}, a.jwt_secret, algorithm="HS256"),
            id="no-expiry",
        ),
        pytest.param(
            lambda a, b: jwt.encode(
                {"sub": "same", "mid": a.merchant_id, "exp": clock.now() + timedelta(hours=1)},
                None,
                algorithm="none",
            ),
            id="unsigned",
        ),
        pytest.param(lambda a, b: mint_customer_token("no-such-merchant", "same", a.jwt_secret), id="unknown-merchant"),
    ],
)
async def test_a_forged_or_expired_customer_token_is_a_401(tenants: Tenants, forge: Any) -> None:
    r = await me(tenants, forge(tenants.a, tenants.b))
    assert r.status_code == 401, r.text
    assert r.json()["error"]["fields"][0]["field"] == "header.Authorization"


async def test_api_keys_are_stored_only_as_peppered_hashes(tenants: Tenants) -> None:
    t = tenants
    pepper = t.settings.api_key_pepper.get_secret_value()
    data = t.settings.data_dir
    with sqlite3.connect(data / "gateway.sqlite") as db:
        rows = db.execute("SELECT key_hash, merchant_id FROM merchant_api_keys").fetchall()
    stored = {h: m for h, m in rows}
    for tenant in (t.a, t.b):
        assert stored[hash_api_key(tenant.api_key, pepper)] == tenant.merchant_id
        # Neither the key nor an unpeppered hash of it (which a leaked table would give away).
        assert tenant.api_key not in stored
        assert hashlib.sha256(tenant.api_key.encode()).hexdigest() not in stored
    # No copy of the plaintext anywhere: not in any service's file, not on the bus.
    for path in sorted(data.glob("*.sqlite*")):
        raw = path.read_bytes()
        for tenant in (t.a, t.b):
            assert tenant.api_key.encode() not in raw, path.name


async def test_one_merchants_event_id_does_not_swallow_another_merchants_event(tenants: Tenants) -> None:
    t = tenants
    shared_id = f"paid-{uuid.uuid4().hex[:6]}"  # e.g. two shops on the same platform numbering their events
    r = await t.client.post(
        "/v1/events", json=[order_paid(t.a.merchant_id, "x-a", "o-x-a", 1, event_id=shared_id)], headers=t.a.auth
    )
    assert r.json()["accepted"] == 1
    r = await t.client.post(
        "/v1/events", json=[order_paid(t.b.merchant_id, "x-b", "o-x-b", 1, event_id=shared_id)], headers=t.b.auth
    )
    assert r.json()["accepted"] == 1, r.json()
    # And each is applied downstream too (segmentation's inbox keeps them apart): nothing is left
    # in flight when the module's app shuts down.
    for tenant, customer in ((t.a, "x-a"), (t.b, "x-b")):
        got = await eventually(lambda c=customer, h=tenant.auth: rfm(t.client, c, h), lambda r: r.status_code == 200)
        assert (got.json()["merchant_id"], got.json()["frequency"]) == (tenant.merchant_id, 1)


# ---------------------------------------------------------------- the verified-token cache


class _Merchants(Tenancy):
    """Tenancy with its merchants in a dict (the cache logic is what is under test)."""

    def __init__(self, merchants: dict[str, Merchant]) -> None:
        self._tokens = {}
        self.table = merchants

    async def by_id(self, merchant_id: str) -> Merchant | None:
        return self.table.get(merchant_id)


def _merchant(secret: str, active: bool = True) -> Merchant:
    return Merchant(merchant_id="m-cache", name="m", timezone="Asia/Shanghai", jwt_secret=secret, active=active)


async def test_a_cached_token_is_refused_once_the_secret_rotates_or_the_merchant_is_deactivated() -> None:
    old = "old-secret-0123456789abcdefghijklmnopqrstuvwxyz"
    tenancy = _Merchants({"m-cache": _merchant(old)})
    token = mint_customer_token("m-cache", "c-1", old)
    assert (await tenancy.customer_from_token(token)).customer_id == "c-1"
    assert (await tenancy.customer_from_token(token)).customer_id == "c-1"  # from the cache
    tenancy.table["m-cache"] = _merchant("new-secret-0123456789abcdefghijklmnopqrstuvwxyz")
    assert await tenancy.customer_from_token(token) is None
    tenancy.table["m-cache"] = _merchant(old, active=False)
    assert await tenancy.customer_from_token(token) is None
    tenancy.table["m-cache"] = _merchant(old)
    assert (await tenancy.customer_from_token(token)).customer_id == "c-1"


async def test_a_cached_token_expires_like_an_uncached_one(frozen_clock: ManualClock) -> None:
    secret = "a-secret-0123456789abcdefghijklmnopqrstuvwxyz"
    tenancy = _Merchants({"m-cache": _merchant(secret)})
    token = mint_customer_token("m-cache", "c-1", secret, ttl=timedelta(minutes=5))
    assert await tenancy.customer_from_token(token) is not None
    frozen_clock.advance(minutes=5, seconds=29)  # within the expiry's 30 s leeway
    assert await tenancy.customer_from_token(token) is not None
    frozen_clock.advance(seconds=2)  # past it
    assert await tenancy.customer_from_token(token) is None
    assert await _Merchants({"m-cache": _merchant(secret)}).customer_from_token(token) is None  # uncached too


async def test_a_token_is_judged_by_the_one_clock_not_by_the_wall_clock(frozen_clock: ManualClock) -> None:
    secret = "a-secret-0123456789abcdefghijklmnopqrstuvwxyz"
    tenancy = _Merchants({"m-cache": _merchant(secret)})
    frozen_clock.advance(days=-400)  # minted on a day long past: expired by the wall clock, not by the clock
    token = mint_customer_token("m-cache", "c-1", secret, ttl=timedelta(minutes=5))
    assert await tenancy.customer_from_token(token) is not None
    issued = frozen_clock.now()
    frozen_clock.advance(minutes=-2)  # issued (iat) two minutes from now: not yet valid
    assert await _Merchants({"m-cache": _merchant(secret)}).customer_from_token(token) is None
    frozen_clock.set(issued)
    early = jwt.encode(
        {"sub": "c-1", "mid": "m-cache", "nbf": issued + timedelta(minutes=1), "exp": issued + timedelta(hours=1)},
        secret,
        algorithm="HS256",
    )
    assert await tenancy.customer_from_token(early) is None
    frozen_clock.advance(minutes=1)
    assert await tenancy.customer_from_token(early) is not None


async def test_a_token_with_a_bad_signature_is_never_cached() -> None:
    tenancy = _Merchants({"m-cache": _merchant("right-secret-0123456789abcdefghijklmnopqrstuvwxyz")})
    forged = mint_customer_token("m-cache", "c-1", WRONG_SECRET)
    assert await tenancy.customer_from_token(forged) is None
    assert tenancy._tokens == {}
