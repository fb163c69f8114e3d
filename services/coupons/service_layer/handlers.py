"""Coupons's event handlers: one batch, one transaction (the consumer's), facts first, then what
reacts to them: the wallet (redeem, release, refund), the rules (issue on a trigger) and the
points mall (a coupon bought with points)."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from services.coupons.service_layer import facts, issuance, mall, wallet
from shared.events import EnvelopeBase


async def handle(session: AsyncSession, events: list[EnvelopeBase]) -> None:
    await facts.record_orders(session, events)
    await facts.record_referrals(session, events)
    await facts.record_segments(session, events)
    await wallet.apply_order_events(session, events)
    await issuance.apply_triggers(session, events)
    await mall.apply_mall_rewards(session, events)
