"""Fixtures for the console's browser tests: Debian's Chromium (installed when missing, like
deploy/postgres/start.sh installs PostgreSQL), one headless browser per session driven by
Playwright, and per module one real embedded server on a loopback port, filled through its
public API with a small demo shop (merchant `demo`) beside a merchant with no data at all.
Screenshots go to $FUGOU_TEST_ARTIFACTS (default test-artifacts/console/)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from playwright.async_api import Browser, async_playwright

from demo import feed, shop
from shared import clock
from tests.browser.tab import Console, Tab, Watch
from tests.infra import ROOT
from tests.processes import ServiceProcess

CHROMIUM_SCRIPT = ROOT / "deploy/browser/chromium.sh"
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
KEY = "fg_browser_demo_key"
ADMIN_TOKEN = "browser-test-admin-token"
EMPTY = "empty-shop"
# Small enough to feed and score in a few seconds, big enough that every tier and several cells
# have customers, and the biggest cell needs a second page of 50.
CUSTOMERS, MONTHS, SEED = 400, 4, 7
# The reports the console draws: the shop is "settled" when they stop changing.
REPORTS = (
    "/v1/segments/summary",
    "/v1/coupons/reports/roi",
    "/v1/loyalty/reports/liability",
    "/v1/notifications/funnel",
)
# Every read the console's pages make on their first draw; a new merchant is ready when each answers.
FIRST_READS = (
    "/v1/merchant",
    *REPORTS,
    "/v1/audiences",
    "/v1/coupons/rules",
    "/v1/notifications/rules",
    "/v1/notifications/templates",
)


# ---------------------------------------------------------------- the browser


@pytest.fixture(scope="session")
def chromium() -> str:
    """The Chromium executable (deploy/browser/chromium.sh installs Debian's package when missing)."""
    proc = subprocess.run([str(CHROMIUM_SCRIPT)], capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"{CHROMIUM_SCRIPT.name} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc.stdout.strip().splitlines()[-1]


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def browser(chromium: str) -> AsyncIterator[Browser]:
    # The system Chromium, never one Playwright downloads (no `playwright install`).
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            await b.close()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    path = Path(os.environ.get("FUGOU_TEST_ARTIFACTS") or ROOT / "test-artifacts" / "console")
    path.mkdir(parents=True, exist_ok=True)
    for old in path.glob("test_*--*.png"):  # a previous run's, which may name tests no longer there
        old.unlink()
    return path


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, f"report_{report.when}", report)


@pytest_asyncio.fixture(loop_scope="session")
async def tab(
    browser: Browser, console: Console, artifacts: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Tab]:
    """A fresh tab (its own context: no session or local storage from another test), Chinese as a
    merchant in Shanghai sees it. A failed test leaves a screenshot of where it stopped."""
    context = await browser.new_context(
        viewport={"width": 1280, "height": 900}, locale="zh-CN", timezone_id="Asia/Shanghai"
    )
    context.set_default_timeout(15_000)
    page = await context.new_page()
    watch = Watch()
    watch.attach(page)
    t = Tab(page, watch, console.url, artifacts, request.node.name)
    try:
        yield t
    finally:
        report = getattr(request.node, "report_call", None)
        if report is not None and report.failed:
            with contextlib.suppress(Exception):
                await t.shot("FAILED")
        await context.close()


# ---------------------------------------------------------------- the server


async def _get(url: str, key: str, path: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=url, headers={"X-Api-Key": key}, timeout=30) as c:
        return await c.get(path)


def _steady(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in ("as_of", "generated_at")}


async def settled_reports(url: str, key: str, rounds: int = 3, interval: float = 0.5, timeout: float = 60) -> None:
    """Until the reports the console draws read the same `rounds` times in a row: events travel on
    after POST /v1/events has answered (coupons issued, points earned, messages queued)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    seen: list[list[dict[str, Any]]] = []
    while True:
        now = [_steady((await _get(url, key, p)).raise_for_status().json()) for p in REPORTS]
        seen = [*seen[-(rounds - 1) :], now] if rounds > 1 else [now]
        if len(seen) == rounds and all(s == now for s in seen):
            return
        if loop.time() > deadline:
            raise AssertionError(f"the reports still move after {timeout}s: {now}")
        await asyncio.sleep(interval)


async def until_known(url: str, key: str, timeout: float = 30) -> None:
    """Until every service knows a new merchant's key (it travels to them on the bus)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        statuses = {p: (await _get(url, key, p)).status_code for p in FIRST_READS}
        if set(statuses.values()) == {200}:
            return
        if loop.time() > deadline:
            raise AssertionError(f"the new merchant is not known everywhere after {timeout}s: {statuses}")
        await asyncio.sleep(0.2)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def console(tmp_path_factory: pytest.TempPathFactory, artifacts: Path) -> AsyncIterator[Console]:
    """`make run` as a merchant's browser meets it: python -m services.embedded on a free loopback
    port (SQLite, in-process bus), the demo shop fed through POST /v1/events and scored."""
    tmp = tmp_path_factory.mktemp("console")
    env = {
        "HOST": "127.0.0.1",
        "FUGOU_ENV": "test",
        "FUGOU_DATA_DIR": str(tmp / "data"),
        "FUGOU_BUS": "inprocess",
        "FUGOU_BOOTSTRAP_API_KEY": KEY,
        "FUGOU_ADMIN_TOKEN": ADMIN_TOKEN,
        "FUGOU_LOG_LEVEL": "WARNING",
        "FUGOU_CONSUMER_POLL_MS": "50",
        "FUGOU_RELAY_IDLE_MS": "20",
        **{
            f"FUGOU_{svc.upper()}_DATABASE_URL": ""
            for svc in ("gateway", "segmentation", "coupons", "loyalty", "notifications")
        },
    }
    server = ServiceProcess("services.embedded", env, log_path=tmp / "embedded.log").start()
    try:
        await asyncio.to_thread(server.wait_http, "/readyz", 120)
        await until_known(server.url, KEY)

        the_shop = shop.generate(CUSTOMERS, MONTHS, SEED, now=clock.now().astimezone(shop.TZ).replace(microsecond=0))
        await feed.setup_merchant(server.url, KEY)
        report = await feed.post_events(server.url, KEY, shop.by_customer(the_shop.events), progress=False)
        assert report.rejected == 0, report.first_rejection
        scored = await feed.wait_until_scored(server.url, KEY, the_shop.buyers(), timeout=120, progress=False)
        assert scored == the_shop.buyers()
        await settled_reports(server.url, KEY)

        async with httpx.AsyncClient(base_url=server.url, headers={"X-Admin-Token": ADMIN_TOKEN}, timeout=30) as c:
            r = await c.post("/v1/platform/merchants", json={"merchant_id": EMPTY, "name": "空空小店"})
            assert r.status_code == 201, r.text
            empty_key = r.json()["api_key"]
        await until_known(server.url, empty_key)

        yield Console(server.url, KEY, empty_key)
    finally:
        server.stop()
        # The server's log beside the screenshots: what it said while the browser looked.
        log = tmp / "embedded.log"
        if log.exists():
            shutil.copyfile(log, artifacts / "embedded.log")
