"""Pure rules for a customer's paid-order aggregates."""

from __future__ import annotations

from datetime import date, datetime
from zoneinfo import ZoneInfo


def recency_days(last_order_at: datetime | None, now: datetime, tz: str) -> int | None:
    """Calendar days since the last paid order, in the merchant's time zone."""
    if last_order_at is None:
        return None
    zone = ZoneInfo(tz)
    today: date = now.astimezone(zone).date()
    return (today - last_order_at.astimezone(zone).date()).days
