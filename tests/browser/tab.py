"""A browser tab on the console, as the tests drive it: log in, open a page and wait until it has
drawn, read a figure, take a screenshot; and everything the tab saw go wrong on the way (uncaught
errors, console errors, answers of 400 and above, requests that failed)."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
from playwright.async_api import ConsoleMessage, Page, Request, Response

from services.console import STATIC_DIR

T = TypeVar("T")
ZH, EN = "zh-CN", "en"

# Chromium's own words when a fetch is answered with an error status.
_LOAD_FAILED = re.compile(r"Failed to load resource: the server responded with a status of (\d+)")
# The route in the address, as app.js reads it.
_ROUTE_JS = "(location.hash.replace(/^#\\/?/, '').split(/[/?]/)[0] || 'rfm')"


def dictionaries() -> dict[str, dict[str, str]]:
    """The console's texts per locale, from i18n.js (plain JSON between its BEGIN/END markers)."""
    text = (STATIC_DIR / "i18n.js").read_text(encoding="utf-8")
    out = {}
    for loc in (ZH, EN):
        q = re.escape(loc)
        m = re.search(rf"// BEGIN {q}\n\s*\"{q}\":\s*(\{{.*?\n\s*\}}),?\n\s*// END {q}", text, re.S)
        assert m, f"i18n.js: no {loc} dictionary between its markers"
        out[loc] = json.loads(m.group(1))
    return out


MESSAGES = dictionaries()


def t(key: str, loc: str = ZH, **variables: object) -> str:
    """What i18n.js's t() shows: placeholders not given stay as they are."""
    text = MESSAGES[loc].get(key, MESSAGES[ZH].get(key, key))
    return re.sub(r"\{(\w+)\}", lambda m: str(variables[m.group(1)]) if m.group(1) in variables else m.group(0), text)


# Intl.NumberFormat options of i18n.js's fmtInt, fmtPct (one decimal) and fmtFen.
INT: dict[str, Any] = {}
PCT: dict[str, Any] = {"style": "percent", "minimumFractionDigits": 1, "maximumFractionDigits": 1}
FEN: dict[str, Any] = {"style": "currency", "currency": "CNY", "currencyDisplay": "narrowSymbol"}


@dataclass
class Console:
    """The server the tests' browser talks to."""

    url: str
    key: str  # merchant `demo`, with the shop's data
    empty_key: str  # a merchant with no events and no configuration

    def api(self, key: str | None = None) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, headers={"X-Api-Key": key or self.key}, timeout=30)


@dataclass
class Watch:
    """What went wrong in a tab, collected from Playwright's events."""

    page_errors: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    bad_responses: list[tuple[int, str, str]] = field(default_factory=list)  # (status, method, url)
    failed_requests: list[str] = field(default_factory=list)
    inflight: int = 0

    def attach(self, page: Page) -> None:
        page.on("pageerror", lambda e: self.page_errors.append(f"{e.name}: {e.message}\n{e.stack or ''}"))
        page.on("console", self._console)
        page.on("response", self._response)
        page.on("request", self._request)
        page.on("requestfinished", self._done)
        page.on("requestfailed", self._failed)

    def _console(self, msg: ConsoleMessage) -> None:
        if msg.type == "error":
            where = msg.location.get("url", "") if msg.location else ""
            self.console_errors.append(f"{msg.text} ({where})")

    def _response(self, r: Response) -> None:
        if r.status >= 400:
            self.bad_responses.append((r.status, r.request.method, r.url))

    def _request(self, r: Request) -> None:
        self.inflight += 1

    def _done(self, r: Request) -> None:
        self.inflight -= 1

    def _failed(self, r: Request) -> None:
        self.inflight -= 1
        # A page left while its calls are in flight aborts them on purpose (AbortController).
        if r.failure != "net::ERR_ABORTED":
            self.failed_requests.append(f"{r.method} {r.url}: {r.failure}")

    def problems(self, allow_status: Collection[int] = ()) -> list[str]:
        """Everything that went wrong, but answers with a status the test expects (and the console
        error Chromium logs for each of them)."""
        out = [f"uncaught: {e}" for e in self.page_errors]
        out += [
            f"console error: {e}"
            for e in self.console_errors
            if not ((m := _LOAD_FAILED.search(e)) and int(m.group(1)) in allow_status)
        ]
        out += [f"HTTP {s}: {method} {url}" for s, method, url in self.bad_responses if s not in allow_status]
        out += [f"request failed: {e}" for e in self.failed_requests]
        return out


