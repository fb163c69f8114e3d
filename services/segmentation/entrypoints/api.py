"""Segmentation's HTTP API. Translate, call, answer: no rules here."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated

from fastapi import APIRouter, Depends, Path
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.segmentation.adapters.tables import customers
from services.segmentation.domain.stats import recency_days
from shared.events import Id
from shared.tenancy import Customer, Merchant
from shared.web import ApiError, customer_dependency, merchant_dependency, session_dependency

SERVICE = "segmentation"
Session = Annotated[AsyncSession, Depends(session_dependency(SERVICE))]
AdminMerchant = Annotated[Merchant, Depends(merchant_dependency(SERVICE))]
MeCustomer = Annotated[Customer, Depends(customer_dependency(SERVICE))]

router = APIRouter(tags=["segmentation"])


class CustomerRfm(BaseModel):
    merchant_id: str
    customer_id: str
    recency_days: int | None
    frequency: int
    monetary_fen: int
    first_order_at: datetime | None
    last_order_at: datetime | None


async def _load(session: AsyncSession, merchant_id: str, customer_id: str, tz: str) -> CustomerRfm:
    row = (await session.execute(select(customers).where(
        customers.c.merchant_id == merchant_id, customers.c.customer_id == customer_id))).first()
    if row is None:
        raise ApiError(404, "not_found", f"no customer {customer_id!r} with paid orders", field="path.customer_id")
    return CustomerRfm(
        merchant_id=merchant_id, customer_id=customer_id,
        recency_days=recency_days(row.last_order_at, datetime.now(timezone.utc), tz),
        frequency=row.paid_orders, monetary_fen=row.paid_amount_fen,
        first_order_at=row.first_order_at, last_order_at=row.last_order_at)


@router.get("/v1/customers/{customer_id}/rfm", response_model=CustomerRfm,
            summary="One customer's R, F and M (admin)", responses={404: {"description": "no such customer"}})
async def get_rfm(customer_id: Annotated[Id, Path()], merchant: AdminMerchant, session: Session) -> CustomerRfm:
    return await _load(session, merchant.merchant_id, customer_id, merchant.timezone)


@router.get("/v1/me/rfm", response_model=CustomerRfm, summary="My own R, F and M (customer token)")
async def get_my_rfm(me: MeCustomer, session: Session) -> CustomerRfm:
    return await _load(session, me.merchant_id, me.customer_id, me.merchant.timezone)
