"""Rule-driven issuance: which trigger fired for whom, and the one decision per (rule, trigger,
customer) that follows.

Event triggers are found in the consumer's batch, in its transaction, after the facts of the
batch are recorded (handlers.py): a query for the merchants' enabled rules, then one for the
orders of the batch's customers (and their referrers) when an order rule exists; never a query
per event. Each trigger occurrence has a **trigger key** that a replay reproduces:

- ``first_paid_order`` / ``nth_paid_order``: ``paid_orders:N``. The customer's paid, not
  cancelled orders are counted from the ``orders`` replica; the rule fires when this batch takes
  the count from below N to N or more. Keyed by N rather than by an order id, the customer's Nth
  order happens once in their life whatever the delivery: an order paid twice (two event ids),
  payments arriving out of order, or an order cancelled and another paid all find the same key.
- ``order_in_category``: ``order:<order_id>`` for each paid order of the batch with an item in
  the category (the items come from the order.paid event).
- ``segment_changed`` into a tier, class or tag: ``segment:<event_id>`` when ``after`` has it and
  ``before`` had not (each entry is its own occurrence: a customer who leaves and comes back
  qualifies again, within issues_per_customer).
- ``referral_conversion``: the referee's first paid order (count crossing 1) rewards the
  referrer (from ``referrals``): ``referral:<referee_id>``.
- ``goal``: the metric (paid orders, paid fen net of refunds, or one referee's paid orders) over
  the window without and with the batch's orders; the rule fires when ``goal_crossed``:
  ``domain.rules.goal_trigger_key`` (a fixed window pays once per window; a rolling one once
  per referee, or per crossing order).
- ``schedule``: ``schedule:<fire instant>`` (the background worker below).

The decision (``decide``), set-based for all of a rule's occurrences at once:

1. audience: members among the candidates (see adapters/segmentation.py: tier / cell / class /
   tag filters on the local replica, the rest through segmentation's API, one request per rule
   and batch); the others are decided ``out_of_audience``;
2. holdout: ``domain.rules.in_holdout`` → ``holdout``, no coupon (the ROI lift compares them);
3. ``issuances`` rows keyed by ``issuance_key``, INSERT … ON CONFLICT DO NOTHING RETURNING:
   only the occurrences this statement decided go on, so a replayed trigger issues nothing
   twice, concurrently too (a second transaction waits on the key, then skips it);
4. caps, each an atomic statement on a row: ``issues_per_customer`` (a conditional upsert on
   the customer's ``customer_limits`` row for ``rule:<rule_id>``), then the budgets per local day
   (merchant's time zone) and in total (``rule_spend`` rows, locked, reserving each bundle's
   liability); the first customers by id get what the budget allows, the rest are ``capped_*``;
5. ``issue.issue`` per template of the bundle (stock and per-customer limits, coupon.issued
   staged); a customer who got nothing is ``out_of_stock`` / ``limit_reached`` /
   ``not_issuable`` and gets back the reservations made for them.
"""

from __future__ import annotations

import asyncio
import bisect
from collections import Counter, defaultdict
from collections.abc import AsyncGenerator, Iterable, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import structlog
from sqlalchemy import select, union, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.coupons.adapters import segmentation as seg
from services.coupons.adapters.tables import (
    customer_limits,
    customer_segments,
    issuances,
    messaging,
    orders,
    referrals,
    rule_spend,
    rules,
)
from services.coupons.domain.rules import (
    AudienceFilter,
    AudienceRef,
    FirstPaidOrder,
    Goal,
    NthPaidOrder,
    OrderInCategory,
    ReferralConversion,
    Schedule,
    SegmentChanged,
    goal_crossed,
    goal_trigger_key,
    goal_window,
    in_holdout,
    issuance_key,
    next_fire,
    schedule_trigger_key,
)
from services.coupons.domain.templates import liability_fen
from services.coupons.service_layer.issue import IssueRefused, issue
from services.coupons.service_layer.rules import StoredRule, bundle_liability, enabled_rules
from services.coupons.service_layer.templates import StoredTemplate, get_templates
from shared import clock
from shared.db import bulk_insert, dialect_name, in_values
from shared.events import EnvelopeBase

log = structlog.get_logger("fugou.coupons.issuance")

ORDER_TRIGGERS = frozenset({"first_paid_order", "nth_paid_order", "order_in_category", "referral_conversion", "goal"})
SEGMENT_TRIGGERS = frozenset({"segment_changed"})
CHUNK = 5000  # customers per transaction of a scheduled fire

