"""Notifications for the customer and for the outside world.

- The mini-program (customer token, ``Authorization: Bearer …``): my consents.
- Providers (no auth; they cannot hold a merchant's key): delivery receipts, SMS replies (an
  opt-out word such as ``T`` or ``退订`` opts the sender out of SMS).
- The customer's email client or browser (no auth; the token in the link is signed with the
  merchant's secret): the unsubscribe link, including RFC 8058 one-click.
"""

from __future__ import annotations

import base64
import hmac
import html
from enum import Enum
from typing import Annotated, Any, Literal, get_args

import orjson
from fastapi import APIRouter, Body, Depends, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError

from services.notifications.adapters.channels import RECEIPT_PROVIDERS, parse_receipts
from services.notifications.domain.contacts import (
    ADDRESS_FIELD,
    InvalidContact,
    InvalidToken,
    callback_token,
    is_opt_out_reply,
    normalize_phone,
    verify_unsubscribe,
)
from services.notifications.entrypoints.admin import (
    SERVICE,
    ConsentsBody,
    ConsentsView,
    Session,
    read_consents,
    refused,
    write_consents,
)
from services.notifications.service_layer import profiles, reads
from shared import clock
from shared.tenancy import Customer, Merchant
from shared.web import ApiError, customer_dependency, runtime_of

MeCustomer = Annotated[Customer, Depends(customer_dependency(SERVICE))]
ME: list[str | Enum] = ["notifications: me"]
PROVIDERS: list[str | Enum] = ["notifications: providers"]

router = APIRouter()


# ---------------------------------------------------------------- the customer's own consents


@router.get("/v1/me/consents", response_model=ConsentsView, tags=ME, summary="My consents per channel")
async def my_consents(me: MeCustomer, session: Session) -> ConsentsView:
    return await read_consents(session, me.merchant_id, me.customer_id)


@router.put(
    "/v1/me/consents",
    response_model=ConsentsView,
    tags=ME,
    summary="Grant or withdraw my consent per channel (withdrawn: nothing more is sent on it)",
)
async def put_my_consents(body: ConsentsBody, me: MeCustomer, session: Session) -> ConsentsView:
    return await write_consents(session, me.merchant_id, me.customer_id, body, "customer")


# ---------------------------------------------------------------- delivery receipts

ReceiptProvider = Literal["wechat", "aliyun", "generic"]
assert set(get_args(ReceiptProvider)) == set(RECEIPT_PROVIDERS)


class ReceiptsAnswer(BaseModel):
    matched: int = Field(description="Receipts that matched a message of ours")


@router.post(
    "/v1/notifications/receipts/{provider}",
    response_model=ReceiptsAnswer,
    tags=PROVIDERS,
    summary='Delivery receipts pushed by a provider (WeChat is answered "success" as it expects)',
    responses={422: {"description": "not a receipt report of this provider"}},
)
async def receipts(
    provider: ReceiptProvider,
    request: Request,
    session: Session,
    merchant_id: Annotated[str, Query(min_length=1, max_length=128)],
    token: Annotated[str, Query(min_length=1, max_length=128, description="From GET /v1/notifications/callbacks")],
) -> Response:
    merchant = await _merchant(request, merchant_id)
    _check_callback(merchant, token)
    raw = await request.body()
    try:
        found = parse_receipts(provider, raw, request.headers.get("content-type", ""))
    except ValueError as e:
        raise ApiError(422, "invalid_receipt", str(e), field="body") from None
    async with session.begin():
        matched = await reads.apply_receipts(session, merchant.merchant_id, provider, found, clock.now())
    if provider == "wechat":
        return PlainTextResponse("success")
    body: dict[str, Any] = {"matched": matched}
    if provider == "aliyun":  # what Aliyun's HTTP push expects back, or it pushes again
        body |= {"code": 0, "msg": "成功"}
    return JSONResponse(body)


# ---------------------------------------------------------------- SMS replies


class SmsReply(BaseModel):
    """One reply: the generic shape ``{"phone", "text"}`` or Aliyun's ``{"phone_number", "content"}``."""

    model_config = ConfigDict(extra="ignore")

    # Built only by model_validate (never __init__), so the plugin's unknown __init__ names do not matter.
    phone: str = Field(validation_alias=AliasChoices("phone", "phone_number"), max_length=64)  # type: ignore[pydantic-alias]  # either name is read
    text: str = Field(validation_alias=AliasChoices("text", "content"), max_length=2_000)  # type: ignore[pydantic-alias]  # either name is read


class RepliesAnswer(BaseModel):
    opted_out: list[str] = Field(description="Customers opted out of SMS by these replies")


async def _merchant(request: Request, merchant_id: str) -> Merchant:
    merchant = await runtime_of(request, SERVICE).tenancy.by_id(merchant_id)
    if merchant is None:
        raise ApiError(404, "not_found", f"no merchant {merchant_id!r}", field="query.merchant_id")
    return merchant


def _check_callback(merchant: Merchant, token: str) -> None:
    if not hmac.compare_digest(token, callback_token(merchant.jwt_secret.encode(), merchant.merchant_id)):
        raise ApiError(
            403,
            "forbidden",
            "wrong callback token (GET /v1/notifications/callbacks gives the URLs)",
            field="query.token",
        )


