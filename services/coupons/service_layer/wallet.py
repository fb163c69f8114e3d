"""The customer's wallet: what a customer holds, claiming a public coupon, pricing a cart, locking
a coupon to an order; redemption, release and refund from the shop's order events; and the clock
(the expiry sweep and the ``coupon.expiring`` reminders).

Every change of a coupon's state goes through the state machine of ``domain.wallet`` and is
written with a compare-and-set on ``coupons.version`` (``UPDATE … WHERE version = :loaded``): of
two transactions that read the same version, one writes and the other finds nothing to update,
re-reads the coupon and decides again from what the winner left (a coupon used by another order
is then refused). On PostgreSQL the writes of a batch are one ``UPDATE … FROM unnest(…)``.

Redemption (``order.paid`` with ``coupon_ids``, the coupons the shop applied):

- a coupon locked to that order is used, with the discount priced when it was locked;
- an available coupon is used if it applies to the order's items at the time of payment (the
  items are priced as a cart, the shipping fee taken from ``data.shipping_fen`` when the shop
  sends it); with its share of the discount when several coupons price together. An order with
  no items is taken on the shop's word (window, state and owner still checked), at the coupon's
  face value;
- anything else (used by another order, locked to another, expired, not the payer's, not
  applicable, unknown) is refused: logged as ``coupon.redemption_refused`` and kept in
  ``redemption_refusals`` for the merchant's support staff, never applied.

A coupon locked to a paid order that the payment does not name is released (the shop says the
order was paid without it). ``order.cancelled`` gives back the coupons locked to or used by the
order; a full ``order.refunded`` gives back the used ones only under the merchant's ``restore``
policy. What comes back is available again, or expired if its window ended meanwhile
(``coupon.released`` either way, with the state).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, NamedTuple, cast

import structlog
from sqlalchemy import and_, bindparam, or_, select, text, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker

from services.coupons.adapters.tables import (
    coupon_policies,
    coupons,
    messaging,
    orders,
    redemption_refusals,
    templates,
)
from services.coupons.domain import wallet as machine
from services.coupons.domain.cart import (
    Applied,
    Cart,
    CartLine,
    Combination,
    Held,
    best_combination,
    combine,
    evaluate,
    stacking_conflict,
)
from services.coupons.domain.templates import CouponTemplate, Reason, face_value_fen, zone
from services.coupons.domain.wallet import Coupon, CouponError, State
from services.coupons.service_layer.issue import IssueRefused, issue
from services.coupons.service_layer.templates import StoredTemplate
from shared import clock
from shared.db import UTCDateTime, bulk_insert, dialect_name, fetch_rows, in_values, insert_for
from shared.events import EnvelopeBase, OutboundEvent
from shared.outbox import Outbox

log = structlog.get_logger("fugou.coupons.wallet")
outbox = Outbox(messaging.outbox)

CHUNK = 2000  # coupons per sweep step (one transaction)
MAX_ROWS = 1000  # coupons one wallet read looks at, at most
MAX_ROUNDS = 8  # compare-and-set rounds before giving up on a batch (each lost round is another's win)
RefundPolicy = Literal["restore", "keep_used"]
# A coupon's state by name (domain.wallet.State's values), as stored and as the wallet shows it.
StateName = Literal["available", "locked", "used", "expired", "revoked"]
DEFAULT_REFUND_POLICY: RefundPolicy = "keep_used"
DEFAULT_EXPIRING_DAYS = 3
WALLET_STATES = ("available", "locked", "used", "expired")


class WalletError(Exception):
    """A refused wallet call: HTTP status, machine-readable code, message, the field at fault."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field

    @classmethod
    def of(cls, err: CouponError, field: str | None = None) -> WalletError:
        return cls(err.http_status, err.code, err.message, field)


class ConcurrentChange(Exception):
    """Coupons kept changing under a batch for MAX_ROUNDS rounds (never seen in practice)."""


# ---------------------------------------------------------------- templates, parsed once


@dataclass(frozen=True, slots=True)
class TemplateView:
    """A parsed template with what a wallet shows of it, computed once."""

    template_id: str
    name: str
    template: CouponTemplate
    updated_at: datetime
    kind: dict[str, Any]
    scope: Any  # "all", {"categories": [...]} or {"skus": [...]}
    face_value_fen: int | None

    @classmethod
    def of(cls, template_id: str, name: str, body: str, updated_at: datetime) -> TemplateView:
        t = CouponTemplate.model_validate_json(body)
        return cls(
            template_id,
            name,
            t,
            updated_at,
            t.kind.model_dump(),
            t.scope if isinstance(t.scope, str) else t.scope.model_dump(),
            face_value_fen(t),
        )


class TemplateCache:
    """Parsed templates per (merchant, template), valid while the row's ``updated_at`` is the one
    read with the coupons: a changed template is parsed again at its next read."""

    def __init__(self, max_entries: int = 20_000) -> None:
        self._views: dict[tuple[str, str], TemplateView] = {}
        self.max_entries = max_entries

    async def views(
        self, conn: AsyncConnection | AsyncSession, merchant_id: str, wanted: dict[str, datetime | None]
    ) -> dict[str, TemplateView]:
        out: dict[str, TemplateView] = {}
        missing: list[str] = []
        for tid, updated_at in wanted.items():
            hit = self._views.get((merchant_id, tid))
            if hit is not None and (updated_at is None or hit.updated_at == updated_at):
                out[tid] = hit
            else:
                missing.append(tid)
        if missing:
            t = templates
            rows = await conn.execute(
                select(t.c.template_id, t.c.name, t.c.body, t.c.updated_at).where(
                    t.c.merchant_id == merchant_id, in_values(t.c.template_id, missing)
                )
            )
            if len(self._views) + len(missing) > self.max_entries:
                self._views.clear()
            for r in rows:
                view = TemplateView.of(r.template_id, r.name, r.body, r.updated_at)
                self._views[(merchant_id, r.template_id)] = out[r.template_id] = view
        return out


