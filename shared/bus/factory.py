"""Pick the bus from settings: the only place that knows both implementations."""

from __future__ import annotations

from shared.bus.base import Bus
from shared.settings import Settings


def build_bus(settings: Settings, client_id: str = "fugou") -> Bus:
    if settings.bus == "kafka":
        from shared.bus.kafka import KafkaBus

        return KafkaBus(
            settings.kafka_bootstrap,
            client_id=f"fugou-{client_id}",
            prefix=settings.kafka_prefix,
            replication_factor=settings.kafka_replication_factor,
        )
    from shared.bus.inprocess import InProcessBus

    return InProcessBus(settings.bus_path)
