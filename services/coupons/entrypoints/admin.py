"""The merchant's coupon administration (X-Api-Key): templates, campaign rules, presets, and why
a rule did or did not issue to a customer. Thin: JSON in, a service-layer call, JSON out."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Body, Depends, Path, Query, Request
from pydantic import BaseModel, Field
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.coupons.adapters import segmentation as seg
from services.coupons.adapters.tables import coupons, issuances, rule_spend
from services.coupons.domain.rules import PRESETS, CampaignRule
from services.coupons.domain.templates import CouponTemplate, liability_fen
from services.coupons.service_layer import rules as rules_svc
from services.coupons.service_layer import templates as templates_svc
from services.coupons.service_layer.issuance import OUTCOMES
from shared import clock
from shared.tenancy import Merchant
from shared.web import ApiError, merchant_dependency, runtime_of, session_dependency

SERVICE = "coupons"
Session = Annotated[AsyncSession, Depends(session_dependency(SERVICE))]
AdminMerchant = Annotated[Merchant, Depends(merchant_dependency(SERVICE))]
TemplateId = Annotated[str, Path(min_length=1, max_length=64)]
RuleId = Annotated[str, Path(min_length=1, max_length=64)]

router = APIRouter(tags=["coupons: admin"])


def _client(request: Request) -> seg.SegmentationClient:
    return seg.client_for(runtime_of(request, SERVICE))


def _refused(e: rules_svc.RuleRefused) -> ApiError:
    field = e.field if e.field.startswith("body") else f"body.{e.field}"
    return ApiError(422, "invalid_rule", e.message, field=field)


def _unavailable(e: seg.SegmentationUnavailable) -> ApiError:
    return ApiError(
        503,
        "segmentation_unavailable",
        f"the rule's audience cannot be checked now (segmentation did not answer): {e}",
        field="body.audience",
    )


# ---------------------------------------------------------------- templates


class TemplateView(BaseModel):
    template_id: str
    name: str
    active: bool
    stock: int | None
    issued: int = Field(description="Coupons issued so far (stock used).")
    liability_fen: int | None = Field(description="The most one coupon can cost the merchant (null: unbounded).")
    created_at: datetime
    template: CouponTemplate


def _template_view(st: templates_svc.StoredTemplate) -> TemplateView:
    return TemplateView(
        template_id=st.template_id,
        name=st.template.name,
        active=st.active,
        stock=st.stock,
        issued=st.issued,
        liability_fen=liability_fen(st.template),
        created_at=st.created_at,
        template=st.template,
    )


@router.post(
    "/v1/coupons/templates",
    response_model=TemplateView,
    status_code=201,
    summary="Create a coupon template",
    responses={422: {"description": "invalid template: the field and the reason"}},
)
async def create_template(body: CouponTemplate, merchant: AdminMerchant, session: Session) -> TemplateView:
    async with session.begin():
        st = await templates_svc.create_template(session, merchant.merchant_id, body)
    return _template_view(st)


@router.get("/v1/coupons/templates", response_model=list[TemplateView], summary="The merchant's coupon templates")
async def list_templates(merchant: AdminMerchant, session: Session) -> list[TemplateView]:
    return [_template_view(st) for st in await templates_svc.list_templates(session, merchant.merchant_id)]


async def _template(session: AsyncSession, merchant_id: str, template_id: str) -> templates_svc.StoredTemplate:
    st = await templates_svc.get_template(session, merchant_id, template_id)
    if st is None:
        raise ApiError(404, "not_found", f"no template {template_id!r}", field="path.template_id")
    return st


@router.get("/v1/coupons/templates/{template_id}", response_model=TemplateView, summary="One coupon template")
async def get_template(template_id: TemplateId, merchant: AdminMerchant, session: Session) -> TemplateView:
    return _template_view(await _template(session, merchant.merchant_id, template_id))


@router.post(
    "/v1/coupons/templates/{template_id}/deactivate",
    response_model=TemplateView,
    summary="Stop issuing a template (coupons already issued stay valid)",
)
async def deactivate_template(template_id: TemplateId, merchant: AdminMerchant, session: Session) -> TemplateView:
    async with session.begin():
        if not await templates_svc.set_active(session, merchant.merchant_id, template_id, False):
            raise ApiError(404, "not_found", f"no template {template_id!r}", field="path.template_id")
    return _template_view(await _template(session, merchant.merchant_id, template_id))


# ---------------------------------------------------------------- rules


class RuleView(BaseModel):
    rule_id: str
    name: str
    enabled: bool
    preset: str | None = Field(description="The preset that created it, if one did.")
    trigger_type: str
    next_fire_at: datetime | None = Field(description="Scheduled rules: the next fire.")
    created_at: datetime
    updated_at: datetime
    rule: CampaignRule


class Spend(BaseModel):
    today_fen: int = Field(description="Liability reserved today (merchant's time zone).")
    total_fen: int
    coupons: int = Field(description="Coupons issued by the rule.")


class RuleDetail(RuleView):
    spend: Spend


def _rule_view(stored: rules_svc.StoredRule) -> RuleView:
    return RuleView(
        rule_id=stored.rule_id,
        name=stored.rule.name,
        enabled=stored.enabled,
        preset=stored.preset,
        trigger_type=stored.trigger_type,
        next_fire_at=stored.next_fire_at,
        created_at=stored.created_at,
        updated_at=stored.updated_at,
        rule=stored.rule,
    )


async def _rule(session: AsyncSession, merchant_id: str, rule_id: str) -> rules_svc.StoredRule:
    stored = await rules_svc.get_rule(session, merchant_id, rule_id)
    if stored is None:
        raise ApiError(404, "not_found", f"no rule {rule_id!r}", field="path.rule_id")
    return stored


@router.post(
    "/v1/coupons/rules",
    response_model=RuleView,
    status_code=201,
    summary="Create a campaign rule",
    responses={
        422: {"description": "invalid rule: the field and the reason"},
        503: {"description": "segmentation could not check the audience"},
    },
)
async def create_rule(body: CampaignRule, request: Request, merchant: AdminMerchant, session: Session) -> RuleView:
    try:
        async with session.begin():
            stored = await rules_svc.create_rule(
                session, merchant.merchant_id, body, now=clock.now(), client=_client(request)
            )
    except rules_svc.RuleRefused as e:
        raise _refused(e) from None
    except seg.SegmentationUnavailable as e:
        raise _unavailable(e) from None
    return _rule_view(stored)


@router.get("/v1/coupons/rules", response_model=list[RuleView], summary="The merchant's campaign rules")
async def list_rules(merchant: AdminMerchant, session: Session) -> list[RuleView]:
    return [_rule_view(r) for r in await rules_svc.list_rules(session, merchant.merchant_id)]


@router.get("/v1/coupons/rules/{rule_id}", response_model=RuleDetail, summary="One campaign rule, with its spend")
async def get_rule(rule_id: RuleId, merchant: AdminMerchant, session: Session) -> RuleDetail:
    stored = await _rule(session, merchant.merchant_id, rule_id)
    today = clock.now().astimezone(ZoneInfo(merchant.timezone)).date().isoformat()
    rs = rule_spend.c
    spent = {
        p: (fen, n)
        for p, fen, n in await session.execute(
            select(rs.period, rs.spent_fen, rs.coupons).where(
                rs.merchant_id == merchant.merchant_id, rs.rule_id == rule_id, rs.period.in_([today, "total"])
            )
        )
    }
    return RuleDetail(
        **_rule_view(stored).model_dump(),
        spend=Spend(
            today_fen=spent.get(today, (0, 0))[0],
            total_fen=spent.get("total", (0, 0))[0],
            coupons=spent.get("total", (0, 0))[1],
        ),
    )


class RuleState(BaseModel):
    enabled: bool


@router.patch("/v1/coupons/rules/{rule_id}", response_model=RuleView, summary="Enable or disable a rule")
async def patch_rule(rule_id: RuleId, body: RuleState, merchant: AdminMerchant, session: Session) -> RuleView:
    async with session.begin():
        stored = await rules_svc.set_enabled(session, merchant.merchant_id, rule_id, body.enabled, now=clock.now())
    if stored is None:
        raise ApiError(404, "not_found", f"no rule {rule_id!r}", field="path.rule_id")
    return _rule_view(stored)


@router.post(
    "/v1/coupons/rules/{rule_id}/run",
    response_model=RuleView,
    status_code=202,
    summary="Fire a scheduled rule now (then its schedule resumes)",
    description="The schedule worker issues to the rule's audience as it is now, under the rule's caps, "
    "holdout and per-customer limit (a customer the rule already reached gets nothing more); "
    "next_fire_at shows the fire brought forward. 409 for a rule that is not a schedule or "
    "is disabled.",
    responses={404: {"description": "no such rule"}, 409: {"description": "not a schedule, or disabled"}},
)
async def run_rule(rule_id: RuleId, merchant: AdminMerchant, session: Session) -> RuleView:
    try:
        async with session.begin():
            stored = await rules_svc.run_now(session, merchant.merchant_id, rule_id, now=clock.now())
    except rules_svc.RuleRefused as e:
        raise ApiError(409, "not_runnable", e.message, field=e.field) from None
    if stored is None:
        raise ApiError(404, "not_found", f"no rule {rule_id!r}", field="path.rule_id")
    return _rule_view(stored)


@router.delete(
    "/v1/coupons/rules/{rule_id}",
    status_code=204,
    summary="Retire a rule: it is disabled, its decisions and coupons stay for the ROI",
)
async def delete_rule(rule_id: RuleId, merchant: AdminMerchant, session: Session) -> None:
    async with session.begin():
        stored = await rules_svc.set_enabled(session, merchant.merchant_id, rule_id, False, now=clock.now())
    if stored is None:
        raise ApiError(404, "not_found", f"no rule {rule_id!r}", field="path.rule_id")


class Decision(BaseModel):
    customer_id: str
    trigger_key: str = Field(
        description="The occurrence: paid_orders:N, order:<id>, segment:<event>, schedule:<t>, referral:<id>, goal:…"
    )
    outcome: str
    reason: str
    decided_at: datetime


class IssuedCoupon(BaseModel):
    coupon_id: str
    template_id: str
    state: str
    issued_at: datetime


class Decisions(BaseModel):
    rule_id: str
    outcomes: dict[str, int] = Field(description="Every decision of the rule so far, by outcome.")
    decisions: list[Decision] = Field(description="The customer's decisions (or the latest ones), newest first.")
    coupons: list[IssuedCoupon] = Field(description="The coupons the rule gave the customer (with customer_id).")


@router.get(
    "/v1/coupons/rules/{rule_id}/decisions",
    response_model=Decisions,
    summary="Why a rule issued or not: its decisions (for one customer), with the reasons",
)
async def decisions(
    rule_id: RuleId,
    merchant: AdminMerchant,
    session: Session,
    customer_id: Annotated[str | None, Query(min_length=1, max_length=128)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> Decisions:
    await _rule(session, merchant.merchant_id, rule_id)
    i = issuances.c
    mine = (i.merchant_id == merchant.merchant_id, i.rule_id == rule_id)
    counts = {o: n for o, n in await session.execute(select(i.outcome, func.count()).where(*mine).group_by(i.outcome))}
    q = select(i.customer_id, i.trigger_key, i.outcome, i.decided_at).where(*mine)
    if customer_id is not None:
        q = q.where(i.customer_id == customer_id)
    rows = (await session.execute(q.order_by(i.decided_at.desc(), i.trigger_key).limit(limit))).all()
    found: list[IssuedCoupon] = []
    if customer_id is not None:
        c = coupons.c
        found = [
            IssuedCoupon(coupon_id=r.coupon_id, template_id=r.template_id, state=r.state, issued_at=r.issued_at)
            for r in await session.execute(
                select(c.coupon_id, c.template_id, c.state, c.issued_at)
                .where(c.merchant_id == merchant.merchant_id, c.customer_id == customer_id, c.rule_id == rule_id)
                .order_by(c.issued_at, c.coupon_id)
                .limit(limit)
            )
        ]
    return Decisions(
        rule_id=rule_id,
        outcomes=counts,
        coupons=found,
        decisions=[
            Decision(
                customer_id=r.customer_id,
                trigger_key=r.trigger_key,
                outcome=r.outcome,
                reason=OUTCOMES.get(r.outcome, r.outcome),
                decided_at=r.decided_at,
            )
            for r in rows
        ],
    )


# ---------------------------------------------------------------- presets


@router.get("/v1/coupons/presets", summary="The merchants' playbooks: parameters, defaults and what each creates")
async def presets(merchant: AdminMerchant) -> list[dict[str, Any]]:
    return rules_svc.describe_presets(clock.now(), ZoneInfo(merchant.timezone))


class PresetApplied(BaseModel):
    preset: str
    rule: RuleView
    template_ids: dict[str, str] = Field(description="The templates created, by their role in the preset.")


@router.post(
    "/v1/coupons/presets/{name}",
    response_model=PresetApplied,
    status_code=201,
    summary="Enable a playbook: create its templates and its rule in one call",
    responses={404: {"description": "no such preset"}, 422: {"description": "a parameter, and why"}},
)
async def apply_preset(
    name: Annotated[str, Path(min_length=1, max_length=64)],
    request: Request,
    merchant: AdminMerchant,
    session: Session,
    params: Annotated[dict[str, Any] | None, Body()] = None,
) -> PresetApplied:
    if name not in PRESETS:
        raise ApiError(404, "not_found", f"no preset {name!r} (see GET /v1/coupons/presets)", field="path.name")
    try:
        async with session.begin():
            stored, made = await rules_svc.apply_preset(
                session, merchant.merchant_id, name, params or {}, now=clock.now(), client=_client(request)
            )
    except rules_svc.RuleRefused as e:
        raise _refused(e) from None
    except seg.SegmentationUnavailable as e:
        raise _unavailable(e) from None
    return PresetApplied(
        preset=name, rule=_rule_view(stored), template_ids={k: st.template_id for k, st in made.items()}
    )
