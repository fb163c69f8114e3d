"""Campaign rules: when to issue which coupons to whom, within what budget (pure, validated).

    {"name": "首单回购", "trigger": {"type": "first_paid_order"},
     "audience": {"filter": {"tier": ["A", "B"]}},
     "action": {"issue": [{"template_id": "t-80", "count": 1}, {"template_id": "t-85", "count": 2}]},
     "caps": {"budget_per_day_fen": 100000, "issues_per_customer": 1},
     "holdout_percent": 10}

Triggers (``trigger.type``): ``first_paid_order``; ``nth_paid_order`` (n >= 2);
``order_in_category``; ``segment_changed`` into one tier, RFM class or tag (e.g.
``replenish_due:milk-powder``, which the segmentation service emits); ``referral_conversion``;
``goal`` (a customer's paid orders, paid fen, or one referee's paid orders crossing a threshold in
a fixed window or the last N days); ``schedule`` (a 5-field cron on the merchant's clock).

Audience: ``{"audience_id": ...}`` (a saved audience), ``{"filter": {...}}`` (the segmentation
filter language, validated by the segmentation service, kept as a dict here), or null for
everyone the trigger fires for.

Exactly-once issuance: a trigger occurrence has a ``trigger_key`` (the event id, the schedule's
fire time, the goal's window); ``issuance_key(rule_id, trigger_key, customer_id)`` is the
idempotency key the service stores with a unique constraint, so a replayed trigger issues nothing
twice. Holdout: ``in_holdout`` puts a stable, deterministic share of customers aside per rule.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal, get_args
from zoneinfo import ZoneInfo

from croniter import CroniterBadDateError, CroniterError, croniter  # type: ignore[import-untyped]  # no stubs or py.typed
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StrictInt,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)

from services.coupons.domain.templates import (
    AmountOff,
    CategoryScope,
    CouponTemplate,
    FreeShipping,
    Label,
    NoThreshold,
    PercentOff,
    PositiveFen,
    require_aware,
    zone,
)
from shared import clock

NEVER_FIRES_YEARS = 5
MAX_HOLDOUT_PERCENT = 50
RfmClass = Literal[
    "important_value",
    "important_development",
    "important_retain",
    "important_winback",
    "general_value",
    "general_development",
    "general_retain",
    "general_winback",
]
RFM_CLASSES: tuple[RfmClass, ...] = get_args(RfmClass)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- triggers -----------------------------------------------------------------------------------


class FirstPaidOrder(_Strict):
    type: Literal["first_paid_order"] = "first_paid_order"


class NthPaidOrder(_Strict):
    type: Literal["nth_paid_order"] = "nth_paid_order"
    n: StrictInt

    @field_validator("n")
    @classmethod
    def _second_or_later(cls, v: int) -> int:
        if v < 2:
            raise ValueError(f"n must be 2 or more (n = 1 is the first_paid_order trigger), got {v}")
        return v


class OrderInCategory(_Strict):
    type: Literal["order_in_category"] = "order_in_category"
    category: Label


class SegmentTarget(_Strict):
    """Exactly one of: a tier, an RFM class, a lifecycle tag (e.g. replenish_due:milk-powder)."""

    tier: Literal["S", "A", "B", "C"] | None = None
    rfm_class: RfmClass | None = None
    tag: Annotated[str, Field(min_length=1, max_length=160)] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> SegmentTarget:
        given = [k for k in ("tier", "rfm_class", "tag") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"into needs exactly one of tier, rfm_class or tag; got {given or 'none'}")
        return self


class SegmentChanged(_Strict):
    type: Literal["segment_changed"] = "segment_changed"
    into: SegmentTarget


class ReferralConversion(_Strict):
    """A customer's referee pays their first order; the coupons go to the referrer."""

    type: Literal["referral_conversion"] = "referral_conversion"


