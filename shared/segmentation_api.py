"""Segmentation's audience API, as the other services call it (coupons' rules, notifications'
campaigns): whole audiences streamed as CSV, membership of a handful of customers, filters
checked by segmentation itself.

The base URL is ``settings.segmentation_url``; when it is empty (embedded mode) the client calls
the process's own ASGI app (``ServiceRuntime.local_api``) in memory. Calls carry the internal
service token (``X-Fugou-Internal-Token`` + ``X-Merchant-Id``). A segmentation that cannot be
reached raises ``SegmentationUnavailable``, a ``ConnectionError``: callers retry (a consumer
retries its batch, nothing is dead-lettered because segmentation is down) and APIs answer 503."""

from __future__ import annotations

import csv
import weakref
from collections.abc import AsyncGenerator, Iterable, Mapping
from typing import Any

import httpx

from shared.web import INTERNAL_TOKEN_HEADER, MERCHANT_HEADER

MEMBERS_PER_CHECK = 1000  # segmentation's page limit: customer_ids per membership query
LOCAL_BASE_URL = "http://segmentation.in-process"


class SegmentationUnavailable(ConnectionError):
    """Segmentation could not answer (down, unreachable, misconfigured): try again later."""


class AudienceRejected(ValueError):
    """The audience is not one segmentation (or this module) accepts: ``field`` says where."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


class AudienceNotFound(LookupError):
    """No saved audience with that id for the merchant (deleted, or never there)."""


class SegmentationClient:
    """Segmentation's audience API on a merchant's behalf (one pooled httpx client)."""

    def __init__(self, http: httpx.AsyncClient, internal_token: str):
        self.http = http
        self.token = internal_token

    @classmethod
    def build(
        cls, base_url: str, internal_token: str, local_app: Any = None, timeout: float = 30.0
    ) -> SegmentationClient:
        if base_url:
            http = httpx.AsyncClient(base_url=base_url.rstrip("/"), timeout=timeout)
        elif local_app is not None:
            http = httpx.AsyncClient(
                transport=httpx.ASGITransport(app=local_app), base_url=LOCAL_BASE_URL, timeout=timeout
            )
        else:
            http = httpx.AsyncClient(transport=_Unconfigured(), base_url=LOCAL_BASE_URL)
        return cls(http, internal_token)

    async def aclose(self) -> None:
        await self.http.aclose()

    def _headers(self, merchant_id: str) -> dict[str, str]:
        return {INTERNAL_TOKEN_HEADER: self.token, MERCHANT_HEADER: merchant_id}

    async def _call(self, method: str, path: str, merchant_id: str, **kw: Any) -> httpx.Response:
        try:
            r = await self.http.request(method, path, headers=self._headers(merchant_id), **kw)
        except httpx.HTTPError as e:
            raise SegmentationUnavailable(f"segmentation {method} {path}: {e!r}") from e
        return _checked(r, method, path)

    async def saved_filter(self, merchant_id: str, audience_id: str) -> dict[str, Any]:
        r = await self._call("GET", f"/v1/audiences/{audience_id}", merchant_id)
        if r.status_code == 404:
            raise AudienceNotFound(f"no saved audience {audience_id!r}")
        return r.json()["filter"]

    async def check_filter(self, merchant_id: str, f: Mapping[str, Any]) -> None:
        """Segmentation's own validation of a filter (raises AudienceRejected with its reason);
        among no customers, so that checking costs segmentation nothing at any audience size."""
        r = await self._call(
            "POST", "/v1/audiences/query", merchant_id, json={"filter": f, "customer_ids": [], "limit": 1}
        )
        if r.status_code == 422:
            raise _rejected(r)

    async def members_among(self, merchant_id: str, f: Mapping[str, Any], customer_ids: Iterable[str]) -> set[str]:
        """Which of these customers the filter selects, as of now."""
        ids = sorted(set(customer_ids))
        found: set[str] = set()
        for i in range(0, len(ids), MEMBERS_PER_CHECK):
            part = ids[i : i + MEMBERS_PER_CHECK]
            r = await self._call(
                "POST",
                "/v1/audiences/query",
                merchant_id,
                json={"filter": f, "customer_ids": part, "limit": MEMBERS_PER_CHECK},
            )
            if r.status_code == 422:
                raise _rejected(r)
            found.update(c["customer_id"] for c in r.json()["customers"])
        return found

    async def members(
        self, merchant_id: str, audience: Mapping[str, Any], chunk: int
    ) -> AsyncGenerator[list[str], None]:
        """Every member of a saved audience or a filter, in chunks, streamed (flat memory)."""
        if "audience_id" in audience:
            request = self.http.build_request(
                "GET", f"/v1/audiences/{audience['audience_id']}/members.csv", headers=self._headers(merchant_id)
            )
        else:
            request = self.http.build_request(
                "POST",
                "/v1/audiences/query.csv",
                headers=self._headers(merchant_id),
                json={"filter": audience["filter"]},
            )
        try:
            r = await self.http.send(request, stream=True)
        except httpx.HTTPError as e:
            raise SegmentationUnavailable(f"segmentation {request.method} {request.url.path}: {e!r}") from e
        try:
            if r.status_code == 404:
                raise AudienceNotFound(f"no saved audience {audience.get('audience_id')!r}")
            if r.status_code == 422:
                await r.aread()
                raise _rejected(r)
            if r.status_code != 200:
                await r.aread()
                _checked(r, request.method, request.url.path)
            batch: list[str] = []
            header = True
            try:
                async for line in r.aiter_lines():
                    if header:
                        header = False
                        continue
                    if not line:
                        continue
                    batch.append(next(csv.reader([line]))[0])
                    if len(batch) >= chunk:
                        yield batch
                        batch = []
            except httpx.HTTPError as e:
                raise SegmentationUnavailable(f"segmentation stream broke: {e!r}") from e
            if batch:
                yield batch
        finally:
            await r.aclose()


def _checked(r: httpx.Response, method: str, path: str) -> httpx.Response:
    if r.status_code >= 500 or r.status_code in (401, 403, 429):
        raise SegmentationUnavailable(f"segmentation {method} {path} answered {r.status_code}: {r.text[:300]}")
    if r.status_code >= 400 and r.status_code not in (404, 422):
        raise SegmentationUnavailable(f"segmentation {method} {path} answered {r.status_code}: {r.text[:300]}")
    return r


def _rejected(r: httpx.Response) -> AudienceRejected:
    """Segmentation's 422 as the field of the rule at fault (body.filter.x → audience.filter.x)."""
    try:
        err = r.json()["error"]
        first = (err.get("fields") or [{"field": "body.filter", "message": err["message"]}])[0]
        field = str(first["field"])
        if field.startswith("body.filter"):
            field = "audience.filter" + field[len("body.filter") :]
        return AudienceRejected(field, str(first["message"]))
    except (ValueError, KeyError, TypeError):
        return AudienceRejected("audience.filter", r.text[:300])


