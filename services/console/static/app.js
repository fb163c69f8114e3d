// The console's app shell: a hash router over its pages, each drawn from the services' public
// APIs (api.js). All text goes through i18n.js; no data is ever inserted as HTML.
import { ApiError, apiKey, call, download, merchantName, toLogin, LOGIN_URL } from "./api.js";
import {
  applyStatic, fmtFen, fmtInt, fmtNum, fmtPct, fmtTime, k, locale, onLocaleChange, setLocale, t,
} from "./i18n.js";
import { pagePlaybooks } from "./playbooks.js";
import {
  CLASSES, LIFECYCLE_TAGS, STATUS_KEYS, TIERS, card, chart, className, disposeCharts, emptyState, errorBox, h, kpi,
  memberPager, pageHeader, reasonName, table, tierName,
} from "./ui.js";

// ---------------------------------------------------------------- #/rfm

async function pageRfm(view, { signal }) {
  const s = await call("summary", { signal });
  view.replaceChildren(pageHeader(t("rfm.title"), t("rfm.intro")));
  if (!s.customers) {
    view.append(emptyState(t("empty.no_orders")));
    return;
  }
  view.append(h("div", { class: "kpis" },
    kpi(t("rfm.kpi_customers"), fmtInt(s.customers)),
    kpi(t("rfm.kpi_repurchase"), fmtPct(s.repurchase_rate),
      t("rfm.kpi_repurchase_detail", { repeat: fmtInt(s.repeat_customers), buying: fmtInt(s.buying_customers) })),
    kpi(t("rfm.kpi_config"), String(s.config_version))));

  const levels = Math.max(1, Math.round(Math.cbrt(Object.keys(s.cells).length)));
  const count = (r, f, m) => s.cells[`${r}-${f}-${m}`] || 0;
  const total = Object.values(s.cells).reduce((a, b) => a + b, 0) || 1;
  const max = Math.max(1, ...Object.values(s.cells));
  const members = h("div", {});
  const names = Array.from({ length: levels }, (_, i) => String(i + 1));
  const grids = h("div", { class: "heatmaps" });

  for (let m = levels; m >= 1; m -= 1) {
    const label = m === levels ? t("rfm.level_high") : m === 1 ? t("rfm.level_low") : t("rfm.level_mid");
    const data = [];
    for (let r = 1; r <= levels; r += 1) for (let f = 1; f <= levels; f += 1) data.push([r - 1, f - 1, count(r, f, m)]);
    grids.append(card(t("rfm.m_level", { m, label }), chart({
      tooltip: { formatter: (p) => t("rfm.cell_tooltip", { r: p.value[0] + 1, f: p.value[1] + 1, m,
                                                            count: fmtInt(p.value[2]), share: fmtPct(p.value[2] / total) }) },
      grid: { left: 56, right: 12, top: 12, bottom: 48 },
      xAxis: { type: "category", data: names.map((n) => "R" + n), name: t("rfm.axis_r"), nameLocation: "middle",
               nameGap: 28, splitArea: { show: true } },
      yAxis: { type: "category", data: names.map((n) => "F" + n), name: t("rfm.axis_f"), nameLocation: "middle",
               nameGap: 36, splitArea: { show: true } },
      visualMap: { min: 0, max, show: false, inRange: { color: ["#f4f7fb", "#9ec5fe", "#1f6feb"] } },
      series: [{ type: "heatmap", data, label: { show: true, formatter: (p) => `${fmtInt(p.value[2])}\n${fmtPct(p.value[2] / total)}`,
                                                 textBorderColor: "#fff", textBorderWidth: 2 },
                 emphasis: { itemStyle: { borderColor: "#111", borderWidth: 2 } } }],
      onclick: (p) => {
        const cell = `${p.value[0] + 1}-${p.value[1] + 1}-${m}`;
        members.replaceChildren(card(t("rfm.cell", { cell }),
          memberPager({ cell: [cell] }, (n) => t("rfm.members_title", { cell, count: fmtInt(n) }), signal)));
        members.scrollIntoView({ behavior: "smooth", block: "start" });
      },
    }, 280)));
  }
  view.append(grids, members);
}

// ---------------------------------------------------------------- #/tiers

