"""The coupons ROI report from stored coupons, decisions and orders (SQLite and PostgreSQL):
the merchants' ratio (3 orders × ¥80 with ¥50 of coupons → 4.8), the baseline, and the lift of
the treated customers over the held-out ones, each counted from the customer's decision on."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from services.coupons.adapters.tables import coupons, issuances, orders, rules
from services.coupons.domain.templates import CouponTemplate
from services.coupons.service_layer.reports import roi_reports, rule_report
from services.coupons.service_layer.templates import create_template
from services.coupons.spec import SPEC
from shared import clock
from shared.bus.inprocess import InProcessBus
from shared.runtime import ServiceRuntime
from shared.settings import Settings
from tests.conftest import Backend

M = "m-roi"
NOW = clock.now()
DECIDED = NOW - timedelta(days=10)


@asynccontextmanager
async def coupons_runtime(data_dir: Path, database_url: str | None) -> AsyncIterator[ServiceRuntime]:
    bus = InProcessBus(data_dir / "bus.sqlite")
    await bus.start()
    rt = ServiceRuntime(SPEC, Settings(data_dir=data_dir), bus, database_url=database_url)
    try:
        await rt.start(relay=False, consumer=False)
        yield rt
    finally:
        await rt.stop()
        await bus.stop()


def order(order_id: str, customer_id: str, amount: int, paid_at: datetime, cancelled: bool = False) -> dict:
    return {
        "merchant_id": M,
        "order_id": order_id,
        "customer_id": customer_id,
        "amount_fen": amount,
        "paid_at": paid_at,
        "cancelled_at": paid_at + timedelta(hours=1) if cancelled else None,
        "refunded_fen": 0,
    }


async def test_roi_baseline_and_holdout_lift(tmp_path: Path, backend: Backend) -> None:
    async with coupons_runtime(tmp_path, backend.database_url("coupons")) as rt:
        async with rt.sessions() as session, session.begin():
            tpl = await create_template(
                session,
                M,
                CouponTemplate.model_validate(
                    {"name": "¥20 off", "kind": {"type": "no_threshold", "amount_off_fen": 2000}, "valid_days": 30}
                ),
            )
            await session.execute(
                rules.insert().values(
                    merchant_id=M,
                    rule_id="r1",
                    name="welcome",
                    body="{}",
                    trigger_type="first_paid_order",
                    enabled=True,
                    created_at=DECIDED,
                    updated_at=DECIDED,
                )
            )
            treated, held = ["c1", "c2", "c3"], ["c4", "c5"]
            await session.execute(
                issuances.insert(),
                [
                    {
                        "merchant_id": M,
                        "issuance_key": f"k-{c}",
                        "rule_id": "r1",
                        "customer_id": c,
                        "trigger_key": "t",
                        "outcome": "issued" if c in treated else "holdout",
                        "decided_at": DECIDED,
                    }
                    for c in treated + held
                ],
            )
            # ¥50 of coupons (20 + 20 + 10 given) on three ¥80 orders.
            await session.execute(
                coupons.insert(),
                [
                    {
                        "merchant_id": M,
                        "coupon_id": f"cpn-{c}",
                        "customer_id": c,
                        "template_id": tpl.template_id,
                        "rule_id": "r1",
                        "state": "used",
                        "order_id": f"o-{c}",
                        "starts_at": DECIDED,
                        "expires_at": NOW + timedelta(days=20),
                        "issued_at": DECIDED,
                        "used_at": DECIDED + timedelta(days=1),
                        "discount_fen": d,
                        "order_amount_fen": 8000,
                        "version": 2,
                    }
                    for c, d in zip(treated, (2000, 2000, 1000), strict=True)
                ],
            )
            await session.execute(
                orders.insert(),
                [
                    *[order(f"o-{c}", c, 8000, DECIDED + timedelta(days=1)) for c in treated],
                    order("o-before", "c1", 99_999, DECIDED - timedelta(days=1)),  # before the decision: not counted
                    order("o-c2-cancelled", "c2", 50_000, DECIDED + timedelta(days=2), cancelled=True),
                    order("o-c4", "c4", 8000, DECIDED + timedelta(days=3)),  # one of the two held out buys
                    order("o-c6", "c6", 6000, DECIDED + timedelta(days=4)),  # never decided for: the baseline
                ],
            )
        async with rt.sessions() as session:
            report = await rule_report(session, M, "r1")
            everything = await roi_reports(session, M)
    assert (report.issued, report.redeemed, report.cost_fen, report.gmv_fen) == (3, 3, 5000, 24_000)
    assert report.roi == pytest.approx(4.8) and report.redemption_rate == 1.0
    assert report.baseline is not None and report.baseline.customers == 1  # c6 (c1's early order is c1's)
    assert report.baseline.gmv_per_customer_fen == 6000
    lift = report.lift
    assert lift is not None
    assert (lift.treatment.customers, lift.treatment.conversion) == (3, 1.0)
    assert (lift.holdout.customers, lift.holdout.conversion) == (2, 0.5)
    assert lift.treatment.gmv_per_customer_fen == 8000 and lift.holdout.gmv_per_customer_fen == 4000
    assert lift.incremental_gmv_fen == (8000 - 4000) * 3 and lift.incremental_roi == pytest.approx(2.4)
    assert lift.conversion_diff is not None and lift.conversion_diff.estimate == pytest.approx(0.5)
    assert lift.conversion_diff.low < 0.5 < lift.conversion_diff.high
    assert [r["rule_id"] for r in everything["rules"]] == ["r1"]
    assert everything["templates"][0]["issued"] == 3 and everything["templates"][0]["lift"] is None
