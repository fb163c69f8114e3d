from fastapi import FastAPI

from services.gateway.bootstrap import ensure_demo_merchant
from services.gateway.spec import SPEC
from shared.cli import service_main


async def _bootstrap(app: FastAPI) -> None:
    gateway = app.state.runtimes["gateway"]
    if gateway.settings.bootstrap_api_key:
        await ensure_demo_merchant(gateway, key_file=None)


if __name__ == "__main__":
    service_main(SPEC, on_started=_bootstrap)
