"""WeChat mini-program subscribe messages (服务通知) through the official server API.

One message per API call, so a batch is sent with bounded concurrency. The access token is
fetched once and shared by every concurrent send until shortly before it expires; when WeChat
says it is invalid (another instance refreshed it, or it expired early) it is refreshed once and
the message retried once.

Several instances with the same app each fetch their own token, and every fetch makes the
previous one expire within minutes; with many instances, point `api_base` at a token-holding
proxy or move to /cgi-bin/stable_token."""

from __future__ import annotations

import asyncio
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import quote

import httpx
import orjson
from pydantic import Field, SecretStr, field_validator

from services.notifications.adapters.channels.base import (
    ChannelKind,
    HttpChannelConfig,
    HttpOwner,
    Outgoing,
    Receipt,
    SendResult,
    failed,
    http_status_result,
    http_url,
    retry,
    send_each,
)

# The token is invalid or expired: refresh it and try the message again, once.
TOKEN_ERRCODES = frozenset({40001, 42001, 40014})
# WeChat is busy or the app hit its call quota: the message itself is fine.
RETRY_ERRCODES = frozenset({-1, 45009, 45011})
# Everything else (43101 user refused / no credit left, 47003 bad data, 40003 bad openid,
# 40037 bad template id, 41030 bad page, …) is about this message and will not change by waiting.

JSON_HEADERS = {"Content-Type": "application/json"}


class WechatConfig(HttpChannelConfig):
    app_id: str = Field(min_length=1)
    app_secret: SecretStr
    api_base: str = "https://api.weixin.qq.com"
    miniprogram_state: Literal["formal", "trial", "developer"] = "formal"
    lang: Literal["zh_CN", "en_US", "zh_HK", "zh_TW"] = "zh_CN"
    # Refresh this long before WeChat's stated expiry, so no send races the deadline.
    token_margin_s: float = Field(default=300.0, ge=0)

    @field_validator("app_secret")
    @classmethod
    def _secret_not_empty(cls, v: SecretStr) -> SecretStr:
        if not v.get_secret_value().strip():
            raise ValueError("must not be empty")
        return v

    @field_validator("api_base")
    @classmethod
    def _api_base_url(cls, v: str) -> str:
        return http_url(v).rstrip("/")


@dataclass(frozen=True, slots=True)
class _Token:
    value: str
    valid_until: float  # time.monotonic()


class _TokenUnavailable(Exception):
    def __init__(self, result: SendResult) -> None:
        super().__init__(result.detail)
        self.result = result


class WechatChannel:
    kind: ChannelKind = "wechat"
    provider: str = "wechat"
    max_batch: int = 200

    def __init__(self, config: WechatConfig, http: httpx.AsyncClient | None = None) -> None:
        self.config = config
        self._owner = HttpOwner(http, config.timeout, config.concurrency)
        self._token_url = f"{config.api_base}/cgi-bin/token"
        self._send_url = f"{config.api_base}/cgi-bin/message/subscribe/send?access_token="
        self._token: _Token | None = None
        # One fetch in flight at a time; every send that needs a token awaits the same one.
        self._refreshing: asyncio.Future[_Token] | None = None
        self.token_fetches = 0  # how many times we asked WeChat for a token (for logs and tests)

    async def send(self, batch: Sequence[Outgoing]) -> list[SendResult]:
        return await send_each(batch, self._send_one, self.config.concurrency)

    async def aclose(self) -> None:
        await self._owner.aclose()

    async def _send_one(self, msg: Outgoing) -> SendResult:
        if not msg.rendered.provider_template:
            return failed("no WeChat template_id for this message", code="template_missing")
        body = self._body(msg)
        try:
            token = await self._access_token()
            result, errcode = await self._post(token, body)
            if errcode in TOKEN_ERRCODES:
                self._invalidate(token)
                token = await self._access_token()
                result, errcode = await self._post(token, body)
                if errcode in TOKEN_ERRCODES:
                    # A fresh token refused twice in a row: WeChat or another instance is
                    # churning tokens; let the service back off rather than loop here.
                    return retry(result.detail or "token refused", code=result.code)
            return result
        except _TokenUnavailable as exc:
            return exc.result

    def _body(self, msg: Outgoing) -> bytes:
        r = msg.rendered
        payload: dict[str, Any] = {
            "touser": msg.recipient,
            "template_id": r.provider_template,
            "miniprogram_state": self.config.miniprogram_state,
            "lang": self.config.lang,
            "data": {name: {"value": value} for name, value in r.fields.items()},
        }
        if r.page:
            payload["page"] = r.page
        return orjson.dumps(payload)

    async def _post(self, token: str, body: bytes) -> tuple[SendResult, int | None]:
        response = await self._owner.http.post(
            self._send_url + quote(token, safe=""),
            content=body,
            headers=JSON_HEADERS,
            timeout=self._owner.timeout,
        )
        if (by_status := http_status_result(response)) is not None:
            return by_status, None
        try:
            answer = orjson.loads(response.content)
            errcode = int(answer.get("errcode", 0))
        except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
            return retry(f"unreadable answer: {response.text[:200]}", code="bad_response"), None
        return classify(errcode, str(answer.get("errmsg", "")), answer.get("msgid")), errcode

    async def _access_token(self) -> str:
        token = self._token
        if token is not None and time.monotonic() < token.valid_until:
            return token.value
        if self._refreshing is None:
            self._refreshing = asyncio.ensure_future(self._fetch_token())
        # shield: one caller being cancelled must not cancel the fetch the others wait on.
        return (await asyncio.shield(self._refreshing)).value

    def _invalidate(self, token: str) -> None:
        # Only drop the token that failed: if a concurrent send already refreshed it, keep that.
        if self._token is not None and self._token.value == token:
            self._token = None

    async def _fetch_token(self) -> _Token:
        try:
            self.token_fetches += 1
            response = await self._owner.http.get(
                self._token_url,
                params={
                    "grant_type": "client_credential",
                    "appid": self.config.app_id,
                    "secret": self.config.app_secret.get_secret_value(),
                },
                timeout=self._owner.timeout,
            )
            if (by_status := http_status_result(response)) is not None:
                raise _TokenUnavailable(by_status)
            try:
                answer = orjson.loads(response.content)
            except orjson.JSONDecodeError:
                raise _TokenUnavailable(retry("unreadable token answer", code="bad_response")) from None
            if "access_token" not in answer:
                errcode = int(answer.get("errcode", -1))
                detail = f"token: {answer.get('errmsg', '')}"
                # A wrong appid/secret or an IP not on the whitelist needs a person, not a retry.
                outcome = (
                    retry(detail, code=str(errcode)) if errcode in RETRY_ERRCODES else failed(detail, code=str(errcode))
                )
                raise _TokenUnavailable(outcome)
            expires_in = float(answer.get("expires_in", 7200))
            margin = self.config.token_margin_s if expires_in > self.config.token_margin_s else expires_in / 2
            self._token = _Token(str(answer["access_token"]), time.monotonic() + expires_in - margin)
            return self._token
        finally:
            self._refreshing = None


