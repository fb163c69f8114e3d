"""Audiences: query customers by segment, tags, R/F/M, dates, region, categories and behaviour;
save a query and reference it by id (the other services fetch its members over HTTP)."""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any, cast

import orjson
from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field
from sqlalchemy import func, select
from sqlalchemy.engine import CursorResult
from sqlalchemy.ext.asyncio import AsyncSession

from services.segmentation.adapters.audience_sql import Compiler
from services.segmentation.adapters.tables import audiences, tag_rules
from services.segmentation.domain.audience import Filter, depth
from services.segmentation.service_layer.segments import custom_requested
from shared import clock
from shared.db import bulk_insert
from shared.tenancy import Merchant
from shared.web import ApiError, merchant_dependency, runtime_of, session_dependency

SERVICE = "segmentation"
Session = Annotated[AsyncSession, Depends(session_dependency(SERVICE))]
AdminMerchant = Annotated[Merchant, Depends(merchant_dependency(SERVICE))]
MAX_PAGE = 1000
MAX_DEPTH = 12

router = APIRouter(tags=["audiences"])


class AudienceQuery(BaseModel):
    filter: Filter
    limit: Annotated[int, Field(ge=1, le=MAX_PAGE)] = 100
    after: str | None = Field(None, description="The next_after of the previous page (pages are by customer_id).")
    customer_ids: list[Annotated[str, Field(min_length=1, max_length=128)]] | None = Field(
        None, max_length=MAX_PAGE, description="Only among these customers (another service checking membership)."
    )


class Member(BaseModel):
    customer_id: str
    tier: str | None
    cell: str | None
    rfm_class: str | None
    frequency: int | None
    monetary_fen: int | None
    last_order_at: datetime | None
    region: str | None
    tags: list[str]


class AudiencePage(BaseModel):
    count: int = Field(description="Customers matching, in all.")
    customers: list[Member]
    next_after: str | None = Field(description="Pass as `after` for the next page; null on the last.")


def _compiler(merchant: Merchant, f: Any) -> Compiler:
    """Built for this filter: it ranges over the narrowest table the filter allows."""
    _check(f)
    return Compiler(merchant.merchant_id, clock.now(), merchant.timezone, for_filter=f)


def _check(f: Any) -> None:
    if depth(f) > MAX_DEPTH:
        raise ApiError(422, "validation_error", f"filter nested deeper than {MAX_DEPTH} levels", field="body.filter")


def _member(r: Any) -> Member:
    tags = orjson.loads(r.tags) if r.tags else []
    return Member(
        customer_id=r.customer_id,
        tier=r.tier,
        cell=r.cell,
        rfm_class=r.rfm_class,
        frequency=r.frequency,
        monetary_fen=r.monetary_fen,
        last_order_at=r.last_order_at,
        region=r.region,
        tags=tags,
    )


async def run_query(
    session: AsyncSession, comp: Compiler, f: Any, limit: int, after: str | None, only: list[str] | None = None
) -> AudiencePage:
    _check(f)
    among = [] if only is None else [comp.u.c.customer_id.in_(only)]
    count = (
        await session.execute(select(func.count()).select_from(comp.select(f).where(*among).subquery()))
    ).scalar_one()
    q = comp.rows(f).where(*among)
    if after is not None:
        q = q.where(comp.u.c.customer_id > after)
    rows = (await session.execute(q.order_by(comp.u.c.customer_id).limit(limit + 1))).all()
    page = [_member(r) for r in rows[:limit]]
    return AudiencePage(count=count, customers=page, next_after=page[-1].customer_id if len(rows) > limit else None)


async def stream_csv(sessions: Any, comp: Compiler, f: Any) -> AsyncIterator[bytes]:
    """Every member, page by page (keyset on customer_id), so memory stays flat at any size."""
    header = [
        "customer_id",
        "tier",
        "cell",
        "rfm_class",
        "frequency",
        "monetary_fen",
        "last_order_at",
        "region",
        "tags",
    ]
    yield ("\ufeff" + ",".join(header) + "\n").encode()  # BOM: Excel in zh-CN opens UTF-8 correctly
    after: str | None = None
    while True:
        async with sessions() as session:
            q = comp.rows(f)
            if after is not None:
                q = q.where(comp.u.c.customer_id > after)
            rows = (await session.execute(q.order_by(comp.u.c.customer_id).limit(5000))).all()
        if not rows:
            return
        buf = io.StringIO()
        w = csv.writer(buf)
        for r in rows:
            m = _member(r)
            w.writerow(
                [
                    m.customer_id,
                    m.tier or "",
                    m.cell or "",
                    m.rfm_class or "",
                    "" if m.frequency is None else m.frequency,
                    "" if m.monetary_fen is None else m.monetary_fen,
                    m.last_order_at.isoformat() if m.last_order_at else "",
                    m.region or "",
                    " ".join(m.tags),
                ]
            )
        yield buf.getvalue().encode()
        after = rows[-1].customer_id


