"""The merchant console in a real browser: headless Chromium (Debian's package) driven by
Playwright, against a real embedded server on a loopback port with a small demo shop in it. The
figures on the pages are checked against the APIs they come from, a heatmap cell is clicked with
the mouse, and each page leaves a screenshot (test-artifacts/console/)."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import httpx
import pytest

from tests.browser.tab import EN, FEN, INT, PCT, Console, Tab, t, until_equal

# One browser for the session: its pages, and the tests that drive them, live in the session's loop.
pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="session")]

# What each page says when the merchant has no data (pages not listed must still show an empty state).
EMPTY_TEXT = {
    "rfm": "empty.no_orders",
    "tiers": "empty.no_orders",
    "coupons": "coupons.empty",
    "loyalty": "loyalty.empty",
    "messages": "messages.empty",
    "audiences": "audiences.empty_shop",
    "playbooks": "playbooks.none",
}


async def summary_of(console: Console, key: str | None = None) -> dict:
    async with console.api(key) as api:
        return (await api.get("/v1/segments/summary")).raise_for_status().json()


# ---------------------------------------------------------------- signing in


async def test_a_wrong_key_stays_on_the_login_page_and_says_why(tab: Tab) -> None:
    page = tab.page
    await page.goto(f"{tab.base_url}/console", wait_until="commit")  # no key yet: sent to the login page
    await page.wait_for_url(re.compile(r"/console/login$"))

    await page.click("#login-submit")
    assert await page.locator("#login-error").inner_text() == t("login.empty")

    await page.fill("#api-key", "fg_not_a_key_of_anyone")
    async with page.expect_response(lambda r: urlsplit(r.url).path == "/v1/merchant") as answer:
        await page.click("#login-submit")
    assert (await answer.value).status == 401
    error = page.locator("#login-error")
    await error.wait_for(state="visible")
    assert await error.inner_text() == t("login.wrong_key")
    assert urlsplit(page.url).path == "/console/login"
    assert await page.evaluate("() => sessionStorage.getItem('fugou.console.apiKey')") is None
    await tab.shot("login-wrong-key")
    tab.assert_clean(allow_status={401})


async def test_a_key_revoked_after_login_sends_the_next_page_to_the_login_page(tab: Tab, console: Console) -> None:
    async with console.api() as api:
        extra = (await api.post("/v1/merchant/api-keys")).raise_for_status().json()["api_key"]
    await tab.login(extra)

    async with console.api() as api:
        assert (await api.post("/v1/merchant/api-keys/revoke", json={"api_key": extra})).status_code == 204
    # Revocation travels to every service on the bus: wait until the pages' APIs refuse the key.
    async with console.api(extra) as api:
        for path in ("/v1/merchant", "/v1/segments/summary"):
            assert await until_equal(lambda path=path: _status(api, path), 401, timeout_s=30) == 401

    await tab.page.click('#nav a[data-route="tiers"]')
    await landed_on_login_expired(tab)
    assert await tab.page.evaluate("() => sessionStorage.getItem('fugou.console.apiKey')") is None
    await tab.shot("login-expired")
    tab.assert_clean(allow_status={401})


async def _status(api: httpx.AsyncClient, path: str) -> int:
    return (await api.get(path)).status_code


async def landed_on_login_expired(tab: Tab) -> None:
    # Waits on the notice: the page's parallel calls all get a 401, and the console must go to the
    # login page once (api.js toLogin), showing why.
    notice = tab.page.locator("#login-notice")
    await notice.wait_for(state="visible")
    assert urlsplit(tab.page.url)[2:4] == ("/console/login", "reason=expired")
    assert await notice.inner_text() == t("login.expired")


async def test_a_wrong_key_in_the_session_lands_on_the_login_page_at_the_next_load(tab: Tab) -> None:
    page = tab.page
    await page.goto(f"{tab.base_url}/console/login")
    await page.evaluate("() => sessionStorage.setItem('fugou.console.apiKey', 'fg_expired_long_ago')")
    await page.goto(f"{tab.base_url}/console#/rfm", wait_until="commit")
    await landed_on_login_expired(tab)
    assert await page.evaluate("() => sessionStorage.getItem('fugou.console.apiKey')") is None
    tab.assert_clean(allow_status={401})


# ---------------------------------------------------------------- every page


async def test_every_page_draws_without_an_error_and_leaves_a_screenshot(tab: Tab, console: Console) -> None:
    await tab.login(console.key)
    assert await tab.page.locator("#merchant-name").inner_text() == "Demo shop"
    routes = await tab.routes()
    assert {"rfm", "tiers", "coupons", "loyalty", "messages", "audiences"} <= set(routes), routes
    for route in routes:
        await tab.open(route)
        active = tab.page.locator("#nav a.active")
        assert await active.get_attribute("data-route") == route
        assert await tab.page.locator("#view .error-box").count() == 0, f"#/{route} shows an error"
        assert await tab.page.locator("#view > header.page-head h1").inner_text() != t("app.not_found")
        await tab.shot(route)
    tab.assert_clean()


# ---------------------------------------------------------------- the figures are the APIs'


async def test_the_rfm_page_shows_the_summary_and_draws_every_cell_of_it(tab: Tab, console: Console) -> None:
    await tab.login(console.key)
    s = await summary_of(console)
    assert await tab.kpi("rfm.kpi_customers") == await tab.fmt(s["customers"], INT)
    assert await tab.kpi("rfm.kpi_repurchase") == await tab.fmt(s["repurchase_rate"], PCT)
    assert await tab.kpi_detail("rfm.kpi_repurchase") == t(
        "rfm.kpi_repurchase_detail",
        repeat=await tab.fmt(s["repeat_customers"]),
        buying=await tab.fmt(s["buying_customers"]),
    )

    # One heatmap per M level, highest first; each point is [R-1, F-1, customers].
    levels = round(len(s["cells"]) ** (1 / 3))
    charts = tab.page.locator("#view .heatmaps .chart")
    assert await charts.count() == levels
    drawn: dict[str, int] = {}
    for i in range(levels):
        m = levels - i
        for x, y, n in await tab.chart_data(f"#view .heatmaps .card:nth-child({i + 1}) .chart"):
            drawn[f"{x + 1}-{y + 1}-{m}"] = n
    assert drawn == s["cells"]
    tab.assert_clean()


async def test_the_tiers_page_charts_the_summarys_tiers_and_classes(tab: Tab, console: Console) -> None:
    await tab.login(console.key)
    await tab.open("tiers")
    s = await summary_of(console)
    charts = tab.page.locator("#view .grid-2 .chart")
    assert await charts.count() == 2
    tiers = await tab.chart_data("#view .grid-2 .card:nth-child(1) .chart")
    assert tiers == [s["tiers"][x] for x in ("S", "A", "B", "C")]
    classes = await tab.chart_option("#view .grid-2 .card:nth-child(2) .chart")
    drawn = dict(zip(classes["yAxis"][0]["data"], classes["series"][0]["data"], strict=True))
    assert drawn == {s["class_names"][c]["zh_cn"]: n for c, n in s["classes"].items()}
    tab.assert_clean()


async def test_the_coupons_page_shows_each_rules_issued_and_redeemed_from_the_roi_report(
    tab: Tab, console: Console
) -> None:
    await tab.login(console.key)
    await tab.open("coupons")
    async with console.api() as api:
        roi = (await api.get("/v1/coupons/reports/roi")).raise_for_status().json()
    assert roi["rules"] and sum(r["issued"] for r in roi["rules"]) > 0, "the demo shop's rules issue coupons"
    rows = await tab.table(f'#view .card:has(> h2:text-is("{t("coupons.rules")}"))')
    shown = {row[t("coupons.name")]: (row[t("coupons.issued")], row[t("coupons.redeemed")]) for row in rows}
    want = {r["name"]: (await tab.fmt(r["issued"]), await tab.fmt(r["redeemed"])) for r in roi["rules"]}
    assert shown == want
    tab.assert_clean()


async def test_the_loyalty_page_shows_the_points_liability_report(tab: Tab, console: Console) -> None:
    await tab.login(console.key)
    await tab.open("loyalty")
    async with console.api() as api:
        li = (await api.get("/v1/loyalty/reports/liability")).raise_for_status().json()
    assert li["points"] > 0 and li["customers"] > 0, "the demo shop's buyers earn points"
    assert await tab.kpi("loyalty.points") == await tab.fmt(li["points"])
    value = await tab.fmt(li["points_value_fen"] / 100, FEN)
    assert await tab.kpi_detail("loyalty.points") == f"{t('loyalty.value')} {value}"
    assert await tab.kpi("loyalty.customers") == await tab.fmt(li["customers"])
    assert await tab.kpi("loyalty.pending") == await tab.fmt(li["pending"])
    tab.assert_clean()


async def test_the_messages_page_shows_the_funnel_for_the_period_it_asked_for(tab: Tab, console: Console) -> None:
    await tab.login(console.key)
    async with tab.page.expect_request(lambda r: urlsplit(r.url).path == "/v1/notifications/funnel") as asked:
        await tab.open("messages")
    query = urlsplit((await asked.value).url).query
    assert "days=30" in query, "the page asks for the last 30 days by default, by the service's clock"
    async with console.api() as api:
        f = (await api.get(f"/v1/notifications/funnel?{query}")).raise_for_status().json()
    assert f["total"] > 0, "the demo shop's coupons are announced"
    assert await tab.kpi("stage.total") == await tab.fmt(f["total"])
    for stage in ("queued", "held", "sent", "delivered", "failed", "skipped"):
        assert await tab.kpi(f"stage.{stage}") == await tab.fmt(f[stage]), stage
        assert await tab.kpi_detail(f"stage.{stage}") == await tab.fmt(f[stage] / f["total"], PCT), stage
    tab.assert_clean()


# ---------------------------------------------------------------- from a cell to its customers


async def test_clicking_a_heatmap_cell_lists_that_cells_customers_page_by_page(tab: Tab, console: Console) -> None:
    await tab.login(console.key)
    s = await summary_of(console)
    cell, count = max(s["cells"].items(), key=lambda kv: kv[1])
    assert count > 50, "the biggest cell fills more than one page of the table"
    r, f, m = (int(v) for v in cell.split("-"))
    levels = round(len(s["cells"]) ** (1 / 3))

    # Where ECharts drew the cell, in the viewport: a real mouse click there.
    chart = tab.page.locator("#view .heatmaps .chart").nth(levels - m)
    await chart.scroll_into_view_if_needed()
    x, y = await chart.evaluate(
        "(el, [x, y]) => { const [px, py] = window.echarts.getInstanceByDom(el).convertToPixel({ seriesIndex: 0 },"
        " [x, y]); const box = el.getBoundingClientRect(); return [box.left + px, box.top + py]; }",
        [r - 1, f - 1],
    )
    await tab.page.mouse.click(x, y)

    title = tab.page.locator("#view .members h3")
    await title.wait_for()
    await tab.network_idle()
    assert await tab.page.locator("#view .members").locator("xpath=ancestor::section[1]/h2").inner_text() == t(
        "rfm.cell", cell=cell
    )
    assert await title.inner_text() == t("rfm.members_title", cell=cell, count=await tab.fmt(count))

    async with console.api() as api:
        first = (await api.post("/v1/audiences/query", json={"filter": {"cell": [cell]}, "limit": 50})).json()
        second = (
            await api.post(
                "/v1/audiences/query", json={"filter": {"cell": [cell]}, "limit": 50, "after": first["next_after"]}
            )
        ).json()
    assert first["count"] == count
    ids = await _member_ids(tab)
    assert ids == [c["customer_id"] for c in first["customers"]]
    assert {c["cell"] for c in first["customers"]} == {cell}
    await tab.shot(f"cell-{cell}")

    await tab.page.locator("#view .members .pager button").nth(1).click()  # next
    await tab.page.locator("#view .members .pager span", has_text=t("common.page", n=2)).wait_for()
    await tab.network_idle()
    assert await _member_ids(tab) == [c["customer_id"] for c in second["customers"]]
    tab.assert_clean()


async def _member_ids(tab: Tab) -> list[str]:
    return [row[t("col.customer")] for row in await tab.table("#view .members")]


# ---------------------------------------------------------------- the audience builder


async def test_ticking_tiers_in_the_audience_builder_counts_their_customers_live(tab: Tab, console: Console) -> None:
    await tab.login(console.key)
    await tab.open("audiences")
    s = await summary_of(console)
    assert s["tiers"]["B"] > 0
    status = tab.page.locator("#view .count")
    assert await status.inner_text() == t("audiences.no_conditions")
    condition = tab.page.locator("#view .condition").first

    async def counted() -> str | None:
        strong = status.locator("strong[data-count]")
        return await strong.get_attribute("data-count") if await strong.count() else None

    await condition.locator("label", has_text=t("tier.B")).locator("input").check()
    assert await until_equal(counted, str(s["tiers"]["B"])) == str(s["tiers"]["B"])
    assert await status.locator("strong").inner_text() == t("audiences.count", count=await tab.fmt(s["tiers"]["B"]))
    await tab.shot("tier-B")

    await condition.locator("label", has_text=t("tier.A")).locator("input").check()
    both = s["tiers"]["A"] + s["tiers"]["B"]
    assert await until_equal(counted, str(both)) == str(both)
    await tab.network_idle()
    tab.assert_clean()


# ---------------------------------------------------------------- English


async def test_switching_to_english_translates_the_navigation_and_the_page_and_is_remembered(
    tab: Tab, console: Console
) -> None:
    await tab.login(console.key)
    routes = await tab.routes()
    nav = tab.page.locator("#nav a[data-route]")
    assert await nav.all_inner_texts() == [t(f"nav.{r}") for r in routes]

    await tab.switch_locale(EN)
    assert await nav.all_inner_texts() == [t(f"nav.{r}", EN) for r in routes]
    assert await tab.page.evaluate("() => document.documentElement.lang") == EN
    assert await tab.page.locator("#view > header.page-head h1").inner_text() == t("rfm.title", EN)
    s = await summary_of(console)
    assert await tab.kpi("rfm.kpi_customers") == await tab.fmt(s["customers"])
    await tab.shot("rfm-en")

    await tab.reload()
    assert await nav.all_inner_texts() == [t(f"nav.{r}", EN) for r in routes]
    tab.assert_clean()


# ---------------------------------------------------------------- a merchant with nothing yet


async def test_an_empty_merchant_sees_what_to_do_on_every_page_not_an_error(tab: Tab, console: Console) -> None:
    assert (await summary_of(console, console.empty_key))["customers"] == 0
    await tab.login(console.empty_key)
    assert await tab.page.locator("#merchant-name").inner_text() == "空空小店"
    for route in await tab.routes():
        await tab.open(route)
        empty = tab.page.locator("#view .empty")
        assert await empty.count() >= 1, f"#/{route} shows no empty state"
        assert await empty.first.is_visible()
        assert await tab.page.locator("#view .error-box").count() == 0, f"#/{route} shows an error"
        text = await empty.first.inner_text()
        assert t("common.what_to_do") in text
        if route in EMPTY_TEXT:
            assert t(EMPTY_TEXT[route]) in text, (route, text)
        await tab.shot(f"empty-{route}")
    tab.assert_clean()


# ---------------------------------------------------------------- save, export, and a playbook (last: they add data)

WINBACK = {"and": [{"tier": ["B"]}, {"recency_days": {"gte": 30}}]}


async def test_an_audience_is_saved_and_exported_from_the_builder(tab: Tab, console: Console) -> None:
    await tab.login(console.key)
    await tab.open("audiences")
    b = (await summary_of(console))["tiers"]["B"]
    await tab.page.locator("#view .condition").first.locator("label", has_text=t("tier.B")).locator("input").check()
    await tab.page.locator("#view .count strong[data-count]").wait_for()
    await tab.page.fill("#view .count input.name", "B级客户")
    await tab.page.click("#view .count button.save-audience")
    saved = tab.page.locator("#view .saved-audiences")
    await saved.locator("td", has_text="B级客户").wait_for()
    await tab.network_idle()
    [row] = [r for r in await tab.table("#view .saved-audiences") if r[t("audiences.name")] == "B级客户"]
    assert row[t("common.count")] == await tab.fmt(b)
    async with console.api() as api:
        [made] = [a for a in (await api.get("/v1/audiences")).json() if a["name"] == "B级客户"]
    assert made["filter"] == {"tier": ["B"]}

    async with tab.page.expect_download() as dl:
        await tab.page.click("#view .count button.export")
    download = await dl.value
    lines = (await download.path()).read_text(encoding="utf-8-sig").splitlines()  # with a BOM, for Excel
    assert download.suggested_filename == "audience.csv" and lines[0].startswith("customer_id")
    assert len(lines) == 1 + b
    await tab.shot("saved")
    tab.assert_clean()


async def test_a_playbook_is_enabled_with_one_click_and_reaches_its_audience(tab: Tab, console: Console) -> None:
    async with console.api() as api:
        lapsed_b = (await api.post("/v1/audiences/query", json={"filter": WINBACK, "limit": 1})).json()["count"]
    assert lapsed_b > 0, "the demo shop must have lapsed tier B customers"
    await tab.login(console.key)
    await tab.open("playbooks")
    count = tab.page.locator("#view .count strong[data-count]")
    await count.wait_for()
    assert await count.get_attribute("data-count") == str(lapsed_b)  # the default: tier B, 30 days
    await tab.shot("new")

    await tab.page.click("#view button.enable")
    steps = tab.page.locator("#view ol.steps li")
    await steps.filter(has_text=t("playbooks.enabled")).wait_for(timeout=20_000)
    assert await tab.page.locator("#view ol.steps li.failed").count() == 0
    assert [s.split(" · ")[0] for s in await steps.all_inner_texts()][:5] == [
        t("playbooks.step_coupon"),
        t("playbooks.step_wechat"),
        t("playbooks.step_sms"),
        t("playbooks.step_rule"),
        t("playbooks.step_run"),
    ]

    async with console.api() as api:
        [rule] = [r for r in (await api.get("/v1/coupons/rules")).json() if r["preset"] == "audience_winback"]
        assert rule["rule"]["audience"] == {"filter": WINBACK}
        [reminder] = [
            r for r in (await api.get("/v1/notifications/rules")).json() if r["rule_id"] == f"pb-{rule['rule_id']}"
        ]
        assert reminder["conditions"]["coupon_rules"] == [rule["rule_id"]]
        assert [c["channel"] for c in reminder["channels"]] == ["wechat", "sms"]

        async def decided() -> int:
            body = (await api.get(f"/v1/coupons/rules/{rule['rule_id']}/decisions", params={"limit": 1})).json()
            return sum(body["outcomes"].values())

        assert await until_equal(decided, lapsed_b, timeout_s=30) == lapsed_b  # every member: issued or held out
        issued = (await api.get(f"/v1/coupons/rules/{rule['rule_id']}")).json()["spend"]["coupons"]
    assert 0 < issued <= lapsed_b

    await tab.page.locator("#view ol.steps button", has_text=t("playbooks.refresh")).click()
    await tab.settle()
    [row] = await tab.table("#view")
    assert row[t("playbooks.col_name")] == rule["name"]
    assert row[t("playbooks.col_issued")] == await tab.fmt(issued)
    assert row[t("playbooks.col_state")] == t("playbooks.on")
    assert row[t("playbooks.col_reminder")] == "wechat → sms"
    await tab.shot("enabled")

    # Pause stops both parts, the coupon rule and its reminder; resume starts both again.
    for button, enabled in ((t("playbooks.pause"), False), (t("playbooks.resume"), True)):
        await tab.page.locator("#view table button", has_text=button).click()
        await tab.page.locator(
            "#view table td", has_text=t("playbooks.on" if enabled else "playbooks.off")
        ).first.wait_for()
        await tab.settle()
        async with console.api() as api:
            assert (await api.get(f"/v1/coupons/rules/{rule['rule_id']}")).json()["enabled"] is enabled
            [reminder] = [
                r for r in (await api.get("/v1/notifications/rules")).json() if r["rule_id"] == f"pb-{rule['rule_id']}"
            ]
            assert reminder["active"] is enabled
    tab.assert_clean()
