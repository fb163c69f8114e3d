"""Topic names. The event registry decides which type travels on which topic; this module
adds the ones that carry no registered type (the dead-letter topic) and partition counts."""

from __future__ import annotations

from shared.events import REGISTRY

DEAD_LETTER = "fugou.dlq"

# Shop topics carry the most traffic; partitions bound consumer parallelism per group.
PARTITIONS: dict[str, int] = {
    "shop.orders": 8,
    "shop.customers": 4,
    "shop.behaviour": 8,
    "fugou.merchants": 1,
    "fugou.segments": 4,
    "fugou.coupons": 4,
    "fugou.loyalty": 4,
    "fugou.notifications": 4,
    DEAD_LETTER: 1,
}


def topic_for(event_type: str) -> str:
    return REGISTRY[event_type].topic


def all_topics() -> list[str]:
    topics = {t.topic for t in REGISTRY.values()} | set(PARTITIONS)
    return sorted(topics)


def partitions(topic: str) -> int:
    return PARTITIONS.get(topic, 4)
