"""Command line for one service in distributed mode:

python -m services.<name> run [--host H] [--port P] [--roles api,consumer,relay]
python -m services.<name> migrate
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Awaitable, Callable, Sequence

import uvicorn
from fastapi import FastAPI
from uvicorn.supervisors import Multiprocess

from shared import clock
from shared.bus.factory import build_bus
from shared.db import create_engine
from shared.logging import configure_logging
from shared.runtime import ServiceRuntime, ServiceSpec, migrate
from shared.settings import Settings
from shared.web import create_app

ROLES = frozenset({"api", "consumer", "relay", "migrate"})


def build_service_app(
    spec: ServiceSpec,
    settings: Settings,
    roles: set[str],
    on_started: Callable[[FastAPI], Awaitable[None]] | None = None,
) -> FastAPI:
    bus = build_bus(settings, client_id=spec.name)
    runtime = ServiceRuntime(spec, settings, bus)
    return create_app(
        title=f"Fugou {spec.name}",
        description=spec.description,
        runtimes=[runtime],
        bus=bus,
        on_started=on_started,
        serve_api="api" in roles,
        start_kwargs={"run_migrations": "migrate" in roles, "relay": "relay" in roles, "consumer": "consumer" in roles},
    )


def serve(app: FastAPI | str, host: str, port: int, log_level: str = "warning", workers: int = 1) -> None:
    """Serve on one process, or on ``workers`` processes sharing the socket (``app`` is then an
    import string of an app factory: uvicorn spawns the workers and each builds its own app)."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level.lower(),
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=10,
        workers=workers,
        factory=isinstance(app, str),
    )
    if workers == 1:
        uvicorn.Server(config).run()
        return
    sock = config.bind_socket()
    Multiprocess(config, sockets=[sock]).run()


_WORKER_ENV = "FUGOU_CLI_WORKER"


def process_settings() -> Settings:
    """The settings of a process that is starting, with its logging and its clock set from them
    (every entry point calls this once, before it builds anything)."""
    settings = Settings()
    configure_logging(settings.log_level, settings.log_json)
    clock.install(clock.SystemClock(settings.clock_offset))
    return settings


def worker_app() -> FastAPI:
    """The app of one worker process of ``run --workers N`` (the parent passes what to build in
    the environment: the service's spec module and the roles)."""
    import importlib

    module, _, roles = os.environ[_WORKER_ENV].partition(";")
    spec: ServiceSpec = importlib.import_module(module).SPEC
    settings = process_settings()
    return build_service_app(spec, settings, set(roles.split(",")))


AppBuilder = Callable[[ServiceSpec, Settings, set[str], Callable[[FastAPI], Awaitable[None]] | None], FastAPI]


def service_main(
    spec: ServiceSpec,
    argv: Sequence[str] | None = None,
    on_started: Callable[[FastAPI], Awaitable[None]] | None = None,
    build_app: AppBuilder | None = None,
) -> None:
    """The command line of one service. ``build_app`` builds its app for ``run`` (by default
    ``build_service_app``; the gateway's adds the console and the proxy to the other services)."""
    parser = argparse.ArgumentParser(prog=f"python -m services.{spec.name}", description=spec.description)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="serve the API and run the consumer and outbox relay")
    run.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    run.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    run.add_argument(
        "--roles",
        default="api,consumer,relay",
        help="comma-separated: api, consumer, relay, migrate (migrate at start)",
    )
    run.add_argument(
        "--workers",
        type=int,
        default=int(os.environ.get("WEB_CONCURRENCY", "1")),
        help="processes sharing the port, each with every role (consumers share the topic's "
        "partitions through their group; one relay publishes at a time)",
    )
    sub.add_parser("migrate", help="upgrade this service's database to the latest schema")
    args = parser.parse_args(argv)
    settings = process_settings()
    if args.command == "migrate":
        asyncio.run(_migrate(spec, settings))
        return
    roles = {r.strip() for r in args.roles.split(",") if r.strip()}
    if not roles or roles - ROLES:
        parser.error(f"--roles: unknown role(s) {sorted(roles - ROLES)}; choose from {sorted(ROLES)}")
    if args.workers > 1:
        if on_started is not None or build_app is not None:
            parser.error("--workers: this service runs as one process")
        if "migrate" in roles:  # once, before the workers start, not N times at once
            asyncio.run(_migrate(spec, settings))
            roles.discard("migrate")
        os.environ[_WORKER_ENV] = f"services.{spec.name}.spec;{','.join(sorted(roles))}"
        serve("shared.cli:worker_app", args.host, args.port, workers=args.workers)
        return
    serve((build_app or build_service_app)(spec, settings, roles, on_started), args.host, args.port)


async def _migrate(spec: ServiceSpec, settings: Settings) -> None:
    engine = create_engine(settings.database_url(spec.name))
    try:
        await migrate(engine, spec)
    finally:
        await engine.dispose()
