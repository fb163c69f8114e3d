"""The HTTP surface of the embedded app (all services on SQLite, in-process bus): every error is
the same JSON shape naming the field at fault, operations endpoints answer, the docs cover every
service, and merchants and their keys are managed through the platform API."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI

from services.embedded import build_embedded_app
from services.registry import SPECS
from tests.conftest import ADMIN_TOKEN, embedded_settings, running
from tests.factories import eventually, order_paid

# One app for the module, in one event loop for the module (its tasks live as long as it).
pytestmark = pytest.mark.asyncio(loop_scope="module")

KEY = "fg_http_test_key"
AUTH = {"X-Api-Key": KEY}
ADMIN = {"X-Admin-Token": ADMIN_TOKEN}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    # One app for the module: starting one costs more than all these requests together.
    settings = embedded_settings(tmp_path_factory.mktemp("http"), bootstrap_api_key=KEY)
    app = build_embedded_app(settings, announce=False)
    async with running(app) as c:
        yield app, c


@pytest.fixture
def client(served: tuple[FastAPI, httpx.AsyncClient]) -> httpx.AsyncClient:
    return served[1]


def error_of(r: httpx.Response, status: int, code: str | None = None, field: str | None = None) -> dict[str, Any]:
    """Assert the one error shape every endpoint uses; return the error object."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) <= {"code", "message", "fields"}, err
    assert isinstance(err["code"], str) and isinstance(err["message"], str) and err["message"]
    if code is not None:
        assert err["code"] == code, err
    if field is not None:
        assert field in [f["field"] for f in err.get("fields", [])], err
    for f in err.get("fields", []):
        assert set(f) == {"field", "message"}, f
    return err


def new_merchant_id() -> str:
    return f"m-{uuid.uuid4().hex[:10]}"


async def create_merchant(client: httpx.AsyncClient, merchant_id: str | None = None, **extra: Any) -> dict[str, Any]:
    r = await client.post(
        "/v1/platform/merchants",
        headers=ADMIN,
        json={"merchant_id": merchant_id or new_merchant_id(), "name": "Shop", **extra},
    )
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


# ---------------------------------------------------------------- errors


