"""The gateway's HTTP API: merchants (platform admin), the merchant's keys and customer tokens,
and event ingestion."""

from __future__ import annotations

import hmac
from datetime import timedelta
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fastapi import APIRouter, Body, Depends, Header, Request
from pydantic import BaseModel, Field, field_validator
from sqlalchemy.ext.asyncio import AsyncSession

from services.gateway.domain.ingestion import MAX_BATCH
from services.gateway.service_layer import handlers
from shared import metrics
from shared.events import Id
from shared.tenancy import Merchant, mint_customer_token
from shared.web import ApiError, merchant_dependency, runtime_of, session_dependency

SERVICE = "gateway"
Session = Annotated[AsyncSession, Depends(session_dependency(SERVICE))]
AdminMerchant = Annotated[Merchant, Depends(merchant_dependency(SERVICE))]

router = APIRouter()


def _pepper(request: Request) -> str:
    return runtime_of(request, SERVICE).settings.api_key_pepper.get_secret_value()


def _after_commit(request: Request) -> None:
    runtime_of(request, SERVICE).committed()


async def platform_admin(
    request: Request, x_admin_token: Annotated[str | None, Header(description="The platform admin token.")] = None
) -> None:
    expected = runtime_of(request, SERVICE).settings.admin_token.get_secret_value()
    if not x_admin_token or not hmac.compare_digest(x_admin_token.encode(), expected.encode()):
        raise ApiError(401, "unauthorized", "missing or wrong X-Admin-Token", field="header.X-Admin-Token")


# ---------------------------------------------------------------- merchants


class NewMerchant(BaseModel):
    merchant_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
    name: Annotated[str, Field(min_length=1, max_length=255)]
    timezone: str = "Asia/Shanghai"

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r}") from None
        return v


class MerchantCreated(BaseModel):
    merchant_id: str
    name: str
    timezone: str
    api_key: str = Field(description="Shown once; only its hash is stored.")
    jwt_secret: str = Field(description="Signs customer tokens (HS256). Shown once.")


@router.post(
    "/v1/platform/merchants",
    status_code=201,
    response_model=MerchantCreated,
    tags=["platform"],
    summary="Create a merchant (platform admin)",
    dependencies=[Depends(platform_admin)],
    responses={409: {"description": "merchant_id taken"}},
)
async def create_merchant(body: NewMerchant, request: Request, session: Session) -> MerchantCreated:
    try:
        creds = await handlers.create_merchant(
            session, merchant_id=body.merchant_id, name=body.name, timezone_name=body.timezone, pepper=_pepper(request)
        )
    except handlers.MerchantExists:
        raise ApiError(409, "conflict", f"merchant {body.merchant_id!r} exists", field="body.merchant_id") from None
    _after_commit(request)
    return MerchantCreated(
        merchant_id=creds.merchant_id,
        name=creds.name,
        timezone=creds.timezone,
        api_key=creds.api_key,
        jwt_secret=creds.jwt_secret,
    )


class MerchantView(BaseModel):
    merchant_id: str
    name: str
    timezone: str


@router.get("/v1/merchant", response_model=MerchantView, tags=["merchant"], summary="The calling merchant")
async def whoami(merchant: AdminMerchant) -> MerchantView:
    return MerchantView(merchant_id=merchant.merchant_id, name=merchant.name, timezone=merchant.timezone)


class NewKey(BaseModel):
    api_key: str


@router.post(
    "/v1/merchant/api-keys",
    status_code=201,
    response_model=NewKey,
    tags=["merchant"],
    summary="Add an API key (rotate: add, deploy, then revoke the old one)",
)
async def add_key(merchant: AdminMerchant, request: Request, session: Session) -> NewKey:
    key = await handlers.add_api_key(session, merchant_id=merchant.merchant_id, pepper=_pepper(request))
    _after_commit(request)
    return NewKey(api_key=key)


class RevokeKey(BaseModel):
    api_key: Annotated[str, Field(min_length=1)]


@router.post("/v1/merchant/api-keys/revoke", status_code=204, tags=["merchant"], summary="Revoke an API key")
async def revoke_key(body: RevokeKey, merchant: AdminMerchant, request: Request, session: Session) -> None:
    if not await handlers.revoke_api_key(
        session, merchant_id=merchant.merchant_id, api_key=body.api_key, pepper=_pepper(request)
    ):
        raise ApiError(404, "not_found", "no such key for this merchant", field="body.api_key")
    runtime_of(request, SERVICE).tenancy.invalidate()
    _after_commit(request)


class TokenRequest(BaseModel):
    customer_id: Id
    ttl_seconds: Annotated[int, Field(ge=60, le=30 * 86400)] = 7200


class TokenResponse(BaseModel):
    token: str
    token_type: Literal["Bearer"] = "Bearer"
    expires_in: int


@router.post(
    "/v1/customer-tokens",
    response_model=TokenResponse,
    tags=["merchant"],
    summary="Mint a customer token for the mini-program (the shop backend may also sign its own)",
)
async def customer_token(body: TokenRequest, merchant: AdminMerchant) -> TokenResponse:
    token = mint_customer_token(
        merchant.merchant_id, body.customer_id, merchant.jwt_secret, ttl=timedelta(seconds=body.ttl_seconds)
    )
    return TokenResponse(token=token, expires_in=body.ttl_seconds)


# ---------------------------------------------------------------- ingestion


class EventResult(BaseModel):
    index: int
    event_id: str | None
    status: Literal["accepted", "duplicate", "rejected"]
    reason: str | None = None
    field: str | None = None


class IngestResponse(BaseModel):
    accepted: int
    duplicates: int
    rejected: int
    results: list[EventResult]


_EXAMPLE = [
    {
        "event_id": "6f1c2d3e-0000-4000-8000-000000000001",
        "type": "order.paid",
        "merchant_id": "demo",
        "customer_id": "u-42",
        "occurred_at": "2026-11-01T10:00:00+08:00",
        "data": {
            "order_id": "o-9",
            "amount_fen": 8000,
            "items": [{"sku": "milk-900g", "category": "milk-powder", "quantity": 1, "amount_fen": 8000}],
            "coupon_ids": [],
        },
    }
]


@router.post(
    "/v1/events",
    response_model=IngestResponse,
    tags=["events"],
    summary="Send shop events (up to 1,000 per call); idempotent by event_id",
)
async def post_events(
    merchant: AdminMerchant,
    request: Request,
    session: Session,
    events: Annotated[
        list[Any],
        Body(
            min_length=1,
            max_length=MAX_BATCH,
            examples=[_EXAMPLE],
            description="A JSON array of event envelopes (see /asyncapi.json).",
        ),
    ],
) -> IngestResponse:
    outcomes = await handlers.ingest(session, merchant.merchant_id, events)
    counts = {"accepted": 0, "duplicate": 0, "rejected": 0}
    for o in outcomes:
        counts[o.status] += 1
    for status, n in counts.items():
        if n:
            metrics.INGESTED.labels(status).inc(n)
    if counts["accepted"]:
        _after_commit(request)
    return IngestResponse(
        accepted=counts["accepted"],
        duplicates=counts["duplicate"],
        rejected=counts["rejected"],
        results=[
            EventResult(index=o.index, event_id=o.event_id, status=o.status, reason=o.reason, field=o.field)
            for o in outcomes
        ],
    )
