"""SMS: Aliyun Dysmsapi (the RPC API, version 2017-05-25) and a generic HTTP gateway.

Aliyun
------
Requests are form-encoded POSTs signed with signature version 1.0 (HMAC-SHA1 over the sorted,
RFC 3986-encoded parameters). A batch is grouped by template code: a group of one goes through
SendSms (with OutId = our message id), a larger group through SendBatchSms, 100 numbers a call.

SendBatchSms succeeds or fails as a whole and answers ONE BizId for all its numbers. So:
  * every Aliyun provider_id is "<BizId>:<number as sent>", and the receipt parser builds the
    same string from the report's biz_id and phone_number, so receipts match one message each;
  * a batch refused for something one message got wrong (an illegal number, missing template
    parameters) is resent one message at a time with SendSms, so one bad number does not sink
    ninety-nine good ones; other refusals (throttling, signature, account) apply to all.

Generic gateway
---------------
POST {"messages": [{"id", "phone", "text"}]} with a bearer token; the answer has one result per id.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
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
    bounded_gather,
    failed,
    guarded,
    http_status_result,
    http_url,
    retry,
    send_each,
)
from shared import clock

# ---------------------------------------------------------------------------------------------
# Aliyun signature (shared with the fake provider in tests/providers.py, which verifies it)


def percent_encode(value: str) -> str:
    """Aliyun's POP encoding: RFC 3986, UTF-8, only A-Z a-z 0-9 - _ . ~ left as they are."""
    return quote(value, safe="~")


def canonical_query(params: Mapping[str, str]) -> str:
    return "&".join(f"{percent_encode(k)}={percent_encode(v)}" for k, v in sorted(params.items()))


