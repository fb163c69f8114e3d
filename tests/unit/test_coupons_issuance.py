"""Rule-driven issuance through the embedded app (SQLite, in-process bus): every trigger type fed
by POST /v1/events (or, for segment.changed, published on the bus as segmentation would), each
trigger occurrence decided once whatever the delivery, holdouts recorded, caps holding, local
and remote audiences, and scheduled fires that issue once per customer however often they run.
The scenarios that also run on Kafka and PostgreSQL are in tests/integration/test_coupons_issuance.py."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import select, update

from services.coupons.adapters import segmentation as seg
from services.coupons.adapters.tables import rule_spend, rules
from services.coupons.domain.rules import in_holdout
from services.coupons.service_layer import issuance
from shared import clock
from tests.coupons_shop import (
    T0,
    H,
    Shop,
    cancelled,
    cash_template,
    paid,
    percent_template,
    referred,
    registered,
    segment,
    shop,
)
from tests.factories import CST, eventually, month_start

# ---------------------------------------------------------------- exactly once


async def test_a_replayed_trigger_issues_nothing_twice(tmp_path: Path) -> None:
    async with shop(tmp_path) as s:
        # No per-customer limit anywhere: only the issuance key can stop a second bundle.
        tid = await s.template(percent_template())
        rule_id = await s.rule(
            {
                "trigger": {"type": "first_paid_order"},
                "caps": {"issues_per_customer": None},
                "action": {"issue": [{"template_id": tid, "count": 2}]},
            }
        )
        first = paid("u-1", "o-1")
        await s.send(first)
        await s.settled()
        await s.redeliver(first)  # the same event again, past the gateway
        await s.send(paid("u-1", "o-1"))  # the same order paid under another event id
        await s.send(paid("u-1", "o-1", at=T0 - timedelta(hours=1)))  # ... and with an earlier payment time
        await s.settled()
        assert await s.wallet("u-1") == Counter({tid: 2})
        assert await s.decisions(rule_id) == [("u-1", "paid_orders:1", "issued")]


async def test_the_nth_order_fires_once_whatever_the_delivery_order_and_cancelled_orders_do_not_count(
    tmp_path: Path,
) -> None:
    async with shop(tmp_path) as s:
        # u-4 had two orders before the rule existed: its third is not a second.
        await s.send(paid("u-4", "o-41"), paid("u-4", "o-42", at=T0 + timedelta(days=1)))
        await s.settled()
        tid = await s.template(percent_template())
        rule_id = await s.rule(
            {
                "trigger": {"type": "nth_paid_order", "n": 2},
                "caps": {"issues_per_customer": None},
                "action": {"issue": [{"template_id": tid}]},
            }
        )
        await s.send(paid("u-4", "o-43", at=T0 + timedelta(days=2)))
        # u-1: the later payment arrives first; the second order counted is the earlier one.
        await s.send(paid("u-1", "o-12", at=T0 + timedelta(days=5)))
        await s.settled()
        assert await s.wallet("u-1") == Counter()
        await s.send(paid("u-1", "o-11", at=T0))
        # u-2: an order cancelled does not count; u-3: two orders in one batch.
        await s.send(paid("u-2", "o-21"))
        await s.send(cancelled("u-2", "o-21", at=T0 + timedelta(hours=1)))
        await s.send(paid("u-2", "o-22", at=T0 + timedelta(days=1)))
        await s.send(paid("u-3", "o-31"), paid("u-3", "o-32", at=T0 + timedelta(days=1)))
        await s.settled()
        assert await s.holders(rule_id) == Counter({"u-1": 1, "u-3": 1})
        await s.send(paid("u-1", "o-13", at=T0 + timedelta(days=9)), paid("u-2", "o-23", at=T0 + timedelta(days=9)))
        await s.settled()
        assert await s.holders(rule_id) == Counter({"u-1": 1, "u-2": 1, "u-3": 1})
        assert {k for _, k, _ in await s.decisions(rule_id)} == {"paid_orders:2"}


# ---------------------------------------------------------------- the other triggers


async def test_an_order_in_the_category_fires_once_per_order(tmp_path: Path) -> None:
    async with shop(tmp_path) as s:
        tid = await s.template(percent_template())
        rule_id = await s.rule(
            {
                "trigger": {"type": "order_in_category", "category": "milk-powder"},
                "caps": {"issues_per_customer": None},
                "action": {"issue": [{"template_id": tid}]},
            }
        )
        await s.send(
            paid("u-1", "o-1"), paid("u-1", "o-2", category="toys"), paid("u-1", "o-3", at=T0 + timedelta(days=2))
        )
        await s.send(paid("u-1", "o-1"))  # o-1 again, under another event id
        await s.settled()
        assert await s.decisions(rule_id) == [("u-1", "order:o-1", "issued"), ("u-1", "order:o-3", "issued")]
        assert await s.wallet("u-1") == Counter({tid: 2})


async def test_entering_a_tier_or_a_tag_fires_and_staying_in_it_does_not(tmp_path: Path) -> None:
    async with shop(tmp_path) as s:
        tid = await s.template(percent_template())
        into_a = await s.rule(
            {
                "trigger": {"type": "segment_changed", "into": {"tier": "A"}},
                "caps": {"issues_per_customer": None},
                "action": {"issue": [{"template_id": tid}]},
            }
        )
        due = await s.rule(
            {
                "trigger": {"type": "segment_changed", "into": {"tag": "replenish_due:milk-powder"}},
                "caps": {"issues_per_customer": None},
                "action": {"issue": [{"template_id": tid}]},
            }
        )
        tag = ["replenish_due:milk-powder"]
        await s.redeliver(
            segment("u-1", None, {"tier": "B"}),
            segment("u-1", {"tier": "B"}, {"tier": "A"}),  # into A
            segment("u-1", {"tier": "A"}, {"tier": "A", "tags": tag}),  # still A; into the tag
            segment("u-1", {"tier": "A", "tags": tag}, {"tier": "B", "tags": tag}),
            segment("u-1", {"tier": "B", "tags": tag}, {"tier": "A", "tags": tag}),  # into A again
            segment("u-2", None, {"tier": "A", "rfm_class": "important_value"}),  # into A from no segment
            segment("u-3", {"tier": "A"}, None),
        )  # out of everything
        await s.settled()
        assert await s.holders(into_a) == Counter({"u-1": 2, "u-2": 1})
        assert await s.holders(due) == Counter({"u-1": 1})


async def test_a_referees_first_paid_order_rewards_the_referrer_once(tmp_path: Path) -> None:
    async with shop(tmp_path) as s:
        tid = await s.template(cash_template(2000))
        rule_id = await s.rule(
            {
                "trigger": {"type": "referral_conversion"},
                "caps": {"issues_per_customer": None},
                "action": {"issue": [{"template_id": tid}]},
            }
        )
        await s.send(referred("r-1", "u-1"), referred("r-2", "u-1"))
        await s.send(paid("r-1", "o-1"), paid("x-1", "o-x"))  # x-1 was referred by nobody
        await s.send(paid("r-1", "o-2", at=T0 + timedelta(days=1)))
        await s.settled()
        assert await s.holders(rule_id) == Counter({"u-1": 1})
        await s.send(paid("r-2", "o-3"))  # the second referee converts: a second reward
        await s.settled()
        assert await s.holders(rule_id) == Counter({"u-1": 2})
        assert {k for _, k, _ in await s.decisions(rule_id)} == {"referral:r-1", "referral:r-2"}


async def test_goals_fire_once_when_crossed_in_their_window(tmp_path: Path, frozen_clock: clock.ManualClock) -> None:
    # Next month's window: it has not ended whatever today is (a rule that could never fire is refused).
    month, month_after = month_start(1), month_start(2)
    start = month + timedelta(hours=10)  # 10:00 on its 1st
    async with shop(tmp_path) as s:
        orders = (await s.preset("goal_orders_in_month", year=month.year, month=month.month))["rule"]["rule_id"]
        spend = (
            await s.preset("goal_spend_in_window", window_start=month.isoformat(), window_end=month_after.isoformat())
        )["rule"]["rule_id"]
        referral = (await s.preset("referral_double_order"))["rule"]["rule_id"]
        frozen_clock.set(month + timedelta(days=22))  # into the window, every order below paid by then

        # More than 5 orders in the month: one of the month before does not count; the 6th of the month does.
        await s.send(
            paid("u-1", "o-before", at=start - timedelta(days=3)),
            *[paid("u-1", f"o-{k}", fen=1000, at=start + timedelta(days=k)) for k in range(5)],
        )
        await s.settled()
        assert await s.holders(orders) == Counter()
        await s.send(paid("u-1", "o-5", fen=1000, at=start + timedelta(days=6)))
        await s.send(paid("u-1", "o-6", fen=1000, at=start + timedelta(days=7)))
        # A total paid above ¥666 in the window: crossed by the second order.
        await s.send(
            paid("u-2", "o-21", fen=40_000, at=start), paid("u-2", "o-22", fen=30_000, at=start + timedelta(days=1))
        )
        # A referee's two orders within 30 days reward the referrer once; 40 days apart, no.
        bound = start - timedelta(days=1)
        await s.send(referred("r-1", "u-3", at=bound), referred("r-2", "u-3", at=bound))
        await s.send(paid("r-1", "o-r1", at=start), paid("r-2", "o-r3", at=start - timedelta(days=40)))
        await s.send(paid("r-1", "o-r2", at=start + timedelta(days=20)), paid("r-2", "o-r4", at=start))
        await s.send(paid("r-1", "o-r5", at=start + timedelta(days=21)))
        await s.settled()
        assert await s.holders(orders) == Counter({"u-1": 1})
        assert await s.holders(spend) == Counter({"u-2": 1})
        assert await s.holders(referral) == Counter({"u-3": 1})
        assert [k for _, k, _ in await s.decisions(referral)] == ["goal:referee_orders:r-1"]


# ---------------------------------------------------------------- holdout and caps


async def test_holdout_customers_are_recorded_and_get_no_coupon(tmp_path: Path) -> None:
    async with shop(tmp_path) as s:
        tid = await s.template(percent_template())
        rule_id = await s.rule(
            {
                "trigger": {"type": "first_paid_order"},
                "holdout_percent": 50,
                "action": {"issue": [{"template_id": tid}]},
            }
        )
        customers = [f"c-{i:02d}" for i in range(40)]
        await s.send(*[paid(c, f"o-{c}") for c in customers])
        await s.settled()
        held = {c for c in customers if in_holdout(rule_id, c, 50)}
        assert 0 < len(held) < len(customers)
        decided = {c: o for c, _, o in await s.decisions(rule_id)}
        assert decided == {c: "holdout" if c in held else "issued" for c in customers}
        assert set(await s.holders(rule_id)) == set(customers) - held


async def test_caps_hold_the_total_and_daily_budgets_and_the_issues_per_customer(
    tmp_path: Path, frozen_clock: clock.ManualClock
) -> None:
    async with shop(tmp_path) as s:
        ten = await s.template(cash_template(1000))
        total = await s.rule(
            {
                "trigger": {"type": "order_in_category", "category": "milk-powder"},
                "caps": {"budget_total_fen": 3000, "issues_per_customer": None},
                "action": {"issue": [{"template_id": ten}]},
            }
        )
        daily = await s.rule(
            {
                "trigger": {"type": "order_in_category", "category": "milk-powder"},
                "caps": {"budget_per_day_fen": 2000, "issues_per_customer": None},
                "action": {"issue": [{"template_id": ten}]},
            }
        )
        twice = await s.rule(
            {
                "trigger": {"type": "order_in_category", "category": "toys"},
                "caps": {"issues_per_customer": 2},
                "action": {"issue": [{"template_id": ten}]},
            }
        )
        await s.send(*[paid(f"c-{i}", f"o-{i}") for i in range(3)])
        await s.send(*[paid(f"c-{i}", f"o-{i}") for i in range(3, 5)])
        await s.send(*[paid("t-1", f"t-{k}", category="toys", at=T0 + timedelta(days=k)) for k in range(3)])
        await s.settled()
        assert await s.outcomes(total) == Counter({"issued": 3, "capped_total": 2})
        assert await s.outcomes(daily) == Counter({"issued": 2, "capped_day": 3})
        assert await s.outcomes(twice) == Counter({"issued": 2, "capped_customer": 1})
        assert sum((await s.holders(total)).values()) == 3 and sum((await s.holders(daily)).values()) == 2
        async with s.rt.sessions() as session:
            spent = {
                p: fen
                for p, fen in await session.execute(
                    select(rule_spend.c.period, rule_spend.c.spent_fen).where(rule_spend.c.rule_id == total)
                )
            }
        assert spent["total"] == 3000
        detail = (await s.client.get(f"/v1/coupons/rules/{daily}", headers=H)).json()
        assert detail["spend"] == {"today_fen": 2000, "total_fen": 2000, "coupons": 2}


async def test_a_template_out_of_stock_is_recorded_and_the_reservations_given_back(tmp_path: Path) -> None:
    async with shop(tmp_path) as s:
        scarce = await s.template(cash_template(1000, stock=2))
        rule_id = await s.rule(
            {
                "trigger": {"type": "first_paid_order"},
                "caps": {"budget_total_fen": 10_000},
                "action": {"issue": [{"template_id": scarce}]},
            }
        )
        await s.send(*[paid(f"c-{i}", f"o-{i}") for i in range(4)])
        await s.settled()
        assert await s.outcomes(rule_id) == Counter({"issued": 2, "out_of_stock": 2})
        detail = (await s.client.get(f"/v1/coupons/rules/{rule_id}", headers=H)).json()
        assert detail["spend"]["total_fen"] == 2000 and detail["spend"]["coupons"] == 2


# ---------------------------------------------------------------- audiences


async def test_a_tier_class_or_tag_filter_is_evaluated_on_the_segments_replica(tmp_path: Path) -> None:
    async with shop(tmp_path) as s:
        tid = await s.template(percent_template())
        b_or_vip = await s.rule(
            {
                "trigger": {"type": "first_paid_order"},
                "action": {"issue": [{"template_id": tid}]},
                "audience": {"filter": {"or": [{"tier": ["B"]}, {"tag": ["custom:vip"]}]}},
            }
        )
        not_c = await s.rule(
            {
                "trigger": {"type": "first_paid_order"},
                "action": {"issue": [{"template_id": tid}]},
                "audience": {"filter": {"not": {"tier": ["C"]}}},
            }
        )
        await s.redeliver(
            segment("u-1", None, {"tier": "B"}),
            segment("u-2", None, {"tier": "C"}),
            segment("u-3", None, {"tier": "C", "tags": ["custom:vip"]}),
            segment("u-5", None, {"tier": "C", "tags": ["custom:vipx"]}),
        )
        await s.settled()
        await s.send(*[paid(f"u-{i}", f"o-{i}") for i in range(1, 6)])  # u-4 has no segment yet
        await s.settled()
        assert {c: o for c, _, o in await s.decisions(b_or_vip)} == {
            "u-1": "issued",
            "u-2": "out_of_audience",
            "u-3": "issued",
            "u-4": "out_of_audience",
            "u-5": "out_of_audience",
        }
        assert {c: o for c, _, o in await s.decisions(not_c)} == {
            "u-1": "issued",
            "u-2": "out_of_audience",
            "u-3": "out_of_audience",
            "u-4": "issued",
            "u-5": "out_of_audience",
        }


async def test_saved_audiences_and_other_filters_are_asked_of_segmentation(tmp_path: Path) -> None:
    async with shop(tmp_path) as s:
        await s.send(registered("u-1", "Shanghai"), registered("u-2", "Beijing"), registered("u-3", "Shanghai"))

        async def in_shanghai() -> int:
            r = await s.client.post("/v1/audiences/query", json={"filter": {"region": ["Shanghai"]}}, headers=H)
            return r.json()["count"]  # type: ignore[no-any-return]

        await eventually(in_shanghai, lambda n: n == 2)
        # What coupons asks segmentation for a batch: members among given customers only.
        r = await s.client.post(
            "/v1/audiences/query",
            headers=H,
            json={"filter": {"region": ["Shanghai"]}, "customer_ids": ["u-1", "u-2", "u-9"]},
        )
        assert [m["customer_id"] for m in r.json()["customers"]] == ["u-1"] and r.json()["count"] == 1
        saved = (
            await s.client.post("/v1/audiences", json={"name": "上海", "filter": {"region": ["Shanghai"]}}, headers=H)
        ).json()["audience_id"]
        tid = await s.template(percent_template())
        by_id = await s.rule(
            {
                "trigger": {"type": "first_paid_order"},
                "audience": {"audience_id": saved},
                "action": {"issue": [{"template_id": tid}]},
            }
        )
        beijing = await s.rule(
            {
                "trigger": {"type": "first_paid_order"},
                "audience": {"filter": {"region": ["Beijing"]}},
                "action": {"issue": [{"template_id": tid}]},
            }
        )
        await s.send(*[paid(f"u-{i}", f"o-{i}") for i in range(1, 5)])
        await s.settled()
        assert {c: o for c, _, o in await s.decisions(by_id)} == {
            "u-1": "issued",
            "u-2": "out_of_audience",
            "u-3": "issued",
            "u-4": "out_of_audience",
        }
        assert {c: o for c, _, o in await s.decisions(beijing)} == {
            "u-1": "out_of_audience",
            "u-2": "issued",
            "u-3": "out_of_audience",
            "u-4": "out_of_audience",
        }


def test_which_filters_are_local_and_which_need_a_segment() -> None:
    # What each local filter means, on one customer and in SQL, is checked on SQLite and PostgreSQL
    # in tests/integration/test_coupons_issuance.py.
    assert not seg.is_local({"frequency": {"gte": 3}})
    assert not seg.is_local({"and": [{"tier": ["A"]}, {"region": ["x"]}]})
    # A scheduled fire lists a filter's members from the replica only if they must have a segment.
    assert seg.needs_segment({"and": [{"tier": ["A"]}, {"not": {"tag": ["x"]}}]})
    assert not seg.needs_segment({"or": [{"tier": ["A"]}, {"not": {"tag": ["x"]}}]})


# ---------------------------------------------------------------- schedules


async def _next_fire(s: Shop, rule_id: str) -> datetime:
    async with s.rt.sessions() as session:
        return (await session.execute(select(rules.c.next_fire_at).where(rules.c.rule_id == rule_id))).scalar_one()


async def test_a_scheduled_rule_issues_to_its_audience_once_per_fire_however_often_it_runs(
    tmp_path: Path, frozen_clock: clock.ManualClock
) -> None:
    async with shop(tmp_path) as s:
        tier_c = [f"c-{i}" for i in range(7)]
        await s.redeliver(*[segment(c, None, {"tier": "C"}) for c in tier_c], segment("a-1", None, {"tier": "A"}))
        await s.settled()
        made = await s.preset("tier_c_second_order_free_shipping", holdout_percent=0)
        rule_id = made["rule"]["rule_id"]
        first = await _next_fire(s, rule_id)
        assert first.astimezone(CST).day == 1 and first.astimezone(CST).hour == 9
        client = seg.client_for(s.rt)

        assert await issuance.fire_due(s.rt.sessions, client, first - timedelta(minutes=1)) is False
        assert await issuance.fire_due(s.rt.sessions, client, first + timedelta(minutes=1), chunk=3) is True
        assert await s.holders(rule_id) == Counter({c: 1 for c in tier_c})
        second = await _next_fire(s, rule_id)
        assert second.astimezone(CST).month == first.astimezone(CST).month % 12 + 1

        # The same fire run again (as after a crash before next_fire_at moved): nothing more.
        async with s.rt.sessions() as session, session.begin():
            await session.execute(update(rules).where(rules.c.rule_id == rule_id).values(next_fire_at=first))
        assert await issuance.fire_due(s.rt.sessions, client, first + timedelta(minutes=2)) is True
        assert await s.holders(rule_id) == Counter({c: 1 for c in tier_c})

        # The next fire is a new occurrence: each customer gets the month's coupon again.
        assert await issuance.fire_due(s.rt.sessions, client, second + timedelta(minutes=1), chunk=100) is True
        assert await s.holders(rule_id) == Counter({c: 2 for c in tier_c})
        assert Counter(k for _, k, _ in await s.decisions(rule_id)) == Counter(
            {f"schedule:{first.isoformat()}": 7, f"schedule:{second.isoformat()}": 7}
        )


async def test_run_now_fires_a_scheduled_rule_at_once_then_its_schedule_resumes(
    tmp_path: Path, frozen_clock: clock.ManualClock
) -> None:
    async with shop(tmp_path) as s:
        tier_c = [f"c-{i}" for i in range(5)]
        await s.redeliver(*[segment(c, None, {"tier": "C"}) for c in tier_c], segment("a-1", None, {"tier": "A"}))
        await s.settled()
        made = await s.preset("tier_c_second_order_free_shipping", holdout_percent=0)
        rule_id = made["rule"]["rule_id"]
        monthly = await _next_fire(s, rule_id)
        r = await s.client.post(f"/v1/coupons/rules/{rule_id}/run", headers=H)
        assert r.status_code == 202, r.text
        assert datetime.fromisoformat(r.json()["next_fire_at"]) < monthly  # brought forward to now
        assert await eventually(lambda: s.holders(rule_id), lambda h: h == Counter({c: 1 for c in tier_c}))
        assert await eventually(lambda: _next_fire(s, rule_id), lambda t: t == monthly)  # the schedule resumes
        assert [k.startswith("schedule:") for _, k, _ in await s.decisions(rule_id)] == [True] * 5

        welcome = (await s.preset("first_order_welcome"))["rule"]["rule_id"]
        r = await s.client.post(f"/v1/coupons/rules/{welcome}/run", headers=H)
        assert r.status_code == 409 and "not on a schedule" in r.json()["error"]["message"]
        await s.client.patch(f"/v1/coupons/rules/{rule_id}", json={"enabled": False}, headers=H)
        r = await s.client.post(f"/v1/coupons/rules/{rule_id}/run", headers=H)
        assert r.status_code == 409 and "disabled" in r.json()["error"]["message"]
        assert (await s.client.post("/v1/coupons/rules/nope/run", headers=H)).status_code == 404
        assert await s.holders(rule_id) == Counter({c: 1 for c in tier_c})


async def test_a_scheduled_rule_with_a_saved_audience_streams_its_members_from_segmentation(
    tmp_path: Path, frozen_clock: clock.ManualClock
) -> None:
    async with shop(tmp_path) as s:
        await s.send(*[registered(f"u-{i}", "Shanghai" if i % 2 else "Beijing") for i in range(9)])

        async def registered_ones() -> int:
            r = await s.client.post(
                "/v1/audiences/query", json={"filter": {"region": ["Shanghai", "Beijing"]}}, headers=H
            )
            return r.json()["count"]  # type: ignore[no-any-return]

        await eventually(registered_ones, lambda n: n == 9)
        saved = (
            await s.client.post("/v1/audiences", json={"name": "上海", "filter": {"region": ["Shanghai"]}}, headers=H)
        ).json()["audience_id"]
        tid = await s.template(percent_template())
        rule_id = await s.rule(
            {
                "trigger": {"type": "schedule", "cron": "0 10 * * 1"},
                "holdout_percent": 0,
                "audience": {"audience_id": saved},
                "action": {"issue": [{"template_id": tid}]},
            }
        )
        fire_at = await _next_fire(s, rule_id)
        assert fire_at.astimezone(CST).isoweekday() == 1
        assert await issuance.fire_due(s.rt.sessions, seg.client_for(s.rt), fire_at, chunk=2) is True
        assert await s.holders(rule_id) == Counter({f"u-{i}": 1 for i in range(1, 9, 2)})


async def test_a_disabled_rule_issues_nothing_until_enabled_again(tmp_path: Path) -> None:
    async with shop(tmp_path) as s:
        tid = await s.template(percent_template())
        rule_id = await s.rule({"trigger": {"type": "first_paid_order"}, "action": {"issue": [{"template_id": tid}]}})
        r = await s.client.patch(f"/v1/coupons/rules/{rule_id}", json={"enabled": False}, headers=H)
        assert r.status_code == 200 and r.json()["enabled"] is False
        await s.send(paid("u-1", "o-1"))
        await s.settled()
        assert await s.decisions(rule_id) == []
        r = await s.client.patch(f"/v1/coupons/rules/{rule_id}", json={"enabled": True}, headers=H)
        assert r.json()["enabled"] is True
        await s.send(paid("u-2", "o-2"))
        await s.settled()
        assert await s.decisions(rule_id) == [("u-2", "paid_orders:1", "issued")]
        assert (await s.client.delete(f"/v1/coupons/rules/{rule_id}", headers=H)).status_code == 204
        await s.send(paid("u-3", "o-3"))
        await s.settled()
        assert [c for c, _, _ in await s.decisions(rule_id)] == ["u-2"]
