"""The gateway as the front door of the distributed mode (services/front_door.py, shared/proxy.py),
against real servers on loopback: the gateway's app as `python -m services.gateway run` builds it,
in front of segmentation's own app (SQLite, sharing the embedded bus file with the gateway, so
the merchant and the events reach it as they would over Kafka), of a recording server standing
in for coupons (it shows what arrives upstream), of nothing at all for loyalty (a closed port),
and with no URL for notifications."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import http.client
import io
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import uvicorn
from fastapi import APIRouter, FastAPI
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from services.front_door import PROXIED, build_gateway_app
from services.gateway.bootstrap import ensure_demo_merchant
from services.registry import SPECS
from shared.cli import build_service_app
from shared.proxy import NEVER_PROXIED, route_table
from shared.settings import Settings
from tests.conftest import embedded_settings
from tests.factories import order_paid
from tests.infra import free_port

KEY = "fg_front_door_key"
H = {"X-Api-Key": KEY}
# The token every service of the test knows (the development default): a real one, not a guess.
TOKEN = Settings(_env_file=None).internal_token.get_secret_value()  # type: ignore[call-arg]
INTERNAL = {"X-Fugou-Internal-Token": TOKEN, "X-Merchant-Id": "demo"}
READ_TIMEOUT = 2.0  # the gateway's read timeout here, so that a 504 comes quickly
T = TypeVar("T")


# ------------------------------------------------------------------ servers on loopback


class LoopbackServer:
    """An ASGI app served by uvicorn (lifespan on) in a thread of its own, on a free port."""

    def __init__(self, app: Any, name: str):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        # The proxy headers as `serve` has them (uvicorn's defaults: the loopback peer is trusted).
        self.server = uvicorn.Server(
            uvicorn.Config(
                app,
                lifespan="on",
                log_level="warning",
                access_log=False,
                timeout_graceful_shutdown=5,
                proxy_headers=True,
                forwarded_allow_ips="127.0.0.1",
            )
        )
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, name=name, daemon=True)

    def __enter__(self) -> LoopbackServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError(f"{self.thread.name} did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
        self.sock.close()


@dataclass
class Recorder:
    """What the stand-in for coupons received, and the switches of its slow and streaming answers."""

    seen: list[dict[str, Any]] = field(default_factory=list)
    first_chunk_in: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)


def recording_upstream(rec: Recorder) -> Starlette:
    async def anything(request: Request) -> Response:
        mode = request.headers.get("x-test-mode", "")
        if mode == "slow":  # answers after the gateway's read timeout (or when the test ends)
            await asyncio.to_thread(rec.done.wait, READ_TIMEOUT + 3)
        body = hashlib.sha256()
        size = 0
        try:
            async for chunk in request.stream():
                if chunk:
                    body.update(chunk)
                    size += len(chunk)
                    rec.first_chunk_in.set()
        except ClientDisconnect:  # the gateway gave up on a slow answer
            return Response(status_code=499)
        seen = {
            "method": request.method,
            "raw_path": request.scope["raw_path"].decode(),
            "query": request.scope["query_string"].decode(),
            "headers": [(k.decode(), v.decode()) for k, v in request.headers.raw],
            "size": size,
            "sha256": body.hexdigest(),
        }
        rec.seen.append(seen)
        if mode == "stream":

            async def two_parts() -> Any:
                yield b"first part\n"
                await asyncio.to_thread(rec.release.wait, 10)  # until the client has the first part
                yield b"second part\n"

            return StreamingResponse(two_parts(), media_type="text/plain")
        response = JSONResponse(seen, headers={"X-Upstream": "coupons-stand-in"})
        response.raw_headers += [(b"set-cookie", b"a=1; Path=/"), (b"set-cookie", b"b=2; Path=/")]
        return response

    return Starlette(routes=[Route("/{path:path}", anything, methods=["GET", "POST", "PUT", "PATCH", "DELETE"])])


def _wait(probe: Callable[[], T], check: Callable[[T], bool], timeout: float = 30.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if check(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s; last value: {value!r}")
        time.sleep(0.05)


@dataclass
class Door:
    gateway: str
    segmentation: str
    coupons: str
    rec: Recorder
    gateway_app: FastAPI

    def via(self) -> httpx.Client:
        return httpx.Client(base_url=self.gateway, timeout=15)

    def direct(self) -> httpx.Client:
        return httpx.Client(base_url=self.segmentation, timeout=15)


@pytest.fixture(scope="module")
def door(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Door]:
    tmp: Path = tmp_path_factory.mktemp("front-door")
    rec = Recorder()
    # One data dir: the two apps share the embedded bus's log file, as two processes share Kafka.
    seg_settings = embedded_settings(tmp)
    seg_app = build_service_app(SPECS["segmentation"], seg_settings, {"api", "migrate", "consumer", "relay"})
    with LoopbackServer(seg_app, "segmentation") as seg, LoopbackServer(recording_upstream(rec), "coupons") as coupons:
        gw_settings = embedded_settings(
            tmp,
            bootstrap_api_key=KEY,
            segmentation_url=seg.url,
            coupons_url=coupons.url,
            loyalty_url=f"http://127.0.0.1:{free_port()}",
        )  # nothing listens there

        async def bootstrap(app: FastAPI) -> None:
            await ensure_demo_merchant(app.state.runtimes["gateway"], key_file=None)

        gw_app = build_gateway_app(
            SPECS["gateway"],
            gw_settings,
            {"api", "migrate", "consumer", "relay"},
            bootstrap,
            proxy_timeout=httpx.Timeout(5.0, read=READ_TIMEOUT),
        )
        with LoopbackServer(gw_app, "gateway") as gw:
            d = Door(gw.url, seg.url, coupons.url, rec, gw_app)
            with d.direct() as direct:  # segmentation has the merchant from fugou.merchants
                _wait(lambda: direct.get("/v1/segments/summary", headers=H).status_code, lambda s: s == 200)
            with d.via() as via:  # and, through the gateway's own POST /v1/events, some customers
                events = [order_paid("demo", f"u-{i}", f"o-{i}", 1000 * (i + 1)) for i in range(12)]
                events += [order_paid("demo", "u-0", "o-99", 500)]
                r = via.post("/v1/events", json=events, headers=H)
                assert r.status_code == 200 and r.json()["accepted"] == len(events), r.text
            with d.direct() as direct:
                _wait(
                    lambda: direct.get("/v1/segments/summary", headers=H).json(),
                    lambda s: s["customers"] == 12 and s["repeat_customers"] == 1,
                )
            try:
                yield d
            finally:
                rec.done.set()
                rec.release.set()


# ------------------------------------------------------------------ the console


def test_the_gateway_serves_the_console_and_its_assets(door: Door) -> None:
    with door.via() as via:
        page = via.get("/console")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "<html" in page.text.lower()
        script = via.get("/console/static/api.js")
        assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")


# ------------------------------------------------------------------ forwarding to segmentation


def test_a_segmentation_route_answers_through_the_gateway_as_it_does_directly(door: Door) -> None:
    with door.via() as via, door.direct() as direct:
        through, there = via.get("/v1/segments/summary", headers=H), direct.get("/v1/segments/summary", headers=H)
    assert through.status_code == there.status_code == 200
    assert through.json() == there.json() and through.json()["customers"] == 12
    assert through.headers["content-type"] == there.headers["content-type"]
    # The gateway's own answer would not be this one: it has no such route, nor any segment.
    assert "/v1/segments/summary" not in door.gateway_app.openapi()["paths"]


def test_a_json_body_is_forwarded_and_the_upstreams_answer_comes_back_whole(door: Door) -> None:
    saved = {"name": "复购客 ", "filter": {"tier": ["S", "A", "B", "C"]}}
    with door.via() as via, door.direct() as direct:
        created = via.post("/v1/audiences", json=saved, headers=H)
        assert created.status_code == 201, created.text
        audience = created.json()
        assert audience["name"] == saved["name"] and audience["filter"] == saved["filter"]
        assert direct.get(f"/v1/audiences/{audience['audience_id']}", headers=H).json() == audience
        query = {"filter": {"frequency": {"gte": 2}}, "limit": 10}
        through = via.post("/v1/audiences/query", json=query, headers=H)
        assert (
            through.status_code == 200
            and through.json() == direct.post("/v1/audiences/query", json=query, headers=H).json()
        )
        assert [m["customer_id"] for m in through.json()["customers"]] == ["u-0"]
        # The upstream's 4xx comes back as it is, field at fault included.
        bad = via.post("/v1/audiences", json={"name": "", "filter": {"tier": ["S"]}}, headers=H)
        assert bad.status_code == 422 and bad.json()["error"]["fields"][0]["field"] == "body.name"
        assert via.delete(f"/v1/audiences/{audience['audience_id']}", headers=H).status_code == 204


def test_a_csv_export_streams_through_the_gateway_byte_for_byte(door: Door) -> None:
    body = {"filter": {"tier": ["S", "A", "B", "C"]}}
    with door.via() as via, door.direct() as direct:
        there = direct.post("/v1/audiences/query.csv", json=body, headers=H)
        with via.stream("POST", "/v1/audiences/query.csv", json=body, headers=H) as through:
            assert through.status_code == 200
            assert through.headers["content-type"].startswith("text/csv")
            assert through.headers["content-disposition"] == 'attachment; filename="audience.csv"'
            assert "content-length" not in through.headers  # streamed as it comes, not gathered first
            got = through.read()
    assert got == there.content
    rows = list(csv.DictReader(io.StringIO(got.decode().lstrip("\ufeff"))))
    assert sorted(r["customer_id"] for r in rows) == sorted(f"u-{i}" for i in range(12))


def test_query_strings_reach_the_upstream_unchanged(door: Door) -> None:
    with door.via() as via, door.direct() as direct:
        through = via.get("/v1/segments/trend", params={"days": 7}, headers=H)
        assert through.status_code == 200 and len(through.json()["days"]) <= 7
        assert (
            via.get("/v1/segments/trend?days=0", headers=H).json()
            == direct.get("/v1/segments/trend?days=0", headers=H).json()
        )  # the upstream's own 422
        via.get("/v1/coupons/templates?tag=%E5%A4%8D%E8%B4%AD&tag=a+b&empty=&x=%26", headers=H)
    assert door.rec.seen[-1]["raw_path"] == "/v1/coupons/templates"
    assert door.rec.seen[-1]["query"] == "tag=%E5%A4%8D%E8%B4%AD&tag=a+b&empty=&x=%26"


def test_the_internal_service_token_does_not_pass_the_gateway(door: Door) -> None:
    """Segmentation lets a caller with the internal token act for any merchant: so the gateway
    never forwards it (nor the merchant it names), whoever sends it."""
    with door.via() as via, door.direct() as direct:
        assert direct.get("/v1/segments/summary", headers=INTERNAL).status_code == 200  # it is the real token
        through = via.get("/v1/segments/summary", headers=INTERNAL)
        assert through.status_code == 401 and through.json()["error"]["fields"][0]["field"] == "header.X-Api-Key"
        via.get("/v1/coupons/templates", headers={**INTERNAL, **H})
    names = {k for k, _ in door.rec.seen[-1]["headers"]}
    assert "x-fugou-internal-token" not in names and "x-merchant-id" not in names
    assert ("x-api-key", KEY) in door.rec.seen[-1]["headers"]


# ------------------------------------------------------------------ what goes upstream, what comes back


def test_hop_by_hop_headers_stay_on_their_hop_and_forwarding_headers_are_added(door: Door) -> None:
    with door.via() as via:
        r = via.post(
            "/v1/coupons/templates",
            content=b'{"x": 1}',
            headers={
                **H,
                "Content-Type": "application/json",
                "Connection": "keep-alive, X-Hop-Secret",
                "X-Hop-Secret": "for this hop only",
                "Keep-Alive": "timeout=5",
                "TE": "trailers",
                "Trailer": "X-Checksum",
                "Proxy-Authorization": "Basic c2VjcmV0",
                "Upgrade": "websocket",
                "X-Forwarded-Host": "spoofed.example",
                "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "X-Request-Id": "req-123",
                "Cookie": "session=abc",
                "Authorization": "Bearer t",
                "User-Agent": "shop-backend/1.0",
                "Accept-Encoding": "identity",
            },
        )
    assert r.status_code == 200, r.text
    sent = door.rec.seen[-1]
    headers = dict(sent["headers"])
    assert len(headers) == len(sent["headers"]), f"a header arrived twice: {sent['headers']}"
    for hop in (
        "connection",
        "x-hop-secret",
        "keep-alive",
        "te",
        "trailer",
        "proxy-authorization",
        "upgrade",
        "transfer-encoding",
    ):
        assert hop not in headers, f"{hop} was forwarded"
    gateway_host = door.gateway.removeprefix("http://")
    assert headers["host"] == door.coupons.removeprefix("http://")  # the upstream's, not the gateway's
    assert headers["x-forwarded-for"] == "127.0.0.1"  # the caller
    assert headers["x-forwarded-host"] == gateway_host and headers["x-forwarded-proto"] == "http"
    assert headers["traceparent"] == "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    assert headers["x-request-id"] == "req-123" and r.headers["x-request-id"] == "req-123"
    assert (headers["cookie"], headers["authorization"], headers["content-type"]) == (
        "session=abc",
        "Bearer t",
        "application/json",
    )
    assert headers["content-length"] == "8" and sent["size"] == 8
    # The caller's, not what the gateway's own HTTP client would put there.
    assert (headers["user-agent"], headers["accept-encoding"]) == ("shop-backend/1.0", "identity")
    # Back: the upstream's headers, a repeated one still repeated, one Date and Server (the gateway's).
    assert r.headers["x-upstream"] == "coupons-stand-in"
    assert r.headers.get_list("set-cookie") == ["a=1; Path=/", "b=2; Path=/"]
    assert len(r.headers.get_list("date")) == 1 and len(r.headers.get_list("server")) == 1


def test_the_forwarded_chain_names_each_client_once(door: Door) -> None:
    with door.via() as via:
        # From a proxy the gateway's server trusts (loopback here): it took the client from the chain.
        via.get("/v1/coupons/templates", headers={**H, "X-Forwarded-For": "203.0.113.7, 198.51.100.2"})
        assert dict(door.rec.seen[-1]["headers"])["x-forwarded-for"] == "203.0.113.7, 198.51.100.2"
        via.get("/v1/coupons/templates", headers={**H, "X-Forwarded-Proto": "https"})
        assert dict(door.rec.seen[-1]["headers"])["x-forwarded-proto"] == "https"


def test_a_request_without_an_id_gets_one_the_upstream_and_the_caller_both_see(door: Door) -> None:
    with door.via() as via:
        r = via.get("/v1/coupons/templates", headers=H)
    sent = dict(door.rec.seen[-1]["headers"])
    assert len(sent["x-request-id"]) == 32 and r.headers["x-request-id"] == sent["x-request-id"]


def test_bodies_stream_both_ways_without_being_gathered_first(door: Door) -> None:
    rec = door.rec
    rec.first_chunk_in.clear()
    rec.release.clear()

    def upload() -> Iterator[bytes]:
        yield b"a" * 70_000
        # Only a gateway that passes the first part on before it has the rest gets past here.
        assert rec.first_chunk_in.wait(10), "the upstream did not get the first part before the last was sent"
        yield b"b" * 30_000

    with (
        door.via() as via,
        via.stream("POST", "/v1/coupons/templates", content=upload(), headers={**H, "X-Test-Mode": "stream"}) as r,
    ):
        assert r.status_code == 200
        parts = r.iter_raw()
        first = next(parts)  # arrives while the upstream still holds the second part back
        assert first == b"first part\n"
        rec.release.set()
        assert first + b"".join(parts) == b"first part\nsecond part\n"
    sent = rec.seen[-1]
    assert sent["size"] == 100_000
    assert sent["sha256"] == hashlib.sha256(b"a" * 70_000 + b"b" * 30_000).hexdigest()
    assert dict(sent["headers"]).get("transfer-encoding") == "chunked"  # the client sent no length


def test_a_path_with_dot_segments_is_not_forwarded(door: Door) -> None:
    # The gateway's HTTP client would resolve /v1/coupons/rules/.. to /v1/coupons/ before sending.
    before = len(door.rec.seen)
    conn = http.client.HTTPConnection(door.gateway.removeprefix("http://"), timeout=10)
    try:
        conn.request("GET", "/v1/coupons/rules/%2e%2e", headers=H)
        response = conn.getresponse()
        assert response.status == 404, response.read()
    finally:
        conn.close()
    assert len(door.rec.seen) == before


# ------------------------------------------------------------------ failures


def test_an_upstream_that_is_down_is_a_502_in_the_usual_error_shape(door: Door) -> None:
    with door.via() as via:
        r = via.get("/v1/loyalty/rules", headers=H)
        metrics = via.get("/metrics").text
    assert r.status_code == 502
    assert r.json() == {
        "error": {"code": "upstream_unavailable", "message": "loyalty is unavailable; try again shortly"}
    }
    assert 'fugou_proxy_requests_total{status="502",upstream="loyalty"}' in metrics
    assert 'fugou_proxy_requests_total{status="200",upstream="segmentation"}' in metrics


def test_an_upstream_that_does_not_answer_in_time_is_a_504(door: Door) -> None:
    with door.via() as via:
        r = via.get("/v1/coupons/templates", headers={**H, "X-Test-Mode": "slow"})
    assert r.status_code == 504
    assert r.json()["error"]["code"] == "upstream_timeout"


def test_the_routes_of_a_service_without_a_url_are_not_forwarded(door: Door) -> None:
    with door.via() as via:
        r = via.get("/v1/notifications/templates", headers=H)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_the_gateways_own_routes_win_and_upstream_operations_are_never_forwarded(door: Door) -> None:
    with door.via() as via:
        assert via.get("/v1/merchant", headers=H).json()["merchant_id"] == "demo"  # the gateway's own
        schema = via.get("/openapi.json").json()
        assert schema["info"]["title"] == "Fugou gateway"
        assert not any(p.startswith(("/v1/audiences", "/v1/coupons", "/v1/loyalty")) for p in schema["paths"])
        checks = via.get("/readyz").json()["checks"]  # the gateway's readiness, not segmentation's
        assert "gateway" in checks and "segmentation" not in checks
    table = {path for name in PROXIED for path, _ in route_table(SPECS[name].routers)}
    assert table and not table & NEVER_PROXIED
    # Even a service that served one of them on a router of its own would keep it to itself.
    router = APIRouter()
    for path in ("/metrics", "/readyz", "/v1/things"):
        router.add_api_route(path, lambda: None, methods=["GET"])
    assert route_table([router]) == [("/v1/things", frozenset({"GET"}))]


def paths_of(app: FastAPI) -> set[str]:
    paths: set[str] = set()

    def walk(routes: Any) -> None:
        for route in routes:
            if getattr(route, "path", None):
                paths.add(route.path)
            if (inner := getattr(route, "original_router", None)) is not None:  # an included router
                walk(inner.routes)

    walk(app.routes)
    return paths


def test_a_gateway_without_the_api_role_serves_neither_console_nor_proxy(tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path, segmentation_url="http://127.0.0.1:9")
    paths = paths_of(build_gateway_app(SPECS["gateway"], settings, {"consumer", "relay"}))
    assert "/healthz" in paths and "/console" not in paths and "/v1/segments/summary" not in paths
    paths = paths_of(build_gateway_app(SPECS["gateway"], settings, {"api"}))
    assert {"/console", "/v1/merchant", "/v1/segments/summary"} <= paths and "/v1/coupons/templates" not in paths