def aliyun_signature(params: Mapping[str, str], secret: str, method: str = "POST") -> str:
    """Signature of every parameter except Signature itself (signature version 1.0)."""
    string_to_sign = f"{method}&{percent_encode('/')}&{percent_encode(canonical_query(params))}"
    digest = hmac.new(f"{secret}&".encode(), string_to_sign.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def aliyun_number(e164: str) -> str:
    """Aliyun wants mainland numbers bare (13800138000) and others with the country code but no +."""
    number = e164.strip().removeprefix("+")
    if e164.startswith("+86") and len(number) > 2:
        return number[2:]
    return number


ALIYUN_OK = "OK"
# The provider is busy or rate limiting us: the same request will succeed later.
ALIYUN_RETRY = {
    "isv.BUSINESS_LIMIT_CONTROL": 60.0,  # per-number limits (1/min, 5/hour, …): not before a minute
    "Throttling.User": 1.0,
    "Throttling": 1.0,
    "isp.SYSTEM_ERROR": None,
    "ServiceUnavailable": None,
    "SignatureNonceUsed": None,  # a nonce collision is ours, and a new request has a new nonce
}
# Codes about one message in a SendBatchSms call: resend the group one by one to isolate it.
ALIYUN_PER_MESSAGE = frozenset(
    {
        "isv.MOBILE_NUMBER_ILLEGAL",
        "isv.TEMPLATE_MISSING_PARAMETERS",
        "isv.TEMPLATE_PARAMS_ILLEGAL",
        "isv.INVALID_JSON_PARAM",
        "isv.PARAM_LENGTH_LIMIT",
        "isv.BLACK_KEY_CONTROL_LIMIT",
    }
)
# Everything else (isv.SMS_TEMPLATE_ILLEGAL, isv.SMS_SIGNATURE_ILLEGAL, SignatureDoesNotMatch,
# InvalidAccessKeyId.NotFound, isv.AMOUNT_NOT_ENOUGH, …) will not change by waiting: failed.
ALIYUN_BATCH_LIMIT = 100
FORM_HEADERS = {"Content-Type": "application/x-www-form-urlencoded"}


class AliyunSmsConfig(HttpChannelConfig):
    access_key_id: str = Field(min_length=1)
    access_key_secret: SecretStr
    sign_name: str = Field(min_length=1)
    endpoint: str = "https://dysmsapi.aliyuncs.com/"
    region_id: str = Field(default="cn-hangzhou", min_length=1)
    concurrency: int = 16  # per call up to 100 numbers, so few connections go a long way

    @field_validator("access_key_secret")
    @classmethod
    def _secret_not_empty(cls, v: SecretStr) -> SecretStr:
        if not v.get_secret_value().strip():
            raise ValueError("must not be empty")
        return v

    @field_validator("endpoint")
    @classmethod
    def _endpoint_url(cls, v: str) -> str:
        return http_url(v)


class AliyunSmsChannel:
    kind: ChannelKind = "sms"
    provider: str = "aliyun"
    max_batch: int = ALIYUN_BATCH_LIMIT

    def __init__(self, config: AliyunSmsConfig, http: httpx.AsyncClient | None = None) -> None:
        self.config = config
        self._owner = HttpOwner(http, config.timeout, config.concurrency)
        self._secret = config.access_key_secret.get_secret_value()

    async def aclose(self) -> None:
        await self._owner.aclose()

    async def send(self, batch: Sequence[Outgoing]) -> list[SendResult]:
        results: list[SendResult | None] = [None] * len(batch)
        by_template: dict[str, list[int]] = {}
        for i, msg in enumerate(batch):
            template = msg.rendered.provider_template
            if template:
                by_template.setdefault(template, []).append(i)
            else:
                results[i] = failed("no Aliyun TemplateCode for this message", code="template_missing")
        chunks = [
            idx[n : n + ALIYUN_BATCH_LIMIT]
            for idx in by_template.values()
            for n in range(0, len(idx), ALIYUN_BATCH_LIMIT)
        ]

        async def run(chunk: list[int]) -> None:
            messages = [batch[i] for i in chunk]
            outcomes = await guarded(self._send_group(messages), lambda r: [r] * len(messages))
            for i, outcome in zip(chunk, outcomes, strict=True):
                results[i] = outcome

        await bounded_gather(chunks, run, self.config.concurrency)
        done = [r for r in results if r is not None]
        assert len(done) == len(results), "every message belongs to exactly one chunk"
        return done

    async def _send_group(self, messages: list[Outgoing]) -> list[SendResult]:
        if len(messages) == 1:
            return [await self._send_single(messages[0])]
        numbers = [aliyun_number(m.recipient) for m in messages]
        answer = await self._call(
            {
                "Action": "SendBatchSms",
                "PhoneNumberJson": _json(numbers),
                "SignNameJson": _json([self.config.sign_name] * len(messages)),
                "TemplateCode": messages[0].rendered.provider_template or "",
                "TemplateParamJson": _json([dict(m.rendered.fields) for m in messages]),
            }
        )
        if answer.outcome == "failed" and answer.code in ALIYUN_PER_MESSAGE:
            return await send_each(messages, self._send_single, self.config.concurrency)
        if answer.outcome != "sent":
            return [answer] * len(messages)
        return [SendResult("sent", provider_id=f"{answer.provider_id}:{n}") for n in numbers]

    async def _send_single(self, msg: Outgoing) -> SendResult:
        number = aliyun_number(msg.recipient)
        answer = await self._call(
            {
                "Action": "SendSms",
                "PhoneNumbers": number,
                "SignName": self.config.sign_name,
                "TemplateCode": msg.rendered.provider_template or "",
                "TemplateParam": _json(dict(msg.rendered.fields)),
                "OutId": msg.message_id,
            }
        )
        if answer.outcome == "sent":
            return SendResult("sent", provider_id=f"{answer.provider_id}:{number}")
        return answer

    async def _call(self, action_params: dict[str, str]) -> SendResult:
        """One signed RPC call; the result's provider_id is the bare BizId."""
        params = {
            "AccessKeyId": self.config.access_key_id,
            "Format": "JSON",
            "RegionId": self.config.region_id,
            "SignatureMethod": "HMAC-SHA1",
            "SignatureNonce": uuid.uuid4().hex,
            "SignatureVersion": "1.0",
            "Timestamp": clock.now().strftime("%Y-%m-%dT%H:%M:%SZ"),
            "Version": "2017-05-25",
            **action_params,
        }
        signature = aliyun_signature(params, self._secret)
        body = f"{canonical_query(params)}&Signature={percent_encode(signature)}"
        response = await self._owner.http.post(
            self.config.endpoint,
            content=body.encode(),
            headers=FORM_HEADERS,
            timeout=self._owner.timeout,
        )
        try:
            answer = orjson.loads(response.content)
            code = str(answer["Code"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return http_status_result(response) or retry(
                f"unreadable answer: {response.text[:200]}", code="bad_response"
            )
        detail = f"{code}: {answer.get('Message', '')}"
        if response.status_code >= 500 or response.status_code == 429:
            return retry(detail, code=code)
        if code == ALIYUN_OK:
            return SendResult("sent", provider_id=str(answer.get("BizId", "")))
        if code in ALIYUN_RETRY:
            return retry(detail, code=code, retry_after_s=ALIYUN_RETRY[code])
        return failed(detail, code=code)


CHINA = timezone(timedelta(hours=8))


def parse_aliyun_receipts(body: bytes) -> list[Receipt]:
    """SmsReport pushes: a JSON array, one report per number. report_time is Beijing time."""
    reports = _json_body(body)
    if not isinstance(reports, list):
        raise ValueError("expected a JSON array of reports")
    receipts = []
    for report in reports:
        success = report.get("success") in (True, "true")
        biz_id, number = report.get("biz_id"), report.get("phone_number")
        receipts.append(
            Receipt(
                provider_id=f"{biz_id}:{number}" if biz_id and number else (biz_id or None),
                message_id=report.get("out_id") or None,
                status="delivered" if success else "failed",
                code=None if success else (report.get("err_code") or None),
                at=_china_time(report.get("report_time")),
            )
        )
    return receipts


def _china_time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.strptime(value, "%Y-%m-%d %H:%M:%S").replace(tzinfo=CHINA)
    except ValueError:
        return None


# ---------------------------------------------------------------------------------------------
# Generic gateway

GENERIC_BATCH_LIMIT = 500


class GenericSmsConfig(HttpChannelConfig):
    url: str
    token: SecretStr
    batch: bool = True  # False: one message per request, for gateways without a batch endpoint
    batch_size: int = Field(default=GENERIC_BATCH_LIMIT, ge=1, le=GENERIC_BATCH_LIMIT)
    concurrency: int = 16

    @field_validator("url")
    @classmethod
    def _gateway_url(cls, v: str) -> str:
        return http_url(v)


class GenericSmsChannel:
    kind: ChannelKind = "sms"
    provider: str = "generic"

    def __init__(self, config: GenericSmsConfig, http: httpx.AsyncClient | None = None) -> None:
        self.config = config
        self.max_batch = config.batch_size if config.batch else 200
        self._owner = HttpOwner(http, config.timeout, config.concurrency)
        self._headers = {
            "Authorization": f"Bearer {config.token.get_secret_value()}",
            "Content-Type": "application/json",
        }

    async def aclose(self) -> None:
        await self._owner.aclose()

    async def send(self, batch: Sequence[Outgoing]) -> list[SendResult]:
        size = self.config.batch_size if self.config.batch else 1
        chunks = [list(batch[n : n + size]) for n in range(0, len(batch), size)]

        async def run(chunk: list[Outgoing]) -> list[SendResult]:
            return await guarded(self._post(chunk), lambda r: [r] * len(chunk))

        per_chunk = await bounded_gather(chunks, run, self.config.concurrency)
        return [result for results in per_chunk for result in results]

    async def _post(self, chunk: list[Outgoing]) -> list[SendResult]:
        body = orjson.dumps(
            {"messages": [{"id": m.message_id, "phone": m.recipient, "text": m.rendered.text or ""} for m in chunk]}
        )
        response = await self._owner.http.post(
            self.config.url, content=body, headers=self._headers, timeout=self._owner.timeout
        )
        if (by_status := http_status_result(response)) is not None:
            return [by_status] * len(chunk)
        try:
            rows = orjson.loads(response.content)["results"]
            by_id: dict[str, dict[str, Any]] = {str(r["id"]): r for r in rows}
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return [retry(f"unreadable answer: {response.text[:200]}", code="bad_response")] * len(chunk)
        return [_generic_result(by_id.get(m.message_id)) for m in chunk]


def _generic_result(row: dict[str, Any] | None) -> SendResult:
    if row is None:
        # Not answered for: safe to resend, since the gateway deduplicates on our id.
        return retry("the gateway returned no result for this message", code="no_result")
    status, code = row.get("status"), row.get("code")
    code = None if code is None else str(code)
    if status == "accepted":
        provider_id = row.get("provider_id")
        return SendResult("sent", provider_id=None if provider_id is None else str(provider_id))
    if status in ("throttled", "retry"):
        return retry(f"gateway: {status}", code=code)
    return failed(f"gateway: {status} {code or ''}".strip(), code=code)


def parse_generic_receipts(body: bytes) -> list[Receipt]:
    document = _json_body(body)
    rows = document.get("receipts") if isinstance(document, dict) else None
    if not isinstance(rows, list):
        raise ValueError('expected {"receipts": [...]}')
    receipts = []
    for row in rows:
        status = row.get("status")
        if status not in ("delivered", "failed"):
            raise ValueError(f"unknown receipt status {status!r}")
        receipts.append(
            Receipt(
                provider_id=_str_or_none(row.get("provider_id")),
                message_id=_str_or_none(row.get("id")),
                status=status,
                code=_str_or_none(row.get("code")),
                at=_iso_time(row.get("at")),
            )
        )
    return receipts


def _iso_time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        return None
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)  # a gateway without a zone means UTC


def _str_or_none(value: object) -> str | None:
    return None if value is None or value == "" else str(value)


def _json(value: object) -> str:
    return orjson.dumps(value).decode()


def _json_body(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
