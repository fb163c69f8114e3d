"""Message templates: per channel and locale, Jinja2 in a sandbox, checked when saved (pure, no I/O).

A template is a ``TemplateSpec``: a channel, a locale, the trigger it answers and its parts, each
part a Jinja2 source. ``validate`` runs when a template is saved and returns every problem, each
naming the part at fault (``parts.text``, ``parts.fields.thing1``); ``render`` runs when a message
is sent. A missing variable is a save-time error, never a send-time surprise: every variable a
template reads, down to the attribute (``{{ coupon.nmae }}``), must be in its trigger's catalogue.

Channels: ``wechat``, ``sms``, ``email``, ``webhook``, ``console``. Locales: ``zh-CN`` (the default)
and ``en``.

Parts, and which channel takes which:

- ``subject`` (email; webhook, console): one line; newlines are folded into spaces.
- ``text`` (email, sms; webhook, console): the plain-text body.
- ``html`` (email; webhook, console): rendered with HTML autoescaping, so ``<`` in a customer's
  name arrives as ``&lt;``; every other part is rendered without escaping.
- ``fields`` (wechat; sms with a provider template; webhook, console): named values. For WeChat
  these are the subscribe-message keys (``thing1``, ``time2``…); for an Aliyun-style SMS template
  they are its parameters (``name``, ``code``…).
- ``provider_template`` (wechat, sms): the provider's template id or code, taken as is (no Jinja).
- ``page`` (wechat; webhook, console): the mini-program page the message opens, e.g.
  ``pages/coupon/detail?id={{ coupon.id }}``.

Channel requirements: email needs a subject and text or html; sms needs text, or a provider
template whose parameters are the fields; wechat needs a provider template (the template id) and
at least one field, every key one of WeChat's kinds followed by digits (``thing``, ``number``,
``letter``, ``symbol``, ``character_string``, ``time``, ``date``, ``amount``, ``phone_number``,
``car_number``, ``name``, ``phrase``); webhook and console need something to carry.

WeChat limits field values by kind. Rather than fail a send, ``render`` cuts an over-long value:
``thing`` to 20 characters, ``name`` to 10 and ``phrase`` to 5, ending in "…"; ``character_string``,
``number``, ``letter`` and ``symbol`` to 32 and ``car_number`` to 8, cut without "…" (an ellipsis is
not in those kinds' character sets).

Variables are dotted paths. Available everywhere:

- ``customer.id``, ``customer.name``, ``customer.nickname``; ``shop.name``;
- ``now`` (aware datetime), ``tz`` (the merchant's zone name), ``locale``;
- ``unsubscribe_url`` (empty where the channel has none).

Per trigger (from the event payloads in ``shared/events.py``):

- ``coupon.issued``: ``coupon.id``, ``coupon.name`` (the template's name), ``coupon.template_id``,
  ``coupon.rule_id``, ``coupon.kind``, ``coupon.face_value_fen``, ``coupon.starts_at``,
  ``coupon.expires_at``;
- ``coupon.expiring``: ``coupon.id``, ``coupon.name``, ``coupon.template_id``, ``coupon.rule_id``,
  ``coupon.expires_at``, ``coupon.days_left``;
- ``points.expiring``: ``points.amount``, ``points.lot_id``, ``points.expires_at``,
  ``points.days_left``;
- ``level.changed``: ``level.name`` (the new level), ``level.previous`` (empty: none before),
  ``level.direction`` (upgrade or downgrade), ``level.growth``;
- ``segment.changed`` (the segment after the change, and what moved): ``segment.tier``,
  ``segment.cell``, ``segment.rfm_class``, ``segment.tags``, ``segment.previous_tier``,
  ``segment.previous_rfm_class``, ``segment.entered`` and ``segment.left`` (tags gained and lost,
  e.g. ``dormant`` for a recall message);
- ``replenishment.due``: ``replenishment.category`` (segment.changed carries the tag
  ``replenish_due:<category>``, not the order history behind it);
- ``birthday``: ``birthday.month``, ``birthday.day``;
- ``campaign``: ``campaign.id``, ``campaign.name``.

Any template may also declare variables of its own (a campaign's ``vars``): a declared ``headline``
is read as ``vars.headline``. A declared name is an identifier, does not start with ``_`` and is not
a method name of a mapping (``items``, ``keys``…), which Jinja would find first.

A null value prints as nothing. Filters beside Jinja's built-ins (``truncate``, ``default``…):

- ``yuan``: integer fen to yuan, ``3000 → ¥30`` and ``1250 → ¥12.50`` (whole yuan without
  decimals, otherwise two); anything but an integer is a render error;
- ``date`` / ``datetime``: a datetime (or ISO string) on the merchant's clock (``tz``):
  ``2026年11月14日`` / ``2026年11月14日 23:59`` in zh-CN, ``2026-11-14`` / ``2026-11-14 23:59`` in en;
  ``date('%m/%d')`` takes a strftime format instead.

The sandbox refuses unsafe attributes (``''.__class__``), mutation of the context, huge ranges,
repetitions, powers and format widths, and ``include``/``extends``/``import`` (there is no loader).

Versions are stored by the service layer; ``fingerprint`` is a stable hash of a spec's content so
saving the same template twice does not make a new version.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from functools import lru_cache
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from jinja2 import StrictUndefined, Template, TemplateError, TemplateSyntaxError, nodes, pass_context
from jinja2.meta import find_undeclared_variables
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

Channel = Literal["wechat", "sms", "email", "webhook", "console"]
Purpose = Literal["transactional", "marketing"]

CHANNELS: tuple[str, ...] = ("wechat", "sms", "email", "webhook", "console")
LOCALES: tuple[str, ...] = ("zh-CN", "en")
DEFAULT_LOCALE = "zh-CN"
DEFAULT_TZ = "Asia/Shanghai"

# WeChat subscribe-message keys: a kind followed by digits.
WECHAT_KEY = re.compile(
    r"^(thing|number|letter|symbol|character_string|time|date|amount|phone_number|car_number|name|phrase)(\d+)$"
)
# (limit, ellipsis?) per WeChat kind; kinds not listed are not cut.
WECHAT_LIMITS: dict[str, tuple[int, bool]] = {
    "thing": (20, True),
    "name": (10, True),
    "phrase": (5, True),
    "character_string": (32, False),
    "number": (32, False),
    "letter": (32, False),
    "symbol": (32, False),
    "car_number": (8, False),
}
PROVIDER_TEMPLATE = re.compile(r"^[A-Za-z0-9_\-]{1,128}$")
SMS_PARAM = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_VAR_NAME = re.compile(r"^[^\W\d]\w{0,63}$")

PART_NAMES = ("subject", "text", "html", "fields", "provider_template", "page")
_ALL_PARTS = frozenset(PART_NAMES)
ALLOWED_PARTS: dict[str, frozenset[str]] = {
    "email": frozenset({"subject", "text", "html"}),
    "sms": frozenset({"text", "fields", "provider_template"}),
    "wechat": frozenset({"fields", "provider_template", "page"}),
    "webhook": _ALL_PARTS,
    "console": _ALL_PARTS,
}


# ---------------------------------------------------------------- the trigger catalogue


@dataclass(frozen=True)
class Trigger:
    name: str
    description: str
    variables: frozenset[str]
    purpose: Purpose  # the default; a rule or campaign may say otherwise
    examples: Mapping[str, str]  # locale → a plain-text example, rendered by the preview


COMMON_VARIABLES = frozenset(
    {"customer.id", "customer.name", "customer.nickname", "shop.name", "now", "tz", "locale", "unsubscribe_url"}
)


def _trigger(name: str, description: str, variables: str, purpose: Purpose, zh: str, en: str) -> Trigger:
    return Trigger(name, description, frozenset(variables.split()), purpose, {"zh-CN": zh, "en": en})


# level.changed is an account notice (transactional); everything else nudges a purchase and is
# marketing unless the rule that sends it says otherwise.
TRIGGERS: dict[str, Trigger] = {
    t.name: t
    for t in [
        _trigger(
            "coupon.issued",
            "A coupon landed in the customer's wallet.",
            "coupon.id coupon.name coupon.template_id coupon.rule_id coupon.kind coupon.face_value_fen "
            "coupon.starts_at coupon.expires_at",
            "marketing",
            "{{ customer.name }}，{{ shop.name }}送您一张{{ coupon.name }}，有效期至{{ coupon.expires_at | date }}。"
            "退订回T",
            "{{ customer.name }}, {{ shop.name }} sent you a coupon: {{ coupon.name }}, valid until "
            "{{ coupon.expires_at | date }}. Reply STOP to opt out.",
        ),
        _trigger(
            "coupon.expiring",
            "An unused coupon expires soon.",
            "coupon.id coupon.name coupon.template_id coupon.rule_id coupon.expires_at coupon.days_left",
            "marketing",
            "{{ customer.name }}，您的{{ coupon.name }}还有{{ coupon.days_left }}天过期，别错过。退订回T",
            "{{ customer.name }}, your {{ coupon.name }} expires in {{ coupon.days_left }} days. "
            "Reply STOP to opt out.",
        ),
        _trigger(
            "points.expiring",
            "A lot of points expires soon.",
            "points.amount points.lot_id points.expires_at points.days_left",
            "marketing",
            "{{ customer.name }}，您有{{ points.amount }}积分将于{{ points.expires_at | date }}过期，"
            "快来兑换吧。退订回T",
            "{{ customer.name }}, {{ points.amount }} points expire on {{ points.expires_at | date }}. "
            "Reply STOP to opt out.",
        ),
        _trigger(
            "level.changed",
            "A member's level moved up or down.",
            "level.name level.previous level.direction level.growth",
            "transactional",
            "{{ customer.name }}，恭喜您成为{{ shop.name }}{{ level.name }}！",
            "{{ customer.name }}, you are now a {{ level.name }} member of {{ shop.name }}.",
        ),
        _trigger(
            "segment.changed",
            "A customer's segment or tags changed (e.g. into dormant: a recall).",
            "segment.tier segment.cell segment.rfm_class segment.tags segment.previous_tier "
            "segment.previous_rfm_class segment.entered segment.left",
            "marketing",
            "{{ customer.name }}，好久不见！{{ shop.name }}为您准备了回归好礼，点击查看。退订回T",
            "{{ customer.name }}, we miss you! {{ shop.name }} has a welcome-back gift for you. Reply STOP to opt out.",
        ),
        _trigger(
            "replenishment.due",
            "A category the customer buys regularly is due again.",
            "replenishment.category",
            "marketing",
            "{{ customer.name }}，您常买的{{ replenishment.category }}该补货啦，{{ shop.name }}已为您备好。退订回T",
            "{{ customer.name }}, time to restock your {{ replenishment.category }} at {{ shop.name }}. "
            "Reply STOP to opt out.",
        ),
        _trigger(
            "birthday",
            "The customer's birthday.",
            "birthday.month birthday.day",
            "marketing",
            "{{ customer.name }}，{{ shop.name }}祝您{{ birthday.month }}月{{ birthday.day }}日生日快乐！退订回T",
            "Happy birthday, {{ customer.name }}! From all of us at {{ shop.name }}. Reply STOP to opt out.",
        ),
        _trigger(
            "campaign",
            "A merchant's campaign to an audience.",
            "campaign.id campaign.name",
            "marketing",
            "{{ customer.name }}，{{ shop.name }}「{{ campaign.name }}」火热进行中。退订回T",
            "{{ customer.name }}, {{ shop.name }}'s {{ campaign.name }} is on now. Reply STOP to opt out.",
        ),
    ]
}


class UnknownTrigger(ValueError):
    pass


def check_var_name(name: str) -> str | None:
    """Why a declared variable name cannot be used (None: it can)."""
    if not _VAR_NAME.fullmatch(name):
        return "a variable name is a letter or _ then letters, digits or _ (at most 64)"
    if name.startswith("_"):
        return "a variable name may not start with _"
    if hasattr(dict, name):
        return f"{name!r} is a mapping method name; choose another"
    return None


def _declared(extra: Iterable[str]) -> list[str]:
    return [e.removeprefix("vars.") for e in extra]


def variables(trigger: str, extra: Iterable[str] = ()) -> set[str]:
    """Every dotted variable a template for ``trigger`` may read; ``extra`` are declared names
    (``headline`` or ``vars.headline``), read as ``vars.headline``."""
    try:
        t = TRIGGERS[trigger]
    except KeyError:
        raise UnknownTrigger(f"unknown trigger {trigger!r}") from None
    return set(COMMON_VARIABLES | t.variables) | {f"vars.{n}" for n in _declared(extra)}


# ---------------------------------------------------------------- context


def _payload(data: Any) -> dict[str, Any]:
    if data is None:
        return {}
    if hasattr(data, "model_dump"):
        return dict(data.model_dump())
    return dict(data)


def _when(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return value
    return value


def _trigger_vars(trigger: str, d: dict[str, Any]) -> dict[str, Any]:
    if trigger == "coupon.issued":
        return {
            "coupon": {
                "id": d.get("coupon_id"),
                "name": d.get("template_name"),
                "template_id": d.get("template_id"),
                "rule_id": d.get("rule_id"),
                "kind": d.get("kind"),
                "face_value_fen": d.get("face_value_fen"),
                "starts_at": _when(d.get("starts_at")),
                "expires_at": _when(d.get("expires_at")),
            }
        }
    if trigger == "coupon.expiring":
        return {
            "coupon": {
                "id": d.get("coupon_id"),
                "name": d.get("template_name"),
                "template_id": d.get("template_id"),
                "rule_id": d.get("rule_id"),
                "expires_at": _when(d.get("expires_at")),
                "days_left": d.get("days_left"),
            }
        }
    if trigger == "points.expiring":
        return {
            "points": {
                "amount": d.get("points"),
                "lot_id": d.get("lot_id"),
                "expires_at": _when(d.get("expires_at")),
                "days_left": d.get("days_left"),
            }
        }
    if trigger == "level.changed":
        return {
            "level": {
                "name": d.get("to_level"),
                "previous": d.get("from_level"),
                "direction": d.get("direction"),
                "growth": d.get("growth"),
            }
        }
    if trigger == "segment.changed":
        before, after = d.get("before") or {}, d.get("after") or {}
        old, new = list(before.get("tags") or []), list(after.get("tags") or [])
        return {
            "segment": {
                "tier": after.get("tier"),
                "cell": after.get("cell"),
                "rfm_class": after.get("rfm_class"),
                "tags": new,
                "previous_tier": before.get("tier"),
                "previous_rfm_class": before.get("rfm_class"),
                "entered": [t for t in new if t not in old],
                "left": [t for t in old if t not in new],
            }
        }
    if trigger == "replenishment.due":
        return {"replenishment": {"category": d.get("category")}}
    if trigger == "birthday":
        return {"birthday": {"month": d.get("month"), "day": d.get("day")}}
    if trigger == "campaign":
        return {"campaign": {"id": d.get("id"), "name": d.get("name")}}
    raise UnknownTrigger(f"unknown trigger {trigger!r}")


def build_context(
    trigger: str,
    data: Any,
    *,
    customer: Mapping[str, Any],
    shop: Mapping[str, Any],
    now: datetime,
    tz: str = DEFAULT_TZ,
    locale: str = DEFAULT_LOCALE,
    unsubscribe_url: str | None = None,
    vars: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The variables of the catalogue from a trigger's payload (an event's ``data``, a model or a
    mapping; ``replenishment.due``: category; ``birthday``: month, day;
    ``campaign``: id, name). The one place that maps payload fields to template names."""
    ctx: dict[str, Any] = {
        "customer": {
            "id": customer.get("id"),
            "name": customer.get("name") or customer.get("nickname"),
            "nickname": customer.get("nickname") or customer.get("name"),
        },
        "shop": {"name": shop.get("name")},
        "now": now,
        "tz": tz,
        "locale": locale,
        "unsubscribe_url": unsubscribe_url,
    }
    ctx.update(_trigger_vars(trigger, _payload(data)))
    if vars:
        ctx["vars"] = dict(vars)
    return ctx


