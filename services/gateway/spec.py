"""What the gateway is made of (see shared.runtime)."""

from __future__ import annotations

from pathlib import Path

from services.gateway.adapters.tables import messaging, metadata
from services.gateway.entrypoints.api import router
from shared.runtime import ServiceSpec

SPEC = ServiceSpec(
    name="gateway",
    metadata=metadata,
    tables=messaging,
    migrations=Path(__file__).parent / "migrations",
    routers=[router],
    topics=(),
    handler=None,
    follows_merchants=False,
    description="Merchants, API keys, customer tokens, and HTTP ingestion of shop events.",
)
