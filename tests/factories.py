"""Builders for events as the shop sends them."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

T = TypeVar("T")
CST = timezone(timedelta(hours=8))


def order_paid(merchant_id: str, customer_id: str, order_id: str, amount_fen: int,
               at: datetime | None = None, event_id: str | None = None, category: str = "milk-powder") -> dict[str, Any]:
    at = at or datetime(2026, 11, 1, 10, 0, tzinfo=CST)
    return {
        "event_id": event_id or str(uuid.uuid4()), "type": "order.paid", "merchant_id": merchant_id,
        "customer_id": customer_id, "occurred_at": at.isoformat(),
        "data": {"order_id": order_id, "amount_fen": amount_fen,
                 "items": [{"sku": f"sku-{category}", "category": category, "quantity": 1, "amount_fen": amount_fen}],
                 "coupon_ids": []},
    }


async def eventually(probe: Callable[[], Awaitable[T]], check: Callable[[T], bool], timeout: float = 30.0,
                     interval: float = 0.1) -> T:
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


def merchant_upserted(merchant_id: str, api_key: str, pepper: str = "fugou-development-only",
                      jwt_secret: str = "test-jwt-secret-0123456789") -> dict[str, Any]:
    """What the gateway publishes when a merchant is created (for tests that run without it)."""
    from shared.tenancy import hash_api_key

    return {"event_id": str(uuid.uuid4()), "type": "merchant.upserted", "merchant_id": merchant_id,
            "occurred_at": datetime.now(timezone.utc).isoformat(),
            "data": {"name": merchant_id, "timezone": "Asia/Shanghai",
                     "api_key_hashes": [hash_api_key(api_key, pepper)], "jwt_secret": jwt_secret, "active": True}}
