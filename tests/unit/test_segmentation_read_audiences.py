"""Audience queries start from the narrowest table the filter allows (segments, customers or
profiles) instead of the union of all three, and select exactly the customers the union does:
NOT keeps meaning "not in the set", so a customer without a segment is in "not tier B". The check
runs here on SQLite and in tests/integration on PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter
from sqlalchemy import func, select

from services.segmentation.adapters.audience_sql import Compiler, required_tables
from services.segmentation.domain.audience import Filter
from shared.runtime import ServiceRuntime
from tests.segmentation_history import feed, segmentation
from tests.unit.test_audiences import NOW, history

FILTER: TypeAdapter[Any] = TypeAdapter(Filter)
TZ = "Asia/Shanghai"
ISSUE = {
    "and": [
        {"tier": ["B"]},
        {"bought_category": {"category": "milk-powder", "within_days": 90}},
        {"not": {"bought_category": {"category": "toys"}}},
    ]
}
SINCE = (NOW - timedelta(days=12)).isoformat()

# Each filter with the base it must start from; every one must select what the union selects.
CASES: list[tuple[dict[str, Any], str]] = [
    (ISSUE, "segments"),
    ({"tier": ["B"]}, "segments"),
    ({"or": [{"tier": ["S"]}, {"cell": ["1-1-2"]}]}, "segments"),
    ({"and": [{"tier": ["B", "C"]}, {"not": {"or": [{"cell": ["3-1-2"]}, {"region": ["北京"]}]}}]}, "segments"),
    ({"frequency": {"gte": 1}}, "segments"),
    ({"and": [{"recency_days": {"gte": 100}}, {"monetary_fen": {"gte": 5_000}}]}, "segments"),
    ({"recency_days": {"lte": 30}}, "customers"),
    ({"last_order_at": {"gte": SINCE}}, "customers"),
    ({"ordered_unpaid": True}, "customers"),
    ({"and": [{"first_order_at": {"lt": NOW.isoformat()}}, {"not": {"tier": ["S"]}}]}, "customers"),
    ({"and": [{"not": {"tier": ["B"]}}, {"region": ["上海", "北京"]}]}, "profiles"),
    # Nothing narrows these: a customer may hold them with no row in one table or another.
    ({"not": {"tier": ["B"]}}, "union"),
    ({"not": {"not": {"tier": ["B"]}}}, "union"),
    ({"or": [{"tier": ["S"]}, {"region": ["上海"]}]}, "union"),
    ({"frequency": {"lte": 1}}, "union"),  # no segment reads as 0
    ({"monetary_fen": {"gte": 0}}, "union"),
    ({"tag": ["interest", "dormant"]}, "union"),
    ({"interested_not_bought": "any"}, "union"),
    ({"not": {"bought_category": {"category": "toys"}}}, "union"),
    ({"and": [{"not": {"rfm_class": ["important_value"]}}, {"not": {"region": ["北京"]}}]}, "union"),
]


def parse(f: dict[str, Any]) -> Any:
    return FILTER.validate_python(f)


@pytest.mark.parametrize(("f", "base"), CASES, ids=[str(i) for i in range(len(CASES))])
def test_the_base_is_the_narrowest_table_the_filter_needs_a_row_in(f: dict[str, Any], base: str) -> None:
    assert Compiler.base_for(parse(f)) == base


def test_a_compiler_built_for_one_filter_refuses_a_filter_its_base_cannot_serve() -> None:
    comp = Compiler("m", NOW, TZ, for_filter=parse({"tier": ["B"]}))
    comp.select(parse({"cell": ["3-3-3"]}))  # also needs a segment: fine
    with pytest.raises(ValueError, match="segments"):
        comp.select(parse({"not": {"tier": ["B"]}}))
    assert required_tables(parse({"or": [{"tier": ["S"]}, {"recency_days": {"lte": 3}}]})) == frozenset()


def extra_history() -> list[dict[str, Any]]:
    """Customers known to one table only, beside test_audiences' history."""

    def event(type_: str, customer: str, data: dict[str, Any]) -> dict[str, Any]:
        return {
            "event_id": str(uuid.uuid4()),
            "type": type_,
            "merchant_id": "demo",
            "customer_id": customer,
            "occurred_at": (NOW - timedelta(days=2)).isoformat(),
            "data": data,
        }

    return [
        event("customer.registered", "profile-only", {"region": "上海"}),  # a profile, nothing else
        event("cart.added", "cart-only", {"sku": "sku-toys", "category": "toys"}),
    ]  # a tags-only segment