@dataclass
class Tab:
    page: Page
    watch: Watch
    base_url: str
    artifacts: Path
    test_name: str
    locale: str = ZH

    # ------------------------------------------------------------ moving around

    async def login(self, key: str) -> None:
        """Through the login page, as a person would; ends on #/rfm, drawn."""
        await self.page.goto(f"{self.base_url}/console/login")
        await self.page.fill("#api-key", key)
        await self.page.click("#login-submit")
        await self.page.wait_for_url(re.compile(r"/console#/rfm$"))
        await self.settle()

    async def routes(self) -> list[str]:
        """The pages the navigation offers, in its order."""
        return await self.page.locator("#nav a[data-route]").evaluate_all("as => as.map((a) => a.dataset.route)")

    async def open(self, route: str) -> None:
        """Click the page's link in the navigation and wait until it has drawn (on the page
        already, a click changes nothing: no hashchange, no new drawing)."""
        here = await self.page.evaluate(f"() => {_ROUTE_JS}")
        if here != route:
            await self._mark_stale()
            await self.page.click(f'#nav a[data-route="{route}"]')
            await self.page.wait_for_function(f"r => {_ROUTE_JS} === r", arg=route)
        await self.settle()

    async def switch_locale(self, loc: str) -> None:
        """Choose the language in the top bar; the page draws itself again in it."""
        await self._mark_stale()
        await self.page.select_option("#lang-select", loc)
        self.locale = loc
        await self.settle()

    async def reload(self) -> None:
        await self.page.reload()
        await self.settle()

    async def _mark_stale(self) -> None:
        # What the previous page drew must not pass for the next one's.
        await self.page.evaluate(
            "() => { for (const el of document.querySelectorAll('#view > *')) el.dataset.stale = '1'; }"
        )

    async def settle(self, quiet_s: float = 0.4, timeout_s: float = 20.0) -> None:
        """Until the page has drawn: its header (or its error box) is there, no request has been in
        flight for quiet_s, and every chart has been drawn by ECharts."""
        await self.page.wait_for_selector(
            "#view > header.page-head:not([data-stale]), #view > .error-box:not([data-stale])",
            state="attached",
            timeout=timeout_s * 1000,
        )
        await self.network_idle(quiet_s, timeout_s)
        await self.page.wait_for_function(
            "() => [...document.querySelectorAll('#view .chart')].every("
            "(el) => window.echarts && window.echarts.getInstanceByDom(el))",
            timeout=timeout_s * 1000,
        )

    async def network_idle(self, quiet_s: float = 0.4, timeout_s: float = 20.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        quiet_since = None
        while True:
            now = loop.time()
            if self.watch.inflight > 0:
                quiet_since = None
            elif quiet_since is None:
                quiet_since = now
            elif now - quiet_since >= quiet_s:
                return
            if now > deadline:
                raise AssertionError(f"requests still in flight after {timeout_s}s: {self.watch.inflight}")
            await asyncio.sleep(0.05)

    # ------------------------------------------------------------ reading

    async def kpi(self, label_key: str) -> str:
        """The value of the KPI tile whose label is t(label_key)."""
        label = t(label_key, self.locale)
        tile = self.page.locator("#view .kpi").filter(
            has=self.page.locator(".kpi-label", has_text=re.compile(rf"^{re.escape(label)}$"))
        )
        assert await tile.count() == 1, f"one KPI tile labelled {label!r} expected, found {await tile.count()}"
        return (await tile.locator(".kpi-value").inner_text()).strip()

    async def kpi_detail(self, label_key: str) -> str:
        label = t(label_key, self.locale)
        tile = self.page.locator("#view .kpi").filter(
            has=self.page.locator(".kpi-label", has_text=re.compile(rf"^{re.escape(label)}$"))
        )
        return (await tile.locator(".kpi-detail").inner_text()).strip()

    async def fmt(self, value: float | int | None, options: dict[str, Any] = INT) -> str:
        """value as the console formats it in this tab's locale (i18n.js: Intl.NumberFormat)."""
        if value is None:
            return t("common.none", self.locale)
        return str(
            await self.page.evaluate(
                "([loc, v, o]) => new Intl.NumberFormat(loc, o).format(v)", [self.locale, value, options]
            )
        )

    async def table(self, scope: str) -> list[dict[str, str]]:
        """The first table under scope, as rows keyed by column header."""
        return (
            await self.page.locator(scope)
            .locator("table")
            .first.evaluate(
                "(tbl) => { const heads = [...tbl.querySelectorAll('thead th')].map((th) => th.textContent.trim());"
                " return [...tbl.querySelectorAll('tbody tr')].map((tr) => Object.fromEntries("
                "[...tr.children].map((td, i) => [heads[i], td.textContent.trim()]))); }"
            )
        )

    async def chart_option(self, selector: str) -> dict[str, Any]:
        """The option ECharts draws a chart from (what the canvas shows), as JSON."""
        return await self.page.locator(selector).evaluate(
            "(el) => JSON.parse(JSON.stringify(window.echarts.getInstanceByDom(el).getOption()))"
        )

    async def chart_data(self, selector: str, series: int = 0) -> list[Any]:
        return (await self.chart_option(selector))["series"][series]["data"]

    # ------------------------------------------------------------ evidence

    async def shot(self, name: str) -> Path:
        path = self.artifacts / f"{self.test_name}--{re.sub(r'[^A-Za-z0-9_.-]+', '-', name)}.png"
        await self.page.screenshot(path=str(path), full_page=True)
        return path

    def assert_clean(self, allow_status: Collection[int] = ()) -> None:
        problems = self.watch.problems(allow_status)
        assert not problems, "the console misbehaved:\n  " + "\n  ".join(problems)


async def until_equal(probe: Callable[[], Awaitable[T]], want: T, timeout_s: float = 10.0) -> T:
    """Poll until probe() == want; the last value either way (the caller asserts, so a failure
    shows what the page showed)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        got = await probe()
        if got == want or loop.time() > deadline:
            return got
        await asyncio.sleep(0.1)
