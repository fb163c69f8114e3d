"""One bus interface, two implementations: Apache Kafka (aiokafka) and an in-process bus backed
by a SQLite log. Both give the same guarantees the services rely on: publish returns once the
messages are durable; a subscriber sees a group's uncommitted records again after a restart;
records with one key keep their order."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Message:
    topic: str
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = field(default=())


@dataclass(frozen=True, slots=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = field(default=())


class Subscriber(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def fetch(self, max_records: int, timeout_ms: int) -> list[Record]:
        """Up to max_records records, waiting at most timeout_ms for the first."""
        ...

    async def commit(self, records: Sequence[Record]) -> None:
        """Mark everything up to these records as processed, per partition."""
        ...

    async def caught_up(self) -> bool:
        """True when every record that existed in the subscribed topics when asked has been fetched."""
        ...


class Bus(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def ensure_topics(self, topics: Sequence[str]) -> None: ...

    async def publish(self, messages: Sequence[Message]) -> None:
        """Return once every message is durably stored by the bus."""
        ...

    def subscriber(self, group_id: str, topics: Sequence[str]) -> Subscriber: ...

    async def ping(self) -> None:
        """Raise if the bus cannot be reached (for /readyz)."""
        ...


def committed_positions(records: Sequence[Record]) -> dict[tuple[str, int], int]:
    """The next offset to read per (topic, partition): last processed offset + 1."""
    out: dict[tuple[str, int], int] = {}
    for r in records:
        tp = (r.topic, r.partition)
        if r.offset + 1 > out.get(tp, -1):
            out[tp] = r.offset + 1
    return out
