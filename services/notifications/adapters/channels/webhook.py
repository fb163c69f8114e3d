"""Webhook: POST each message as JSON to the merchant's URL, signed so the receiver can check it
came from us: X-Fugou-Signature = "sha256=" + hex HMAC-SHA256(secret, raw body)."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

import httpx
import orjson
from pydantic import SecretStr, field_validator

from services.notifications.adapters.channels.base import (
    ChannelKind,
    HttpChannelConfig,
    HttpOwner,
    Outgoing,
    SendResult,
    http_status_result,
    http_url,
    send_each,
)


def webhook_signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify_webhook_signature(secret: str, body: bytes, header: str | None) -> bool:
    return header is not None and hmac.compare_digest(webhook_signature(secret, body), header)


class WebhookConfig(HttpChannelConfig):
    url: str
    secret: SecretStr
    concurrency: int = 32

    @field_validator("url")
    @classmethod
    def _hook_url(cls, v: str) -> str:
        return http_url(v)

    @field_validator("secret")
    @classmethod
    def _secret_long_enough(cls, v: SecretStr) -> SecretStr:
        if len(v.get_secret_value()) < 16:
            raise ValueError("must be at least 16 characters")
        return v


class WebhookChannel:
    kind: ChannelKind = "webhook"
    provider: str = "webhook"
    max_batch: int = 200

    def __init__(self, config: WebhookConfig, http: httpx.AsyncClient | None = None) -> None:
        self.config = config
        self._owner = HttpOwner(http, config.timeout, config.concurrency)
        self._secret = config.secret.get_secret_value()

    async def send(self, batch: Sequence[Outgoing]) -> list[SendResult]:
        return await send_each(batch, self._send_one, self.config.concurrency)

    async def aclose(self) -> None:
        await self._owner.aclose()

    async def _send_one(self, msg: Outgoing) -> SendResult:
        r = msg.rendered
        body = orjson.dumps(
            {
                "message_id": msg.message_id,
                "merchant_id": msg.merchant_id,
                "customer_id": msg.customer_id,
                "recipient": msg.recipient,
                "subject": r.subject,
                "text": r.text,
                "fields": dict(r.fields),
                "unsubscribe_url": r.unsubscribe_url,
            }
        )
        response = await self._owner.http.post(
            self.config.url,
            content=body,
            timeout=self._owner.timeout,
            headers={
                "Content-Type": "application/json",
                "X-Fugou-Message-Id": msg.message_id,
                "X-Fugou-Signature": webhook_signature(self._secret, body),
            },
        )
        if (by_status := http_status_result(response)) is not None:
            return by_status
        if response.status_code >= 300:  # redirects are not followed: a moved hook is a config error
            return SendResult("failed", code=str(response.status_code), detail=f"HTTP {response.status_code}")
        return SendResult("sent", detail=f"HTTP {response.status_code}")