class _Unconfigured(httpx.AsyncBaseTransport):
    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(
            "FUGOU_SEGMENTATION_URL is not set and segmentation does not run in this process", request=request
        )


# ---------------------------------------------------------------- one client per running service

# Handlers get a session, not the runtime: the client of each running service runtime is found
# through the session's engine (several runtimes may live in one process, as in tests).
_CLIENTS: weakref.WeakKeyDictionary[Any, SegmentationClient] = weakref.WeakKeyDictionary()


def client_for(runtime: Any) -> SegmentationClient:
    """The runtime's segmentation client, built on first use."""
    client = _CLIENTS.get(runtime.engine)
    if client is None:
        client = SegmentationClient.build(
            runtime.settings.segmentation_url,
            runtime.settings.internal_token.get_secret_value(),
            getattr(runtime, "local_api", None),
        )
        _CLIENTS[runtime.engine] = client
    return client


def client_of(session: Any) -> SegmentationClient | None:
    """The client of the runtime whose engine this session is bound to, if it has one."""
    return _CLIENTS.get(session.bind)


async def release(runtime: Any) -> None:
    client = _CLIENTS.pop(runtime.engine, None) if runtime.engine is not None else None
    if client is not None:
        await client.aclose()


def register(engine: Any, client: SegmentationClient) -> None:
    """For tools and tests that run a service's handlers on an engine of their own."""
    _CLIENTS[engine] = client