ISSUED, HOLDOUT, OUT_OF_AUDIENCE = "issued", "holdout", "out_of_audience"
CAPPED_CUSTOMER, CAPPED_DAY, CAPPED_TOTAL = "capped_customer", "capped_day", "capped_total"
NOT_ISSUABLE = "not_issuable"
OUTCOMES: dict[str, str] = {
    ISSUED: "the rule's coupons were issued (some templates of the bundle may have been out of stock)",
    HOLDOUT: "kept aside in the rule's control group: no coupon, so the ROI lift can compare against it",
    OUT_OF_AUDIENCE: "not in the rule's audience when the trigger fired",
    CAPPED_CUSTOMER: "already received this rule issues_per_customer times",
    CAPPED_DAY: "the rule's budget for that day (merchant's time zone) was spent",
    CAPPED_TOTAL: "the rule's total budget was spent",
    "out_of_stock": "the templates' stock ran out",
    "limit_reached": "the customer already holds as many coupons of the templates as they allow",
    NOT_ISSUABLE: "the templates could not be issued (deactivated or past their validity)",
}


@dataclass(frozen=True, slots=True)
class Occurrence:
    """A trigger that fired for a customer (the one who would receive the coupons)."""

    customer_id: str
    trigger_key: str


# ---------------------------------------------------------------- event triggers


async def apply_triggers(
    session: AsyncSession, events: list[EnvelopeBase], *, now: datetime | None = None
) -> Counter[str]:
    """Find the event triggers in a batch (facts already recorded) and decide each; returns the
    outcomes counted."""
    paid = [e for e in events if e.type == "order.paid"]
    changed = [e for e in events if e.type == "segment.changed"]
    kinds = (ORDER_TRIGGERS if paid else frozenset()) | (SEGMENT_TRIGGERS if changed else frozenset())
    if not kinds:
        return Counter()
    merchants = sorted({e.merchant_id for e in (*paid, *changed)})
    found = await enabled_rules(session, merchants, set(kinds))
    if not found:
        return Counter()
    now = now or clock.now()
    outcomes: Counter[str] = Counter()
    for merchant_id in merchants:
        mine = [r for m, r in found if m == merchant_id]
        fired: dict[str, list[Occurrence]] = defaultdict(list)
        order_rules = [r for r in mine if r.trigger_type in ORDER_TRIGGERS]
        if order_rules:
            await _order_occurrences(
                session, merchant_id, order_rules, [e for e in paid if e.merchant_id == merchant_id], fired
            )
        segment_rules = [r for r in mine if r.trigger_type in SEGMENT_TRIGGERS]
        if segment_rules:
            _segment_occurrences(segment_rules, [e for e in changed if e.merchant_id == merchant_id], fired)
        for stored in mine:
            if fired.get(stored.rule_id):
                outcomes += await decide(
                    session, merchant_id, stored, fired[stored.rule_id], now=now, client=seg.client_of(session)
                )
    return outcomes


@dataclass(frozen=True, slots=True)
class _Paid:
    paid_at: datetime
    order_id: str
    net_fen: int


