"""What loyalty's two routers share: dependencies, the per-app read state, refusals as 4xx naming
the field at fault, and the views both the customer and the merchant see."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request
from pydantic import BaseModel, Field, StrictInt, ValidationError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from services.loyalty.domain.common import MAX_FEN, MAX_POINTS, LoyaltyError
from services.loyalty.service_layer import reads
from services.loyalty.service_layer.rules import RulesCache
from services.loyalty.service_layer.spending import Conflict
from shared.tenancy import Customer, Merchant
from shared.web import ApiError, customer_dependency, merchant_dependency, runtime_of, session_dependency

SERVICE = "loyalty"
Session = Annotated[AsyncSession, Depends(session_dependency(SERVICE))]
AdminMerchant = Annotated[Merchant, Depends(merchant_dependency(SERVICE))]
MeCustomer = Annotated[Customer, Depends(customer_dependency(SERVICE))]

# JSON integers only: 12.5, true or "100" are refused with the field named.
Points = Annotated[StrictInt, Field(gt=0, le=MAX_POINTS)]
SignedPoints = Annotated[StrictInt, Field(ge=-MAX_POINTS, le=MAX_POINTS, description="Non-zero; negative takes.")]
Fen = Annotated[StrictInt, Field(ge=0, le=MAX_FEN)]
PositiveFen = Annotated[StrictInt, Field(gt=0, le=MAX_FEN)]
Text = Annotated[str, Field(min_length=1, max_length=128)]


class Reads:
    """Per app (apps in one process, as in tests, share nothing): the rules cache, and a gate that
    keeps concurrent reads within the connection pool's steady size."""

    def __init__(self, pool_size: int) -> None:
        self.rules = RulesCache()
        self.gate = asyncio.Semaphore(max(1, pool_size))
        self._autocommit: AsyncEngine | None = None

    def engine(self, rt: Any) -> AsyncEngine:
        """The service's engine in autocommit mode (the same pool): a one-statement read sends no
        BEGIN and no ROLLBACK."""
        if self._autocommit is None:
            assert rt.engine is not None
            self._autocommit = rt.engine.execution_options(isolation_level="AUTOCOMMIT")
        return self._autocommit


def reads_of(request: Request) -> Reads:
    state = request.app.state
    found: Reads | None = getattr(state, "loyalty_reads", None)
    if found is None:
        engine = runtime_of(request, SERVICE).engine
        size = engine.pool.size() if engine is not None and hasattr(engine.pool, "size") else 5
        found = state.loyalty_reads = Reads(size)
    return found


def committed(request: Request) -> None:
    """Publish what the transaction staged without waiting for the relay's next poll."""
    runtime_of(request, SERVICE).committed()


@contextmanager
def answering(path: tuple[str, ...] = (), query: tuple[str, ...] = ()) -> Iterator[None]:
    """Refusals of the domain and the service layer as 4xx naming the field at fault (``body.x``
    unless ``x`` is a path or query parameter of the endpoint)."""

    def where(field: str | None) -> str | None:
        if field is None:
            return None
        return f"path.{field}" if field in path else f"query.{field}" if field in query else f"body.{field}"

    try:
        yield
    except LoyaltyError as e:
        raise ApiError(e.http_status, e.code, e.message, field=where(e.field)) from None
    except Conflict as e:
        raise ApiError(e.status, e.code, e.message, field=where(e.field)) from None
    except ValidationError as e:  # a model built by the service (e.g. the plans taken together)
        err = e.errors(include_url=False)[0]
        raise ApiError(422, "validation_error", str(err["msg"]), field="body") from None


# ---------------------------------------------------------------- views


class ExpiringView(BaseModel):
    expires_at: datetime = Field(description="The first instant the points are gone.")
    points: int


class LevelBrief(BaseModel):
    code: str
    name: str


class ProgressView(BaseModel):
    growth: int = Field(description="Growth value (成长值) in the merchant's window.")
    next_level: LevelBrief | None = Field(description="null at the top of the ladder.")
    needed: int = Field(description="Growth still needed to reach the next level.")
    permille: int = Field(description="Share of the way from this level's threshold to the next, 0..1000.")
    keep_needed: int = Field(description="Growth still needed in the window to keep this level at the next review.")


class PointsView(BaseModel):
    customer_id: str
    balance: int = Field(description="Points available now.")
    pending: int = Field(description="Points of orders inside their return window.")
    debt: int = Field(
        description="Points clawed back after a refund that the balance could not cover; "
        "recovered from the next earnings."
    )
    expiring: list[ExpiringView] = Field(description="Points expiring within `expiring_within_days`, soonest first.")
    expiring_within_days: int
    level: LevelBrief | None = Field(description="null: the merchant has no member levels.")
    progress: ProgressView | None


def progress_view(p: Any) -> ProgressView:
    return ProgressView(
        growth=p.growth,
        next_level=LevelBrief(code=p.next.code, name=p.next.name) if p.next else None,
        needed=p.needed,
        permille=p.permille,
        keep_needed=p.keep_needed,
    )


def points_json(customer_id: str, s: reads.Summary, rules: Any) -> dict[str, Any]:
    """What ``points_view(...).model_dump(mode="json")`` gives, built directly."""
    names = {lv.code: lv.name for lv in rules.levels.levels} if rules.levels is not None else {}
    p = s.progress
    return {
        "customer_id": customer_id,
        "balance": s.balance,
        "pending": s.pending,
        "debt": s.debt,
        "expiring": [
            {"expires_at": x.expires_at.astimezone(UTC).isoformat().replace("+00:00", "Z"), "points": x.points}
            for x in s.expiring
        ],
        "expiring_within_days": s.expiring_within_days,
        "level": {"code": s.level, "name": names.get(s.level, s.level)} if s.level is not None else None,
        "progress": None
        if p is None
        else {
            "growth": p.growth,
            "next_level": {"code": p.next.code, "name": p.next.name} if p.next else None,
            "needed": p.needed,
            "permille": p.permille,
            "keep_needed": p.keep_needed,
        },
    }


