"""Compile an audience filter (domain/audience.py) to one SQL query over segmentation's tables.

Every condition is a predicate on one customer of one merchant; nullable columns are coalesced
so that NOT means "not in the set" (a customer with no tier is not in tier B)."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Select, and_, exists, func, literal, not_, or_, select, union

from services.segmentation.adapters.tables import (
    behaviours,
    customer_categories,
    customer_tags,
    customers,
    order_items,
    orders,
    profiles,
    segments,
)
from services.segmentation.domain import audience as a


class Compiler:
    def __init__(self, merchant_id: str, now: datetime, tz: str):
        self.m = merchant_id
        self.now = now
        self.zone = ZoneInfo(tz)
        self.u = union(
            select(customers.c.customer_id).where(customers.c.merchant_id == merchant_id),
            select(segments.c.customer_id).where(segments.c.merchant_id == merchant_id),
            select(profiles.c.customer_id).where(profiles.c.merchant_id == merchant_id),
        ).subquery("u")
        self.s, self.c, self.p = segments, customers, profiles

    def _midnight_days_ago(self, days: int) -> datetime:
        today: date = self.now.astimezone(self.zone).date()
        return datetime.combine(today - timedelta(days=days), time.min, tzinfo=self.zone)

    def where(self, f: Any) -> Any:
        u, s, c, p, m = self.u, self.s, self.c, self.p, self.m
        if isinstance(f, a.And):
            return and_(*[self.where(x) for x in f.and_])
        if isinstance(f, a.Or):
            return or_(*[self.where(x) for x in f.or_])
        if isinstance(f, a.Not):
            return not_(self.where(f.not_))
        if isinstance(f, a.Tier):
            return func.coalesce(s.c.tier, "").in_(f.tier)
        if isinstance(f, a.Cell):
            return func.coalesce(s.c.cell, "").in_(f.cell)
        if isinstance(f, a.RfmClassIs):
            return func.coalesce(s.c.rfm_class, "").in_(f.rfm_class)
        if isinstance(f, a.HasTag):
            t = customer_tags
            return exists().where(t.c.merchant_id == m, t.c.customer_id == u.c.customer_id, t.c.tag.in_(f.tag))
        if isinstance(f, a.Recency):
            # Recency in calendar days of the merchant's zone, as instants on last_order_at.
            conds = [c.c.last_order_at.isnot(None)]
            if f.recency_days.lte is not None:
                conds.append(c.c.last_order_at >= self._midnight_days_ago(f.recency_days.lte))
            if f.recency_days.gte is not None:
                conds.append(c.c.last_order_at < self._midnight_days_ago(f.recency_days.gte - 1))
            return and_(*conds)
        if isinstance(f, (a.Frequency, a.Monetary)):
            col, rng = ((func.coalesce(s.c.frequency, 0), f.frequency) if isinstance(f, a.Frequency)
                        else (func.coalesce(s.c.monetary_fen, 0), f.monetary_fen))
            conds = []
            if rng.gte is not None:
                conds.append(col >= rng.gte)
            if rng.lte is not None:
                conds.append(col <= rng.lte)
            return and_(*conds)
        if isinstance(f, (a.FirstOrder, a.LastOrder)):
            col, rng = ((c.c.first_order_at, f.first_order_at) if isinstance(f, a.FirstOrder)
                        else (c.c.last_order_at, f.last_order_at))
            conds = [col.isnot(None)]
            if rng.gte is not None:
                conds.append(col >= rng.gte)
            if rng.lt is not None:
                conds.append(col < rng.lt)
            return and_(*conds)
        if isinstance(f, a.Region):
            return func.coalesce(p.c.region, "").in_(f.region)
        if isinstance(f, a.BoughtCategory):
            cc = customer_categories
            conds = [cc.c.merchant_id == m, cc.c.customer_id == u.c.customer_id,
                     cc.c.category == f.bought_category.category]
            if f.bought_category.within_days is not None:
                conds.append(cc.c.last_at >= self.now - timedelta(days=f.bought_category.within_days))
            return exists().where(*conds)
        if isinstance(f, a.Interested):
            b, o, i = behaviours, orders, order_items
            kinds = ["favorite", "cart"] if f.interested_not_bought == "any" else [f.interested_not_bought]
            bought_since = exists().where(
                o.c.merchant_id == m, o.c.customer_id == u.c.customer_id, o.c.paid_at.isnot(None),
                o.c.paid_at >= b.c.last_at, i.c.merchant_id == o.c.merchant_id, i.c.order_id == o.c.order_id,
                i.c.sku == b.c.sku)
            return exists().where(b.c.merchant_id == m, b.c.customer_id == u.c.customer_id, b.c.kind.in_(kinds),
                                  not_(bought_since))
        if isinstance(f, a.OrderedUnpaid):
            return func.coalesce(c.c.unpaid_orders, 0) > 0
        raise TypeError(f"no SQL for {type(f).__name__}")

    def select(self, f: Any, *columns: Any) -> Select[Any]:
        u, s, c, p = self.u, self.s, self.c, self.p
        joined = (u.outerjoin(s, and_(s.c.merchant_id == self.m, s.c.customer_id == u.c.customer_id))
                  .outerjoin(c, and_(c.c.merchant_id == self.m, c.c.customer_id == u.c.customer_id))
                  .outerjoin(p, and_(p.c.merchant_id == self.m, p.c.customer_id == u.c.customer_id)))
        return select(*(columns or (u.c.customer_id,))).select_from(joined).where(self.where(f))

    def rows(self, f: Any) -> Select[Any]:
        """The audience's customers with what a merchant wants to see of them."""
        u, s, c, p = self.u, self.s, self.c, self.p
        return self.select(f, u.c.customer_id, s.c.tier, s.c.cell, s.c.rfm_class, s.c.frequency, s.c.monetary_fen,
                           c.c.last_order_at, p.c.region, func.coalesce(s.c.tags, literal("[]")).label("tags"))
