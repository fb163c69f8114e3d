"""Issuing coupons: the one path every coupon takes into a wallet (a rule's bundle, a claim).

Stock and per-customer limits hold under any concurrency because they are enforced by the
database in the caller's transaction:

- per customer: one conditional upsert on ``customer_limits`` (``issued + n <= limit``), which
  takes each customer's row lock; customers are handled in sorted order, so two issuers never
  wait on each other crosswise;
- stock: the template's row is locked (``SELECT … FOR UPDATE``), the grant computed from what is
  left, and ``issued`` raised by exactly that; customers beyond the stock get nothing and their
  per-customer counts are given back.

``coupon.issued`` events are built by the database from the inserted rows (one INSERT … SELECT),
so a bundle for a hundred thousand customers stays a handful of statements."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import ARRAY, BigInteger, String, bindparam, column, func, insert, literal, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.coupons.adapters.tables import coupons, customer_limits, messaging, templates
from services.coupons.domain.templates import face_value_fen, issuable_at, validity_window
from services.coupons.service_layer.templates import StoredTemplate
from shared.db import UTCDateTime, bulk_insert, dialect_name, in_values, json_object
from shared.outbox import Outbox

outbox = Outbox(messaging.outbox)
CHUNK = 5000  # customers per statement


class IssueRefused(Exception):
    """Nobody could be issued this template: ``code`` says why (``http_status`` for the API)."""

    STATUS: ClassVar[dict[str, int]] = {
        "inactive": 409,
        "template_expired": 409,
        "out_of_stock": 409,
        "limit_reached": 409,
    }

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message
        self.http_status = self.STATUS.get(code, 409)


@dataclass(slots=True)
class IssueResult:
    issued: list[tuple[str, str]] = field(default_factory=list)  # (customer_id, coupon_id)
    refused: dict[str, str] = field(default_factory=dict)  # customer_id -> out_of_stock | limit_reached


async def issue(
    session: AsyncSession,
    merchant_id: str,
    stored: StoredTemplate,
    customer_ids: Sequence[str],
    *,
    now: datetime,
    count: int = 1,
    rule_id: str | None = None,
) -> IssueResult:
    """Issue ``count`` coupons of ``stored`` to each customer, as far as the per-customer limit
    and the stock allow (in customer-id order when stock runs out); return who got which coupon
    and who was refused why. Raises IssueRefused when the template cannot be issued at all."""
    t = stored.template
    if not stored.active:
        raise IssueRefused("inactive", f"template {stored.template_id} is deactivated")
    verdict = issuable_at(t, now)
    if not verdict:
        raise IssueRefused("template_expired", verdict.message)
    limit = t.per_customer_limit
    if limit is not None and count > limit:
        raise IssueRefused("limit_reached", f"{count} coupons of a template limited to {limit} per customer")
    result = IssueResult()
    wanted = sorted(set(customer_ids))
    for i in range(0, len(wanted), CHUNK):
        await _issue_chunk(session, merchant_id, stored, wanted[i : i + CHUNK], now, count, rule_id, result)
    return result


async def _issue_chunk(
    session: AsyncSession,
    merchant_id: str,
    stored: StoredTemplate,
    ids: list[str],
    now: datetime,
    count: int,
    rule_id: str | None,
    result: IssueResult,
) -> None:
    t, tid = stored.template, stored.template_id
    allowed = ids
    if t.per_customer_limit is not None:
        got = await bulk_insert(
            session,
            customer_limits,
            ["merchant_id", "customer_id", "template_id", "issued"],
            [(merchant_id, cid, tid, count) for cid in ids],
            conflict=["merchant_id", "customer_id", "template_id"],
            update={"issued": "{t}.issued + excluded.issued"},
            update_where=f"{{t}}.issued + excluded.issued <= {int(t.per_customer_limit)}",
            returning=["customer_id"],
        )
        passed = {r[0] for r in got}
        allowed = [cid for cid in ids if cid in passed]
        result.refused.update((cid, "limit_reached") for cid in ids if cid not in passed)
    if not allowed:
        return
    mine = (templates.c.merchant_id == merchant_id, templates.c.template_id == tid)
    stock, issued = (
        await session.execute(select(templates.c.stock, templates.c.issued).where(*mine).with_for_update())
    ).one()
    granted = len(allowed) if stock is None else max(0, min(len(allowed), (stock - issued) // count))
    if granted < len(allowed):
        short = allowed[granted:]
        allowed = allowed[:granted]
        result.refused.update((cid, "out_of_stock") for cid in short)
        if t.per_customer_limit is not None:
            await session.execute(
                update(customer_limits)
                .where(
                    customer_limits.c.merchant_id == merchant_id,
                    customer_limits.c.template_id == tid,
                    in_values(customer_limits.c.customer_id, short),
                )
                .values(issued=customer_limits.c.issued - count)
            )
    if not allowed:
        return
    await session.execute(update(templates).where(*mine).values(issued=templates.c.issued + granted * count))
    starts_at, expires_at = validity_window(t, now)
    issued = [(cid, f"cpn_{uuid.uuid4().hex}") for cid in allowed for _ in range(count)]
    result.issued.extend(issued)
    columns = [
        "merchant_id",
        "coupon_id",
        "customer_id",
        "template_id",
        "rule_id",
        "state",
        "starts_at",
        "expires_at",
        "issued_at",
        "version",
    ]

    def data(coupon_id: Any) -> Any:
        return json_object(
            "coupon_id",
            coupon_id,
            "template_id",
            literal(tid),
            "template_name",
            literal(t.name),
            "rule_id",
            literal(rule_id, String()),
            "kind",
            literal(t.kind.type),
            "face_value_fen",
            literal(face_value_fen(t), BigInteger()),
            "starts_at",
            literal(starts_at.isoformat()),
            "expires_at",
            literal(expires_at.isoformat()),
        ).label("data")

    if dialect_name(session) == "postgresql":
        # Only what varies goes over the wire (two arrays, not ten), and the events are built
        # from the same arrays rather than by looking up the rows just written.
        src = (
            func.unnest(
                bindparam("coupon_ids", [i for _, i in issued], type_=ARRAY(String())),
                bindparam("customer_ids", [c for c, _ in issued], type_=ARRAY(String())),
            )
            .table_valued(column("coupon_id", String()), column("customer_id", String()))
            .render_derived()
        )
        await session.execute(
            insert(coupons).from_select(
                columns,
                select(
                    literal(merchant_id),
                    src.c.coupon_id,
                    src.c.customer_id,
                    literal(tid),
                    literal(rule_id, String()),
                    literal("available"),
                    literal(starts_at, UTCDateTime()),
                    literal(expires_at, UTCDateTime()),
                    literal(now, UTCDateTime()),
                    literal(0),
                ),
            )
        )
        announced = select(
            literal(merchant_id).label("merchant_id"), src.c.customer_id.label("customer_id"), data(src.c.coupon_id)
        )
    else:
        await bulk_insert(
            session,
            coupons,
            columns,
            [(merchant_id, i, cid, tid, rule_id, "available", starts_at, expires_at, now, 0) for cid, i in issued],
        )
        c = coupons
        announced = select(c.c.merchant_id, c.c.customer_id, data(c.c.coupon_id)).where(
            c.c.merchant_id == merchant_id, in_values(c.c.coupon_id, [i for _, i in issued])
        )
    await outbox.stage_select(session, "coupon.issued", announced)