function lineChart(days, series, percent = false) {
  return chart({
    tooltip: { trigger: "axis", valueFormatter: (v) => (percent ? fmtPct(v) : fmtInt(v)) },
    legend: { type: "scroll", top: 0 },
    grid: { left: 56, right: 16, top: 36, bottom: 32 },
    xAxis: { type: "category", data: days.map((d) => d.day) },
    yAxis: { type: "value", axisLabel: { formatter: (v) => (percent ? fmtPct(v, 0) : fmtInt(v)) } },
    series: series.map((s) => ({ type: "line", showSymbol: false, ...s })),
  });
}

async function pageTiers(view, { signal }) {
  const [s, trend] = await Promise.all([call("summary", { signal }),
                                        call("trend", { query: { days: 90 }, allow404: true, signal })]);
  view.replaceChildren(pageHeader(t("tiers.title")));
  if (!s.customers) {
    view.append(emptyState(t("empty.no_orders")));
    return;
  }
  const total = s.customers || 1;
  view.append(h("div", { class: "grid-2" },
    card(t("tiers.tiers_chart"), chart({
      tooltip: { trigger: "axis", valueFormatter: (v) => `${fmtInt(v)} (${fmtPct(v / total)})` },
      grid: { left: 56, right: 16, top: 16, bottom: 32 },
      xAxis: { type: "category", data: TIERS.map(tierName) },
      yAxis: { type: "value" },
      series: [{ type: "bar", data: TIERS.map((x) => s.tiers[x] || 0), colorBy: "data",
                 label: { show: true, position: "top", formatter: (p) => fmtPct(p.value / total) } }],
    })),
    card(t("tiers.classes_chart"), chart({
      tooltip: { trigger: "axis", valueFormatter: (v) => `${fmtInt(v)} (${fmtPct(v / total)})` },
      grid: { left: 8, right: 48, top: 16, bottom: 16, containLabel: true },
      xAxis: { type: "value" },
      yAxis: { type: "category", inverse: true, data: CLASSES.map((c) => className(c, s.class_names)) },
      series: [{ type: "bar", data: CLASSES.map((c) => s.classes[c] || 0),
                 label: { show: true, position: "right", formatter: (p) => fmtInt(p.value) } }],
    }))));

  const trendCard = card(t("tiers.trend_title"));
  view.append(trendCard);
  if (trend === null) {
    trendCard.append(emptyState(t("tiers.trend_pending")));
    return;
  }
  const days = Array.isArray(trend.days) ? [...trend.days] : [];
  if (trend.today && (!days.length || days[days.length - 1].day !== trend.today.day)) days.push(trend.today);
  if (days.length < 2) {  // one point draws no line
    trendCard.append(emptyState(t("tiers.trend_empty")));
    return;
  }
  const names = trend.class_names || s.class_names;
  trendCard.append(
    h("h3", {}, t("tiers.trend_repurchase")),
    lineChart(days, [{ name: t("rfm.kpi_repurchase"), data: days.map((d) => d.repurchase_rate ?? null),
                       areaStyle: { opacity: 0.15 } }], true),
    h("h3", {}, t("tiers.trend_tiers")),
    lineChart(days, TIERS.map((x) => ({ name: tierName(x), data: days.map((d) => (d.tiers || {})[x] ?? 0) }))),
    h("h3", {}, t("tiers.trend_classes")),
    lineChart(days, CLASSES.map((c) => ({ name: className(c, names),
                                          data: days.map((d) => (d.classes || {})[c] ?? 0) }))),
    h("h3", {}, t("tiers.trend_tags")),
    lineChart(days, LIFECYCLE_TAGS.map(([tag, key]) => ({ name: t(key),
                                                         data: days.map((d) => (d.tags || {})[tag] ?? 0) }))));
}

// ---------------------------------------------------------------- #/coupons

