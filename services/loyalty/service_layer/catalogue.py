"""The points mall's catalogue: the merchant's items (``domain.redemption.MallItem``) with their
live stock. The stock an item was created with is ``stock``; ``redeemed`` counts what was taken
(raised atomically by redemptions), so a merchant can raise or lower the stock while customers
redeem, never below what is already gone."""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.ext.asyncio import AsyncSession

from services.loyalty.adapters.tables import mall_items
from services.loyalty.domain.redemption import Catalogue, MallItem
from services.loyalty.service_layer.spending import Conflict, StoredItem, get_item, stored_item


async def items(session: AsyncSession, merchant_id: str) -> list[StoredItem]:
    mi = mall_items.c
    return [
        stored_item(r)
        for r in await session.execute(
            select(mall_items).where(mi.merchant_id == merchant_id).order_by(mi.created_at, mi.item_id)
        )
    ]


def on_sale(items_: list[StoredItem], now: datetime) -> list[StoredItem]:
    """What a customer sees: active, inside its window (``Catalogue.on_sale``)."""
    visible = {i.item_id for i in Catalogue(items=[s.item for s in items_]).on_sale(now)}
    return [s for s in items_ if s.item.item_id in visible]


async def create(session: AsyncSession, merchant_id: str, item: MallItem, now: datetime) -> StoredItem:
    if await get_item(session, merchant_id, item.item_id) is not None:
        raise Conflict("item_exists", f"mall item {item.item_id!r} exists; PUT it to change it", field="item_id")
    await session.execute(
        mall_items.insert().values(
            merchant_id=merchant_id,
            item_id=item.item_id,
            body=item.model_dump_json(),
            stock=item.stock,
            redeemed=0,
            created_at=now,
            updated_at=now,
        )
    )
    return StoredItem(item, item.stock, 0)


async def replace(session: AsyncSession, merchant_id: str, item: MallItem, now: datetime) -> StoredItem:
    """Replace an item (name, points, reward, stock, limits, window, active); the stock may not
    go below what was already redeemed."""
    found = await get_item(session, merchant_id, item.item_id, lock=True)
    if found is None:
        raise Conflict("not_found", f"no mall item {item.item_id!r}", field="item_id", status=404)
    if item.stock is not None and item.stock < found.redeemed:
        raise Conflict(
            "stock_below_redeemed", f"stock {item.stock} is below the {found.redeemed} already redeemed", field="stock"
        )
    mi = mall_items.c
    await session.execute(
        update(mall_items)
        .where(mi.merchant_id == merchant_id, mi.item_id == item.item_id)
        .values(body=item.model_dump_json(), stock=item.stock, updated_at=now)
    )
    return StoredItem(item, None if item.stock is None else item.stock - found.redeemed, found.redeemed)


async def delete(session: AsyncSession, merchant_id: str, item_id: str) -> bool:
    """Remove an item (its redemptions keep their reward; prefer ``active: false`` to withdraw it)."""
    mi = mall_items.c
    # A DELETE runs on a cursor: its result is a CursorResult (AsyncSession.execute says Result).
    result = cast(
        "CursorResult[Any]",
        await session.execute(mall_items.delete().where(mi.merchant_id == merchant_id, mi.item_id == item_id)),
    )
    return bool(result.rowcount)
