// Shared by the console's pages: constants, DOM helpers, charts, and the paged customer list.
// No data is ever inserted as HTML: h() makes text nodes of every string child.
import { ApiError, call } from "./api.js";
import { fmtFen, fmtInt, fmtPct, fmtTime, k, locale, t } from "./i18n.js";

export const PAGE_SIZE = 50;
export const TIERS = ["S", "A", "B", "C"];
export const TIER_KEYS = { S: k("tier.S"), A: k("tier.A"), B: k("tier.B"), C: k("tier.C") };
export const CLASSES = ["important_value", "important_development", "important_retain", "important_winback",
                 "general_value", "general_development", "general_retain", "general_winback"];
export const CLASS_KEYS = {
  important_value: k("class.important_value"),
  important_development: k("class.important_development"),
  important_retain: k("class.important_retain"),
  important_winback: k("class.important_winback"),
  general_value: k("class.general_value"),
  general_development: k("class.general_development"),
  general_retain: k("class.general_retain"),
  general_winback: k("class.general_winback"),
};
export const LIFECYCLE_TAGS = [["new", k("tag.new")], ["interest", k("tag.interest")], ["dormant", k("tag.dormant")],
                        ["churn_risk", k("tag.churn_risk")]];
export const STATUS_KEYS = { skipped: k("status.skipped"), held: k("status.held"), failed: k("status.failed"),
                      dead: k("status.dead") };
export const REASON_KEYS = {
  cap_reached: k("reason.cap_reached"),
  quiet_hours: k("reason.quiet_hours"),
  consent_denied: k("reason.consent_denied"),
  consent_missing: k("reason.consent_missing"),
  duplicate: k("reason.duplicate"),
  no_contact: k("reason.no_contact"),
  invalid_contact: k("reason.invalid_contact"),
  no_subscription_credit: k("reason.no_subscription_credit"),
  campaign_cancelled: k("reason.campaign_cancelled"),
  unknown: k("reason.unknown"),
};
export const COLORS = ["#1f6feb", "#2da44e", "#bf8700", "#cf222e", "#8250df", "#1b7c83", "#bc4c00", "#6e7781"];

// ---------------------------------------------------------------- DOM helpers

// h("div", {class: "x", onclick: fn}, "text", child, …): text children become text nodes.
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") el.addEventListener(name.slice(2), value);
    else if (name === "class") el.className = value;
    else if (name in el && typeof value !== "string") el[name] = value;
    else el.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function pageHeader(title, intro) {
  return h("header", { class: "page-head" }, h("h1", {}, title), intro ? h("p", { class: "muted" }, intro) : null);
}

export function emptyState(text) {
  return h("div", { class: "empty", role: "status" },
    h("strong", {}, t("common.what_to_do")), h("p", {}, text));
}

export function kpi(label, value, detail) {
  return h("div", { class: "kpi" }, h("div", { class: "kpi-label" }, label),
    h("div", { class: "kpi-value" }, value), detail ? h("div", { class: "kpi-detail" }, detail) : null);
}

export function card(title, ...body) {
  return h("section", { class: "card" }, title ? h("h2", {}, title) : null, ...body);
}

export function errorBox(error, retry) {
  const message = error instanceof ApiError && error.status === 0 ? t("app.error_network") : error.message;
  const fields = error instanceof ApiError ? error.fields.filter((f) => f.field).map((f) => `${f.field}: ${f.message}`)
    : [];
  return h("div", { class: "error-box", role: "alert" },
    h("strong", {}, t("app.error") + (error instanceof ApiError && error.status ? ` (${error.status})` : "")),
    h("p", {}, message),
    fields.length ? h("ul", {}, fields.map((f) => h("li", {}, f))) : null,
    retry ? h("button", { type: "button", onclick: retry }, t("app.retry")) : null);
}

export function table(columns, rows) {
  return h("div", { class: "table-wrap" }, h("table", {},
    h("thead", {}, h("tr", {}, columns.map((c) => h("th", { class: c.num ? "num" : null }, c.label)))),
    h("tbody", {}, rows.map((row) => h("tr", {}, columns.map((c) => h("td", { class: c.num ? "num" : null },
      c.value(row))))))));
}

// ---------------------------------------------------------------- charts

let charts = [];

export function chart(option, height = 300) {
  const box = h("div", { class: "chart", style: `height:${height}px` });
  if (!window.echarts) return box;  // the vendored library failed to load: the tables still tell
  requestAnimationFrame(() => {
    if (!box.isConnected) return;
    const c = window.echarts.init(box, null, { renderer: "canvas", locale: locale() === "en" ? "EN" : "ZH" });
    const { onclick, ...rest } = option;
    c.setOption({ color: COLORS, animationDuration: 300, ...rest });
    if (onclick) c.on("click", onclick);
    charts.push(c);
  });
  return box;
}

export function disposeCharts() {
  for (const c of charts) c.dispose();
  charts = [];
}

window.addEventListener("resize", () => { for (const c of charts) c.resize(); });

export function tierName(code) {
  return TIER_KEYS[code] ? t(TIER_KEYS[code]) : code;
}

export function className(code, names) {
  const fromApi = names && names[code] && names[code][locale() === "en" ? "en" : "zh_cn"];
  return fromApi || (CLASS_KEYS[code] ? t(CLASS_KEYS[code]) : code || t("common.none"));
}

export function reasonName(code) {
  return REASON_KEYS[code] ? t(REASON_KEYS[code]) : code;
}

// ---------------------------------------------------------------- customers of a filter, paged

export function memberPager(filter, title, signal) {
  const box = h("div", { class: "members" });
  const cursors = [null];  // cursors[i]: the `after` of page i
  let page = 0;

  async function load() {
    box.replaceChildren(h("p", { class: "muted" }, t("app.loading")));
    try {
      const body = { filter, limit: PAGE_SIZE };
      if (cursors[page]) body.after = cursors[page];
      const res = await call("audienceQuery", { body, signal });
      cursors[page + 1] = res.next_after;
      const cols = [
        { label: t("col.customer"), value: (m) => m.customer_id },
        { label: t("col.tier"), value: (m) => (m.tier ? tierName(m.tier) : t("common.none")) },
        { label: t("col.class"), value: (m) => (m.rfm_class ? className(m.rfm_class) : t("common.none")) },
        { label: t("col.cell"), value: (m) => m.cell || t("common.none") },
        { label: t("col.frequency"), num: true, value: (m) => fmtInt(m.frequency) },
        { label: t("col.monetary"), num: true, value: (m) => fmtFen(m.monetary_fen) },
        { label: t("col.last_order"), value: (m) => fmtTime(m.last_order_at) },
        { label: t("col.region"), value: (m) => m.region || t("common.none") },
        { label: t("col.tags"), value: (m) => m.tags.join(", ") },
      ];
      box.replaceChildren(
        h("h3", {}, title(res.count)),
        res.customers.length ? table(cols, res.customers) : h("p", { class: "muted" }, t("rfm.members_empty")),
        h("div", { class: "pager" },
          h("button", { type: "button", disabled: page === 0, onclick: () => { page -= 1; load(); } },
            t("common.prev")),
          h("span", {}, t("common.page", { n: page + 1 })),
          h("button", { type: "button", disabled: !res.next_after, onclick: () => { page += 1; load(); } },
            t("common.next"))));
    } catch (e) {
      if (e.name !== "AbortError") box.replaceChildren(errorBox(e, load));
    }
  }

  load();
  return box;
}
