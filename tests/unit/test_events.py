"""The event contract: what the envelope accepts and refuses, and the published descriptions of it.

Other systems integrate against these rules (and against /asyncapi.json), so each refusal must
name the field at fault, and the machine-readable document must cover every type and topic."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared import clock
from shared.asyncapi import asyncapi_document
from shared.events import MAX_FEN, REGISTRY, InvalidEvent, parse_event
from shared.topics import DEAD_LETTER, all_topics
from tests.factories import local_day, order_paid


def paid(**changes: Any) -> dict[str, Any]:
    event = order_paid("m-1", "u-1", "o-1", 8000, event_id="e-1")
    event.update(changes)
    return event


def refusal(raw: dict[str, Any] | bytes) -> InvalidEvent:
    with pytest.raises(InvalidEvent) as info:
        parse_event(raw)
    return info.value


def test_a_valid_order_paid_parses_with_its_offset_and_money_in_fen() -> None:
    event = parse_event(paid())
    assert event.type == "order.paid"  # type: ignore[attr-defined]
    assert event.data.amount_fen == 8000  # type: ignore[attr-defined]
    assert event.data.items[0].category == "milk-powder"  # type: ignore[attr-defined]
    assert event.occurred_at.utcoffset() == timedelta(hours=8)


def test_a_naive_occurred_at_is_refused_because_local_time_would_be_guessed() -> None:
    bad = refusal(paid(occurred_at=local_day(-1, 10).replace(tzinfo=None).isoformat()))  # no offset
    assert bad.field == "occurred_at"
    assert bad.event_id == "e-1"


def test_a_negative_amount_is_refused_naming_the_nested_field() -> None:
    event = paid()
    event["data"]["amount_fen"] = -1
    assert refusal(event).field == "data.amount_fen"


def test_an_unknown_type_is_refused_naming_type() -> None:
    bad = refusal(paid(type="order.teleported"))
    assert bad.field == "type"
    assert "order.teleported" in bad.reason


def test_a_missing_type_is_refused_naming_type() -> None:
    event = paid()
    del event["type"]
    assert refusal(event).field == "type"


def test_a_customer_scoped_event_without_customer_id_is_refused() -> None:
    event = paid()
    del event["customer_id"]
    assert refusal(event).field == "customer_id"
    # null is as bad as absent: the Kafka key and every per-customer table need it.
    assert refusal(paid(customer_id=None)).field == "customer_id"


def test_an_unknown_top_level_field_is_refused_because_the_envelope_is_closed() -> None:
    assert refusal(paid(colour="red")).field == "colour"


def test_unknown_payload_fields_are_kept_so_shops_can_send_more_than_we_know() -> None:
    event = paid()
    event["data"]["channel"] = "live-stream"
    event["data"]["items"][0]["spec"] = "900g"
    parsed = parse_event(event)
    assert parsed.data.channel == "live-stream"  # type: ignore[attr-defined]
    # And they survive re-publishing, so a downstream consumer sees them too.
    again = orjson.loads(parsed.to_json())
    assert again["data"]["channel"] == "live-stream"
    assert again["data"]["items"][0]["spec"] == "900g"


def test_a_schema_version_newer_than_the_registered_one_is_refused() -> None:
    current = REGISTRY["order.paid"].schema_version
    assert parse_event(paid(schema_version=current)).schema_version == current
    assert refusal(paid(schema_version=current + 1)).field == "schema_version"
    assert refusal(paid(schema_version=0)).field == "schema_version"


@pytest.mark.parametrize("amount", [2**63, 10**30], ids=["bigint+1", "10^30"])
def test_an_amount_beyond_what_a_bigint_holds_is_refused_naming_data_amount_fen(amount: int) -> None:
    event = paid()
    event["data"]["amount_fen"] = amount
    assert refusal(event).field == "data.amount_fen"


@pytest.mark.parametrize("value", ["\ud800", 10**30], ids=["lone-surrogate", "int-beyond-64-bits"])
def test_every_envelope_that_parses_can_be_serialized(value: Any) -> None:
    event = paid()
    event["data"]["note"] = value
    try:
        parsed = parse_event(event)
    except InvalidEvent:
        return  # refusing it is as good: what matters is that nothing accepted fails later
    assert parse_event(parsed.to_json()) == parsed


def test_invalid_json_bytes_are_refused_not_raised_as_something_else() -> None:
    with pytest.raises(InvalidEvent):
        parse_event(b"{not json")


def test_to_json_round_trips_to_an_equal_event() -> None:
    event = parse_event(paid())
    assert parse_event(event.to_json()) == event


def test_the_kafka_key_is_merchant_and_customer_so_one_customer_stays_in_order() -> None:
    assert parse_event(paid(merchant_id="m-9", customer_id="u-42")).key == b"m-9:u-42"


def test_every_registered_type_travels_on_a_known_topic() -> None:
    topics = set(all_topics())
    missing = {name: t.topic for name, t in REGISTRY.items() if t.topic not in topics}
    assert not missing
    assert DEAD_LETTER in topics


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def _resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), f"{ref} points outside the document"
    node: Any = doc
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict) and part in node, f"{ref} does not resolve"
        node = node[part]
    return node


def test_the_asyncapi_document_lists_every_topic_and_type_and_its_refs_resolve() -> None:
    doc = asyncapi_document()
    # The document must be plain JSON, as it is served.
    doc = orjson.loads(orjson.dumps(doc))
    assert {c["address"] for c in doc["channels"].values()} == set(all_topics())
    assert {m["name"] for m in doc["components"]["messages"].values()} == set(REGISTRY)
    for channel in doc["channels"].values():
        for msg in channel["messages"].values():
            assert _resolve(doc, msg["$ref"])["name"] in REGISTRY
    # Each type is listed on the channel of its own topic.
    by_address = {c["address"]: c for c in doc["channels"].values()}
    for name, t in REGISTRY.items():
        names = {_resolve(doc, m["$ref"])["name"] for m in by_address[t.topic]["messages"].values()}
        assert name in names
    refs = _refs(doc)
    assert refs
    for ref in refs:
        _resolve(doc, ref)


# ---------------------------------------------------------------- property

ids = st.text(alphabet=st.characters(categories=("L", "N"), include_characters="-_:."), min_size=1, max_size=40).filter(
    lambda s: s.strip() == s
)
offsets = st.integers(min_value=-14 * 60, max_value=14 * 60).map(lambda m: timezone(timedelta(minutes=m)))
# Instants from 55 years before the clock's now to 74 years after it (Hypothesis takes naive bounds).
_now = clock.now().replace(tzinfo=None)
moments = st.datetimes(
    min_value=_now - timedelta(days=55 * 365), max_value=_now + timedelta(days=74 * 365), timezones=offsets
)


@settings(max_examples=150, deadline=None)
@given(
    event_id=ids,
    merchant_id=ids,
    customer_id=ids,
    order_id=ids,
    at=moments,
    amounts=st.lists(st.integers(min_value=0, max_value=MAX_FEN), min_size=0, max_size=4),
    amount=st.integers(min_value=0, max_value=MAX_FEN),
)
def test_any_valid_order_paid_survives_json_with_the_same_instant(
    event_id: str, merchant_id: str, customer_id: str, order_id: str, at: datetime, amounts: list[int], amount: int
) -> None:
    raw = {
        "event_id": event_id,
        "type": "order.paid",
        "merchant_id": merchant_id,
        "customer_id": customer_id,
        "occurred_at": at.isoformat(),
        "data": {
            "order_id": order_id,
            "amount_fen": amount,
            "items": [{"sku": f"s{i}", "amount_fen": a} for i, a in enumerate(amounts)],
        },
    }
    event = parse_event(raw)
    again = parse_event(event.to_json())
    assert again == event
    assert again.occurred_at == at  # aware comparison: the same instant
    assert again.occurred_at.utcoffset() == at.utcoffset()
    assert again.data.amount_fen == amount  # type: ignore[attr-defined]