class Goal(_Strict):
    """A customer's metric crossing a threshold within a window: fixed (``window_start`` <= t <
    ``window_end``) or rolling (the ``within_days`` days up to the evaluated moment).

    Metrics: ``paid_orders`` and ``paid_fen`` of the customer; ``referee_orders`` = paid orders
    of one of the customer's referees (counted per referee; the customer is the referrer and
    the service uses the referee's id in the trigger key, so each referee rewards once)."""

    type: Literal["goal"] = "goal"
    metric: Literal["paid_orders", "paid_fen", "referee_orders"]
    window_start: AwareDatetime | None = None
    window_end: AwareDatetime | None = None
    within_days: StrictInt | None = None
    threshold: StrictInt
    comparison: Literal["gt", "gte"] = "gte"

    @field_validator("threshold")
    @classmethod
    def _non_negative(cls, v: int) -> int:
        if v < 0:
            raise ValueError(f"threshold must be 0 or more, got {v}")
        return v

    @field_validator("within_days")
    @classmethod
    def _days(cls, v: int | None) -> int | None:
        if v is not None and not 1 <= v <= 3650:
            raise ValueError(f"within_days must be 1..3650, got {v}")
        return v

    @model_validator(mode="after")
    def _one_window(self) -> Goal:
        fixed = self.window_start is not None or self.window_end is not None
        if fixed == (self.within_days is not None):
            raise ValueError("a goal needs window_start and window_end, or within_days (not both)")
        if fixed:
            if self.window_start is None or self.window_end is None:
                raise ValueError("a fixed goal window needs both window_start and window_end")
            if self.window_end <= self.window_start:
                raise ValueError("window_end must be after window_start")
        if self.comparison == "gte" and self.threshold == 0:
            raise ValueError("threshold 0 with comparison gte is met by everyone: use gt 0 or a higher threshold")
        return self


class Schedule(_Strict):
    """A standard 5-field cron (minute hour day-of-month month day-of-week) on the merchant's
    clock; when day-of-month and day-of-week are both restricted, either matching fires (as in
    cron). Validated against the moment of validation (or ``context={"now": ...}``): a schedule
    with no fire in the next 5 years is refused."""

    type: Literal["schedule"] = "schedule"
    cron: Annotated[str, Field(min_length=1, max_length=120)]
    timezone: str = "Asia/Shanghai"

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, v: str) -> str:
        zone(v)
        return v

    @field_validator("cron")
    @classmethod
    def _five_valid_fields(cls, v: str) -> str:
        fields = v.split()
        if len(fields) != 5:
            raise ValueError(
                f"cron {v!r} has {len(fields)} fields; a schedule is 5: minute hour day-of-month "
                "month day-of-week (e.g. '0 9 1 * *' = 09:00 on the 1st of each month)"
            )
        try:
            croniter(" ".join(fields), datetime(2000, 1, 1, tzinfo=UTC))
        except (CroniterError, ValueError, KeyError) as e:
            raise ValueError(f"cron {v!r} is not a valid cron expression: {e}") from e
        return " ".join(fields)

    @model_validator(mode="after")
    def _fires_at_all(self, info: ValidationInfo) -> Schedule:
        now = (info.context or {}).get("now")
        start = now if isinstance(now, datetime) else clock.now()
        try:
            croniter(
                self.cron, start.astimezone(ZoneInfo(self.timezone)), max_years_between_matches=NEVER_FIRES_YEARS
            ).get_next(datetime)
        except CroniterBadDateError as e:
            raise ValueError(
                f"cron {self.cron!r} is a schedule that never fires: no fire within "
                f"{NEVER_FIRES_YEARS} years (e.g. a day the month does not have)"
            ) from e
        return self


Trigger = Annotated[
    FirstPaidOrder | NthPaidOrder | OrderInCategory | SegmentChanged | ReferralConversion | Goal | Schedule,
    Field(discriminator="type"),
]


# --- audience, action, caps, the rule -----------------------------------------------------------


class AudienceRef(_Strict):
    audience_id: Label


