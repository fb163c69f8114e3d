"""What every channel shares: the message and result types, the Channel protocol, and the small
HTTP helpers (classifying a response, Retry-After, bounded concurrency) the HTTP channels use.

A channel never raises for a provider or network problem: it answers one SendResult per message,
and the service decides what to do with "retry" (backoff) and "failed" (give up)."""

from __future__ import annotations

import asyncio
import email.utils
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal, Protocol, TypeVar

import httpx
from pydantic import BaseModel, ConfigDict, field_validator

from shared import clock
from shared.logging import log

T = TypeVar("T")
R = TypeVar("R")
ChannelKind = Literal["wechat", "sms", "email", "webhook", "console"]
Outcome = Literal["sent", "delivered", "retry", "failed"]


@dataclass(frozen=True, slots=True)
class Rendered:
    """What a template produced for one message; each channel reads the parts it understands."""

    subject: str | None = None
    text: str | None = None
    html: str | None = None
    fields: Mapping[str, str] = field(default_factory=dict)
    provider_template: str | None = None
    page: str | None = None
    unsubscribe_url: str | None = None


@dataclass(frozen=True, slots=True)
class Outgoing:
    message_id: str
    merchant_id: str
    customer_id: str | None
    recipient: str
    rendered: Rendered


@dataclass(frozen=True, slots=True)
class SendResult:
    outcome: Outcome
    provider_id: str | None = None
    code: str | None = None
    detail: str | None = None
    retry_after_s: float | None = None


@dataclass(frozen=True, slots=True)
class Receipt:
    provider_id: str | None
    message_id: str | None
    status: Literal["delivered", "failed"]
    code: str | None
    at: datetime | None


class Channel(Protocol):
    kind: ChannelKind
    provider: str
    max_batch: int

    async def send(self, batch: Sequence[Outgoing]) -> list[SendResult]: ...

    async def aclose(self) -> None: ...


class ChannelConfig(BaseModel):
    """Base of every provider's settings: unknown keys are an error (a typo must not be ignored)."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


def http_url(value: str) -> str:
    """A provider URL must be absolute http(s); trailing slashes are kept (Aliyun signs "/")."""
    url = httpx.URL(value)
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError("must be an absolute http:// or https:// URL")
    return value


class HttpChannelConfig(ChannelConfig):
    timeout: float = 10.0
    concurrency: int = 64

    @field_validator("timeout")
    @classmethod
    def _positive_timeout(cls, v: float) -> float:
        if not 0 < v <= 120:
            raise ValueError("must be between 0 and 120 seconds")
        return v

    @field_validator("concurrency")
    @classmethod
    def _sane_concurrency(cls, v: int) -> int:
        if not 1 <= v <= 1000:
            raise ValueError("must be between 1 and 1000")
        return v


def retry(detail: str, code: str | None = None, retry_after_s: float | None = None) -> SendResult:
    return SendResult("retry", code=code, detail=detail, retry_after_s=retry_after_s)


def failed(detail: str, code: str | None = None) -> SendResult:
    return SendResult("failed", code=code, detail=detail)


def network_retry(exc: Exception) -> SendResult:
    # Timeouts and refused/reset connections say nothing about the message itself: try again.
    return retry(f"{type(exc).__name__}: {exc}".rstrip(": "), code="network")


def retry_after(headers: httpx.Headers) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date), if any."""
    raw = headers.get("retry-after")
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - clock.now()).total_seconds())


def http_status_result(response: httpx.Response) -> SendResult | None:
    """The outcome a bare HTTP status decides on its own, or None when the body must be read.

    429 and 5xx are the provider saying "not now"; 408 is a timeout on its side. Other 4xx mean the
    request itself is wrong and sending it again cannot help."""
    status = response.status_code
    if status == 429 or status == 408 or status >= 500:
        return retry(f"HTTP {status}", code=str(status), retry_after_s=retry_after(response.headers))
    if status >= 400:
        return failed(f"HTTP {status}: {response.text[:200]}", code=str(status))
    return None


def make_http_client(timeout: float, concurrency: int) -> httpx.AsyncClient:
    """The pooled client a channel makes when the service did not hand it one."""
    return httpx.AsyncClient(
        timeout=timeout,
        limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
    )


async def bounded_gather(items: Sequence[T], run: Callable[[T], Awaitable[R]], limit: int) -> list[R]:
    """run(item) for every item, at most `limit` at a time; results in input order."""
    if len(items) <= limit:
        return list(await asyncio.gather(*(run(i) for i in items)))
    gate = asyncio.Semaphore(limit)

    async def gated(item: T) -> R:
        async with gate:
            return await run(item)

    return list(await asyncio.gather(*(gated(i) for i in items)))


async def guarded(call: Awaitable[R], on_error: Callable[[SendResult], R]) -> R:
    """Await a provider call; a network error or a bug becomes a "retry" result instead of an
    exception, so one message's trouble never loses the results of the rest of the batch (the
    service caps attempts, so a bug cannot retry forever; it is logged loudly)."""
    try:
        return await call
    except (TimeoutError, httpx.HTTPError, OSError) as exc:
        return on_error(network_retry(exc))
    except Exception as exc:
        log.exception("notifications.channel.unexpected_error")
        return on_error(retry(f"internal error: {type(exc).__name__}", code="internal"))


def _same(result: SendResult) -> SendResult:
    return result


async def send_each(items: Sequence[T], send_one: Callable[[T], Awaitable[SendResult]], limit: int) -> list[SendResult]:
    """send_one for every message, bounded and guarded (see `guarded`); results in input order."""
    return await bounded_gather(items, lambda item: guarded(send_one(item), _same), limit)


class HttpOwner:
    """Holds the httpx client: borrowed from the service (never closed here) or owned (closed)."""

    def __init__(self, http: httpx.AsyncClient | None, timeout: float, concurrency: int) -> None:
        self._owns_http = http is None
        self.http = http if http is not None else make_http_client(timeout, concurrency)
        # Per-request timeout, so a shared client's default does not decide a provider's patience.
        self.timeout = httpx.Timeout(timeout)

    async def aclose(self) -> None:
        if self._owns_http:
            await self.http.aclose()
