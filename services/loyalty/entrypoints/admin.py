"""Loyalty for the merchant's operators and backend (``X-Api-Key``): rules, manual adjustments
(audited), bonuses the shop reports, one customer's points and their reconciliation, the liability
report with the expiry forecast, the points mall's items, top-up plans, and stored-value payments
(top-ups confirmed by the shop, spends and refunds). Translate, call, answer."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import AwareDatetime, BaseModel, Field, model_validator

from services.loyalty.domain.common import BonusEvent
from services.loyalty.domain.redemption import MallItem
from services.loyalty.domain.stored_value import TopUpPlan
from services.loyalty.entrypoints.common import (
    AdminMerchant,
    AwardView,
    MallItemView,
    OperatorEntryView,
    OperatorHistoryView,
    PlanView,
    PointsView,
    PositiveFen,
    Session,
    SignedPoints,
    StoredValueView,
    Text,
    TopUpView,
    answering,
    committed,
    entry_view,
    item_view,
    plan_view,
    points_view,
    reads_of,
    stored_value_view,
    top_up_view,
)
from services.loyalty.service_layer import catalogue, reads, spending, stored_value
from services.loyalty.service_layer import rules as rules_svc
from services.loyalty.service_layer.rules import LoyaltyRules, in_force
from shared import clock
from shared.events import Id
from shared.web import ApiError

router = APIRouter(tags=["loyalty: merchant"])
CustomerId = Annotated[Id, Path(description="The shop's customer id.")]


# ---------------------------------------------------------------- rules


class RulesView(BaseModel):
    version: int = Field(description="0: the defaults, never saved.")
    rules: LoyaltyRules


@router.get("/v1/loyalty/rules", response_model=RulesView, summary="The loyalty rules in force")
async def get_rules(merchant: AdminMerchant, session: Session) -> RulesView:
    found = await in_force(session, merchant.merchant_id)
    return RulesView(version=found.version, rules=found.rules)


RULES_DOC = """Earning (`earn`: rate with its rounding, bonuses and their triggers, daily cap, return
window), the ledger (`ledger`: expiry term, debt policy, expiry notice days), the checkout offset
(`offset`) and member levels (`levels`, or null for none), validated as a whole and saved as a new
version. New rules apply to what happens from now on: points already earned keep their expiry;
members keep their level until their next earning or review."""


@router.put("/v1/loyalty/rules", response_model=RulesView, summary="Replace the loyalty rules", description=RULES_DOC)
async def put_rules(body: LoyaltyRules, request: Request, merchant: AdminMerchant, session: Session) -> RulesView:
    async with session.begin():
        version = await rules_svc.save(session, merchant.merchant_id, body)
    reads_of(request).rules.invalidate(merchant.merchant_id)
    return RulesView(version=version, rules=body)


# ---------------------------------------------------------------- adjustments, debt, bonuses


class AdjustmentRequest(BaseModel):
    customer_id: Id
    points: SignedPoints
    reason: Annotated[str, Field(min_length=1, max_length=500)]
    operator: Text = Field(description="Who makes the adjustment (kept on every entry it writes).")
    adjustment_id: Id | None = Field(None, description="Your idempotency key: a second call with it is refused.")


class AdjustmentView(BaseModel):
    adjustment_id: str
    customer_id: str
    points: int
    balance: int
    entries: list[dict[str, object]]


ADJUST_DOC = """Positive: a new lot, expiring like earned points (it does not repay debt). Negative:
taken first in first out, never more than the balance (409 `insufficient_points`). The reason and
the operator are kept on every entry (see the customer's history and reconciliation)."""


@router.post(
    "/v1/loyalty/adjustments",
    response_model=AdjustmentView,
    status_code=201,
    description=ADJUST_DOC,
    summary="Adjust a customer's points by hand (audited)",
    responses={
        409: {"description": "insufficient_points, already_applied"},
        422: {"description": "invalid_amount (0), reason_required"},
    },
)
async def adjust(
    body: AdjustmentRequest, request: Request, merchant: AdminMerchant, session: Session
) -> AdjustmentView:
    with answering():
        async with session.begin():
            rules = await in_force(session, merchant.merchant_id)
            done = await spending.adjust(
                session,
                rules,
                body.customer_id,
                points=body.points,
                reason=body.reason,
                operator=body.operator,
                adjustment_id=body.adjustment_id,
                now=clock.now(),
            )
    committed(request)
    return AdjustmentView(
        adjustment_id=done.adjustment_id,
        customer_id=body.customer_id,
        points=done.points,
        balance=done.balance,
        entries=[{"kind": e.kind.value, "points": e.points, "lot_id": e.lot_id} for e in done.entries],
    )


class WriteOffRequest(BaseModel):
    reason: Annotated[str, Field(min_length=1, max_length=500)]
    operator: Text


class WriteOffView(BaseModel):
    customer_id: str
    forgiven: int = Field(description="Points of debt forgiven (0: there was none).")


@router.post(
    "/v1/loyalty/customers/{customer_id}/debt/write-off",
    response_model=WriteOffView,
    summary="Forgive a customer's points debt (audited)",
)
async def write_off(
    customer_id: CustomerId, body: WriteOffRequest, merchant: AdminMerchant, session: Session
) -> WriteOffView:
    async with session.begin():
        rules = await in_force(session, merchant.merchant_id)
        forgiven = await spending.write_off_debt(
            session, rules, customer_id, reason=body.reason, operator=body.operator, now=clock.now()
        )
    return WriteOffView(customer_id=customer_id, forgiven=forgiven)


class BonusRequest(BaseModel):
    customer_id: Id
    event: Literal["sign_in", "review"] = Field(
        description="The action (first-order and birthday-month bonuses come from order.paid)."
    )
    ref: Id | None = Field(None, description="review: the reviewed order's id (one review bonus per order).")
    occurred_at: AwareDatetime | None = Field(None, description="When it happened (default now): decides the day.")
    event_id: Id | None = Field(None, description="Your id of the action, kept as the cause.")


BONUS_DOC = """The shop has no event type for sign-ins and reviews: it reports them here. Each bonus is
awarded once per once-key (sign-in per local day, review per order); a second report answers
`awarded: false`. Growth (成长值) from the action counts as well when the merchant's levels give it."""


@router.post(
    "/v1/loyalty/bonuses",
    response_model=AwardView,
    description=BONUS_DOC,
    summary="Report a sign-in or a review: its bonus, once",
)
async def report_bonus(body: BonusRequest, request: Request, merchant: AdminMerchant, session: Session) -> AwardView:
    at = body.occurred_at or clock.now()
    with answering():
        async with session.begin():
            rules = await in_force(session, merchant.merchant_id)
            got = await spending.award(
                session,
                rules,
                body.customer_id,
                BonusEvent(body.event),
                at=at,
                ref=body.ref,
                cause=body.event_id or f"{body.event}:{body.customer_id}:{at.isoformat()}",
                now=clock.now(),
            )
    committed(request)
    if got is None:
        return AwardView(awarded=False, bonus=body.event, reason="already awarded, or the rules give no such bonus")
    return AwardView(awarded=True, bonus=got.bonus, points=got.points, growth=got.growth, capped_by=got.capped_by)


# ---------------------------------------------------------------- one customer


@router.get(
    "/v1/loyalty/customers/{customer_id}/points",
    response_model=PointsView,
    summary="A customer's points, as the customer sees them",
)
async def customer_points(customer_id: CustomerId, merchant: AdminMerchant, session: Session) -> PointsView:
    rules = await in_force(session, merchant.merchant_id)
    summary = await reads.summary(session, rules, customer_id, clock.now())
    names = {lv.code: lv.name for lv in rules.levels.levels} if rules.levels is not None else {}
    return points_view(customer_id, summary, names)


@router.get(
    "/v1/loyalty/customers/{customer_id}/points/history",
    response_model=OperatorHistoryView,
    summary="A customer's points history, newest first, with operators",
)
async def customer_history(
    customer_id: CustomerId,
    merchant: AdminMerchant,
    session: Session,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    before: Annotated[int | None, Query(ge=1)] = None,
) -> OperatorHistoryView:
    rows = await reads.history(session, merchant.merchant_id, customer_id, limit=limit, before=before)
    return OperatorHistoryView(
        customer_id=customer_id,
        entries=[entry_view(r, OperatorEntryView) for r in rows],
        next_before=rows[-1].id if len(rows) == limit else None,
    )


class DifferenceView(BaseModel):
    check: str = Field(
        description="balance_vs_lots, lot, unlotted, negative_*, debt, balance, pending, order_pending, stored_pending"
    )
    entries: int = Field(description="What the entries say.")
    record: int = Field(description="What the record (lots, account, orders) says.")
    ref: str | None


class ReconciliationView(BaseModel):
    customer_id: str
    ok: bool = Field(description="Every check holds: balance == Σ entries == Σ lots, and the rest.")
    balance: int = Field(description="Σ entries.points")
    pending: int = Field(description="Σ entries.pending")
    debt: int = Field(description="Σ entries.debt")
    lots_remaining: int = Field(description="Σ lots.remaining")
    stored: dict[str, int] = Field(description="The account row's balance, pending and debt.")
    entries: int
    lots: int
    differences: list[DifferenceView]
    stored_value_ok: bool = Field(description="The stored-value balances are the sums of their entries.")
    stored_value: dict[str, int]


@router.get(
    "/v1/loyalty/customers/{customer_id}/reconciliation",
    response_model=ReconciliationView,
    summary="Prove a customer's ledger: balance == Σ entries == Σ lots",
)
async def reconciliation(customer_id: CustomerId, merchant: AdminMerchant, session: Session) -> ReconciliationView:
    proof = await reads.reconcile(session, merchant.merchant_id, customer_id)
    sv = await stored_value.statement(session, merchant.merchant_id, customer_id, limit=0)
    t = proof.reconciliation.totals
    return ReconciliationView(
        customer_id=customer_id,
        ok=proof.ok and sv.reconciliation.ok,
        balance=t.balance,
        pending=t.pending,
        debt=t.debt,
        lots_remaining=proof.reconciliation.lots,
        stored=proof.stored,
        entries=proof.entries,
        lots=proof.lots,
        differences=[
            DifferenceView(check=d.check, entries=d.entries, record=d.record, ref=d.ref) for d in proof.differences
        ],
        stored_value_ok=sv.reconciliation.ok,
        stored_value={
            "paid_fen": sv.balance.paid_fen,
            "bonus_fen": sv.balance.bonus_fen,
            "entries_paid_fen": sv.reconciliation.entries[0],
            "entries_bonus_fen": sv.reconciliation.entries[1],
        },
    )


@router.get(
    "/v1/loyalty/customers/{customer_id}/stored-value",
    response_model=StoredValueView,
    summary="A customer's stored value and its latest changes",
)
async def customer_stored_value(customer_id: CustomerId, merchant: AdminMerchant, session: Session) -> StoredValueView:
    return stored_value_view(customer_id, await stored_value.statement(session, merchant.merchant_id, customer_id))


# ---------------------------------------------------------------- reports


class ExpiryMonth(BaseModel):
    month: str = Field(description="YYYY-MM of the points' last valid day, on the merchant's calendar.")
    points: int


class LiabilityView(BaseModel):
    customers: int = Field(description="Customers holding available or pending points.")
    points: int = Field(description="Available points outstanding.")
    pending: int = Field(description="Points pending in return windows.")
    debt: int = Field(description="Points owed back after refunds (recovered from later earnings).")
    points_value_fen: int = Field(description="What the available points are worth at the checkout offset rate.")
    expiry_forecast: list[ExpiryMonth] = Field(description="Available points by the month they expire in.")
    expired_unswept: int = Field(description="Points past their expiry that the clock has not expired yet.")
    never_expire: int
    stored_value_paid_fen: int
    stored_value_bonus_fen: int
    as_of: datetime


@router.get(
    "/v1/loyalty/reports/liability",
    response_model=LiabilityView,
    summary="Points liability and the expiry forecast; stored value outstanding",
)
async def liability(merchant: AdminMerchant, session: Session) -> LiabilityView:
    at = clock.now()
    rules = await in_force(session, merchant.merchant_id)
    r = await reads.liability(session, rules, at)
    return LiabilityView(
        customers=r.customers,
        points=r.points,
        pending=r.pending,
        debt=r.debt,
        points_value_fen=r.points_value_fen,
        expiry_forecast=[ExpiryMonth(month=m, points=n) for m, n in r.by_expiry_month],
        expired_unswept=r.expired_unswept,
        never_expire=r.never_expire,
        stored_value_paid_fen=r.stored_value_paid_fen,
        stored_value_bonus_fen=r.stored_value_bonus_fen,
        as_of=at,
    )


# ---------------------------------------------------------------- the points mall


ItemId = Annotated[str, Path(min_length=1, max_length=128)]


@router.get("/v1/loyalty/mall/items", response_model=list[MallItemView], summary="Every mall item, with live stock")
async def list_items(merchant: AdminMerchant, session: Session) -> list[MallItemView]:
    return [item_view(i) for i in await catalogue.items(session, merchant.merchant_id)]


@router.post(
    "/v1/loyalty/mall/items",
    response_model=MallItemView,
    status_code=201,
    summary="Add a mall item",
    responses={409: {"description": "item_exists"}},
)
async def create_item(body: MallItem, merchant: AdminMerchant, session: Session) -> MallItemView:
    with answering():
        async with session.begin():
            return item_view(await catalogue.create(session, merchant.merchant_id, body, clock.now()))


@router.get("/v1/loyalty/mall/items/{item_id}", response_model=MallItemView, summary="One mall item")
async def get_item(item_id: ItemId, merchant: AdminMerchant, session: Session) -> MallItemView:
    found = await spending.get_item(session, merchant.merchant_id, item_id)
    if found is None:
        raise ApiError(404, "not_found", f"no mall item {item_id!r}", field="path.item_id")
    return item_view(found)


@router.put(
    "/v1/loyalty/mall/items/{item_id}",
    response_model=MallItemView,
    summary="Replace a mall item",
    responses={404: {"description": "no such item"}, 409: {"description": "stock_below_redeemed"}},
)
async def put_item(item_id: ItemId, body: MallItem, merchant: AdminMerchant, session: Session) -> MallItemView:
    if body.item_id != item_id:
        raise ApiError(
            422,
            "validation_error",
            f"body.item_id {body.item_id!r} is not the path's {item_id!r}",
            field="body.item_id",
        )
    with answering(path=("item_id",)):
        async with session.begin():
            return item_view(await catalogue.replace(session, merchant.merchant_id, body, clock.now()))


@router.delete("/v1/loyalty/mall/items/{item_id}", status_code=204, summary="Remove a mall item")
async def delete_item(item_id: ItemId, merchant: AdminMerchant, session: Session) -> None:
    async with session.begin():
        gone = await catalogue.delete(session, merchant.merchant_id, item_id)
    if not gone:
        raise ApiError(404, "not_found", f"no mall item {item_id!r}", field="path.item_id")


# ---------------------------------------------------------------- top-up plans

PlanId = Annotated[str, Path(min_length=1, max_length=128)]


class PlanRequest(TopUpPlan):
    active: bool = True


@router.get("/v1/loyalty/stored-value/plans", response_model=list[PlanView], summary="Every top-up plan")
async def list_plans(merchant: AdminMerchant, session: Session) -> list[PlanView]:
    return [plan_view(p, a) for p, a in await stored_value.plans(session, merchant.merchant_id)]


def _plan(body: PlanRequest) -> TopUpPlan:
    return TopUpPlan(plan_id=body.plan_id, name=body.name, pay_fen=body.pay_fen, bonus_fen=body.bonus_fen)


@router.post(
    "/v1/loyalty/stored-value/plans",
    response_model=PlanView,
    status_code=201,
    summary="Add a top-up plan (充500送50)",
    responses={409: {"description": "plan_exists"}},
)
async def create_plan(body: PlanRequest, merchant: AdminMerchant, session: Session) -> PlanView:
    with answering():
        async with session.begin():
            await stored_value.save_plan(
                session, merchant.merchant_id, _plan(body), active=body.active, create=True, now=clock.now()
            )
    return plan_view(_plan(body), body.active)


@router.put("/v1/loyalty/stored-value/plans/{plan_id}", response_model=PlanView, summary="Replace a top-up plan")
async def put_plan(plan_id: PlanId, body: PlanRequest, merchant: AdminMerchant, session: Session) -> PlanView:
    if body.plan_id != plan_id:
        raise ApiError(
            422,
            "validation_error",
            f"body.plan_id {body.plan_id!r} is not the path's {plan_id!r}",
            field="body.plan_id",
        )
    with answering(path=("plan_id",)):
        async with session.begin():
            await stored_value.save_plan(
                session, merchant.merchant_id, _plan(body), active=body.active, create=False, now=clock.now()
            )
    return plan_view(_plan(body), body.active)


@router.delete("/v1/loyalty/stored-value/plans/{plan_id}", status_code=204, summary="Remove a top-up plan")
async def delete_plan(plan_id: PlanId, merchant: AdminMerchant, session: Session) -> None:
    async with session.begin():
        gone = await stored_value.delete_plan(session, merchant.merchant_id, plan_id)
    if not gone:
        raise ApiError(404, "unknown_plan", f"no top-up plan {plan_id!r}", field="path.plan_id")


# ---------------------------------------------------------------- stored value: top-ups, spends, refunds


class AdminTopUpRequest(BaseModel):
    customer_id: Id
    plan_id: Text | None = Field(None, description="A plan (its bonus applies)…")
    pay_fen: PositiveFen | None = Field(None, description="…or a plain amount, with no bonus.")
    payment_ref: Text = Field(description="The shop's payment reference: credits once.")

    @model_validator(mode="after")
    def _one_of(self) -> AdminTopUpRequest:
        if (self.plan_id is None) == (self.pay_fen is None):
            raise ValueError("give exactly one of plan_id and pay_fen")
        return self


@router.post(
    "/v1/loyalty/stored-value/top-ups",
    response_model=TopUpView,
    status_code=201,
    summary="Credit a paid top-up (the shop's backend, on its payment notification)",
    responses={404: {"description": "unknown_plan"}, 409: {"description": "payment_ref_used"}},
)
async def admin_top_up(
    body: AdminTopUpRequest, request: Request, response: Response, merchant: AdminMerchant, session: Session
) -> TopUpView:
    with answering():
        async with session.begin():
            view, new = await stored_value.request_top_up(
                session,
                merchant.merchant_id,
                body.customer_id,
                plan_id=body.plan_id,
                pay_fen=body.pay_fen,
                payment_ref=body.payment_ref,
                now=clock.now(),
            )
            view = await stored_value.confirm_top_up(session, merchant.merchant_id, view.top_up_id, clock.now())
    if not new:
        response.status_code = 200
    committed(request)
    return top_up_view(view)


TopUpId = Annotated[str, Path(min_length=1, max_length=64)]


@router.post(
    "/v1/loyalty/stored-value/top-ups/{top_up_id}/confirm",
    response_model=TopUpView,
    summary="Confirm a customer's pending top-up: its payment arrived (idempotent)",
)
async def confirm(top_up_id: TopUpId, request: Request, merchant: AdminMerchant, session: Session) -> TopUpView:
    with answering(path=("top_up_id",)):
        async with session.begin():
            view = await stored_value.confirm_top_up(session, merchant.merchant_id, top_up_id, clock.now())
    committed(request)
    return top_up_view(view)


class TopUpRefundRequest(BaseModel):
    refund_id: Id = Field(description="Your id of the refund: a second call with it changes nothing.")
    amount_fen: PositiveFen | None = Field(None, description="Default: all of the top-up that is unspent.")


@router.post(
    "/v1/loyalty/stored-value/top-ups/{top_up_id}/refunds",
    response_model=TopUpView,
    summary="Refund a top-up's unspent paid money (its bonus is forfeited in proportion)",
    responses={409: {"description": "nothing_to_refund, refund_exceeds"}},
)
async def refund_top_up(
    top_up_id: TopUpId, body: TopUpRefundRequest, request: Request, merchant: AdminMerchant, session: Session
) -> TopUpView:
    with answering(path=("top_up_id",)):
        async with session.begin():
            view = await stored_value.refund_top_up(
                session,
                merchant.merchant_id,
                top_up_id,
                refund_id=body.refund_id,
                amount_fen=body.amount_fen,
                now=clock.now(),
            )
    committed(request)
    return top_up_view(view)


class SpendRequest(BaseModel):
    customer_id: Id
    order_id: Id
    amount_fen: PositiveFen


class SpendView(BaseModel):
    order_id: str
    customer_id: str
    paid_fen: int = Field(description="Taken from the paid balance.")
    bonus_fen: int = Field(description="Taken from the bonus balance (in proportion).")
    refunded_fen: int
    balance_paid_fen: int
    balance_bonus_fen: int


def _spend_view(v: stored_value.SpendView) -> SpendView:
    return SpendView(
        order_id=v.order_id,
        customer_id=v.customer_id,
        paid_fen=v.paid_fen,
        bonus_fen=v.bonus_fen,
        refunded_fen=v.refunded_fen,
        balance_paid_fen=v.balance.paid_fen,
        balance_bonus_fen=v.balance.bonus_fen,
    )


@router.post(
    "/v1/loyalty/stored-value/spends",
    response_model=SpendView,
    status_code=201,
    summary="Pay (part of) an order from stored value",
    responses={409: {"description": "insufficient_balance, spend_exists"}},
)
async def spend(
    body: SpendRequest, request: Request, response: Response, merchant: AdminMerchant, session: Session
) -> SpendView:
    with answering():
        async with session.begin():
            v = await stored_value.spend(
                session,
                merchant.merchant_id,
                body.customer_id,
                order_id=body.order_id,
                amount_fen=body.amount_fen,
                now=clock.now(),
            )
    if v.replayed:
        response.status_code = 200
    committed(request)
    return _spend_view(v)


class SpendRefundRequest(BaseModel):
    refund_id: Id = Field(description="Your id of the refund: a second call with it changes nothing.")
    amount_fen: PositiveFen


@router.post(
    "/v1/loyalty/stored-value/spends/{order_id}/refunds",
    response_model=SpendView,
    summary="Give back (part of) an order's stored-value payment, in its paid/bonus split",
    responses={404: {"description": "no stored-value payment of the order"}, 409: {"description": "refund_exceeds"}},
)
async def refund_spend(
    order_id: Annotated[Id, Path()],
    body: SpendRefundRequest,
    request: Request,
    merchant: AdminMerchant,
    session: Session,
) -> SpendView:
    with answering(path=("order_id",)):
        async with session.begin():
            v = await stored_value.refund_spend(
                session,
                merchant.merchant_id,
                order_id,
                refund_id=body.refund_id,
                amount_fen=body.amount_fen,
                now=clock.now(),
            )
    committed(request)
    return _spend_view(v)
