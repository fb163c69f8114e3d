"""Segmentation's HTTP API. Translate, call, answer: no rules here."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from services.segmentation.adapters.tables import rescore_jobs
from services.segmentation.domain.config import RfmConfig
from services.segmentation.service_layer.rfm import class_names, current_config, explain_customer, save_config, summary
from services.segmentation.service_layer.rfm_read import COVERAGE_TTL_S, InForceCache, StoredReads
from services.segmentation.service_layer.segments import start_rescore
from services.segmentation.service_layer.snapshots import Point, trend
from shared import clock
from shared.events import Id
from shared.tenancy import Customer, Merchant
from shared.web import ApiError, customer_dependency, merchant_dependency, runtime_of, session_dependency

SERVICE = "segmentation"
Session = Annotated[AsyncSession, Depends(session_dependency(SERVICE))]
AdminMerchant = Annotated[Merchant, Depends(merchant_dependency(SERVICE))]
MeCustomer = Annotated[Customer, Depends(customer_dependency(SERVICE))]

router = APIRouter(tags=["segmentation"])


class RfmClassView(BaseModel):
    code: str
    zh_cn: str
    en: str


class BoundariesView(BaseModel):
    recency_days: list[float]
    frequency: list[float]
    monetary_fen: list[float]


class SplitView(BaseModel):
    mode: str
    recency_days: float
    frequency: float
    monetary_fen: float


class Why(BaseModel):
    config_version: int = Field(description="0 is the default configuration nobody saved yet.")
    period_days: int | None
    levels: int
    boundaries_source: str = Field(description="fixed (set by the merchant) or quantile (of the merchant's customers)")
    boundaries: BoundariesView
    class_split: SplitView
    stats_computed_at: datetime
    customers_in_stats: int


class CustomerRfm(BaseModel):
    merchant_id: str
    customer_id: str
    recency_days: int | None
    frequency: int = Field(description="Paid orders in the period (not cancelled, not wholly refunded).")
    monetary_fen: int = Field(description="Paid amount in the period, net of refunds.")
    first_order_at: datetime | None
    last_order_at: datetime | None
    r_level: int
    f_level: int
    m_level: int
    cell: str = Field(description="R-F-M levels, e.g. 3-2-1")
    tier: str = Field(description="S, A, B or C")
    rfm_class: RfmClassView
    tags: list[str] = Field(description="Lifecycle and custom tags, as of the customer's last scoring.")
    why: Why


def _reads(request: Request) -> StoredReads:
    """The app's reads of stored segments and its cache of each merchant's configuration and
    statistics (made on first use: one per app, so apps in one process, as in tests, share nothing)."""
    state = request.app.state
    reads: StoredReads | None = getattr(state, "segmentation_reads", None)
    if reads is None:
        rt = runtime_of(request, SERVICE)

        def connect() -> AsyncConnection:
            assert rt.engine is not None
            return rt.engine.connect()

        assert rt.engine is not None
        pool = rt.engine.pool
        reads = state.segmentation_reads = StoredReads(connect, pool.size() if hasattr(pool, "size") else 5)
    return reads


def in_force_cache(request: Request) -> InForceCache:
    return _reads(request).cache


async def _load(request: Request, merchant_id: str, customer_id: str, tz: str) -> CustomerRfm:
    missing = ApiError(404, "not_found", f"no customer {customer_id!r} with paid orders", field="path.customer_id")
    reads = _reads(request)
    read = await reads.read(merchant_id, customer_id, tz)  # no session: a connection, shared by a batch
    if not read.found:
        raise missing
    found = read.explained
    if found is None:  # the stored segment is not current (see the endpoint's description): compute
        async with runtime_of(request, SERVICE).sessions() as session:
            found = await explain_customer(session, merchant_id, customer_id, tz)
            if found is not None and found.wrote:
                await session.commit()  # statistics refreshed on the way are kept
                reads.cache.invalidate(merchant_id)
    if found is None or found.score is None:
        raise missing
    v, sc, cfg = found.values, found.score, found.config
    return CustomerRfm(
        merchant_id=merchant_id,
        customer_id=customer_id,
        recency_days=v.recency_days,
        frequency=v.frequency,
        monetary_fen=v.monetary_fen,
        first_order_at=v.first_order_at,
        last_order_at=v.last_order_at,
        r_level=sc.r_level,
        f_level=sc.f_level,
        m_level=sc.m_level,
        cell=sc.cell,
        tier=sc.tier,
        rfm_class=RfmClassView(code=sc.rfm_class.code, zh_cn=sc.rfm_class.zh_cn, en=sc.rfm_class.en),
        tags=list(read.tags),
        why=Why(
            config_version=found.version,
            period_days=cfg.period_days,
            levels=cfg.levels,
            boundaries_source=cfg.boundaries.mode,
            boundaries=BoundariesView(
                recency_days=list(found.boundaries.recency_days),
                frequency=list(found.boundaries.frequency),
                monetary_fen=list(found.boundaries.monetary_fen),
            ),
            class_split=SplitView(
                mode=cfg.class_split.mode,
                recency_days=found.split.recency_days,
                frequency=found.split.frequency,
                monetary_fen=found.split.monetary_fen,
            ),
            stats_computed_at=found.stats.computed_at,
            customers_in_stats=found.stats.customers,
        ),
    )


RFM_READ = f"""Answered from the customer's stored segment (levels, cell, tier, class, F and M over the
period, tags), with recency_days counted now in the merchant's time zone and `why` from the
configuration and statistics in force. The stored segment is not used, and R, F and M are computed
from the orders and scored now instead (the same answer a finished re-score will store), while:
a re-scoring job or a history import of the merchant is pending or running; the segment was scored
under an older configuration that no re-scoring job has covered; its next change in time
(`next_change_at`: a recency boundary or the period edge at the merchant's midnight, a tag's
window) has come and the sweep has not re-scored it yet; the statistics the configuration scores
with are newer than the segment and no re-score has followed them; or there is no segment yet for a
customer with paid orders. Tags are always as of the last scoring. The configuration version in
force, the statistics' time and whether a job is running are read with the segment, in the same
query, so a change made by any process shows at the next read (a job that started and ended
between two reads may keep this process computing for up to {COVERAGE_TTL_S:g} s more)."""


@router.get(
    "/v1/customers/{customer_id}/rfm",
    response_model=CustomerRfm,
    summary="One customer's R, F, M, levels, cell, tier and class, with the boundaries applied (admin)",
    description=RFM_READ,
    responses={404: {"description": "no such customer"}},
)
async def get_rfm(customer_id: Annotated[Id, Path()], request: Request, merchant: AdminMerchant) -> CustomerRfm:
    # No session dependency: most reads take one connection for one statement (see _load).
    return await _load(request, merchant.merchant_id, customer_id, merchant.timezone)


@router.get("/v1/me/rfm", response_model=CustomerRfm, summary="My own RFM (customer token)", description=RFM_READ)
async def get_my_rfm(request: Request, me: MeCustomer) -> CustomerRfm:
    return await _load(request, me.merchant_id, me.customer_id, me.merchant.timezone)


class ConfigView(BaseModel):
    version: int
    config: RfmConfig
    job_id: str | None = Field(
        None, description="The re-scoring job this change started (GET /v1/segmentation/jobs/{id})."
    )


@router.get("/v1/segmentation/config", response_model=ConfigView, summary="The RFM configuration in force")
async def get_config(merchant: AdminMerchant, session: Session) -> ConfigView:
    version, config = await current_config(session, merchant.merchant_id)
    return ConfigView(version=version, config=config)


@router.put(
    "/v1/segmentation/config",
    response_model=ConfigView,
    summary="Save a new version of the RFM configuration (validated as a whole)",
)
async def put_config(body: RfmConfig, request: Request, merchant: AdminMerchant, session: Session) -> ConfigView:
    async with session.begin():
        version = await save_config(session, merchant.merchant_id, body, merchant.timezone)
        job_id = await start_rescore(session, merchant.merchant_id, version, config_change=True)
    in_force_cache(request).invalidate(merchant.merchant_id)  # (reads would see the new version anyway)
    return ConfigView(version=version, config=body, job_id=job_id)


class JobView(BaseModel):
    job_id: str
    config_version: int
    status: str = Field(description="pending, running, done, or superseded (a later change re-scores everyone)")
    total: int
    done: int
    changed: int = Field(description="Customers whose segment changed (each announced by segment.changed).")
    progress: float
    created_at: datetime
    finished_at: datetime | None


@router.get("/v1/segmentation/jobs/{job_id}", response_model=JobView, summary="Progress of a re-scoring job")
async def get_job(job_id: str, merchant: AdminMerchant, session: Session) -> JobView:
    row = (
        await session.execute(
            select(rescore_jobs).where(
                rescore_jobs.c.job_id == job_id, rescore_jobs.c.merchant_id == merchant.merchant_id
            )
        )
    ).first()
    if row is None:
        raise ApiError(404, "not_found", f"no job {job_id!r}", field="path.job_id")
    return JobView(
        job_id=row.job_id,
        config_version=row.config_version,
        status=row.status,
        total=row.total,
        done=row.done,
        changed=row.changed,
        progress=1.0 if row.status == "done" else (row.done / row.total if row.total else 0.0),
        created_at=row.created_at,
        finished_at=row.finished_at,
    )


class Summary(BaseModel):
    config_version: int
    customers: int = Field(description="Customers with a segment (at least one paid order).")
    cells: dict[str, int] = Field(description="Customers per R-F-M cell, every cell listed (3x3x3 or 5x5x5).")
    tiers: dict[str, int]
    classes: dict[str, int]
    class_names: dict[str, dict[str, str]]
    repurchase_rate: float = Field(
        description="Share of customers with 2+ paid orders in the period, among those with 1+."
    )
    repeat_customers: int
    buying_customers: int


@router.get("/v1/segments/summary", response_model=Summary, summary="Counts per cell, tier and class; repurchase rate")
async def get_summary(merchant: AdminMerchant, session: Session) -> Summary:
    return Summary(**await summary(session, merchant.merchant_id))


class TrendPoint(BaseModel):
    day: str = Field(description="The merchant's local calendar day, YYYY-MM-DD.")
    taken_at: datetime = Field(description="When the counts were taken (a day's last snapshot stands).")
    config_version: int
    customers: int = Field(description="Customers with a segment (at least one paid order).")
    tiers: dict[str, int]
    classes: dict[str, int] = Field(description="Customers per RFM class code (names in class_names).")
    cells: dict[str, int] = Field(description="Customers per R-F-M cell, every cell of the levels then in force.")
    tags: dict[str, int] = Field(
        description="Customers per lifecycle tag (interest, new, dormant, churn_risk, "
        "repurchase_cycle:<category>, replenish_due:<category>)."
    )
    repurchase_rate: float = Field(
        description="Share of customers with 2+ paid orders in the period, among those with 1+."
    )
    repeat_customers: int
    buying_customers: int

    @classmethod
    def of(cls, p: Point) -> TrendPoint:
        return cls(
            day=p.day,
            taken_at=p.taken_at,
            config_version=p.config_version,
            customers=p.customers,
            tiers=p.tiers,
            classes=p.classes,
            cells=p.cells,
            tags=p.tags,
            repurchase_rate=p.repurchase_rate,
            repeat_customers=p.repeat_buyers,
            buying_customers=p.buyers,
        )


class Trend(BaseModel):
    timezone: str = Field(description="The merchant's time zone, in which days are counted.")
    days: list[TrendPoint] = Field(
        description="One point per local day that has a snapshot, oldest first "
        "(today's, when taken, is as of its last hourly snapshot)."
    )
    today: TrendPoint = Field(description="The counts now, computed live (what today's next snapshot would keep).")
    class_names: dict[str, dict[str, str]]


@router.get(
    "/v1/segments/trend",
    response_model=Trend,
    summary="Tiers, classes, lifecycle tags and the repurchase rate per day over the last N days",
    description="Daily snapshots of the counts GET /v1/segments/summary gives (taken at start-up and "
    "hourly by the segmentation worker, one per local day of the merchant, the day's last "
    "standing), for the days of the window that have one, and `today` computed now.",
)
async def get_trend(
    merchant: AdminMerchant,
    session: Session,
    days: Annotated[int, Query(ge=1, le=400, description="Local days back, today included.")] = 30,
) -> Trend:
    points, today = await trend(session, merchant.merchant_id, merchant.timezone, days, clock.now())
    return Trend(
        timezone=merchant.timezone,
        days=[TrendPoint.of(p) for p in points],
        today=TrendPoint.of(today),
        class_names=class_names(),
    )