def points_view(customer_id: str, s: reads.Summary, names: dict[str, str]) -> PointsView:
    return PointsView(
        customer_id=customer_id,
        balance=s.balance,
        pending=s.pending,
        debt=s.debt,
        expiring=[ExpiringView(expires_at=x.expires_at, points=x.points) for x in s.expiring],
        expiring_within_days=s.expiring_within_days,
        level=LevelBrief(code=s.level, name=names.get(s.level, s.level)) if s.level is not None else None,
        progress=progress_view(s.progress) if s.progress is not None else None,
    )


class EntryView(BaseModel):
    id: int
    kind: str = Field(
        description="earn_pending, earn_available, cancel, clawback, recover, write_off, redeem, "
        "restore, expire or adjust"
    )
    points: int = Field(description="Change to the available balance.")
    pending: int = Field(description="Change to the pending points.")
    debt: int = Field(description="Change to the debt.")
    cause: str = Field(description="The event or operation that caused it.")
    lot_id: str | None
    order_id: str | None
    reason: str | None
    occurred_at: datetime


class OperatorEntryView(EntryView):
    operator: str | None = Field(description="Who made a manual adjustment.")


class HistoryView(BaseModel):
    customer_id: str
    entries: Sequence[EntryView]  # a Sequence (covariant): OperatorHistoryView narrows it
    next_before: int | None = Field(description="Pass as `before` for the next (older) page; null: no more.")


class OperatorHistoryView(HistoryView):
    entries: Sequence[OperatorEntryView]


_Entry = TypeVar("_Entry", bound=EntryView)


def entry_view(r: Any, cls: type[_Entry]) -> _Entry:
    extra = {"operator": r.operator} if cls is OperatorEntryView else {}
    return cls(
        id=r.id,
        kind=r.kind,
        points=r.points,
        pending=r.pending,
        debt=r.debt,
        cause=r.event_id,
        lot_id=r.lot_id or None,
        order_id=r.order_id,
        reason=r.reason,
        occurred_at=r.occurred_at,
        **extra,
    )


class MallItemView(BaseModel):
    item_id: str
    name: str
    points: int
    reward: dict[str, Any]
    stock: int | None = Field(description="Items ever available; null: unlimited.")
    stock_left: int | None
    per_customer_limit: int | None
    active: bool
    available_from: datetime | None
    available_until: datetime | None


def item_view(found: Any) -> MallItemView:
    i = found.item
    return MallItemView(
        item_id=i.item_id,
        name=i.name,
        points=i.points,
        reward=i.reward.model_dump(),
        stock=i.stock,
        stock_left=found.stock_left,
        per_customer_limit=i.per_customer_limit,
        active=i.active,
        available_from=i.available_from,
        available_until=i.available_until,
    )


class SvEntryView(BaseModel):
    id: int
    kind: str = Field(description="top_up, spend, spend_refund or top_up_refund")
    paid_fen: int
    bonus_fen: int
    ref: str
    occurred_at: datetime


class StoredValueView(BaseModel):
    customer_id: str
    paid_fen: int = Field(description="Money the customer paid in (refundable).")
    bonus_fen: int = Field(description="What top-up plans added (never paid out).")
    total_fen: int
    entries: list[SvEntryView] = Field(description="The latest changes, newest first.")


def stored_value_view(customer_id: str, st: Any) -> StoredValueView:
    return StoredValueView(
        customer_id=customer_id,
        paid_fen=st.balance.paid_fen,
        bonus_fen=st.balance.bonus_fen,
        total_fen=st.balance.total_fen,
        entries=[
            SvEntryView(
                id=r.id, kind=r.kind, paid_fen=r.paid_fen, bonus_fen=r.bonus_fen, ref=r.ref, occurred_at=r.occurred_at
            )
            for r in st.entries
        ],
    )


class TopUpView(BaseModel):
    top_up_id: str
    customer_id: str
    plan_id: str = Field(description="Empty for a plain amount topped up by the merchant.")
    payment_ref: str
    pay_fen: int
    bonus_fen: int
    status: str = Field(description="pending (waiting for the shop to confirm the payment) or confirmed")
    refunded_fen: int
    forfeited_fen: int = Field(description="Bonus taken back by refunds of this top-up.")
    created_at: datetime
    confirmed_at: datetime | None


def top_up_view(t: Any) -> TopUpView:
    return TopUpView(
        top_up_id=t.top_up_id,
        customer_id=t.customer_id,
        plan_id=t.plan_id,
        payment_ref=t.payment_ref,
        pay_fen=t.pay_fen,
        bonus_fen=t.bonus_fen,
        status=t.status,
        refunded_fen=t.refunded_fen,
        forfeited_fen=t.forfeited_fen,
        created_at=t.created_at,
        confirmed_at=t.confirmed_at,
    )


class PlanView(BaseModel):
    plan_id: str
    name: str
    pay_fen: int
    bonus_fen: int
    active: bool


def plan_view(plan: Any, active: bool) -> PlanView:
    return PlanView(plan_id=plan.plan_id, name=plan.name, pay_fen=plan.pay_fen, bonus_fen=plan.bonus_fen, active=active)


class AwardView(BaseModel):
    awarded: bool
    bonus: str
    points: int = 0
    growth: int = 0
    capped_by: int = Field(0, description="Points the daily cap took off.")
    reason: str | None = Field(None, description="Why nothing was awarded.")
