"""Each notification channel against a real server on loopback: the fake providers of
tests/providers.py (which check what the real APIs check, signatures included) and aiosmtpd."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from services.notifications.adapters.channels import (
    CONFIG_MODELS,
    Channel,
    Outgoing,
    Receipt,
    Rendered,
    SendResult,
    build_channel,
    parse_receipts,
)
from services.notifications.adapters.channels.sms import aliyun_signature, canonical_query, percent_encode
from tests.providers import (
    REFUSING_OPENID,
    WEBHOOK_SECRET,
    FakeProviders,
    FakeSmtp,
    _free_port,
    serve_in_process,
)

pytestmark = pytest.mark.timeout(60)

SEND = "/cgi-bin/message/subscribe/send"


@pytest.fixture(scope="module")
def server() -> Iterator[FakeProviders]:
    with FakeProviders() as fake:
        yield fake


@pytest.fixture
def fake(server: FakeProviders) -> FakeProviders:
    server.reset()
    server.configure(refusing_openids=[REFUSING_OPENID])
    return server


@pytest.fixture
def smtp() -> Iterator[FakeSmtp]:
    with FakeSmtp() as server:
        yield server


@asynccontextmanager
async def channel(provider: str, config: dict[str, Any]) -> AsyncIterator[Channel]:
    built = build_channel(provider, config)
    try:
        yield built
    finally:
        await built.aclose()


def wechat_message(n: int, openid: str | None = None, **fields: str) -> Outgoing:
    return Outgoing(
        message_id=f"m-{n}",
        merchant_id="shop-1",
        customer_id=f"c-{n}",
        recipient=openid or f"openid-{n}",
        rendered=Rendered(
            provider_template="TPL_REPURCHASE_01",
            page="pages/coupon/index?id=7",
            fields=fields or {"thing1": "您的优惠券即将到期", "time2": "2026-05-01 10:00"},
        ),
    )


def sms_message(n: int, phone: str = "", template: str = "SMS_150000001", **fields: str) -> Outgoing:
    return Outgoing(
        message_id=f"s-{n}",
        merchant_id="shop-1",
        customer_id=f"c-{n}",
        recipient=phone or f"+86138{n:08d}",
        rendered=Rendered(
            text=f"【复购】您有一张优惠券 {n}",
            provider_template=template,
            fields=fields or {"name": f"顾客{n}", "amount": "20"},
        ),
    )


def mail(n: int, to: str = "", *, html: str | None = "<p>Hello</p>", unsubscribe: str | None = None) -> Outgoing:
    return Outgoing(
        message_id=f"e-{n}",
        merchant_id="shop-1",
        customer_id=f"c-{n}",
        recipient=to or f"buyer{n}@example.test",
        rendered=Rendered(subject=f"回来看看 #{n}", text=f"Hello {n}", html=html, unsubscribe_url=unsubscribe),
    )


def outcomes(results: list[SendResult]) -> list[str]:
    return [r.outcome for r in results]


# -- the Aliyun signature, against Aliyun's own published example ------------------------------


def test_aliyun_signature_matches_the_example_in_aliyuns_documentation() -> None:
    params = {
        "Timestamp": "2016-02-23T12:46:24Z",
        "Format": "XML",
        "AccessKeyId": "testid",
        "Action": "DescribeRegions",
        "SignatureMethod": "HMAC-SHA1",
        "SignatureNonce": "3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf",
        "Version": "2014-05-26",
        "SignatureVersion": "1.0",
    }
    assert canonical_query(params).startswith("AccessKeyId=testid&Action=DescribeRegions&Format=XML&")
    assert aliyun_signature(params, "testsecret", "GET") == "OLeaidS1JvxuMvnyHOwuJ+uX5qY="
    assert percent_encode("a b*c~d/复") == "a%20b%2Ac~d%2F%E5%A4%8D"


# -- console ------------------------------------------------------------------------------------


async def test_the_console_channel_delivers_every_message_at_once_under_its_own_id() -> None:
    async with channel("console", {}) as console:
        results = await console.send([wechat_message(1), wechat_message(2)])
    assert [(r.outcome, r.provider_id) for r in results] == [("delivered", "m-1"), ("delivered", "m-2")]


# -- WeChat -------------------------------------------------------------------------------------


async def test_wechat_sends_a_subscribe_message_in_the_official_shape(fake: FakeProviders) -> None:
    async with channel("wechat", fake.channel_config("wechat", miniprogram_state="trial")) as wechat:
        [result] = await wechat.send([wechat_message(1)])
    assert result.outcome == "sent" and result.provider_id and result.provider_id.isdigit()
    [body] = fake.received("wechat")
    assert body == {
        "touser": "openid-1",
        "template_id": "TPL_REPURCHASE_01",
        "page": "pages/coupon/index?id=7",
        "miniprogram_state": "trial",
        "lang": "zh_CN",
        "data": {"thing1": {"value": "您的优惠券即将到期"}, "time2": {"value": "2026-05-01 10:00"}},
    }


async def test_wechat_fetches_one_token_for_a_concurrent_batch_of_a_hundred(fake: FakeProviders) -> None:
    async with channel("wechat", fake.channel_config("wechat")) as wechat:
        results = await wechat.send([wechat_message(n) for n in range(100)])
        results += await wechat.send([wechat_message(n) for n in range(100, 110)])
    assert outcomes(results) == ["sent"] * 110
    assert len({r.provider_id for r in results}) == 110
    assert fake.count("wechat_token") == 1
    assert sorted(b["touser"] for b in fake.received("wechat")) == sorted(f"openid-{n}" for n in range(110))


async def test_wechat_refreshes_a_token_wechat_no_longer_accepts_and_resends_once(fake: FakeProviders) -> None:
    async with channel("wechat", fake.channel_config("wechat")) as wechat:
        assert outcomes(await wechat.send([wechat_message(1)])) == ["sent"]
        fake.expire_tokens()
        assert outcomes(await wechat.send([wechat_message(n) for n in range(2, 22)])) == ["sent"] * 20
    assert fake.count("wechat_token") == 2
    assert fake.count("wechat") == 21


async def test_wechat_fails_a_refused_subscription_and_retries_a_rate_limit(fake: FakeProviders) -> None:
    fake.script(SEND, {"json": {"errcode": 45009, "errmsg": "reach max api daily quota limit"}})
    async with channel("wechat", fake.channel_config("wechat", concurrency=1)) as wechat:
        limited, refused, fine = await wechat.send(
            [wechat_message(1), wechat_message(2, openid=REFUSING_OPENID), wechat_message(3)]
        )
    assert (limited.outcome, limited.code) == ("retry", "45009")
    assert (refused.outcome, refused.code) == ("failed", "43101")
    assert fine.outcome == "sent"
    assert [b["touser"] for b in fake.received("wechat")] == ["openid-3"]


async def test_wechat_fails_a_thing_field_longer_than_wechat_allows(fake: FakeProviders) -> None:
    async with channel("wechat", fake.channel_config("wechat")) as wechat:
        [result] = await wechat.send([wechat_message(1, thing1="这是一段超过二十个字符的很长很长很长的优惠券说明文字")])
    assert (result.outcome, result.code) == ("failed", "47003")


async def test_wechat_retries_on_a_server_error_system_busy_and_a_timeout(fake: FakeProviders) -> None:
    fake.script(
        SEND, {"status": 502}, {"json": {"errcode": -1, "errmsg": "system error"}}, {"delay": 1.5, "pass": True}
    )
    async with channel("wechat", fake.channel_config("wechat", concurrency=1, timeout=0.5)) as wechat:
        results = await wechat.send([wechat_message(n) for n in range(4)])
    assert [(r.outcome, r.code) for r in results] == [
        ("retry", "502"),
        ("retry", "-1"),
        ("retry", "network"),
        ("sent", None),
    ]


async def test_wechat_fails_the_whole_batch_on_a_wrong_app_secret_after_one_token_request(fake: FakeProviders) -> None:
    async with channel("wechat", fake.channel_config("wechat", app_secret="not-the-secret")) as wechat:
        results = await wechat.send([wechat_message(n) for n in range(10)])
    assert {(r.outcome, r.code) for r in results} == {("failed", "40125")}
    assert fake.requests("/cgi-bin/token") == 1
    assert fake.count("wechat") == 0


# -- Aliyun SMS ---------------------------------------------------------------------------------


async def test_aliyun_sends_one_message_with_sendsms_signed_and_tagged_with_our_id(fake: FakeProviders) -> None:
    async with channel("aliyun", fake.channel_config("aliyun")) as aliyun:
        [result] = await aliyun.send([sms_message(1, phone="+8613800138000", name="小王", amount="20")])
    [call] = fake.received("aliyun")
    params = call["params"]
    assert params["Action"] == "SendSms" and params["Version"] == "2017-05-25"
    assert params["PhoneNumbers"] == "13800138000"
    assert params["SignName"] == "复购测试" and params["TemplateCode"] == "SMS_150000001"
    assert orjson.loads(params["TemplateParam"]) == {"name": "小王", "amount": "20"}
    assert params["OutId"] == "s-1"
    biz_id = result.provider_id.split(":")[0] if result.provider_id else ""
    assert result.outcome == "sent" and result.provider_id == f"{biz_id}:13800138000" and biz_id.endswith("^0")


async def test_aliyun_sends_150_messages_of_one_template_in_two_batch_calls(fake: FakeProviders) -> None:
    batch = [sms_message(n) for n in range(150)]
    async with channel("aliyun", fake.channel_config("aliyun")) as aliyun:
        results = [
            r for n in range(0, 150, aliyun.max_batch) for r in await aliyun.send(batch[n : n + aliyun.max_batch])
        ]
    assert outcomes(results) == ["sent"] * 150
    stats = fake.stats()["counts"]
    assert stats.get("aliyun.SendBatchSms") == 2 and "aliyun.SendSms" not in stats
    calls = [c["params"] for c in fake.received("aliyun")]
    numbers = [n for c in calls for n in orjson.loads(c["PhoneNumberJson"])]
    template_params = [p for c in calls for p in orjson.loads(c["TemplateParamJson"])]
    assert sorted(numbers) == sorted(f"138{n:08d}" for n in range(150))
    # Each number gets its own parameters, in the same position as its number.
    assert all(p["name"] == f"顾客{int(n[3:])}" for n, p in zip(numbers, template_params, strict=True))
    assert orjson.loads(calls[0]["SignNameJson"]) == ["复购测试"] * len(orjson.loads(calls[0]["PhoneNumberJson"]))
    # One BizId per batch call, so each message's provider_id also names its number.
    assert len({r.provider_id for r in results}) == 150


async def test_aliyun_groups_a_mixed_batch_by_template(fake: FakeProviders) -> None:
    batch = [
        sms_message(1),
        sms_message(2, template="SMS_2"),
        sms_message(3),
        sms_message(4),
        Outgoing("s-5", "shop-1", None, "+8613800000005", Rendered(text="no template")),
    ]
    async with channel("aliyun", fake.channel_config("aliyun")) as aliyun:
        results = await aliyun.send(batch)
    assert outcomes(results) == ["sent", "sent", "sent", "sent", "failed"]
    assert results[4].code == "template_missing"
    assert fake.stats()["counts"] == {"aliyun.SendBatchSms": 1, "aliyun.SendSms": 1, "aliyun": 4}


async def test_aliyun_resends_a_batch_one_by_one_when_one_number_is_illegal(fake: FakeProviders) -> None:
    batch = [sms_message(1), sms_message(2, phone="+861234"), sms_message(3)]
    async with channel("aliyun", fake.channel_config("aliyun")) as aliyun:
        results = await aliyun.send(batch)
    assert [(r.outcome, r.code) for r in results] == [
        ("sent", None),
        ("failed", "isv.MOBILE_NUMBER_ILLEGAL"),
        ("sent", None),
    ]
    assert fake.stats()["counts"] == {"aliyun.SendBatchSms": 1, "aliyun.SendSms": 3, "aliyun": 2}


async def test_aliyun_refuses_a_request_signed_with_the_wrong_secret(fake: FakeProviders) -> None:
    config = fake.channel_config("aliyun", access_key_secret="wrong-secret")
    async with channel("aliyun", config) as aliyun:
        results = await aliyun.send([sms_message(1), sms_message(2)])
    assert {(r.outcome, r.code) for r in results} == {("failed", "SignatureDoesNotMatch")}
    assert fake.count("aliyun") == 0


async def test_aliyun_answers_retry_to_its_rate_limits_and_server_errors(fake: FakeProviders) -> None:
    fake.script(
        "/",
        {"json": {"Code": "isv.BUSINESS_LIMIT_CONTROL", "Message": "触发分钟级流控Permits:1"}},
        {"status": 400, "json": {"Code": "Throttling.User", "Message": "Request was denied due to user flow control."}},
        {"status": 503, "text": "Service Unavailable"},
    )
    async with channel("aliyun", fake.channel_config("aliyun", concurrency=1)) as aliyun:
        results = await aliyun.send(
            [
                sms_message(1, template="SMS_1"),
                sms_message(2, template="SMS_2"),
                sms_message(3, template="SMS_3"),
                sms_message(4, template="SMS_4"),
            ]
        )
    assert [(r.outcome, r.code, r.retry_after_s) for r in results] == [
        ("retry", "isv.BUSINESS_LIMIT_CONTROL", 60.0),
        ("retry", "Throttling.User", 1.0),
        ("retry", "503", None),
        ("sent", None, None),
    ]


# -- generic SMS gateway ------------------------------------------------------------------------


async def test_the_generic_gateway_takes_a_batch_in_one_request_and_answers_per_message(fake: FakeProviders) -> None:
    batch = [sms_message(1), sms_message(2, phone="13800000000"), sms_message(3)]
    async with channel("generic", fake.channel_config("generic")) as gateway:
        results = await gateway.send(batch)
    assert [(r.outcome, r.code) for r in results] == [("sent", None), ("failed", "invalid_phone"), ("sent", None)]
    assert all(r.provider_id for r in (results[0], results[2]))
    assert fake.requests("/sms") == 1
    assert fake.received("generic") == [
        {"id": "s-1", "phone": "+8613800000001", "text": "【复购】您有一张优惠券 1"},
        {"id": "s-3", "phone": "+8613800000003", "text": "【复购】您有一张优惠券 3"},
    ]


async def test_the_generic_gateway_without_batching_posts_one_message_per_request(fake: FakeProviders) -> None:
    async with channel("generic", fake.channel_config("generic", batch=False)) as gateway:
        results = await gateway.send([sms_message(n) for n in range(5)])
    assert outcomes(results) == ["sent"] * 5
    assert fake.requests("/sms") == 5


async def test_the_generic_gateway_retries_after_429_and_500_and_fails_on_401(fake: FakeProviders) -> None:
    fake.script(
        "/sms", {"status": 429, "headers": {"Retry-After": "7"}, "json": {"error": "slow down"}}, {"status": 500}
    )
    async with channel("generic", fake.channel_config("generic")) as gateway:
        throttled = await gateway.send([sms_message(1), sms_message(2)])
        broken = await gateway.send([sms_message(3)])
    async with channel("generic", fake.channel_config("generic", token="wrong")) as gateway:
        unauthorized = await gateway.send([sms_message(4)])
    assert [(r.outcome, r.retry_after_s) for r in throttled] == [("retry", 7.0), ("retry", 7.0)]
    assert [(r.outcome, r.code) for r in broken] == [("retry", "500")]
    assert [(r.outcome, r.code) for r in unauthorized] == [("failed", "401")]
    assert fake.count("generic") == 0


# -- webhook ------------------------------------------------------------------------------------


async def test_a_webhook_carries_the_message_and_a_signature_the_receiver_can_verify(fake: FakeProviders) -> None:
    msg = Outgoing(
        "w-1",
        "shop-1",
        "c-9",
        "anyone",
        Rendered(subject="Hi", text="回来看看", fields={"coupon": "C-20"}, unsubscribe_url="https://u.test/x"),
    )
    async with channel("webhook", fake.channel_config("webhook")) as hook:
        [result] = await hook.send([msg])
    assert result.outcome == "sent"
    [received] = fake.received("webhook")
    assert received["body"] == {
        "message_id": "w-1",
        "merchant_id": "shop-1",
        "customer_id": "c-9",
        "recipient": "anyone",
        "subject": "Hi",
        "text": "回来看看",
        "fields": {"coupon": "C-20"},
        "unsubscribe_url": "https://u.test/x",
    }
    assert received["headers"]["x-fugou-message-id"] == "w-1"
    raw = orjson.dumps(received["body"])  # orjson is canonical for the same dict, so re-serialising matches
    expected = "sha256=" + hmac.new(WEBHOOK_SECRET.encode(), raw, hashlib.sha256).hexdigest()
    assert received["headers"]["x-fugou-signature"] == expected


async def test_a_webhook_retries_5xx_and_429_and_fails_other_4xx_and_a_bad_signature(fake: FakeProviders) -> None:
    fake.script("/hook", {"status": 500}, {"status": 429, "headers": {"Retry-After": "3"}}, {"status": 400})
    async with channel("webhook", fake.channel_config("webhook", concurrency=1)) as hook:
        results = await hook.send([mail(n) for n in range(4)])
    async with channel("webhook", fake.channel_config("webhook", secret="another-secret-of-length")) as hook:
        results += await hook.send([mail(9)])
    assert [(r.outcome, r.code, r.retry_after_s) for r in results] == [
        ("retry", "500", None),
        ("retry", "429", 3.0),
        ("failed", "400", None),
        ("sent", None, None),
        ("failed", "401", None),
    ]


# -- every HTTP channel and SMTP when nothing listens --------------------------------------------


@pytest.mark.parametrize("provider", ["wechat", "aliyun", "generic", "webhook", "smtp"])
async def test_every_channel_answers_retry_for_every_message_when_the_provider_is_unreachable(
    provider: str, server: FakeProviders
) -> None:
    closed = f"http://127.0.0.1:{_free_port()}"
    configs = {
        "wechat": server.channel_config("wechat", api_base=closed),
        "aliyun": server.channel_config("aliyun", endpoint=f"{closed}/"),
        "generic": server.channel_config("generic", url=f"{closed}/sms"),
        "webhook": server.channel_config("webhook", url=f"{closed}/hook"),
        "smtp": {"host": "127.0.0.1", "port": _free_port(), "from_address": "shop@fugou.test", "timeout": 2},
    }
    batch = [sms_message(n) for n in range(3)]
    async with channel(provider, configs[provider]) as unreachable:
        results = await unreachable.send(batch)
    assert [(r.outcome, r.code) for r in results] == [("retry", "network")] * 3


# -- email over SMTP ----------------------------------------------------------------------------


async def test_email_goes_out_as_text_and_html_with_one_click_unsubscribe_over_one_connection(smtp: FakeSmtp) -> None:
    ehlos_before = smtp.ehlos
    async with channel("smtp", smtp.channel_config()) as email_channel:
        results = await email_channel.send(
            [mail(1, unsubscribe="https://fugou.test/u/abc"), mail(2, html=None), mail(3)]
        )
    assert outcomes(results) == ["sent"] * 3
    assert all(r.provider_id and r.provider_id.startswith("Q") for r in results)
    assert smtp.ehlos - ehlos_before == 1
    first = smtp.messages[0]
    assert first.mail_from == "shop@fugou.test" and first.rcpt_tos == ["buyer1@example.test"]
    m = first.message
    assert m["Subject"] == "回来看看 #1" and m["To"] == "buyer1@example.test"
    assert m["From"].addresses[0].display_name == "复购小店"
    assert m["Message-ID"] == "<e-1@fugou>"
    assert m["List-Unsubscribe"] == "<https://fugou.test/u/abc>"
    assert m["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert m.get_content_type() == "multipart/alternative"
    plain, html = m.get_body(("plain",)), m.get_body(("html",))
    assert plain is not None and plain.get_content().strip() == "Hello 1"
    assert html is not None and html.get_content().strip() == "<p>Hello</p>"
    second = smtp.messages[1].message
    assert second.get_content_type() == "text/plain" and "List-Unsubscribe" not in second


async def test_email_retries_a_451_fails_a_550_and_still_sends_the_rest_of_the_batch(smtp: FakeSmtp) -> None:
    smtp.reject("gone@example.test")
    smtp.fail_next(1)
    async with channel("smtp", smtp.channel_config()) as email_channel:
        results = await email_channel.send([mail(1), mail(2, to="gone@example.test"), mail(3), mail(4)])
    assert [(r.outcome, r.code) for r in results] == [
        ("retry", "451"),
        ("failed", "550"),
        ("sent", None),
        ("sent", None),
    ]
    assert [m.rcpt_tos for m in smtp.messages] == [["buyer3@example.test"], ["buyer4@example.test"]]


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
async def test_email_logs_in_when_the_server_requires_it_and_fails_on_a_wrong_password() -> None:
    with FakeSmtp(users={"shop": "s3cret"}) as server:
        async with channel("smtp", server.channel_config(username="shop", password="s3cret")) as good:
            ok = await good.send([mail(1)])
        async with channel("smtp", server.channel_config(username="shop", password="nope")) as bad:
            refused = await bad.send([mail(2)])
        assert len(server.messages) == 1
    assert outcomes(ok) == ["sent"]
    assert [(r.outcome, r.code) for r in refused] == [("failed", "535")]


# -- receipts -----------------------------------------------------------------------------------


def test_wechat_sent_event_receipts_parse_from_json_and_xml() -> None:
    one = {
        "ToUserName": "gh_1",
        "FromUserName": "openid-1",
        "CreateTime": 1714530000,
        "MsgType": "event",
        "Event": "subscribe_msg_sent_event",
        "SubscribeMsgSentEvent": {"List": {"TemplateId": "T", "MsgID": 1700, "ErrorCode": 0, "ErrorStatus": "success"}},
    }
    many = {
        **one,
        "SubscribeMsgSentEvent": {
            "List": [
                {"TemplateId": "T", "MsgID": "1701", "ErrorCode": "0", "ErrorStatus": "success"},
                {"TemplateId": "T", "MsgID": "1702", "ErrorCode": "20001", "ErrorStatus": "failed:user block"},
            ]
        },
    }
    xml = (
        b"<xml><ToUserName><![CDATA[gh_1]]></ToUserName><FromUserName><![CDATA[openid-1]]></FromUserName>"
        b"<CreateTime>1714530000</CreateTime><MsgType><![CDATA[event]]></MsgType>"
        b"<Event><![CDATA[subscribe_msg_sent_event]]></Event><SubscribeMsgSentEvent><List>"
        b"<TemplateId><![CDATA[T]]></TemplateId><MsgID>1703</MsgID><ErrorCode>20001</ErrorCode>"
        b"<ErrorStatus><![CDATA[failed:system failed]]></ErrorStatus></List></SubscribeMsgSentEvent></xml>"
    )
    at = datetime.fromtimestamp(1714530000, UTC)
    assert parse_receipts("wechat", orjson.dumps(one), "application/json") == [
        Receipt("1700", None, "delivered", None, at)
    ]
    assert parse_receipts("wechat", orjson.dumps(many), "application/json") == [
        Receipt("1701", None, "delivered", None, at),
        Receipt("1702", None, "failed", "20001", at),
    ]
    assert parse_receipts("wechat", xml, "text/xml") == [Receipt("1703", None, "failed", "20001", at)]
    popup = {**one, "Event": "subscribe_msg_popup_event"}
    assert parse_receipts("wechat", orjson.dumps(popup), "application/json") == []


def test_aliyun_sms_reports_parse_into_receipts_matching_our_provider_ids() -> None:
    body = orjson.dumps(
        [
            {
                "phone_number": "13800138000",
                "send_time": "2026-05-01 10:00:00",
                "report_time": "2026-05-01 10:00:05",
                "success": True,
                "err_code": "DELIVERED",
                "err_msg": "用户接收成功",
                "sms_size": "1",
                "biz_id": "932702304080415357^0",
                "out_id": "s-1",
            },
            {
                "phone_number": "13800138001",
                "send_time": "2026-05-01 10:00:00",
                "report_time": "2026-05-01 10:00:09",
                "success": False,
                "err_code": "MK:0001",
                "err_msg": "号码停机",
                "sms_size": "1",
                "biz_id": "932702304080415357^0",
                "out_id": "",
            },
        ]
    )
    china = timezone(timedelta(hours=8))
    assert parse_receipts("aliyun", body, "application/json") == [
        Receipt(
            "932702304080415357^0:13800138000", "s-1", "delivered", None, datetime(2026, 5, 1, 10, 0, 5, tzinfo=china)
        ),
        Receipt(
            "932702304080415357^0:13800138001", None, "failed", "MK:0001", datetime(2026, 5, 1, 10, 0, 9, tzinfo=china)
        ),
    ]


def test_generic_gateway_receipts_parse_and_a_malformed_push_is_refused() -> None:
    body = orjson.dumps(
        {
            "receipts": [
                {"id": "s-1", "provider_id": "g1", "status": "delivered", "code": None, "at": "2026-05-01T02:00:05Z"},
                {
                    "id": "s-2",
                    "provider_id": "g2",
                    "status": "failed",
                    "code": "UNDELIV",
                    "at": "2026-05-01T02:00:07+08:00",
                },
            ]
        }
    )
    assert parse_receipts("generic", body, "application/json") == [
        Receipt("g1", "s-1", "delivered", None, datetime(2026, 5, 1, 2, 0, 5, tzinfo=UTC)),
        Receipt("g2", "s-2", "failed", "UNDELIV", datetime(2026, 5, 1, 2, 0, 7, tzinfo=timezone(timedelta(hours=8)))),
    ]
    for provider, bad in [
        ("generic", b"{not json"),
        ("generic", b'{"receipts": [1]}'),
        ("aliyun", b'{"a": 1}'),
        ("wechat", b"<!DOCTYPE x><xml/>"),
        ("smtp", b"[]"),
    ]:
        with pytest.raises(ValueError):
            parse_receipts(provider, bad, "text/xml" if b"<" in bad else "application/json")


# -- configuration ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "config", "field"),
    [
        ("wechat", {"app_secret": "s"}, "app_id"),
        ("wechat", {"app_id": "wx1", "app_secret": "s", "api_base": "ftp://x"}, "api_base"),
        ("wechat", {"app_id": "wx1", "app_secret": "s", "miniprogram_state": "beta"}, "miniprogram_state"),
        ("aliyun", {"access_key_id": "k", "access_key_secret": "s"}, "sign_name"),
        ("generic", {"url": "https://sms.test/send", "token": "t", "batch_size": 501}, "batch_size"),
        ("webhook", {"url": "https://hooks.test/x", "secret": "short"}, "secret"),
        ("smtp", {"host": "mail.test", "from_address": "not-an-address"}, "from_address"),
        ("console", {"verbose": True}, "verbose"),
    ],
)
def test_a_bad_channel_config_is_refused_naming_the_field(provider: str, config: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        build_channel(provider, config)
    assert field in {str(part) for error in caught.value.errors() for part in error["loc"]}


def test_config_models_refuse_contradictions_and_unknown_providers_and_hide_secrets() -> None:
    with pytest.raises(ValidationError, match="exclude each other"):
        CONFIG_MODELS["smtp"].model_validate(
            {"host": "mail.test", "from_address": "a@b.test", "starttls": True, "use_tls": True}
        )
    with pytest.raises(ValueError, match="unknown provider"):
        build_channel("carrier-pigeon", {})
    settings = CONFIG_MODELS["aliyun"].model_validate(
        {"access_key_id": "k", "access_key_secret": "very-secret-value", "sign_name": "复购"}
    )
    assert "very-secret-value" not in repr(settings) and "very-secret-value" not in settings.model_dump_json()


# -- the fake in its own process (what the benchmark uses) --------------------------------------


async def test_the_fake_providers_also_run_in_their_own_process() -> None:
    with serve_in_process(keep=0) as remote:
        async with channel("generic", remote.channel_config("generic")) as gateway:
            results = await gateway.send([sms_message(n) for n in range(600)])
        assert outcomes(results) == ["sent"] * 600
        assert remote.count("generic") == 600 and remote.received("generic") == []
        assert remote.requests("/sms") == 2