class AudienceFilter(_Strict):
    filter: dict[str, Any] = Field(min_length=1, description="The segmentation filter language, checked there.")


def _audience_kind(value: object) -> str | None:
    if isinstance(value, dict):
        return next(iter(value)) if len(value) == 1 and next(iter(value)) in ("audience_id", "filter") else None
    if isinstance(value, AudienceRef):
        return "audience_id"
    return "filter" if isinstance(value, AudienceFilter) else None


Audience = Annotated[
    Annotated[AudienceRef, Tag("audience_id")] | Annotated[AudienceFilter, Tag("filter")],
    Discriminator(
        _audience_kind,
        custom_error_type="invalid_audience",
        custom_error_message='audience is {"audience_id": "..."}, {"filter": {...}} or null (everyone)',
    ),
]


class IssueItem(_Strict):
    template_id: Label
    count: StrictInt = 1

    @field_validator("count")
    @classmethod
    def _some(cls, v: int) -> int:
        if not 1 <= v <= 100:
            raise ValueError(f"count must be 1..100 coupons of a template per issuance, got {v}")
        return v


class Action(_Strict):
    issue: list[IssueItem] = Field(min_length=1)

    @field_validator("issue")
    @classmethod
    def _each_template_once(cls, v: list[IssueItem]) -> list[IssueItem]:
        ids = [i.template_id for i in v]
        twice = next((t for t in ids if ids.count(t) > 1), None)
        if twice is not None:
            raise ValueError(f"template {twice!r} is listed twice: give it once with a count")
        return v