async function pageCoupons(view, { signal }) {
  const r = await call("couponRoi", { signal });
  view.replaceChildren(pageHeader(t("coupons.title"), t("coupons.intro")));
  const rules = r.rules || [];
  const templates = r.templates || [];
  if (!rules.length && !templates.length) {
    view.append(emptyState(t("coupons.empty")));
    return;
  }
  const lift = (x) => x.lift || null;
  if (rules.length) {
    const names = rules.map((x) => x.name);
    view.append(h("div", { class: "grid-2" },
      card(t("coupons.roi_chart"), rules.every((x) => x.roi === null && lift(x)?.incremental_roi == null)
        ? h("p", { class: "muted" }, t("coupons.roi_none")) : chart({
        tooltip: { trigger: "axis", valueFormatter: (v) => fmtNum(v) },
        grid: { left: 8, right: 16, top: 16, bottom: 32, containLabel: true },
        xAxis: { type: "category", data: names, axisLabel: { interval: 0, rotate: names.length > 4 ? 30 : 0 } },
        yAxis: { type: "value" },
        series: [
          { name: t("coupons.roi"), type: "bar", data: rules.map((x) => x.roi) },
          { name: t("coupons.incremental_roi"), type: "bar", data: rules.map((x) => lift(x)?.incremental_roi ?? null) },
        ],
        legend: { bottom: 0 },
      })),
      card(t("coupons.conversion_chart"), chart({
        tooltip: { trigger: "axis", valueFormatter: (v) => fmtPct(v) },
        legend: { bottom: 0 },
        grid: { left: 8, right: 16, top: 16, bottom: 32, containLabel: true },
        xAxis: { type: "category", data: names, axisLabel: { interval: 0, rotate: names.length > 4 ? 30 : 0 } },
        yAxis: { type: "value", axisLabel: { formatter: (v) => fmtPct(v, 0) } },
        series: [
          { name: t("coupons.treatment"), type: "bar", data: rules.map((x) => lift(x)?.treatment?.conversion ?? null) },
          { name: t("coupons.baseline"), type: "bar", data: rules.map((x) => x.baseline?.conversion ?? null) },
          { name: t("coupons.holdout"), type: "bar", data: rules.map((x) => lift(x)?.holdout?.conversion ?? null) },
        ],
      }))));
  }
  const interval = (i) => (i ? `${fmtPct(i.estimate)} [${fmtPct(i.low)}, ${fmtPct(i.high)}]` : t("common.none"));
  const common = [
    { label: t("coupons.name"), value: (x) => x.name },
    { label: t("coupons.issued"), num: true, value: (x) => fmtInt(x.issued) },
    { label: t("coupons.redeemed"), num: true, value: (x) => fmtInt(x.redeemed) },
    { label: t("coupons.redemption_rate"), num: true, value: (x) => fmtPct(x.redemption_rate) },
    { label: t("coupons.cost"), num: true, value: (x) => fmtFen(x.cost_fen) },
    { label: t("coupons.gmv"), num: true, value: (x) => fmtFen(x.gmv_fen) },
    { label: t("coupons.roi"), num: true, value: (x) => fmtNum(x.roi) },
  ];
  view.append(card(t("coupons.rules"), rules.length ? table([
    ...common,
    { label: t("coupons.baseline"), num: true, value: (x) => fmtPct(x.baseline?.conversion) },
    { label: t("coupons.treatment"), num: true, value: (x) => fmtPct(lift(x)?.treatment?.conversion) },
    { label: t("coupons.holdout"), num: true, value: (x) => fmtPct(lift(x)?.holdout?.conversion) },
    { label: t("coupons.lift"), num: true, value: (x) => interval(lift(x)?.conversion_diff) },
    { label: t("coupons.incremental_gmv"), num: true, value: (x) => fmtFen(lift(x)?.incremental_gmv_fen) },
    { label: t("coupons.incremental_roi"), num: true, value: (x) => fmtNum(lift(x)?.incremental_roi) },
    { label: t("coupons.notes"), value: (x) => (x.insufficient || []).join("; ") },
  ], rules) : h("p", { class: "muted" }, t("coupons.no_rules"))));
  view.append(card(t("coupons.templates"), templates.length ? table(common, templates)
    : h("p", { class: "muted" }, t("coupons.no_templates"))));
}

// ---------------------------------------------------------------- #/loyalty