SAMPLE_NOW = datetime(2026, 11, 7, 10, 0, tzinfo=ZoneInfo(DEFAULT_TZ))


def _sample_data(trigger: str, zh: bool) -> dict[str, Any]:
    now = SAMPLE_NOW
    coupon = {
        "coupon_id": "cp-10086",
        "template_id": "tpl-199-30",
        "rule_id": "rule-recall",
        "template_name": "满199减30券" if zh else "¥30 off ¥199",
    }
    match trigger:
        case "coupon.issued":
            return {
                **coupon,
                "kind": "amount_off",
                "face_value_fen": 3000,
                "starts_at": now,
                "expires_at": now + timedelta(days=7),
            }
        case "coupon.expiring":
            return {**coupon, "expires_at": now + timedelta(days=3), "days_left": 3}
        case "points.expiring":
            return {"lot_id": "lot-2026-05", "points": 1200, "expires_at": now + timedelta(days=7), "days_left": 7}
        case "level.changed":
            return {
                "from_level": "银卡会员" if zh else "Silver",
                "to_level": "金卡会员" if zh else "Gold",
                "direction": "upgrade",
                "growth": 2680,
            }
        case "segment.changed":
            return {
                "before": {
                    "tier": "B",
                    "cell": "2-2-2",
                    "rfm_class": "important_development",
                    "tags": ["repurchase_cycle:milk-powder"],
                },
                "after": {"tier": "B", "cell": "1-2-2", "rfm_class": "important_winback", "tags": ["dormant"]},
                "config_version": 3,
            }
        case "replenishment.due":
            return {"category": "奶粉" if zh else "milk powder"}
        case "birthday":
            return {"month": 11, "day": 8}
        case "campaign":
            return {"id": "cmp-double11", "name": "双11回购季" if zh else "Double 11 restock"}
    raise UnknownTrigger(f"unknown trigger {trigger!r}")


