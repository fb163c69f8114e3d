"""What the loyalty service is made of (see shared.runtime)."""

from __future__ import annotations

from pathlib import Path

from services.loyalty.adapters.tables import messaging, metadata
from services.loyalty.entrypoints.admin import router as admin_router
from services.loyalty.entrypoints.customer import router as customer_router
from services.loyalty.service_layer.clock import clock_worker
from services.loyalty.service_layer.handlers import handle
from shared.runtime import ServiceSpec
from shared.web import status_router

SPEC = ServiceSpec(
    name="loyalty",
    metadata=metadata,
    tables=messaging,
    migrations=Path(__file__).parent / "migrations",
    routers=[customer_router, admin_router, status_router("loyalty")],
    # Orders earn, refunds and cancellations take back; profiles give birthdays (and any bonus a
    # merchant triggers by a shop event on these topics).
    topics=["shop.orders", "shop.customers"],
    handler=handle,
    description="Points ledger, member levels, points mall and stored value.",
    # Maturing pending points, expiring lots, expiry notices, level reviews.
    background=[lambda rt: clock_worker(rt.sessions)],
)