# ---------------------------------------------------------------- reading a wallet


@dataclass(frozen=True, slots=True)
class WalletCoupon:
    """One coupon as the wallet shows it. ``state`` is as of now: an available coupon whose
    window ended shows as expired before the sweep gets to it."""

    coupon_id: str
    customer_id: str
    template: TemplateView
    rule_id: str | None
    state: StateName
    starts_at: datetime
    expires_at: datetime
    issued_at: datetime
    order_id: str | None
    locked_at: datetime | None
    used_at: datetime | None
    discount_fen: int | None
    order_amount_fen: int | None


_C = coupons.c
_COLUMNS = (
    _C.coupon_id,
    _C.customer_id,
    _C.template_id,
    _C.rule_id,
    _C.state,
    _C.order_id,
    _C.starts_at,
    _C.expires_at,
    _C.issued_at,
    _C.locked_at,
    _C.used_at,
    _C.discount_fen,
    _C.order_amount_fen,
    _C.version,
)
_RANK = {"available": 0, "locked": 1, "used": 2, "expired": 3, "revoked": 4}


def _effective(state: StateName, expires_at: datetime, now: datetime) -> StateName:
    return "expired" if state == "available" and expires_at <= now else state


def _state_filter(states: Iterable[str], now: Any) -> Any:
    wanted = set(states)
    if wanted >= set(WALLET_STATES):  # everything but what is left out (revoked, for customers)
        return _C.state.in_(sorted(wanted))
    parts = []
    for s in sorted(wanted):
        if s == "available":
            parts.append(and_(_C.state == "available", _C.expires_at > now))
        elif s == "expired":
            parts.append(or_(_C.state == "expired", and_(_C.state == "available", _C.expires_at <= now)))
        else:
            parts.append(_C.state == s)
    return or_(*parts)


def _order_key(c: WalletCoupon) -> tuple[int, float, str]:
    """Available: soonest expiry first; locked and used: latest first; expired: latest expiry first."""
    moment = {"available": c.expires_at, "locked": c.locked_at, "used": c.used_at, "expired": c.expires_at}.get(
        c.state
    ) or c.issued_at
    ts = moment.timestamp()
    return _RANK.get(c.state, 9), ts if c.state == "available" else -ts, c.coupon_id


class _WalletRow(NamedTuple):
    coupon_id: str
    customer_id: str
    template_id: str
    rule_id: str | None
    state: str
    order_id: str | None
    starts_at: datetime
    expires_at: datetime
    issued_at: datetime
    locked_at: datetime | None
    used_at: datetime | None
    discount_fen: int | None
    order_amount_fen: int | None
    version: int
    template_updated_at: datetime


def _wallet_query(states: tuple[str, ...]) -> Any:
    # Placeholder values: each execution passes its own (they let the IN list be rendered once).
    now = bindparam("now", datetime.min.replace(tzinfo=UTC), type_=UTCDateTime())
    return (
        select(*_COLUMNS, templates.c.updated_at.label("template_updated_at"))
        .join_from(
            coupons,
            templates,
            and_(templates.c.merchant_id == _C.merchant_id, templates.c.template_id == _C.template_id),
        )
        .where(
            _C.merchant_id == bindparam("merchant_id", ""),
            _C.customer_id == bindparam("customer_id", ""),
            _state_filter(states, now),
        )
        .order_by(_C.issued_at.desc(), _C.coupon_id)
        .limit(MAX_ROWS)
    )


async def _wallet_rows(
    conn: AsyncConnection | AsyncSession, merchant_id: str, customer_id: str, states: tuple[str, ...], now: datetime
) -> list[_WalletRow]:
    """The one query of a wallet read (shared.db.fetch_rows: on the driver itself on PostgreSQL)."""
    params = {"merchant_id": merchant_id, "customer_id": customer_id, "now": now}
    return [_WalletRow(*r) for r in await fetch_rows(conn, _wallet_query(states), params, key=("wallet", states))]


async def list_wallet(
    conn: AsyncConnection | AsyncSession,
    cache: TemplateCache,
    merchant_id: str,
    customer_id: str,
    *,
    now: datetime,
    states: Iterable[str] = WALLET_STATES,
    limit: int = 200,
) -> tuple[list[WalletCoupon], bool]:
    """A customer's coupons in the given (as-of-now) states, ordered for display; and whether
    there were more than ``limit``. One statement, plus one for templates not parsed yet."""
    rows = await _wallet_rows(conn, merchant_id, customer_id, tuple(sorted(set(states))), now)
    views = await cache.views(conn, merchant_id, {r.template_id: r.template_updated_at for r in rows})
    found = sorted(
        (_wallet_coupon(r, views[r.template_id], now) for r in rows if r.template_id in views), key=_order_key
    )
    return found[:limit], len(found) > limit


