"""Coupons' reports for merchants' operators (X-Api-Key)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.coupons.adapters.tables import rules, templates
from services.coupons.service_layer.reports import roi_reports, rule_report, template_report
from shared.tenancy import Merchant
from shared.web import ApiError, merchant_dependency, session_dependency

SERVICE = "coupons"
Session = Annotated[AsyncSession, Depends(session_dependency(SERVICE))]
AdminMerchant = Annotated[Merchant, Depends(merchant_dependency(SERVICE))]

router = APIRouter(tags=["coupons"])

ROI_DOC = """ROI = GMV of the orders that used the coupons / their cost (each template's cost per
redemption when set, else the discounts given): the merchants' own measure. Beside it, the
baseline (customers the rule never decided for, over the same period) and, for rules with a
holdout, the incremental lift of the treated customers over the held-out ones (conversion
difference with a Newcombe interval, GMV per customer with Welch's). `insufficient` says why a
figure is missing."""


@router.get("/v1/coupons/reports/roi", summary="ROI of every rule and template", description=ROI_DOC)
async def all_roi(session: Session, merchant: AdminMerchant) -> dict[str, Any]:
    return await roi_reports(session, merchant.merchant_id)


@router.get("/v1/coupons/reports/roi/rules/{rule_id}", summary="ROI of one rule", description=ROI_DOC)
async def one_rule(rule_id: str, session: Session, merchant: AdminMerchant) -> dict[str, Any]:
    known = (
        await session.execute(
            select(rules.c.name).where(rules.c.merchant_id == merchant.merchant_id, rules.c.rule_id == rule_id)
        )
    ).scalar()
    if known is None:
        raise ApiError(404, "not_found", f"no rule {rule_id!r}", field="path.rule_id")
    return {"rule_id": rule_id, "name": known, **asdict(await rule_report(session, merchant.merchant_id, rule_id))}


@router.get("/v1/coupons/reports/roi/templates/{template_id}", summary="ROI of one template", description=ROI_DOC)
async def one_template(template_id: str, session: Session, merchant: AdminMerchant) -> dict[str, Any]:
    known = (
        await session.execute(
            select(templates.c.name).where(
                templates.c.merchant_id == merchant.merchant_id, templates.c.template_id == template_id
            )
        )
    ).scalar()
    if known is None:
        raise ApiError(404, "not_found", f"no template {template_id!r}", field="path.template_id")
    return {
        "template_id": template_id,
        "name": known,
        **asdict(await template_report(session, merchant.merchant_id, template_id)),
    }