class Caps(_Strict):
    """Budgets reserve each issued coupon's ``templates.liability_fen`` (its cost per redemption
    or face value), so a rule with a budget can only issue templates whose liability is bounded.
    ``issues_per_customer``: how many times one customer may receive this rule (null = no limit;
    each trigger occurrence still issues at most once)."""

    budget_per_day_fen: PositiveFen | None = None
    budget_total_fen: PositiveFen | None = None
    issues_per_customer: StrictInt | None = 1

    @field_validator("issues_per_customer")
    @classmethod
    def _at_least_one(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError(f"issues_per_customer must be at least 1 (or null for no limit), got {v}")
        return v


class CampaignRule(_Strict):
    """A campaign rule; no merchant_id (the service layer owns tenancy)."""

    name: Annotated[str, Field(min_length=1, max_length=64)]
    description: Annotated[str, Field(max_length=1000)] = ""
    trigger: Trigger
    audience: Audience | None = None
    action: Action
    caps: Caps = Field(default_factory=Caps)
    holdout_percent: StrictInt = Field(
        default=0, description="Share of triggered customers kept aside as control, 0..50."
    )

    @field_validator("holdout_percent")
    @classmethod
    def _holdout(cls, v: int) -> int:
        if not 0 <= v <= MAX_HOLDOUT_PERCENT:
            raise ValueError(f"holdout_percent must be 0..{MAX_HOLDOUT_PERCENT}, got {v}")
        return v


# --- schedule, goals, holdout, idempotency ------------------------------------------------------


def _after(schedule: Schedule, after: datetime) -> croniter:
    return croniter(schedule.cron, after.astimezone(ZoneInfo(schedule.timezone)))


def _repeated_wall_time(moment: datetime) -> bool:
    """The second of two instants with the same local wall time (clocks turned back)."""
    first = moment.replace(fold=0)
    return first.utcoffset() != moment.utcoffset()


def next_fire(schedule: Schedule, after: datetime) -> datetime:
    """The first fire strictly after ``after``, in UTC. A wall time repeated when clocks turn
    back fires once (the first time); a wall time skipped when they spring forward fires at the
    first moment after the gap."""
    require_aware("after", after)
    it = _after(schedule, after)
    while True:
        fire: datetime = it.get_next(datetime)
        if not _repeated_wall_time(fire):
            return fire.astimezone(UTC)


def fires_between(schedule: Schedule, start: datetime, end: datetime, *, limit: int = 1000) -> list[datetime]:
    """Fires in (start, end], in UTC, at most ``limit`` of them: a scheduler that last ran up to
    ``start`` fires each of these once, and resumes from the last one when the list is full."""
    require_aware("start", start)
    require_aware("end", end)
    out: list[datetime] = []
    it = _after(schedule, start)
    while len(out) < limit:
        fire: datetime = it.get_next(datetime)
        if fire > end:
            break
        if not _repeated_wall_time(fire):
            out.append(fire.astimezone(UTC))
    return out


def schedule_trigger_key(fire_at: datetime) -> str:
    """The trigger key of one scheduled fire: its UTC instant."""
    require_aware("fire_at", fire_at)
    return "schedule:" + fire_at.astimezone(UTC).isoformat()


def goal_window(goal: Goal, at: datetime) -> tuple[datetime, datetime]:
    """[start, end) the goal's metric is counted over, evaluated at ``at``: the fixed window, or
    the ``within_days`` days up to and including ``at`` (the end is one microsecond past ``at``,
    so both are half-open: ``start <= paid_at < end``)."""
    require_aware("at", at)
    if goal.within_days is not None:
        return at - timedelta(days=goal.within_days), at + timedelta(microseconds=1)
    assert goal.window_start is not None and goal.window_end is not None  # by validation
    return goal.window_start, goal.window_end


def goal_met(goal: Goal, value: int) -> bool:
    return value > goal.threshold if goal.comparison == "gt" else value >= goal.threshold


def goal_crossed(goal: Goal, before: int, after: int) -> bool:
    """Whether a change of the metric from ``before`` to ``after`` reaches the goal: the moment to
    issue (once; later orders in the same window keep it met but do not cross it again)."""
    return goal_met(goal, after) and not goal_met(goal, before)


def goal_trigger_key(goal: Goal, at: datetime, subject: str = "") -> str:
    """The trigger key of a goal reached at ``at``: a fixed window pays once per window; a
    rolling one once per ``subject`` (the referee for referee_orders, else the crossing event)."""
    if goal.within_days is None:
        start, end = goal_window(goal, at)
        return f"goal:{start.astimezone(UTC).isoformat()}/{end.astimezone(UTC).isoformat()}"
    if not subject:
        raise ValueError("a rolling goal's trigger key needs a subject (the referee or the event id)")
    return f"goal:{goal.metric}:{subject}"


def _digest(*parts: str, size: int) -> bytes:
    h = hashlib.blake2b(digest_size=size, person=b"fugou-coupons")
    for part in parts:
        data = part.encode()
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return h.digest()


def in_holdout(rule_id: str, customer_id: str, percent: int) -> bool:
    """Whether the customer is in the rule's control group: blake2b of (rule_id, customer_id) →
    a bucket 0..9999, held out when below percent × 100. Stable across processes and machines;
    raising the percent only adds customers to the holdout. rule_id must be unique across
    merchants (or prefixed with the merchant id)."""
    if not 0 <= percent <= 100:
        raise ValueError(f"percent must be 0..100, got {percent}")
    bucket = int.from_bytes(_digest(rule_id, customer_id, size=8), "big") % 10_000
    return bucket < percent * 100


def issuance_key(rule_id: str, trigger_key: str, customer_id: str) -> str:
    """The idempotency key of one issuance (32 hex characters): the same rule, trigger occurrence
    and customer always give the same key."""
    for name, value in (("rule_id", rule_id), ("trigger_key", trigger_key), ("customer_id", customer_id)):
        if not value:
            raise ValueError(f"{name} must not be empty")
    return _digest(rule_id, trigger_key, customer_id, size=16).hex()


# --- presets: the merchants' playbooks ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Preset:
    """A playbook: a rule whose action names templates by keys of ``templates``. The service
    creates the templates, then ``bind`` puts their ids into the rule."""

    name: str
    rule: CampaignRule
    templates: Mapping[str, CouponTemplate] = field(default_factory=dict)

    def __post_init__(self) -> None:
        missing = [i.template_id for i in self.rule.action.issue if i.template_id not in self.templates]
        if missing:
            raise ValueError(f"preset {self.name}: the rule issues templates it does not define: {missing}")
        for item in self.rule.action.issue:
            limit = self.templates[item.template_id].per_customer_limit
            if limit is not None and limit < item.count:
                raise ValueError(
                    f"preset {self.name}: issues {item.count} of {item.template_id!r} at once, "
                    f"above its per_customer_limit {limit}"
                )

    def bind(self, template_ids: Mapping[str, str]) -> CampaignRule:
        """The rule with each template key replaced by the id the service gave that template."""
        missing = sorted(set(self.templates) - set(template_ids))
        if missing:
            raise ValueError(f"preset {self.name}: no template id for {missing}")
        issue = [
            IssueItem(template_id=template_ids[item.template_id], count=item.count) for item in self.rule.action.issue
        ]
        return self.rule.model_copy(update={"action": Action(issue=issue)})


def _zhe(pay_percent: int) -> str:
    """8折 for 80, 8.5折 for 85."""
    tens, ones = divmod(pay_percent, 10)
    return f"{tens}折" if ones == 0 else f"{tens}.{ones}折"


def _percent(
    name: str, pay_percent: int, valid_days: int, max_discount_fen: int | None, per_customer_limit: int | None
) -> CouponTemplate:
    return CouponTemplate(
        name=name,
        kind=PercentOff(pay_percent=pay_percent, max_discount_fen=max_discount_fen),
        valid_days=valid_days,
        per_customer_limit=per_customer_limit,
    )


def first_order_welcome(
    *,
    welcome_pay_percent: int = 80,
    repurchase_pay_percent: int = 85,
    repurchase_count: int = 2,
    valid_days: int = 30,
    max_discount_fen: int | None = None,
    holdout_percent: int = 10,
) -> Preset:
    """First paid order → one 8折 coupon for the next order and two 8.5折 repurchase coupons."""
    templates = {
        "welcome": _percent(
            f"新客回购{_zhe(welcome_pay_percent)}券", welcome_pay_percent, valid_days, max_discount_fen, 1
        ),
        "repurchase": _percent(
            f"回购{_zhe(repurchase_pay_percent)}券",
            repurchase_pay_percent,
            valid_days,
            max_discount_fen,
            repurchase_count,
        ),
    }
    rule = CampaignRule(
        name="首单有礼",
        description="After the first paid order: one welcome coupon and repurchase coupons.",
        trigger=FirstPaidOrder(),
        action=Action(
            issue=[
                IssueItem(template_id="welcome", count=1),
                IssueItem(template_id="repurchase", count=repurchase_count),
            ]
        ),
        holdout_percent=holdout_percent,
    )
    return Preset("first_order_welcome", rule, templates)


def monthly_loyal(
    *,
    cron: str = "0 9 1 * *",
    timezone: str = "Asia/Shanghai",
    min_orders: int = 3,
    tiers: tuple[str, ...] = ("A", "B"),
    count: int = 3,
    pay_percent: int = 90,
    valid_days: int = 30,
    max_discount_fen: int | None = None,
    holdout_percent: int = 10,
) -> Preset:
    """Each month (09:00 on the 1st, merchant clock), customers of tiers A/B with 3+ paid orders
    get three repurchase coupons (one usable per order)."""
    templates = {
        "repurchase": _percent(f"月度回购{_zhe(pay_percent)}券", pay_percent, valid_days, max_discount_fen, None)
    }
    rule = CampaignRule(
        name="月度老客回购",
        description=f"Monthly: tiers {'/'.join(tiers)} with {min_orders}+ paid orders.",
        trigger=Schedule(cron=cron, timezone=timezone),
        audience=AudienceFilter(filter={"and": [{"tier": list(tiers)}, {"frequency": {"gte": min_orders}}]}),
        action=Action(issue=[IssueItem(template_id="repurchase", count=count)]),
        caps=Caps(issues_per_customer=None),
        holdout_percent=holdout_percent,
    )
    return Preset("monthly_loyal", rule, templates)


def _reward(name: str, reward_fen: int, valid_days: int, per_customer_limit: int | None = 1) -> CouponTemplate:
    return CouponTemplate(
        name=name,
        kind=NoThreshold(amount_off_fen=reward_fen),
        valid_days=valid_days,
        per_customer_limit=per_customer_limit,
    )


def goal_orders_in_month(
    *,
    year: int,
    month: int,
    timezone: str = "Asia/Shanghai",
    more_than: int = 5,
    reward_fen: int = 2000,
    valid_days: int = 30,
    holdout_percent: int = 0,
) -> Preset:
    """More than 5 paid orders in the given calendar month (merchant clock) → a reward coupon.
    The month has no default: it names the campaign's window."""
    tz = zone(timezone)
    start = datetime(year, month, 1, tzinfo=tz)
    end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=tz)
    rule = CampaignRule(
        name=f"{year}年{month}月下单满{more_than + 1}单奖励",
        trigger=Goal(metric="paid_orders", window_start=start, window_end=end, threshold=more_than, comparison="gt"),
        action=Action(issue=[IssueItem(template_id="reward")]),
        holdout_percent=holdout_percent,
    )
    return Preset("goal_orders_in_month", rule, {"reward": _reward("月度下单奖励券", reward_fen, valid_days)})


