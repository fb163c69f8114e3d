"""Notification channels: one interface (base.Channel), one real client per provider.

    channel = build_channel("wechat", merchant_settings, http=shared_client)
    results = await channel.send(batch)        # one SendResult per Outgoing, same order

`CONFIG_MODELS` lets the admin API validate a merchant's settings (pydantic, extra keys refused)
before anything is stored; `parse_receipts` turns a provider's delivery-report push into Receipts."""

from __future__ import annotations

from typing import Any

import httpx
from pydantic import BaseModel

from services.notifications.adapters.channels.base import (
    Channel,
    ChannelKind,
    Outcome,
    Outgoing,
    Receipt,
    Rendered,
    SendResult,
)
from services.notifications.adapters.channels.console import ConsoleChannel, ConsoleConfig
from services.notifications.adapters.channels.email import SmtpChannel, SmtpConfig
from services.notifications.adapters.channels.sms import (
    AliyunSmsChannel,
    AliyunSmsConfig,
    GenericSmsChannel,
    GenericSmsConfig,
    parse_aliyun_receipts,
    parse_generic_receipts,
)
from services.notifications.adapters.channels.webhook import WebhookChannel, WebhookConfig
from services.notifications.adapters.channels.wechat import WechatChannel, WechatConfig
from services.notifications.adapters.channels.wechat import parse_receipts as parse_wechat_receipts

__all__ = [
    "CHANNEL_KINDS",
    "CONFIG_MODELS",
    "RECEIPT_PROVIDERS",
    "Channel",
    "ChannelKind",
    "Outcome",
    "Outgoing",
    "Receipt",
    "Rendered",
    "SendResult",
    "build_channel",
    "parse_receipts",
]

CONFIG_MODELS: dict[str, type[BaseModel]] = {
    "wechat": WechatConfig,
    "aliyun": AliyunSmsConfig,
    "generic": GenericSmsConfig,
    "smtp": SmtpConfig,
    "webhook": WebhookConfig,
    "console": ConsoleConfig,
}
CHANNEL_KINDS: dict[str, ChannelKind] = {
    "wechat": "wechat",
    "aliyun": "sms",
    "generic": "sms",
    "smtp": "email",
    "webhook": "webhook",
    "console": "console",
}
RECEIPT_PROVIDERS = ("wechat", "aliyun", "generic")


def build_channel(provider: str, config: dict[str, Any], *, http: httpx.AsyncClient | None = None) -> Channel:
    """Validate `config` for `provider` and build its channel.

    Raises pydantic.ValidationError naming the field, or ValueError for an unknown provider. The
    HTTP channels use `http` when given (and leave closing it to the caller), else their own pool."""
    model = CONFIG_MODELS.get(provider)
    if model is None:
        raise ValueError(f"unknown provider {provider!r}; known: {', '.join(CONFIG_MODELS)}")
    settings = model.model_validate(config)
    if isinstance(settings, WechatConfig):
        return WechatChannel(settings, http)
    if isinstance(settings, AliyunSmsConfig):
        return AliyunSmsChannel(settings, http)
    if isinstance(settings, GenericSmsConfig):
        return GenericSmsChannel(settings, http)
    if isinstance(settings, WebhookConfig):
        return WebhookChannel(settings, http)
    if isinstance(settings, SmtpConfig):
        return SmtpChannel(settings)
    assert isinstance(settings, ConsoleConfig)
    return ConsoleChannel(settings)


def parse_receipts(provider: str, body: bytes, content_type: str) -> list[Receipt]:
    """Receipts from a provider's push. Raises ValueError for a body that is not a report."""
    try:
        if provider == "wechat":
            return parse_wechat_receipts(body, content_type)
        if provider == "aliyun":
            return parse_aliyun_receipts(body)
        if provider == "generic":
            return parse_generic_receipts(body)
    except (AttributeError, KeyError, TypeError) as exc:  # the right JSON type, the wrong shape
        raise ValueError(f"malformed {provider} receipt: {exc}") from None
    raise ValueError(f"{provider!r} pushes no receipts; known: {', '.join(RECEIPT_PROVIDERS)}")
