"""ROI per rule and per template, from the coupons, the decisions and the orders (the numbers;
domain/roi.py does the arithmetic and the statistics).

- Redemptions: a rule's (or template's) coupons issued and used; the cost is each template's
  ``cost_fen_per_redemption`` per use when it sets one, else the discount given; GMV is the paid
  amount of the distinct orders that used them (net of refunds).
- Treatment and holdout (rules only): each customer the rule decided for, from the moment of its
  first decision until now: did they pay an order, how many, for how much.
- Baseline: customers of the merchant the rule never decided for (no coupon of it, not held out),
  over the same period, from the rule's first decision."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from sqlalchemy import BigInteger, and_, cast, func, literal, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.coupons.adapters.tables import coupons, issuances, orders, rules, templates
from services.coupons.domain import roi
from services.coupons.domain.templates import CouponTemplate
from shared.db import UTCDateTime

PAID = and_(orders.c.paid_at.isnot(None), orders.c.cancelled_at.is_(None))
NET = orders.c.amount_fen - orders.c.refunded_fen


async def _redemptions(session: AsyncSession, merchant_id: str, where: Any) -> roi.Redemptions:
    c = coupons
    issued = (await session.execute(select(func.count()).where(c.c.merchant_id == merchant_id, where))).scalar_one()
    costs = dict(
        (
            await session.execute(
                select(templates.c.template_id, templates.c.body).where(
                    templates.c.merchant_id == merchant_id,
                    templates.c.template_id.in_(select(c.c.template_id).where(c.c.merchant_id == merchant_id, where)),
                )
            )
        ).all()
    )
    per_use = {tid: CouponTemplate.model_validate_json(body).cost_fen_per_redemption for tid, body in costs.items()}
    used = c.c.state == "used"
    redeemed, cost = 0, 0
    for tid, n, discount in await session.execute(
        select(c.c.template_id, func.count(), func.coalesce(func.sum(c.c.discount_fen), 0))
        .where(c.c.merchant_id == merchant_id, where, used)
        .group_by(c.c.template_id)
    ):
        redeemed += int(n)
        per_redemption = per_use.get(tid)
        cost += per_redemption * int(n) if per_redemption is not None else int(discount)
    redeeming = select(c.c.order_id).where(c.c.merchant_id == merchant_id, where, used)
    gmv = (
        await session.execute(
            select(func.coalesce(func.sum(NET), 0)).where(
                orders.c.merchant_id == merchant_id, orders.c.order_id.in_(redeeming), PAID
            )
        )
    ).scalar_one()
    # cost goes in as the discount with no per-redemption cost: domain.roi then takes it as is.
    return roi.Redemptions(issued=int(issued), redeemed=redeemed, discount_fen=cost, gmv_fen=int(gmv))


async def _arm(session: AsyncSession, merchant_id: str, people: Any) -> roi.Arm:
    """``people``: a subquery of (customer_id, since). Each one's paid orders from ``since``."""
    o = orders
    per = (
        select(
            people.c.customer_id,
            func.count(o.c.order_id).label("n"),
            cast(func.coalesce(func.sum(NET), 0), BigInteger).label("gmv"),
        )
        .select_from(
            people.outerjoin(
                o,
                and_(
                    o.c.merchant_id == merchant_id,
                    o.c.customer_id == people.c.customer_id,
                    PAID,
                    o.c.paid_at >= people.c.since,
                ),
            )
        )
        .group_by(people.c.customer_id)
        .subquery()
    )
    n, converted, n_orders, gmv, gmv_sq = (
        await session.execute(
            select(
                func.count(),
                func.count().filter(per.c.n > 0),
                func.coalesce(func.sum(per.c.n), 0),
                func.coalesce(func.sum(per.c.gmv), 0),
                func.coalesce(func.sum(per.c.gmv * per.c.gmv), 0),
            )
        )
    ).one()
    return roi.Arm(int(n), int(converted), int(n_orders), int(gmv), int(gmv_sq))


def _decided(merchant_id: str, rule_id: str, outcome: str) -> Any:
    i = issuances
    return (
        select(i.c.customer_id, func.min(i.c.decided_at).label("since"))
        .where(i.c.merchant_id == merchant_id, i.c.rule_id == rule_id, i.c.outcome == outcome)
        .group_by(i.c.customer_id)
        .subquery()
    )


async def rule_report(session: AsyncSession, merchant_id: str, rule_id: str) -> roi.RoiReport:
    r = await _redemptions(session, merchant_id, coupons.c.rule_id == rule_id)
    treatment = await _arm(session, merchant_id, _decided(merchant_id, rule_id, "issued"))
    holdout = await _arm(session, merchant_id, _decided(merchant_id, rule_id, "holdout"))
    i = issuances
    start = (
        await session.execute(
            select(func.min(i.c.decided_at)).where(i.c.merchant_id == merchant_id, i.c.rule_id == rule_id)
        )
    ).scalar()
    baseline = None
    if start is not None:
        decided = select(i.c.customer_id).where(i.c.merchant_id == merchant_id, i.c.rule_id == rule_id)
        others = (
            select(orders.c.customer_id, literal(start, UTCDateTime()).label("since"))
            .where(orders.c.merchant_id == merchant_id, orders.c.customer_id.notin_(decided))
            .distinct()
            .subquery()
        )
        baseline = await _arm(session, merchant_id, others)
    if holdout.customers == 0:
        return roi.report(r, baseline=baseline)
    return roi.report(r, treatment=treatment, holdout=holdout, baseline=baseline)


async def template_report(session: AsyncSession, merchant_id: str, template_id: str) -> roi.RoiReport:
    return roi.report(await _redemptions(session, merchant_id, coupons.c.template_id == template_id))


async def roi_reports(session: AsyncSession, merchant_id: str) -> dict[str, Any]:
    """Every rule's and every template's report, as JSON-ready dicts."""
    rule_rows = (
        await session.execute(
            select(rules.c.rule_id, rules.c.name).where(rules.c.merchant_id == merchant_id).order_by(rules.c.created_at)
        )
    ).all()
    template_rows = (
        await session.execute(
            select(templates.c.template_id, templates.c.name)
            .where(templates.c.merchant_id == merchant_id)
            .order_by(templates.c.created_at)
        )
    ).all()
    return {
        "rules": [
            {"rule_id": rid, "name": name, **asdict(await rule_report(session, merchant_id, rid))}
            for rid, name in rule_rows
        ],
        "templates": [
            {"template_id": tid, "name": name, **asdict(await template_report(session, merchant_id, tid))}
            for tid, name in template_rows
        ],
    }