def goal_spend_in_window(
    *,
    window_start: datetime,
    window_end: datetime,
    above_fen: int = 66_600,
    reward_fen: int = 5000,
    valid_days: int = 30,
    holdout_percent: int = 0,
) -> Preset:
    """Total paid above ¥666 within the window → a reward coupon."""
    rule = CampaignRule(
        name=f"累计消费满{above_fen // 100}元奖励",
        trigger=Goal(
            metric="paid_fen", window_start=window_start, window_end=window_end, threshold=above_fen, comparison="gt"
        ),
        action=Action(issue=[IssueItem(template_id="reward")]),
        holdout_percent=holdout_percent,
    )
    return Preset("goal_spend_in_window", rule, {"reward": _reward("累计消费奖励券", reward_fen, valid_days)})


def referral_double_order(
    *,
    orders: int = 2,
    within_days: int = 30,
    reward_fen: int = 3000,
    valid_days: int = 30,
    max_rewards_per_referrer: int | None = 10,
    holdout_percent: int = 0,
) -> Preset:
    """A referrer whose referee pays twice within a month (30 days) → a reward for the referrer,
    once per referee."""
    rule = CampaignRule(
        name="邀请好友复购奖励",
        trigger=Goal(metric="referee_orders", within_days=within_days, threshold=orders, comparison="gte"),
        action=Action(issue=[IssueItem(template_id="reward")]),
        caps=Caps(issues_per_customer=max_rewards_per_referrer),
        holdout_percent=holdout_percent,
    )
    reward = _reward("邀请奖励券", reward_fen, valid_days, max_rewards_per_referrer)
    return Preset("referral_double_order", rule, {"reward": reward})