def _wallet_coupon(r: Any, view: TemplateView, now: datetime) -> WalletCoupon:
    return WalletCoupon(
        r.coupon_id,
        r.customer_id,
        view,
        r.rule_id,
        _effective(r.state, r.expires_at, now),
        r.starts_at,
        r.expires_at,
        r.issued_at,
        r.order_id,
        r.locked_at,
        r.used_at,
        r.discount_fen,
        r.order_amount_fen,
    )


async def get_coupon(
    session: AsyncSession | AsyncConnection, cache: TemplateCache, merchant_id: str, coupon_id: str, now: datetime
) -> WalletCoupon | None:
    row = (
        await session.execute(select(*_COLUMNS).where(_C.merchant_id == merchant_id, _C.coupon_id == coupon_id))
    ).first()
    if row is None:
        return None
    views = await cache.views(session, merchant_id, {row.template_id: None})
    return _wallet_coupon(row, views[row.template_id], now)


@dataclass(frozen=True, slots=True)
class Refusal:
    order_id: str
    coupon_id: str
    code: str
    message: str
    refused_at: datetime


async def refusals_of(session: AsyncSession, merchant_id: str, customer_id: str, limit: int = 50) -> list[Refusal]:
    r = redemption_refusals.c
    rows = await session.execute(
        select(r.order_id, r.coupon_id, r.code, r.message, r.refused_at)
        .where(r.merchant_id == merchant_id, r.customer_id == customer_id)
        .order_by(r.refused_at.desc())
        .limit(limit)
    )
    return [Refusal(*row) for row in rows]


# ---------------------------------------------------------------- claiming


async def claim(session: AsyncSession, merchant_id: str, customer_id: str, template_id: str, *, now: datetime) -> str:
    """Claim one coupon of a public, active template (in the caller's transaction): stock and the
    per-customer limit are enforced by ``issue`` in the database. Returns the new coupon's id."""
    t = templates.c
    row = (
        await session.execute(select(templates).where(t.merchant_id == merchant_id, t.template_id == template_id))
    ).first()
    if row is None or not row.public:  # a template that is not public is nobody's business
        raise WalletError(404, "not_found", f"no public coupon template {template_id!r}", "template_id")
    stored = StoredTemplate.from_row(row)
    if not row.active:
        raise WalletError(409, "inactive", "this coupon is no longer offered", "template_id")
    try:
        result = await issue(session, merchant_id, stored, [customer_id], now=now)
    except IssueRefused as e:
        raise WalletError(e.http_status, e.code, e.message, "template_id") from None
    refused = result.refused.get(customer_id)
    if refused == "out_of_stock":
        raise WalletError(
            409, "out_of_stock", f"all {stored.stock} coupons of this template have been claimed", "template_id"
        )
    if refused is not None:
        raise WalletError(
            409,
            "limit_reached",
            f"one customer may get {stored.template.per_customer_limit} coupon(s) "
            "of this template, and you have had them",
            "template_id",
        )
    return result.issued[0][1]


# ---------------------------------------------------------------- pricing a cart


@dataclass(frozen=True, slots=True)
class Priced:
    coupon: WalletCoupon
    applied: Applied


async def applicable(
    session: AsyncSession | AsyncConnection,
    cache: TemplateCache,
    merchant_id: str,
    customer_id: str,
    cart: Cart,
    *,
    now: datetime,
    tz: str,
) -> tuple[list[Priced], Combination]:
    """Every coupon the customer can use now (available, in its window) priced alone on the
    cart, and the best combination. Coupons that do not apply say why."""
    held, _ = await list_wallet(
        session, cache, merchant_id, customer_id, now=now, states=("available",), limit=MAX_ROWS
    )
    helds = [Held(c.coupon_id, c.template.template, c.expires_at, c.starts_at) for c in held]
    best = best_combination(helds, cart, now, tz)
    alone = {h.coupon_id: evaluate(h, cart, now, tz) for h in helds}
    priced = [Priced(c, alone[c.coupon_id]) for c in held]
    priced.sort(key=lambda p: (not p.applied.ok, -p.applied.discount_fen, p.coupon.expires_at, p.coupon.coupon_id))
    return priced, best


# ---------------------------------------------------------------- writing coupons (compare-and-set)


@dataclass(slots=True)
class _Row:
    """A coupon as loaded, with what the state machine does not hold."""

    merchant_id: str
    coupon: Coupon
    rule_id: str | None
    discount_fen: int | None
    order_amount_fen: int | None
    loaded_version: int

    @property
    def key(self) -> tuple[str, str]:
        return self.merchant_id, self.coupon.coupon_id


def _row(merchant_id: str, r: Any) -> _Row:
    c = Coupon(
        r.coupon_id,
        r.customer_id,
        r.template_id,
        r.starts_at,
        r.expires_at,
        State(r.state),
        r.order_id,
        r.locked_at,
        r.used_at,
        r.version,
    )
    return _Row(merchant_id, c, r.rule_id, r.discount_fen, r.order_amount_fen, r.version)


_SET = ("state", "order_id", "locked_at", "used_at", "discount_fen", "order_amount_fen", "version")
_PG_CAS = text(
    "UPDATE coupons AS c SET state = v.state, order_id = v.order_id, locked_at = v.locked_at, "
    "used_at = v.used_at, discount_fen = v.discount_fen, order_amount_fen = v.order_amount_fen, "
    "version = v.version "
    "FROM unnest(CAST(:merchant_id AS text[]), CAST(:coupon_id AS text[]), CAST(:loaded AS integer[]), "
    "CAST(:state AS text[]), CAST(:order_id AS text[]), CAST(:locked_at AS timestamptz[]), "
    "CAST(:used_at AS timestamptz[]), CAST(:discount_fen AS bigint[]), CAST(:order_amount_fen AS bigint[]), "
    "CAST(:version AS integer[])) "
    "AS v(merchant_id, coupon_id, loaded, state, order_id, locked_at, used_at, discount_fen, order_amount_fen, "
    "version) "
    "WHERE c.merchant_id = v.merchant_id AND c.coupon_id = v.coupon_id AND c.version = v.loaded "
    "RETURNING c.merchant_id, c.coupon_id"
)


