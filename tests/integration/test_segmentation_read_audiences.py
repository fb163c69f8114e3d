"""Audience queries from the narrowest base (segments, customers or profiles) select exactly the
customers the union of all three selects, counted and paged alike, on SQLite and on PostgreSQL:
NOT keeps meaning "not in the set", so a customer without a segment is in "not tier B". Which base
each filter starts from is checked in tests/unit/test_segmentation_read_audiences.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from services.segmentation.adapters.audience_sql import Compiler
from shared.runtime import ServiceRuntime
from tests.audience_history import CASES, NOW, TZ, extra_history, history, parse
from tests.conftest import Backend
from tests.segmentation_history import feed, segmentation


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


async def test_narrow_bases_select_what_the_union_selects(backend: Backend, tmp_path: Path) -> None:
    async with segmentation(tmp_path, backend.database_url("segmentation")) as rt:
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
