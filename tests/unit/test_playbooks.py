"""The console's one-click playbook, made of the services' public parts, on the embedded app: tier
B customers with no purchase in 30 days get an 8.5折 coupon (the audience_winback preset, run at
once) and a reminder answering only that rule's coupons (WeChat first, SMS when WeChat cannot reach
them). These are the calls playbooks.js makes, in its order; the browser test clicks the button."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from demo import feed
from demo.shop import SUBSCRIBE_TEMPLATE, generate
from services.coupons.domain.rules import in_holdout
from services.embedded import build_embedded_app
from shared import clock
from tests.conftest import embedded_settings, running
from tests.factories import eventually

KEY = "fg_test_playbook_key"
H = {"X-Api-Key": KEY}
WINBACK = {"and": [{"tier": ["B"]}, {"recency_days": {"gte": 30}}]}
OPEN_POLICY = {"quiet_hours": None, "marketing_requires_explicit_consent": False, "caps": {}}


async def ok(client: httpx.AsyncClient, method: str, path: str, status: int = 200, **kw: Any) -> Any:
    r = await client.request(method, path, headers=H, **kw)
    assert r.status_code == status, (method, path, r.text)
    return r.json() if r.content else None


async def members(client: httpx.AsyncClient, f: dict[str, Any]) -> set[str]:
    out: set[str] = set()
    after = None
    while True:
        page = await ok(
            client,
            "POST",
            "/v1/audiences/query",
            json={"filter": f, "limit": 500, **({"after": after} if after else {})},
        )
        out |= {c["customer_id"] for c in page["customers"]}
        after = page["next_after"]
        if not after:
            return out


async def test_a_playbook_issues_to_its_audience_once_and_reminds_only_for_its_own_coupons(tmp_path: Path) -> None:
    app = build_embedded_app(embedded_settings(tmp_path, bootstrap_api_key=KEY), announce=False)
    shop = generate(customers=400, months=6, seed=11, now=clock.now())  # the six months up to today
    async with running(app) as client:
        await ok(
            client,
            "PUT",
            "/v1/segmentation/config",
            json={
                **(await ok(client, "GET", "/v1/segmentation/config"))["config"],
                "boundaries": feed.SEGMENTATION["boundaries"],
                "class_split": feed.SEGMENTATION["class_split"],
            },
        )
        await ok(client, "PUT", "/v1/notifications/policy", json=OPEN_POLICY)
        welcome = (await ok(client, "POST", "/v1/coupons/presets/first_order_welcome", 201))["rule"]["rule_id"]
        report = await feed.post_events(client, KEY, shop.events, progress=False)
        assert report.rejected == 0
        # Every buyer scored (not a pause in scoring): the audience below is complete.
        scored = await feed.wait_until_scored(client, KEY, shop.buyers(), timeout=120, settle=5, progress=False)
        assert scored == shop.buyers()
        lapsed_b = await members(client, WINBACK)
        assert len(lapsed_b) >= 20, "the shop must have lapsed tier B customers for this test to mean anything"

        # What playbooks.js does on "一键启用", step by step.
        timezone = (await ok(client, "GET", "/v1/merchant"))["timezone"]
        made = await ok(
            client,
            "POST",
            "/v1/coupons/presets/audience_winback",
            201,
            json={
                "tiers": ["B"],
                "inactive_days": 30,
                "pay_percent": 85,
                "valid_days": 7,
                "holdout_percent": 10,
                "timezone": timezone,
            },
        )
        rule_id = made["rule"]["rule_id"]
        assert made["rule"]["rule"]["audience"] == {"filter": WINBACK}
        assert made["rule"]["rule"]["trigger"] == {"type": "schedule", "cron": "0 10 * * *", "timezone": timezone}
        key = f"pb-{rule_id}"
        await ok(
            client,
            "POST",
            "/v1/notifications/templates",
            201,
            json={
                "key": f"{key}-wx",
                "channel": "wechat",
                "trigger": "coupon.issued",
                "parts": {
                    "provider_template": SUBSCRIBE_TEMPLATE,
                    "page": "pages/coupons/index",
                    "fields": {"thing1": "{{ coupon.name }}", "time2": "{{ coupon.expires_at | date }}"},
                },
            },
        )
        await ok(
            client,
            "POST",
            "/v1/notifications/templates",
            201,
            json={
                "key": f"{key}-sms",
                "channel": "sms",
                "trigger": "coupon.issued",
                "parts": {
                    "text": "【{{ shop.name }}】送您{{ coupon.name }}，{{ coupon.expires_at | date }}前有效。退订回T"
                },
            },
        )
        await ok(
            client,
            "PUT",
            f"/v1/notifications/rules/{key}",
            json={
                "name": "剧本提醒",
                "trigger": "coupon.issued",
                "conditions": {"coupon_rules": [rule_id]},
                "channels": [
                    {"channel": "wechat", "template": f"{key}-wx"},
                    {"channel": "sms", "template": f"{key}-sms"},
                ],
            },
        )
        await ok(client, "POST", f"/v1/coupons/rules/{rule_id}/run", 202)

        treated = {c for c in lapsed_b if not in_holdout(rule_id, c, 10)}
        assert 0 < len(treated) < len(lapsed_b) and len(treated) < 200  # one page of messages below

        async def issued() -> int:
            return (await ok(client, "GET", f"/v1/coupons/rules/{rule_id}"))["spend"]["coupons"]  # type: ignore[no-any-return]

        await eventually(issued, lambda n: n >= len(treated), timeout=60)
        decided = await ok(client, "GET", f"/v1/coupons/rules/{rule_id}/decisions", params={"limit": 500})
        assert decided["outcomes"] == {"issued": len(treated), "holdout": len(lapsed_b) - len(treated)}
        assert {d["customer_id"] for d in decided["decisions"] if d["outcome"] == "issued"} == treated

        # One reminder per coupon of the playbook's rule, none for the welcome rule's coupons.
        async def reminders() -> list[dict[str, Any]]:
            return await ok(
                client,
                "GET",
                "/v1/notifications/messages",  # type: ignore[no-any-return]
                params={"rule_id": key, "limit": 200},
            )

        sent = await eventually(
            reminders,
            lambda ms: len(ms) == len(treated) and all(m["status"] not in ("queued", "sending") for m in ms),
            timeout=60,
        )
        assert {m["customer_id"] for m in sent} == treated
        outcomes = Counter((m["channel"], m["status"], m["reason"]) for m in sent)
        # WeChat when the customer granted a subscription credit, SMS otherwise; skipped only when
        # neither can reach them (no phone and no credit).
        assert outcomes[("wechat", "delivered", None)] > 0 and outcomes[("sms", "delivered", None)] > 0, outcomes
        assert all(
            m["status"] == "delivered" or m["reason"] in ("no_contact", "no_subscription_credit") for m in sent
        ), outcomes
        welcome_coupons = (await ok(client, "GET", f"/v1/coupons/rules/{welcome}"))["spend"]["coupons"]
        assert welcome_coupons > 0  # the other rule's coupons were issued, and got no playbook reminder

        # Run again: each customer gets the playbook's coupon once.
        await ok(client, "POST", f"/v1/coupons/rules/{rule_id}/run", 202)
        await eventually(
            lambda: ok(client, "GET", f"/v1/coupons/rules/{rule_id}/decisions", params={"limit": 1}),
            lambda d: sum(d["outcomes"].values()) >= 2 * len(lapsed_b),
            timeout=60,
        )
        assert await issued() == len(treated)
        assert len(await reminders()) == len(treated)


@pytest.mark.parametrize(
    "body, field",
    [
        ({"tiers": ["X"]}, "body"),
        ({"inactive_days": 0}, "body"),
        ({"pay_percent": 100}, "body"),
        ({"audience_id": "aud_missing"}, "body.audience"),
    ],
)
async def test_a_playbook_with_bad_parameters_is_refused_and_creates_nothing(
    tmp_path: Path, body: dict[str, Any], field: str
) -> None:
    app = build_embedded_app(embedded_settings(tmp_path, bootstrap_api_key=KEY), announce=False)
    async with running(app) as client:
        r = await client.post("/v1/coupons/presets/audience_winback", json=body, headers=H)
        assert r.status_code == 422, r.text
        assert r.json()["error"]["fields"][0]["field"].startswith(field), r.text
        assert await ok(client, "GET", "/v1/coupons/rules") == []
        assert await ok(client, "GET", "/v1/coupons/templates") == []
