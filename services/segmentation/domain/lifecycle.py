"""Lifecycle tags, and when time alone will next change a customer's segment or tags (pure).

Tags (each window N set by the merchant):
- ``interest``: carted or favourited within N days, with no purchase since;
- ``new``: exactly one paid order, within the last N days;
- ``repurchase_cycle:<category>``: bought the category and is inside its cycle (the merchant's
  cycle for the category, or the customer's own average interval in it);
- ``replenish_due:<category>``: the cycle is over (less a lead time): time to buy again;
- ``dormant``: no paid order for N days;
- ``churn_risk``: well past the customer's own usual interval (factor × average gap).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field


class LifecycleConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    interest_days: int = Field(7, ge=1, le=365)
    new_days: int = Field(30, ge=1, le=365)
    dormant_days: int = Field(90, ge=1, le=3650)
    churn_factor: float = Field(2.0, ge=1.0, le=20.0)
    replenish_lead_days: int = Field(3, ge=0, le=90)
    category_cycles: dict[str, int] = Field(
        default_factory=dict, description='Days between purchases per category, e.g. {"milk-powder": 30}.'
    )


@dataclass(frozen=True, slots=True)
class CategoryHistory:
    category: str
    orders: int
    first_at: datetime
    last_at: datetime


@dataclass(frozen=True, slots=True)
class TagInputs:
    paid_orders: int  # all history
    first_order_at: datetime | None
    last_order_at: datetime | None
    last_interest_at: datetime | None
    categories: tuple[CategoryHistory, ...] = ()


def _soonest(*moments: datetime | None) -> datetime | None:
    future = [m for m in moments if m is not None]
    return min(future) if future else None


def lifecycle_tags(inputs: TagInputs, cfg: LifecycleConfig, now: datetime) -> tuple[list[str], datetime | None]:
    """The tags now, and the next moment (after now) at which they would change with no event."""
    tags: list[str] = []
    moments: list[datetime | None] = []
    last, first, n = inputs.last_order_at, inputs.first_order_at, inputs.paid_orders

    seen = inputs.last_interest_at
    if seen is not None and (last is None or seen > last):
        ends = seen + timedelta(days=cfg.interest_days)
        if now < ends:
            tags.append("interest")
            moments.append(ends)
    if n == 1 and first is not None:
        ends = first + timedelta(days=cfg.new_days)
        if now < ends:
            tags.append("new")
            moments.append(ends)
    if last is not None:
        starts = last + timedelta(days=cfg.dormant_days)
        if now >= starts:
            tags.append("dormant")
        else:
            moments.append(starts)
        if n >= 2 and first is not None and last > first:
            gap = (last - first) / (n - 1)
            starts = last + gap * cfg.churn_factor
            if now >= starts:
                tags.append("churn_risk")
            else:
                moments.append(starts)
    lead = timedelta(days=cfg.replenish_lead_days)
    for c in inputs.categories:
        cycle_days = cfg.category_cycles.get(c.category)
        if cycle_days is not None:
            cycle = timedelta(days=cycle_days)
        elif c.orders >= 2 and c.last_at > c.first_at:
            cycle = (c.last_at - c.first_at) / (c.orders - 1)
        else:
            continue  # one purchase and no merchant cycle: no cycle known yet
        due = c.last_at + cycle - lead
        if now >= due:
            tags.append(f"replenish_due:{c.category}")
        else:
            tags.append(f"repurchase_cycle:{c.category}")
            moments.append(due)
    return sorted(tags), _soonest(*[m for m in moments if m is not None and m > now])


def _local_midnight(day: date, zone: ZoneInfo) -> datetime:
    return datetime.combine(day, time.min, tzinfo=zone)


def next_recency_change(
    last_order_at: datetime, now: datetime, tz: str, thresholds: Iterable[float]
) -> datetime | None:
    """When the customer's recency (calendar days in the merchant's zone) next passes one of the
    thresholds (R boundaries, the class split): recency d passes t on the day it becomes > t."""
    zone = ZoneInfo(tz)
    last_day = last_order_at.astimezone(zone).date()
    today = now.astimezone(zone).date()
    days = (today - last_day).days
    upcoming = [int(t) + 1 for t in thresholds if int(t) + 1 > days]
    if not upcoming:
        return None
    return _local_midnight(last_day + timedelta(days=min(upcoming)), zone)