async function pageLoyalty(view, { signal }) {
  const l = await call("liability", { signal });
  view.replaceChildren(pageHeader(t("loyalty.title"), t("common.as_of", { time: fmtTime(l.as_of) })));
  const nothing = !l.customers && !l.points && !l.pending && !l.debt && !l.stored_value_paid_fen
    && !l.stored_value_bonus_fen;
  if (nothing) {
    view.append(emptyState(t("loyalty.empty")));
    return;
  }
  view.append(h("div", { class: "kpis" },
    kpi(t("loyalty.points"), fmtInt(l.points), t("loyalty.value") + " " + fmtFen(l.points_value_fen)),
    kpi(t("loyalty.customers"), fmtInt(l.customers)),
    kpi(t("loyalty.pending"), fmtInt(l.pending)),
    kpi(t("loyalty.debt"), fmtInt(l.debt)),
    kpi(t("loyalty.expired_unswept"), fmtInt(l.expired_unswept)),
    kpi(t("loyalty.never_expire"), fmtInt(l.never_expire)),
    kpi(t("loyalty.sv_paid"), fmtFen(l.stored_value_paid_fen)),
    kpi(t("loyalty.sv_bonus"), fmtFen(l.stored_value_bonus_fen))));
  const forecast = l.expiry_forecast || [];
  view.append(card(t("loyalty.forecast"), forecast.length ? chart({
    tooltip: { trigger: "axis", valueFormatter: (v) => `${fmtInt(v)} ${t("loyalty.points_unit")}` },
    grid: { left: 8, right: 16, top: 16, bottom: 16, containLabel: true },
    xAxis: { type: "category", data: forecast.map((x) => x.month) },
    yAxis: { type: "value" },
    series: [{ name: t("loyalty.points"), type: "bar", data: forecast.map((x) => x.points) }],
  }) : h("p", { class: "muted" }, t("loyalty.forecast_empty"))));
}

// ---------------------------------------------------------------- #/messages

let messagesSince = "30";

async function pageMessages(view, { signal, rerender }) {
  // The last N days by the service's clock, not the browser's (which may be set wrong).
  const days = messagesSince === "all" ? undefined : messagesSince;
  const f = await call("funnel", { query: { days }, signal });
  const select = h("select", { onchange: (e) => { messagesSince = e.target.value; rerender(); } },
    [["7", t("messages.since_7")], ["30", t("messages.since_30")], ["90", t("messages.since_90")],
     ["all", t("messages.since_all")]].map(([v, label]) => h("option", { value: v, selected: v === messagesSince },
      label)));
  view.replaceChildren(pageHeader(t("messages.title")),
    h("label", { class: "inline" }, t("messages.since"), " ", select));
  if (!f.total) {
    view.append(emptyState(t("messages.empty")));
    return;
  }
  const stages = [["queued", t("stage.queued")], ["held", t("stage.held")], ["sent", t("stage.sent")],
                  ["delivered", t("stage.delivered")], ["failed", t("stage.failed")], ["skipped", t("stage.skipped")],
                  ["paused", t("stage.paused")], ["cancelled", t("stage.cancelled")]];
  view.append(h("div", { class: "kpis" }, kpi(t("stage.total"), fmtInt(f.total)),
    ...stages.map(([key, label]) => kpi(label, fmtInt(f[key]), fmtPct(f[key] / f.total)))));
  view.append(h("div", { class: "grid-2" },
    card(t("messages.funnel"), chart({
      tooltip: { trigger: "item", formatter: (p) => `${p.name}: ${fmtInt(p.value)} (${fmtPct(p.value / f.total)})` },
      series: [{ type: "funnel", sort: "none", left: "10%", width: "80%", top: 16, bottom: 16, minSize: "8%",
                 label: { show: true, position: "inside", formatter: (p) => `${p.name} ${fmtInt(p.value)}` },
                 data: [{ name: t("stage.total"), value: f.total }, { name: t("stage.sent"), value: f.sent },
                        { name: t("stage.delivered"), value: f.delivered }] }],
    })),
    card(t("messages.held_back"), heldBack(f.reasons || {}))));
}

function heldBack(reasons) {
  const statuses = Object.keys(reasons).filter((s) => Object.keys(reasons[s]).length);
  if (!statuses.length) return h("p", { class: "muted" }, t("messages.held_back_none"));
  const codes = [...new Set(statuses.flatMap((s) => Object.keys(reasons[s])))];
  const rows = statuses.flatMap((s) => Object.entries(reasons[s]).map(([reason, n]) => ({ s, reason, n })));
  const statusName = (s) => (STATUS_KEYS[s] ? t(STATUS_KEYS[s]) : s);
  return h("div", {},
    chart({
      tooltip: { trigger: "axis", valueFormatter: (v) => fmtInt(v) },
      legend: { bottom: 0 },
      grid: { left: 8, right: 24, top: 8, bottom: 32, containLabel: true },
      xAxis: { type: "value" },
      yAxis: { type: "category", inverse: true, data: codes.map(reasonName) },
      series: statuses.map((s) => ({ name: statusName(s), type: "bar", stack: "held",
                                     data: codes.map((c) => reasons[s][c] || 0) })),
    }, Math.max(200, 40 * codes.length + 60)),
    table([{ label: t("messages.col_status"), value: (x) => statusName(x.s) },
           { label: t("messages.col_reason"), value: (x) => reasonName(x.reason) },
           { label: t("common.count"), num: true, value: (x) => fmtInt(x.n) }], rows));
}

