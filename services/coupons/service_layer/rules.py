"""Campaign rules of a merchant: create (checked against the merchant's own templates and
audiences, every refusal naming the field and the reason), read, list, enable and disable; and
the presets, which create their templates and their rule in one transaction.

Plain functions over the caller's session; the caller commits."""

from __future__ import annotations

import inspect
import typing
import uuid
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Any

import orjson
from pydantic import TypeAdapter, ValidationError
from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.coupons.adapters.segmentation import (
    AudienceNotFound,
    AudienceRejected,
    SegmentationClient,
    SegmentationUnavailable,
    check_local,
    is_local,
)
from services.coupons.adapters.tables import rules
from services.coupons.domain.rules import (
    PRESETS,
    AudienceFilter,
    AudienceRef,
    CampaignRule,
    Goal,
    Schedule,
    next_fire,
)
from services.coupons.domain.templates import issuable_at, liability_fen
from services.coupons.service_layer.templates import StoredTemplate, create_template, get_templates
from shared.db import dialect_name, in_values


class RuleRefused(ValueError):
    """A rule (or preset) that cannot work as given: ``field`` is where, ``message`` why."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


@dataclass(frozen=True, slots=True)
class StoredRule:
    rule_id: str
    rule: CampaignRule
    enabled: bool
    preset: str | None
    next_fire_at: datetime | None
    created_at: datetime
    updated_at: datetime

    @property
    def trigger_type(self) -> str:
        return self.rule.trigger.type

    @classmethod
    def from_row(cls, row: Any) -> StoredRule:
        # Validated against its creation moment: a schedule accepted then stays readable.
        rule = CampaignRule.model_validate_json(row.body, context={"now": row.created_at})
        return cls(row.rule_id, rule, row.enabled, row.preset, row.next_fire_at, row.created_at, row.updated_at)


def bundle_liability(rule: CampaignRule, found: dict[str, StoredTemplate]) -> int | None:
    """What issuing the rule's bundle to one customer can cost at most (None: unbounded)."""
    total = 0
    for item in rule.action.issue:
        st = found.get(item.template_id)
        each = liability_fen(st.template) if st is not None else None
        if each is None:
            return None
        total += each * item.count
    return total


# ---------------------------------------------------------------- checks


async def check_audience(
    merchant_id: str, audience: AudienceRef | AudienceFilter | None, client: SegmentationClient | None
) -> None:
    """A local filter is checked here; anything else by segmentation itself (its reason is
    relayed). Raises RuleRefused, or SegmentationUnavailable when it cannot be asked."""
    if audience is None:
        return
    try:
        if isinstance(audience, AudienceFilter) and is_local(audience.filter):
            check_local(audience.filter)
            return
        if client is None:
            raise SegmentationUnavailable("no segmentation client")
        if isinstance(audience, AudienceRef):
            await client.saved_filter(merchant_id, audience.audience_id)
        else:
            await client.check_filter(merchant_id, audience.filter)
    except AudienceRejected as e:
        raise RuleRefused(e.field, e.message) from None
    except AudienceNotFound:
        assert isinstance(audience, AudienceRef)  # only saved_filter raises it
        raise RuleRefused(
            "audience.audience_id",
            f"no saved audience {audience.audience_id!r} for this merchant (see GET /v1/audiences)",
        ) from None


async def check_rule(
    session: AsyncSession, merchant_id: str, rule: CampaignRule, *, now: datetime, client: SegmentationClient | None
) -> dict[str, StoredTemplate]:
    """What the rule's own validation cannot know: its templates exist here, are active and
    issuable, its counts fit their per-customer limits, its budgets can pay for one bundle, a
    fixed goal window has not ended, its audience exists. Returns the templates."""
    found = await get_templates(session, merchant_id, [i.template_id for i in rule.action.issue])
    for n, item in enumerate(rule.action.issue):
        at = f"action.issue.{n}"
        st = found.get(item.template_id)
        if st is None:
            raise RuleRefused(
                f"{at}.template_id",
                f"no template {item.template_id!r} for this merchant (create it with POST /v1/coupons/templates)",
            )
        if not st.active:
            raise RuleRefused(f"{at}.template_id", f"template {item.template_id!r} is deactivated")
        verdict = issuable_at(st.template, now)
        if not verdict:
            raise RuleRefused(f"{at}.template_id", f"template {item.template_id!r}: {verdict.message}")
        limit = st.template.per_customer_limit
        if limit is not None and item.count > limit:
            raise RuleRefused(
                f"{at}.count",
                f"{item.count} coupons of {item.template_id!r} per issuance, above its "
                f"per_customer_limit {limit}: every customer would be refused",
            )
    caps = rule.caps
    budgets = {
        k: v
        for k, v in (("budget_per_day_fen", caps.budget_per_day_fen), ("budget_total_fen", caps.budget_total_fen))
        if v is not None
    }
    if budgets:
        bundle = bundle_liability(rule, found)
        first = next(iter(budgets))
        if bundle is None:
            unbounded = [
                i.template_id for i in rule.action.issue if liability_fen(found[i.template_id].template) is None
            ]
            raise RuleRefused(
                f"caps.{first}",
                f"a budget needs templates whose cost is bounded; {unbounded} can cost "
                "any amount: give them cost_fen_per_redemption or a max_discount_fen / "
                "max_shipping_fen",
            )
        for name, budget in budgets.items():
            if budget < bundle:
                raise RuleRefused(
                    f"caps.{name}",
                    f"{budget} fen is below one bundle's liability ({bundle} fen): nobody could ever be issued",
                )
    trigger = rule.trigger
    if isinstance(trigger, Goal) and trigger.window_end is not None and trigger.window_end <= now:
        raise RuleRefused(
            "trigger.window_end",
            f"the goal's window ended at {trigger.window_end.isoformat()}: the rule could never fire",
        )
    await check_audience(merchant_id, rule.audience, client)
    return found


