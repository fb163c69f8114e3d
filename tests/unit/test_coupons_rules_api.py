"""The coupons admin API (X-Api-Key): templates, rules and presets, every refusal a 4xx naming the
field and the reason, and the decisions endpoint that explains what a rule did for a customer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from services.coupons.domain.rules import PRESETS, in_holdout
from tests.coupons_shop import H, cash_template, paid, percent_template, shop
from tests.factories import month_start


def refusal(r: httpx.Response) -> tuple[str, str]:
    """The (field, message) of a 422."""
    assert r.status_code == 422, r.text
    first = r.json()["error"]["fields"][0]
    return first["field"], first["message"]


# ---------------------------------------------------------------- templates


async def test_templates_are_created_listed_read_and_deactivated(tmp_path: Path) -> None:
    async with shop(tmp_path) as s:
        r = await s.client.post("/v1/coupons/templates", json=cash_template(500, stock=100), headers=H)
        assert r.status_code == 201
        created = r.json()
        tid = created["template_id"]
        assert (created["active"], created["stock"], created["issued"], created["liability_fen"]) == (True, 100, 0, 500)
        assert created["template"]["kind"] == {"type": "no_threshold", "amount_off_fen": 500}
        assert [t["template_id"] for t in (await s.client.get("/v1/coupons/templates", headers=H)).json()] == [tid]
        assert (await s.client.get(f"/v1/coupons/templates/{tid}", headers=H)).json()["name"] == "5元无门槛券"
        r = await s.client.post(f"/v1/coupons/templates/{tid}/deactivate", headers=H)
        assert r.status_code == 200 and r.json()["active"] is False
        assert (await s.client.get("/v1/coupons/templates/nope", headers=H)).status_code == 404
        assert (await s.client.post("/v1/coupons/templates/nope/deactivate", headers=H)).status_code == 404
        assert (await s.client.get("/v1/coupons/templates")).status_code == 401


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        (percent_template(pay_percent=-20), "body.kind.percent.pay_percent", "a discount above 100%"),
        (percent_template(pay_percent=100), "body.kind.percent.pay_percent", "no discount"),
        (
            {
                "name": "满100减120",
                "kind": {"type": "amount_off", "amount_off_fen": 12_000, "threshold_fen": 10_000},
                "valid_days": 7,
            },
            "body.kind.amount_off.threshold_fen",
            "below the discount",
        ),
        (
            cash_template(1250) | {"kind": {"type": "no_threshold", "amount_off_fen": 12.5}},
            "body.kind.no_threshold.amount_off_fen",
            "integer",
        ),
        (percent_template(valid_days=None), "body", "valid_days"),
        (percent_template(weekdays=[0]), "body.weekdays", "ISO"),
    ],
)
async def test_an_invalid_template_is_refused_naming_the_field_and_the_reason(
    tmp_path: Path, body: dict[str, Any], field: str, words: str
) -> None:
    async with shop(tmp_path) as s:
        got_field, message = refusal(await s.client.post("/v1/coupons/templates", json=body, headers=H))
        assert got_field == field and words in message


# ---------------------------------------------------------------- rules


async def test_rules_are_created_listed_read_disabled_and_retired(tmp_path: Path) -> None:
    async with shop(tmp_path) as s:
        tid = await s.template(cash_template(1000))
        body = {
            "name": "首单",
            "trigger": {"type": "first_paid_order"},
            "action": {"issue": [{"template_id": tid}]},
            "caps": {"budget_per_day_fen": 50_000},
            "holdout_percent": 10,
        }
        r = await s.client.post("/v1/coupons/rules", json=body, headers=H)
        assert r.status_code == 201, r.text
        rule = r.json()
        rid = rule["rule_id"]
        assert (rule["enabled"], rule["trigger_type"], rule["next_fire_at"]) == (True, "first_paid_order", None)
        assert rule["rule"]["caps"] == {
            "budget_per_day_fen": 50_000,
            "budget_total_fen": None,
            "issues_per_customer": 1,
        }
        assert [x["rule_id"] for x in (await s.client.get("/v1/coupons/rules", headers=H)).json()] == [rid]
        one = (await s.client.get(f"/v1/coupons/rules/{rid}", headers=H)).json()
        assert one["spend"] == {"today_fen": 0, "total_fen": 0, "coupons": 0}
        assert (await s.client.patch(f"/v1/coupons/rules/{rid}", json={"enabled": False}, headers=H)).json()[
            "enabled"
        ] is False
        assert (await s.client.patch(f"/v1/coupons/rules/{rid}", json={}, headers=H)).status_code == 422
        assert (await s.client.delete(f"/v1/coupons/rules/{rid}", headers=H)).status_code == 204
        assert (await s.client.get(f"/v1/coupons/rules/{rid}", headers=H)).json()["enabled"] is False
        for method in ("get", "delete"):
            assert (await getattr(s.client, method)("/v1/coupons/rules/nope", headers=H)).status_code == 404
        assert (await s.client.patch("/v1/coupons/rules/nope", json={"enabled": True}, headers=H)).status_code == 404


async def test_a_scheduled_rule_knows_its_next_fire_on_the_merchants_clock(tmp_path: Path) -> None:
    async with shop(tmp_path) as s:
        tid = await s.template(cash_template(1000))
        r = await s.client.post(
            "/v1/coupons/rules",
            headers=H,
            json={
                "name": "每月1号",
                "trigger": {"type": "schedule", "cron": "0 9 1 * *", "timezone": "Asia/Shanghai"},
                "audience": {"filter": {"tier": ["A", "B"]}},
                "action": {"issue": [{"template_id": tid}]},
            },
        )
        assert r.status_code == 201, r.text
        assert r.json()["next_fire_at"].endswith("T01:00:00Z")  # 09:00 in Shanghai


def rule(tid: str, **over: Any) -> dict[str, Any]:
    return {"name": "r", "trigger": {"type": "first_paid_order"}, "action": {"issue": [{"template_id": tid}]}} | over


async def test_an_invalid_rule_is_refused_naming_the_field_and_the_reason(tmp_path: Path) -> None:
    async with shop(tmp_path) as s:
        bounded = await s.template(cash_template(1000))
        unbounded = await s.template(percent_template())
        once = await s.template(cash_template(500, per_customer_limit=1))
        gone = await s.template(cash_template(300))
        await s.client.post(f"/v1/coupons/templates/{gone}/deactivate", headers=H)
        cases: list[tuple[dict[str, Any], str, str]] = [
            (rule("nope"), "body.action.issue.0.template_id", "no template 'nope'"),
            (rule(gone), "body.action.issue.0.template_id", "deactivated"),
            (
                rule(once, action={"issue": [{"template_id": once, "count": 2}]}),
                "body.action.issue.0.count",
                "above its per_customer_limit 1",
            ),
            (rule(bounded, trigger={"type": "schedule", "cron": "0 9 31 2 *"}), "body.trigger.schedule", "never fires"),
            (rule(bounded, trigger={"type": "schedule", "cron": "0 9 1 *"}), "body.trigger.schedule.cron", "5"),
            (rule(unbounded, caps={"budget_total_fen": 100_000}), "body.caps.budget_total_fen", "cost is bounded"),
            (
                rule(bounded, caps={"budget_per_day_fen": 500}),
                "body.caps.budget_per_day_fen",
                "below one bundle's liability (1000 fen)",
            ),
            (rule(bounded, caps={"budget_total_fen": 1000.5}), "body.caps.budget_total_fen", "integer"),
            (rule(bounded, holdout_percent=60), "body.holdout_percent", "0..50"),
            (
                rule(bounded, trigger={"type": "nth_paid_order", "n": 1}),
                "body.trigger.nth_paid_order.n",
                "first_paid_order",
            ),
            (
                rule(
                    bounded,
                    trigger={
                        "type": "goal",
                        "metric": "paid_orders",
                        "threshold": 5,
                        "window_start": month_start(-2).isoformat(),  # last month but one: ended
                        "window_end": month_start(-1).isoformat(),
                    },
                ),
                "body.trigger.window_end",
                "ended",
            ),
            (rule(bounded, audience={"filter": {"tier": ["X"]}}), "body.audience.filter.tier", "unknown tier 'X'"),
            (
                rule(bounded, audience={"audience_id": "no-such-audience"}),
                "body.audience.audience_id",
                "no saved audience",
            ),
            # Checked by segmentation itself, its reason relayed.
            (
                rule(bounded, audience={"filter": {"frequency": {"gte": 5, "lte": 2}}}),
                "body.audience.filter.frequency.frequency",
                "empty range",
            ),
            (rule(bounded, audience={"filter": {"tier": ["A"], "region": ["x"]}}), "body.audience.filter", "one key"),
        ]
        for body, field, words in cases:
            got_field, message = refusal(await s.client.post("/v1/coupons/rules", json=body, headers=H))
            assert got_field.startswith(field) and words in message, (body, got_field, message)
        assert (await s.client.get("/v1/coupons/rules", headers=H)).json() == []


async def test_a_rule_whose_audience_segmentation_must_check_waits_for_segmentation(tmp_path: Path) -> None:
    async with shop(tmp_path, segmentation_url="http://127.0.0.1:9") as s:  # nothing listens there
        tid = await s.template(cash_template(1000))
        r = await s.client.post(
            "/v1/coupons/rules", json=rule(tid, audience={"filter": {"frequency": {"gte": 3}}}), headers=H
        )
        assert r.status_code == 503 and r.json()["error"]["code"] == "segmentation_unavailable"
        # A tier filter needs no one but coupons.
        r = await s.client.post("/v1/coupons/rules", json=rule(tid, audience={"filter": {"tier": ["A"]}}), headers=H)
        assert r.status_code == 201


# ---------------------------------------------------------------- presets


async def test_presets_describe_their_parameters_defaults_and_what_they_create(tmp_path: Path) -> None:
    async with shop(tmp_path) as s:
        listed = (await s.client.get("/v1/coupons/presets", headers=H)).json()
        assert [p["name"] for p in listed] == list(PRESETS)
        welcome = next(p for p in listed if p["name"] == "first_order_welcome")
        params = {p["name"]: p for p in welcome["params"]}
        assert params["welcome_pay_percent"] == {
            "name": "welcome_pay_percent",
            "type": "int",
            "required": False,
            "default": 80,
        }
        assert params["repurchase_count"]["default"] == 2
        assert welcome["creates"]["rule"]["trigger"] == {"type": "first_paid_order"}
        assert welcome["creates"]["rule"]["action"]["issue"] == [
            {"template_id": "welcome", "count": 1},
            {"template_id": "repurchase", "count": 2},
        ]
        assert welcome["creates"]["templates"]["repurchase"]["kind"]["pay_percent"] == 85
        month = next(p for p in listed if p["name"] == "goal_orders_in_month")
        assert {p["name"] for p in month["params"] if p["required"]} == {"year", "month"}
        nxt = month_start(1)  # the example is next month on the merchant's calendar: one the API takes
        assert month["example_params"] == {"year": nxt.year, "month": nxt.month}
        window = next(p for p in listed if p["name"] == "goal_spend_in_window")["example_params"]
        assert window == {"window_start": nxt.isoformat(), "window_end": month_start(2).isoformat()}


async def test_every_preset_is_enabled_with_one_call_with_the_catalogues_own_example(tmp_path: Path) -> None:
    async with shop(tmp_path) as s:
        listed = (await s.client.get("/v1/coupons/presets", headers=H)).json()
        params: dict[str, dict[str, Any]] = {p["name"]: p["example_params"] or {} for p in listed}
        assert params["goal_orders_in_month"] and params["goal_spend_in_window"]  # examples a user can copy
        for name in PRESETS:
            made = await s.preset(name, **params.get(name, {}))
            assert made["preset"] == name and made["rule"]["preset"] == name and made["rule"]["enabled"]
            for tid in made["template_ids"].values():
                assert (await s.client.get(f"/v1/coupons/templates/{tid}", headers=H)).status_code == 200
            issued = {i["template_id"] for i in made["rule"]["rule"]["action"]["issue"]}
            assert issued == set(made["template_ids"].values())
        rules = (await s.client.get("/v1/coupons/rules", headers=H)).json()
        assert sorted(r["preset"] for r in rules) == sorted(PRESETS)
        assert {r["preset"]: r["trigger_type"] for r in rules}["monthly_loyal"] == "schedule"


async def test_bad_preset_parameters_are_refused_with_the_reason_and_create_nothing(tmp_path: Path) -> None:
    async with shop(tmp_path) as s:
        field, message = refusal(
            await s.client.post("/v1/coupons/presets/first_order_welcome", json={"nope": 1}, headers=H)
        )
        assert field == "body.nope" and "unknown parameter" in message and "welcome_pay_percent" in message
        field, message = refusal(
            await s.client.post(
                "/v1/coupons/presets/first_order_welcome", json={"welcome_pay_percent": "80"}, headers=H
            )
        )
        assert field == "body.welcome_pay_percent" and "int" in message
        field, message = refusal(
            await s.client.post("/v1/coupons/presets/first_order_welcome", json={"welcome_pay_percent": -10}, headers=H)
        )
        assert field == "body" and "a discount above 100%" in message
        field, message = refusal(
            await s.client.post(
                "/v1/coupons/presets/goal_orders_in_month", json={"year": month_start(1).year}, headers=H
            )
        )
        assert field == "body.month" and "required" in message
        field, message = refusal(
            await s.client.post("/v1/coupons/presets/monthly_loyal", json={"cron": "0 9 30 2 *"}, headers=H)
        )
        assert "never fires" in message
        assert (await s.client.post("/v1/coupons/presets/nope", json={}, headers=H)).status_code == 404
        assert (await s.client.get("/v1/coupons/templates", headers=H)).json() == []  # all or nothing
        assert (await s.client.get("/v1/coupons/rules", headers=H)).json() == []


# ---------------------------------------------------------------- explain


async def test_the_decisions_of_a_rule_say_why_a_customer_got_coupons_or_not(tmp_path: Path) -> None:
    async with shop(tmp_path) as s:
        made = await s.preset("first_order_welcome", holdout_percent=50)
        rid = made["rule"]["rule_id"]
        customers = [f"c-{i}" for i in range(12)]
        await s.send(*[paid(c, f"o-{c}") for c in customers])
        await s.settled()
        held = next(c for c in customers if in_holdout(rid, c, 50))
        got = next(c for c in customers if not in_holdout(rid, c, 50))
        body = (
            await s.client.get(f"/v1/coupons/rules/{rid}/decisions", params={"customer_id": held}, headers=H)
        ).json()
        assert [(d["trigger_key"], d["outcome"]) for d in body["decisions"]] == [("paid_orders:1", "holdout")]
        assert "control group" in body["decisions"][0]["reason"] and body["coupons"] == []
        body = (await s.client.get(f"/v1/coupons/rules/{rid}/decisions", params={"customer_id": got}, headers=H)).json()
        assert body["decisions"][0]["outcome"] == "issued" and len(body["coupons"]) == 3
        assert sum(body["outcomes"].values()) == 12 and set(body["outcomes"]) == {"issued", "holdout"}
        everyone = (await s.client.get(f"/v1/coupons/rules/{rid}/decisions", params={"limit": 5}, headers=H)).json()
        assert len(everyone["decisions"]) == 5
        assert (await s.client.get("/v1/coupons/rules/nope/decisions", headers=H)).status_code == 404
