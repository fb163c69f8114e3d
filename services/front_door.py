"""The gateway process of the distributed mode as the system's single front door: besides the
gateway's own API it serves the merchant console at /console and forwards every route of the
other services to that service (FUGOU_<SERVICE>_URL), so a browser or a mini-program needs one
origin, as with `make run`.

The forwarded routes are the services' own routers (services.registry), read at start: same path
templates, same methods, in the order the embedded app includes them, after the gateway's own
routes, which always win. A service whose URL is not set is not forwarded (its paths are 404s).

Like services/embedded.py this is a composition that names every service, so it lives beside it
rather than in services/gateway (which imports no other service): `python -m services.gateway run`
builds its app here (services/gateway/__main__.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import httpx
from fastapi import FastAPI

import shared.cli as cli
from services.console import mount_console
from services.registry import SPECS
from shared.proxy import DEFAULT_TIMEOUT, ReverseProxy, Upstream, install_proxy, route_table
from shared.runtime import ServiceSpec
from shared.settings import Settings

# Every service but the gateway itself, in the registry's order (the embedded app's).
PROXIED: tuple[str, ...] = tuple(name for name in SPECS if name != "gateway")


def upstreams(settings: Settings) -> list[Upstream]:
    """The services with a URL, each with its route table."""
    out = []
    for name in PROXIED:
        url = getattr(settings, f"{name}_url")
        if url:
            out.append(Upstream(name, url, route_table(SPECS[name].routers)))
    return out


def install_front_door(
    app: FastAPI, settings: Settings, *, proxy_timeout: httpx.Timeout = DEFAULT_TIMEOUT
) -> ReverseProxy:
    """The console and the forwarded routes, on an app that already serves the gateway's API."""
    mount_console(app)
    return install_proxy(app, upstreams(settings), timeout=proxy_timeout)


def build_gateway_app(
    spec: ServiceSpec,
    settings: Settings,
    roles: set[str],
    on_started: Callable[[FastAPI], Awaitable[None]] | None = None,
    *,
    proxy_timeout: httpx.Timeout = DEFAULT_TIMEOUT,
) -> FastAPI:
    """The gateway's app for `run`: the front door when it serves the API role (a consumer- or
    relay-only gateway process serves only its health, readiness and metrics)."""
    app = cli.build_service_app(spec, settings, roles, on_started)  # via the module: tests replace it
    if "api" in roles:
        install_front_door(app, settings, proxy_timeout=proxy_timeout)
    return app