def sample_context(
    trigger: str, locale: str = DEFAULT_LOCALE, extra_vars: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Believable values for every variable of ``trigger``, for previews and the save-time trial
    render; ``extra_vars`` are the declared variables with their sample values."""
    zh = locale != "en"
    customer = {"id": "u-42", "name": "林晓" if zh else "Lin Xiao", "nickname": "小林" if zh else "Lin"}
    shop = {"name": "贝贝母婴旗舰店" if zh else "Beibei Baby Store"}
    return build_context(
        trigger,
        _sample_data(trigger, zh),
        customer=customer,
        shop=shop,
        now=SAMPLE_NOW,
        tz=DEFAULT_TZ,
        locale=locale if locale in LOCALES else DEFAULT_LOCALE,
        unsubscribe_url="https://fugou.example/u/sample-token",
        vars={k.removeprefix("vars."): v for k, v in (extra_vars or {}).items()},
    )


# ---------------------------------------------------------------- filters and the sandbox


@lru_cache(maxsize=64)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def _local(ctx: Context, value: Any) -> date:
    value = _when(value)
    if isinstance(value, datetime):
        if value.tzinfo is None:
            return value
        try:
            return value.astimezone(_zone(str(ctx.get("tz") or DEFAULT_TZ)))
        except ZoneInfoNotFoundError:
            return value.astimezone(_zone(DEFAULT_TZ))
    if isinstance(value, date):
        return value
    raise TypeError(f"expected a date or datetime, got {type(value).__name__}")


@pass_context
def _date_filter(ctx: Context, value: Any, fmt: str | None = None) -> str:
    d = _local(ctx, value)
    if fmt is not None:
        return d.strftime(fmt)
    if ctx.get("locale") == "en":
        return d.strftime("%Y-%m-%d")
    return f"{d.year}年{d.month}月{d.day}日"


@pass_context
def _datetime_filter(ctx: Context, value: Any, fmt: str | None = None) -> str:
    d = _local(ctx, value)
    if fmt is not None:
        return d.strftime(fmt)
    hm = d.strftime(" %H:%M") if isinstance(d, datetime) else ""
    if ctx.get("locale") == "en":
        return d.strftime("%Y-%m-%d") + hm
    return f"{d.year}年{d.month}月{d.day}日{hm}"


def yuan(fen: Any) -> str:
    """Integer fen as yuan: 3000 → ¥30, 1250 → ¥12.50, -500 → -¥5."""
    if not isinstance(fen, int) or isinstance(fen, bool):
        raise TypeError(f"yuan expects integer fen, got {type(fen).__name__}")
    sign, fen = ("-", -fen) if fen < 0 else ("", fen)
    whole, cents = divmod(fen, 100)
    return f"{sign}¥{whole}" if cents == 0 else f"{sign}¥{whole}.{cents:02d}"


_MAX_REPEAT = 10_000
_MAX_EXPONENT = 64


class _Sandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, with ``*`` and ``**`` bounded so a template cannot build a huge
    string or number (intercepting them also stops Jinja folding them at compile time)."""

    intercepted_binops = frozenset({"*", "**", "%"})

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(right, (int, float)) and abs(right) > _MAX_EXPONENT:
            raise SecurityError(f"exponent {right} is too large")
        if operator == "%" and isinstance(left, str):
            _check_format(left)
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * n > _MAX_REPEAT:
                    raise SecurityError("the repetition is too long")
        return super().call_binop(context, operator, left, right)

    def wrap_str_format(self, value: Any) -> Any:
        wrapped = super().wrap_str_format(value)
        if wrapped is not None:
            _check_format(value.__self__)
        return wrapped


# A width or precision of 5 digits or more in a format string ("%99999d", "{:>99999}").
_HUGE_FORMAT = re.compile(r"%[^a-zA-Z%]*\d{5}|\{[^{}]*:[^{}]*\d{5}")


def _check_format(fmt: str) -> None:
    if _HUGE_FORMAT.search(fmt):
        raise SecurityError("the format width is too large")


def _format_filter(value: Any, *args: Any, **kwargs: Any) -> str:
    fmt = str(value)
    _check_format(fmt)
    return fmt % (kwargs or args)


def _finalize(value: Any) -> Any:
    return "" if value is None else value


def _environment(autoescape: bool) -> _Sandbox:
    env = _Sandbox(
        undefined=StrictUndefined, autoescape=autoescape, finalize=_finalize, trim_blocks=True, lstrip_blocks=True
    )
    env.filters.update({"yuan": yuan, "date": _date_filter, "datetime": _datetime_filter, "format": _format_filter})
    del env.globals["lipsum"]  # no use in a message, and a cheap way to make megabytes
    return env


_TEXT_ENV = _environment(autoescape=False)
_HTML_ENV = _environment(autoescape=True)


@lru_cache(maxsize=4096)
def _compiled(source: str, html: bool) -> Template:
    return (_HTML_ENV if html else _TEXT_ENV).from_string(source)


# ---------------------------------------------------------------- specs


@dataclass(frozen=True)
class TemplateParts:
    """Jinja sources, except ``provider_template`` (the provider's id or code, taken as is)."""

    subject: str | None = None
    text: str | None = None
    html: str | None = None
    fields: Mapping[str, str] = field(default_factory=dict)
    provider_template: str | None = None
    page: str | None = None


@dataclass(frozen=True)
class TemplateSpec:
    channel: str
    locale: str
    trigger: str
    parts: TemplateParts


@dataclass(frozen=True)
class RenderedParts:
    """What a channel sends (the service layer turns it into the adapters' ``Rendered``)."""

    subject: str | None
    text: str | None
    html: str | None
    fields: Mapping[str, str]
    provider_template: str | None
    page: str | None
    unsubscribe_url: str | None


@dataclass(frozen=True)
class Problem:
    field: str
    message: str


class RenderError(Exception):
    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _sources(parts: TemplateParts) -> Iterator[tuple[str, str, bool]]:
    """(field, source, html?) for every Jinja part present."""
    for name in ("subject", "text", "html"):
        source = getattr(parts, name)
        if source is not None:
            yield f"parts.{name}", source, name == "html"
    for key, source in parts.fields.items():
        yield f"parts.fields.{key}", source, False
    if parts.page is not None:
        yield "parts.page", parts.page, False


def _present(parts: TemplateParts, name: str) -> bool:
    value = getattr(parts, name)
    return bool(value) if name == "fields" else value is not None and value.strip() != ""


# ---------------------------------------------------------------- validation


def validate(spec: TemplateSpec, extra_vars: Iterable[str] = ()) -> list[Problem]:
    """Every reason ``spec`` cannot be saved (empty: it can), in a stable order: the channel,
    locale and trigger, declared variables, the channel's requirements, then each part's syntax,
    variables, filters and a trial render on the sample values."""
    problems: list[Problem] = []
    if spec.channel not in CHANNELS:
        problems.append(Problem("channel", f"unknown channel {spec.channel!r}; one of {', '.join(CHANNELS)}"))
    if spec.locale not in LOCALES:
        problems.append(Problem("locale", f"unknown locale {spec.locale!r}; one of {', '.join(LOCALES)}"))
    trigger = TRIGGERS.get(spec.trigger)
    if trigger is None:
        problems.append(Problem("trigger", f"unknown trigger {spec.trigger!r}; one of {', '.join(TRIGGERS)}"))
    declared = _declared(extra_vars)
    problems.extend(Problem(f"vars.{name}", why) for name in declared if (why := check_var_name(name)) is not None)
    if spec.channel in CHANNELS:
        problems.extend(_channel_problems(spec.channel, spec.parts))

    known = variables(spec.trigger, declared) if trigger else None
    sample = sample_context(spec.trigger, spec.locale, {n: f"{{{n}}}" for n in declared}) if trigger else None
    for name, source, html in _sources(spec.parts):
        problems.extend(_source_problems(name, source, html, known, sample, spec.channel))
    return problems


def _channel_problems(channel: str, parts: TemplateParts) -> list[Problem]:
    out = [
        Problem(f"parts.{name}", f"{channel} messages have no {name}")
        for name in PART_NAMES
        if name not in ALLOWED_PARTS[channel] and _present(parts, name)
    ]
    if channel == "email":
        if not _present(parts, "subject"):
            out.append(Problem("parts.subject", "an email needs a subject"))
        if not (_present(parts, "text") or _present(parts, "html")):
            out.append(Problem("parts.text", "an email needs text or html"))
    elif channel == "sms":
        if not (_present(parts, "text") or _present(parts, "provider_template")):
            out.append(Problem("parts.text", "an SMS needs text, or a provider template with its fields"))
        if parts.fields and not _present(parts, "provider_template"):
            out.append(
                Problem("parts.provider_template", "SMS fields are a provider template's parameters; name the template")
            )
        out.extend(
            Problem(f"parts.fields.{key}", "an SMS template parameter is a letter or _ then letters, digits or _")
            for key in parts.fields
            if not SMS_PARAM.fullmatch(key)
        )
    elif channel == "wechat":
        if not _present(parts, "provider_template"):
            out.append(Problem("parts.provider_template", "a WeChat subscribe message needs its template id"))
        if not parts.fields:
            out.append(Problem("parts.fields", "a WeChat subscribe message needs at least one field"))
        out.extend(
            Problem(
                f"parts.fields.{key}",
                "a WeChat key is a kind followed by digits (thing1, "
                "time2…): thing, number, letter, symbol, "
                "character_string, time, date, amount, phone_number, "
                "car_number, name or phrase",
            )
            for key in parts.fields
            if not WECHAT_KEY.fullmatch(key)
        )
    elif not any(_present(parts, n) for n in ("subject", "text", "html", "fields")):
        out.append(Problem("parts.text", f"a {channel} message needs text, html or fields"))
    if _present(parts, "provider_template") and not PROVIDER_TEMPLATE.fullmatch(parts.provider_template or ""):
        out.append(Problem("parts.provider_template", "a provider template id is 1–128 letters, digits, _ or -"))
    return out


_NUMBER = re.compile(r"^\d+(\.\d+)?$")
_AMOUNT = re.compile(r"^[¥￥$€£]?\d{1,10}(\.\d{1,2})?元?$")


def _source_problems(
    name: str, source: str, html: bool, known: set[str] | None, sample: dict[str, Any] | None, channel: str
) -> list[Problem]:
    env = _HTML_ENV if html else _TEXT_ENV
    try:
        ast = env.parse(source)
    except TemplateSyntaxError as exc:
        return [Problem(name, f"line {exc.lineno}: {exc.message}")]
    out = [Problem(name, m) for m in _ast_problems(ast, env, known)]
    if out or sample is None:
        return list(dict.fromkeys(out))
    try:
        value = _compiled(source, html).render(sample)
    except Exception as exc:
        return [Problem(name, f"fails on the sample values: {_describe(exc)}")]
    key = name.removeprefix("parts.fields.")
    if channel == "wechat" and name.startswith("parts.fields.") and (m := WECHAT_KEY.fullmatch(key)):
        kind, value = m.group(1), value.strip()
        if kind == "number" and not _NUMBER.fullmatch(value):
            out.append(Problem(name, f"a WeChat number field must be digits; the sample renders {value!r}"))
        if kind == "amount" and not _AMOUNT.fullmatch(value):
            out.append(Problem(name, f"a WeChat amount field must be like ¥12.50; the sample renders {value!r}"))
    return out


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}" if not isinstance(exc, SecurityError) else f"not allowed: {exc}"