@router.post(
    "/v1/notifications/sms/replies",
    response_model=RepliesAnswer,
    tags=PROVIDERS,
    summary="Replies to the merchant's SMS (one or a JSON array): an opt-out word opts the sender out",
    responses={
        404: {"description": "no such merchant"},
        422: {"description": "a reply without a valid phone number or text (body.phone…)"},
    },
)
async def sms_replies(
    request: Request,
    session: Session,
    merchant_id: Annotated[str, Query(min_length=1, max_length=128)],
    token: Annotated[str, Query(min_length=1, max_length=128, description="From GET /v1/notifications/callbacks")],
    body: Annotated[Any, Body(description='{"phone", "text"} or Aliyun\'s [{"phone_number", "content", …}]')],
) -> Response:
    merchant = await _merchant(request, merchant_id)
    _check_callback(merchant, token)
    items, prefix = (body, "body.{i}.") if isinstance(body, list) else ([body], "body.")
    if not items or len(items) > 1000:
        raise ApiError(422, "validation_error", "one to 1000 replies", field="body")
    phones: set[str] = set()
    for i, item in enumerate(items):
        where = prefix.format(i=i)
        try:
            reply = SmsReply.model_validate(item)
        except ValidationError as e:
            raise refused(
                [
                    ((where + ".".join(str(p) for p in err["loc"])).rstrip("."), err["msg"])
                    for err in e.errors(include_url=False)
                ]
            ) from None
        try:
            phone = normalize_phone(reply.phone)
        except InvalidContact as e:
            raise ApiError(422, "invalid_phone", f"{reply.phone!r}: {e.reason}", field=where + "phone") from None
        if is_opt_out_reply(reply.text):
            phones.add(phone)
    out: set[str] = set()
    if phones:
        async with session.begin():
            for phone in sorted(phones):
                who = await profiles.customers_by_phone(session, merchant.merchant_id, phone)
                await reads.opt_out(session, merchant.merchant_id, who, "sms", "sms_reply", clock.now())
                out.update(who)
    answer: dict[str, Any] = {"opted_out": sorted(out)}
    if isinstance(body, list):  # Aliyun's batch push expects this back, or it pushes again
        answer |= {"code": 0, "msg": "成功"}
    return JSONResponse(answer)


# ---------------------------------------------------------------- unsubscribe links

_CHANNEL_NAMES = {"sms": "短信", "email": "邮件", "wechat": "微信消息"}
_PAGE = """<!doctype html>
<html lang="zh-CN"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>{title}</title></head>
<body style="font-family:sans-serif;max-width:32em;margin:3em auto;padding:0 1em;line-height:1.6">
<h1 style="font-size:1.3em">{title}</h1><p>{text}</p></body></html>
"""


def _page(title: str, text: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(_PAGE.format(title=html.escape(title), text=html.escape(text)), status_code=status)


def _claimed_merchant(token: str) -> str | None:
    """The merchant a token names (unverified: it says whose secret to verify it with)."""
    payload = token.partition(".")[0]
    try:
        doc = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (ValueError, TypeError):
        return None
    if isinstance(doc, list) and len(doc) == 4 and isinstance(doc[1], str) and doc[1]:
        return doc[1]
    return None


async def _unsubscribe(request: Request, session: Any, token: str) -> tuple[Merchant, str] | None:
    """Verify the token and opt its customer out; (merchant, channel), or None for a bad token."""
    merchant_id = _claimed_merchant(token)
    merchant = await runtime_of(request, SERVICE).tenancy.by_id(merchant_id) if merchant_id else None
    if merchant is None:
        return None
    try:
        mid, customer_id, channel = verify_unsubscribe(merchant.jwt_secret.encode(), token)
    except (InvalidToken, ValueError):
        return None
    if mid != merchant.merchant_id or channel not in ADDRESS_FIELD:
        return None
    async with session.begin():
        await reads.opt_out(session, mid, [customer_id], channel, "unsubscribe_link", clock.now())
    return merchant, channel


Token = Annotated[str, Query(min_length=1, max_length=2_000, description="From the link in the message")]


@router.get(
    "/v1/notifications/unsubscribe",
    response_class=HTMLResponse,
    tags=PROVIDERS,
    summary="The unsubscribe link in a message: opts the customer out of that channel",
    responses={400: {"description": "an invalid or tampered link"}},
)
async def unsubscribe_page(request: Request, session: Session, token: Token) -> HTMLResponse:
    done = await _unsubscribe(request, session, token)
    if done is None:
        return _page("链接无效", "这个退订链接无效或已损坏。请使用消息中的完整链接，或直接联系商家。", status=400)
    merchant, channel = done
    return _page(
        "退订成功", f"您已退订{merchant.name}的{_CHANNEL_NAMES.get(channel, channel)}，今后不会再收到此类消息。"
    )


@router.post(
    "/v1/notifications/unsubscribe",
    status_code=200,
    tags=PROVIDERS,
    summary="One-click unsubscribe (RFC 8058: List-Unsubscribe=One-Click)",
    responses={400: {"description": "an invalid or tampered link"}},
)
async def unsubscribe_one_click(request: Request, session: Session, token: Token) -> Response:
    if await _unsubscribe(request, session, token) is None:
        raise ApiError(400, "invalid_token", "invalid or tampered unsubscribe token", field="query.token")
    return Response(status_code=200)
