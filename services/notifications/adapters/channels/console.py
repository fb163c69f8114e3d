"""The embedded default: no provider, every message counts as delivered at once. It records
nothing itself; the service's messages table is the record, and its API shows them."""

from __future__ import annotations

from collections.abc import Sequence

from services.notifications.adapters.channels.base import ChannelConfig, ChannelKind, Outgoing, SendResult


class ConsoleConfig(ChannelConfig):
    """No settings; unknown keys are still refused."""


class ConsoleChannel:
    kind: ChannelKind = "console"
    provider: str = "console"
    max_batch: int = 1000

    def __init__(self, config: ConsoleConfig | None = None) -> None:
        self.config = config or ConsoleConfig()

    async def send(self, batch: Sequence[Outgoing]) -> list[SendResult]:
        return [SendResult("delivered", provider_id=m.message_id) for m in batch]

    async def aclose(self) -> None:
        """Holds nothing."""
