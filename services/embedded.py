"""The embedded system: all services in one process on one port, the in-process bus, SQLite
under ./data. This is `make run`.

    python -m services.embedded [--host H] [--port P]
"""

from __future__ import annotations

import argparse
import os
import sys

from fastapi import FastAPI

from services.console import mount_console
from services.gateway.bootstrap import DEMO, ensure_demo_merchant, wait_until_known
from services.registry import SPECS
from shared.bus.factory import build_bus
from shared.cli import process_settings, serve
from shared.runtime import ServiceRuntime
from shared.settings import Settings
from shared.web import create_app

DESCRIPTION = """Fugou (复购) raises the repurchase rate of mini-program shops.

* **Admin calls** carry the merchant's API key in `X-Api-Key`.
* **Mini-program calls** carry a customer token: `Authorization: Bearer <JWT>` signed (HS256) with the
  merchant's secret, with claims `sub` (customer id), `mid` (merchant id) and `exp`.
* **Events**: every topic and payload is described in [`/asyncapi.json`](/asyncapi.json) and
  [`/v1/event-schemas`](/v1/event-schemas). Money is integer fen; times carry their offset.
"""


def build_embedded_app(settings: Settings, announce: bool = True) -> FastAPI:
    bus = build_bus(settings, client_id="embedded")
    runtimes = [ServiceRuntime(spec, settings, bus) for spec in SPECS.values()]

    async def on_started(app: FastAPI) -> None:
        gateway = app.state.runtimes["gateway"]
        key_file = settings.data_dir / "demo-api-key"
        key, new = await ensure_demo_merchant(gateway, key_file)
        if key:
            await wait_until_known([rt for rt in runtimes if rt.name != "gateway"], key)
        if announce:
            if key and new and not settings.bootstrap_api_key:
                print(
                    f"\n  Merchant '{DEMO}' created. Its API key (also in {key_file}):\n\n      {key}\n",
                    file=sys.stderr,
                    flush=True,
                )
            elif not key and key_file.exists():
                print(f"\n  Merchant '{DEMO}': API key in {key_file}\n", file=sys.stderr, flush=True)

    app = create_app(title="Fugou", description=DESCRIPTION, runtimes=runtimes, bus=bus, on_started=on_started)
    mount_console(app)  # the merchant console at /console: pages over the APIs above
    for rt in runtimes:  # one process: a service calls another's API through the app, in memory
        rt.local_api = app
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m services.embedded", description=__doc__)
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    args = parser.parse_args(argv)
    settings = process_settings()
    app = build_embedded_app(settings)
    print(f"  Fugou: http://{args.host}:{args.port}  (API docs at /docs)", file=sys.stderr, flush=True)
    serve(app, args.host, args.port)


if __name__ == "__main__":
    main()