// ---------------------------------------------------------------- #/audiences

const builder = { op: "and", rows: [{ kind: "tier", values: [], text: "", gte: "", lte: "", negate: false }] };
const KINDS = [["tier", k("audiences.kind_tier")], ["rfm_class", k("audiences.kind_class")],
               ["tag", k("audiences.kind_tag")], ["recency_days", k("audiences.kind_recency")]];

// A row as a filter condition, or null while it is incomplete.
function condition(row) {
  let c = null;
  const int = (v) => (v === "" || v === null ? null : Number(v));
  if ((row.kind === "tier" || row.kind === "rfm_class") && row.values.length) c = { [row.kind]: [...row.values] };
  if (row.kind === "tag") {
    const tags = row.text.split(/[,，\s]+/).map((x) => x.trim()).filter(Boolean);
    if (tags.length) c = { tag: tags };
  }
  if (row.kind === "recency_days") {
    const gte = int(row.gte);
    const lte = int(row.lte);
    const ok = (v) => v === null || (Number.isInteger(v) && v >= 0);
    if (ok(gte) && ok(lte) && (gte !== null || lte !== null) && (gte === null || lte === null || gte <= lte)) {
      c = { recency_days: Object.fromEntries(Object.entries({ gte, lte }).filter(([, v]) => v !== null)) };
    }
  }
  return c && row.negate ? { not: c } : c;
}

function builtFilter() {
  const conds = builder.rows.map(condition);
  const complete = conds.filter(Boolean);
  const filter = complete.length === 0 ? null : complete.length === 1 ? complete[0] : { [builder.op]: complete };
  return { filter, incomplete: complete.length < conds.length };
}