async def members(rt: ServiceRuntime, f: dict[str, Any], narrow: bool) -> tuple[int, list[str], list[str]]:
    """(count, every member by pages of 2, the first page of rows) as the API computes them."""
    parsed = parse(f)
    comp = Compiler("demo", NOW, TZ, for_filter=parsed if narrow else None)
    async with rt.sessions() as session:
        count = (await session.execute(select(func.count()).select_from(comp.select(parsed).subquery()))).scalar_one()
        ids: list[str] = []
        first: list[str] = []
        after = None
        while True:
            q = comp.rows(parsed)
            if after is not None:
                q = q.where(comp.u.c.customer_id > after)
            page = (await session.execute(q.order_by(comp.u.c.customer_id).limit(2))).all()
            if not page:
                break
            first = first or [repr(tuple(r)) for r in page]
            ids += [r.customer_id for r in page]
            after = page[-1].customer_id
    return count, ids, first


async def check_narrow_bases_select_what_the_union_selects(rt: ServiceRuntime) -> None:
    await feed(rt, [history() + extra_history()])
    everyone = (await members(rt, {"or": [{"not": {"tier": ["S"]}}, {"tier": ["S"]}]}, narrow=True))[1]
    assert {"profile-only", "cart-only", "fan", "unpaid", "vip", "milk-10"} <= set(everyone)
    for f, base in CASES:
        narrow, union = await members(rt, f, narrow=True), await members(rt, f, narrow=False)
        assert narrow == union, (f, base)
        assert narrow[0] == len(narrow[1]) == len(set(narrow[1])), f  # the count is the members, each once
    # NOT keeps customers without a segment, or with a segment and no tier.
    _, not_b, _ = await members(rt, {"not": {"tier": ["B"]}}, narrow=True)
    assert {"profile-only", "cart-only", "fan", "unpaid"} <= set(not_b)
    _, shanghai_not_b, _ = await members(rt, {"and": [{"not": {"tier": ["B"]}}, {"region": ["上海"]}]}, narrow=True)
    assert set(shanghai_not_b) == {"fan", "profile-only"}
    count, ids, _ = await members(rt, {"and": [{"tier": ["B", "C"]}, {"not": {"cell": ["3-1-2"]}}]}, narrow=True)
    assert count == len(ids) >= 1 and "milk-10" not in ids  # milk-10 is 3-1-2


async def test_narrow_bases_select_what_the_union_selects_on_sqlite(tmp_path: Path) -> None:
    async with segmentation(tmp_path) as rt:
        await check_narrow_bases_select_what_the_union_selects(rt)


async def test_the_api_answers_with_the_narrow_base(tmp_path: Path) -> None:
    from services.embedded import build_embedded_app
    from tests.conftest import embedded_settings, running
    from tests.factories import eventually

    key = "fg_read_audience_key"
    app = build_embedded_app(embedded_settings(tmp_path, bootstrap_api_key=key), announce=False)
    h = {"X-Api-Key": key}
    async with running(app) as c:
        events = history() + extra_history()
        assert (await c.post("/v1/events", json=events, headers=h)).json()["accepted"] == len(events)

        async def query(f: dict[str, Any]) -> dict[str, Any]:
            r = await c.post("/v1/audiences/query", json={"filter": f, "limit": 1000}, headers=h)
            assert r.status_code == 200, r.text
            return r.json()

        await eventually(lambda: query({"not": {"region": ["nowhere"]}}), lambda b: b["count"] == 9)  # everyone
        not_b = {m["customer_id"] for m in (await query({"not": {"tier": ["B"]}}))["customers"]}
        assert {"profile-only", "cart-only", "fan", "unpaid"} <= not_b
        tier_b = await query({"tier": ["B"]})
        assert tier_b["count"] == len(tier_b["customers"]) >= 1
        assert not ({m["customer_id"] for m in tier_b["customers"]} & not_b)
        page = await c.post("/v1/audiences/query", json={"filter": {"tier": ["B"]}, "limit": 1}, headers=h)
        assert page.json()["next_after"] == page.json()["customers"][0]["customer_id"]
        saved = await c.post("/v1/audiences", json={"name": "b", "filter": {"tier": ["B"]}}, headers=h)
        got = await c.get(f"/v1/audiences/{saved.json()['audience_id']}/members", headers=h)
        assert got.json()["count"] == tier_b["count"]
        csv_rows = (await c.post("/v1/audiences/query.csv", json={"filter": {"tier": ["B"]}}, headers=h)).text
        assert len(csv_rows.strip().splitlines()) == 1 + tier_b["count"]
