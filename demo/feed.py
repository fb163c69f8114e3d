"""Feed a shop to a running Fugou through its public HTTP API, as a shop platform would.

Two steps, each safe to repeat:

1. ``setup_merchant``: what a merchant's operator would configure on day one, so that the events
   have something to act on: segmentation's boundaries and the shop's category cycles, coupon
   templates and rules (a first-order gift, a dormant win-back with a 10% holdout so the ROI has
   a control group, a milk-powder replenishment coupon with a daily budget), a two-level member
   ladder, and notification templates, rules and the policy. Every call is idempotent: PUTs of
   the same content, POSTs only for what a GET did not find.
2. ``post_events``: ``POST /v1/events`` in batches (500 by default, the endpoint takes up to
   1,000) with a few requests in flight, each retried on 429, 5xx and connection errors with
   backoff (a retried batch is harmless: the gateway answers ``duplicate`` for what it already
   took). A tqdm bar counts events; the report totals accepted, duplicates and rejected.

``target`` is a base URL or an ``httpx.AsyncClient`` (the tests pass one on the app's ASGI
transport, with no socket).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
from tqdm import tqdm

from demo.shop import CATEGORIES, CYCLES, SHOP_NAME, SUBSCRIBE_TEMPLATE, iter_batches

BATCH = 500
CONCURRENCY = 4
ATTEMPTS = 10
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_jitter = random.Random()  # backoff jitter only: nothing the shop's contents depend on

Target = str | httpx.AsyncClient


class FeedError(RuntimeError):
    """Fugou refused a call in a way retrying cannot fix (a wrong key, a refused body)."""


@asynccontextmanager
async def connect(target: Target, timeout: float = 120.0) -> AsyncIterator[httpx.AsyncClient]:
    """A client for ``target``: the one given, or a new one for a base URL (closed after)."""
    if isinstance(target, httpx.AsyncClient):
        yield target
        return
    limits = httpx.Limits(max_connections=16, max_keepalive_connections=16)
    async with httpx.AsyncClient(base_url=target.rstrip("/"), timeout=timeout, limits=limits) as client:
        yield client


async def call(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    key: str,
    *,
    json: Any = None,
    content: bytes | None = None,
    params: dict[str, Any] | None = None,
    attempts: int = ATTEMPTS,
    expect: frozenset[int] = frozenset({200, 201}),
) -> httpx.Response:
    """One API call with the merchant's key, retried with jittered exponential backoff while the
    system is busy or unreachable (429 with its Retry-After, 5xx, connection errors, timeouts);
    any other answer outside ``expect`` is a FeedError carrying the body."""
    headers = {"X-Api-Key": key}
    if content is not None:
        headers["content-type"] = "application/json"
    for attempt in range(attempts):
        try:
            r = await client.request(method, url, json=json, content=content, params=params, headers=headers)
        except httpx.TransportError as e:
            failure = f"{type(e).__name__}: {e}"
            wait = None
        else:
            if r.status_code in expect:
                return r
            if r.status_code not in RETRY_STATUSES:
                raise FeedError(f"{method} {url} answered {r.status_code}: {r.text[:500]}")
            failure = f"HTTP {r.status_code}"
            wait = _retry_after(r)
        if attempt == attempts - 1:
            raise FeedError(f"{method} {url} failed {attempts} times; last: {failure}")
        await asyncio.sleep(wait if wait is not None else min(10.0, 0.25 * 2**attempt) * _jitter.uniform(0.5, 1.0))
    raise AssertionError("unreachable")


def _retry_after(r: httpx.Response) -> float | None:
    try:
        return min(30.0, max(0.0, float(r.headers["retry-after"])))
    except (KeyError, ValueError):
        return None


# ---------------------------------------------------------------- the merchant's set-up

SEGMENTATION = {
    # Fixed numbers fitted to this shop (rather than quantiles, recomputed hourly) so that tiers
    # and classes are right from the first event: S about a fifth, then A, B, C.
    "boundaries": {"mode": "fixed", "recency_days": [30, 90], "frequency": [3, 10], "monetary_fen": [80000, 300000]},
    "class_split": {"mode": "fixed", "recency_days": 30, "frequency": 5, "monetary_fen": 120000},
    "category_cycles": CYCLES,
}

COUPON_TEMPLATES: dict[str, dict[str, Any]] = {
    "welcome": {
        "name": "新人10元无门槛券",
        "description": "首单完成后到账，下次下单立减10元",
        "kind": {"type": "no_threshold", "amount_off_fen": 1000},
        "valid_days": 30,
    },
    "winback": {
        "name": "回归85折券",
        "description": "沉睡顾客专享，全场85折，最高减50元",
        "kind": {"type": "percent", "pay_percent": 85, "max_discount_fen": 5000},
        "valid_days": 14,
    },
    "milk": {
        "name": "奶粉满299减30",
        "description": "奶粉该补货时发放",
        "kind": {"type": "amount_off", "amount_off_fen": 3000, "threshold_fen": 29900},
        "scope": {"categories": ["milk-powder"]},
        "valid_days": 7,
    },
}
# "template" names a key of COUPON_TEMPLATES; setup_merchant puts the template's id in its place.
COUPON_RULES: list[dict[str, Any]] = [
    {
        "name": "首单礼",
        "description": "首单支付后送10元无门槛券",
        "trigger": {"type": "first_paid_order"},
        "action": {"issue": [{"template": "welcome"}]},
    },
    {
        "name": "沉睡召回",
        "description": "90天未下单的顾客送85折回归券；留出10%作对照组",
        "trigger": {"type": "segment_changed", "into": {"tag": "dormant"}},
        "action": {"issue": [{"template": "winback"}]},
        "holdout_percent": 10,
    },
    {
        "name": "奶粉补货",
        "description": "奶粉到了补货周期送满299减30，每天预算3,000元",
        "trigger": {"type": "segment_changed", "into": {"tag": "replenish_due:milk-powder"}},
        "action": {"issue": [{"template": "milk"}]},
        "caps": {"budget_per_day_fen": 300000, "issues_per_customer": 1},
    },
]

LEVELS: dict[str, Any] = {
    "levels": [
        {"code": "silver", "name": "白银会员", "threshold": 0},
        {
            "code": "gold",
            "name": "黄金会员",
            "threshold": 2000,
            "keep_threshold": 1200,
            "benefits": {"pay_percent": 95, "points_multiplier_permille": 1500, "free_shipping": True},
        },
    ],
    "growth_rate": {"growth": 1, "per_fen": 100},
    "window_months": 12,
    "review": {"every_months": 12, "grace_days": 30},
}

CATEGORY_NAMES = "{" + ", ".join(f"'{c.code}': '{c.name}'" for c in CATEGORIES) + "}"  # a Jinja dict literal
NOTIFY_TEMPLATES: list[dict[str, Any]] = [
    {
        "key": "coupon-sms",
        "channel": "sms",
        "locale": "zh-CN",
        "trigger": "coupon.issued",
        "parts": {
            "text": f"【{SHOP_NAME}】您的{{{{ coupon.name }}}}已到账，{{{{ coupon.expires_at | date }}}}前有效，"
            "打开小程序「我的-优惠券」即可使用。退订回T"
        },
    },
    {
        "key": "recall-wx",
        "channel": "wechat",
        "locale": "zh-CN",
        "trigger": "segment.changed",
        "parts": {
            "provider_template": SUBSCRIBE_TEMPLATE,
            "page": "pages/coupons/index",
            "fields": {"thing1": "回归好礼：85折券已到账", "thing2": "宝宝的奶粉尿裤该补货啦"},
        },
    },
    {
        "key": "recall-sms",
        "channel": "sms",
        "locale": "zh-CN",
        "trigger": "segment.changed",
        "parts": {
            "text": f"【{SHOP_NAME}】好久不见！送您一张85折回归券，宝宝的奶粉尿裤该补货啦，打开小程序即可使用。退订回T"
        },
    },
    {
        "key": "replenish-sms",
        "channel": "sms",
        "locale": "zh-CN",
        "trigger": "replenishment.due",
        # The category's name, not its code.
        "parts": {
            "text": f"【{SHOP_NAME}】宝宝的{{{{ {CATEGORY_NAMES}.get(replenishment.category, '常用品') }}}}"
            "按用量该补货啦，打开小程序一键回购。退订回T"
        },
    },
]
NOTIFY_RULES: dict[str, dict[str, Any]] = {
    "coupon-arrived": {
        "name": "券到账提醒",
        "trigger": "coupon.issued",
        "channels": [{"channel": "sms", "template": "coupon-sms"}],
    },
    "dormant-recall": {
        "name": "沉睡召回",
        "trigger": "segment.changed",
        "conditions": {"entered_tags": ["dormant"]},
        "channels": [{"channel": "wechat", "template": "recall-wx"}, {"channel": "sms", "template": "recall-sms"}],
    },
    "replenish": {
        "name": "补货提醒",
        "trigger": "replenishment.due",
        "channels": [{"channel": "sms", "template": "replenish-sms"}],
    },
}
NOTIFY_POLICY: dict[str, Any] = {
    "caps": {
        "sms": [{"limit": 1, "window": "day"}, {"limit": 3, "window": "week"}],
        "wechat": [{"limit": 1, "window": "day"}, {"limit": 4, "window": "week"}],
        "email": [{"limit": 1, "window": "day"}, {"limit": 3, "window": "week"}],
    },
    "quiet_hours": {"start": "22:00", "end": "08:00"},
    "marketing_requires_explicit_consent": True,
}


async def setup_merchant(target: Target, key: str) -> list[str]:
    """Configure the merchant (see the module's docstring); returns one line per step saying
    what was created and what was already there. Segmentation comes first, so that the events
    are scored under the shop's own boundaries and cycles from the first one."""
    notes: list[str] = []
    async with connect(target) as client:
        notes.append(await _segmentation(client, key))
        notes.extend(await _coupons(client, key))
        notes.append(await _loyalty(client, key))
        notes.extend(await _notifications(client, key))
    return notes


async def _segmentation(client: httpx.AsyncClient, key: str) -> str:
    # A PUT starts a re-scoring job: only when something differs.
    current = (await call(client, "GET", "/v1/segmentation/config", key)).json()["config"]
    wanted = {
        **current,
        "boundaries": SEGMENTATION["boundaries"],
        "class_split": SEGMENTATION["class_split"],
        "lifecycle": {**current["lifecycle"], "category_cycles": SEGMENTATION["category_cycles"]},
    }
    if _same(current, wanted):
        return "segmentation: boundaries and category cycles already set"
    await call(client, "PUT", "/v1/segmentation/config", key, json=wanted)
    return "segmentation: fixed boundaries and category cycles set"


def _same(current: dict[str, Any], wanted: dict[str, Any]) -> bool:
    """Equal where ``wanted`` says something (the server echoes numbers as floats and adds
    defaults; 30 == 30.0 in Python)."""

    def drop_nulls(d: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in d.items() if v is not None}

    return (
        drop_nulls(current["boundaries"]) == wanted["boundaries"]
        and drop_nulls(current["class_split"]) == wanted["class_split"]
        and current["lifecycle"].get("category_cycles") == wanted["lifecycle"]["category_cycles"]
    )


async def _coupons(client: httpx.AsyncClient, key: str) -> list[str]:
    # Templates and rules have no PUT: find them by name, create what is missing.
    existing = {t["name"]: t["template_id"] for t in (await call(client, "GET", "/v1/coupons/templates", key)).json()}
    ids: dict[str, str] = {}
    made = 0
    for role, body in COUPON_TEMPLATES.items():
        if body["name"] not in existing:
            existing[body["name"]] = (await call(client, "POST", "/v1/coupons/templates", key, json=body)).json()[
                "template_id"
            ]
            made += 1
        ids[role] = existing[body["name"]]
    rules = {r["name"] for r in (await call(client, "GET", "/v1/coupons/rules", key)).json()}
    new_rules = 0
    for rule in COUPON_RULES:
        if rule["name"] in rules:
            continue
        body = {
            **rule,
            "action": {
                "issue": [
                    {"template_id": ids[i["template"]], "count": i.get("count", 1)} for i in rule["action"]["issue"]
                ]
            },
        }
        await call(client, "POST", "/v1/coupons/rules", key, json=body)
        new_rules += 1
    return [
        f"coupons: {made} templates created ({len(COUPON_TEMPLATES) - made} already there)",
        f"coupons: {new_rules} rules created ({len(COUPON_RULES) - new_rules} already there)",
    ]


async def _loyalty(client: httpx.AsyncClient, key: str) -> str:
    rules = (await call(client, "GET", "/v1/loyalty/rules", key)).json()["rules"]
    have = rules.get("levels") or {}
    if [(lv["code"], lv["threshold"]) for lv in have.get("levels", [])] == [
        (lv["code"], lv["threshold"]) for lv in LEVELS["levels"]
    ]:
        return "loyalty: the member ladder is already set"
    rules["levels"] = LEVELS
    rules.setdefault("earn", {})["level_multipliers"] = {}  # a ladder says what each level earns
    await call(client, "PUT", "/v1/loyalty/rules", key, json=rules)
    return "loyalty: member ladder set (白银会员, 黄金会员 from 2,000 growth)"


async def _notifications(client: httpx.AsyncClient, key: str) -> list[str]:
    # A template saved with the same content answers 200 and adds no version; rules and the
    # policy are PUTs.
    created = 0
    for body in NOTIFY_TEMPLATES:
        r = await call(client, "POST", "/v1/notifications/templates", key, json=body)
        created += r.json()["created"]
    for rule_id, body in NOTIFY_RULES.items():
        await call(client, "PUT", f"/v1/notifications/rules/{rule_id}", key, json=body)
    await call(client, "PUT", "/v1/notifications/policy", key, json=NOTIFY_POLICY)
    return [
        f"notifications: {len(NOTIFY_TEMPLATES)} templates ({created} new versions), "
        f"{len(NOTIFY_RULES)} rules, the policy (caps, quiet hours 22:00-08:00)"
    ]


# ---------------------------------------------------------------- the events


@dataclass(slots=True)
class FeedReport:
    events: int
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    first_rejection: dict[str, Any] | None = None
    seconds: float = 0.0
    batches: int = 0
    rejections: list[dict[str, Any]] = field(default_factory=list, repr=False)

    @property
    def per_second(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0

    def summary(self) -> str:
        return (
            f"{self.events:,} events in {self.seconds:.1f} s ({self.per_second:,.0f}/s): "
            f"accepted {self.accepted:,}, duplicates {self.duplicates:,}, rejected {self.rejected:,}"
        )


async def post_events(
    target: Target,
    key: str,
    events: Sequence[dict[str, Any]],
    *,
    batch_size: int = BATCH,
    concurrency: int = CONCURRENCY,
    progress: bool = True,
    keep_customers: bool = True,
) -> FeedReport:
    """POST the events in batches, ``concurrency`` at a time, in order of the batches' start.

    With ``keep_customers`` no customer's run of consecutive events is split across batches, so
    concurrent requests never race one customer's events against each other."""
    if not 1 <= batch_size <= 1000:
        raise ValueError("batch_size must be 1..1000 (the endpoint's limit)")
    report = FeedReport(events=len(events))
    batches = iter(iter_batches(events, batch_size, keep_customers))
    started = time.perf_counter()
    with tqdm(
        total=len(events),
        unit="ev",
        unit_scale=True,
        desc="events",
        disable=not progress,
        smoothing=0.05,
        dynamic_ncols=True,
    ) as bar:
        async with connect(target) as client:

            async def worker() -> None:
                for batch in batches:  # one shared iterator: each batch goes to one worker
                    r = await call(client, "POST", "/v1/events", key, content=orjson.dumps(batch))
                    body = r.json()
                    report.batches += 1
                    report.accepted += body["accepted"]
                    report.duplicates += body["duplicates"]
                    report.rejected += body["rejected"]
                    if body["rejected"]:
                        bad = [x for x in body["results"] if x["status"] == "rejected"]
                        report.rejections.extend(bad[: 10 - len(report.rejections)])
                        if report.first_rejection is None:
                            first = bad[0]
                            report.first_rejection = {**first, "event": batch[first["index"]]}
                    bar.update(len(batch))
                    if report.rejected:
                        bar.set_postfix(rejected=report.rejected, refresh=False)

            try:
                async with asyncio.TaskGroup() as tg:
                    for _ in range(max(1, concurrency)):
                        tg.create_task(worker())
            except ExceptionGroup as group:  # the first failure stopped the others: say what it was
                raise group.exceptions[0] from None
    report.seconds = time.perf_counter() - started
    return report


async def wait_until_scored(
    target: Target, key: str, expected: int, *, timeout: float = 600.0, settle: float = 20.0, progress: bool = True
) -> int:
    """Follow ``GET /v1/segments/summary`` until ``expected`` customers have a segment, or the
    count has not moved for ``settle`` seconds, or ``timeout``: the events are accepted long
    before every service has applied them. Returns the last count."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last, moved = -1, loop.time()
    with tqdm(total=expected, unit="customer", desc="segmented", disable=not progress, dynamic_ncols=True) as bar:
        async with connect(target) as client:
            while True:
                count = int((await call(client, "GET", "/v1/segments/summary", key)).json()["customers"])
                bar.update(max(0, min(count, expected) - bar.n))
                now = loop.time()
                if count != last:
                    last, moved = count, now
                if count >= expected or now - moved > settle or now > deadline:
                    return count
                await asyncio.sleep(1.0)
