"""Loyalty for the mini-program (customer token: ``Authorization: Bearer …``): my points, their
history, what is pending and expiring, my level and my progress, the checkout offset, the points
mall, stored value, and the daily sign-in. Translate, call, answer: the rules are in the domain and
the service layer."""

from __future__ import annotations

from typing import Annotated

import orjson
from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, Field
from sqlalchemy import select

from services.loyalty.adapters.tables import accounts
from services.loyalty.domain.common import BonusEvent
from services.loyalty.entrypoints.common import (
    SERVICE,
    AwardView,
    EntryView,
    Fen,
    HistoryView,
    LevelBrief,
    MallItemView,
    MeCustomer,
    PlanView,
    Points,
    PointsView,
    ProgressView,
    Session,
    StoredValueView,
    Text,
    TopUpView,
    answering,
    committed,
    entry_view,
    item_view,
    plan_view,
    points_json,
    progress_view,
    reads_of,
    stored_value_view,
    top_up_view,
)
from services.loyalty.service_layer import catalogue, reads, spending, stored_value
from services.loyalty.service_layer.rules import in_force
from shared import clock
from shared.events import Id
from shared.web import ApiError, runtime_of

router = APIRouter(tags=["loyalty: mini-program"])


@router.get("/v1/me/points", response_model=PointsView, summary="My points: available, pending, expiring, level")
async def my_points(request: Request, me: MeCustomer) -> Response:
    state = reads_of(request)
    engine = state.engine(runtime_of(request, SERVICE))
    async with state.gate, engine.connect() as conn:  # one statement, no transaction to begin or end
        rules = await state.rules.get(conn, me.merchant_id)
        summary = await reads.summary(conn, rules, me.customer_id, clock.now())
    # Encoded by hand (the hot read): exactly PointsView's JSON (a test compares them).
    return Response(orjson.dumps(points_json(me.customer_id, summary, rules)), media_type="application/json")


@router.get("/v1/me/points/history", response_model=HistoryView, summary="My points history, newest first")
async def my_history(
    me: MeCustomer,
    session: Session,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    before: Annotated[int | None, Query(ge=1, description="`next_before` of the last page.")] = None,
) -> HistoryView:
    rows = await reads.history(session, me.merchant_id, me.customer_id, limit=limit, before=before)
    return HistoryView(
        customer_id=me.customer_id,
        entries=[entry_view(r, EntryView) for r in rows],
        next_before=rows[-1].id if len(rows) == limit else None,
    )


class LevelView(BaseModel):
    level: LevelBrief
    benefits: dict[str, object] = Field(
        description="pay_percent, points_multiplier_permille, free_shipping, coupon_template_ids"
    )
    progress: ProgressView
    window_months: int
    next_review_at: str | None = Field(description="When the level is next reviewed (null: nothing to review).")
    downgrade_warning: bool = Field(
        description="The last review found the growth short: the level drops at "
        "`next_review_at` unless the growth recovers."
    )


@router.get(
    "/v1/me/level",
    response_model=LevelView,
    summary="My member level, its benefits, my progress",
    responses={404: {"description": "the merchant has no member levels"}},
)
async def my_level(me: MeCustomer, session: Session) -> LevelView:
    rules = await in_force(session, me.merchant_id)
    if rules.levels is None:
        raise ApiError(404, "no_levels", "this shop has no member levels")
    summary = await reads.summary(session, rules, me.customer_id, clock.now())
    a = accounts.c
    row = (
        await session.execute(
            select(a.next_review_at, a.warned_for).where(
                a.merchant_id == me.merchant_id, a.customer_id == me.customer_id
            )
        )
    ).first()
    assert summary.level is not None and summary.progress is not None
    level = rules.levels.level(summary.level)
    return LevelView(
        level=LevelBrief(code=level.code, name=level.name),
        benefits=level.benefits.model_dump(),
        progress=progress_view(summary.progress),
        window_months=rules.levels.window_months,
        next_review_at=row.next_review_at.isoformat() if row and row.next_review_at else None,
        downgrade_warning=bool(row and row.warned_for),
    )