@router.post(
    "/v1/audiences/query", response_model=AudiencePage, summary="Count and page through the customers a filter selects"
)
async def query(body: AudienceQuery, merchant: AdminMerchant, session: Session) -> AudiencePage:
    return await run_query(
        session, _compiler(merchant, body.filter), body.filter, body.limit, body.after, body.customer_ids
    )


class CsvQuery(BaseModel):
    filter: Filter


@router.post(
    "/v1/audiences/query.csv",
    summary="Every customer a filter selects, streamed as CSV",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/csv": {}}}},
)
async def query_csv(body: CsvQuery, request: Request, merchant: AdminMerchant) -> StreamingResponse:
    _check(body.filter)
    sessions = runtime_of(request, SERVICE).sessions
    return StreamingResponse(
        stream_csv(sessions, _compiler(merchant, body.filter), body.filter),
        media_type="text/csv",
        headers={"Content-Disposition": 'attachment; filename="audience.csv"'},
    )


class NewAudience(BaseModel):
    name: Annotated[str, Field(min_length=1, max_length=255)]
    filter: Filter


class SavedAudience(BaseModel):
    audience_id: str
    name: str
    filter: dict[str, Any]
    created_at: datetime
    updated_at: datetime


def _saved(row: Any) -> SavedAudience:
    return SavedAudience(
        audience_id=row.audience_id,
        name=row.name,
        filter=orjson.loads(row.filter),
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


async def _load(session: AsyncSession, merchant_id: str, audience_id: str) -> Any:
    row = (
        await session.execute(
            select(audiences).where(audiences.c.merchant_id == merchant_id, audiences.c.audience_id == audience_id)
        )
    ).first()
    if row is None:
        raise ApiError(404, "not_found", f"no audience {audience_id!r}", field="path.audience_id")
    return row


@router.post("/v1/audiences", response_model=SavedAudience, status_code=201, summary="Save an audience")
async def save(body: NewAudience, merchant: AdminMerchant, session: Session) -> SavedAudience:
    _check(body.filter)
    now = clock.now()
    audience_id = str(uuid.uuid4())
    async with session.begin():
        await session.execute(
            audiences.insert().values(
                merchant_id=merchant.merchant_id,
                audience_id=audience_id,
                name=body.name,
                filter=body.filter.model_dump_json(by_alias=True, exclude_none=True),
                created_at=now,
                updated_at=now,
            )
        )
    return _saved(await _load(session, merchant.merchant_id, audience_id))


@router.get("/v1/audiences", response_model=list[SavedAudience], summary="The merchant's saved audiences")
async def list_saved(merchant: AdminMerchant, session: Session) -> list[SavedAudience]:
    rows = await session.execute(
        select(audiences).where(audiences.c.merchant_id == merchant.merchant_id).order_by(audiences.c.created_at)
    )
    return [_saved(r) for r in rows]


AudienceId = Annotated[str, Path(min_length=1, max_length=36)]


@router.get("/v1/audiences/{audience_id}", response_model=SavedAudience, summary="One saved audience")
async def get_saved(audience_id: AudienceId, merchant: AdminMerchant, session: Session) -> SavedAudience:
    return _saved(await _load(session, merchant.merchant_id, audience_id))


@router.put("/v1/audiences/{audience_id}", response_model=SavedAudience, summary="Change a saved audience")
async def update_saved(
    audience_id: AudienceId, body: NewAudience, merchant: AdminMerchant, session: Session
) -> SavedAudience:
    _check(body.filter)
    async with session.begin():
        await _load(session, merchant.merchant_id, audience_id)
        await session.execute(
            audiences.update()
            .where(audiences.c.merchant_id == merchant.merchant_id, audiences.c.audience_id == audience_id)
            .values(
                name=body.name,
                filter=body.filter.model_dump_json(by_alias=True, exclude_none=True),
                updated_at=clock.now(),
            )
        )
    return _saved(await _load(session, merchant.merchant_id, audience_id))


@router.delete("/v1/audiences/{audience_id}", status_code=204, summary="Delete a saved audience")
async def delete_saved(audience_id: AudienceId, merchant: AdminMerchant, session: Session) -> None:
    async with session.begin():
        await _load(session, merchant.merchant_id, audience_id)
        await session.execute(
            audiences.delete().where(
                audiences.c.merchant_id == merchant.merchant_id, audiences.c.audience_id == audience_id
            )
        )


@router.get(
    "/v1/audiences/{audience_id}/members",
    response_model=AudiencePage,
    summary="A page of a saved audience's members, as of now (for the other services)",
)
async def members(
    audience_id: AudienceId,
    merchant: AdminMerchant,
    session: Session,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    after: Annotated[str | None, Query()] = None,
) -> AudiencePage:
    row = await _load(session, merchant.merchant_id, audience_id)
    f = AudienceQuery.model_validate({"filter": orjson.loads(row.filter)}).filter
    return await run_query(session, _compiler(merchant, f), f, limit, after)


@router.get(
    "/v1/audiences/{audience_id}/members.csv",
    summary="All of a saved audience's members as CSV",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/csv": {}}}},
)
async def members_csv(
    audience_id: AudienceId, request: Request, merchant: AdminMerchant, session: Session
) -> StreamingResponse:
    row = await _load(session, merchant.merchant_id, audience_id)
    await session.rollback()  # end this read before streaming: the stream reads with sessions of its own
    f = AudienceQuery.model_validate({"filter": orjson.loads(row.filter)}).filter
    sessions = runtime_of(request, SERVICE).sessions
    return StreamingResponse(
        stream_csv(sessions, _compiler(merchant, f), f),
        media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="audience-{audience_id}.csv"'},
    )


# ---------------------------------------------------------------- custom tags


class TagRule(BaseModel):
    filter: Filter


class TagRuleView(BaseModel):
    name: str
    tag: str = Field(description="What customers carry: custom:<name>")
    filter: dict[str, Any]
    updated_at: datetime


TagName = Annotated[str, Path(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$", description="lowercase letters, digits, _ and -")]


@router.put(
    "/v1/tags/{name}",
    response_model=TagRuleView,
    tags=["audiences"],
    summary="Define (or change) a custom tag: customers carry custom:<name> while the filter holds",
)
async def put_tag_rule(name: TagName, body: TagRule, merchant: AdminMerchant, session: Session) -> TagRuleView:
    _check(body.filter)
    now = clock.now()
    encoded = body.filter.model_dump_json(by_alias=True, exclude_none=True)
    async with session.begin():
        await bulk_insert(
            session,
            tag_rules,
            ["merchant_id", "name", "filter", "created_at", "updated_at"],
            [(merchant.merchant_id, name, encoded, now, now)],
            conflict=["merchant_id", "name"],
            update={"filter": "excluded.filter", "updated_at": "excluded.updated_at"},
        )
    custom_requested.set()
    return TagRuleView(name=name, tag=f"custom:{name}", filter=orjson.loads(encoded), updated_at=now)


@router.get("/v1/tags", response_model=list[TagRuleView], tags=["audiences"], summary="The merchant's custom tags")
async def list_tag_rules(merchant: AdminMerchant, session: Session) -> list[TagRuleView]:
    rows = await session.execute(
        select(tag_rules).where(tag_rules.c.merchant_id == merchant.merchant_id).order_by(tag_rules.c.name)
    )
    return [
        TagRuleView(name=r.name, tag=f"custom:{r.name}", filter=orjson.loads(r.filter), updated_at=r.updated_at)
        for r in rows
    ]


@router.delete("/v1/tags/{name}", status_code=204, tags=["audiences"], summary="Delete a custom tag")
async def delete_tag_rule(name: TagName, merchant: AdminMerchant, session: Session) -> None:
    async with session.begin():
        stmt = tag_rules.delete().where(tag_rules.c.merchant_id == merchant.merchant_id, tag_rules.c.name == name)
        # A DELETE runs on a cursor: its result is a CursorResult (AsyncSession.execute says Result).
        result = cast("CursorResult[Any]", await session.execute(stmt))
    if not result.rowcount:
        raise ApiError(404, "not_found", f"no custom tag {name!r}", field="path.name")
    custom_requested.set()
