"""Compile an audience filter (domain/audience.py) to one SQL query over segmentation's tables.

Every condition is a predicate on one customer of one merchant; nullable columns are coalesced
where a NOT could see them, so that NOT means "not in the set" (a customer with no tier is not in
tier B).

The customers a query ranges over are, in general, everyone the merchant has a row for in
customers, segments or profiles (a union: one sort of every id). When the filter can only hold of
a customer with a row in one of those tables (a tier, cell or class, a positive frequency or
monetary floor, a recency or order date, a region, anywhere it must hold: at the top of an AND, or
in every branch of an OR), the query starts from that table alone; the others are joined to it by
primary key, so every condition sees the same columns and the members are the same."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import ColumnElement, FromClause, Select, and_, exists, func, literal, not_, or_, select, union

from services.segmentation.adapters.tables import (
    behaviours,
    customer_categories,
    customer_tags,
    customers,
    member_levels,
    order_items,
    orders,
    profiles,
    segments,
)
from services.segmentation.domain import audience as a

# Where a narrower base may start, smallest expected first: a segment exists for each customer with
# a paid order (or a tag), a customers row for each with any order, a profile for each the shop
# registered.
_BASES = ("segments", "customers", "profiles")


def required_tables(f: Any) -> frozenset[str]:
    """The tables a customer must have a row in for the filter to hold of them ("segments",
    "customers", "profiles"). Conservative: a condition that might hold without such a row (any
    NOT, a tag, a category, a behaviour, a frequency or amount range reaching 0) requires none."""
    if isinstance(f, a.And):
        return frozenset().union(*(required_tables(x) for x in f.and_))
    if isinstance(f, a.Or):
        return frozenset.intersection(*(required_tables(x) for x in f.or_))
    if isinstance(f, (a.Tier, a.Cell, a.RfmClassIs)):
        return frozenset({"segments"})  # the coalesced '' is never among the values asked for
    if isinstance(f, (a.Frequency, a.Monetary)):
        rng = f.frequency if isinstance(f, a.Frequency) else f.monetary_fen
        # No segment reads as 0, so only a floor above 0 needs one.
        return frozenset({"segments"}) if rng.gte else frozenset()
    if isinstance(f, (a.Recency, a.FirstOrder, a.LastOrder, a.OrderedUnpaid)):
        return frozenset({"customers"})
    if isinstance(f, a.Region):
        return frozenset({"profiles"})  # values are non-empty, so the coalesced '' never matches
    return frozenset()


class Compiler:
    """SQL for audience filters of one merchant at one moment.

    ``u`` is what the queries range over, with a ``customer_id`` column to order and page by.
    Built with ``for_filter``, it is the narrowest base that filter allows (see the module's
    docstring), and ``select``/``rows`` then accept only filters that base can serve; built
    without, it is the union of everyone, which serves any filter."""

    def __init__(self, merchant_id: str, now: datetime, tz: str, for_filter: Any = None):
        self.m = merchant_id
        self.now = now
        self.zone = ZoneInfo(tz)
        self.s, self.c, self.p = segments, customers, profiles
        self._union = union(
            select(customers.c.customer_id).where(customers.c.merchant_id == merchant_id),
            select(segments.c.customer_id).where(segments.c.merchant_id == merchant_id),
            select(profiles.c.customer_id).where(profiles.c.merchant_id == merchant_id),
        ).subquery("u")
        self.base = "union" if for_filter is None else self.base_for(for_filter)
        self.u: FromClause = {"segments": segments, "customers": customers, "profiles": profiles}.get(
            self.base, self._union
        )

    @staticmethod
    def base_for(f: Any) -> str:
        need = required_tables(f)
        return next((t for t in _BASES if t in need), "union")

    def _midnight_days_ago(self, days: int) -> datetime:
        today: date = self.now.astimezone(self.zone).date()
        return datetime.combine(today - timedelta(days=days), time.min, tzinfo=self.zone)

    def where(self, f: Any, negated: bool = False) -> Any:
        """The filter as a predicate. Under an odd number of NOTs every condition must be two-valued
        (a NULL there would drop the customer from the NOT); elsewhere a NULL acts as false, so
        tier, cell, class and region compare the bare column, which their indexes can serve."""
        u, s, c, p, m = self.u, self.s, self.c, self.p, self.m

        def member(col: Any, values: Sequence[str]) -> Any:
            return func.coalesce(col, "").in_(values) if negated else col.in_(values)

        if isinstance(f, a.And):
            return and_(*[self.where(x, negated) for x in f.and_])
        if isinstance(f, a.Or):
            return or_(*[self.where(x, negated) for x in f.or_])
        if isinstance(f, a.Not):
            return not_(self.where(f.not_, not negated))
        if isinstance(f, a.Tier):
            return member(s.c.tier, f.tier)
        if isinstance(f, a.Cell):
            return member(s.c.cell, f.cell)
        if isinstance(f, a.RfmClassIs):
            return member(s.c.rfm_class, f.rfm_class)
        if isinstance(f, a.HasTag):
            t = customer_tags
            return exists().where(t.c.merchant_id == m, t.c.customer_id == u.c.customer_id, t.c.tag.in_(f.tag))
        if isinstance(f, a.MemberLevel):
            lv = member_levels
            return exists().where(
                lv.c.merchant_id == m, lv.c.customer_id == u.c.customer_id, lv.c.level.in_(f.member_level)
            )
        if isinstance(f, a.Recency):
            # Recency in calendar days of the merchant's zone, as instants on last_order_at.
            conds: list[ColumnElement[bool]] = [c.c.last_order_at.isnot(None)]
            if f.recency_days.lte is not None:
                conds.append(c.c.last_order_at >= self._midnight_days_ago(f.recency_days.lte))
            if f.recency_days.gte is not None:
                conds.append(c.c.last_order_at < self._midnight_days_ago(f.recency_days.gte - 1))
            return and_(*conds)
        if isinstance(f, (a.Frequency, a.Monetary)):
            col, rng = (
                (func.coalesce(s.c.frequency, 0), f.frequency)
                if isinstance(f, a.Frequency)
                else (func.coalesce(s.c.monetary_fen, 0), f.monetary_fen)
            )
            conds = []
            if rng.gte is not None:
                conds.append(col >= rng.gte)
            if rng.lte is not None:
                conds.append(col <= rng.lte)
            return and_(*conds)
        if isinstance(f, (a.FirstOrder, a.LastOrder)):
            at, window = (
                (c.c.first_order_at, f.first_order_at)
                if isinstance(f, a.FirstOrder)
                else (c.c.last_order_at, f.last_order_at)
            )
            conds = [at.isnot(None)]
            if window.gte is not None:
                conds.append(at >= window.gte)
            if window.lt is not None:
                conds.append(at < window.lt)
            return and_(*conds)
        if isinstance(f, a.Region):
            return member(p.c.region, f.region)
        if isinstance(f, a.BoughtCategory):
            cc = customer_categories
            conds = [
                cc.c.merchant_id == m,
                cc.c.customer_id == u.c.customer_id,
                cc.c.category == f.bought_category.category,
            ]
            if f.bought_category.within_days is not None:
                conds.append(cc.c.last_at >= self.now - timedelta(days=f.bought_category.within_days))
            return exists().where(*conds)
        if isinstance(f, a.Interested):
            b, o, i = behaviours, orders, order_items
            kinds = ["favorite", "cart"] if f.interested_not_bought == "any" else [f.interested_not_bought]
            bought_since = exists().where(
                o.c.merchant_id == m,
                o.c.customer_id == u.c.customer_id,
                o.c.paid_at.isnot(None),
                o.c.paid_at >= b.c.last_at,
                i.c.merchant_id == o.c.merchant_id,
                i.c.order_id == o.c.order_id,
                i.c.sku == b.c.sku,
            )
            return exists().where(
                b.c.merchant_id == m, b.c.customer_id == u.c.customer_id, b.c.kind.in_(kinds), not_(bought_since)
            )
        if isinstance(f, a.OrderedUnpaid):
            return func.coalesce(c.c.unpaid_orders, 0) > 0
        raise TypeError(f"no SQL for {type(f).__name__}")

    def select(self, f: Any, *columns: Any) -> Select[Any]:
        if self.base != "union" and self.base not in required_tables(f):
            # Members outside the base would be missed: the caller built this for another filter.
            raise ValueError(f"this compiler ranges over {self.base} only, which cannot serve that filter")
        u = self.u
        joined = u
        for t in (self.s, self.c, self.p):  # the base's own table is not joined again
            if t is not u:
                joined = joined.outerjoin(t, and_(t.c.merchant_id == self.m, t.c.customer_id == u.c.customer_id))
        q = select(*(columns or (u.c.customer_id,))).select_from(joined)
        if u is not self._union:
            q = q.where(u.c.merchant_id == self.m)
        return q.where(self.where(f))

    def rows(self, f: Any) -> Select[Any]:
        """The audience's customers with what a merchant wants to see of them."""
        u, s, c, p = self.u, self.s, self.c, self.p
        return self.select(
            f,
            u.c.customer_id,
            s.c.tier,
            s.c.cell,
            s.c.rfm_class,
            s.c.frequency,
            s.c.monetary_fen,
            c.c.last_order_at,
            p.c.region,
            func.coalesce(s.c.tags, literal("[]")).label("tags"),
        )
