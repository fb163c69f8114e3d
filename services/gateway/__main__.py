from fastapi import FastAPI

# In distributed mode the gateway process is the front door: it also serves the console and
# forwards the other services' routes. That composition names every service, so it lives beside
# services/embedded.py; this entry point is the one file of the package allowed to import it
# (tests/unit/test_layout.py).
from services.front_door import build_gateway_app
from services.gateway.bootstrap import ensure_demo_merchant
from services.gateway.spec import SPEC
from shared.cli import service_main


async def _bootstrap(app: FastAPI) -> None:
    gateway = app.state.runtimes["gateway"]
    if gateway.settings.bootstrap_api_key:
        await ensure_demo_merchant(gateway, key_file=None)


if __name__ == "__main__":
    service_main(SPEC, on_started=_bootstrap, build_app=build_gateway_app)
