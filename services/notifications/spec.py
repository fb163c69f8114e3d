"""What the notifications service is made of (see shared.runtime)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from services.notifications.adapters.tables import messaging, metadata
from services.notifications.entrypoints.admin import router as admin_router
from services.notifications.entrypoints.public import router as public_router
from services.notifications.service_layer.handlers import handle
from services.notifications.service_layer.workers import background
from shared.runtime import ServiceSpec
from shared.web import status_router


def _background(rt: Any) -> Any:
    return background(rt)


SPEC = ServiceSpec(
    name="notifications",
    metadata=metadata,
    tables=messaging,
    migrations=Path(__file__).parent / "migrations",
    routers=[admin_router, public_router, status_router("notifications")],
    # Profiles and WeChat grants from the shop; the triggers from coupons, loyalty and segmentation.
    topics=["shop.customers", "fugou.coupons", "fugou.loyalty", "fugou.segments"],
    handler=handle,
    description="WeChat subscribe messages, SMS and email, with consent, caps and quiet hours.",
    # The dispatcher, the campaign walker and the birthday clock.
    background=[_background],
)