async def _write(session: AsyncSession, rows: Sequence[_Row]) -> set[tuple[str, str]]:
    """Write each changed row if its version is still the one loaded; return the keys written."""
    if not rows:
        return set()
    ordered = sorted(rows, key=lambda r: r.key)  # one lock order for every writer
    values = [
        (
            r.merchant_id,
            r.coupon.coupon_id,
            r.loaded_version,
            str(r.coupon.state),
            r.coupon.order_id,
            r.coupon.locked_at,
            r.coupon.used_at,
            r.discount_fen,
            r.order_amount_fen,
            r.coupon.version,
        )
        for r in ordered
    ]
    if dialect_name(session) == "postgresql":
        cols = ("merchant_id", "coupon_id", "loaded", *_SET)
        params = {name: list(col) for name, col in zip(cols, zip(*values, strict=True), strict=True)}
        return {(m, c) for m, c in await session.execute(_PG_CAS, params)}
    won: set[tuple[str, str]] = set()
    for m, cid, loaded, *new in values:
        # An UPDATE runs on a cursor: its result is a CursorResult (AsyncSession.execute says Result).
        result = cast(
            "CursorResult[Any]",
            await session.execute(
                update(coupons)
                .where(_C.merchant_id == m, _C.coupon_id == cid, _C.version == loaded)
                .values(dict(zip(_SET, new, strict=True)))
            ),
        )
        if result.rowcount:
            won.add((m, cid))
    return won


async def _load(
    session: AsyncSession, by_id: dict[str, set[str]], by_order: dict[str, set[str]] | None = None
) -> dict[tuple[str, str], _Row]:
    """Coupons by id, and coupons tied to the given orders, per merchant."""
    by_order = by_order or {}
    clauses = []
    for m in sorted(set(by_id) | set(by_order)):
        ids, orders_ = sorted(by_id.get(m, ())), sorted(by_order.get(m, ()))
        which = [in_values(_C.coupon_id, ids)] if ids else []
        which += [in_values(_C.order_id, orders_)] if orders_ else []
        if which:
            clauses.append(and_(_C.merchant_id == m, or_(*which)))
    if not clauses:
        return {}
    rows = await session.execute(select(_C.merchant_id, *_COLUMNS).where(or_(*clauses)))
    return {(r.merchant_id, r.coupon_id): _row(r.merchant_id, r) for r in rows}


def _state_event(row: _Row, order_id: str | None, at: datetime, type_: str = "coupon.released") -> OutboundEvent:
    c = row.coupon
    return OutboundEvent(
        type_,
        row.merchant_id,
        {
            "coupon_id": c.coupon_id,
            "template_id": c.template_id,
            "rule_id": row.rule_id,
            "state": str(c.state),
            "order_id": order_id,
        },
        customer_id=c.owner_id,
        occurred_at=at,
    )


# ---------------------------------------------------------------- locking to an order


async def _owned(session: AsyncSession, merchant_id: str, customer_id: str, coupon_id: str) -> _Row:
    row = (
        await session.execute(select(*_COLUMNS).where(_C.merchant_id == merchant_id, _C.coupon_id == coupon_id))
    ).first()
    # Another customer's coupon answers as if it did not exist: its id tells nobody anything.
    if row is None or row.customer_id != customer_id:
        raise WalletError(404, "not_found", f"no coupon {coupon_id!r} in your wallet", "coupon_id")
    return _row(merchant_id, row)


_CART_REASONS = frozenset({"out_of_scope", "below_threshold", "not_nth_order_today", "nothing_to_discount"})


async def _check_order(session: AsyncSession, merchant_id: str, customer_id: str, order_id: str) -> None:
    """A coupon cannot be held for an order already paid or cancelled (nothing would ever let it
    go), nor for another customer's order. An order not seen yet is fine: it is being placed."""
    o = orders.c
    row = (
        await session.execute(
            select(o.customer_id, o.paid_at, o.cancelled_at).where(o.merchant_id == merchant_id, o.order_id == order_id)
        )
    ).first()
    if row is None:
        return
    if row.customer_id != customer_id:
        raise WalletError(404, "not_found", f"no order {order_id!r} of yours", "order_id")
    if row.cancelled_at is not None:
        raise WalletError(409, "order_cancelled", f"order {order_id} was cancelled", "order_id")
    if row.paid_at is not None:
        raise WalletError(409, "order_paid", f"order {order_id} is already paid", "order_id")