async def _order_occurrences(
    session: AsyncSession,
    merchant_id: str,
    order_rules: list[StoredRule],
    paid: list[EnvelopeBase],
    fired: dict[str, list[Occurrence]],
) -> None:
    # The batch's paid orders per customer, with the categories their items are in.
    batch: dict[str, dict[str, set[str]]] = defaultdict(dict)
    for e in paid:
        data = e.data  # type: ignore[attr-defined]  # data is declared by each registered envelope model
        batch[e.customer_id or ""].setdefault(data.order_id, set()).update(i.category for i in data.items if i.category)
    customers = sorted(batch)
    o = orders.c
    live: dict[str, list[_Paid]] = defaultdict(list)
    rows = await session.execute(
        select(o.customer_id, o.order_id, o.paid_at, o.amount_fen, o.refunded_fen).where(
            o.merchant_id == merchant_id,
            in_values(o.customer_id, customers),
            o.paid_at.isnot(None),
            o.cancelled_at.is_(None),
        )
    )
    for r in rows:
        live[r.customer_id].append(_Paid(r.paid_at, r.order_id, max(0, r.amount_fen - r.refunded_fen)))
    for lst in live.values():
        lst.sort(key=lambda p: (p.paid_at, p.order_id))
    referrer: dict[str, str] = {}
    if any(
        isinstance(r.rule.trigger, ReferralConversion)
        or (isinstance(r.rule.trigger, Goal) and r.rule.trigger.metric == "referee_orders")
        for r in order_rules
    ):
        ref = referrals.c
        referrer = {
            c: r
            for c, r in await session.execute(
                select(ref.customer_id, ref.referrer_id).where(
                    ref.merchant_id == merchant_id, in_values(ref.customer_id, customers)
                )
            )
        }

    for customer_id in customers:
        theirs = live.get(customer_id, [])
        new = {p.order_id for p in theirs} & batch[customer_id].keys()  # still paid, not cancelled
        if not new:
            continue
        after = len(theirs)
        before = after - len(new)
        for stored in order_rules:
            t = stored.rule.trigger
            out = fired[stored.rule_id]
            if isinstance(t, (FirstPaidOrder, NthPaidOrder)):
                n = 1 if isinstance(t, FirstPaidOrder) else t.n
                if before < n <= after:
                    out.append(Occurrence(customer_id, f"paid_orders:{n}"))
            elif isinstance(t, OrderInCategory):
                out.extend(
                    Occurrence(customer_id, f"order:{oid}")
                    for oid in sorted(new)
                    if t.category in batch[customer_id][oid]
                )
            elif isinstance(t, ReferralConversion):
                if before < 1 <= after and customer_id in referrer:
                    out.append(Occurrence(referrer[customer_id], f"referral:{customer_id}"))
            elif isinstance(t, Goal):
                if t.metric == "referee_orders":
                    if customer_id in referrer:
                        out.extend(
                            Occurrence(referrer[customer_id], k)
                            for k in goal_crossings(t, theirs, new, subject=customer_id)
                        )
                else:
                    out.extend(Occurrence(customer_id, k) for k in goal_crossings(t, theirs, new))


def goal_crossings(goal: Goal, paid: Sequence[_Paid], new: set[str], subject: str | None = None) -> list[str]:
    """The trigger keys of the goal's crossings that the ``new`` orders caused, ``paid`` being
    all of the subject's paid, not cancelled orders by time. A fixed window is counted once; a
    rolling one at each order whose window holds a new order (so an order arriving late, inside
    an earlier window, is seen)."""
    times = [p.paid_at for p in paid]

    def metric(part: Iterable[_Paid]) -> int:
        return sum(1 if goal.metric != "paid_fen" else p.net_fen for p in part)

    def crossed(start: datetime, end: datetime) -> bool:
        inside = paid[bisect.bisect_left(times, start) : bisect.bisect_left(times, end)]
        if not any(p.order_id in new for p in inside):
            return False
        return goal_crossed(goal, metric(p for p in inside if p.order_id not in new), metric(inside))

    if goal.within_days is None:
        assert goal.window_start is not None and goal.window_end is not None  # by validation
        return [goal_trigger_key(goal, goal.window_start)] if crossed(goal.window_start, goal.window_end) else []
    keys: list[str] = []
    for p in paid:
        if crossed(*goal_window(goal, p.paid_at)):
            key = goal_trigger_key(goal, p.paid_at, subject or p.order_id)
            if key not in keys:
                keys.append(key)
    return keys


def _segment_occurrences(
    segment_rules: list[StoredRule], changed: list[EnvelopeBase], fired: dict[str, list[Occurrence]]
) -> None:
    for e in changed:
        data = e.data  # type: ignore[attr-defined]  # data is declared by each registered envelope model
        before, after = data.before or {}, data.after or {}
        for stored in segment_rules:
            assert isinstance(stored.rule.trigger, SegmentChanged)  # SEGMENT_TRIGGERS: segment_changed only
            into = stored.rule.trigger.into
            if into.tag is not None:
                entered = into.tag in (after.get("tags") or []) and into.tag not in (before.get("tags") or [])
            else:
                name, value = ("tier", into.tier) if into.tier is not None else ("rfm_class", into.rfm_class)
                entered = after.get(name) == value and before.get(name) != value
            if entered:
                fired[stored.rule_id].append(Occurrence(e.customer_id or "", f"segment:{e.event_id}"))


# ---------------------------------------------------------------- the decision