# ---------------------------------------------------------------- CRUD


async def create_rule(
    session: AsyncSession,
    merchant_id: str,
    rule: CampaignRule,
    *,
    now: datetime,
    client: SegmentationClient | None,
    preset: str | None = None,
) -> StoredRule:
    await check_rule(session, merchant_id, rule, now=now, client=client)
    rule_id = f"rul_{uuid.uuid4().hex[:16]}"
    fire = next_fire(rule.trigger, now) if isinstance(rule.trigger, Schedule) else None
    await session.execute(
        rules.insert().values(
            merchant_id=merchant_id,
            rule_id=rule_id,
            name=rule.name,
            body=rule.model_dump_json(),
            trigger_type=rule.trigger.type,
            preset=preset,
            enabled=True,
            next_fire_at=fire,
            created_at=now,
            updated_at=now,
        )
    )
    return StoredRule(rule_id, rule, True, preset, fire, now, now)


async def get_rule(session: AsyncSession, merchant_id: str, rule_id: str, *, lock: bool = False) -> StoredRule | None:
    q = select(rules).where(rules.c.merchant_id == merchant_id, rules.c.rule_id == rule_id)
    row = (await session.execute(q.with_for_update() if lock else q)).first()
    return StoredRule.from_row(row) if row is not None else None


async def list_rules(session: AsyncSession, merchant_id: str) -> list[StoredRule]:
    rows = await session.execute(
        select(rules).where(rules.c.merchant_id == merchant_id).order_by(rules.c.created_at, rules.c.rule_id)
    )
    return [StoredRule.from_row(r) for r in rows]


async def set_enabled(
    session: AsyncSession, merchant_id: str, rule_id: str, enabled: bool, *, now: datetime
) -> StoredRule | None:
    """Enable or disable. A schedule enabled again fires next at its next time from now, not
    for the fires it missed while disabled."""
    stored = await get_rule(session, merchant_id, rule_id, lock=dialect_name(session) == "postgresql")
    if stored is None:
        return None
    values: dict[str, Any] = {"enabled": enabled, "updated_at": now}
    if enabled and not stored.enabled and isinstance(stored.rule.trigger, Schedule):
        values["next_fire_at"] = next_fire(stored.rule.trigger, now)
    await session.execute(
        update(rules).where(rules.c.merchant_id == merchant_id, rules.c.rule_id == rule_id).values(**values)
    )
    return await get_rule(session, merchant_id, rule_id)


async def run_now(session: AsyncSession, merchant_id: str, rule_id: str, *, now: datetime) -> StoredRule | None:
    """Bring a scheduled rule's next fire forward to now: the schedule worker fires it at once (to
    the audience as it is now, under the rule's caps) and then resumes the schedule. A fire that
    is already due or running is left as it is. Raises RuleRefused for a rule that is not a
    schedule or is disabled."""
    stored = await get_rule(session, merchant_id, rule_id, lock=dialect_name(session) == "postgresql")
    if stored is None:
        return None
    if not isinstance(stored.rule.trigger, Schedule):
        raise RuleRefused(
            "path.rule_id",
            f"rule {rule_id} fires on {stored.rule.trigger.type}, not on a schedule: "
            "only a scheduled rule can be run now",
        )
    if not stored.enabled:
        raise RuleRefused("path.rule_id", f"rule {rule_id} is disabled: enable it first (PATCH enabled=true)")
    r = rules.c
    await session.execute(
        update(rules)
        .where(r.merchant_id == merchant_id, r.rule_id == rule_id, or_(r.next_fire_at.is_(None), r.next_fire_at > now))
        .values(next_fire_at=now, updated_at=now)
    )
    return await get_rule(session, merchant_id, rule_id)