def category_replenishment(
    *,
    category: str = "milk-powder",
    amount_off_fen: int = 2000,
    threshold_fen: int = 20_000,
    valid_days: int = 7,
    holdout_percent: int = 10,
) -> Preset:
    """Buyers of a category get a coupon for it when their cycle comes round: the segmentation
    service tags them ``replenish_due:<category>``."""
    template = CouponTemplate(
        name=f"{category}补货券",
        kind=AmountOff(amount_off_fen=amount_off_fen, threshold_fen=threshold_fen),
        scope=CategoryScope(categories=[category]),
        valid_days=valid_days,
        per_customer_limit=None,
    )
    rule = CampaignRule(
        name=f"{category}补货提醒券",
        trigger=SegmentChanged(into=SegmentTarget(tag=f"replenish_due:{category}")),
        action=Action(issue=[IssueItem(template_id="replenish")]),
        caps=Caps(issues_per_customer=None),
        holdout_percent=holdout_percent,
    )
    return Preset("category_replenishment", rule, {"replenish": template})


def tier_c_second_order_free_shipping(
    *,
    cron: str = "0 9 1 * *",
    timezone: str = "Asia/Shanghai",
    nth_order_today: int = 2,
    max_shipping_fen: int | None = None,
    valid_days: int = 30,
    holdout_percent: int = 10,
) -> Preset:
    """Tier C (low frequency, low basket): each month a coupon that ships the second paid order
    of the same day free, to cultivate cheap, frequent orders."""
    template = CouponTemplate(
        name="当日第二单包邮券",
        kind=FreeShipping(nth_order_today=nth_order_today, max_shipping_fen=max_shipping_fen),
        valid_days=valid_days,
        per_customer_limit=None,
    )
    rule = CampaignRule(
        name="C类客户当日第二单包邮",
        trigger=Schedule(cron=cron, timezone=timezone),
        audience=AudienceFilter(filter={"tier": ["C"]}),
        action=Action(issue=[IssueItem(template_id="free_shipping")]),
        caps=Caps(issues_per_customer=None),
        holdout_percent=holdout_percent,
    )
    return Preset("tier_c_second_order_free_shipping", rule, {"free_shipping": template})


