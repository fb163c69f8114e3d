"""Audiences over segments, tags, R/F/M, dates, region, categories and behaviour, combined with
and/or/not; paged, streamed as CSV, saved and referenced by id."""

from __future__ import annotations

import csv
import io
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.embedded import build_embedded_app
from tests.audience_history import NOW, history, paid
from tests.conftest import embedded_settings, running
from tests.factories import eventually

KEY = "fg_audience_key"
H = {"X-Api-Key": KEY}
CONFIG = {
    "period_days": None,
    "levels": 3,
    "boundaries": {"mode": "fixed", "recency_days": [30, 90], "frequency": [2, 4], "monetary_fen": [10_000, 50_000]},
    "class_split": {"mode": "fixed", "recency_days": 30, "frequency": 2, "monetary_fen": 20_000},
}


@pytest.fixture
async def client(tmp_path: Path):  # type: ignore[no-untyped-def]
    app = build_embedded_app(embedded_settings(tmp_path, bootstrap_api_key=KEY), announce=False)
    async with running(app) as c:
        assert (await c.put("/v1/segmentation/config", json=CONFIG, headers=H)).status_code == 200
        events = history()
        assert (await c.post("/v1/events", json=events, headers=H)).json()["accepted"] == len(events)

        async def count() -> int:
            r = await c.post(
                "/v1/audiences/query",
                json={
                    "filter": {
                        "or": [
                            {"tier": ["S", "A", "B", "C"]},
                            {"interested_not_bought": "any"},
                            {"ordered_unpaid": True},
                        ]
                    }
                },
                headers=H,
            )
            return r.json()["count"]

        await eventually(count, lambda n: n == 7)
        yield c


async def ids(c: httpx.AsyncClient, f: dict[str, Any]) -> set[str]:
    r = await c.post("/v1/audiences/query", json={"filter": f, "limit": 1000}, headers=H)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["count"] == len(body["customers"])
    return {m["customer_id"] for m in body["customers"]}


async def test_the_issue_example_tier_b_bought_x_recently_never_bought_y(client: httpx.AsyncClient) -> None:
    f = {
        "and": [
            {"tier": ["B"]},
            {"bought_category": {"category": "milk-powder", "within_days": 90}},
            {"not": {"bought_category": {"category": "toys"}}},
        ]
    }
    assert await ids(client, f) == {"milk-10"}
    # milk-toys is tier B too and bought milk powder: only "never toys" keeps it out.
    assert await ids(client, {"and": f["and"][:2]}) == {"milk-10", "milk-toys"}


async def test_conditions_on_segments_values_dates_and_region(client: httpx.AsyncClient) -> None:
    assert await ids(client, {"tier": ["S"]}) == {"vip"}
    assert await ids(client, {"cell": ["1-1-2"]}) == {"milk-200"}
    assert await ids(client, {"rfm_class": ["important_value"]}) == {"vip"}
    assert await ids(client, {"recency_days": {"gte": 100}}) == {"milk-200"}
    assert await ids(client, {"recency_days": {"lte": 5}}) == {"vip", "buyer"}
    assert await ids(client, {"frequency": {"gte": 2}}) == {"vip", "milk-toys"}
    assert await ids(client, {"monetary_fen": {"gte": 100_000}}) == {"vip"}
    assert await ids(client, {"last_order_at": {"gte": (NOW - timedelta(days=12)).isoformat()}}) == {
        "milk-10",
        "vip",
        "buyer",
    }
    assert await ids(client, {"region": ["上海", "北京"]}) == {"fan", "vip"}
    assert await ids(client, {"tag": ["dormant"]}) == {"milk-200"}


async def test_behaviour_without_purchase(client: httpx.AsyncClient) -> None:
    assert await ids(client, {"interested_not_bought": "any"}) == {"fan"}  # the buyer bought after carting
    assert await ids(client, {"interested_not_bought": "cart"}) == set()
    assert await ids(client, {"ordered_unpaid": True}) == {"unpaid"}


async def test_not_includes_customers_without_a_segment(client: httpx.AsyncClient) -> None:
    # "not tier B" is everyone else, including those who never paid (no tier at all).
    assert await ids(client, {"not": {"tier": ["B"]}}) == {"milk-200", "vip", "fan", "unpaid"}