async function pageAudiences(view, { signal }) {
  const s = await call("summary", { signal });
  const status = h("div", { class: "count", role: "status" });
  const note = h("p", { class: "muted" });
  const json = h("pre", { class: "json" });
  const rowsBox = h("div", { class: "conditions" });
  const results = h("div", {});
  const saved = h("div", { class: "saved-audiences" }, h("p", { class: "muted" }, t("app.loading")));
  let timer = null;
  let seq = 0;
  let inflight = null;

  function checkboxes(row, options, name) {
    return h("div", { class: "checks" }, options.map((code) => h("label", {},
      h("input", { type: "checkbox", checked: row.values.includes(code), onchange: (e) => {
        row.values = e.target.checked ? [...row.values, code] : row.values.filter((v) => v !== code);
        changed();
      } }), " ", name(code))));
  }

  function editor(row) {
    if (row.kind === "tier") return checkboxes(row, TIERS, tierName);
    if (row.kind === "rfm_class") return checkboxes(row, CLASSES, (c) => className(c, s.class_names));
    if (row.kind === "tag") {
      return h("input", { type: "text", class: "wide", value: row.text, placeholder: t("audiences.tag_placeholder"),
                          list: "tag-suggestions", oninput: (e) => { row.text = e.target.value; changed(); } });
    }
    const num = (field, label) => h("label", {}, label, " ", h("input", {
      type: "number", min: "0", step: "1", value: row[field], class: "short",
      oninput: (e) => { row[field] = e.target.value; changed(); } }));
    return h("div", { class: "range" }, num("gte", t("audiences.gte")), num("lte", t("audiences.lte")));
  }

  function drawRows() {
    rowsBox.replaceChildren(...builder.rows.map((row, i) => h("div", { class: "condition" },
      h("select", { onchange: (e) => { row.kind = e.target.value; row.values = []; drawRows(); changed(); } },
        KINDS.map(([kind, key]) => h("option", { value: kind, selected: kind === row.kind }, t(key)))),
      editor(row),
      h("label", { class: "negate" }, h("input", { type: "checkbox", checked: row.negate,
                                                  onchange: (e) => { row.negate = e.target.checked; changed(); } }),
        " ", t("audiences.negate")),
      h("button", { type: "button", class: "link", onclick: () => { builder.rows.splice(i, 1); drawRows(); changed(); } },
        t("audiences.remove")))));
  }

  async function count() {
    const mine = ++seq;
    const { filter, incomplete } = builtFilter();
    note.textContent = incomplete && filter ? t("audiences.incomplete") : "";
    json.textContent = filter ? JSON.stringify({ filter }, null, 2) : "";
    results.replaceChildren();
    if (!filter) {
      status.replaceChildren(t("audiences.no_conditions"));
      return;
    }
    if (inflight) inflight.abort();
    inflight = new AbortController();
    signal.addEventListener("abort", () => inflight?.abort(), { once: true });
    status.replaceChildren(t("audiences.counting"));
    try {
      const res = await call("audienceQuery", { body: { filter, limit: 1 }, signal: inflight.signal });
      if (mine !== seq) return;
      status.replaceChildren(h("strong", { "data-count": res.count }, t("audiences.count", { count: fmtInt(res.count) })),
        " ",
        res.count ? h("button", { type: "button", class: "show-members", onclick: () => results.replaceChildren(
          card(null, memberPager(filter, (n) => t("audiences.count", { count: fmtInt(n) }), signal))) },
        t("audiences.show")) : null,
        res.count ? exportButton(() => download("audienceCsv", { body: { filter }, accept: "text/csv" },
                                                "audience.csv")) : null,
        saveForm(filter));
    } catch (e) {
      if (e.name !== "AbortError" && mine === seq) status.replaceChildren(errorBox(e));
    }
  }

  function changed() {
    clearTimeout(timer);
    timer = setTimeout(count, 350);
  }

  // Save the filter as a named audience (campaign rules and playbooks can then use it by id).
  function saveForm(filter) {
    const name = h("input", { type: "text", class: "name", maxlength: "64", placeholder: t("audiences.name_placeholder"),
                              "aria-label": t("audiences.name") });
    const said = h("span", { class: "muted", role: "status" });
    const save = h("button", { type: "button", class: "save-audience", onclick: async () => {
      if (!name.value.trim()) {
        said.textContent = t("audiences.name_missing");
        return;
      }
      save.disabled = true;
      try {
        const made = await call("audienceSave", { body: { name: name.value.trim(), filter }, signal });
        said.textContent = t("audiences.saved", { name: made.name });
        name.value = "";
        drawSaved();
      } catch (e) {
        if (e.name !== "AbortError") said.replaceChildren(errorBox(e));
      } finally {
        save.disabled = false;
      }
    } }, t("audiences.save"));
    return h("div", { class: "save-row" }, name, save, said);
  }

  async function drawSaved() {
    try {
      const list = await call("audiences", { signal });
      if (!list.length) {
        saved.replaceChildren(h("p", { class: "muted" }, t("audiences.saved_none")));
        return;
      }
      const counts = await Promise.all(list.map((a) => call("audienceQuery", { body: { filter: a.filter, limit: 1 },
                                                                             signal }).then((r) => r.count,
        () => null)));
      saved.replaceChildren(table([
        { label: t("audiences.name"), value: (x) => x.a.name },
        { label: t("common.count"), num: true, value: (x) => (x.n === null ? t("common.none") : fmtInt(x.n)) },
        { label: t("audiences.filter"), value: (x) => h("code", {}, JSON.stringify(x.a.filter)) },
        { label: t("audiences.updated"), value: (x) => fmtTime(x.a.updated_at) },
        { label: "", value: (x) => h("span", { class: "actions" },
          h("button", { type: "button", class: "link", onclick: () => results.replaceChildren(card(x.a.name,
            memberPager(x.a.filter, (n) => t("audiences.count", { count: fmtInt(n) }), signal))) },
          t("audiences.show")),
          h("button", { type: "button", class: "link", onclick: () => download("audienceMembersCsv", {
            params: { audience_id: x.a.audience_id }, accept: "text/csv" }, `audience-${x.a.audience_id}.csv`) },
          t("audiences.export")),
          h("a", { href: `#/playbooks?audience=${encodeURIComponent(x.a.audience_id)}` }, t("audiences.use")),
          h("button", { type: "button", class: "link danger", onclick: async () => {
            if (!window.confirm(t("audiences.delete_confirm", { name: x.a.name }))) return;
            try {
              await call("audienceDelete", { params: { audience_id: x.a.audience_id }, signal });
              drawSaved();
            } catch (e) {
              if (e.name !== "AbortError") saved.prepend(errorBox(e));
            }
          } }, t("audiences.delete"))) },
      ], list.map((a, i) => ({ a, n: counts[i] }))));
    } catch (e) {
      if (e.name !== "AbortError") saved.replaceChildren(errorBox(e, drawSaved));
    }
  }

  view.replaceChildren(pageHeader(t("audiences.title"), t("audiences.intro")));
  if (!s.customers) view.append(emptyState(t("audiences.empty_shop")));
  view.append(
    h("datalist", { id: "tag-suggestions" },
      ["new", "interest", "dormant", "churn_risk"].map((tag) => h("option", { value: tag }))),
    card(null,
      h("label", { class: "inline" }, t("audiences.match"), " ",
        h("select", { onchange: (e) => { builder.op = e.target.value; changed(); } },
          h("option", { value: "and", selected: builder.op === "and" }, t("audiences.match_and")),
          h("option", { value: "or", selected: builder.op === "or" }, t("audiences.match_or")))),
      rowsBox,
      h("button", { type: "button", onclick: () => {
        builder.rows.push({ kind: "tier", values: [], text: "", gte: "", lte: "", negate: false });
        drawRows();
        changed();
      } }, t("audiences.add")),
      status, note,
      h("details", {}, h("summary", {}, t("audiences.filter_json")), json)),
    results,
    card(t("audiences.saved_title"), saved));
  drawRows();
  count();
  drawSaved();
}