async def decide(
    session: AsyncSession,
    merchant_id: str,
    stored: StoredRule,
    occurrences: Sequence[Occurrence],
    *,
    now: datetime,
    client: seg.SegmentationClient | None = None,
    in_audience: bool = False,
) -> Counter[str]:
    """Decide each occurrence once (see the module's docstring); ``in_audience`` when the
    customers are the audience's own members (a scheduled fire). Returns the outcomes of the
    occurrences decided here (those decided before are not counted)."""
    rule, rule_id = stored.rule, stored.rule_id
    keyed: dict[str, Occurrence] = {}
    for o in occurrences:
        keyed.setdefault(issuance_key(rule_id, o.trigger_key, o.customer_id), o)
    if not keyed:
        return Counter()
    members = None
    if rule.audience is not None and not in_audience:
        members = await members_among(
            session, merchant_id, rule.audience, {o.customer_id for o in keyed.values()}, client
        )
    planned: dict[str, str] = {}
    for key, o in keyed.items():
        if members is not None and o.customer_id not in members:
            planned[key] = OUT_OF_AUDIENCE
        elif rule.holdout_percent and in_holdout(rule_id, o.customer_id, rule.holdout_percent):
            planned[key] = HOLDOUT
        else:
            planned[key] = ISSUED  # unless a cap or the stock says otherwise, below
    fresh = await bulk_insert(
        session,
        issuances,
        ["merchant_id", "issuance_key", "rule_id", "customer_id", "trigger_key", "outcome", "decided_at"],
        [
            (merchant_id, key, rule_id, o.customer_id, o.trigger_key[:255], planned[key], now)
            for key, o in sorted(keyed.items(), key=lambda kv: (kv[1].customer_id, kv[0]))
        ],
        conflict=["merchant_id", "issuance_key"],
        returning=["issuance_key"],
    )
    decided = {r[0]: planned[r[0]] for r in fresh}
    to_issue = [(key, keyed[key].customer_id) for key, outcome in decided.items() if outcome == ISSUED]
    if to_issue:
        decided.update(await _grant(session, merchant_id, stored, to_issue, now))
    counts = Counter(decided.values())
    if decided:
        log.info("coupons.rule_decided", merchant_id=merchant_id, rule_id=rule_id, **counts)
    return counts


async def members_among(
    session: AsyncSession,
    merchant_id: str,
    audience: AudienceRef | AudienceFilter,
    customer_ids: set[str],
    client: seg.SegmentationClient | None,
) -> set[str]:
    """Which of these customers are in the audience now: locally for a tier / cell / class /
    tag filter (a customer with no segment yet has none of them), else through segmentation."""
    try:
        f = (
            audience.filter
            if isinstance(audience, AudienceFilter)
            else await _need(client).saved_filter(merchant_id, audience.audience_id)
        )
        if seg.is_local(f):
            s = customer_segments.c
            rows = await session.execute(
                select(s.customer_id, s.tier, s.cell, s.rfm_class, s.tags).where(
                    s.merchant_id == merchant_id, in_values(s.customer_id, sorted(customer_ids))
                )
            )
            known = {r.customer_id: seg.segment_of(r) for r in rows}
            return {c for c in customer_ids if seg.matches(f, known.get(c, seg.NO_SEGMENT))}
        return await _need(client).members_among(merchant_id, f, customer_ids)
    except (seg.AudienceNotFound, seg.AudienceRejected) as e:
        # The audience went away (or segmentation no longer takes its filter): nobody is in it.
        log.error("coupons.audience_unusable", merchant_id=merchant_id, error=str(e))
        return set()


def _need(client: seg.SegmentationClient | None) -> seg.SegmentationClient:
    if client is None:  # the runtime has not attached its client yet: retry the batch later
        raise seg.SegmentationUnavailable("no segmentation client is attached to this coupons runtime yet")
    return client


