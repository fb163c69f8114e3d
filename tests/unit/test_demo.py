"""`make demo`'s shop: deterministic, in the contract's shape, believable (orders add up, refunds
and cancellations follow their orders, repurchases follow the categories' cycles, phones reach a
phone), and fed end to end through the public API of the embedded system."""

from __future__ import annotations

import itertools
import statistics
from collections import defaultdict
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from demo import feed
from demo.shop import BY_CODE, CYCLES, TZ, Shop, by_customer, generate, iter_batches
from services.embedded import build_embedded_app
from services.notifications.domain.contacts import normalize_openid, normalize_phone
from shared import clock
from shared.events import INBOUND_TYPES, parse_event
from tests.conftest import embedded_settings, running
from tests.factories import eventually

# The generator is pure: it is given its now, and reads no clock. Only the shop fed through the API
# (last tests) is generated at the suite's now, as `make demo` does.
NOW = datetime(2026, 11, 24, 14, 30, 5, tzinfo=TZ)
KEY = "fg_test_demo_shop_key"


@pytest.fixture(scope="module")
def the_shop() -> Shop:
    return generate(customers=1500, months=6, seed=7, now=NOW)


def at(e: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(e["occurred_at"])


def test_the_generator_is_deterministic_for_a_seed() -> None:
    a = generate(customers=200, seed=3, now=NOW)
    assert a.events == generate(customers=200, seed=3, now=NOW).events
    assert a.events != generate(customers=200, seed=4, now=NOW).events
    # A customer's life does not depend on how many customers there are: a bigger shop re-fed
    # over a smaller one only adds.
    smaller = generate(customers=50, seed=3, now=NOW)
    assert [e for e in a.events if e["customer_id"] <= "c-000050"] == smaller.events


def test_every_event_parses_and_happens_inside_the_window_in_time_order(the_shop: Shop) -> None:
    start = the_shop.start
    assert start == NOW - timedelta(days=183)
    seen: set[str] = set()
    previous = start
    for e in the_shop.events:
        parsed = parse_event(e)
        assert parsed.type in INBOUND_TYPES  # type: ignore[attr-defined]
        assert e["occurred_at"].endswith("+08:00") and e["merchant_id"] == "demo"
        assert start <= parsed.occurred_at <= NOW, e
        assert parsed.occurred_at >= previous, "events are listed in time order"
        previous = parsed.occurred_at
        assert e["event_id"] not in seen
        seen.add(e["event_id"])
    assert set(the_shop.counts()) == INBOUND_TYPES, "every inbound type appears"
    # Nothing a customer does comes before they registered.
    registered = {e["customer_id"]: at(e) for e in the_shop.events if e["type"] == "customer.registered"}
    assert len(registered) == 1500
    assert all(at(e) >= registered[e["customer_id"]] for e in the_shop.events)


def test_orders_add_up_and_each_customers_orders_follow_each_other(the_shop: Shop) -> None:
    created: dict[str, datetime] = {}
    last: dict[str, tuple[int, datetime]] = {}
    for e in the_shop.events:
        if e["type"] in ("order.created", "order.paid"):
            d = e["data"]
            assert d["items"] and sum(i["amount_fen"] for i in d["items"]) == d["amount_fen"] > 0
            assert all(isinstance(i["amount_fen"], int) and i["category"] in BY_CODE for i in d["items"])
        if e["type"] == "order.created":
            number = int(e["data"]["order_id"].rsplit("-o", 1)[1])
            before = last.get(e["customer_id"])
            if before is not None:
                assert number == before[0] + 1 and at(e) > before[1], "order numbers follow time"
            last[e["customer_id"]] = (number, at(e))
            created[e["data"]["order_id"]] = at(e)
        elif e["type"] == "order.paid":
            assert created[e["data"]["order_id"]] < at(e)


def test_refunds_and_cancellations_refer_to_earlier_orders_of_the_same_customer(the_shop: Shop) -> None:
    orders: dict[str, tuple[str, datetime, int]] = {}
    paid: dict[str, datetime] = {}
    kinds = defaultdict(int)
    for e in the_shop.events:
        d = e["data"]
        if e["type"] == "order.created":
            orders[d["order_id"]] = (e["customer_id"], at(e), d["amount_fen"])
        elif e["type"] == "order.paid":
            paid[d["order_id"]] = at(e)
        elif e["type"] in ("order.cancelled", "order.refunded"):
            customer, created_at, amount = orders[d["order_id"]]
            assert customer == e["customer_id"] and created_at < at(e)
            if e["type"] == "order.refunded":
                assert d["order_id"] in paid and paid[d["order_id"]] < at(e)
                assert d["refund_id"] and sum(i["amount_fen"] for i in d["items"]) == d["amount_fen"]
                assert (d["amount_fen"] == amount) if d["full"] else (0 < d["amount_fen"] < amount)
                kinds["full" if d["full"] else "partial"] += 1
            else:
                kinds["cancelled after payment" if d["order_id"] in paid else "never paid"] += 1
    assert all(kinds[k] > 0 for k in ("full", "partial", "cancelled after payment", "never paid")), kinds


def test_repurchase_gaps_cluster_around_each_categorys_cycle(the_shop: Shop) -> None:
    last: dict[tuple[str, str], datetime] = {}
    gaps: dict[str, list[float]] = defaultdict(list)
    for e in the_shop.events:
        if e["type"] == "order.paid":
            for item in e["data"]["items"]:
                k = (e["customer_id"], item["category"])
                if k in last:
                    gaps[item["category"]].append((at(e) - last[k]).total_seconds() / 86400)
                last[k] = at(e)
    checked = 0
    for category, cycle in CYCLES.items():
        if len(gaps[category]) >= 30:
            median = statistics.median(gaps[category])
            assert 0.6 * cycle <= median <= 1.4 * cycle, (category, cycle, median)
            checked += 1
    assert checked >= 5
    assert all(BY_CODE[c].cycle_days for c in ("milk-powder", "diapers", "wipes"))


def test_contacts_reach_someone_and_consents_vary(the_shop: Shop) -> None:
    profiles = [c.profile for c in the_shop.customers]
    phones = [normalize_phone(p["phone"]) for p in profiles if "phone" in p]
    assert len(phones) > 0.9 * len(profiles) and len(set(phones)) == len(phones)
    openids = [normalize_openid(p["wechat_openid"]) for p in profiles if "wechat_openid" in p]
    assert len(set(openids)) == len(openids) > 0.5 * len(profiles)
    sms = [p["consents"]["sms"] for p in profiles]
    assert 0.7 < sum(sms) / len(sms) < 0.95
    assert any("email" in p for p in profiles) and any("birthday" in p for p in profiles)
    grants = [e for e in the_shop.events if e["type"] == "wechat.subscription.granted"]
    assert grants and all(e["data"]["template_id"] == "TPL-COUPON" for e in grants)
    with_openid = {c.customer_id for c in the_shop.customers if "wechat_openid" in c.profile}
    assert all(e["customer_id"] in with_openid for e in grants)


def test_the_shop_has_every_lifecycle_situation(the_shop: Shop) -> None:
    """What segmentation's tags need: new, dormant, interest and due-for-replenishment customers."""
    paid: dict[str, list[datetime]] = defaultdict(list)
    milk: dict[str, datetime] = {}
    interest: dict[str, datetime] = {}
    for e in the_shop.events:
        if e["type"] == "order.paid":
            paid[e["customer_id"]].append(at(e))
            if any(i["category"] == "milk-powder" for i in e["data"]["items"]):
                milk[e["customer_id"]] = at(e)
        elif e["type"] in ("cart.added", "item.favorited"):
            interest[e["customer_id"]] = at(e)
    days = timedelta(days=1)
    new = [c for c, ts in paid.items() if len(ts) == 1 and NOW - ts[0] < 30 * days]
    dormant = [c for c, ts in paid.items() if NOW - ts[-1] > 90 * days]
    curious = [c for c, t in interest.items() if NOW - t < 7 * days and (not paid[c] or paid[c][-1] < t)]
    due = [c for c, t in milk.items() if 27 * days <= NOW - t < 60 * days]
    never = [c.customer_id for c in the_shop.customers if c.customer_id not in paid]
    for name, group in (
        ("new", new),
        ("dormant", dormant),
        ("interest", curious),
        ("replenish_due", due),
        ("never paid", never),
    ):
        assert len(group) >= 15, name
    assert len(paid) > 0.85 * 1500 and 0 < the_shop.buyers() <= len(paid)
    assert any(e["type"] == "referral.bound" for e in the_shop.events)


def test_batches_keep_each_customers_events_together(the_shop: Shop) -> None:
    grouped = by_customer(the_shop.events)
    assert sorted(map(id, grouped)) == sorted(map(id, the_shop.events))
    batches = list(iter_batches(grouped, 500))
    assert [e for b in batches for e in b] == grouped and all(len(b) <= 500 for b in batches)
    owners = [{e["customer_id"] for e in b} for b in batches]
    for a, b in itertools.pairwise(owners):
        assert not a & b, "a customer's events are in one batch"
    assert [len(b) for b in iter_batches(grouped[:5], 2, keep_customers=False)] == [2, 2, 1]


async def test_a_small_shop_fed_through_the_api_shows_tiers_coupons_and_points(tmp_path: Path) -> None:
    app = build_embedded_app(embedded_settings(tmp_path, bootstrap_api_key=KEY), announce=False)
    small = generate(customers=150, seed=11, now=clock.now())
    events = by_customer(small.events)
    async with running(app) as client:
        notes = await feed.setup_merchant(client, KEY)
        assert any("3 rules created" in n for n in notes), notes
        again = await feed.setup_merchant(client, KEY)  # a second run changes nothing
        assert any("0 templates created" in n for n in again) and any("0 rules created" in n for n in again)
        assert any("already set" in n for n in again if n.startswith("segmentation"))
        assert any("already set" in n for n in again if n.startswith("loyalty")), again
        assert any("(0 new versions)" in n for n in again), again

        report = await feed.post_events(client, KEY, events, batch_size=200, concurrency=3, progress=False)
        assert (report.accepted, report.duplicates, report.rejected) == (len(events), 0, 0), report.first_rejection

        h = {"X-Api-Key": KEY}

        async def get(url: str, **params: Any) -> Any:
            r = await client.get(url, headers=h, params=params)
            return r.json() if r.status_code == 200 else {"status": r.status_code, "body": r.text}

        summary = await eventually(
            lambda: get("/v1/segments/summary"), lambda v: v.get("customers", 0) >= small.buyers(), timeout=60
        )
        assert summary["customers"] == small.buyers()
        assert sum(1 for n in summary["tiers"].values() if n) > 1, summary["tiers"]

        rules = {r["name"]: r["rule_id"] for r in (await client.get("/v1/coupons/rules", headers=h)).json()}
        decided = await eventually(
            lambda: get(f"/v1/coupons/rules/{rules['首单礼']}/decisions"),
            lambda v: v.get("outcomes", {}).get("issued", 0) > 0,
            timeout=30,
        )
        payers = {e["customer_id"] for e in events if e["type"] == "order.paid"}
        assert decided["outcomes"]["issued"] <= len(payers)  # once each, paid orders refunded since included

        buyer = next(e["customer_id"] for e in events if e["type"] == "order.paid")
        points = await eventually(
            lambda: get(f"/v1/loyalty/customers/{buyer}/points"),
            lambda v: v.get("balance", 0) + v.get("pending", 0) > 0,
            timeout=30,
        )
        assert points["level"] is not None  # the ladder is in force
        assert (await get(f"/v1/loyalty/customers/{buyer}/reconciliation"))["ok"]

        # Feeding the same shop again is harmless: every event is a duplicate.
        twice = await feed.post_events(client, KEY, events, progress=False)
        assert (twice.accepted, twice.duplicates, twice.rejected) == (0, len(events), 0)


async def test_a_wrong_key_is_a_clear_error_not_a_retry_loop() -> None:
    async def refuse(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"error": {"code": "unauthorized"}})

    async with httpx.AsyncClient(transport=httpx.MockTransport(refuse), base_url="http://fugou.test") as client:
        with pytest.raises(feed.FeedError, match="401"):
            await feed.post_events(client, "wrong", [{"customer_id": "c"}], progress=False)


async def test_busy_answers_are_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    answers = iter(
        [
            httpx.Response(503),
            httpx.Response(429, headers={"retry-after": "0"}),
            httpx.Response(200, json={"accepted": 1, "duplicates": 0, "rejected": 0, "results": []}),
        ]
    )

    async def flaky(request: httpx.Request) -> httpx.Response:
        return next(answers)

    monkeypatch.setattr(feed, "_jitter", type("NoWait", (), {"uniform": staticmethod(lambda a, b: 0.0)})())
    async with httpx.AsyncClient(transport=httpx.MockTransport(flaky), base_url="http://fugou.test") as client:
        report = await feed.post_events(client, "k", [{"customer_id": "c"}], progress=False)
    assert report.accepted == 1
