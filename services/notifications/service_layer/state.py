"""What a running notifications service holds beyond its database: the channels built from the
merchants' provider settings (one pooled HTTP client for all of them), a token bucket per
provider (its rate limit), and the settings handlers need. One ``Notifier`` per runtime, found
through the engine (handlers get a session, not the runtime; several runtimes may live in one
process, as in tests)."""

from __future__ import annotations

import asyncio
import time
import weakref
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
from sqlalchemy import select

from services.notifications.adapters.channels import CHANNEL_KINDS, Channel, build_channel
from services.notifications.adapters.channels.console import ConsoleChannel
from services.notifications.adapters.tables import channel_configs
from services.notifications.domain.policy import TokenBucket
from shared.settings import Settings

# Default provider rate limits (messages/s, burst) when the merchant sets none.
DEFAULT_RATES: dict[str, tuple[int, int]] = {
    "wechat": (500, 1000),
    "aliyun": (1000, 2000),
    "generic": (5000, 10000),
    "smtp": (50, 100),
    "webhook": (500, 1000),
    "console": (1_000_000, 1_000_000),
}
CONFIG_TTL_S = 5.0


@dataclass
class Route:
    """A merchant's channel: its provider's client and rate limit (None: not configured and the
    service fails such messages)."""

    provider: str
    channel: Channel | None
    bucket: TokenBucket
    built_at: float
    stamp: Any


class Notifier:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # httpx slows per request as its pool grows; 64 connections carry loopback and real
        # provider latency alike.
        self.http = httpx.AsyncClient(
            timeout=10.0, limits=httpx.Limits(max_connections=64, max_keepalive_connections=64)
        )
        self.routes: dict[tuple[str, str], Route] = {}
        self.console = ConsoleChannel()
        self.console_bucket = TokenBucket(*DEFAULT_RATES["console"])
        self.wake = asyncio.Event()

    async def route(self, session: Any, merchant_id: str, kind: str) -> Route:
        """The channel for a merchant's channel kind, rebuilt when its settings changed (checked
        every few seconds)."""
        now = time.monotonic()
        cached = self.routes.get((merchant_id, kind))
        if cached is not None and now - cached.built_at < CONFIG_TTL_S:
            return cached
        c = channel_configs.c
        row = (
            await session.execute(
                select(c.provider, c.config, c.rate_per_s, c.burst, c.updated_at).where(
                    c.merchant_id == merchant_id, c.channel == kind
                )
            )
        ).first()
        stamp = (row.provider, row.config, row.rate_per_s, row.burst) if row else None
        if cached is not None and cached.stamp == stamp:
            cached.built_at = now
            return cached
        if cached is not None and cached.channel is not None and cached.channel is not self.console:
            await cached.channel.aclose()
        if row is None:
            channel: Channel | None = self.console if self.settings.notify_unconfigured == "console" else None
            route = Route("console" if channel else "none", channel, self.console_bucket, now, None)
        else:
            channel = build_channel(row.provider, orjson.loads(row.config), http=self.http)
            route = Route(row.provider, channel, TokenBucket(row.rate_per_s, row.burst), now, stamp)
        self.routes[(merchant_id, kind)] = route
        return route

    async def aclose(self) -> None:
        for r in self.routes.values():
            if r.channel is not None and r.channel is not self.console:
                await r.channel.aclose()
        self.routes.clear()
        await self.http.aclose()


def provider_kind(provider: str) -> str:
    return CHANNEL_KINDS[provider]


_NOTIFIERS: weakref.WeakKeyDictionary[Any, Notifier] = weakref.WeakKeyDictionary()
_PUBLIC_URLS: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def notifier_for(runtime: Any) -> Notifier:
    n = _NOTIFIERS.get(runtime.engine)
    if n is None:
        n = _NOTIFIERS[runtime.engine] = Notifier(runtime.settings)
        _PUBLIC_URLS[runtime.engine] = runtime.settings.public_url
    return n


async def release(runtime: Any) -> None:
    n = _NOTIFIERS.pop(runtime.engine, None) if runtime.engine is not None else None
    if n is not None:
        await n.aclose()


def public_url_of(session: Any) -> str:
    return _PUBLIC_URLS.get(session.bind) or Settings().public_url
