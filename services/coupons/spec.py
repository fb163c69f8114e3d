"""What the coupons service is made of (see shared.runtime)."""

from __future__ import annotations

from pathlib import Path

from services.coupons.adapters.tables import messaging, metadata
from services.coupons.entrypoints.admin import router as admin_router
from services.coupons.entrypoints.reports import router as reports_router
from services.coupons.entrypoints.wallet import router as wallet_router
from services.coupons.service_layer.handlers import handle
from services.coupons.service_layer.issuance import schedule_worker
from services.coupons.service_layer.wallet import expiry_worker
from shared.runtime import ServiceSpec
from shared.web import status_router

SPEC = ServiceSpec(
    name="coupons",
    metadata=metadata,
    tables=messaging,
    migrations=Path(__file__).parent / "migrations",
    routers=[admin_router, reports_router, wallet_router, status_router("coupons")],
    # Orders (triggers, redemption, ROI), referrals, segments (audiences, segment triggers), and
    # loyalty's points mall (coupons bought with points).
    topics=["shop.orders", "shop.customers", "fugou.segments", "fugou.loyalty"],
    handler=handle,
    description="Coupon templates, rule-driven issuance, the wallet, redemption, expiry and ROI.",
    # The expiry sweep and the coupon.expiring reminders (the wallet's clock); scheduled rules
    # (schedule_worker also attaches the segmentation client the rule handlers use).
    background=[lambda rt: expiry_worker(rt.sessions), schedule_worker],
)
