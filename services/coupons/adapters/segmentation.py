"""Audiences as coupons resolves them: here when it can, through segmentation's API when it must.

A rule's audience is a saved segmentation audience (``{"audience_id": ...}``), an inline filter
in segmentation's language (``{"filter": {...}}``), or none.

- **Local**: a filter that reads only ``tier``, ``cell``, ``rfm_class`` and ``tag`` (under any
  and / or / not) is evaluated on ``customer_segments``, coupons's replica of segment.changed:
  no network, set-based, as fresh as the last segment event applied.
- **Remote**: anything else (R/F/M ranges, dates, regions, categories, behaviour) and saved
  audiences whose filter is not local go to segmentation over HTTP with the internal token
  (``X-Fugou-Internal-Token`` + ``X-Merchant-Id``): the members of a whole audience are streamed
  as CSV (``/v1/audiences/query.csv``, ``/v1/audiences/{id}/members.csv``); whether a handful of
  customers belong (event triggers) is one ``POST /v1/audiences/query`` with ``customer_ids``
  per 1,000 candidates, so a batch costs a request per rule, not per event.

The base URL is ``settings.segmentation_url``; when it is empty (embedded mode) the client calls
the process's own ASGI app (``ServiceRuntime.local_api``) in memory. A segmentation that cannot
be reached raises ``SegmentationUnavailable``, a ``ConnectionError``: the consumer retries the
batch (nothing is dead-lettered because segmentation is down) and the API answers 503."""

from __future__ import annotations

import csv
import re
import weakref
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
from sqlalchemy import Table, and_, func, not_, or_
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import ColumnElement, FunctionElement
from sqlalchemy.types import Boolean

from services.coupons.domain.rules import RFM_CLASSES
from shared.web import INTERNAL_TOKEN_HEADER, MERCHANT_HEADER

LOCAL_KINDS = frozenset({"tier", "cell", "rfm_class", "tag"})
TIERS = frozenset({"S", "A", "B", "C"})
_CELL = re.compile(r"^[1-5]-[1-5]-[1-5]$")
MAX_DEPTH = 12
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


# ---------------------------------------------------------------- the filter, read here


def _single(f: object, at: str) -> tuple[str, Any]:
    if not isinstance(f, Mapping) or len(f) != 1:
        raise AudienceRejected(at, "a condition is an object with exactly one key")
    return next(iter(f.items()))


def is_local(f: object) -> bool:
    """Whether the filter reads only what customer_segments holds (tier, cell, class, tags)."""
    if not isinstance(f, Mapping) or len(f) != 1:
        return False
    kind, value = next(iter(f.items()))
    if kind in ("and", "or"):
        return isinstance(value, list) and bool(value) and all(is_local(x) for x in value)
    if kind == "not":
        return is_local(value)
    return kind in LOCAL_KINDS


def needs_segment(f: Mapping[str, Any]) -> bool:
    """Whether the filter can hold only of a customer with a segment: then its members are all
    in customer_segments and the replica alone can list them (a NOT can hold of anyone)."""
    kind, value = next(iter(f.items()))
    if kind == "and":
        return any(needs_segment(x) for x in value)
    if kind == "or":
        return all(needs_segment(x) for x in value)
    return kind in LOCAL_KINDS


def check_local(f: object, at: str = "audience.filter", level: int = 1) -> None:
    """Validate a local filter as segmentation would, naming the field at fault."""
    if level > MAX_DEPTH:
        raise AudienceRejected(at, f"filter nested deeper than {MAX_DEPTH} levels")
    kind, value = _single(f, at)
    where = f"{at}.{kind}"
    if kind in ("and", "or"):
        if not isinstance(value, list) or not value:
            raise AudienceRejected(where, f"{kind} takes a non-empty list of conditions")
        for i, x in enumerate(value):
            check_local(x, f"{where}.{i}", level + 1)
        return
    if kind == "not":
        check_local(value, where, level + 1)
        return
    if kind not in LOCAL_KINDS:
        raise AudienceRejected(where, f"{kind!r} is not evaluated locally")
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise AudienceRejected(where, f"{kind} takes a non-empty list of strings")
    for v in value:
        if kind == "tier" and v not in TIERS:
            raise AudienceRejected(where, f"unknown tier {v!r}: one of S, A, B, C")
        if kind == "cell" and not _CELL.match(v):
            raise AudienceRejected(where, f"a cell is R-F-M levels like '3-2-1', got {v!r}")
        if kind == "rfm_class" and v not in RFM_CLASSES:
            raise AudienceRejected(where, f"unknown rfm_class {v!r}: one of {', '.join(sorted(RFM_CLASSES))}")
        if kind == "tag" and not 1 <= len(v) <= 160:
            raise AudienceRejected(where, "a tag is 1..160 characters")


@dataclass(frozen=True, slots=True)
class Segment:
    """A customer's segment as the replica holds it (all empty when the customer has none)."""

    tier: str | None = None
    cell: str | None = None
    rfm_class: str | None = None
    tags: frozenset[str] = field(default_factory=frozenset)


NO_SEGMENT = Segment()


def matches(f: Mapping[str, Any], s: Segment) -> bool:
    """A local filter on one customer's segment (the same semantics as ``where``)."""
    kind, value = next(iter(f.items()))
    if kind == "and":
        return all(matches(x, s) for x in value)
    if kind == "or":
        return any(matches(x, s) for x in value)
    if kind == "not":
        return not matches(value, s)
    if kind == "tag":
        return not s.tags.isdisjoint(value)
    return getattr(s, kind) in value


