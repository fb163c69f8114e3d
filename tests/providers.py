"""Fake notification providers on loopback, for the channel tests and the dispatch benchmark.

One plain ASGI app plays every HTTP provider at its real path, with the provider's own checks and
error codes:

    GET  /cgi-bin/token                    WeChat access token (checks appid and secret)
    POST /cgi-bin/message/subscribe/send   WeChat subscribe message (checks the token it issued)
    POST /                                 Aliyun Dysmsapi RPC (verifies the signature)
    POST /sms                              the generic SMS gateway (bearer token)
    POST /hook                             a webhook receiver (verifies X-Fugou-Signature)

and is steered and inspected over HTTP, so it works in a thread or in another process:

    POST /_fake/script  {"path": "/sms", "responses": [{"status": 500}, {"status": 429,
                         "headers": {"Retry-After": "7"}}, {"delay": 3, "pass": true}, ...]}
         Each queued response answers one request to that path, in order, before normal service
         resumes. Keys: status (200), json | text (body), headers, delay (seconds, before
         answering), pass (after the delay, answer normally). For WeChat, {"json": {"errcode":
         45009, "errmsg": "..."}}; for Aliyun, {"json": {"Code": "isv.BUSINESS_LIMIT_CONTROL"}}.
    GET  /_fake/received?kind=wechat|wechat_token|aliyun|generic|webhook
         {"count": n, "items": [...]}: count always kept; items (request bodies) only up to
         `keep` per kind, so a benchmark can set keep=0 and pay for counters alone.
         aliyun items are calls ({"params": {...}}), and its count is numbers accepted.
    GET  /_fake/stats      {"requests": {path: n}, "counts": {kind or "aliyun.<Action>": n}}
    POST /_fake/reset      forget everything received, scripts and tokens (settings stay)
    POST /_fake/token_expire   every WeChat token issued so far becomes invalid (errcode 40001)
    POST /_fake/config     {"keep": n, "refusing_openids": [...], "token_ttl": s}

Run it in a thread (`with FakeProviders() as fake:`), or in its own process so it does not take
the benchmark's core: `python -m tests.providers --port 0 --keep 0` prints
"READY http://127.0.0.1:PORT" once it accepts connections; `serve_in_process()` wraps that.
`FakeSmtp` is an aiosmtpd server that records mail and refuses on demand."""

from __future__ import annotations

import argparse
import asyncio
import email
import email.policy
import importlib.util
import itertools
import re
import socket
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import httpx
import orjson
import uvicorn
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SmtpServer
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session

from services.notifications.adapters.channels.sms import aliyun_signature
from services.notifications.adapters.channels.webhook import verify_webhook_signature
from shared import clock
from shared.settings import Settings

WECHAT_APP_ID = "wx0fake0app0id0001"
WECHAT_APP_SECRET = "wechat-fake-app-secret"
ALIYUN_ACCESS_KEY_ID = "LTAI-fake-key-id"
ALIYUN_ACCESS_KEY_SECRET = "aliyun-fake-key-secret"
GENERIC_TOKEN = "generic-fake-bearer-token"
WEBHOOK_SECRET = "webhook-fake-shared-secret"
REFUSING_OPENID = "o-refuses-subscribe"  # refuses by default; more via /_fake/config
DEFAULT_KEEP = 10_000

ROOT = Path(__file__).resolve().parent.parent
Headers = list[tuple[bytes, bytes]]
Reply = tuple[int, Any, dict[str, str] | None]  # status, JSON body, extra headers

_MAINLAND = re.compile(r"1[3-9]\d{9}")
_INTERNATIONAL = re.compile(r"[2-9]\d{7,14}")
_E164 = re.compile(r"\+\d{8,15}")
_WECHAT_STATES = frozenset({"formal", "trial", "developer"})


