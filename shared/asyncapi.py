"""An AsyncAPI 3.0 document of every topic and payload, built from the event registry, so the
published description cannot drift from what the code validates."""

from __future__ import annotations

from typing import Any

from shared.events import ENVELOPE_MODELS, REGISTRY
from shared.topics import DEAD_LETTER, all_topics, partitions


def asyncapi_document() -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    channels: dict[str, Any] = {}
    for name, model in ENVELOPE_MODELS.items():
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for sub_name, sub in schema.pop("$defs", {}).items():
            schemas.setdefault(sub_name, sub)
        schemas[model.__name__] = schema
        t = REGISTRY[name]
        messages[name.replace(".", "_")] = {
            "name": name,
            "title": name,
            "summary": t.description,
            "contentType": "application/json",
            "headers": {"type": "object", "description": "Kafka key: merchant_id:customer_id"},
            "payload": {"$ref": f"#/components/schemas/{model.__name__}"},
            "x-schema-version": t.schema_version,
            "x-direction": t.direction,
        }
    for topic in all_topics():
        msgs = {
            n.replace(".", "_"): {"$ref": f"#/components/messages/{n.replace('.', '_')}"}
            for n, t in REGISTRY.items()
            if t.topic == topic
        }
        channels[topic.replace(".", "_")] = {
            "address": topic,
            "description": (
                "Poison messages with the reason in the 'reason' header, and the source topic, "
                "partition and offset in headers."
                if topic == DEAD_LETTER
                else f"Events keyed by merchant_id:customer_id; {partitions(topic)} partitions."
            ),
            "messages": msgs,
        }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Fugou events",
            "version": "1",
            "description": "Every event is one JSON envelope, the same on Kafka and over POST /v1/events. "
            "event_id is the idempotency key; money is integer fen; times carry offsets.",
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "components": {"messages": messages, "schemas": schemas},
    }


def event_table_markdown() -> str:
    """The table of event types in docs/events.md."""
    lines = ["| type | topic | schema version | direction | what |", "| --- | --- | --- | --- | --- |"]
    for name, t in REGISTRY.items():
        lines.append(f"| `{name}` | `{t.topic}` | {t.schema_version} | {t.direction} | {t.description} |")
    return "\n".join(lines)


if __name__ == "__main__":  # python -m shared.asyncapi > docs/asyncapi.json
    import json

    print(json.dumps(asyncapi_document(), indent=2, ensure_ascii=False))