async def lock(
    session: AsyncSession,
    cache: TemplateCache,
    merchant_id: str,
    customer_id: str,
    coupon_id: str,
    order_id: str,
    cart: Cart,
    *,
    now: datetime,
    tz: str,
) -> tuple[str, int | None]:
    """Hold the coupon for an order being placed, priced on its cart (in the caller's
    transaction). Locking again to the same order changes nothing. Returns (state, discount_fen)."""
    for _ in range(MAX_ROUNDS):
        row = await _owned(session, merchant_id, customer_id, coupon_id)
        views = await cache.views(session, merchant_id, {row.coupon.template_id: None})
        held = Held(coupon_id, views[row.coupon.template_id].template, row.coupon.expires_at, row.coupon.starts_at)
        check = evaluate(held, cart, now, tz)
        try:
            t = machine.lock(row.coupon, order_id, now, customer_id, check=check)
        except CouponError as e:
            raise WalletError.of(e, "cart" if e.code in _CART_REASONS else "coupon_id") from None
        if not t.changed:
            return str(row.coupon.state), row.discount_fen
        await _check_order(session, merchant_id, customer_id, order_id)
        # The coupons already held by this order: they must stack with this one, and take their share first.
        others = (
            await session.execute(
                select(_C.coupon_id, _C.template_id, _C.starts_at, _C.expires_at).where(
                    _C.merchant_id == merchant_id,
                    _C.order_id == order_id,
                    _C.state == "locked",
                    _C.customer_id == customer_id,
                    _C.coupon_id != coupon_id,
                )
            )
        ).all()
        other_views = await cache.views(session, merchant_id, {o.template_id: None for o in others})
        together = [
            Held(o.coupon_id, other_views[o.template_id].template, o.expires_at, o.starts_at) for o in others
        ] + [held]
        conflict = stacking_conflict(together)
        if conflict is not None:
            raise WalletError(422, "stacking_conflict", conflict, "coupon_id")
        pick = next(p for p in combine(together, cart, now, tz).chosen if p.coupon_id == coupon_id)
        if pick.discount_fen == 0:
            raise WalletError(
                422,
                "nothing_to_discount",
                "the coupons already locked to this order leave nothing for this one to take off",
                "cart",
            )
        new = replace(row, coupon=t.coupon, discount_fen=pick.discount_fen, order_amount_fen=None)
        if await _write(session, [new]):
            return str(t.coupon.state), pick.discount_fen
    raise ConcurrentChange(coupon_id)


async def unlock(
    session: AsyncSession, merchant_id: str, customer_id: str, coupon_id: str, order_id: str, *, now: datetime
) -> str:
    """The customer gives up the order: a coupon locked to it returns to the wallet (expired if
    its window ended). Anything else is a no-op. Returns the coupon's state."""
    for _ in range(MAX_ROUNDS):
        row = await _owned(session, merchant_id, customer_id, coupon_id)
        t = machine.release(row.coupon, order_id, now=now)
        if not t.changed:
            return str(row.coupon.state)
        new = replace(row, coupon=t.coupon, discount_fen=None, order_amount_fen=None)
        if await _write(session, [new]):
            await outbox.stage(session, [_state_event(new, order_id, now)])
            return str(t.coupon.state)
    raise ConcurrentChange(coupon_id)


# ---------------------------------------------------------------- policies


@dataclass(frozen=True, slots=True)
class Policy:
    refund_policy: RefundPolicy = DEFAULT_REFUND_POLICY
    expiring_days_before: int = DEFAULT_EXPIRING_DAYS


async def policies(session: AsyncSession, merchant_ids: Iterable[str]) -> dict[str, Policy]:
    ids = sorted(set(merchant_ids))
    p = coupon_policies.c
    found = {
        r.merchant_id: Policy(r.refund_policy, r.expiring_days_before)
        for r in await session.execute(
            select(p.merchant_id, p.refund_policy, p.expiring_days_before).where(in_values(p.merchant_id, ids))
        )
    }
    return {m: found.get(m, Policy()) for m in ids}


async def save_policy(session: AsyncSession, merchant_id: str, policy: Policy) -> Policy:
    values = {
        "merchant_id": merchant_id,
        "refund_policy": policy.refund_policy,
        "expiring_days_before": policy.expiring_days_before,
        "updated_at": clock.now(),
    }
    stmt = insert_for(session, coupon_policies).values(values)
    await session.execute(
        stmt.on_conflict_do_update(
            index_elements=[coupon_policies.c.merchant_id],
            set_={k: stmt.excluded[k] for k in ("refund_policy", "expiring_days_before", "updated_at")},
        )
    )
    return policy


async def _zones(session: AsyncSession, merchant_ids: Iterable[str]) -> dict[str, str]:
    m = messaging.merchants.c
    return dict(
        (
            await session.execute(
                select(m.merchant_id, m.timezone).where(in_values(m.merchant_id, sorted(set(merchant_ids))))
            )
        ).all()
    )


# ---------------------------------------------------------------- order events


_ActionKind = Literal["redeem", "release", "cancel", "refund"]
# What an order event does to the coupons tied to its order (a payment releases those it does not name).
_ORDER_ACTION: dict[str, _ActionKind] = {"order.paid": "release", "order.cancelled": "cancel"}
# (merchant, order, coupon, customer, code, message): a redemption_refusals row but its time.
_Refusal = tuple[str, str, str, str, str, str]


@dataclass(frozen=True, slots=True)
class _Action:
    at: int  # position in the batch
    kind: _ActionKind
    event: EnvelopeBase


@dataclass(slots=True)
class _Outcome:
    row: _Row
    events: list[OutboundEvent] = field(default_factory=list)
    refusals: list[_Refusal] = field(default_factory=list)
    changed: bool = False


