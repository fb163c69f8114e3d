"""The notifications HTTP API on the embedded app (SQLite, the in-process bus, the console channel):
templates refused naming the part at fault, versioned and previewed; a coupon.issued event through
the real bus to a delivered message, once under redelivery, with explain and the funnel; consent
withdrawn by the API, an SMS reply and an unsubscribe link; campaigns with progress and their
status transitions; quiet hours holding marketing but not transactional messages; channel
settings validated and masked; another merchant's ids are 404; provider receipts.

One app for the module (starting one costs more than most tests); each test opens its own merchant,
so policies, rules and counts never leak between tests."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI
from sqlalchemy import select

from services.embedded import build_embedded_app
from services.gateway.bootstrap import wait_until_known
from services.notifications.service_layer.enqueue import Shop as EnqueueShop
from services.notifications.service_layer.enqueue import unsubscribe_url
from shared import clock
from shared.bus.base import Message
from shared.events import REGISTRY, EnvelopeBase, new_event
from tests.conftest import ADMIN_TOKEN, embedded_settings, running
from tests.factories import CST, eventually, local_day

# One app for the module, in one event loop for the module (its tasks live as long as it).
pytestmark = pytest.mark.asyncio(loop_scope="module")

COUPON_SMS = "{{ shop.name }}送您{{ coupon.name }}，{{ coupon.expires_at | date }}前有效。退订回T"
OPEN_POLICY = {"quiet_hours": None, "marketing_requires_explicit_consent": False, "caps": {}}


@dataclass
class App:
    app: FastAPI
    client: httpx.AsyncClient


@dataclass
class Shop:
    """A merchant of its own for one test, and what the test needs to drive the API as it."""

    app: FastAPI
    client: httpx.AsyncClient
    merchant_id: str
    name: str
    jwt_secret: str
    headers: dict[str, str]

    async def get(self, path: str, **params: Any) -> httpx.Response:
        return await self.client.get(path, params=params, headers=self.headers)

    async def ok(self, method: str, path: str, status: int = 200, **kw: Any) -> Any:
        r = await self.client.request(method, path, headers=self.headers, **kw)
        assert r.status_code == status, r.text
        return r.json() if r.content else None

    async def policy(self, **over: Any) -> None:
        await self.ok("PUT", "/v1/notifications/policy", json={**OPEN_POLICY, **over})

    async def template(
        self, key: str, channel: str = "sms", text: str = COUPON_SMS, trigger: str = "coupon.issued", **more: Any
    ) -> None:
        body = {"key": key, "channel": channel, "trigger": trigger, "parts": {"text": text, **more}}
        await self.ok("POST", "/v1/notifications/templates", 201, json=body)

    async def rule(self, rule_id: str, template: str, channel: str = "sms", **over: Any) -> None:
        await self.ok(
            "PUT",
            f"/v1/notifications/rules/{rule_id}",
            json={
                "name": rule_id,
                "trigger": "coupon.issued",
                "channels": [{"channel": channel, "template": template}],
                **over,
            },
        )

    async def register(self, customer_id: str, phone: str | None = "13800138000", **data: Any) -> None:
        """customer.registered through POST /v1/events; returns once notifications has the profile."""
        consents = data.pop("consents", {"sms": True})
        event = {
            "event_id": str(uuid.uuid4()),
            "type": "customer.registered",
            "merchant_id": self.merchant_id,
            "customer_id": customer_id,
            "occurred_at": (clock.now() - timedelta(minutes=1)).isoformat(),
            "data": {"phone": phone, "consents": consents, **data},
        }
        r = await self.client.post("/v1/events", json=[event], headers=self.headers)
        assert r.status_code == 200 and r.json()["accepted"] == 1, r.text
        await eventually(
            lambda: self.get(f"/v1/customers/{customer_id}/consents"), lambda r: bool(r.json()["consents"]), timeout=15
        )

    def coupon(
        self, customer_id: str, n: int = 0, rule_id: str = "welcome", template_id: str = "tpl-100-20"
    ) -> EnvelopeBase:
        at = clock.now()
        return new_event(
            "coupon.issued",
            self.merchant_id,
            {
                "coupon_id": f"k-{customer_id}-{n}",
                "template_id": template_id,
                "template_name": "满100减20券",
                "rule_id": rule_id,
                "kind": "amount_off",
                "face_value_fen": 2000,
                "starts_at": at.isoformat(),
                "expires_at": local_day(90, 20).isoformat(),  # 20:00 in Shanghai, in three months
            },
            customer_id=customer_id,
        )

    async def publish(self, *events: EnvelopeBase) -> None:
        """On the bus, as the coupons service publishes them (coupon.issued is not a shop event)."""
        await self.app.state.bus.publish(
            [
                Message(
                    topic=REGISTRY[e.type].topic,  # type: ignore[attr-defined]
                    key=e.key,
                    value=e.to_json(),
                )
                for e in events
            ]
        )

    async def applied(self, event_id: str) -> None:
        """Wait until notifications has applied an event (its inbox holds the id)."""
        rt = self.app.state.runtimes["notifications"]
        inbox = rt.spec.tables.inbox

        async def seen() -> bool:
            async with rt.sessions() as s:
                return (
                    await s.execute(select(inbox.c.event_id).where(inbox.c.event_id == event_id))
                ).first() is not None

        await eventually(seen, bool, timeout=15)

    async def messages(self, **params: Any) -> list[dict[str, Any]]:
        r = await self.get("/v1/notifications/messages", **params)
        assert r.status_code == 200, r.text
        return r.json()  # type: ignore[no-any-return]

    async def settled(self, n: int, **params: Any) -> list[dict[str, Any]]:
        """Eventually n messages (of these filters), none of them still on its way."""
        return await eventually(
            lambda: self.messages(**params),
            lambda ms: len(ms) == n and all(m["status"] not in ("queued", "sending") for m in ms),
            timeout=15,
        )


def fields_of(r: httpx.Response, status: int = 422) -> dict[str, str]:
    """The error's fields, field → message."""
    assert r.status_code == status, r.text
    return {f["field"]: f["message"] for f in r.json()["error"].get("fields", [])}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[App]:
    app = build_embedded_app(embedded_settings(tmp_path_factory.mktemp("notify")), announce=False)
    async with running(app) as client:
        yield App(app, client)


