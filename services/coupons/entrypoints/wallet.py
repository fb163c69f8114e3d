"""The wallet over HTTP: the customer's own calls from the mini-program (customer token), and the
merchant's view of one customer's coupons and the wallet policy (API key). Translate, call,
answer: the rules are in service_layer.wallet and the domain.

Another customer's coupon answers 404 (never 403): whether a coupon id exists is nobody else's
business, so a foreign id and a made-up one look the same."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar

import orjson
from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.ext.asyncio import AsyncSession

from services.coupons.domain.cart import Cart
from services.coupons.service_layer import wallet
from shared import clock
from shared.events import Id
from shared.tenancy import Customer, Merchant
from shared.web import ApiError, customer_dependency, merchant_dependency, runtime_of, session_dependency

SERVICE = "coupons"
Session = Annotated[AsyncSession, Depends(session_dependency(SERVICE))]
AdminMerchant = Annotated[Merchant, Depends(merchant_dependency(SERVICE))]
MeCustomer = Annotated[Customer, Depends(customer_dependency(SERVICE))]

router = APIRouter(tags=["coupons: wallet"])

WalletState = Literal["available", "locked", "used", "expired"]
AnyState = wallet.StateName


# ---------------------------------------------------------------- per app: the template cache and a read gate


class _Reads:
    """Per app (apps in one process, as in tests, share nothing): parsed templates, and a gate
    that keeps concurrent reads within the pool's steady size (past it the pool opens and closes
    overflow connections, a new PostgreSQL backend per request under load)."""

    def __init__(self, pool_size: int):
        self.cache = wallet.TemplateCache()
        self.gate = asyncio.Semaphore(max(1, pool_size))


def _reads(request: Request) -> _Reads:
    state = request.app.state
    reads: _Reads | None = getattr(state, "coupons_wallet_reads", None)
    if reads is None:
        engine = runtime_of(request, SERVICE).engine
        size = engine.pool.size() if engine is not None and hasattr(engine.pool, "size") else 5
        reads = state.coupons_wallet_reads = _Reads(size)
    return reads


_FIELDS = {
    "template_id": "body.template_id",
    "coupon_id": "path.coupon_id",
    "cart": "body.cart",
    "order_id": "body.order_id",
}


@contextmanager
def _answering() -> Iterator[None]:
    """Refusals of the service layer as 4xx naming the field at fault."""
    try:
        yield
    except wallet.WalletError as e:
        raise ApiError(e.status, e.code, e.message, field=_FIELDS.get(e.field or "", e.field)) from None
    except wallet.ConcurrentChange:
        raise ApiError(
            409, "concurrent_change", "the coupon changed while this call ran; try again", field="path.coupon_id"
        ) from None


# ---------------------------------------------------------------- views


class CouponView(BaseModel):
    coupon_id: str
    template_id: str
    name: str = Field(description="The template's name, as the customer sees it.")
    kind: dict[str, Any] = Field(description="What it gives: {type: percent|amount_off|no_threshold|free_shipping, …}.")
    scope: Any = Field(description='"all", {"categories": [...]} or {"skus": [...]}')
    face_value_fen: int | None = Field(description="The most it takes off; null when only the cart bounds it.")
    weekdays: list[int] | None = Field(description="ISO weekdays it can be used on; null: every day.")
    hours: list[tuple[int, int]] | None = Field(
        description="Local [start, end) hours it can be used in; null: all day."
    )
    state: AnyState = Field(description="As of now: an available coupon past its expiry shows as expired.")
    starts_at: datetime
    expires_at: datetime
    issued_at: datetime
    order_id: str | None = Field(description="The order it is locked to or was used on.")
    used_at: datetime | None
    discount_fen: int | None = Field(description="Locked: the discount priced at lock time; used: what it took off.")


class CustomerCouponView(CouponView):
    rule_id: str | None = Field(description="The campaign rule that issued it; null when claimed.")
    locked_at: datetime | None
    order_amount_fen: int | None = Field(description="Used: the paid amount of the order.")


class WalletView(BaseModel):
    customer_id: str
    coupons: list[CouponView]
    has_more: bool = Field(description="More coupons in these states than `limit`; narrow by state.")


class RefusalView(BaseModel):
    order_id: str
    coupon_id: str
    code: str = Field(
        description="already_used, locked_to_other_order, expired, not_yours, revoked, out_of_scope, "
        "below_threshold, outside_hours, stacking_conflict, unknown_coupon, …"
    )
    message: str
    refused_at: datetime


class CustomerWalletView(BaseModel):
    customer_id: str
    coupons: list[CustomerCouponView]
    has_more: bool
    refused_redemptions: list[RefusalView] = Field(
        description="Coupons this customer's paid orders named and that were not redeemed (latest 50)."
    )


_V = TypeVar("_V", bound=CouponView)


def _view(c: wallet.WalletCoupon, cls: type[_V]) -> _V:
    t = c.template.template
    extra: dict[str, Any] = {}
    if cls is CustomerCouponView:
        extra = {"rule_id": c.rule_id, "locked_at": c.locked_at, "order_amount_fen": c.order_amount_fen}
    return cls(
        coupon_id=c.coupon_id,
        template_id=c.template.template_id,
        name=c.template.name,
        kind=c.template.kind,
        scope=c.template.scope,
        face_value_fen=c.template.face_value_fen,
        weekdays=t.weekdays,
        hours=t.hours,
        state=c.state,
        starts_at=c.starts_at,
        expires_at=c.expires_at,
        issued_at=c.issued_at,
        order_id=c.order_id,
        used_at=c.used_at,
        discount_fen=c.discount_fen,
        **extra,
    )


# ---------------------------------------------------------------- the customer's calls

StateQuery = Annotated[
    WalletState | None,
    Query(description="Only this state; default: all four, grouped in the order available, locked, used, expired."),
]
LimitQuery = Annotated[int, Query(ge=1, le=500)]
CouponId = Annotated[Id, Path(description="The coupon's id (cpn_…).")]


def _fast_view(c: wallet.WalletCoupon) -> dict[str, Any]:
    """CouponView as a plain dict, for the hot read (the same fields; see my_coupons)."""
    t = c.template
    return {
        "coupon_id": c.coupon_id,
        "template_id": t.template_id,
        "name": t.name,
        "kind": t.kind,
        "scope": t.scope,
        "face_value_fen": t.face_value_fen,
        "weekdays": t.template.weekdays,
        "hours": t.template.hours,
        "state": c.state,
        "starts_at": c.starts_at,
        "expires_at": c.expires_at,
        "issued_at": c.issued_at,
        "order_id": c.order_id,
        "used_at": c.used_at,
        "discount_fen": c.discount_fen,
    }


@router.get(
    "/v1/me/coupons",
    response_model=WalletView,
    summary="My coupons (customer token)",
    description="Available (soonest expiry first), locked to an order being placed, used (latest first) "
    "and expired (latest first). An available coupon whose window has ended shows as expired.",
)
async def my_coupons(request: Request, me: MeCustomer, state: StateQuery = None, limit: LimitQuery = 200) -> Response:
    reads = _reads(request)
    engine = runtime_of(request, SERVICE).engine
    assert engine is not None
    async with reads.gate, engine.connect() as conn:  # a connection, not a session: one statement
        found, more = await wallet.list_wallet(
            conn,
            reads.cache,
            me.merchant_id,
            me.customer_id,
            now=clock.now(),
            states=(state,) if state else wallet.WALLET_STATES,
            limit=limit,
        )
    # The busiest call of the wallet: encoded straight from the values the query returned (the
    # shape is WalletView's, checked by the tests) rather than built as models and validated again.
    body = {"customer_id": me.customer_id, "coupons": [_fast_view(c) for c in found], "has_more": more}
    return Response(orjson.dumps(body, option=orjson.OPT_UTC_Z), media_type="application/json")


class ClaimRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    template_id: Id


@router.post(
    "/v1/me/coupons/claim",
    response_model=CouponView,
    status_code=201,
    summary="Claim a public coupon (customer token)",
    responses={
        404: {"description": "no such public template"},
        409: {"description": "out_of_stock, limit_reached, inactive or template_expired"},
    },
)
async def claim(body: ClaimRequest, request: Request, me: MeCustomer, session: Session) -> CouponView:
    now = clock.now()
    with _answering():
        async with session.begin():
            coupon_id = await wallet.claim(session, me.merchant_id, me.customer_id, body.template_id, now=now)
    runtime_of(request, SERVICE).committed()
    found = await wallet.get_coupon(session, _reads(request).cache, me.merchant_id, coupon_id, now)
    assert found is not None
    return _view(found, CouponView)


class PricedCoupon(BaseModel):
    coupon_id: str
    template_id: str
    name: str
    kind: str
    expires_at: datetime
    applies: bool
    reason: str | None = Field(
        description="Why not: not_yet_valid, outside_weekdays, outside_hours, out_of_scope, "
        "below_threshold, not_nth_order_today, nothing_to_discount."
    )
    message: str | None
    discount_fen: int = Field(description="What it takes off this cart on its own.")
    on: Literal["goods", "shipping"]


class PickView(BaseModel):
    coupon_id: str
    discount_fen: int
    on: Literal["goods", "shipping"]


class BestView(BaseModel):
    coupon_ids: list[str]
    picks: list[PickView] = Field(description="Each chosen coupon's share when used together.")
    goods_discount_fen: int
    shipping_discount_fen: int
    total_discount_fen: int


class ApplicableView(BaseModel):
    coupons: list[PricedCoupon] = Field(description="Every coupon I can use now: those that apply first, best first.")
    best: BestView = Field(description="The combination that takes the most off, within the stacking rules.")
    goods_fen: int
    shipping_fen: int
    payable_fen: int = Field(description="Goods plus shipping, less the best combination.")


@router.post(
    "/v1/me/coupons/applicable",
    response_model=ApplicableView,
    summary="Which of my coupons apply to this cart, and the best combination (customer token)",
)
async def applicable(cart: Cart, request: Request, me: MeCustomer) -> ApplicableView:
    reads = _reads(request)
    engine = runtime_of(request, SERVICE).engine
    assert engine is not None
    async with reads.gate, engine.connect() as conn:
        priced, best = await wallet.applicable(
            conn, reads.cache, me.merchant_id, me.customer_id, cart, now=clock.now(), tz=me.merchant.timezone
        )
    return ApplicableView(
        coupons=[
            PricedCoupon(
                coupon_id=p.coupon.coupon_id,
                template_id=p.coupon.template.template_id,
                name=p.coupon.template.name,
                kind=p.coupon.template.template.kind.type,
                expires_at=p.coupon.expires_at,
                applies=p.applied.ok,
                reason=None if p.applied.reason is None else str(p.applied.reason),
                message=p.applied.message or None,
                discount_fen=p.applied.discount_fen,
                on=p.applied.on,
            )
            for p in priced
        ],
        best=BestView(
            coupon_ids=list(best.coupon_ids),
            picks=[PickView(coupon_id=p.coupon_id, discount_fen=p.discount_fen, on=p.on) for p in best.chosen],
            goods_discount_fen=best.goods_discount_fen,
            shipping_discount_fen=best.shipping_discount_fen,
            total_discount_fen=best.total_discount_fen,
        ),
        goods_fen=cart.goods_fen,
        shipping_fen=cart.shipping_fen,
        payable_fen=cart.goods_fen + cart.shipping_fen - best.total_discount_fen,
    )


class LockRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    order_id: Id = Field(description="The shop's id of the order being placed.")
    cart: Cart


LOCK_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {
        "description": "not a coupon in my wallet (another customer's answers the same), or another customer's order"
    },
    409: {"description": "already_used, locked_to_other_order, expired, revoked; order_paid, order_cancelled"},
    422: {
        "description": "it does not apply to the cart: out_of_scope, below_threshold, outside_weekdays, "
        "outside_hours, not_yet_valid, not_nth_order_today, nothing_to_discount, stacking_conflict"
    },
}


@router.post(
    "/v1/me/coupons/{coupon_id}/lock",
    response_model=CouponView,
    responses=LOCK_ERRORS,
    summary="Hold a coupon for an order being placed, priced on its cart (customer token)",
    description="Locking again to the same order changes nothing. The coupon is used when the order is paid "
    "(order.paid naming it), and comes back when the order is cancelled or released here.",
)
async def lock(
    coupon_id: CouponId, body: LockRequest, request: Request, me: MeCustomer, session: Session
) -> CouponView:
    now = clock.now()
    cache = _reads(request).cache
    with _answering():
        async with session.begin():
            await wallet.lock(
                session,
                cache,
                me.merchant_id,
                me.customer_id,
                coupon_id,
                body.order_id,
                body.cart,
                now=now,
                tz=me.merchant.timezone,
            )
    found = await wallet.get_coupon(session, cache, me.merchant_id, coupon_id, now)
    assert found is not None
    return _view(found, CouponView)


class ReleaseRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    order_id: Id


@router.post(
    "/v1/me/coupons/{coupon_id}/release",
    response_model=CouponView,
    responses={404: {"description": "not a coupon in my wallet"}},
    summary="Give up the order: a coupon locked to it returns to my wallet (customer token)",
    description="A coupon not locked to that order is left as it is.",
)
async def release(
    coupon_id: CouponId, body: ReleaseRequest, request: Request, me: MeCustomer, session: Session
) -> CouponView:
    now = clock.now()
    with _answering():
        async with session.begin():
            await wallet.unlock(session, me.merchant_id, me.customer_id, coupon_id, body.order_id, now=now)
    runtime_of(request, SERVICE).committed()
    found = await wallet.get_coupon(session, _reads(request).cache, me.merchant_id, coupon_id, now)
    assert found is not None
    return _view(found, CouponView)


# ---------------------------------------------------------------- the merchant's calls


@router.get(
    "/v1/customers/{customer_id}/coupons",
    response_model=CustomerWalletView,
    summary="One customer's coupons, and the redemptions refused for them (admin, for support staff)",
)
async def customer_coupons(
    customer_id: Annotated[Id, Path()],
    request: Request,
    merchant: AdminMerchant,
    session: Session,
    state: Annotated[AnyState | None, Query()] = None,
    limit: LimitQuery = 200,
) -> CustomerWalletView:
    states = (state,) if state else (*wallet.WALLET_STATES, "revoked")
    found, more = await wallet.list_wallet(
        session, _reads(request).cache, merchant.merchant_id, customer_id, now=clock.now(), states=states, limit=limit
    )
    refused = await wallet.refusals_of(session, merchant.merchant_id, customer_id)
    return CustomerWalletView(
        customer_id=customer_id,
        coupons=[_view(c, CustomerCouponView) for c in found],
        has_more=more,
        refused_redemptions=[
            RefusalView(
                order_id=r.order_id, coupon_id=r.coupon_id, code=r.code, message=r.message, refused_at=r.refused_at
            )
            for r in refused
        ],
    )


class PolicyBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    refund_policy: Literal["restore", "keep_used"] = Field(
        wallet.DEFAULT_REFUND_POLICY,
        description="On a full refund, put the coupons used on the order back in the wallet (restore) or not.",
    )
    expiring_days_before: Annotated[int, Field(strict=True, ge=1, le=30)] = Field(
        wallet.DEFAULT_EXPIRING_DAYS, description="coupon.expiring is sent this many days before a coupon expires."
    )


@router.get("/v1/coupons/policy", response_model=PolicyBody, summary="The wallet policy (admin)")
async def get_policy(merchant: AdminMerchant, session: Session) -> PolicyBody:
    p = (await wallet.policies(session, [merchant.merchant_id]))[merchant.merchant_id]
    return PolicyBody(refund_policy=p.refund_policy, expiring_days_before=p.expiring_days_before)


@router.put("/v1/coupons/policy", response_model=PolicyBody, summary="Set the wallet policy (admin)")
async def put_policy(body: PolicyBody, merchant: AdminMerchant, session: Session) -> PolicyBody:
    async with session.begin():
        await wallet.save_policy(
            session, merchant.merchant_id, wallet.Policy(body.refund_policy, body.expiring_days_before)
        )
    return body