async def test_pages_follow_each_other_and_csv_streams_everyone(client: httpx.AsyncClient) -> None:
    every = {"or": [{"tier": ["S", "A", "B", "C"]}, {"ordered_unpaid": True}, {"interested_not_bought": "any"}]}
    seen, after = [], None
    while True:
        r = (
            await client.post("/v1/audiences/query", json={"filter": every, "limit": 3, "after": after}, headers=H)
        ).json()
        assert r["count"] == 7
        seen += [m["customer_id"] for m in r["customers"]]
        after = r["next_after"]
        if after is None:
            break
    assert seen == sorted(seen) and len(seen) == 7
    r = await client.post("/v1/audiences/query.csv", json={"filter": every}, headers=H)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text.lstrip("\ufeff"))))
    assert [row["customer_id"] for row in rows] == seen
    assert next(row for row in rows if row["customer_id"] == "vip")["tier"] == "S"


async def test_a_saved_audience_is_referenced_by_id(client: httpx.AsyncClient) -> None:
    body = {
        "name": "B 且近期买过奶粉",
        "filter": {"and": [{"tier": ["B"]}, {"bought_category": {"category": "milk-powder", "within_days": 90}}]},
    }
    saved = (await client.post("/v1/audiences", json=body, headers=H)).json()
    aid = saved["audience_id"]
    assert saved["filter"] == body["filter"]
    members = (await client.get(f"/v1/audiences/{aid}/members", headers=H)).json()
    assert {m["customer_id"] for m in members["customers"]} == {"milk-10", "milk-toys"}
    csv_rows = (await client.get(f"/v1/audiences/{aid}/members.csv", headers=H)).text.strip().splitlines()
    assert len(csv_rows) == 3
    changed = body | {"filter": {"tier": ["S"]}}
    assert (await client.put(f"/v1/audiences/{aid}", json=changed, headers=H)).json()["filter"] == {"tier": ["S"]}
    assert [a["audience_id"] for a in (await client.get("/v1/audiences", headers=H)).json()] == [aid]
    assert (await client.delete(f"/v1/audiences/{aid}", headers=H)).status_code == 204
    assert (await client.get(f"/v1/audiences/{aid}", headers=H)).status_code == 404


@pytest.mark.parametrize(
    ("f", "field"),
    [
        ({"tier": ["X"]}, "body.filter.tier.tier.0"),
        ({"tiers": ["B"]}, "body.filter"),
        ({"recency_days": {"gte": 9, "lte": 1}}, "body.filter.recency_days.recency_days"),
        ({"tier": ["B"], "cell": ["1-1-1"]}, "body.filter"),
    ],
)
async def test_a_bad_filter_is_a_422_naming_the_field(client: httpx.AsyncClient, f: dict[str, Any], field: str) -> None:
    r = await client.post("/v1/audiences/query", json={"filter": f}, headers=H)
    assert r.status_code == 422 and r.json()["error"]["fields"][0]["field"] == field


async def test_pages_are_bounded_and_filters_cannot_nest_without_end(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/audiences/query", json={"filter": {"tier": ["B"]}, "limit": 5000}, headers=H)
    assert r.status_code == 422 and r.json()["error"]["fields"][0]["field"] == "body.limit"
    deep: dict[str, Any] = {"tier": ["B"]}
    for _ in range(20):
        deep = {"not": deep}
    r = await client.post("/v1/audiences/query", json={"filter": deep}, headers=H)
    assert r.status_code == 422 and "deeper" in r.json()["error"]["message"]


async def test_a_custom_tag_follows_its_rule_and_feeds_audiences(client: httpx.AsyncClient) -> None:
    rule = {"filter": {"and": [{"bought_category": {"category": "milk-powder"}}, {"recency_days": {"lte": 30}}]}}
    r = await client.put("/v1/tags/milk-recent", json=rule, headers=H)
    assert r.status_code == 200 and r.json()["tag"] == "custom:milk-recent"

    async def holders() -> set[str]:
        return await ids(client, {"tag": ["custom:milk-recent"]})

    assert await eventually(holders, lambda v: v == {"milk-10", "milk-toys"})
    # A new purchase moves a customer into the tag at once (scored with the order, not by the timer).
    later = paid("milk-200", "m200b", 8_000, 1, "milk-powder")
    assert (await client.post("/v1/events", json=[later], headers=H)).json()["accepted"] == 1
    assert await eventually(holders, lambda v: v == {"milk-10", "milk-toys", "milk-200"})
    assert [t["name"] for t in (await client.get("/v1/tags", headers=H)).json()] == ["milk-recent"]
    assert (await client.delete("/v1/tags/milk-recent", headers=H)).status_code == 204
    assert await eventually(holders, lambda v: v == set()) == set()
    bad = await client.put("/v1/tags/Bad Name", json=rule, headers=H)
    assert bad.status_code == 422 and bad.json()["error"]["fields"][0]["field"] == "path.name"
