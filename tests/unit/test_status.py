"""Every service answers for itself in the one OpenAPI, and says what it holds for a merchant."""

from __future__ import annotations

from pathlib import Path

from services.embedded import build_embedded_app
from tests.conftest import embedded_settings, running
from tests.factories import eventually, order_paid

KEY = "fg_status_key"
SERVICES = ("segmentation", "coupons", "loyalty", "notifications")


async def test_each_service_reports_what_it_applied_for_the_calling_merchant(tmp_path: Path) -> None:
    app = build_embedded_app(embedded_settings(tmp_path, bootstrap_api_key=KEY), announce=False)
    async with running(app) as client:
        tags = {
            t
            for path in (await client.get("/openapi.json")).json()["paths"].values()
            for op in path.values()
            for t in op.get("tags", [])
        }
        assert set(SERVICES) <= tags
        events = [order_paid("demo", f"u-{i}", f"o-{i}", 100) for i in range(5)]
        assert (await client.post("/v1/events", json=events, headers={"X-Api-Key": KEY})).json()["accepted"] == 5

        async def seg() -> dict:
            return (await client.get("/v1/segmentation/status", headers={"X-Api-Key": KEY})).json()

        # The 5 orders, and loyalty's events for them (segmentation keeps members' levels).
        status = await eventually(seg, lambda s: s["events_applied"] > 5 and s["outbox_pending"] == 0)
        assert status["merchant_id"] == "demo" and status["last_applied_at"] is not None

        async def coupons() -> dict:
            return (await client.get("/v1/coupons/status", headers={"X-Api-Key": KEY})).json()

        # coupons applies the 5 orders, the 5 segment.changed that segmentation raised for them, and
        # loyalty's events (its points mall sells coupons)
        await eventually(coupons, lambda s: s["events_applied"] > 10)
        assert (await client.get("/v1/loyalty/status")).status_code == 401