async def test_a_non_array_events_body_is_a_422_naming_body(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/events", json={"event_id": "e1"}, headers=AUTH)
    error_of(r, 422, "validation_error", "body")


async def test_more_than_a_thousand_events_is_a_422(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/events", json=[{}] * 1001, headers=AUTH)
    error_of(r, 422, "validation_error", "body")


async def test_an_empty_events_array_is_a_422(client: httpx.AsyncClient) -> None:
    error_of(await client.post("/v1/events", json=[], headers=AUTH), 422, "validation_error", "body")


async def test_invalid_json_text_is_a_422_not_a_500(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/events", content=b'[{"event_id": ', headers={**AUTH, "content-type": "application/json"})
    err = error_of(r, 422, "validation_error")
    assert err["fields"][0]["field"].startswith("body")


async def test_a_bad_event_in_a_batch_is_rejected_alone_naming_its_field(client: httpx.AsyncClient) -> None:
    bad = order_paid("demo", "u1", "o1", 100)
    bad["data"]["amount_fen"] = -1
    good = order_paid("demo", "u1", "o2", 100)
    r = await client.post("/v1/events", json=[bad, good, "not an object"], headers=AUTH)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["accepted"], body["rejected"]) == (1, 2)
    by_index = {x["index"]: x for x in body["results"]}
    assert by_index[0]["status"] == "rejected" and by_index[0]["field"] == "data.amount_fen"
    assert by_index[0]["event_id"] == bad["event_id"]
    assert by_index[1]["status"] == "accepted"
    assert by_index[2]["field"] == "[2]"


def _with_amount(amount: int) -> dict[str, Any]:
    return order_paid("demo", "u-big", f"o-{uuid.uuid4().hex[:6]}", amount)


def _with_note(note: Any) -> dict[str, Any]:
    event = order_paid("demo", "u-odd", f"o-{uuid.uuid4().hex[:6]}", 100)
    event["data"]["note"] = note
    return event


@pytest.mark.parametrize(
    ("event", "field"),
    [
        pytest.param(_with_amount(10**30), "data.amount_fen", id="amount-10^30"),
        pytest.param(_with_amount(2**63), "data.amount_fen", id="amount-bigint+1"),
        pytest.param(_with_note("\ud800"), "data.note", id="extra-lone-surrogate"),
        pytest.param(_with_note(10**30), "data.note", id="extra-int-beyond-64-bits"),
    ],
)
async def test_an_event_the_system_cannot_carry_is_rejected_alone_not_a_500(
    served: tuple[FastAPI, httpx.AsyncClient], event: dict[str, Any], field: str
) -> None:
    app, _ = served
    # See the status the server would send, rather than the exception the test transport re-raises.
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    ok = order_paid("demo", "u-ok", f"o-{uuid.uuid4().hex[:6]}", 100)
    # json.dumps writes a lone surrogate as the \ud800 escape, as a shop's JSON library would.
    body = json.dumps([event, ok]).encode()
    async with httpx.AsyncClient(transport=transport, base_url="http://fugou.test") as c:
        r = await c.post("/v1/events", content=body, headers={**AUTH, "content-type": "application/json"})
    assert r.status_code == 200, r.text
    first, second = r.json()["results"]
    assert (first["status"], first["field"]) == ("rejected", field)
    assert second["status"] == "accepted"


async def test_missing_api_key_is_a_401_naming_the_header(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/events", json=[order_paid("demo", "u1", "o1", 1)])
    error_of(r, 401, "unauthorized", "header.X-Api-Key")


async def test_a_wrong_api_key_is_a_401(client: httpx.AsyncClient) -> None:
    error_of(
        await client.get("/v1/merchant", headers={"X-Api-Key": "fg_nope"}), 401, "unauthorized", "header.X-Api-Key"
    )
    error_of(await client.get("/v1/customers/u1/rfm", headers={"X-Api-Key": "fg_nope"}), 401, "unauthorized")


async def test_an_unknown_route_is_a_json_404(client: httpx.AsyncClient) -> None:
    error_of(await client.get("/v1/no-such-thing"), 404, "not_found")


async def test_a_wrong_method_is_a_json_405(client: httpx.AsyncClient) -> None:
    error_of(await client.delete("/v1/events", headers=AUTH), 405, "method_not_allowed")


async def test_an_unknown_customer_is_a_404_naming_the_path_parameter(client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/customers/nobody/rfm", headers=AUTH)
    error_of(r, 404, "not_found", "path.customer_id")


# ---------------------------------------------------------------- operations and docs


async def test_healthz_answers(client: httpx.AsyncClient) -> None:
    r = await client.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


async def test_readyz_checks_the_bus_and_every_service(client: httpx.AsyncClient) -> None:
    r = await client.get("/readyz")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "ok"
    assert body["checks"]["bus"] == "ok"
    for name in SPECS:
        assert body["checks"][name]["database"] == "ok", body
    # The background parts are reported too: a crashed consumer must show.
    assert body["checks"]["segmentation"]["consumer"] == "ok"
    assert body["checks"]["gateway"]["relay"] == "ok"


async def test_metrics_are_prometheus_text_with_fugou_metrics(client: httpx.AsyncClient) -> None:
    await client.get("/healthz")
    r = await client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    assert "# TYPE fugou_http_requests_total counter" in r.text
    assert 'route="/healthz"' in r.text


async def test_one_openapi_document_covers_every_service(client: httpx.AsyncClient) -> None:
    assert (await client.get("/docs")).status_code == 200
    r = await client.get("/openapi.json")
    assert r.status_code == 200
    paths = r.json()["paths"]
    for path in (
        "/v1/events",
        "/v1/platform/merchants",
        "/v1/merchant",
        "/v1/customer-tokens",
        "/v1/customers/{customer_id}/rfm",
        "/v1/me/rfm",
        "/healthz",
        "/readyz",
        "/asyncapi.json",
    ):
        assert path in paths, path


async def test_the_asyncapi_and_event_schemas_are_served(client: httpx.AsyncClient) -> None:
    r = await client.get("/asyncapi.json")
    assert r.status_code == 200
    assert r.json()["asyncapi"].startswith("3.")
    r = await client.get("/v1/event-schemas")
    assert r.status_code == 200
    assert "order.paid" in r.json()


# ---------------------------------------------------------------- merchants and keys


async def test_creating_a_merchant_needs_the_admin_token(client: httpx.AsyncClient) -> None:
    body = {"merchant_id": new_merchant_id(), "name": "Shop"}
    error_of(await client.post("/v1/platform/merchants", json=body), 401, "unauthorized", "header.X-Admin-Token")
    error_of(await client.post("/v1/platform/merchants", json=body, headers={"X-Admin-Token": "guess"}), 401)
    # A merchant's API key is not an admin token.
    error_of(await client.post("/v1/platform/merchants", json=body, headers=AUTH), 401)


async def test_a_new_merchant_key_works_in_the_gateway_and_after_replication_in_the_services(
    client: httpx.AsyncClient,
) -> None:
    mid = new_merchant_id()
    created = await create_merchant(client, mid, timezone="Europe/Paris")
    assert created["api_key"].startswith("fg_") and created["jwt_secret"]
    key = {"X-Api-Key": created["api_key"]}

    async def whoami() -> httpx.Response:
        return await client.get("/v1/merchant", headers=key)

    r = await eventually(whoami, lambda r: r.status_code == 200, timeout=10)
    assert r.json() == {"merchant_id": mid, "name": "Shop", "timezone": "Europe/Paris"}

    # Segmentation learns the key from fugou.merchants: 401 first maybe, then a plain 404.
    async def rfm() -> httpx.Response:
        return await client.get("/v1/customers/nobody/rfm", headers=key)

    await eventually(rfm, lambda r: r.status_code == 404, timeout=10)


async def test_a_second_merchant_with_the_same_id_is_a_409(client: httpx.AsyncClient) -> None:
    mid = new_merchant_id()
    await create_merchant(client, mid)
    r = await client.post("/v1/platform/merchants", headers=ADMIN, json={"merchant_id": mid, "name": "Again"})
    error_of(r, 409, "conflict", "body.merchant_id")


async def test_an_unknown_time_zone_is_a_422_naming_body_timezone(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/v1/platform/merchants",
        headers=ADMIN,
        json={"merchant_id": new_merchant_id(), "name": "Shop", "timezone": "Mars/Olympus"},
    )
    err = error_of(r, 422, "validation_error", "body.timezone")
    assert "Mars/Olympus" in err["message"]


async def test_an_invalid_merchant_id_is_a_422_naming_it(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/platform/merchants", headers=ADMIN, json={"merchant_id": "has space", "name": "S"})
    error_of(r, 422, "validation_error", "body.merchant_id")


async def test_rotating_api_keys_stops_the_old_key_and_keeps_the_new_one(client: httpx.AsyncClient) -> None:
    created = await create_merchant(client)
    old = {"X-Api-Key": created["api_key"]}
    assert (await client.get("/v1/merchant", headers=old)).status_code == 200
    # Warm segmentation's cache with the old key, so its revocation must really invalidate it.
    await eventually(
        lambda: client.get("/v1/customers/nobody/rfm", headers=old), lambda r: r.status_code == 404, timeout=10
    )

    r = await client.post("/v1/merchant/api-keys", headers=old)
    assert r.status_code == 201, r.text
    new = {"X-Api-Key": r.json()["api_key"]}
    assert new != old
    assert (await client.get("/v1/merchant", headers=new)).status_code == 200

    r = await client.post("/v1/merchant/api-keys/revoke", headers=new, json={"api_key": created["api_key"]})
    assert r.status_code == 204, r.text
    # The gateway drops its cache on revoke: at once, not in 30 s.
    error_of(await client.get("/v1/merchant", headers=old), 401, "unauthorized")
    assert (await client.get("/v1/merchant", headers=new)).status_code == 200
    # The other services drop theirs when the merchant change reaches them.
    await eventually(
        lambda: client.get("/v1/customers/nobody/rfm", headers=old), lambda r: r.status_code == 401, timeout=10
    )
    await eventually(
        lambda: client.get("/v1/customers/nobody/rfm", headers=new), lambda r: r.status_code == 404, timeout=10
    )


async def test_revoking_a_key_that_is_not_the_merchants_is_a_404(client: httpx.AsyncClient) -> None:
    other = await create_merchant(client)
    mine = await create_merchant(client)
    r = await client.post(
        "/v1/merchant/api-keys/revoke", headers={"X-Api-Key": mine["api_key"]}, json={"api_key": other["api_key"]}
    )
    error_of(r, 404, "not_found", "body.api_key")
    # The other merchant's key still works.
    assert (await client.get("/v1/merchant", headers={"X-Api-Key": other["api_key"]})).status_code == 200
