"""The RFM score as SQL expressions: levels, cell, tier, class and the next recency moment of
stored customers, built from the same rules as domain/rfm.py and domain/lifecycle.py.

Recency is counted in calendar days of the merchant's zone. "More than b days ago" is the same
as "before the local midnight b days before today", an instant computed once here; so every
comparison in SQL is on ``last_order_at`` itself, exact across DST changes, on both databases."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime, time, timedelta
from itertools import product
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import String, case, cast, literal

from services.segmentation.domain.rfm import CLASSES, Boundaries, Split, tier_of
from shared.db import day_start_plus


class ScoreSql:
    def __init__(
        self,
        bounds: Boundaries,
        split: Split,
        levels: int,
        tier_overrides: Mapping[str, str],
        tz: str,
        now: datetime,
    ):
        self.bounds, self.split, self.levels, self.overrides, self.tz = bounds, split, levels, tier_overrides, tz
        self.zone = ZoneInfo(tz)
        self.today: date = now.astimezone(self.zone).date()

    def _before(self, days: float) -> datetime:
        """The instant before which a last order is more than ``days`` calendar days ago."""
        return datetime.combine(self.today - timedelta(days=int(days)), time.min, tzinfo=self.zone)

    def r_level(self, last: Any) -> Any:
        passed = [case((last < self._before(b), 1), else_=0) for b in self.bounds.recency_days]
        return literal(len(self.bounds.recency_days) + 1) - sum(passed[1:], passed[0]) if passed else literal(1)

    @staticmethod
    def _up(value: Any, bounds: tuple[float, ...]) -> Any:
        reached = [case((value >= b, 1), else_=0) for b in bounds]
        return literal(1) + sum(reached[1:], reached[0]) if reached else literal(1)

    def f_level(self, frequency: Any) -> Any:
        return self._up(frequency, self.bounds.frequency)

    def m_level(self, monetary: Any) -> Any:
        return self._up(monetary, self.bounds.monetary_fen)

    def rfm_class(self, last: Any, frequency: Any, monetary: Any) -> Any:
        r_high = last >= self._before(self.split.recency_days)
        f_high = frequency >= self.split.frequency
        m_high = monetary >= self.split.monetary_fen
        return case(
            *[
                ((r_high if r else ~r_high) & (f_high if f else ~f_high) & (m_high if m else ~m_high), k.code)
                for (r, f, m), k in CLASSES.items()
            ]
        )

    def recency_change_at(self, last: Any) -> Any:
        """When the recency next passes an R boundary or the class split (NULL: never again);
        as domain.lifecycle.next_recency_change."""
        thresholds = sorted({int(t) for t in (*self.bounds.recency_days, self.split.recency_days)})
        return case(*[(last >= self._before(t), day_start_plus(last, self.tz, t + 1)) for t in thresholds], else_=None)

    @staticmethod
    def cell(r: Any, f: Any, m: Any) -> Any:
        return cast(r, String) + "-" + cast(f, String) + "-" + cast(m, String)

    def tier(self, cell: Any) -> Any:
        levels = range(1, self.levels + 1)
        return case(
            {
                f"{r}-{f}-{m}": tier_of(r, f, m, self.levels, self.overrides)
                for r, f, m in product(levels, levels, levels)
            },
            value=cell,
        )
