"""Pure rules for events posted over HTTP: which are accepted, and why the others are not."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from shared.events import INBOUND_TYPES, EnvelopeBase, InvalidEvent, ensure_serializable, parse_event

MAX_BATCH = 1000


@dataclass(slots=True)
class Outcome:
    index: int
    event_id: str | None
    status: Literal["accepted", "duplicate", "rejected"]
    reason: str | None = None
    field: str | None = None
    event: EnvelopeBase | None = None


def validate_batch(raw: list[Any], merchant_id: str) -> list[Outcome]:
    """Validate each posted envelope for this merchant. Valid ones come back 'accepted' for now;
    the inbox decides later which of those are duplicates."""
    out: list[Outcome] = []
    seen: set[str] = set()
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            out.append(Outcome(i, None, "rejected", "an event must be a JSON object", f"[{i}]"))
            continue
        try:
            event = parse_event(item)
            ensure_serializable(event)
        except InvalidEvent as bad:
            out.append(Outcome(i, bad.event_id, "rejected", bad.reason, bad.field))
            continue
        if event.type not in INBOUND_TYPES:
            out.append(
                Outcome(i, event.event_id, "rejected", f"type: {event.type!r} is not accepted from shops", "type")
            )
        elif event.merchant_id != merchant_id:
            out.append(
                Outcome(
                    i, event.event_id, "rejected", "merchant_id: does not match the API key's merchant", "merchant_id"
                )
            )
        elif event.event_id in seen:
            out.append(Outcome(i, event.event_id, "duplicate", "event_id repeated in this batch", "event_id"))
        else:
            seen.add(event.event_id)
            out.append(Outcome(i, event.event_id, "accepted", event=event))
    return out