# ---------------------------------------------------------------- checkout offset


class QuoteRequest(BaseModel):
    order_fen: Fen = Field(description="What the offset may apply to (goods after coupons, without shipping).")
    points: Points | None = Field(None, description="Points the customer wants to use; omit for the maximum.")


class OffsetAmount(BaseModel):
    points: int
    fen: int


class QuoteView(BaseModel):
    balance: int
    cap_fen: int = Field(description="The most points may take off this order.")
    max: OffsetAmount = Field(description="The largest offset the cap and the balance allow.")
    asked: OffsetAmount | None = Field(description="What `points` buy, when asked.")
    step_points: int = Field(description="Points are used in steps of this many…")
    step_fen: int = Field(description="…each worth this many fen.")


@router.post(
    "/v1/me/points/offset/quote",
    response_model=QuoteView,
    summary="How many points can pay for this order, and what they take off",
)
async def offset_quote(body: QuoteRequest, me: MeCustomer, session: Session) -> QuoteView:
    rules = await in_force(session, me.merchant_id)
    with answering():
        q = await spending.quote(
            session, rules, me.customer_id, order_fen=body.order_fen, points=body.points, now=clock.now()
        )
    return QuoteView(
        balance=q.balance,
        cap_fen=q.cap_fen,
        max=OffsetAmount(points=q.max.points, fen=q.max.fen),
        asked=OffsetAmount(points=q.asked.points, fen=q.asked.fen) if q.asked else None,
        step_points=q.unit_points,
        step_fen=q.unit_fen,
    )


class OffsetRequest(BaseModel):
    order_id: Id
    order_fen: Fen
    points: Points


class OffsetView(BaseModel):
    order_id: str
    points: int
    offset_fen: int = Field(description="What the points take off the order.")
    balance: int = Field(description="Points available after.")


OFFSET_DOC = """The points are taken at once, against this order (one offset per order; the same call
again answers the same offset with 200). They come back when the shop sends `order.cancelled` for
the order (an unpaid order the customer abandons included), or in proportion when it sends
`order.refunded`."""


@router.post(
    "/v1/me/points/offset",
    response_model=OffsetView,
    status_code=201,
    description=OFFSET_DOC,
    summary="Use points as cash at checkout",
    responses={
        409: {"description": "insufficient_points, offset_exists, order_closed"},
        422: {"description": "exceeds_cap, below_minimum, invalid_amount"},
    },
)
async def offset_redeem(
    body: OffsetRequest, request: Request, response: Response, me: MeCustomer, session: Session
) -> OffsetView:
    with answering():
        async with session.begin():
            rules = await in_force(session, me.merchant_id)
            done = await spending.redeem_offset(
                session,
                rules,
                me.customer_id,
                order_id=body.order_id,
                order_fen=body.order_fen,
                points=body.points,
                now=clock.now(),
            )
    if done.replayed:
        response.status_code = 200
    committed(request)
    return OffsetView(order_id=done.order_id, points=done.points, offset_fen=done.fen, balance=done.balance)


# ---------------------------------------------------------------- bonuses


@router.post("/v1/me/sign-in", response_model=AwardView, summary="Daily sign-in (签到): the sign-in bonus, once a day")
async def sign_in(request: Request, me: MeCustomer, session: Session) -> AwardView:
    at = clock.now()
    async with session.begin():
        rules = await in_force(session, me.merchant_id)
        got = await spending.award(
            session,
            rules,
            me.customer_id,
            BonusEvent.SIGN_IN,
            at=at,
            ref=None,
            cause=f"sign_in:{me.customer_id}:{at.isoformat()}",
            now=at,
        )
    committed(request)
    if got is None:
        return AwardView(awarded=False, bonus="sign_in", reason="already signed in today, or no sign-in bonus")
    return AwardView(awarded=True, bonus=got.bonus, points=got.points, growth=got.growth, capped_by=got.capped_by)