@dataclass
class _Use:
    root: str
    path: tuple[str, ...]  # the constant attribute/key names after the root
    then: str | None  # "dynamic" or "index" when the chain continues with a computed key
    lineno: int


def _chain(node: nodes.Expr) -> tuple[nodes.Expr, list[tuple[str, Any]]]:
    """Unwind ``a.b['c'][x]`` into its root and the steps from the root outwards."""
    steps: list[tuple[str, Any]] = []
    while isinstance(node, (nodes.Getattr, nodes.Getitem)):
        if isinstance(node, nodes.Getattr):
            steps.append(("name", node.attr))
        elif isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
            steps.append(("name", node.arg.value))
        elif isinstance(node.arg, nodes.Const):
            steps.append(("index", node.arg.value))
        else:
            steps.append(("dynamic", node.arg))
        node = node.node
    steps.reverse()
    return node, steps


def _walk(node: nodes.Node, uses: list[_Use], attrs: list[tuple[str, int]]) -> None:
    if isinstance(node, (nodes.Getattr, nodes.Getitem)):
        root, steps = _chain(node)
        path: list[str] = []
        then = None
        for kind, value in steps:
            if kind == "name":
                attrs.append((value, node.lineno))
                if then is None:
                    path.append(value)
            elif then is None:
                then = kind
            if kind == "dynamic":
                _walk(value, uses, attrs)
        if isinstance(root, nodes.Name) and root.ctx == "load":
            uses.append(_Use(root.name, tuple(path), then, node.lineno))
        else:
            _walk(root, uses, attrs)
        return
    if isinstance(node, nodes.Name) and node.ctx == "load":
        uses.append(_Use(node.name, (), None, node.lineno))
    for child in node.iter_child_nodes():
        _walk(child, uses, attrs)