async def open_shop(served: App, name: str = "贝贝母婴") -> Shop:
    merchant_id = f"m-{uuid.uuid4().hex[:10]}"
    r = await served.client.post(
        "/v1/platform/merchants",
        headers={"X-Admin-Token": ADMIN_TOKEN},
        json={"merchant_id": merchant_id, "name": name},
    )
    assert r.status_code == 201, r.text
    made = r.json()
    runtimes = [rt for n, rt in served.app.state.runtimes.items() if n != "gateway"]
    assert await wait_until_known(runtimes, made["api_key"])
    return Shop(served.app, served.client, merchant_id, name, made["jwt_secret"], {"X-Api-Key": made["api_key"]})


@pytest_asyncio.fixture(loop_scope="module")
async def shop(served: App) -> Shop:
    return await open_shop(served)


# ---------------------------------------------------------------- templates


async def test_templates_are_refused_naming_every_part_at_fault_and_versioned_by_content(shop: Shop) -> None:
    url = "/v1/notifications/templates"
    body = {
        "key": "cpn",
        "channel": "sms",
        "locale": "zh-CN",
        "trigger": "coupon.issued",
        "parts": {"text": "{{ coupon.nmae }}到账"},
    }
    bad = fields_of(await shop.client.post(url, json=body, headers=shop.headers))
    assert "nmae" in bad["body.parts.text"] and "coupon.name" in bad["body.parts.text"]  # with the hint
    bad = fields_of(
        await shop.client.post(
            url, json={**body, "channel": "fax", "locale": "fr", "parts": {"text": "hi"}}, headers=shop.headers
        )
    )
    assert set(bad) == {"body.channel", "body.locale"} and "fax" in bad["body.channel"]
    bad = fields_of(
        await shop.client.post(
            url,
            json={**body, "channel": "wechat", "parts": {"fields": {"thing1": "{{ coupon.name }}", "colour2": "x"}}},
            headers=shop.headers,
        )
    )
    assert {"body.parts.provider_template", "body.parts.fields.colour2"} <= set(bad)
    assert "body.parts.bogus" in fields_of(
        await shop.client.post(url, json={**body, "parts": {"bogus": "x"}}, headers=shop.headers)
    )

    good = {**body, "parts": {"text": COUPON_SMS}}
    assert await shop.ok("POST", url, 201, json=good) == {"key": "cpn", "version": 1, "created": True}
    assert await shop.ok("POST", url, 200, json=good) == {"key": "cpn", "version": 1, "created": False}
    changed = {**body, "parts": {"text": COUPON_SMS + "！"}}
    assert await shop.ok("POST", url, 201, json=changed) == {"key": "cpn", "version": 2, "created": True}
    assert [t["version"] for t in await shop.ok("GET", f"{url}/cpn")] == [2, 1]
    assert (await shop.ok("GET", f"{url}/cpn/versions/1"))["parts"]["text"] == COUPON_SMS
    [latest] = await shop.ok("GET", url)
    assert (latest["key"], latest["version"], latest["parts"]["text"]) == ("cpn", 2, COUPON_SMS + "！")
    assert (await shop.get(f"{url}/nope")).status_code == 404
    assert fields_of(await shop.get(f"{url}/cpn/versions/9"), 404) == {"path.version": "no version 9 of template 'cpn'"}
    assert (await shop.client.get(url)).status_code == 401