@dataclass
class FakeState:
    keep: int = DEFAULT_KEEP
    token_ttl: int = 7200
    refusing: set[str] = field(default_factory=lambda: {REFUSING_OPENID})
    requests: Counter[str] = field(default_factory=Counter)
    counts: Counter[str] = field(default_factory=Counter)
    received: defaultdict[str, list[Any]] = field(default_factory=lambda: defaultdict(list))
    scripts: defaultdict[str, deque[dict[str, Any]]] = field(default_factory=lambda: defaultdict(deque))
    tokens: set[str] = field(default_factory=set)
    nonces: set[str] = field(default_factory=set)
    seq: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def reset(self) -> None:
        for store in (self.requests, self.counts, self.received, self.scripts, self.tokens, self.nonces):
            store.clear()

    def record(self, kind: str, item: Any, n: int = 1) -> None:
        self.counts[kind] += n
        items = self.received[kind]
        if len(items) < self.keep:
            items.append(item)


class FakeProviderApp:
    """The ASGI app. One instance, one state; the hot paths do only what the real API checks."""

    def __init__(self, keep: int = DEFAULT_KEEP) -> None:
        self.state = FakeState(keep=keep)
        self.routes: dict[str, Callable[[dict[str, Any], bytes], Awaitable[Reply]]] = {
            "/cgi-bin/token": self.wechat_token,
            "/cgi-bin/message/subscribe/send": self.wechat_send,
            "/": self.aliyun,
            "/sms": self.generic_sms,
            "/hook": self.webhook,
            "/_fake/script": self.fake_script,
            "/_fake/received": self.fake_received,
            "/_fake/stats": self.fake_stats,
            "/_fake/reset": self.fake_reset,
            "/_fake/token_expire": self.fake_token_expire,
            "/_fake/config": self.fake_config,
        }

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        path = scope["path"]
        handler = self.routes.get(path)
        if handler is None:
            await _respond(send, 404, {"error": f"no fake at {path}"})
            return
        if not path.startswith("/_fake/"):
            self.state.requests[path] += 1
            script = self.state.scripts.get(path)
            if script:
                step = script.popleft()
                if step.get("delay"):
                    await asyncio.sleep(float(step["delay"]))
                if not step.get("pass"):
                    await _respond(
                        send, int(step.get("status", 200)), step.get("json"), step.get("headers"), step.get("text")
                    )
                    return
        status, payload, headers = await handler(scope, body)
        await _respond(send, status, payload, headers)

    # -- WeChat ---------------------------------------------------------------------------------

    async def wechat_token(self, scope: dict[str, Any], body: bytes) -> Reply:
        q = dict(parse_qsl(scope["query_string"].decode()))
        if q.get("grant_type") != "client_credential":
            return 200, {"errcode": 40002, "errmsg": "invalid grant_type"}, None
        if q.get("appid") != WECHAT_APP_ID:
            return 200, {"errcode": 40013, "errmsg": "invalid appid"}, None
        if q.get("secret") != WECHAT_APP_SECRET:
            return 200, {"errcode": 40125, "errmsg": "invalid appsecret"}, None
        token = f"ACCESS_TOKEN_{next(self.state.seq)}_{time.monotonic_ns()}"
        self.state.tokens.add(token)
        self.state.record("wechat_token", {"appid": q["appid"]})
        return 200, {"access_token": token, "expires_in": self.state.token_ttl}, None

    async def wechat_send(self, scope: dict[str, Any], body: bytes) -> Reply:
        token = dict(parse_qsl(scope["query_string"].decode())).get("access_token")
        if not token:
            return 200, {"errcode": 41001, "errmsg": "access_token missing"}, None
        if token not in self.state.tokens:
            return 200, {"errcode": 40001, "errmsg": "invalid credential, access_token is invalid or not latest"}, None
        try:
            msg = orjson.loads(body)
        except orjson.JSONDecodeError:
            return 200, {"errcode": 47001, "errmsg": "data format error"}, None
        touser, data = msg.get("touser"), msg.get("data")
        if not isinstance(touser, str) or not touser:
            return 200, {"errcode": 40003, "errmsg": "invalid openid"}, None
        if not msg.get("template_id"):
            return 200, {"errcode": 40037, "errmsg": "invalid template_id"}, None
        if msg.get("miniprogram_state", "formal") not in _WECHAT_STATES or not isinstance(data, dict):
            return 200, {"errcode": 47003, "errmsg": "argument invalid!"}, None
        for name, entry in data.items():
            value = entry.get("value") if isinstance(entry, dict) else None
            # thing.DATA is at most 20 characters: the limit campaigns run into most often.
            if not isinstance(value, str) or (name.startswith("thing") and len(value) > 20):
                return 200, {"errcode": 47003, "errmsg": f"argument invalid! data.{name}.value invalid"}, None
        if touser in self.state.refusing:
            return 200, {"errcode": 43101, "errmsg": "user refuse to accept the msg"}, None
        msgid = next(self.state.seq)
        self.state.record("wechat", msg)
        return 200, {"errcode": 0, "errmsg": "ok", "msgid": msgid}, None

    # -- Aliyun ---------------------------------------------------------------------------------

    async def aliyun(self, scope: dict[str, Any], body: bytes) -> Reply:
        params = dict(parse_qsl(body.decode(), keep_blank_values=True))
        if scope["query_string"]:
            params.update(parse_qsl(scope["query_string"].decode(), keep_blank_values=True))
        signature = params.pop("Signature", None)
        if signature is None:
            return _aliyun_error(400, "MissingSignature", "Signature is mandatory for this action.")
        if params.get("AccessKeyId") != ALIYUN_ACCESS_KEY_ID:
            return _aliyun_error(404, "InvalidAccessKeyId.NotFound", "Specified access key is not found.")
        if aliyun_signature(params, ALIYUN_ACCESS_KEY_SECRET, scope["method"]) != signature:
            return _aliyun_error(
                400, "SignatureDoesNotMatch", "Specified signature is not matched with our calculation."
            )
        nonce = params.get("SignatureNonce", "")
        if not nonce or nonce in self.state.nonces:
            return _aliyun_error(400, "SignatureNonceUsed", "Specified signature nonce was used already.")
        self.state.nonces.add(nonce)
        try:
            skew = abs(
                (
                    datetime.strptime(params["Timestamp"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC) - clock.now()
                ).total_seconds()
            )
        except (KeyError, ValueError):
            skew = float("inf")
        if skew > 900:
            return _aliyun_error(400, "InvalidTimeStamp.Expired", "Specified time stamp or date value is expired.")
        if params.get("Version") != "2017-05-25" or params.get("SignatureMethod") != "HMAC-SHA1":
            return _aliyun_error(400, "InvalidVersion", "Specified parameter Version is not valid.")
        action = params.get("Action")
        if action == "SendSms":
            numbers = params.get("PhoneNumbers", "").split(",")
            signs = [params.get("SignName", "")] * len(numbers)
            template_params = [params.get("TemplateParam", "{}")] * len(numbers)
        elif action == "SendBatchSms":
            try:
                numbers = orjson.loads(params.get("PhoneNumberJson", ""))
                signs = orjson.loads(params.get("SignNameJson", ""))
                template_params = [orjson.dumps(p).decode() for p in orjson.loads(params.get("TemplateParamJson", ""))]
            except (orjson.JSONDecodeError, TypeError):
                return _aliyun_ok("isv.INVALID_JSON_PARAM", "JSON参数不合法，只接受字符串值")
            if not (len(numbers) == len(signs) == len(template_params)):
                return _aliyun_ok("isv.INVALID_PARAMETERS", "参数异常")
            if len(numbers) > 100:
                return _aliyun_ok("isv.PARAM_LENGTH_LIMIT", "参数超出长度限制")
        else:
            return _aliyun_error(404, "InvalidAction.NotFound", f"Specified api is not found: {action}")
        self.state.counts[f"aliyun.{action}"] += 1
        if any(not s for s in signs):
            return _aliyun_ok("isv.SMS_SIGNATURE_ILLEGAL", "该账号下找不到对应签名")
        if not params.get("TemplateCode", "").startswith("SMS_"):
            return _aliyun_ok("isv.SMS_TEMPLATE_ILLEGAL", "该账号下找不到对应模板")
        if any(
            not (_MAINLAND.fullmatch(str(n)) or (_INTERNATIONAL.fullmatch(str(n)) and not str(n).startswith("86")))
            for n in numbers
        ):
            return _aliyun_ok("isv.MOBILE_NUMBER_ILLEGAL", "非法手机号")
        for raw in template_params:
            try:
                if not isinstance(orjson.loads(raw), dict):
                    raise ValueError
            except ValueError:
                return _aliyun_ok("isv.INVALID_JSON_PARAM", "JSON参数不合法，只接受字符串值")
        biz_id = f"{next(self.state.seq):06d}^0"
        self.state.record("aliyun", {"params": params}, n=len(numbers))
        return 200, {"Code": "OK", "Message": "OK", "BizId": biz_id, "RequestId": _request_id()}, None

    # -- generic gateway and webhook ------------------------------------------------------------

    async def generic_sms(self, scope: dict[str, Any], body: bytes) -> Reply:
        if _header(scope, b"authorization") != f"Bearer {GENERIC_TOKEN}":
            return 401, {"error": "unauthorized"}, None
        try:
            messages = orjson.loads(body)["messages"]
            if not isinstance(messages, list):
                raise TypeError
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return 400, {"error": 'expected {"messages": [...]}'}, None
        if len(messages) > 500:
            return 400, {"error": "at most 500 messages per request"}, None
        results = []
        for m in messages:
            if not _E164.fullmatch(str(m.get("phone", ""))):
                results.append({"id": m.get("id"), "status": "rejected", "code": "invalid_phone"})
            elif not m.get("text"):
                results.append({"id": m.get("id"), "status": "rejected", "code": "empty_text"})
            else:
                results.append({"id": m.get("id"), "status": "accepted", "provider_id": f"g{next(self.state.seq)}"})
                self.state.record("generic", m)
        return 200, {"results": results}, None

    async def webhook(self, scope: dict[str, Any], body: bytes) -> Reply:
        signature = _header(scope, b"x-fugou-signature")
        if not verify_webhook_signature(WEBHOOK_SECRET, body, signature):
            return 401, {"error": "bad signature"}, None
        self.state.record(
            "webhook",
            {
                "headers": {
                    "x-fugou-message-id": _header(scope, b"x-fugou-message-id"),
                    "x-fugou-signature": signature,
                    "content-type": _header(scope, b"content-type"),
                },
                "body": orjson.loads(body),
            },
        )
        return 200, {"ok": True}, None

    # -- control --------------------------------------------------------------------------------

    async def fake_script(self, scope: dict[str, Any], body: bytes) -> Reply:
        doc = orjson.loads(body)
        self.state.scripts[doc["path"]].extend(doc["responses"])
        return 200, {"queued": len(self.state.scripts[doc["path"]])}, None

    async def fake_received(self, scope: dict[str, Any], body: bytes) -> Reply:
        kind = dict(parse_qsl(scope["query_string"].decode())).get("kind", "")
        return 200, {"count": self.state.counts[kind], "items": self.state.received.get(kind, [])}, None

    async def fake_stats(self, scope: dict[str, Any], body: bytes) -> Reply:
        return 200, {"requests": dict(self.state.requests), "counts": dict(self.state.counts)}, None

    async def fake_reset(self, scope: dict[str, Any], body: bytes) -> Reply:
        self.state.reset()
        return 200, {"ok": True}, None

    async def fake_token_expire(self, scope: dict[str, Any], body: bytes) -> Reply:
        self.state.tokens.clear()
        return 200, {"ok": True}, None

    async def fake_config(self, scope: dict[str, Any], body: bytes) -> Reply:
        doc = orjson.loads(body or b"{}")
        if "keep" in doc:
            self.state.keep = int(doc["keep"])
        if "refusing_openids" in doc:
            self.state.refusing = set(doc["refusing_openids"])
        if "token_ttl" in doc:
            self.state.token_ttl = int(doc["token_ttl"])
        return (
            200,
            {
                "keep": self.state.keep,
                "refusing_openids": sorted(self.state.refusing),
                "token_ttl": self.state.token_ttl,
            },
            None,
        )


def _aliyun_error(status: int, code: str, message: str) -> Reply:
    return (
        status,
        {"RequestId": _request_id(), "HostId": "dysmsapi.aliyuncs.com", "Code": code, "Message": message},
        None,
    )


def _aliyun_ok(code: str, message: str) -> Reply:
    # Business refusals come back as HTTP 200 with a Code, as the real API does.
    return 200, {"Code": code, "Message": message, "RequestId": _request_id()}, None


_request_ids = itertools.count(1)


def _request_id() -> str:
    return f"F0000000-0000-4000-8000-{next(_request_ids):012d}"


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


async def _respond(
    send: Any, status: int, payload: Any, headers: dict[str, str] | None = None, text: str | None = None
) -> None:
    if text is not None:
        body, content_type = text.encode(), b"text/plain; charset=utf-8"
    else:
        body, content_type = (b"" if payload is None else orjson.dumps(payload)), b"application/json"
    raw_headers: Headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    raw_headers += [(k.lower().encode(), str(v).encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})


# ---------------------------------------------------------------------------------------------
# Control client and servers


class FakeProvidersClient:
    """Talks to a running fake (thread or process) over its /_fake endpoints."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self._http = httpx.Client(base_url=base_url, timeout=10, trust_env=False)

    def close(self) -> None:
        self._http.close()

    def script(self, path: str, *responses: dict[str, Any]) -> None:
        self._http.post("/_fake/script", json={"path": path, "responses": list(responses)}).raise_for_status()

    def received(self, kind: str) -> list[Any]:
        return list(self._get("/_fake/received", kind=kind)["items"])

    def count(self, kind: str) -> int:
        return int(self._get("/_fake/received", kind=kind)["count"])

    def stats(self) -> dict[str, dict[str, int]]:
        stats: dict[str, dict[str, int]] = self._get("/_fake/stats")
        return stats

    def requests(self, path: str) -> int:
        return int(self.stats()["requests"].get(path, 0))

    def reset(self) -> None:
        self._http.post("/_fake/reset").raise_for_status()

    def expire_tokens(self) -> None:
        self._http.post("/_fake/token_expire").raise_for_status()

    def configure(self, **settings: Any) -> dict[str, Any]:
        response = self._http.post("/_fake/config", json=settings)
        response.raise_for_status()
        return dict(response.json())

    def channel_config(self, provider: str, **overrides: Any) -> dict[str, Any]:
        """Settings that point `provider`'s channel at this fake, with its credentials."""
        configs: dict[str, dict[str, Any]] = {
            "wechat": {"app_id": WECHAT_APP_ID, "app_secret": WECHAT_APP_SECRET, "api_base": self.base_url},
            "aliyun": {
                "access_key_id": ALIYUN_ACCESS_KEY_ID,
                "access_key_secret": ALIYUN_ACCESS_KEY_SECRET,
                "sign_name": "复购测试",
                "endpoint": f"{self.base_url}/",
            },
            "generic": {"url": f"{self.base_url}/sms", "token": GENERIC_TOKEN},
            "webhook": {"url": f"{self.base_url}/hook", "secret": WEBHOOK_SECRET},
        }
        return {**configs[provider], **overrides}

    def _get(self, path: str, **params: str) -> Any:
        response = self._http.get(path, params=params)
        response.raise_for_status()
        return response.json()


def _loop_name() -> str:
    return "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"


def _listening_socket(port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(2048)  # listening before uvicorn starts: early connections wait in the backlog
    return sock


def _server(app: FakeProviderApp) -> uvicorn.Server:
    return uvicorn.Server(
        uvicorn.Config(
            app,
            loop=_loop_name(),
            http="httptools",
            lifespan="off",
            log_level="warning",
            access_log=False,
            backlog=2048,
        )
    )


class FakeProviders(FakeProvidersClient):
    """The fake providers served by uvicorn in a background thread on a free loopback port."""

    def __init__(self, keep: int = DEFAULT_KEEP) -> None:
        self.app = FakeProviderApp(keep=keep)
        self._sock = _listening_socket()
        self._uvicorn = _server(self.app)
        super().__init__(f"http://127.0.0.1:{self._sock.getsockname()[1]}")
        self._thread = threading.Thread(
            target=self._uvicorn.run, kwargs={"sockets": [self._sock]}, name="fake-providers", daemon=True
        )

    def __enter__(self) -> FakeProviders:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._uvicorn.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the fake providers did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self._uvicorn.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()
        self.close()


@contextmanager
def serve_in_process(port: int = 0, keep: int = DEFAULT_KEEP) -> Iterator[FakeProvidersClient]:
    """The fake providers in a separate Python process (its own core), stopped on exit."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.providers", "--port", str(port), "--keep", str(keep)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("READY "):
            raise RuntimeError(f"the fake providers did not start: {line!r}")
        client = FakeProvidersClient(line.split()[1])
        try:
            yield client
        finally:
            client.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.providers", description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--keep", type=int, default=DEFAULT_KEEP, help="request bodies kept per kind")
    args = parser.parse_args(argv)
    # Aliyun refuses a request whose Timestamp is 15 minutes off its own clock: the fake's clock is
    # the one the services run on (moved by FUGOU_CLOCK_OFFSET, like theirs).
    clock.install(clock.SystemClock(Settings(env="test").clock_offset))
    sock = _listening_socket(args.port)
    print(f"READY http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
    _server(FakeProviderApp(keep=args.keep)).run(sockets=[sock])


# ---------------------------------------------------------------------------------------------
# SMTP


@dataclass(frozen=True)
class ReceivedMail:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    raw: bytes


class _SmtpHandler:
    def __init__(self, fake: FakeSmtp) -> None:
        self.fake = fake

    async def handle_EHLO(
        self,
        server: SmtpServer,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname  # a handle_EHLO hook takes over this part of aiosmtpd's job
        with self.fake.lock:
            self.fake.ehlos += 1
        return responses

    async def handle_RCPT(
        self,
        server: SmtpServer,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if address.lower() in self.fake.rejected:
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SmtpServer, session: Session, envelope: Envelope) -> str:
        with self.fake.lock:
            if self.fake.failures_left > 0:
                self.fake.failures_left -= 1
                return "451 4.3.0 Temporary local problem, try again later"
            queue_id = f"Q{next(self.fake.queue_ids):08X}"
        raw = envelope.original_content or envelope.content
        assert isinstance(raw, bytes)
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        self.fake.messages.append(ReceivedMail(str(envelope.mail_from), list(envelope.rcpt_tos), parsed, raw))
        return f"250 2.0.0 Ok: queued as {queue_id}"


class FakeSmtp:
    """aiosmtpd on a free loopback port, recording every accepted message.

    `reject(addr)` answers 550 to that recipient; `fail_next(n)` answers 451 to the next n
    messages' DATA. With `users`, AUTH LOGIN/PLAIN is required (over plain text: loopback only)."""

    def __init__(self, users: dict[str, str] | None = None) -> None:
        self.messages: list[ReceivedMail] = []
        self.rejected: set[str] = set()
        self.failures_left = 0
        self.ehlos = 0  # one per connection the client made (EHLO is its first command)
        self.lock = threading.Lock()
        self.queue_ids = itertools.count(1)
        self.users = users or {}
        self.port = _free_port()
        self.host = "127.0.0.1"
        self._controller = Controller(
            _SmtpHandler(self),
            hostname=self.host,
            port=self.port,
            auth_require_tls=False,
            auth_required=bool(self.users),
            authenticator=self._authenticate,
        )

    def _authenticate(
        self, server: SmtpServer, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        ok = (
            isinstance(auth_data, LoginPassword)
            and self.users.get(auth_data.login.decode()) == auth_data.password.decode()
        )
        return AuthResult(success=ok, handled=False)

    def reject(self, *addresses: str) -> None:
        self.rejected.update(a.lower() for a in addresses)

    def fail_next(self, n: int) -> None:
        with self.lock:
            self.failures_left = n

    def channel_config(self, **overrides: Any) -> dict[str, Any]:
        return {
            "host": self.host,
            "port": self.port,
            "from_address": "shop@fugou.test",
            "from_name": "复购小店",
            "timeout": 5,
            **overrides,
        }

    def __enter__(self) -> FakeSmtp:
        self._controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._controller.stop()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


if __name__ == "__main__":
    main()
