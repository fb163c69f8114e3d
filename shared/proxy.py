"""A streaming reverse proxy for an app that fronts other services: each forwarded route is a
starlette ``Route`` with the upstream's own path template and methods (so an app's own routes,
registered first, always win), and the request goes to the upstream's base URL unchanged but for
the headers a hop must not pass on.

- Bodies stream both ways (a CSV export is never held in memory); one pooled ``httpx.AsyncClient``
  per app, opened and closed by the app's lifespan.
- Hop-by-hop headers (RFC 9110 §7.6.1: Connection and what it names, Keep-Alive, Proxy-*, TE,
  Trailer, Transfer-Encoding, Upgrade) and Host are not forwarded; neither are the internal
  service token and its merchant header, so a caller cannot speak to a service as another
  service would. X-Forwarded-For/-Proto/-Host are added; X-Request-Id is kept (or made, and
  returned), as are trace headers.
- An upstream that cannot be reached is a 502 ``upstream_unavailable``; one that does not answer
  in time a 504 ``upstream_timeout`` (both in the usual error body)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Collection, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any

import httpx
import structlog
from fastapi import APIRouter, FastAPI
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from shared import metrics
from shared.web import INTERNAL_TOKEN_HEADER, MERCHANT_HEADER, ApiError

log = structlog.get_logger("fugou.proxy")

# RFC 9110 §7.6.1, plus Proxy-Connection (obsolete, still sent by some clients).
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Not passed upstream: Host is the upstream's own; Expect was answered by this server (it read
# the body); the internal token (and the merchant it speaks for) is only for service-to-service calls.
NOT_FORWARDED = HOP_BY_HOP | {"host", "expect", INTERNAL_TOKEN_HEADER.lower(), MERCHANT_HEADER.lower()}
# Not passed back: the server in front adds its own Date and Server.
NOT_RETURNED = HOP_BY_HOP | {"date", "server"}
# An upstream's operations endpoints and docs are its own business, never forwarded.
NEVER_PROXIED = frozenset(
    {"/metrics", "/healthz", "/readyz", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"}
)
REQUEST_ID = "x-request-id"

DEFAULT_TIMEOUT = httpx.Timeout(connect=5.0, read=60.0, write=60.0, pool=5.0)
DEFAULT_LIMITS = httpx.Limits(max_connections=400, max_keepalive_connections=100, keepalive_expiry=30.0)


@dataclass(frozen=True)
class Upstream:
    """A service behind the proxy: its name (a metrics label), base URL and routes."""

    name: str
    base_url: str
    routes: Sequence[tuple[str, frozenset[str]]] = ()

    @property
    def url(self) -> httpx.URL:
        return httpx.URL(self.base_url.rstrip("/"))


def route_table(routers: Iterable[APIRouter]) -> list[tuple[str, frozenset[str]]]:
    """(path template, methods) of every HTTP route of the routers, in their order: what the
    service itself serves, read from its code, so the proxy cannot drift from it."""
    table: list[tuple[str, frozenset[str]]] = []
    for router in routers:
        for route in router.routes:
            if not isinstance(route, Route) or not route.methods or route.path in NEVER_PROXIED:
                continue  # a websocket or a mount has no (path, methods) to match
            table.append((route.path, frozenset(route.methods)))
    return table


def _connection_tokens(headers: Iterable[tuple[bytes, bytes]]) -> set[str]:
    """Header names a Connection header declares hop-by-hop for this hop."""
    return {
        token.strip().lower()
        for name, value in headers
        if name.lower() == b"connection"
        for token in value.decode("latin-1").split(",")
        if token.strip()
    }


def _filtered(headers: Sequence[tuple[bytes, bytes]], dropped: Collection[str]) -> list[tuple[bytes, bytes]]:
    also = _connection_tokens(headers)
    return [(k, v) for k, v in headers if (name := k.decode("latin-1").lower()) not in dropped and name not in also]


def _has_dot_segment(path: str) -> bool:
    # The client library would resolve /a/../b before sending: the upstream would see another
    # path than the one matched here. No route of ours needs one, so none passes.
    return any(segment in (".", "..") for segment in path.split("/"))


class _Relayed(StreamingResponse):
    """The upstream's response streamed to the client; the upstream connection goes back to the
    pool however the relay ends (done, client gone, upstream broke off)."""

    def __init__(self, upstream: httpx.Response, name: str, headers: list[tuple[bytes, bytes]]):
        super().__init__(self._body(upstream, name), status_code=upstream.status_code)
        self.raw_headers = headers  # a list: repeated headers (Set-Cookie) stay repeated
        self._upstream = upstream

    @staticmethod
    async def _body(upstream: httpx.Response, name: str) -> AsyncIterator[bytes]:
        try:
            async for chunk in upstream.aiter_raw():  # as sent: a gzip body stays gzip
                yield chunk
        except httpx.HTTPError as exc:
            # Too late for a 502: the status is sent. Raising aborts the connection, so the
            # client sees a cut body instead of a short one that looks complete.
            log.warning("proxy.upstream_broke_off", upstream=name, error=repr(exc))
            raise
        finally:
            await upstream.aclose()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._upstream.aclose()


class ReverseProxy:
    """Forwards requests to upstreams over one pooled client (``async with proxy:`` opens it)."""

    def __init__(
        self,
        upstreams: Sequence[Upstream],
        *,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        limits: httpx.Limits = DEFAULT_LIMITS,
    ):
        self.upstreams = list(upstreams)
        self.timeout = timeout
        self.limits = limits
        self._client: httpx.AsyncClient | None = None

    async def __aenter__(self) -> ReverseProxy:
        # No environment proxies (the upstreams are our own services), no redirects followed (the
        # client gets them), and no cookie jar: cookies belong to the callers, not to this client.
        self._client = httpx.AsyncClient(
            timeout=self.timeout,
            limits=self.limits,
            trust_env=False,
            follow_redirects=False,
            cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def routes(self) -> list[BaseRoute]:
        """One route per (upstream, path template), in order; kept out of the OpenAPI schema."""
        out: list[BaseRoute] = []
        for upstream in self.upstreams:
            for path, methods in upstream.routes:
                out.append(
                    Route(
                        path,
                        self._endpoint(upstream),
                        methods=sorted(methods),
                        include_in_schema=False,
                        name=f"proxy:{upstream.name}:{path}",
                    )
                )
        return out

    def _endpoint(self, upstream: Upstream) -> Any:
        async def forward(request: Request) -> Response:
            return await self.forward(request, upstream)

        return forward

    async def forward(self, request: Request, upstream: Upstream) -> Response:
        if self._client is None:
            raise RuntimeError("the proxy's client is not open (the app's lifespan did not run)")
        scope = request.scope
        if _has_dot_segment(scope["path"]):
            raise ApiError(404, "not_found", "Not Found")
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        query: bytes = scope.get("query_string", b"")
        base = upstream.url
        url = base.copy_with(raw_path=base.raw_path.rstrip(b"/") + raw_path + (b"?" + query if query else b""))

        raw = list(request.headers.raw)
        headers = _filtered(raw, NOT_FORWARDED)
        request_id = request.headers.get(REQUEST_ID)
        if not request_id:
            request_id = uuid.uuid4().hex
            headers.append((REQUEST_ID.encode(), request_id.encode()))
        forwarded_for = [v for k, v in headers if k.lower() == b"x-forwarded-for"]
        headers = [
            (k, v)
            for k, v in headers
            if k.lower() not in (b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host")
        ]
        chain = [hop.strip() for value in forwarded_for for hop in value.decode("latin-1").split(",") if hop.strip()]
        client = request.client.host if request.client else "unknown"
        # A server that trusts the proxy in front of it (uvicorn's --forwarded-allow-ips) has already
        # taken the client from the end of the chain: it is not added twice.
        if not chain or chain[-1] != client:
            chain.append(client)
        headers.append((b"x-forwarded-for", ", ".join(chain).encode("latin-1")))
        headers.append((b"x-forwarded-proto", request.url.scheme.encode()))
        if host := request.headers.get("host"):
            headers.append((b"x-forwarded-host", host.encode("latin-1")))

        # A body is streamed as it arrives, with the client's Content-Length when it gave one
        # (chunked otherwise); a request without one is sent without one.
        has_body = request.headers.get("content-length", "0") != "0" or "transfer-encoding" in request.headers
        outbound = httpx.Request(request.method, url, headers=headers, content=request.stream() if has_body else None)
        try:
            # Built here, not with client.build_request: that would add the client's own Accept,
            # Accept-Encoding and User-Agent to what the caller sent.
            response = await self._client.send(outbound, stream=True)
        except httpx.PoolTimeout as exc:
            self._failed(upstream, request, 503, exc)
            raise ApiError(
                503, "upstream_busy", f"too many requests in flight to {upstream.name}; try again shortly"
            ) from exc
        except httpx.TimeoutException as exc:
            self._failed(upstream, request, 504, exc)
            raise ApiError(504, "upstream_timeout", f"{upstream.name} did not answer in time") from exc
        except httpx.HTTPError as exc:
            self._failed(upstream, request, 502, exc)
            raise ApiError(502, "upstream_unavailable", f"{upstream.name} is unavailable; try again shortly") from exc
        except ClientDisconnect:
            return Response(status_code=400)  # the caller left mid-upload: nobody to answer
        metrics.PROXY_REQUESTS.labels(upstream.name, str(response.status_code)).inc()
        back = _filtered(response.headers.raw, NOT_RETURNED)
        if not any(k.lower() == REQUEST_ID.encode() for k, _ in back):
            back.append((REQUEST_ID.encode(), request_id.encode()))
        return _Relayed(response, upstream.name, back)

    @staticmethod
    def _failed(upstream: Upstream, request: Request, status: int, exc: Exception) -> None:
        metrics.PROXY_REQUESTS.labels(upstream.name, str(status)).inc()
        log.warning(
            "proxy.upstream_failed",
            upstream=upstream.name,
            method=request.method,
            path=request.url.path,
            status=status,
            error=repr(exc),
        )


def install_proxy(
    app: FastAPI,
    upstreams: Sequence[Upstream],
    *,
    timeout: httpx.Timeout = DEFAULT_TIMEOUT,
    limits: httpx.Limits = DEFAULT_LIMITS,
) -> ReverseProxy:
    """Forward the upstreams' routes from ``app``, after every route it already has (which win),
    with the client opened and closed by the app's lifespan."""
    proxy = ReverseProxy(upstreams, timeout=timeout, limits=limits)
    app.router.routes.extend(proxy.routes())
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app_: Any) -> AsyncIterator[Any]:
        async with inner(app_) as state, proxy:
            yield state

    app.router.lifespan_context = lifespan
    app.state.proxy = proxy
    return proxy