async def test_preview_renders_the_sample_values_or_the_ones_given(shop: Shop) -> None:
    url = "/v1/notifications/templates/preview"
    body = {"channel": "sms", "trigger": "coupon.issued", "parts": {"text": COUPON_SMS}}
    shown = await shop.ok("POST", url, json=body)
    assert shown["rendered"]["text"] == "贝贝母婴旗舰店送您满199减30券，2026年11月14日前有效。退订回T"
    assert shown["context"]["coupon"]["face_value_fen"] == 3000
    given = await shop.ok("POST", url, json={**body, "variables": {"coupon.name": "新人专享券", "shop.name": "小店"}})
    assert given["rendered"]["text"].startswith("小店送您新人专享券，")
    own = await shop.ok(
        "POST",
        url,
        json={
            "channel": "email",
            "locale": "en",
            "trigger": "campaign",
            "vars": ["headline"],
            "variables": {"vars.headline": "<b>50% off</b>"},
            "parts": {"subject": "{{ campaign.name }}", "html": "<p>{{ vars.headline }}</p>"},
        },
    )
    assert own["rendered"]["subject"] == "Double 11 restock"
    assert own["rendered"]["html"] == "<p>&lt;b&gt;50% off&lt;/b&gt;</p>"  # escaped in html
    bad = fields_of(
        await shop.client.post(url, json={**body, "parts": {"text": "{{ coupon.nmae }"}}, headers=shop.headers)
    )
    assert list(bad) == ["body.parts.text"]
    bad = fields_of(
        await shop.client.post(
            url,
            json={
                **body,
                "parts": {"text": "{{ coupon.face_value_fen | yuan }}"},
                "variables": {"coupon.face_value_fen": "lots"},
            },
            headers=shop.headers,
        )
    )
    assert "yuan" in bad["body.parts.text"]


async def test_the_trigger_catalogue_lists_variables_and_examples(shop: Shop) -> None:
    found = {t["name"]: t for t in await shop.ok("GET", "/v1/notifications/triggers")}
    issued = found["coupon.issued"]
    assert issued["variables"] == sorted(issued["variables"]) and "coupon.name" in issued["variables"]
    assert "shop.name" in issued["variables"] and issued["purpose"] == "marketing" and issued["for_rules"]
    assert "满199减30券" in issued["examples"]["zh-CN"]["rendered"]
    assert "{{" in issued["examples"]["en"]["source"] and "{{" not in issued["examples"]["en"]["rendered"]
    assert found["level.changed"]["purpose"] == "transactional" and found["campaign"]["for_rules"] is False


async def test_rules_are_saved_under_their_path_id_and_refused_naming_the_field(shop: Shop) -> None:
    url = "/v1/notifications/rules"
    rule = {"name": "券到账", "trigger": "coupon.issued", "channels": [{"channel": "sms", "template": "later"}]}
    saved = await shop.ok("PUT", f"{url}/coupon-sms", json=rule)
    assert (saved["rule_id"], saved["active"], saved["purpose"]) == ("coupon-sms", True, None)
    assert (await shop.ok("PUT", f"{url}/coupon-sms", json={**rule, "rule_id": "coupon-sms", "value": 5}))["value"] == 5
    assert "body.rule_id" in fields_of(
        await shop.client.put(f"{url}/coupon-sms", json={**rule, "rule_id": "other"}, headers=shop.headers)
    )
    bad = {**rule, "channels": [{"channel": "fax", "template": "x"}]}
    assert "body.channels.0.channel" in fields_of(await shop.client.put(f"{url}/r2", json=bad, headers=shop.headers))
    assert "body.trigger" in fields_of(
        await shop.client.put(f"{url}/r2", json={**rule, "trigger": "campaign"}, headers=shop.headers)
    )
    assert [(r["rule_id"], r["value"]) for r in await shop.ok("GET", url)] == [("coupon-sms", 5)]
    assert await shop.ok("DELETE", f"{url}/coupon-sms", 204) is None
    assert (await shop.client.delete(f"{url}/coupon-sms", headers=shop.headers)).status_code == 404
    assert await shop.ok("GET", url) == []


# ---------------------------------------------------------------- a coupon through the bus


