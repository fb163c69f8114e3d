"""What the segmentation service is made of (see shared.runtime)."""

from __future__ import annotations

from pathlib import Path

from services.segmentation.adapters.tables import messaging, metadata
from services.segmentation.entrypoints.api import router
from services.segmentation.entrypoints.audiences import router as audiences_router
from services.segmentation.service_layer.handlers import handle
from services.segmentation.service_layer.segments import rescore_worker
from services.segmentation.service_layer.snapshots import snapshot_worker
from shared.runtime import ServiceSpec
from shared.web import status_router

SPEC = ServiceSpec(
    name="segmentation",
    metadata=metadata,
    tables=messaging,
    migrations=Path(__file__).parent / "migrations",
    routers=[router, audiences_router, status_router("segmentation")],
    # The shop's facts, and loyalty's member levels (for audiences).
    topics=["shop.orders", "shop.customers", "shop.behaviour", "fugou.loyalty"],
    handler=handle,
    description="Customer aggregates, RFM levels, tiers, classes, lifecycle tags and audiences.",
    # Re-scoring jobs, statistics, custom tags and the sweep; the daily snapshots of the counts
    # (at start-up, then hourly) that the trend charts read.
    background=[lambda rt: rescore_worker(rt.sessions), lambda rt: snapshot_worker(rt.sessions)],
)