async def _grant(
    session: AsyncSession, merchant_id: str, stored: StoredRule, to_issue: list[tuple[str, str]], now: datetime
) -> dict[str, str]:
    """Caps and issue for the occurrences to issue; returns the outcome of those not issued."""
    rule = stored.rule
    found = await get_templates(session, merchant_id, [i.template_id for i in rule.action.issue])
    tz = (
        await session.execute(
            select(messaging.merchants.c.timezone).where(messaging.merchants.c.merchant_id == merchant_id)
        )
    ).scalar() or "Asia/Shanghai"
    # One occurrence per customer per round (a batch may fire one rule twice for a customer).
    rounds: list[dict[str, str]] = []
    for key, customer_id in sorted(to_issue, key=lambda kc: (kc[1], kc[0])):
        for r in rounds:
            if customer_id not in r:
                r[customer_id] = key
                break
        else:
            rounds.append({customer_id: key})
    outcomes: dict[str, str] = {}
    for by_customer in rounds:
        refused = await _grant_round(session, merchant_id, stored, sorted(by_customer), found, tz, now)
        by_outcome: dict[str, list[str]] = defaultdict(list)
        for customer_id, outcome in refused.items():
            by_outcome[outcome].append(by_customer[customer_id])
            outcomes[by_customer[customer_id]] = outcome
        for outcome, keys in sorted(by_outcome.items()):
            await session.execute(
                update(issuances)
                .where(issuances.c.merchant_id == merchant_id, in_values(issuances.c.issuance_key, keys))
                .values(outcome=outcome)
            )
    return outcomes


def _counter(rule_id: str) -> str:
    """The customer_limits row that counts a customer's issuances of a rule."""
    return f"rule:{rule_id}"


async def _grant_round(
    session: AsyncSession,
    merchant_id: str,
    stored: StoredRule,
    ids: list[str],
    found: Mapping[str, StoredTemplate],
    tz: str,
    now: datetime,
) -> dict[str, str]:
    rule, rule_id = stored.rule, stored.rule_id
    refused: dict[str, str] = {}
    cap = rule.caps.issues_per_customer
    if cap is not None:
        passed = {
            r[0]
            for r in await bulk_insert(
                session,
                customer_limits,
                ["merchant_id", "customer_id", "template_id", "issued"],
                [(merchant_id, c, _counter(rule_id), 1) for c in ids],
                conflict=["merchant_id", "customer_id", "template_id"],
                update={"issued": "{t}.issued + excluded.issued"},
                update_where=f"{{t}}.issued + 1 <= {int(cap)}",
                returning=["customer_id"],
            )
        }
        refused.update((c, CAPPED_CUSTOMER) for c in ids if c not in passed)
        ids = [c for c in ids if c in passed]
    if not ids:
        return refused
    each_fen = bundle_liability(rule, dict(found)) or 0
    each_coupons = sum(i.count for i in rule.action.issue)
    day = now.astimezone(ZoneInfo(tz)).date().isoformat()
    granted, cut_reason = await _reserve(session, merchant_id, stored, day, len(ids), each_fen, each_coupons)
    if granted < len(ids):
        assert cut_reason is not None  # _reserve names the cap whenever it grants fewer than asked
        refused.update((c, cut_reason) for c in ids[granted:])
        await _give_back(session, merchant_id, rule_id, ids[granted:], cap)
        ids = ids[:granted]
    if not ids:
        return refused
    coupons_of: Counter[str] = Counter()
    fen_of: Counter[str] = Counter()
    why: dict[str, str] = {}
    # Templates in id order: two rules sharing templates lock their rows in the same order.
    for item in sorted(rule.action.issue, key=lambda i: i.template_id):
        st = found.get(item.template_id)
        if st is None:
            why.update((c, NOT_ISSUABLE) for c in ids if c not in why)
            continue
        try:
            result = await issue(session, merchant_id, st, ids, now=now, count=item.count, rule_id=rule_id)
        except IssueRefused as e:
            log.warning(
                "coupons.template_not_issuable",
                merchant_id=merchant_id,
                rule_id=rule_id,
                template_id=st.template_id,
                code=e.code,
                reason=e.message,
            )
            why.update((c, NOT_ISSUABLE) for c in ids if c not in why)
            continue
        unit = liability_fen(st.template) or 0
        for customer_id, _ in result.issued:
            coupons_of[customer_id] += 1
            fen_of[customer_id] += unit
        for customer_id, reason in result.refused.items():
            why.setdefault(customer_id, reason)
    nothing = [c for c in ids if not coupons_of[c]]
    refused.update((c, why.get(c, NOT_ISSUABLE)) for c in nothing)
    if nothing:
        await _give_back(session, merchant_id, rule_id, nothing, cap)
    unspent_fen = each_fen * len(ids) - sum(fen_of.values())
    unspent_coupons = each_coupons * len(ids) - sum(coupons_of.values())
    if unspent_fen or unspent_coupons:
        await session.execute(
            update(rule_spend)
            .where(
                rule_spend.c.merchant_id == merchant_id,
                rule_spend.c.rule_id == rule_id,
                rule_spend.c.period.in_([day, "total"]),
            )
            .values(spent_fen=rule_spend.c.spent_fen - unspent_fen, coupons=rule_spend.c.coupons - unspent_coupons)
        )
    return refused