async def test_a_coupon_issued_event_becomes_one_delivered_message_explained_and_counted(shop: Shop) -> None:
    await shop.template("cpn-sms")
    await shop.rule("coupon-sms", "cpn-sms")
    await shop.policy()
    await shop.register("u-1")
    event = shop.coupon("u-1")
    await shop.publish(event)

    [shown] = await eventually(
        lambda: shop.ok("GET", "/v1/notifications/console", params={"customer_id": "u-1"}),
        lambda ms: len(ms) == 1 and ms[0]["status"] == "delivered",
        timeout=15,
    )
    expires = event.data.expires_at.astimezone(CST)  # type: ignore[attr-defined]  # on the merchant's clock
    assert (
        shown["content"]["text"]
        == f"贝贝母婴送您满100减20券，{expires.year}年{expires.month}月{expires.day}日前有效。退订回T"
    )
    assert (shown["channel"], shown["recipient"], shown["provider"], shown["trigger_key"], shown["rule_id"]) == (
        "sms",
        "+8613800138000",
        "console",
        event.event_id,
        "coupon-sms",
    )
    assert shown["template"] == {"key": "cpn-sms", "version": 1}

    # The bus delivers it again: nothing new (a later event of the customer shows it was applied).
    marker = new_event(
        "coupon.redeemed",
        shop.merchant_id,
        {
            "coupon_id": "k-u-1-0",
            "template_id": "tpl-100-20",
            "order_id": "o-1",
            "discount_fen": 2000,
            "order_amount_fen": 12000,
        },
        customer_id="u-1",
    )
    await shop.publish(event, marker)
    await shop.applied(marker.event_id)
    assert len(await shop.messages(customer_id="u-1")) == 1

    why = await shop.ok("GET", "/v1/notifications/explain", params={"customer_id": "u-1", "trigger": event.event_id})
    assert (why["customer_id"], why["trigger"], why["note"]) == ("u-1", event.event_id, None)
    assert [(m["status"], m["why"]) for m in why["messages"]] == [("delivered", "已送达")]
    one = await shop.ok("GET", f"/v1/notifications/messages/{shown['message_id']}", params={"locale": "en"})
    assert one["why"] == "delivered"
    assert [step["status"] for step in one["steps"]] == ["sent", "delivered"]
    assert one["steps"][1]["detail"]["provider"] == "console"
    none = await shop.ok("GET", "/v1/notifications/explain", params={"customer_id": "u-1", "trigger": "nope"})
    assert none["messages"] == [] and "no rule" not in none["note"] and "没有规则" in none["note"]

    funnel = await shop.ok("GET", "/v1/notifications/funnel")
    assert (funnel["total"], funnel["sent"], funnel["delivered"], funnel["skipped"]) == (1, 1, 1, 0)
    since = (clock.now() + timedelta(minutes=1)).isoformat()
    assert (await shop.ok("GET", "/v1/notifications/funnel", params={"since": since}))["total"] == 0
    # The last N days by the service's clock (the console asks so, not by the browser's clock).
    assert (await shop.ok("GET", "/v1/notifications/funnel", params={"days": 1}))["total"] == 1
    with clock.installed(clock.ManualClock(clock.now() + timedelta(days=2))):
        assert (await shop.ok("GET", "/v1/notifications/funnel", params={"days": 1}))["total"] == 0
    both = await shop.client.get("/v1/notifications/funnel", params={"days": 1, "since": since}, headers=shop.headers)
    assert set(fields_of(both)) == {"query.days"}
    for bad in (0, 3661, "x"):
        r = await shop.client.get("/v1/notifications/funnel", params={"days": bad}, headers=shop.headers)
        assert set(fields_of(r)) == {"query.days"}, r.text


async def test_a_rule_for_one_coupon_rule_or_template_answers_only_its_coupons(shop: Shop) -> None:
    url = "/v1/notifications/rules"
    bad = fields_of(
        await shop.client.put(
            f"{url}/x",
            headers=shop.headers,
            json={
                "name": "x",
                "trigger": "segment.changed",
                "conditions": {"coupon_rules": ["rul_1"]},
                "channels": [{"channel": "sms", "template": "cpn-sms"}],
            },
        )
    )
    assert "coupon_rules applies to coupon.issued and coupon.expiring, not to segment.changed" in bad["body"]
    bad = fields_of(
        await shop.client.put(
            f"{url}/x",
            headers=shop.headers,
            json={
                "name": "x",
                "trigger": "coupon.issued",
                "conditions": {"to_tiers": ["B"]},
                "channels": [{"channel": "sms", "template": "cpn-sms"}],
            },
        )
    )
    assert "to_tiers applies to segment.changed" in bad["body"]

    await shop.template("cpn-sms")
    await shop.rule("playbook", "cpn-sms", conditions={"coupon_rules": ["winback"]})
    await shop.rule("by-template", "cpn-sms", conditions={"coupon_templates": ["tpl-85"]})
    await shop.policy()
    await shop.register("u-1")
    theirs = shop.coupon("u-1", 1)  # rule "welcome", template tpl-100-20: neither rule answers it
    ours = shop.coupon("u-1", 2, rule_id="winback")
    template = shop.coupon("u-1", 3, template_id="tpl-85")
    await shop.publish(theirs, ours, template)
    await shop.applied(template.event_id)
    sent = await shop.settled(2, customer_id="u-1")
    assert sorted((m["rule_id"], m["trigger_key"]) for m in sent) == sorted(
        [("playbook", ours.event_id), ("by-template", template.event_id)]
    )


