"""Coupon templates of a merchant: create, read, list, (de)activate."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.ext.asyncio import AsyncSession

from services.coupons.adapters.tables import templates
from services.coupons.domain.templates import CouponTemplate
from shared import clock


@dataclass(frozen=True, slots=True)
class StoredTemplate:
    template_id: str
    template: CouponTemplate
    stock: int | None
    issued: int
    active: bool
    created_at: datetime

    @classmethod
    def from_row(cls, row: Any) -> StoredTemplate:
        return cls(
            row.template_id,
            CouponTemplate.model_validate_json(row.body),
            row.stock,
            row.issued,
            row.active,
            row.created_at,
        )


async def create_template(
    session: AsyncSession, merchant_id: str, template: CouponTemplate, template_id: str | None = None
) -> StoredTemplate:
    now = clock.now()
    template_id = template_id or f"tpl_{uuid.uuid4().hex[:16]}"
    await session.execute(
        templates.insert().values(
            merchant_id=merchant_id,
            template_id=template_id,
            name=template.name,
            body=template.model_dump_json(),
            stock=template.stock,
            issued=0,
            public=template.public,
            active=True,
            created_at=now,
            updated_at=now,
        )
    )
    return StoredTemplate(template_id, template, template.stock, 0, True, now)


async def get_template(session: AsyncSession, merchant_id: str, template_id: str) -> StoredTemplate | None:
    row = (
        await session.execute(
            select(templates).where(templates.c.merchant_id == merchant_id, templates.c.template_id == template_id)
        )
    ).first()
    return StoredTemplate.from_row(row) if row is not None else None


async def get_templates(session: AsyncSession, merchant_id: str, template_ids: list[str]) -> dict[str, StoredTemplate]:
    rows = await session.execute(
        select(templates).where(templates.c.merchant_id == merchant_id, templates.c.template_id.in_(template_ids))
    )
    return {r.template_id: StoredTemplate.from_row(r) for r in rows}


async def list_templates(session: AsyncSession, merchant_id: str, *, public_only: bool = False) -> list[StoredTemplate]:
    q = select(templates).where(templates.c.merchant_id == merchant_id)
    if public_only:
        q = q.where(templates.c.public.is_(True), templates.c.active.is_(True))
    return [StoredTemplate.from_row(r) for r in await session.execute(q.order_by(templates.c.created_at))]


async def set_active(session: AsyncSession, merchant_id: str, template_id: str, active: bool) -> bool:
    # An UPDATE runs on a cursor: its result is a CursorResult (AsyncSession.execute says Result).
    result = cast(
        "CursorResult[Any]",
        await session.execute(
            update(templates)
            .where(templates.c.merchant_id == merchant_id, templates.c.template_id == template_id)
            .values(active=active, updated_at=clock.now())
        ),
    )
    return bool(result.rowcount)
