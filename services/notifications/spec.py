"""What the notifications service is made of (see shared.runtime)."""

from __future__ import annotations

from pathlib import Path

from services.notifications.adapters.tables import messaging, metadata
from shared.runtime import ServiceSpec
from shared.web import status_router

# No domain topics yet: a service subscribes to a topic only when it has a handler for it, or
# its inbox would mark events as applied that it never applied.
SPEC = ServiceSpec(
    name="notifications",
    metadata=metadata,
    tables=messaging,
    migrations=Path(__file__).parent / "migrations",
    routers=[status_router("notifications")],
    topics=(),
    handler=None,
    description="WeChat subscribe messages, SMS and email, with consent, caps and quiet hours.",
)