def _ast_problems(ast: nodes.Template, env: _Sandbox, known: set[str] | None) -> list[str]:
    out: list[str] = [
        f"line {stmt.lineno}: {type(stmt).__name__.lower()} is not available in message templates"
        for stmt in ast.find_all((nodes.Extends, nodes.Include, nodes.Import, nodes.FromImport))
    ]
    out.extend(
        f"line {flt.lineno}: unknown filter {flt.name!r}"
        for flt in ast.find_all(nodes.Filter)
        if flt.name not in env.filters
    )
    out.extend(
        f"line {test.lineno}: unknown test {test.name!r}"
        for test in ast.find_all(nodes.Test)
        if test.name not in env.tests
    )
    uses: list[_Use] = []
    attrs: list[tuple[str, int]] = []
    _walk(ast, uses, attrs)
    for attr, lineno in attrs:
        if attr.startswith("_"):
            out.append(f"line {lineno}: attribute {attr!r} is not allowed")
    if known is None:
        return out

    leaves = known
    groups = {".".join(p.split(".")[:i]) for p in known for i in range(1, p.count(".") + 1)}
    roots = {p.split(".")[0] for p in known}
    try:
        undeclared = find_undeclared_variables(ast) - set(env.globals)
    except TemplateError as exc:  # an unknown filter or test, reported above
        return out or [f"line {getattr(exc, 'lineno', '?')}: {exc}"]
    for name in sorted(undeclared - roots):
        hint = difflib.get_close_matches(name, sorted(roots), n=1)
        out.append(f"unknown variable {name!r}" + (f"; did you mean {hint[0]!r}?" if hint else ""))
    # Names assigned anywhere in the template (set, for, macro arguments) are the template's own.
    local = {n.name for n in ast.find_all(nodes.Name) if n.ctx in ("store", "param")}
    for use in uses:
        if use.root not in undeclared or use.root not in roots or use.root in local:
            continue
        if msg := _check_use(use, leaves, groups):
            out.append(f"line {use.lineno}: {msg}")
    return out


