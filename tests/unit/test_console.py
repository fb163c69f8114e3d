"""The merchant console at /console: pages and assets served by the embedded app, the API paths
its JS calls exist with their methods, every i18n key is in both dictionaries. No browser here."""

from __future__ import annotations

import hashlib
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from services.console import STATIC_DIR, mount_console
from services.embedded import build_embedded_app
from tests.conftest import embedded_settings, running

KEY = "fg_console_key"
H = {"X-Api-Key": KEY}
JS_FILES = sorted(p for p in STATIC_DIR.glob("*.js"))
HTML_FILES = sorted(STATIC_DIR.glob("*.html"))
JS_TYPES = ("text/javascript", "application/javascript")
EXPECTED_TYPE = {".js": JS_TYPES, ".css": ("text/css",), ".html": ("text/html",)}


@pytest.fixture
async def client(tmp_path: Path):  # type: ignore[no-untyped-def]
    app = build_embedded_app(embedded_settings(tmp_path, bootstrap_api_key=KEY), announce=False)
    async with running(app) as c:
        yield c


class _Refs(HTMLParser):
    """The src/href of script, link and other tags, and the module scripts."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.modules: list[str] = []
        self.scripts: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        for name in ("src", "href"):
            if a.get(name):
                self.refs.append(a[name] or "")
        if tag == "script":
            self.scripts.append(a.get("src") or "")
            if a.get("type") == "module":
                self.modules.append(a.get("src") or "")


def refs_of(html: str) -> _Refs:
    p = _Refs()
    p.feed(html)
    return p


def static_refs(html: str) -> list[str]:
    return [r.split("?")[0] for r in refs_of(html).refs if r.startswith("/console/static/")]


# ---------------------------------------------------------------- pages and assets


async def test_the_console_and_its_login_page_answer_html_with_their_scripts(client: httpx.AsyncClient) -> None:
    r = await client.get("/console")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    page = refs_of(r.text)
    assert page.modules == ["/console/static/app.js"]
    assert any(s.split("?")[0] == "/console/static/vendor/echarts.min.js" for s in page.scripts)
    assert "script-src 'self'" in r.headers["content-security-policy"]  # the key is in sessionStorage

    r = await client.get("/console/login")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    login = refs_of(r.text)
    assert login.modules == ["/console/static/login.js"]
    assert 'type="password"' in r.text

    assert (await client.head("/console")).status_code == 200

    r = await client.get("/console/", follow_redirects=False)
    assert r.status_code in (307, 308) and r.headers["location"] == "/console"


async def test_missing_assets_give_a_clear_503_not_a_dead_app(tmp_path: Path) -> None:
    # A wheel built without its package data has no static folder: the app must still serve its API.
    app = FastAPI()
    mount_console(app, tmp_path / "not-installed")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://fugou.test") as c:
        r = await c.get("/console")
        assert r.status_code == 503 and r.json()["error"]["code"] == "console_not_installed"
        assert (await c.get("/console/login")).status_code == 503
        assert (await c.get("/console/static/app.js")).status_code == 404


async def test_pages_stay_out_of_the_api_schema(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert not [p for p in paths if p.startswith("/console")]


async def test_every_asset_the_pages_reference_is_served_with_its_type(client: httpx.AsyncClient) -> None:
    seen: set[str] = set()
    for page in ("/console", "/console/login"):
        refs = static_refs((await client.get(page)).text)
        assert refs, f"{page} references no asset"
        seen.update(refs)
    # JS modules import each other: follow their relative imports too.
    for js in JS_FILES:
        for rel in re.findall(r"""from\s+["']\./([\w.-]+\.js)["']""", js.read_text()):
            seen.add(f"/console/static/{rel}")
    assert {
        "/console/static/app.js",
        "/console/static/api.js",
        "/console/static/i18n.js",
        "/console/static/login.js",
        "/console/static/style.css",
        "/console/static/vendor/echarts.min.js",
    } <= seen
    for url in sorted(seen):
        r = await client.get(url)
        assert r.status_code == 200, url
        wanted = EXPECTED_TYPE[Path(url).suffix]
        assert r.headers["content-type"].startswith(wanted), (url, r.headers["content-type"])
        assert r.headers["x-content-type-options"] == "nosniff"
        assert "cache-control" in r.headers
        assert r.content == (STATIC_DIR / url.removeprefix("/console/static/")).read_bytes()


async def test_static_assets_revalidate_and_do_not_escape_their_folder(client: httpx.AsyncClient) -> None:
    r = await client.get("/console/static/app.js")
    etag = r.headers["etag"]
    again = await client.get("/console/static/app.js", headers={"If-None-Match": etag})
    assert again.status_code == 304
    assert (await client.get("/console/static/nope.js")).status_code == 404
    assert (await client.get("/console/static/../router.py")).status_code == 404
    assert (await client.get("/console/static/%2e%2e/router.py")).status_code == 404


async def test_the_vendored_echarts_is_the_one_recorded(client: httpx.AsyncClient) -> None:
    readme = (STATIC_DIR / "vendor" / "README.md").read_text()
    recorded = re.search(r"sha256 of `echarts\.min\.js`: `([0-9a-f]{64})`", readme)
    assert recorded, "vendor/README.md must record the sha256"
    version = re.search(r"`echarts` \*\*(5\.\d+\.\d+)\*\*", readme)
    assert version, "vendor/README.md must record a 5.x version"
    r = await client.get("/console/static/vendor/echarts.min.js")
    assert len(r.content) > 500_000  # the full build, not a stub
    assert hashlib.sha256(r.content).hexdigest() == recorded.group(1)
    assert f'.version="{version.group(1)}"' in r.text  # what the file says it is
    assert "Apache License" in (STATIC_DIR / "vendor" / "ECHARTS_LICENSE").read_text()
    assert f"?v={version.group(1)}" in (STATIC_DIR / "index.html").read_text()


# ---------------------------------------------------------------- the API the JS calls

API_JS = STATIC_DIR / "api.js"


def called_paths() -> dict[str, tuple[str, str]]:
    """PATHS in api.js: name -> (method, path)."""
    block = re.search(r"export const PATHS = \{(.*?)\};", API_JS.read_text(), re.S)
    assert block, "api.js must declare PATHS"
    found = {
        name: (method, path)
        for name, method, path in re.findall(r'(\w+):\s*"(GET|POST|PUT|PATCH|DELETE) (/[^"]*)"', block.group(1))
    }
    assert found, "PATHS is empty"
    return found


def pending_paths() -> list[str]:
    block = re.search(r"export const PENDING = \[(.*?)\];", API_JS.read_text(), re.S)
    assert block, "api.js must declare PENDING"
    return re.findall(r'"(/[^"]*)"', block.group(1))


def test_only_api_js_names_api_paths() -> None:
    # Every call goes through PATHS: a path written anywhere else would escape the check below.
    for js in JS_FILES:
        if js.name == "api.js":
            continue
        text = js.read_text()
        if js.name == "i18n.js":  # names endpoints in its advice to merchants: text, not calls
            assert "fetch(" not in text
            continue
        strings = re.findall(r"""["'`](/v1/[^"'`\s]*)""", text)
        assert not strings, f"{js.name} names API paths outside api.js PATHS: {strings}"
        assert "fetch(" not in text, f"{js.name} fetches outside api.js"
    names = set(called_paths())
    used = {n for js in JS_FILES for n in re.findall(r"""\bcall\(\s*["'](\w+)["']""", js.read_text())}
    assert used, "no call() found in the JS"
    assert used <= names, f"call() of names missing from PATHS: {used - names}"


async def test_every_path_the_js_calls_exists_in_the_openapi_with_its_method(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()["paths"]
    pending = pending_paths()
    for name, (method, path) in called_paths().items():
        if path in spec:
            assert method.lower() in spec[path], f"{name}: {method} {path} not in the OpenAPI"
        else:
            assert path in pending, f"{name}: {method} {path} is neither in the OpenAPI nor listed as PENDING"
    assert set(pending) <= {p for _, p in called_paths().values()}, "PENDING names a path PATHS does not call"


async def test_the_calls_answer_for_a_real_merchant_and_refuse_a_wrong_key(client: httpx.AsyncClient) -> None:
    # The console treats 401 as "back to login": a wrong key must get exactly that, a good one 200.
    creates = {  # the POSTs that make something: their body, and 201
        "audienceSave": {"name": "S", "filter": {"tier": ["S"]}},
        "notifyTemplateSave": {
            "key": "console-check",
            "channel": "sms",
            "trigger": "coupon.issued",
            "parts": {"text": "{{ coupon.name }}"},
        },
    }
    for name, (method, path) in called_paths().items():
        if "{" in path:
            continue
        body = creates.get(name) or ({"filter": {"tier": ["S"]}, "limit": 1} if method == "POST" else None)
        good = await client.request(method, path, headers=H, json=body)
        if path in pending_paths() and good.status_code == 404:
            continue
        assert good.status_code == (201 if name in creates else 200), (name, good.status_code, good.text)
        bad = await client.request(method, path, headers={"X-Api-Key": "fg_wrong"}, json=body)
        assert bad.status_code == 401, (name, bad.status_code)


async def test_an_empty_merchant_gets_the_zeros_the_empty_states_test_for(client: httpx.AsyncClient) -> None:
    # Each page shows its empty state on these exact fields: they must exist and be zero/empty.
    s = (await client.get("/v1/segments/summary", headers=H)).json()
    assert s["customers"] == 0 and len(s["cells"]) == 27
    roi = (await client.get("/v1/coupons/reports/roi", headers=H)).json()
    assert roi["rules"] == [] and roi["templates"] == []
    liab = (await client.get("/v1/loyalty/reports/liability", headers=H)).json()
    assert all(
        liab[f] == 0
        for f in ("customers", "points", "pending", "debt", "stored_value_paid_fen", "stored_value_bonus_fen")
    )
    assert liab["expiry_forecast"] == []
    funnel = (await client.get("/v1/notifications/funnel", headers=H)).json()
    assert funnel["total"] == 0 and funnel["reasons"] == {}
    q = (await client.post("/v1/audiences/query", headers=H, json={"filter": {"cell": ["3-3-3"]}, "limit": 1})).json()
    assert q["count"] == 0 and q["customers"] == [] and q["next_after"] is None
    js = "\n".join(p.read_text() for p in JS_FILES)
    for field in (
        "s.customers",
        "rules.length",
        "templates.length",
        "l.customers",
        "l.points",
        "l.pending",
        "f.total",
        "res.count",
        "res.next_after",
    ):
        assert field in js, f"the console's JS no longer reads {field}"


# ---------------------------------------------------------------- i18n


def dictionaries() -> dict[str, dict[str, str]]:
    text = (STATIC_DIR / "i18n.js").read_text()
    out = {}
    for loc in ("zh-CN", "en"):
        q = re.escape(loc)
        m = re.search(rf"// BEGIN {q}\n\s*\"{q}\":\s*(\{{.*?\n\s*\}}),?\n\s*// END {q}", text, re.S)
        assert m, f"i18n.js: no {loc} dictionary between its markers"
        out[loc] = json.loads(m.group(1))
    return out


def used_keys() -> set[str]:
    keys: set[str] = set()
    for js in JS_FILES:
        keys.update(re.findall(r"""\b[tk]\(\s*["']([\w.-]+)["']""", js.read_text()))
    for html in HTML_FILES:
        keys.update(re.findall(r'data-i18n(?:-[a-z-]+)?="([\w.-]+)"', html.read_text()))
    return keys


def test_every_key_used_is_in_both_dictionaries() -> None:
    d = dictionaries()
    used = used_keys()
    assert len(used) > 100, "the key scan found too little: its pattern no longer matches the code"
    for loc, messages in d.items():
        missing = used - set(messages)
        assert not missing, f"{loc} lacks {sorted(missing)}"
        assert all(isinstance(v, str) and v.strip() for v in messages.values()), f"{loc} has an empty string"
    assert set(d["zh-CN"]) == set(d["en"]), set(d["zh-CN"]) ^ set(d["en"])
    unused = set(d["zh-CN"]) - used
    assert not unused, f"keys nobody uses: {sorted(unused)}"


def test_zh_cn_is_chinese_and_en_is_not() -> None:
    d = dictionaries()
    cjk = re.compile(r"[\u4e00-\u9fff]")
    zh_with_cjk = sum(1 for v in d["zh-CN"].values() if cjk.search(v))
    assert zh_with_cjk / len(d["zh-CN"]) > 0.8
    en_with_cjk = [k for k, v in d["en"].items() if cjk.search(v) and k != "app.brand"]
    assert not en_with_cjk, en_with_cjk
    # Placeholders match between the two languages.
    for key, zh in d["zh-CN"].items():
        assert set(re.findall(r"\{(\w+)\}", zh)) == set(re.findall(r"\{(\w+)\}", d["en"][key])), key


def test_no_data_is_inserted_as_html() -> None:
    for js in JS_FILES:
        text = js.read_text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
            assert sink not in text, f"{js.name} uses {sink}"
