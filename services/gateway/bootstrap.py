"""The demo merchant: created at start in embedded mode (and by the gateway process when
FUGOU_BOOTSTRAP_API_KEY is set), so `make run` is usable at once."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import structlog
from sqlalchemy import select

from services.gateway.adapters.tables import messaging
from services.gateway.service_layer import handlers
from shared.runtime import ServiceRuntime

log = structlog.get_logger("fugou.bootstrap")
DEMO = "demo"


async def ensure_demo_merchant(gateway: ServiceRuntime, key_file: Path | None) -> tuple[str | None, bool]:
    """Make sure merchant 'demo' exists and, if FUGOU_BOOTSTRAP_API_KEY is set, accepts that key.

    Returns (the key to show, whether it is new). A key generated here is written to key_file
    (mode 0600) because only its hash is kept."""
    settings = gateway.settings
    pepper = settings.api_key_pepper.get_secret_value()
    wanted = settings.bootstrap_api_key.get_secret_value() if settings.bootstrap_api_key else None
    async with gateway.sessions() as session:
        exists = (
            await session.execute(
                select(messaging.merchants.c.merchant_id).where(messaging.merchants.c.merchant_id == DEMO)
            )
        ).first() is not None
    async with gateway.sessions() as session:
        if not exists:
            creds = await handlers.create_merchant(
                session,
                merchant_id=DEMO,
                name="Demo shop",
                timezone_name="Asia/Shanghai",
                pepper=pepper,
                api_key=wanted,
            )
            key, new = creds.api_key, True
        elif wanted:
            key = await handlers.add_api_key(session, merchant_id=DEMO, pepper=pepper, api_key=wanted)
            new = False
        else:
            return None, False
    gateway.committed()
    if new and wanted is None and key_file is not None:
        key_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(key + "\n")
    return key, new


async def wait_until_known(runtimes: list[ServiceRuntime], api_key: str, timeout_s: float = 20.0) -> bool:
    """Wait until every service has the merchant's key from fugou.merchants."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    pending = list(runtimes)
    while pending and asyncio.get_running_loop().time() < deadline:
        still = []
        for rt in pending:
            rt.tenancy.invalidate()
            if await rt.tenancy.by_api_key(api_key) is None:
                still.append(rt)
        pending = still
        if pending:
            await asyncio.sleep(0.1)
    if pending:
        log.warning("bootstrap.merchant_not_replicated", services=[rt.name for rt in pending])
    return not pending
