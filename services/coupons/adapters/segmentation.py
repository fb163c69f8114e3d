"""Audiences as coupons resolves them: here when it can, through segmentation's API when it must.

A rule's audience is a saved segmentation audience (``{"audience_id": ...}``), an inline filter
in segmentation's language (``{"filter": {...}}``), or none.

- **Local**: a filter that reads only ``tier``, ``cell``, ``rfm_class`` and ``tag`` (under any
  and / or / not) is evaluated on ``customer_segments``, coupons's replica of segment.changed:
  no network, set-based, as fresh as the last segment event applied.
- **Remote**: anything else (R/F/M ranges, dates, regions, categories, behaviour) and saved
  audiences whose filter is not local go to segmentation over HTTP with the internal token
  (``X-Fugou-Internal-Token`` + ``X-Merchant-Id``): the members of a whole audience are streamed
  as CSV (``/v1/audiences/query.csv``, ``/v1/audiences/{id}/members.csv``); whether a handful of
  customers belong (event triggers) is one ``POST /v1/audiences/query`` with ``customer_ids``
  per 1,000 candidates, so a batch costs a request per rule, not per event.

The client itself (``SegmentationClient``, one per running service) is shared with notifications'
campaigns: ``shared.segmentation_api``, re-exported here."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy import Table, and_, func, not_, or_
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import ColumnElement, FunctionElement
from sqlalchemy.types import Boolean

from services.coupons.domain.rules import RFM_CLASSES
from shared.segmentation_api import (  # noqa: F401 - coupons reads segmentation through this module
    AudienceNotFound,
    AudienceRejected,
    SegmentationClient,
    SegmentationUnavailable,
    client_for,
    client_of,
    register,
    release,
)

LOCAL_KINDS = frozenset({"tier", "cell", "rfm_class", "tag"})
TIERS = frozenset({"S", "A", "B", "C"})
_CELL = re.compile(r"^[1-5]-[1-5]-[1-5]$")
MAX_DEPTH = 12


# ---------------------------------------------------------------- the filter, read here


def _single(f: object, at: str) -> tuple[str, Any]:
    if not isinstance(f, Mapping) or len(f) != 1:
        raise AudienceRejected(at, "a condition is an object with exactly one key")
    return next(iter(f.items()))


def is_local(f: object) -> bool:
    """Whether the filter reads only what customer_segments holds (tier, cell, class, tags)."""
    if not isinstance(f, Mapping) or len(f) != 1:
        return False
    kind, value = next(iter(f.items()))
    if kind in ("and", "or"):
        return isinstance(value, list) and bool(value) and all(is_local(x) for x in value)
    if kind == "not":
        return is_local(value)
    return kind in LOCAL_KINDS


def needs_segment(f: Mapping[str, Any]) -> bool:
    """Whether the filter can hold only of a customer with a segment: then its members are all
    in customer_segments and the replica alone can list them (a NOT can hold of anyone)."""
    kind, value = next(iter(f.items()))
    if kind == "and":
        return any(needs_segment(x) for x in value)
    if kind == "or":
        return all(needs_segment(x) for x in value)
    return kind in LOCAL_KINDS


def check_local(f: object, at: str = "audience.filter", level: int = 1) -> None:
    """Validate a local filter as segmentation would, naming the field at fault."""
    if level > MAX_DEPTH:
        raise AudienceRejected(at, f"filter nested deeper than {MAX_DEPTH} levels")
    kind, value = _single(f, at)
    where = f"{at}.{kind}"
    if kind in ("and", "or"):
        if not isinstance(value, list) or not value:
            raise AudienceRejected(where, f"{kind} takes a non-empty list of conditions")
        for i, x in enumerate(value):
            check_local(x, f"{where}.{i}", level + 1)
        return
    if kind == "not":
        check_local(value, where, level + 1)
        return
    if kind not in LOCAL_KINDS:
        raise AudienceRejected(where, f"{kind!r} is not evaluated locally")
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise AudienceRejected(where, f"{kind} takes a non-empty list of strings")
    for v in value:
        if kind == "tier" and v not in TIERS:
            raise AudienceRejected(where, f"unknown tier {v!r}: one of S, A, B, C")
        if kind == "cell" and not _CELL.match(v):
            raise AudienceRejected(where, f"a cell is R-F-M levels like '3-2-1', got {v!r}")
        if kind == "rfm_class" and v not in RFM_CLASSES:
            raise AudienceRejected(where, f"unknown rfm_class {v!r}: one of {', '.join(sorted(RFM_CLASSES))}")
        if kind == "tag" and not 1 <= len(v) <= 160:
            raise AudienceRejected(where, "a tag is 1..160 characters")


@dataclass(frozen=True, slots=True)
class Segment:
    """A customer's segment as the replica holds it (all empty when the customer has none)."""

    tier: str | None = None
    cell: str | None = None
    rfm_class: str | None = None
    tags: frozenset[str] = field(default_factory=frozenset)


NO_SEGMENT = Segment()


def matches(f: Mapping[str, Any], s: Segment) -> bool:
    """A local filter on one customer's segment (the same semantics as ``where``)."""
    kind, value = next(iter(f.items()))
    if kind == "and":
        return all(matches(x, s) for x in value)
    if kind == "or":
        return any(matches(x, s) for x in value)
    if kind == "not":
        return not matches(value, s)
    if kind == "tag":
        return not s.tags.isdisjoint(value)
    return getattr(s, kind) in value


class _contains_text(FunctionElement[bool]):
    """Whether ``haystack`` contains ``needle`` verbatim (no LIKE wildcards, case-sensitive)."""

    inherit_cache = True
    type = Boolean()
    name = "contains_text"


@compiles(_contains_text)
def _contains_text_sqlite(element: _contains_text, compiler: Any, **kw: Any) -> str:
    haystack, needle = list(element.clauses)
    return f"(instr({compiler.process(haystack, **kw)}, {compiler.process(needle, **kw)}) > 0)"


@compiles(_contains_text, "postgresql")
def _contains_text_postgresql(element: _contains_text, compiler: Any, **kw: Any) -> str:
    haystack, needle = list(element.clauses)
    return f"(strpos({compiler.process(haystack, **kw)}, {compiler.process(needle, **kw)}) > 0)"


def where(f: Mapping[str, Any], t: Table, negated: bool = False) -> ColumnElement[bool]:
    """A local filter as a predicate on customer_segments rows. Under a NOT, columns are
    coalesced so that it means "not in the set" (a customer without a tier is not in tier B);
    elsewhere a NULL acts as false and the bare column is compared. Tags are a JSON array,
    matched on each tag's exact JSON string."""
    kind, value = next(iter(f.items()))
    if kind == "and":
        return and_(*[where(x, t, negated) for x in value])
    if kind == "or":
        return or_(*[where(x, t, negated) for x in value])
    if kind == "not":
        return not_(where(value, t, not negated))
    if kind == "tag":
        return or_(*[_contains_text(t.c.tags, orjson.dumps(tag).decode()) for tag in value])
    col = {"tier": t.c.tier, "cell": t.c.cell, "rfm_class": t.c.rfm_class}[kind]
    return (func.coalesce(col, "") if negated else col).in_(list(value))


def segment_of(row: Any) -> Segment:
    return Segment(row.tier, row.cell, row.rfm_class, frozenset(orjson.loads(row.tags or "[]")))


# ---------------------------------------------------------------- segmentation's API