# ---------------------------------------------------------------- the points mall


class CatalogueView(BaseModel):
    items: list[MallItemView]


@router.get("/v1/mall/items", response_model=CatalogueView, summary="The points mall: what is on sale now")
async def mall_catalogue(me: MeCustomer, session: Session) -> CatalogueView:
    found = catalogue.on_sale(await catalogue.items(session, me.merchant_id), clock.now())
    return CatalogueView(items=[item_view(i) for i in found])


class RedeemRequest(BaseModel):
    item_id: Id
    quantity: Annotated[int, Field(strict=True, ge=1, le=99)] = 1


class MallRedemptionView(BaseModel):
    redemption_id: str
    item_id: str
    quantity: int
    points: int
    reward: dict[str, object] = Field(
        description='{"type": "coupon", "template_id": …}: the coupons service '
        'issues it on points.redeemed; {"type": "gift", "sku": …}: the '
        "shop ships it."
    )
    balance: int


@router.post(
    "/v1/me/mall/redeem",
    response_model=MallRedemptionView,
    status_code=201,
    summary="Redeem a points-mall item",
    responses={
        404: {"description": "unknown_item"},
        409: {"description": "insufficient_points, out_of_stock, limit_reached, item_unavailable"},
    },
)
async def mall_redeem(body: RedeemRequest, request: Request, me: MeCustomer, session: Session) -> MallRedemptionView:
    with answering():
        async with session.begin():
            rules = await in_force(session, me.merchant_id)
            done = await spending.redeem_item(
                session, rules, me.customer_id, body.item_id, quantity=body.quantity, now=clock.now()
            )
    committed(request)
    return MallRedemptionView(
        redemption_id=done.redemption_id,
        item_id=done.item_id,
        quantity=done.quantity,
        points=done.points,
        reward=done.reward,
        balance=done.balance,
    )


# ---------------------------------------------------------------- stored value


@router.get("/v1/me/stored-value", response_model=StoredValueView, summary="My stored value (储值) and its changes")
async def my_stored_value(me: MeCustomer, session: Session) -> StoredValueView:
    return stored_value_view(me.customer_id, await stored_value.statement(session, me.merchant_id, me.customer_id))


class PlansView(BaseModel):
    plans: list[PlanView]


@router.get("/v1/stored-value/plans", response_model=PlansView, summary="Top-up plans on offer (充500送50)")
async def offered_plans(me: MeCustomer, session: Session) -> PlansView:
    return PlansView(
        plans=[plan_view(p, a) for p, a in await stored_value.plans(session, me.merchant_id, active_only=True)]
    )


class TopUpRequest(BaseModel):
    plan_id: Text
    payment_ref: Text = Field(description="The shop's payment (e.g. the WeChat Pay out_trade_no) for this top-up.")


TOP_UP_DOC = """Records a *pending* top-up: nothing is credited until the shop's backend, on its payment
notification, confirms it (`POST /v1/loyalty/stored-value/top-ups/{top_up_id}/confirm`). The same
payment reference again answers the same top-up (200)."""


@router.post(
    "/v1/me/stored-value/top-up",
    response_model=TopUpView,
    status_code=201,
    description=TOP_UP_DOC,
    summary="Start a top-up with a plan (credited when the shop confirms the payment)",
    responses={404: {"description": "unknown_plan"}, 409: {"description": "payment_ref_used"}},
)
async def top_up(body: TopUpRequest, response: Response, me: MeCustomer, session: Session) -> TopUpView:
    with answering():
        async with session.begin():
            view, new = await stored_value.request_top_up(
                session,
                me.merchant_id,
                me.customer_id,
                plan_id=body.plan_id,
                pay_fen=None,
                payment_ref=body.payment_ref,
                now=clock.now(),
            )
    if not new:
        response.status_code = 200
    return top_up_view(view)