async def test_a_denied_consent_skips_the_next_message_and_explain_says_why(shop: Shop) -> None:
    await shop.template("cpn-sms")
    await shop.rule("coupon-sms", "cpn-sms")
    await shop.policy()
    await shop.register("u-1")
    r = await shop.client.put(
        "/v1/customers/u-1/consents", json={"sms": "denied", "email": "granted"}, headers=shop.headers
    )
    assert r.status_code == 200, r.text
    said = r.json()["consents"]
    assert (said["sms"]["state"], said["sms"]["source"], said["email"]["state"]) == ("denied", "api", "granted")
    assert "wechat" not in said
    assert "body.fax" in fields_of(
        await shop.client.put("/v1/customers/u-1/consents", json={"fax": "denied"}, headers=shop.headers)
    )
    assert "body.sms" in fields_of(
        await shop.client.put("/v1/customers/u-1/consents", json={"sms": "maybe"}, headers=shop.headers)
    )

    event = shop.coupon("u-1")
    await shop.publish(event)
    [m] = await shop.settled(1, customer_id="u-1")
    assert (m["status"], m["reason"]) == ("skipped", "consent_denied")
    why = await shop.ok(
        "GET", "/v1/notifications/explain", params={"customer_id": "u-1", "trigger": event.event_id, "locale": "en"}
    )
    assert "refused" in why["messages"][0]["why"] and "SMS" in why["messages"][0]["why"]
    funnel = await shop.ok("GET", "/v1/notifications/funnel")
    assert funnel["reasons"] == {"skipped": {"consent_denied": 1}}


async def test_the_customer_reads_and_sets_their_own_consents(shop: Shop) -> None:
    await shop.register("u-1", email="lin@example.com", consents={"sms": True, "email": True})
    token = (await shop.ok("POST", "/v1/customer-tokens", 200, json={"customer_id": "u-1"}))["token"]
    me = {"Authorization": f"Bearer {token}"}
    r = await shop.client.get("/v1/me/consents", headers=me)
    assert r.status_code == 200 and {c: v["state"] for c, v in r.json()["consents"].items()} == {
        "sms": "granted",
        "email": "granted",
    }
    r = await shop.client.put("/v1/me/consents", json={"email": "denied"}, headers=me)
    assert r.status_code == 200, r.text
    assert (r.json()["consents"]["email"]["state"], r.json()["consents"]["email"]["source"]) == ("denied", "customer")
    assert (await shop.client.get("/v1/me/consents")).status_code == 401
    assert "body" in fields_of(await shop.client.put("/v1/me/consents", json={}, headers=me))


# ---------------------------------------------------------------- opting out from outside


async def test_an_sms_reply_t_opts_the_sender_out(shop: Shop) -> None:
    await shop.register("u-1", phone="13800138001")
    await shop.register("u-2", phone="13800138002")
    url = "/v1/notifications/sms/replies"
    given = (await shop.ok("GET", "/v1/notifications/callbacks"))["sms_replies"]
    q = dict(httpx.URL(given).params)
    assert given.startswith("http") and set(q) == {"merchant_id", "token"}
    # The endpoint is public (the provider calls it): without the merchant's token, nobody is opted out.
    r = await shop.client.post(url, params={**q, "token": "0" * 32}, json={"phone": "13800138001", "text": "T"})
    assert fields_of(r, 403) == {"query.token": r.json()["error"]["fields"][0]["message"]}
    r = await shop.client.post(url, params=q, json={"phone": "138 0013 8001", "text": "好的"})
    assert r.json() == {"opted_out": []}
    r = await shop.client.post(url, params=q, json={"phone": "138 0013 8001", "text": " Ｔ。"})
    assert r.status_code == 200 and r.json() == {"opted_out": ["u-1"]}, r.text
    consents = await shop.ok("GET", "/v1/customers/u-1/consents")
    assert (consents["consents"]["sms"]["state"], consents["consents"]["sms"]["source"]) == ("denied", "sms_reply")
    # Aliyun's push: an array of {"phone_number", "content", …}, answered as it expects.
    r = await shop.client.post(
        url,
        params=q,
        json=[{"phone_number": "13800138002", "content": "退订", "sign_name": "贝贝", "dest_code": "1234"}],
    )
    assert r.json() == {"opted_out": ["u-2"], "code": 0, "msg": "成功"}

    assert list(fields_of(await shop.client.post(url, params=q, json={"phone": "010-1234567", "text": "T"}))) == [
        "body.phone"
    ]
    assert "body.text" in fields_of(await shop.client.post(url, params=q, json={"phone": "13800138001"}))
    assert "body.0.phone" in fields_of(await shop.client.post(url, params=q, json=[{"text": "T"}]))
    assert "query.merchant_id" in fields_of(
        await shop.client.post(url, params={**q, "merchant_id": "nobody"}, json={"phone": "13800138001", "text": "T"}),
        404,
    )


