"""The outbound facts loyalty raises (registered in shared.events; topic fugou.loyalty)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from services.loyalty.domain.common import zone
from services.loyalty.service_layer.books import Book
from shared.events import OutboundEvent


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def earned(
    book: Book,
    *,
    cause: str,
    points: int,
    status: str,
    at: datetime,
    order_id: str | None = None,
    bonus: str | None = None,
    lot_id: str | None = None,
    expires_at: datetime | None = None,
    matures_at: datetime | None = None,
    capped_by: int = 0,
) -> OutboundEvent:
    return OutboundEvent(
        "points.earned",
        book.merchant_id,
        {
            "cause": cause,
            "points": points,
            "status": status,
            "order_id": order_id,
            "bonus": bonus,
            "lot_id": lot_id,
            "expires_at": _iso(expires_at),
            "matures_at": _iso(matures_at),
            "capped_by": capped_by,
            "balance": book.balance,
            "pending": book.pending,
        },
        customer_id=book.customer_id,
        occurred_at=at,
    )


def redeemed(
    book: Book,
    *,
    redemption_id: str,
    kind: str,
    points: int,
    at: datetime,
    order_id: str | None = None,
    offset_fen: int | None = None,
    item_id: str | None = None,
    quantity: int | None = None,
    reward: dict[str, Any] | None = None,
) -> OutboundEvent:
    return OutboundEvent(
        "points.redeemed",
        book.merchant_id,
        {
            "redemption_id": redemption_id,
            "kind": kind,
            "points": points,
            "order_id": order_id,
            "offset_fen": offset_fen,
            "item_id": item_id,
            "quantity": quantity,
            "reward": reward,
            "balance": book.balance,
        },
        customer_id=book.customer_id,
        occurred_at=at,
    )


def days_left(expires_at: datetime, now: datetime, tz: str) -> int:
    """Local calendar days from today to the lot's last valid day (0: today is its last)."""
    z = zone(tz)
    last = (expires_at - timedelta(microseconds=1)).astimezone(z).date()
    return max(0, (last - now.astimezone(z).date()).days)


def expiring(
    merchant_id: str, customer_id: str, *, lot_id: str, points: int, expires_at: datetime, now: datetime, tz: str
) -> OutboundEvent:
    return OutboundEvent(
        "points.expiring",
        merchant_id,
        {
            "lot_id": lot_id,
            "points": points,
            "expires_at": expires_at.isoformat(),
            "days_left": days_left(expires_at, now, tz),
        },
        customer_id=customer_id,
        occurred_at=now,
    )


def expired(book: Book, *, lot_id: str, points: int, expired_at: datetime) -> OutboundEvent:
    return OutboundEvent(
        "points.expired",
        book.merchant_id,
        {"lot_id": lot_id, "points": points, "expired_at": expired_at.isoformat(), "balance": book.balance},
        customer_id=book.customer_id,
        occurred_at=expired_at,
    )


def level_changed(
    book: Book, *, from_level: str | None, to_level: str, direction: str, growth: int, at: datetime
) -> OutboundEvent:
    return OutboundEvent(
        "level.changed",
        book.merchant_id,
        {"from_level": from_level, "to_level": to_level, "direction": direction, "growth": growth},
        customer_id=book.customer_id,
        occurred_at=at,
    )


def stored_value_changed(
    merchant_id: str,
    customer_id: str,
    *,
    kind: str,
    ref: str,
    paid_fen: int,
    bonus_fen: int,
    balance_paid_fen: int,
    balance_bonus_fen: int,
    at: datetime,
) -> OutboundEvent:
    return OutboundEvent(
        "stored_value.changed",
        merchant_id,
        {
            "kind": kind,
            "ref": ref,
            "paid_fen": paid_fen,
            "bonus_fen": bonus_fen,
            "balance_paid_fen": balance_paid_fen,
            "balance_bonus_fen": balance_bonus_fen,
        },
        customer_id=customer_id,
        occurred_at=at,
    )