async def _give_back(session: AsyncSession, merchant_id: str, rule_id: str, ids: list[str], cap: int | None) -> None:
    if cap is None or not ids:
        return
    cl = customer_limits.c
    await session.execute(
        update(customer_limits)
        .where(cl.merchant_id == merchant_id, cl.template_id == _counter(rule_id), in_values(cl.customer_id, ids))
        .values(issued=cl.issued - 1)
    )


async def _reserve(
    session: AsyncSession, merchant_id: str, stored: StoredRule, day: str, n: int, each_fen: int, each_coupons: int
) -> tuple[int, str | None]:
    """Reserve the budget of ``n`` bundles (as many as the day's and the total budget allow) on
    the rule's spend rows; returns how many were granted and, if not all, which cap cut them.
    Without budgets the spend is only recorded (one upsert)."""
    caps, rule_id = stored.rule.caps, stored.rule_id
    cols = ["merchant_id", "rule_id", "period", "spent_fen", "coupons"]
    budgets = {day: caps.budget_per_day_fen, "total": caps.budget_total_fen}
    if caps.budget_per_day_fen is None and caps.budget_total_fen is None:
        await bulk_insert(
            session,
            rule_spend,
            cols,
            [(merchant_id, rule_id, p, n * each_fen, n * each_coupons) for p in (day, "total")],
            conflict=["merchant_id", "rule_id", "period"],
            update={"spent_fen": "{t}.spent_fen + excluded.spent_fen", "coupons": "{t}.coupons + excluded.coupons"},
        )
        return n, None
    await bulk_insert(
        session,
        rule_spend,
        cols,
        [(merchant_id, rule_id, p, 0, 0) for p in (day, "total")],
        conflict=["merchant_id", "rule_id", "period"],
    )
    rs = rule_spend.c
    spent = (
        await session.execute(
            select(rs.period, rs.spent_fen)
            .where(rs.merchant_id == merchant_id, rs.rule_id == rule_id, rs.period.in_([day, "total"]))
            .order_by(rs.period)
            .with_for_update()
        )
    ).all()
    granted, reason = n, None
    for period, fen in spent:
        budget = budgets[period]
        if budget is None or each_fen == 0:
            continue
        room = max(0, (budget - fen) // each_fen)
        if room < granted:
            granted, reason = room, (CAPPED_TOTAL if period == "total" else CAPPED_DAY)
    if granted:
        await session.execute(
            update(rule_spend)
            .where(rs.merchant_id == merchant_id, rs.rule_id == rule_id, rs.period.in_([day, "total"]))
            .values(spent_fen=rs.spent_fen + granted * each_fen, coupons=rs.coupons + granted * each_coupons)
        )
    return granted, reason


# ---------------------------------------------------------------- schedules


async def fire_due(
    sessions: async_sessionmaker[AsyncSession],
    client: seg.SegmentationClient | None,
    now: datetime,
    *,
    chunk: int = CHUNK,
) -> bool:
    """Fire one due scheduled rule, if any; returns whether one was fired.

    On PostgreSQL the rule's row is held (FOR UPDATE SKIP LOCKED) for the whole fire, so that
    several workers share the due rules and never fire one twice at once; the audience is issued
    in chunks, each its own transaction, and next_fire_at moves on only when all are committed.
    A crash in between leaves next_fire_at as it was: the next run fires the same instant again
    and the issuance keys make the chunks already committed issue nothing. Fires missed while
    nothing ran collapse into one (the earliest instant's), then the schedule resumes from now.
    On SQLite (one process) the row is read, fired, and moved on with compare-and-set."""
    r = rules.c
    due = (
        select(rules)
        .where(r.enabled.is_(True), r.trigger_type == "schedule", r.next_fire_at <= now)
        .order_by(r.next_fire_at)
        .limit(1)
    )
    async with sessions() as claim:
        if dialect_name(claim) == "postgresql":
            async with claim.begin():
                row = (await claim.execute(due.with_for_update(skip_locked=True))).first()
                if row is None:
                    return False
                stored = StoredRule.from_row(row)
                await fire(sessions, client, row.merchant_id, stored, row.next_fire_at, now, chunk=chunk)
                await claim.execute(
                    update(rules)
                    .where(r.merchant_id == row.merchant_id, r.rule_id == row.rule_id)
                    .values(next_fire_at=_after(stored, now), updated_at=now)
                )
            return True
        async with claim.begin():
            row = (await claim.execute(due)).first()
    if row is None:
        return False
    stored = StoredRule.from_row(row)
    await fire(sessions, client, row.merchant_id, stored, row.next_fire_at, now, chunk=chunk)
    async with sessions() as s, s.begin():
        await s.execute(
            update(rules)
            .where(r.merchant_id == row.merchant_id, r.rule_id == row.rule_id, r.next_fire_at == row.next_fire_at)
            .values(next_fire_at=_after(stored, now), updated_at=now)
        )
    return True


def _after(stored: StoredRule, now: datetime) -> datetime:
    assert isinstance(stored.rule.trigger, Schedule)
    return next_fire(stored.rule.trigger, now)


async def fire(
    sessions: async_sessionmaker[AsyncSession],
    client: seg.SegmentationClient | None,
    merchant_id: str,
    stored: StoredRule,
    fire_at: datetime,
    now: datetime,
    *,
    chunk: int = CHUNK,
) -> Counter[str]:
    """Issue one fire of a scheduled rule to its audience, chunk by chunk (resumable)."""
    key = schedule_trigger_key(fire_at)
    counts: Counter[str] = Counter()
    try:
        async with aclosing(audience_chunks(sessions, client, merchant_id, stored.rule.audience, chunk)) as members:
            async for ids in members:
                async with sessions() as s, s.begin():
                    counts += await decide(
                        s, merchant_id, stored, [Occurrence(c, key) for c in ids], now=now, in_audience=True
                    )
    except (seg.AudienceNotFound, seg.AudienceRejected) as e:
        log.error("coupons.audience_unusable", merchant_id=merchant_id, rule_id=stored.rule_id, error=str(e))
    log.info("coupons.schedule_fired", merchant_id=merchant_id, rule_id=stored.rule_id, trigger_key=key, **counts)
    return counts


async def audience_chunks(
    sessions: async_sessionmaker[AsyncSession],
    client: seg.SegmentationClient | None,
    merchant_id: str,
    audience: AudienceRef | AudienceFilter | None,
    chunk: int,
) -> AsyncGenerator[list[str], None]:
    """The audience's members in chunks: from the local replica when the filter can hold only
    of customers with a segment (or for no audience: every customer coupons knows, by a segment
    or an order); otherwise streamed from segmentation."""
    f: dict[str, Any] | None = None
    if isinstance(audience, AudienceFilter):
        f = audience.filter
    elif isinstance(audience, AudienceRef):
        f = await _need(client).saved_filter(merchant_id, audience.audience_id)
    if audience is not None and not (f is not None and seg.is_local(f) and seg.needs_segment(f)):
        ref = {"audience_id": audience.audience_id} if isinstance(audience, AudienceRef) else {"filter": f}
        async with aclosing(_need(client).members(merchant_id, ref, chunk)) as streamed:
            async for ids in streamed:
                yield ids
        return
    s = customer_segments.c
    if f is not None:
        base = (
            select(s.customer_id.label("customer_id"))
            .where(s.merchant_id == merchant_id, seg.where(f, customer_segments))
            .subquery()
        )
    else:
        base = union(
            select(s.customer_id).where(s.merchant_id == merchant_id),
            select(orders.c.customer_id).where(orders.c.merchant_id == merchant_id),
        ).subquery()
    after: str | None = None
    while True:
        q = select(base.c.customer_id)
        if after is not None:
            q = q.where(base.c.customer_id > after)
        async with sessions() as session:
            ids = list((await session.execute(q.order_by(base.c.customer_id).limit(chunk))).scalars())
        if not ids:
            return
        yield ids
        if len(ids) < chunk:
            return
        after = ids[-1]


async def schedule_worker(runtime: Any, poll_s: float = 1.0) -> None:
    """Background task of the coupons runtime: attaches its segmentation client (the consumer's
    handlers find it through their session) and fires due scheduled rules."""
    client = seg.client_for(runtime)
    try:
        while True:
            try:
                while await fire_due(runtime.sessions, client, clock.now()):
                    pass
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # segmentation or the database unavailable: the fire is retried
                log.warning("coupons.schedule_worker_failed", error=repr(exc))
                await asyncio.sleep(poll_s * 5)
                continue
            await asyncio.sleep(poll_s)
    finally:
        await seg.release(runtime)