def classify(errcode: int, errmsg: str, msgid: object) -> SendResult:
    if errcode == 0:
        return SendResult("sent", provider_id=None if msgid is None else str(msgid))
    detail = f"{errcode}: {errmsg}"
    if errcode in RETRY_ERRCODES or errcode in TOKEN_ERRCODES:
        return retry(detail, code=str(errcode))
    return failed(detail, code=str(errcode))


def parse_receipts(body: bytes, content_type: str) -> list[Receipt]:
    """subscribe_msg_sent_event pushes, JSON or XML (as configured in the mini-program console).
    Other events (a user accepting or rejecting a subscription) are not receipts: []."""
    event = _parse_xml(body) if "xml" in content_type.lower() else _parse_json(body)
    if event.get("Event") != "subscribe_msg_sent_event":
        return []
    entries = (event.get("SubscribeMsgSentEvent") or {}).get("List")
    if isinstance(entries, dict):
        entries = [entries]
    if not isinstance(entries, list):
        raise ValueError("subscribe_msg_sent_event without a List")
    at = _timestamp(event.get("CreateTime"))
    receipts = []
    for entry in entries:
        error_code = str(entry.get("ErrorCode", "")).strip()
        msg_id = entry.get("MsgID")
        receipts.append(
            Receipt(
                provider_id=None if msg_id in (None, "") else str(msg_id),
                message_id=None,  # WeChat does not echo anything of ours
                status="delivered" if error_code == "0" else "failed",
                code=None if error_code == "0" else (error_code or None),
                at=at,
            )
        )
    return receipts


def _parse_json(body: bytes) -> dict[str, Any]:
    try:
        event = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(event, dict):
        raise ValueError("expected a JSON object")
    return event


def _parse_xml(body: bytes) -> dict[str, Any]:
    # WeChat never sends a DTD; refusing one keeps entity-expansion attacks out of the parser.
    if b"<!DOCTYPE" in body.upper() or b"<!ENTITY" in body.upper():
        raise ValueError("DTDs are not accepted")
    try:
        root = ET.fromstring(body)
    except ET.ParseError as exc:
        raise ValueError(f"not XML: {exc}") from None
    event: dict[str, Any] = {child.tag: (child.text or "").strip() for child in root if len(child) == 0}
    sent = root.find("SubscribeMsgSentEvent")
    if sent is not None:
        items = [{leaf.tag: (leaf.text or "").strip() for leaf in item} for item in sent.findall("List")]
        event["SubscribeMsgSentEvent"] = {"List": items}
    return event


def _timestamp(value: object) -> datetime | None:
    try:
        return datetime.fromtimestamp(int(str(value)), UTC)
    except (TypeError, ValueError, OverflowError):
        return None