def _order_cart(data: Any) -> Cart | None:
    """The paid order's items as a cart (None without items); shipping when the shop sends it."""
    if not data.items:
        return None
    extra = data.model_extra or {}
    shipping = extra.get("shipping_fen")
    return Cart(
        lines=[
            CartLine(sku=i.sku, category=i.category, quantity=i.quantity, amount_fen=i.amount_fen) for i in data.items
        ],
        shipping_fen=shipping if isinstance(shipping, int) and not isinstance(shipping, bool) and shipping >= 0 else 0,
    )


def _price_payment(
    e: EnvelopeBase, rows: dict[tuple[str, str], _Row], views: dict[tuple[str, str], TemplateView], tz: str
) -> dict[str, Applied]:
    """What each coupon the payment names takes off the order, or why it cannot be used on it.
    Coupons locked to this order come first (their lock checked them), then those the state
    machine would redeem and that apply to the order's items, in the order the shop listed them,
    each kept while it stacks with those before it; the kept ones are priced together. Coupons
    the state machine refuses are left out here (the redemption itself says why)."""
    m, data, at = e.merchant_id, e.data, e.occurred_at  # type: ignore[attr-defined]  # data is declared by each registered envelope model
    order_id, owner = data.order_id, e.customer_id or ""
    named = [
        cid
        for cid in dict.fromkeys(data.coupon_ids)
        if (m, cid) in rows and (m, rows[(m, cid)].coupon.template_id) in views
    ]
    named.sort(key=lambda cid: rows[(m, cid)].coupon.order_id != order_id)  # stable: locked here first
    cart = _order_cart(data)
    out: dict[str, Applied] = {}
    kept: list[Held] = []
    for cid in named:
        c = rows[(m, cid)].coupon
        held = Held(cid, views[(m, c.template_id)].template, c.expires_at, c.starts_at)
        if not (c.state == State.LOCKED and c.order_id == order_id):
            try:
                machine.redeem(_redeemable(c, at), order_id, now=at, owner=owner)
            except CouponError:
                continue
            alone = evaluate(held, cart, at, tz) if cart is not None else None
            if alone is not None and not alone.ok:
                out[cid] = alone
                continue
        conflict = stacking_conflict([*kept, held])
        if conflict is not None:
            out[cid] = Applied(0, "goods", Reason.STACKING_CONFLICT, conflict)
            continue
        kept.append(held)
    if cart is None:  # no items: on the shop's word, at face value
        out.update((h.coupon_id, Applied(face_value_fen(h.template) or 0, "goods")) for h in kept)
        return out
    priced = combine(kept, cart, at, tz)
    out.update((p.coupon_id, Applied(p.discount_fen, p.on)) for p in priced.chosen)
    out.update(priced.refused)
    return out


def _redeemable(c: Coupon, at: datetime) -> Coupon:
    """Paid before its expiry and expired by the sweep since: it was valid when used."""
    return replace(c, state=State.AVAILABLE) if (c.state == State.EXPIRED and at < c.expires_at) else c


def _run(
    row: _Row, actions: list[_Action], prices: dict[tuple[int, str], Applied], policy: dict[str, Policy]
) -> _Outcome:
    """Apply one coupon's actions of the batch, in batch order, through the state machine."""
    out = _Outcome(replace(row))
    for a in actions:
        e, cur = a.event, out.row
        data, at, order_id = e.data, e.occurred_at, e.data.order_id  # type: ignore[attr-defined]  # data is declared by each registered envelope model
        c = cur.coupon
        if a.kind == "redeem":
            locked_here = c.state == State.LOCKED and c.order_id == order_id
            try:  # owner, state and window first: "used by another order" says more than "out of scope"
                t = machine.redeem(_redeemable(c, at), order_id, now=at, owner=e.customer_id or "")
            except CouponError as err:
                out.refusals.append(_refusal(e, c.coupon_id, err.code, err.message))
                continue
            if not t.changed:
                continue
            price = prices.get((a.at, c.coupon_id))
            if not locked_here and price is not None and not price.ok:
                out.refusals.append(_refusal(e, c.coupon_id, str(price.reason), price.message))
                continue
            # The lock's price is what the customer was shown; else the order's own pricing.
            discount = (
                cur.discount_fen
                if locked_here and cur.discount_fen is not None
                else (price.discount_fen if price is not None else 0)
            )
            out.row = replace(cur, coupon=t.coupon, discount_fen=discount, order_amount_fen=data.amount_fen)
            out.events.append(
                OutboundEvent(
                    "coupon.redeemed",
                    cur.merchant_id,
                    {
                        "coupon_id": c.coupon_id,
                        "template_id": c.template_id,
                        "rule_id": cur.rule_id,
                        "order_id": order_id,
                        "discount_fen": discount,
                        "order_amount_fen": data.amount_fen,
                    },
                    customer_id=c.owner_id,
                    occurred_at=at,
                )
            )
            out.changed = True
            continue
        if a.kind in ("release", "cancel") and c.state == State.LOCKED:
            t = machine.release(c, order_id, now=at)
        elif a.kind == "cancel":  # a paid order cancelled: the coupon was never really spent
            t = machine.refund(c, order_id, "restore", now=at)
        elif a.kind == "refund":
            t = machine.refund(c, order_id, policy[cur.merchant_id].refund_policy, now=at)
        else:
            continue
        if t.changed:
            out.row = replace(cur, coupon=t.coupon, discount_fen=None, order_amount_fen=None)
            out.events.append(_state_event(out.row, order_id, at))
            out.changed = True
    return out


def _refusal(e: EnvelopeBase, coupon_id: str, code: str, message: str) -> _Refusal:
    order_id: str = e.data.order_id  # type: ignore[attr-defined]  # data is declared by each registered envelope model
    return (e.merchant_id, order_id, coupon_id, e.customer_id or "", code, message)


