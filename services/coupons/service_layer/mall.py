"""Coupons bought with points: loyalty's points mall sells an item whose reward is a coupon and
says so with ``points.redeemed`` (kind ``mall``, reward ``{"type": "coupon", "template_id": …}``);
this issues it through the one issuing path (stock and per-customer limits hold). The consumer's
inbox applies each event once, so a redelivered redemption issues nothing twice.

A reward that cannot be issued (unknown or deactivated template, out of stock, over the limit)
is logged with the redemption id for the merchant to settle; the points were already spent, and
loyalty's mall should only sell items whose template can be issued."""

from __future__ import annotations

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from services.coupons.service_layer.issue import IssueRefused, issue
from services.coupons.service_layer.templates import get_template
from shared import clock
from shared.events import EnvelopeBase

log = structlog.get_logger("fugou.coupons.mall")


async def apply_mall_rewards(session: AsyncSession, events: list[EnvelopeBase]) -> None:
    now = clock.now()
    for e in events:
        if e.type != "points.redeemed":
            continue
        d = e.data  # type: ignore[attr-defined]  # data is declared by each registered envelope model
        reward = d.reward or {}
        if d.kind != "mall" or reward.get("type") != "coupon" or not reward.get("template_id"):
            continue
        stored = await get_template(session, e.merchant_id, str(reward["template_id"]))
        problem = None
        if stored is None:
            problem = "unknown_template"
        else:
            try:
                result = await issue(
                    session, e.merchant_id, stored, [e.customer_id or ""], now=now, count=d.quantity or 1
                )
                if result.refused:
                    problem = next(iter(result.refused.values()))
            except IssueRefused as refused:
                problem = refused.code
        if problem is not None:
            log.warning(
                "coupons.mall_reward_not_issued",
                merchant_id=e.merchant_id,
                customer_id=e.customer_id,
                redemption_id=d.redemption_id,
                template_id=reward.get("template_id"),
                reason=problem,
            )