def _check_use(use: _Use, leaves: set[str], groups: set[str]) -> str | None:
    prefix = use.root
    for part in use.path:
        if prefix in leaves:
            return None  # reading into a value (now.year, coupon.name.upper) is the value's business
        candidate = f"{prefix}.{part}"
        if candidate not in leaves and candidate not in groups:
            children = sorted(
                p for p in leaves | groups if p.startswith(prefix + ".") and p.count(".") == prefix.count(".") + 1
            )
            hint = difflib.get_close_matches(candidate, children, n=1)
            return f"unknown variable {candidate!r}" + (
                f"; did you mean {hint[0]!r}?" if hint else f"; {prefix} has {', '.join(children)}"
            )
        prefix = candidate
    if prefix in leaves:
        return None
    children = sorted(p for p in leaves if p.startswith(prefix + "."))
    if use.then is not None:
        return f"{prefix}[…]: a computed key cannot be checked; name the variable ({', '.join(children)})"
    return f"{prefix!r} is a group of variables, not a value: use one of {', '.join(children)}"


# ---------------------------------------------------------------- rendering


def _fit_wechat(key: str, value: str) -> str:
    m = WECHAT_KEY.fullmatch(key)
    limit = WECHAT_LIMITS.get(m.group(1)) if m else None
    if limit is None or len(value) <= limit[0]:
        return value
    n, ellipsis = limit
    return value[: n - 1] + "…" if ellipsis else value[:n]