async def test_an_unsubscribe_link_opts_out_and_a_tampered_one_is_refused(shop: Shop) -> None:
    await shop.register("u-1", email="lin@example.com", consents={"email": True, "sms": True})
    signer = EnqueueShop(shop.merchant_id, shop.name, "Asia/Shanghai", shop.jwt_secret)
    link = urlsplit(unsubscribe_url("https://shop.example", signer, "u-1", "email"))
    r = await shop.client.get(f"{link.path}?{link.query}")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "您已退订贝贝母婴的邮件" in r.text
    email = (await shop.ok("GET", "/v1/customers/u-1/consents"))["consents"]["email"]
    assert (email["state"], email["source"]) == ("denied", "unsubscribe_link")

    token = link.query.removeprefix("token=")
    payload, mac = token.split(".")
    for bad in (
        f"{payload}.{mac[:-2]}{'AA' if mac[-2:] != 'AA' else 'BB'}",
        payload,
        "x.y",
        "",
        unsubscribe_url("", EnqueueShop(shop.merchant_id, "", "Asia/Shanghai", "another-secret"), "u-1", "sms").split(
            "token="
        )[1],
    ):
        r = await shop.client.get("/v1/notifications/unsubscribe", params={"token": bad})
        assert r.status_code in (400, 422), (bad, r.text)
        if bad:
            assert r.status_code == 400 and "无效" in r.text
    assert (await shop.ok("GET", "/v1/customers/u-1/consents"))["consents"]["sms"]["state"] == "granted"

    one_click = urlsplit(unsubscribe_url("https://shop.example", signer, "u-1", "sms"))
    r = await shop.client.post(
        f"{one_click.path}?{one_click.query}",
        content=b"List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert (r.status_code, r.content) == (200, b"")
    assert (await shop.ok("GET", "/v1/customers/u-1/consents"))["consents"]["sms"]["state"] == "denied"
    r = await shop.client.post("/v1/notifications/unsubscribe", params={"token": f"{payload}.{mac[::-1]}"})
    assert fields_of(r, 400) == {"query.token": "invalid or tampered unsubscribe token"}


# ---------------------------------------------------------------- campaigns


async def test_a_campaign_reaches_its_audience_and_reports_progress(shop: Shop) -> None:
    await shop.policy()
    body = {
        "key": "promo",
        "channel": "sms",
        "trigger": "campaign",
        "vars": ["offer"],
        "parts": {"text": "{{ campaign.name }}：{{ vars.offer }}。退订回T"},
    }
    await shop.ok("POST", "/v1/notifications/templates", 201, json=body)
    await shop.register("u-1", phone="13800138001")
    await shop.register("u-2", phone="13800138002")
    await shop.register("u-3", phone=None, consents={"email": True})
    spec = {
        "name": "双11回购季",
        "audience": {"customer_ids": ["u-1", "u-2", "u-3"]},
        "channels": [{"channel": "sms", "template": "promo"}],
        "vars": {"offer": "满199减30"},
    }
    made = await shop.ok("POST", "/v1/notifications/campaigns", 201, json=spec)
    assert made["status"] == "scheduled" and made["campaign_id"].startswith("cmp-")
    cid = made["campaign_id"]

    done = await eventually(
        lambda: shop.ok("GET", f"/v1/notifications/campaigns/{cid}"),
        lambda c: c["status"] == "done" and c["progress"] == {"delivered": 2, "skipped": 1},
        timeout=15,
    )
    assert (done["enqueued"], done["spec"]["name"], done["error"]) == (3, "双11回购季", None)
    sent = {m["customer_id"]: m for m in await shop.messages(campaign_id=cid)}
    assert (sent["u-3"]["status"], sent["u-3"]["reason"]) == ("skipped", "no_contact")
    assert sent["u-1"]["content"]["text"] == "双11回购季：满199减30。退订回T"
    why = await shop.ok("GET", "/v1/notifications/explain", params={"customer_id": "u-3", "trigger": cid})
    assert "没有短信联系方式" in why["messages"][0]["why"]
    funnel = await shop.ok("GET", "/v1/notifications/funnel", params={"campaign_id": cid})
    assert (funnel["total"], funnel["delivered"], funnel["reasons"]) == (3, 2, {"skipped": {"no_contact": 1}})

    # Refused up front: a template that is not there, or vars the template reads left out.
    bad = {**spec, "channels": [{"channel": "sms", "template": "nope"}]}
    assert "body.channels.0.template" in fields_of(
        await shop.client.post("/v1/notifications/campaigns", json=bad, headers=shop.headers)
    )
    assert "body.vars" in fields_of(
        await shop.client.post("/v1/notifications/campaigns", json={**spec, "vars": {}}, headers=shop.headers)
    )
    assert "body.audience" in fields_of(
        await shop.client.post("/v1/notifications/campaigns", json={**spec, "audience": {}}, headers=shop.headers)
    )


async def test_campaign_pause_resume_and_cancel(shop: Shop, served: App) -> None:
    await shop.ok(
        "POST",
        "/v1/notifications/templates",
        201,
        json={"key": "promo", "channel": "sms", "trigger": "campaign", "parts": {"text": "{{ campaign.name }}"}},
    )
    later = (clock.now() + timedelta(days=30)).isoformat()
    cid = (
        await shop.ok(
            "POST",
            "/v1/notifications/campaigns",
            201,
            json={
                "name": "下月",
                "audience": {"customer_ids": ["u-1"]},
                "channels": [{"channel": "sms", "template": "promo"}],
                "scheduled_at": later,
            },
        )
    )["campaign_id"]
    base = f"/v1/notifications/campaigns/{cid}"
    assert (await shop.ok("POST", f"{base}/pause"))["status"] == "paused"
    assert (await shop.ok("GET", base))["status"] == "paused"
    assert (await shop.ok("POST", f"{base}/resume"))["status"] == "running"
    assert (await shop.ok("POST", f"{base}/cancel"))["status"] == "cancelled"
    for action in ("resume", "pause", "cancel"):
        r = await shop.client.post(f"{base}/{action}", headers=shop.headers)
        assert (r.status_code, r.json()["error"]["code"]) == (409, "conflict"), r.text
    assert (await shop.client.post(f"{base}/explode", headers=shop.headers)).status_code == 422
    assert (
        await shop.client.post("/v1/notifications/campaigns/cmp-nope/pause", headers=shop.headers)
    ).status_code == 404

    other = await open_shop(served, "别家")
    assert fields_of(await other.get(base), 404) == {"path.campaign_id": f"no campaign {cid!r}"}
    assert (await other.client.post(f"{base}/pause", headers=other.headers)).status_code == 404


# ---------------------------------------------------------------- quiet hours


async def test_quiet_hours_hold_marketing_while_transactional_goes_out(shop: Shop) -> None:
    local = clock.now().astimezone(CST)  # the merchant's zone, Asia/Shanghai
    window = {
        "start": (local - timedelta(hours=1)).strftime("%H:%M"),
        "end": (local + timedelta(hours=1)).strftime("%H:%M"),
    }
    await shop.policy(quiet_hours=window)
    await shop.template("cpn-sms")
    await shop.template("cpn-notice", text="{{ coupon.name }}已到账")
    await shop.rule("a-marketing", "cpn-sms")
    await shop.rule("b-transactional", "cpn-notice", purpose="transactional")
    await shop.register("u-1")
    event = shop.coupon("u-1")
    await shop.publish(event)

    found = {
        m["rule_id"]: m
        for m in await eventually(
            lambda: shop.messages(customer_id="u-1"),
            lambda ms: sorted(m["status"] for m in ms) == ["delivered", "held"],
            timeout=15,
        )
    }
    held, sent = found["a-marketing"], found["b-transactional"]
    assert (held["reason"], sent["content"]["text"]) == ("quiet_hours", "满100减20券已到账")
    assert datetime.fromisoformat(held["due_at"]) > clock.now()
    why = {
        m["rule_id"]: m["why"]
        for m in (
            await shop.ok("GET", "/v1/notifications/explain", params={"customer_id": "u-1", "trigger": event.event_id})
        )["messages"]
    }
    assert "免打扰" in why["a-marketing"] and window["start"] in why["a-marketing"]
    assert why["b-transactional"] == "已送达"
    assert (await shop.ok("GET", "/v1/notifications/funnel"))["reasons"] == {"held": {"quiet_hours": 1}}


# ---------------------------------------------------------------- channel settings


async def test_channel_settings_are_validated_naming_the_field_and_shown_masked(shop: Shop) -> None:
    url = "/v1/notifications/channels"
    aliyun = {"access_key_id": "LTAI5t", "access_key_secret": "s3cret", "sign_name": "贝贝母婴"}
    missing = {k: v for k, v in aliyun.items() if k != "access_key_id"}
    bad = fields_of(
        await shop.client.put(f"{url}/sms", json={"provider": "aliyun", "config": missing}, headers=shop.headers)
    )
    assert list(bad) == ["body.config.access_key_id"]
    bad = fields_of(
        await shop.client.put(
            f"{url}/sms", json={"provider": "aliyun", "config": {**aliyun, "typo": 1}}, headers=shop.headers
        )
    )
    assert list(bad) == ["body.config.typo"]
    assert "body.config.app_id" in fields_of(
        await shop.client.put(
            f"{url}/wechat", json={"provider": "wechat", "config": {"app_secret": "x"}}, headers=shop.headers
        )
    )
    assert list(
        fields_of(await shop.client.put(f"{url}/sms", json={"provider": "smtp", "config": {}}, headers=shop.headers))
    ) == ["body.provider"]
    assert "path.channel" in fields_of(
        await shop.client.put(f"{url}/fax", json={"provider": "console"}, headers=shop.headers)
    )

    saved = await shop.ok("PUT", f"{url}/sms", json={"provider": "aliyun", "config": aliyun, "rate_per_s": 50})
    assert (
        saved["provider"],
        saved["rate_per_s"],
        saved["config"]["access_key_id"],
        saved["config"]["access_key_secret"],
    ) == ("aliyun", 50, "LTAI5t", "***")
    [listed] = await shop.ok("GET", url)
    assert listed["channel"] == "sms" and listed["config"]["access_key_secret"] == "***"
    assert "s3cret" not in str(await shop.ok("GET", url))
    assert await shop.ok("DELETE", f"{url}/sms", 204) is None
    assert (await shop.client.delete(f"{url}/sms", headers=shop.headers)).status_code == 404
    assert await shop.ok("GET", url) == []


# ---------------------------------------------------------------- tenancy, receipts


async def test_another_merchant_cannot_read_the_first_ones_messages(shop: Shop, served: App) -> None:
    await shop.template("cpn-sms")
    await shop.rule("coupon-sms", "cpn-sms")
    await shop.policy()
    await shop.register("u-1")
    await shop.publish(shop.coupon("u-1"))
    [m] = await shop.settled(1)
    other = await open_shop(served, "别家")
    assert fields_of(await other.get(f"/v1/notifications/messages/{m['message_id']}"), 404) == {
        "path.message_id": f"no message {m['message_id']!r}"
    }
    assert await other.messages() == [] and await other.messages(customer_id="u-1") == []
    assert (await other.ok("GET", "/v1/notifications/explain", params={"customer_id": "u-1"}))["messages"] == []
    assert (await other.ok("GET", "/v1/notifications/funnel"))["total"] == 0
    assert await other.ok("GET", "/v1/notifications/console") == []
    assert (await other.ok("GET", "/v1/customers/u-1/consents"))["consents"] == {}
    assert await other.ok("GET", "/v1/notifications/templates") == []


async def test_receipts_are_parsed_per_provider_and_matched(shop: Shop) -> None:
    url = "/v1/notifications/receipts"
    q = dict(httpx.URL((await shop.ok("GET", "/v1/notifications/callbacks"))["receipts"]["generic"]).params)
    other = await shop.client.post(
        f"{url}/generic", params={**q, "token": "f" * 32}, json={"receipts": [{"id": "nope", "status": "delivered"}]}
    )
    assert other.status_code == 403
    assert "body" in fields_of(await shop.client.post(f"{url}/generic", params=q, content=b"not json"))
    assert "body" in fields_of(
        await shop.client.post(f"{url}/generic", params=q, json={"receipts": [{"status": "lost"}]})
    )
    assert "body" in fields_of(await shop.client.post(f"{url}/aliyun", params=q, json={"receipts": []}))
    assert "path.provider" in fields_of(await shop.client.post(f"{url}/smtp", params=q, json={}))
    r = await shop.client.post(f"{url}/generic", params=q, json={"receipts": [{"id": "nope", "status": "delivered"}]})
    assert (r.status_code, r.json()) == (200, {"matched": 0})
    r = await shop.client.post(
        f"{url}/aliyun",
        params=q,
        json=[{"biz_id": "b-1", "phone_number": "13800138000", "success": True, "out_id": "nope"}],
    )
    assert r.json() == {"matched": 0, "code": 0, "msg": "成功"}
    r = await shop.client.post(f"{url}/wechat", params=q, json={"Event": "subscribe_msg_popup_event"})
    assert (r.status_code, r.text) == (200, "success")


async def test_a_test_send_goes_through_the_configured_provider_and_refuses_a_bad_address(shop: Shop) -> None:
    from tests.providers import FakeProviders

    await shop.template("cpn-sms")
    url = "/v1/notifications/test-send"
    r = await shop.client.post(url, headers=shop.headers, json={"template": "cpn-sms", "to": "010-12345678"})
    assert list(fields_of(r)) == ["body.to"]
    r = await shop.client.post(url, headers=shop.headers, json={"template": "nope", "to": "13800138000"})
    assert list(fields_of(r, 404)) == ["body.template"]
    # No SMS provider configured: the console channel takes it (the embedded default).
    sent = await shop.ok(
        "POST", url, json={"template": "cpn-sms", "to": "138 0013 8000", "variables": {"coupon.name": "新人券"}}
    )
    assert (sent["outcome"], sent["provider"]) == ("delivered", "console") and "新人券" in sent["rendered"]["text"]
    with FakeProviders() as fake:
        await shop.ok(
            "PUT",
            "/v1/notifications/channels/sms",
            json={"provider": "generic", "config": fake.channel_config("generic")},
        )
        sent = await shop.ok("POST", url, json={"template": "cpn-sms", "to": "13800138000"})
        assert (sent["outcome"], sent["provider"]) == ("sent", "generic")
        [got] = fake.received("generic")
        assert got["phone"] == "+8613800138000" and got["text"] == sent["rendered"]["text"]