async def apply_order_events(session: AsyncSession, events: list[EnvelopeBase]) -> None:
    """Redeem, release and give back coupons as the shop's orders are paid, cancelled and
    refunded (one batch, in the consumer's transaction): a few statements for the whole batch."""
    relevant = [
        (i, e)
        for i, e in enumerate(events)
        if e.type in ("order.paid", "order.cancelled") or (e.type == "order.refunded" and e.data.full)  # type: ignore[attr-defined]  # data is declared by each registered envelope model
    ]
    if not relevant:
        return
    named: dict[str, set[str]] = {}
    touched_orders: dict[str, set[str]] = {}
    for _, e in relevant:
        touched_orders.setdefault(e.merchant_id, set()).add(e.data.order_id)  # type: ignore[attr-defined]  # data is declared by each registered envelope model
        if e.type == "order.paid":
            named.setdefault(e.merchant_id, set()).update(e.data.coupon_ids)  # type: ignore[attr-defined]  # data is declared by each registered envelope model
    rows = await _load(session, named, touched_orders)
    paid = [(i, e) for i, e in relevant if e.type == "order.paid"]
    if not rows and not any(e.data.coupon_ids for _, e in paid):  # type: ignore[attr-defined]  # data is declared by each registered envelope model
        return  # the common case: orders without coupons

    # Each coupon's actions, in batch order: payments naming it, and what happens to the orders
    # it is (or, within this batch, becomes) tied to.
    tied: dict[tuple[str, str], set[tuple[str, str]]] = {}  # (merchant, order) -> coupons
    for k, r in rows.items():
        if r.coupon.order_id:
            tied.setdefault((k[0], r.coupon.order_id), set()).add(k)
    for _, e in paid:
        for cid in e.data.coupon_ids:  # type: ignore[attr-defined]  # data is declared by each registered envelope model
            if (e.merchant_id, cid) in rows:
                tied.setdefault((e.merchant_id, e.data.order_id), set()).add((e.merchant_id, cid))  # type: ignore[attr-defined]  # data is declared by each registered envelope model
    actions: dict[tuple[str, str], list[_Action]] = {k: [] for k in rows}
    refusals: list[_Refusal] = []
    for i, e in relevant:
        m, order_id = e.merchant_id, e.data.order_id  # type: ignore[attr-defined]  # data is declared by each registered envelope model
        names = set(e.data.coupon_ids) if e.type == "order.paid" else set()  # type: ignore[attr-defined]  # data is declared by each registered envelope model
        for cid in sorted(names):
            if (m, cid) in rows:
                actions[(m, cid)].append(_Action(i, "redeem", e))
            else:
                refusals.append(_refusal(e, cid, "unknown_coupon", "no such coupon at this shop"))
        kind = _ORDER_ACTION.get(e.type, "refund")
        for k in sorted(tied.get((m, order_id), ())):
            if k[1] not in names:
                actions[k].append(_Action(i, kind, e))
    for k in actions:
        actions[k].sort(key=lambda a: a.at)

    merchants = {m for m, _ in rows}
    zones = await _zones(session, merchants)
    policy = await policies(session, merchants)
    views: dict[tuple[str, str], TemplateView] = {}
    cache = TemplateCache()
    for m in merchants:
        found = await cache.views(session, m, {r.coupon.template_id: None for (mm, _), r in rows.items() if mm == m})
        views.update(((m, tid), v) for tid, v in found.items())
    prices: dict[tuple[int, str], Applied] = {}
    for i, e in paid:
        if e.data.coupon_ids and e.merchant_id in zones:  # type: ignore[attr-defined]  # data is declared by each registered envelope model
            for cid, applied in _price_payment(e, rows, views, zones[e.merchant_id]).items():
                prices[(i, cid)] = applied

    staged: list[OutboundEvent] = []
    pending = {k for k, a in actions.items() if a}
    for _ in range(MAX_ROUNDS):
        outcomes = {k: _run(rows[k], actions[k], prices, policy) for k in pending}
        won = await _write(session, [o.row for o in outcomes.values() if o.changed])
        lost = {k for k, o in outcomes.items() if o.changed and k not in won}
        for k, o in outcomes.items():
            if k not in lost:
                staged.extend(o.events)
                refusals.extend(o.refusals)
        if not lost:
            break
        # Someone else changed these since we read them: read again and decide again.
        fresh = await _load(session, {m: {cid for mm, cid in lost if mm == m} for m, _ in lost})
        rows.update(fresh)
        pending = lost
    else:
        raise ConcurrentChange(sorted(lost)[:5])

    await outbox.stage(session, staged)
    if refusals:
        now = clock.now()
        for m, order_id, cid, customer_id, code, message in refusals:
            log.warning(
                "coupon.redemption_refused",
                merchant_id=m,
                order_id=order_id,
                coupon_id=cid,
                customer_id=customer_id,
                code=code,
                reason=message,
            )
        await bulk_insert(
            session,
            redemption_refusals,
            ["merchant_id", "order_id", "coupon_id", "customer_id", "code", "message", "refused_at"],
            list({r[:3]: (*r, now) for r in refusals}.values()),
            conflict=["merchant_id", "order_id", "coupon_id"],
        )


# ---------------------------------------------------------------- the clock