def render(spec: TemplateSpec, context: Mapping[str, Any]) -> RenderedParts:
    """Render a validated spec; raise ``RenderError`` naming the part that failed."""

    def one(name: str, source: str | None, html: bool = False) -> str | None:
        if source is None:
            return None
        try:
            return _compiled(source, html).render(context)
        except Exception as exc:
            raise RenderError(name, _describe(exc)) from exc

    parts = spec.parts
    subject = one("parts.subject", parts.subject)
    page = one("parts.page", parts.page)
    fields: dict[str, str] = {}
    for key, source in parts.fields.items():
        value = (one(f"parts.fields.{key}", source) or "").strip()
        fields[key] = _fit_wechat(key, value) if spec.channel == "wechat" else value
    return RenderedParts(
        subject=" ".join(subject.split()) if subject is not None else None,
        text=one("parts.text", parts.text),
        html=one("parts.html", parts.html, html=True),
        fields=fields,
        provider_template=parts.provider_template,
        page=page.strip() or None if page is not None else None,
        unsubscribe_url=context.get("unsubscribe_url"),
    )


def render_example(trigger: str, locale: str = DEFAULT_LOCALE) -> str:
    """The trigger's plain-text example on the sample values (what a preview shows first)."""
    t = TRIGGERS[trigger]
    return _compiled(t.examples.get(locale) or t.examples[DEFAULT_LOCALE], False).render(
        sample_context(trigger, locale)
    )


def fingerprint(spec: TemplateSpec) -> str:
    """A stable hash of the content (blank parts count as absent): same content, same version."""
    p = spec.parts

    def norm(v: str | None) -> str | None:
        return v if v else None

    doc = {
        "channel": spec.channel,
        "locale": spec.locale,
        "trigger": spec.trigger,
        "subject": norm(p.subject),
        "text": norm(p.text),
        "html": norm(p.html),
        "fields": sorted(p.fields.items()),
        "provider_template": norm(p.provider_template),
        "page": norm(p.page),
    }
    raw = json.dumps(doc, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(raw.encode()).hexdigest()


__all__ = [
    "CHANNELS",
    "COMMON_VARIABLES",
    "DEFAULT_LOCALE",
    "LOCALES",
    "TRIGGERS",
    "Problem",
    "RenderError",
    "RenderedParts",
    "TemplateParts",
    "TemplateSpec",
    "Trigger",
    "UnknownTrigger",
    "build_context",
    "check_var_name",
    "fingerprint",
    "render",
    "render_example",
    "sample_context",
    "validate",
    "variables",
    "yuan",
]