// A button that runs an export, saying so while it runs and what went wrong if it fails.
function exportButton(run) {
  const button = h("button", { type: "button", class: "export", onclick: async () => {
    button.disabled = true;
    button.textContent = t("audiences.exporting");
    try {
      await run();
      button.textContent = t("audiences.export");
    } catch (e) {
      button.textContent = t("audiences.export_failed");
      button.title = e.message;
    } finally {
      button.disabled = false;
    }
  } }, t("audiences.export"));
  return button;
}

// ---------------------------------------------------------------- the router

const ROUTES = { rfm: pageRfm, tiers: pageTiers, coupons: pageCoupons, loyalty: pageLoyalty,
                 messages: pageMessages, audiences: pageAudiences, playbooks: pagePlaybooks };
const view = document.getElementById("view");
let controller = null;

function routeName() {
  return window.location.hash.replace(/^#\/?/, "").split(/[/?]/)[0] || "rfm";
}

// #/page?x=1 → URLSearchParams of x=1.
function routeParams() {
  const hash = window.location.hash;
  return new URLSearchParams(hash.includes("?") ? hash.slice(hash.indexOf("?") + 1) : "");
}

async function render() {
  const name = routeName();
  if (controller) controller.abort();
  controller = new AbortController();
  const { signal } = controller;
  disposeCharts();
  for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.dataset.route === name);
  const page = ROUTES[name];
  if (!page) {
    view.replaceChildren(pageHeader(t("app.not_found")));
    return;
  }
  view.replaceChildren(h("p", { class: "muted" }, t("app.loading")));
  try {
    await page(view, { signal, rerender: render, params: routeParams() });
  } catch (e) {
    if (e.name === "AbortError" || signal.aborted) return;
    if (e instanceof ApiError && e.status === 401) return;  // on the way to the login page
    disposeCharts();
    view.replaceChildren(errorBox(e, render));
  }
}

function start() {
  if (!apiKey()) {
    window.location.replace(LOGIN_URL);
    return;
  }
  applyStatic(document);
  document.getElementById("merchant-name").textContent = merchantName() || "";
  const lang = document.getElementById("lang-select");
  lang.value = locale();
  lang.addEventListener("change", () => setLocale(lang.value));
  onLocaleChange(() => render());
  document.getElementById("signout").addEventListener("click", () => toLogin("signed_out"));
  window.addEventListener("hashchange", render);
  if (!window.location.hash) window.history.replaceState(null, "", "#/rfm");
  render();
}

start();