async def expire_due(session: AsyncSession, now: datetime, limit: int = CHUNK) -> int:
    """One step of the expiry sweep: available coupons whose window has ended → expired, with
    coupon.expired. Only rows that crossed are read (index on state, expires_at); on PostgreSQL
    each row goes to one sweeper (SKIP LOCKED). Returns how many rows were looked at: running it
    again finds nothing, because each expired row has left the available state."""
    found = (
        await session.execute(
            select(_C.merchant_id, *_COLUMNS)
            .where(_C.state == "available", _C.expires_at <= now)
            .order_by(_C.expires_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    ).all()
    changed = []
    for r in found:
        row = _row(r.merchant_id, r)
        t = machine.expire(row.coupon, now)
        if t.changed:
            changed.append(replace(row, coupon=t.coupon))
    won = await _write(session, changed)
    await outbox.stage(session, [_state_event(r, None, now, "coupon.expired") for r in changed if r.key in won])
    return len(found)


def _days_left(expires_at: datetime, now: datetime, tz: str) -> int:
    """Local calendar days from today to the coupon's last usable day (0: today is its last)."""
    z = zone(tz)
    last = (expires_at - timedelta(microseconds=1)).astimezone(z).date()
    return max(0, (last - now.astimezone(z).date()).days)


async def remind_expiring(session: AsyncSession, now: datetime, limit: int = CHUNK) -> int:
    """One step of the reminders: available coupons entering their merchant's reminder window
    (``expiring_days_before``, default 3) get coupon.expiring, once (``reminded_at``). Only the
    coupons expiring within the window are read, one range per distinct window length. Returns
    how many were reminded: running it again finds nothing."""
    p = coupon_policies.c
    custom = dict(
        (
            await session.execute(
                select(p.merchant_id, p.expiring_days_before).where(p.expiring_days_before != DEFAULT_EXPIRING_DAYS)
            )
        ).all()
    )
    windows: dict[int, list[str]] = {}
    for m, days in custom.items():
        windows.setdefault(days, []).append(m)
    done = 0
    for days, only in [(DEFAULT_EXPIRING_DAYS, None), *sorted(windows.items())]:
        if done >= limit:
            break
        where = [
            _C.state == "available",
            _C.reminded_at.is_(None),
            _C.expires_at > now,
            _C.expires_at <= now + timedelta(days=days),
        ]
        if only is not None:
            where.append(in_values(_C.merchant_id, only))
        elif custom:
            where.append(_C.merchant_id.not_in(sorted(custom)))
        found = (
            await session.execute(
                select(_C.merchant_id, _C.coupon_id, _C.customer_id, _C.template_id, _C.rule_id, _C.expires_at)
                .where(*where)
                .order_by(_C.expires_at)
                .limit(limit - done)
                .with_for_update(skip_locked=True)
            )
        ).all()
        if not found:
            continue
        by_merchant: dict[str, list[Any]] = {}
        for r in found:
            by_merchant.setdefault(r.merchant_id, []).append(r)
        zones = await _zones(session, by_merchant)
        staged = []
        for m, rs in by_merchant.items():
            reminded = set(
                (
                    await session.execute(
                        update(coupons)
                        .where(
                            _C.merchant_id == m,
                            in_values(_C.coupon_id, [r.coupon_id for r in rs]),
                            _C.reminded_at.is_(None),
                            _C.state == "available",
                        )
                        .values(reminded_at=now)
                        .returning(_C.coupon_id)
                    )
                ).scalars()
            )
            names = dict(
                (
                    await session.execute(
                        select(templates.c.template_id, templates.c.name).where(
                            templates.c.merchant_id == m,
                            in_values(templates.c.template_id, {r.template_id for r in rs}),
                        )
                    )
                ).all()
            )
            tz = zones.get(m, "Asia/Shanghai")
            staged += [
                OutboundEvent(
                    "coupon.expiring",
                    m,
                    {
                        "coupon_id": r.coupon_id,
                        "template_id": r.template_id,
                        "template_name": names.get(r.template_id, ""),
                        "rule_id": r.rule_id,
                        "expires_at": r.expires_at.isoformat(),
                        "days_left": _days_left(r.expires_at, now, tz),
                    },
                    customer_id=r.customer_id,
                    occurred_at=now,
                )
                for r in rs
                if r.coupon_id in reminded
            ]
        await outbox.stage(session, staged)
        done += len(found)
    return done


async def run_clock(sessions: async_sessionmaker[AsyncSession], now: datetime, chunk: int = CHUNK) -> tuple[int, int]:
    """Expire and remind everything due at ``now``, one committed chunk at a time (a restart
    resumes where it stopped). Returns (expired rows looked at, reminded)."""
    expired = reminded = 0
    n = chunk
    while n == chunk:
        async with sessions() as session, session.begin():
            n = await expire_due(session, now, chunk)
        expired += n
    n = chunk
    while n == chunk:
        async with sessions() as session, session.begin():
            n = await remind_expiring(session, now, chunk)
        reminded += n
    return expired, reminded


async def expiry_worker(sessions: async_sessionmaker[AsyncSession], poll_s: float = 30.0) -> None:
    """Background (consumer role): the expiry sweep and the reminders, every ``poll_s`` seconds."""
    while True:
        try:
            expired, reminded = await run_clock(sessions, clock.now())
            if expired or reminded:
                log.info("coupons.clock", expired=expired, reminded=reminded)
            await asyncio.sleep(poll_s)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the database may be down: try again later, nothing is lost
            log.warning("coupons.clock_failed", error=repr(exc))
            await asyncio.sleep(poll_s)
