"""Audience queries start from the narrowest table the filter allows (segments, customers or
profiles) instead of the union of all three, and select exactly the customers the union does:
NOT keeps meaning "not in the set", so a customer without a segment is in "not tier B". The
choice of base is checked here; that each base selects what the union selects, on SQLite and
PostgreSQL, in tests/integration/test_segmentation_read_audiences.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from services.embedded import build_embedded_app
from services.segmentation.adapters.audience_sql import Compiler, required_tables
from tests.audience_history import CASES, NOW, TZ, extra_history, history, parse
from tests.conftest import embedded_settings, running
from tests.factories import eventually


@pytest.mark.parametrize(("f", "base"), CASES, ids=[str(i) for i in range(len(CASES))])
def test_the_base_is_the_narrowest_table_the_filter_needs_a_row_in(f: dict[str, Any], base: str) -> None:
    assert Compiler.base_for(parse(f)) == base


def test_a_compiler_built_for_one_filter_refuses_a_filter_its_base_cannot_serve() -> None:
    comp = Compiler("m", NOW, TZ, for_filter=parse({"tier": ["B"]}))
    comp.select(parse({"cell": ["3-3-3"]}))  # also needs a segment: fine
    with pytest.raises(ValueError, match="segments"):
        comp.select(parse({"not": {"tier": ["B"]}}))
    assert required_tables(parse({"or": [{"tier": ["S"]}, {"recency_days": {"lte": 3}}]})) == frozenset()


async def test_the_api_answers_with_the_narrow_base(tmp_path: Path) -> None:
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