def audience_winback(
    *,
    tiers: tuple[str, ...] = ("B",),
    inactive_days: int = 30,
    audience_id: str | None = None,
    pay_percent: int = 85,
    max_discount_fen: int | None = None,
    valid_days: int = 7,
    cron: str = "0 10 * * *",
    timezone: str = "Asia/Shanghai",
    issues_per_customer: int = 1,
    holdout_percent: int = 10,
) -> Preset:
    """Tier B customers who have not bought in 30 days → an 8.5折 coupon, once each. The
    audience is checked every day at 10:00 (merchant clock), so customers who lapse later are
    caught too; POST /v1/coupons/rules/{rule_id}/run fires it at once. A saved audience
    (``audience_id``) takes the place of the tiers and the days."""
    if audience_id is not None:
        audience: AudienceRef | AudienceFilter = AudienceRef(audience_id=audience_id)
        who = f"audience {audience_id}"
    else:
        if not tiers or any(t not in ("S", "A", "B", "C") for t in tiers):
            raise ValueError(f"tiers must be some of S, A, B, C; got {list(tiers)}")
        if not 1 <= inactive_days <= 3650:
            raise ValueError(f"inactive_days must be 1..3650, got {inactive_days}")
        audience = AudienceFilter(
            filter={"and": [{"tier": sorted(set(tiers))}, {"recency_days": {"gte": inactive_days}}]}
        )
        who = f"tier {'/'.join(sorted(set(tiers)))}, no order in {inactive_days} days"
    template = _percent(f"回购{_zhe(pay_percent)}券", pay_percent, valid_days, max_discount_fen, issues_per_customer)
    rule = CampaignRule(
        name=f"召回{_zhe(pay_percent)}券",
        description=f"Daily: {who} → a {pay_percent}% coupon.",
        trigger=Schedule(cron=cron, timezone=timezone),
        audience=audience,
        action=Action(issue=[IssueItem(template_id="winback")]),
        caps=Caps(issues_per_customer=issues_per_customer),
        holdout_percent=holdout_percent,
    )
    return Preset("audience_winback", rule, {"winback": template})


PRESETS: dict[str, Callable[..., Preset]] = {
    "first_order_welcome": first_order_welcome,
    "monthly_loyal": monthly_loyal,
    "goal_orders_in_month": goal_orders_in_month,
    "goal_spend_in_window": goal_spend_in_window,
    "referral_double_order": referral_double_order,
    "category_replenishment": category_replenishment,
    "tier_c_second_order_free_shipping": tier_c_second_order_free_shipping,
    "audience_winback": audience_winback,
}