class _contains_text(FunctionElement[bool]):  # noqa: N801 - reads as the SQL it stands for
    """Whether ``haystack`` contains ``needle`` verbatim (no LIKE wildcards, case-sensitive)."""

    inherit_cache = True
    type = Boolean()
    name = "contains_text"


@compiles(_contains_text)
def _contains_text_sqlite(element: _contains_text, compiler: Any, **kw: Any) -> str:
    haystack, needle = list(element.clauses)
    return f"(instr({compiler.process(haystack, **kw)}, {compiler.process(needle, **kw)}) > 0)"


@compiles(_contains_text, "postgresql")
def _contains_text_postgresql(element: _contains_text, compiler: Any, **kw: Any) -> str:
    haystack, needle = list(element.clauses)
    return f"(strpos({compiler.process(haystack, **kw)}, {compiler.process(needle, **kw)}) > 0)"


def where(f: Mapping[str, Any], t: Table, negated: bool = False) -> ColumnElement[bool]:
    """A local filter as a predicate on customer_segments rows. Under a NOT, columns are
    coalesced so that it means "not in the set" (a customer without a tier is not in tier B);
    elsewhere a NULL acts as false and the bare column is compared. Tags are a JSON array,
    matched on each tag's exact JSON string."""
    kind, value = next(iter(f.items()))
    if kind == "and":
        return and_(*[where(x, t, negated) for x in value])
    if kind == "or":
        return or_(*[where(x, t, negated) for x in value])
    if kind == "not":
        return not_(where(value, t, not negated))
    if kind == "tag":
        return or_(*[_contains_text(t.c.tags, orjson.dumps(tag).decode()) for tag in value])
    col = {"tier": t.c.tier, "cell": t.c.cell, "rfm_class": t.c.rfm_class}[kind]
    return (func.coalesce(col, "") if negated else col).in_(list(value))


def segment_of(row: Any) -> Segment:
    return Segment(row.tier, row.cell, row.rfm_class, frozenset(orjson.loads(row.tags or "[]")))


# ---------------------------------------------------------------- segmentation's API


class SegmentationClient:
    """Segmentation's audience API on a merchant's behalf (one pooled httpx client)."""

    def __init__(self, http: httpx.AsyncClient, internal_token: str):
        self.http = http
        self.token = internal_token

    @classmethod
    def build(cls, base_url: str, internal_token: str, local_app: Any = None,
              timeout: float = 30.0) -> SegmentationClient:
        if base_url:
            http = httpx.AsyncClient(base_url=base_url.rstrip("/"), timeout=timeout)
        elif local_app is not None:
            http = httpx.AsyncClient(transport=httpx.ASGITransport(app=local_app), base_url=LOCAL_BASE_URL,
                                     timeout=timeout)
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
        return r.json()["filter"]  # type: ignore[no-any-return]

    async def check_filter(self, merchant_id: str, f: Mapping[str, Any]) -> None:
        """Segmentation's own validation of a filter (raises AudienceRejected with its reason);
        among no customers, so that checking costs segmentation nothing at any audience size."""
        r = await self._call("POST", "/v1/audiences/query", merchant_id,
                             json={"filter": f, "customer_ids": [], "limit": 1})
        if r.status_code == 422:
            raise _rejected(r)

    async def members_among(self, merchant_id: str, f: Mapping[str, Any], customer_ids: Iterable[str]) -> set[str]:
        """Which of these customers the filter selects, as of now."""
        ids = sorted(set(customer_ids))
        found: set[str] = set()
        for i in range(0, len(ids), MEMBERS_PER_CHECK):
            part = ids[i:i + MEMBERS_PER_CHECK]
            r = await self._call("POST", "/v1/audiences/query", merchant_id,
                                 json={"filter": f, "customer_ids": part, "limit": MEMBERS_PER_CHECK})
            if r.status_code == 422:
                raise _rejected(r)
            found.update(c["customer_id"] for c in r.json()["customers"])
        return found

    async def members(self, merchant_id: str, audience: Mapping[str, Any], chunk: int) -> AsyncIterator[list[str]]:
        """Every member of a saved audience or a filter, in chunks, streamed (flat memory)."""
        if "audience_id" in audience:
            request = self.http.build_request("GET", f"/v1/audiences/{audience['audience_id']}/members.csv",
                                              headers=self._headers(merchant_id))
        else:
            request = self.http.build_request("POST", "/v1/audiences/query.csv", headers=self._headers(merchant_id),
                                              json={"filter": audience["filter"]})
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
            field = "audience.filter" + field[len("body.filter"):]
        return AudienceRejected(field, str(first["message"]))
    except (ValueError, KeyError, TypeError):
        return AudienceRejected("audience.filter", r.text[:300])


class _Unconfigured(httpx.AsyncBaseTransport):
    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("FUGOU_SEGMENTATION_URL is not set and segmentation does not run in this process",
                                 request=request)


# ---------------------------------------------------------------- one client per running service

# Handlers get a session, not the runtime: the client of each running coupons runtime is found
# through the session's engine (several runtimes may live in one process, as in tests).
_CLIENTS: weakref.WeakKeyDictionary[Any, SegmentationClient] = weakref.WeakKeyDictionary()


def client_for(runtime: Any) -> SegmentationClient:
    """The coupons runtime's segmentation client, built on first use."""
    client = _CLIENTS.get(runtime.engine)
    if client is None:
        client = SegmentationClient.build(runtime.settings.segmentation_url,
                                          runtime.settings.internal_token.get_secret_value(),
                                          getattr(runtime, "local_api", None))
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
    """For tools and tests that run coupons's handlers on an engine of their own."""
    _CLIENTS[engine] = client

