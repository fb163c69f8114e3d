"""Builders for events as the shop sends them."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta, timezone, tzinfo
from typing import Any, TypeVar

from shared import clock

T = TypeVar("T")
CST = timezone(timedelta(hours=8))


# Times a test needs are built from the suite's clock (shared.clock, moved by FUGOU_CLOCK_OFFSET),
# never written as calendar dates: the suite must pass whatever today is.


def local_day(days: int = 0, hour: int = 0, minute: int = 0, tz: tzinfo = CST) -> datetime:
    """``hour:minute`` on the wall clock of ``tz``, ``days`` after the clock's today there (negative: before)."""
    today = clock.now().astimezone(tz).date() + timedelta(days=days)
    return datetime(today.year, today.month, today.day, hour, minute, tzinfo=tz)


def month_start(months: int = 0, tz: tzinfo = CST) -> datetime:
    """00:00 on the 1st of the month ``months`` after the clock's current month in ``tz``."""
    here = clock.now().astimezone(tz)
    index = here.year * 12 + here.month - 1 + months
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=tz)


def order_paid(
    merchant_id: str,
    customer_id: str,
    order_id: str,
    amount_fen: int,
    at: datetime | None = None,
    event_id: str | None = None,
    category: str = "milk-powder",
) -> dict[str, Any]:
    at = at or local_day(-1, 10)
    return {
        "event_id": event_id or str(uuid.uuid4()),
        "type": "order.paid",
        "merchant_id": merchant_id,
        "customer_id": customer_id,
        "occurred_at": at.isoformat(),
        "data": {
            "order_id": order_id,
            "amount_fen": amount_fen,
            "items": [{"sku": f"sku-{category}", "category": category, "quantity": 1, "amount_fen": amount_fen}],
            "coupon_ids": [],
        },
    }


async def eventually(
    probe: Callable[[], Awaitable[T]], check: Callable[[T], bool], timeout: float = 30.0, interval: float = 0.1
) -> T:
    """Poll until check(probe()) holds; fail with the last value seen."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await probe()
        if check(value):
            return value
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s; last value: {value!r}")
        await asyncio.sleep(interval)


def merchant_upserted(
    merchant_id: str,
    api_key: str,
    pepper: str = "fugou-development-only",
    jwt_secret: str = "test-jwt-secret-0123456789",
) -> dict[str, Any]:
    """What the gateway publishes when a merchant is created (for tests that run without it)."""
    from shared.tenancy import hash_api_key

    return {
        "event_id": str(uuid.uuid4()),
        "type": "merchant.upserted",
        "merchant_id": merchant_id,
        "occurred_at": clock.now().isoformat(),
        "data": {
            "name": merchant_id,
            "timezone": "Asia/Shanghai",
            "api_key_hashes": [hash_api_key(api_key, pepper)],
            "jwt_secret": jwt_secret,
            "active": True,
        },
    }
