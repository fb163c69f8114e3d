"""HTTP plumbing shared by every service: the app factory (lifespan, health, metrics, docs),
error responses that name the field at fault, and the dependencies for sessions and auth."""

from __future__ import annotations

import gc
import hmac
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared import metrics
from shared.asyncapi import asyncapi_document
from shared.bus.base import Bus
from shared.events import json_schemas
from shared.runtime import ServiceRuntime
from shared.tenancy import Customer, Merchant
from shared.topics import all_topics

log = structlog.get_logger("fugou.http")


class ApiError(HTTPException):
    """A 4xx that says what is wrong and, where there is one, which field."""

    def __init__(self, status_code: int, code: str, message: str, field: str | None = None):
        super().__init__(status_code=status_code, detail=message)
        self.code = code
        self.message = message
        self.field = field


def _error(
    status: int,
    code: str,
    message: str,
    fields: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {"error": {"code": code, "message": message}}
    if fields:
        body["error"]["fields"] = fields
    return JSONResponse(status_code=status, content=body, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        fields = [{"field": exc.field, "message": exc.message}] if exc.field else None
        return _error(exc.status_code, exc.code, exc.message, fields, getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        fields = []
        for err in exc.errors():
            loc = [str(p) for p in err.get("loc", ())]
            fields.append({"field": ".".join(loc), "message": err.get("msg", "invalid")})
        first = fields[0] if fields else {"field": None, "message": "invalid request"}
        return _error(422, "validation_error", f"{first['field']}: {first['message']}", fields)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {
            400: "bad_request",
            401: "unauthorized",
            403: "forbidden",
            404: "not_found",
            405: "method_not_allowed",
            409: "conflict",
        }.get(exc.status_code, "error")
        # FastAPI's only own 400 is a body it could not decode.
        fields = [{"field": "body", "message": str(exc.detail)}] if exc.status_code == 400 else None
        return _error(exc.status_code, code, str(exc.detail), fields, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # A bug, not bad input: log it whole, answer in the same shape without internals.
        log.error("http.unhandled_error", method=request.method, path=request.url.path, error=repr(exc), exc_info=exc)
        return _error(500, "internal_error", "internal error; it has been logged")


# ---------------------------------------------------------------- dependencies

_api_key = APIKeyHeader(name="X-Api-Key", auto_error=False, description="The merchant's API key (admin calls).")
_bearer = HTTPBearer(auto_error=False, description="A customer token: a JWT signed with the merchant's secret.")


def runtime_of(request: Request, service: str) -> ServiceRuntime:
    return request.app.state.runtimes[service]


def session_dependency(service: str) -> Callable[[Request], AsyncIterator[AsyncSession]]:
    async def _session(request: Request) -> AsyncIterator[AsyncSession]:
        async with runtime_of(request, service).sessions() as session:
            yield session

    return _session


INTERNAL_TOKEN_HEADER = "X-Fugou-Internal-Token"
MERCHANT_HEADER = "X-Merchant-Id"


def merchant_dependency(service: str) -> Callable[..., Awaitable[Merchant]]:
    async def _merchant(request: Request, api_key: Annotated[str | None, Depends(_api_key)]) -> Merchant:
        internal = request.headers.get(INTERNAL_TOKEN_HEADER)
        if internal is not None:  # another Fugou service, on a merchant's behalf
            rt = runtime_of(request, service)
            if not hmac.compare_digest(internal.encode(), rt.settings.internal_token.get_secret_value().encode()):
                raise ApiError(401, "unauthorized", "wrong internal token", field=f"header.{INTERNAL_TOKEN_HEADER}")
            merchant = await rt.tenancy.by_id(request.headers.get(MERCHANT_HEADER, ""))
            if merchant is None or not merchant.active:
                raise ApiError(401, "unauthorized", "unknown merchant", field=f"header.{MERCHANT_HEADER}")
            return merchant
        if not api_key:
            raise ApiError(401, "unauthorized", "missing X-Api-Key header", field="header.X-Api-Key")
        merchant = await runtime_of(request, service).tenancy.by_api_key(api_key)
        if merchant is None:
            raise ApiError(401, "unauthorized", "unknown or revoked API key", field="header.X-Api-Key")
        return merchant

    return _merchant


def customer_dependency(service: str) -> Callable[..., Awaitable[Customer]]:
    async def _customer(
        request: Request, cred: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
    ) -> Customer:
        if cred is None:
            raise ApiError(
                401, "unauthorized", "missing customer token (Authorization: Bearer …)", field="header.Authorization"
            )
        customer = await runtime_of(request, service).tenancy.customer_from_token(cred.credentials)
        if customer is None:
            raise ApiError(401, "unauthorized", "invalid or expired customer token", field="header.Authorization")
        return customer

    return _customer


# ---------------------------------------------------------------- the app


class _Observe:
    """Counts and times every HTTP request by route template (until its last byte is sent).

    A plain ASGI middleware: Starlette's ``@app.middleware("http")`` (BaseHTTPMiddleware) runs
    each request in a task group through memory streams, which cost a quarter of a short
    endpoint's time (measured on GET /v1/customers/{id}/rfm)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # unless a response starts: an exception escaping the app becomes a 500

        async def observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observed)
        finally:
            path = getattr(scope.get("route"), "path", "unmatched")  # the router sets it in this scope
            metrics.HTTP_REQUESTS.labels(scope["method"], path, str(status)).inc()
            metrics.HTTP_SECONDS.labels(scope["method"], path).observe(time.perf_counter() - started)


def create_app(
    *,
    title: str,
    description: str,
    runtimes: Sequence[ServiceRuntime],
    bus: Bus,
    on_started: Callable[[FastAPI], Awaitable[None]] | None = None,
    start_kwargs: dict[str, Any] | None = None,
    version: str = "0.1.0",
    serve_api: bool = True,
) -> FastAPI:
    """One FastAPI app serving the routers of the given services (health, readiness, metrics and
    docs always; the services' own API unless serve_api is off). Engines, bus clients and
    background tasks are built in the lifespan, never at import time."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await bus.start()
        await bus.ensure_topics(all_topics())
        started: list[ServiceRuntime] = []
        try:
            for rt in runtimes:
                await rt.start(**(start_kwargs or {}))
                started.append(rt)
            if on_started is not None:
                await on_started(app)
            # What is built by now (modules, routes, engines) lives as long as the app: keep it out
            # of the collector's full passes, which otherwise walk it about once a second under load
            # and stall every request meanwhile (45-140 ms each on the 2-core VM: GET rfm's p99).
            gc.collect()
            gc.freeze()
            log.info("app.started", services=[rt.name for rt in runtimes])
            yield
        finally:
            gc.unfreeze()
            for rt in reversed(started):
                await rt.stop()
            await bus.stop()

    app = FastAPI(title=title, description=description, version=version, lifespan=lifespan)
    app.state.runtimes = {rt.name: rt for rt in runtimes}
    app.state.bus = bus
    install_error_handlers(app)
    for rt in runtimes if serve_api else ():
        for router in rt.spec.routers:
            app.include_router(router)

    app.add_middleware(_Observe)

    @app.get("/healthz", tags=["operations"], summary="Liveness: the process is up")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        tags=["operations"],
        summary="Readiness: databases and the bus answer",
        responses={503: {"description": "a dependency is down"}},
    )
    async def readyz() -> JSONResponse:
        checks: dict[str, Any] = {}
        try:
            await bus.ping()
            checks["bus"] = "ok"
        except Exception as exc:
            checks["bus"] = f"error: {type(exc).__name__}"
        for rt in runtimes:
            checks[rt.name] = await rt.check()
        ok = checks["bus"] == "ok" and all(v == "ok" for rt in runtimes for v in checks[rt.name].values())
        return JSONResponse(
            status_code=200 if ok else 503, content={"status": "ok" if ok else "unavailable", "checks": checks}
        )

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics", response_class=Response)
    async def prometheus() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/event-schemas", tags=["events"], summary="JSON Schema of every event type")
    async def event_schemas() -> dict[str, Any]:
        return json_schemas()

    @app.get("/asyncapi.json", tags=["events"], summary="AsyncAPI 3 document of every topic and payload")
    async def asyncapi() -> dict[str, Any]:
        return asyncapi_document()

    return app


# ---------------------------------------------------------------- per-service status


class ServiceStatus(BaseModel):
    service: str
    merchant_id: str
    events_applied: int = Field(description="Events of this merchant this service has applied (its inbox).")
    outbox_pending: int = Field(description="Events of this merchant raised here and not yet published.")
    last_applied_at: datetime | None


def status_router(service: str) -> APIRouter:
    """``GET /v1/<service>/status``: what one service holds for the calling merchant, so an
    integrator can see where an event got to without reading logs. Answering at all means the
    service's copy of the merchant (and of this key) is in place."""
    router = APIRouter(tags=[service])
    merchant_dep = merchant_dependency(service)

    @router.get(
        f"/v1/{service}/status",
        response_model=ServiceStatus,
        summary=f"What the {service} service holds for this merchant",
    )
    # (A default, not Annotated: annotations are strings here, and FastAPI could not resolve the local.)
    async def status(request: Request, merchant: Merchant = Depends(merchant_dep)) -> ServiceStatus:  # noqa: B008 - FastAPI's dependency default
        rt = runtime_of(request, service)
        inbox, outbox = rt.spec.tables.inbox, rt.spec.tables.outbox
        mid = merchant.merchant_id
        async with rt.sessions() as session:
            applied, last = (
                await session.execute(
                    select(func.count(), func.max(inbox.c.applied_at)).where(inbox.c.merchant_id == mid)
                )
            ).one()
            pending = (
                await session.execute(select(func.count()).select_from(outbox).where(outbox.c.merchant_id == mid))
            ).scalar_one()
        return ServiceStatus(
            service=service, merchant_id=mid, events_applied=applied, outbox_pending=pending, last_applied_at=last
        )

    return router
