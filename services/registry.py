"""Every service's spec, by name: what the embedded app and the CLIs compose."""

from __future__ import annotations

from services.coupons.spec import SPEC as COUPONS
from services.gateway.spec import SPEC as GATEWAY
from services.loyalty.spec import SPEC as LOYALTY
from services.notifications.spec import SPEC as NOTIFICATIONS
from services.segmentation.spec import SPEC as SEGMENTATION
from shared.runtime import ServiceSpec

SPECS: dict[str, ServiceSpec] = {s.name: s for s in (GATEWAY, SEGMENTATION, COUPONS, LOYALTY, NOTIFICATIONS)}