async def enabled_rules(
    session: AsyncSession, merchant_ids: list[str], trigger_types: set[str]
) -> list[tuple[str, StoredRule]]:
    """The enabled rules of these merchants with these trigger types (one query per batch)."""
    rows = await session.execute(
        select(rules)
        .where(
            in_values(rules.c.merchant_id, merchant_ids),
            rules.c.enabled.is_(True),
            rules.c.trigger_type.in_(sorted(trigger_types)),
        )
        .order_by(rules.c.merchant_id, rules.c.created_at)
    )
    return [(r.merchant_id, StoredRule.from_row(r)) for r in rows]


# ---------------------------------------------------------------- presets


def preset_examples(now: datetime, tz: tzinfo) -> dict[str, dict[str, Any]]:
    """Parameters for the presets that have none by default (a goal's month or window): next month
    on the merchant's calendar, so that an example copied from the catalogue is one the API takes."""
    here = now.astimezone(tz)
    index = here.year * 12 + here.month  # next month, counted from year 0 month 0
    start = datetime(index // 12, index % 12 + 1, 1, tzinfo=tz)
    end = datetime((index + 1) // 12, (index + 1) % 12 + 1, 1, tzinfo=tz)
    return {
        "goal_orders_in_month": {"year": start.year, "month": start.month},
        "goal_spend_in_window": {"window_start": start.isoformat(), "window_end": end.isoformat()},
    }


def _hints(name: str) -> tuple[inspect.Signature, dict[str, Any]]:
    make = PRESETS[name]
    return inspect.signature(make), typing.get_type_hints(make)


def _type_name(hint: Any) -> str:
    return (
        str(hint)
        .replace("typing.", "")
        .replace("datetime.datetime", "datetime")
        .replace("<class '", "")
        .replace("'>", "")
    )


def preset_params(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """The preset's keyword arguments from JSON: unknown names refused, each value checked
    against the parameter's type (integers stay integers: money is never a float)."""
    sig, hints = _hints(name)
    known = [p for p in sig.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    names = {p.name for p in known}
    for key in params:
        if key not in names:
            raise RuleRefused(
                f"body.{key}", f"unknown parameter of preset {name}; it takes: {', '.join(sorted(names))}"
            )
    for p in known:
        if p.default is inspect.Parameter.empty and p.name not in params:
            raise RuleRefused(f"body.{p.name}", f"required by preset {name} ({_type_name(hints[p.name])})")
    out: dict[str, Any] = {}
    for key, value in params.items():
        try:
            out[key] = TypeAdapter(hints[key]).validate_json(orjson.dumps(value), strict=True)
        except ValidationError as e:
            raise RuleRefused(f"body.{key}", f"expected {_type_name(hints[key])}: {e.errors()[0]['msg']}") from None
    return out


def describe_presets(now: datetime, tz: tzinfo) -> list[dict[str, Any]]:
    """Each preset: what it is for, its parameters with their defaults, and what it creates
    (with the defaults, or the example parameters when some have none)."""
    examples = preset_examples(now, tz)
    out = []
    for name, make in PRESETS.items():
        sig, hints = _hints(name)
        params = [
            {
                "name": p.name,
                "type": _type_name(hints[p.name]),
                "required": p.default is inspect.Parameter.empty,
                "default": None if p.default is inspect.Parameter.empty else p.default,
            }
            for p in sig.parameters.values()
        ]
        example = examples.get(name, {})
        preset = make(**preset_params(name, example))
        doc = inspect.getdoc(make) or ""
        out.append(
            {
                "name": name,
                "summary": doc.split("\n\n")[0].replace("\n", " "),
                "params": params,
                "example_params": example or None,
                "creates": {
                    "templates": {k: t.model_dump(mode="json") for k, t in preset.templates.items()},
                    "rule": preset.rule.model_dump(mode="json"),
                },
            }
        )
    return out


async def apply_preset(
    session: AsyncSession,
    merchant_id: str,
    name: str,
    params: dict[str, Any],
    *,
    now: datetime,
    client: SegmentationClient | None,
) -> tuple[StoredRule, dict[str, StoredTemplate]]:
    """Create the preset's templates and its rule (the caller's transaction: all or nothing).
    Raises KeyError for an unknown preset, RuleRefused for bad parameters."""
    if name not in PRESETS:
        raise KeyError(name)
    kwargs = preset_params(name, params)
    try:
        preset = PRESETS[name](**kwargs)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise RuleRefused(
            "body",
            f"preset {name} with these parameters makes an invalid {e.title}"
            f"{' at ' + where if where else ''}: {err['msg']}",
        ) from None
    except ValueError as e:
        raise RuleRefused("body", f"preset {name}: {e}") from None
    made: dict[str, StoredTemplate] = {}
    for key, template in preset.templates.items():
        made[key] = await create_template(session, merchant_id, template)
    rule = preset.bind({k: st.template_id for k, st in made.items()})
    stored = await create_rule(session, merchant_id, rule, now=now, client=client, preset=name)
    return stored, made
