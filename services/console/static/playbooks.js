// #/playbooks: one click from an audience to a coupon and a reminder. A playbook is made of the
// services' own parts, so every part stays visible and editable where it lives:
//   coupons:       the audience_winback preset (a coupon template and a daily scheduled rule with
//                  the audience, a holdout and once per customer), run at once;
//   notifications: a WeChat and/or SMS template on coupon.issued and a rule answering only the
//                  coupons of that coupon rule (conditions.coupon_rules), WeChat first, SMS fallback.
// If a notifications step fails, the coupon rule is disabled again, so no coupon goes out without
// its reminder.
import { ApiError, call } from "./api.js";
import { fmtFen, fmtInt, fmtPct, fmtTime, k, t } from "./i18n.js";
import { TIERS, card, emptyState, errorBox, h, pageHeader, table, tierName } from "./ui.js";

export const PRESET = "audience_winback";
const notifyRuleId = (ruleId) => `pb-${ruleId}`;
const WECHAT_FIELDS = [["thing1", "{{ coupon.name }}"], ["time2", "{{ coupon.expires_at | date }}"],
                       ["thing3", "好久不见，回购券已放入您的卡包"]];
const SMS_TEXT = "【{{ shop.name }}】好久不见！送您{{ coupon.name }}，{{ coupon.expires_at | date }}前有效，"
  + "打开小程序「我的-优惠券」即可使用。退订回T";

// The form's state survives a language switch (the page is redrawn) but not a reload.
const form = {
  source: "tiers", tiers: ["B"], inactiveDays: "30", audienceId: "",
  payPercent: "85", maxDiscountYuan: "", validDays: "7", holdout: "10",
  wechat: true, wechatTemplate: "", page: "pages/coupons/index", fields: WECHAT_FIELDS.map(([k, v]) => ({ k, v })),
  sms: true, smsText: SMS_TEXT, runNow: true,
};

function zhe(pay) {
  return pay % 10 === 0 ? `${pay / 10}` : `${Math.floor(pay / 10)}.${pay % 10}`;
}

function intOrNull(text) {
  const n = Number(text);
  return text !== "" && Number.isInteger(n) ? n : null;
}

// The audience the form describes: the preset's parameters, and the filter to count it with.
function audienceOf(saved) {
  if (form.source === "saved") {
    const a = saved.find((x) => x.audience_id === form.audienceId);
    return a ? { params: { audience_id: a.audience_id }, filter: a.filter, label: a.name } : null;
  }
  const days = intOrNull(form.inactiveDays);
  if (!form.tiers.length || days === null || days < 1) return null;
  const tiers = TIERS.filter((x) => form.tiers.includes(x));
  return {
    params: { tiers, inactive_days: days },
    filter: { and: [{ tier: tiers }, { recency_days: { gte: days } }] },
    label: t("playbooks.audience_tiers", { tiers: tiers.map(tierName).join(" / "), days }),
  };
}

// The daily check runs at 10:00 on the merchant's own clock.
function presetParams(audience, timezone) {
  const params = { ...audience.params, pay_percent: intOrNull(form.payPercent), valid_days: intOrNull(form.validDays),
                   holdout_percent: intOrNull(form.holdout), timezone };
  const cap = form.maxDiscountYuan === "" ? null : Math.round(Number(form.maxDiscountYuan) * 100);
  if (cap !== null) params.max_discount_fen = cap;
  return params;
}

// ---------------------------------------------------------------- enabling one

async function enable(audience, timezone, log, signal) {
  const step = (key, vars) => {
    const line = h("li", { class: "running" }, t(key, vars));
    log.append(line);
    return {
      done: (detail) => { line.className = "done"; if (detail) line.append(" · ", detail); },
      fail: (e) => { line.className = "failed"; line.append(errorBox(e)); },
    };
  };
  let s = step(k("playbooks.step_coupon"));
  let made;
  try {
    made = await call("couponPreset", { params: { name: PRESET }, body: presetParams(audience, timezone), signal });
  } catch (e) {
    s.fail(e);
    return null;
  }
  const ruleId = made.rule.rule_id;
  s.done(`${made.rule.name} (${ruleId})`);
  const channels = [];
  try {
    if (form.wechat) {
      s = step(k("playbooks.step_wechat"));
      const fields = Object.fromEntries(form.fields.filter((f) => f.k.trim()).map((f) => [f.k.trim(), f.v]));
      await call("notifyTemplateSave", { signal, body: {
        key: `${notifyRuleId(ruleId)}-wx`, channel: "wechat", trigger: "coupon.issued",
        parts: { provider_template: form.wechatTemplate.trim() || null, page: form.page.trim() || null, fields } } });
      channels.push({ channel: "wechat", template: `${notifyRuleId(ruleId)}-wx` });
      s.done();
    }
    if (form.sms) {
      s = step(k("playbooks.step_sms"));
      await call("notifyTemplateSave", { signal, body: {
        key: `${notifyRuleId(ruleId)}-sms`, channel: "sms", trigger: "coupon.issued", parts: { text: form.smsText } } });
      channels.push({ channel: "sms", template: `${notifyRuleId(ruleId)}-sms` });
      s.done();
    }
    if (channels.length) {
      s = step(k("playbooks.step_rule"));
      await call("notifyRulePut", { params: { rule_id: notifyRuleId(ruleId) }, signal, body: {
        name: t("playbooks.reminder_name", { name: made.rule.name }), trigger: "coupon.issued",
        conditions: { coupon_rules: [ruleId] }, channels } });
      s.done();
    }
  } catch (e) {
    s.fail(e);
    const undo = step(k("playbooks.step_undo"));
    try {
      await call("couponRuleState", { params: { rule_id: ruleId }, body: { enabled: false } });
      undo.done();
    } catch (e2) {
      undo.fail(e2);
    }
    return null;
  }
  if (form.runNow) {
    s = step(k("playbooks.step_run"));
    try {
      await call("couponRuleRun", { params: { rule_id: ruleId }, signal });
      s.done();
    } catch (e) {
      s.fail(e);
    }
  }
  return ruleId;
}

// ---------------------------------------------------------------- the page

export async function pagePlaybooks(view, { signal, rerender, params }) {
  const [merchant, saved, rules, notifyRules, templates] = await Promise.all([
    call("merchant", { signal }), call("audiences", { signal }), call("couponRules", { signal }),
    call("notifyRules", { signal }), call("notifyTemplates", { signal })]);
  if (params.get("audience") && saved.some((a) => a.audience_id === params.get("audience"))) {
    form.source = "saved";
    form.audienceId = params.get("audience");
  }
  if (!form.wechatTemplate) {
    const wx = templates.find((x) => x.channel === "wechat" && x.parts.provider_template);
    if (wx) form.wechatTemplate = wx.parts.provider_template;
  }
  view.replaceChildren(pageHeader(t("playbooks.title"), t("playbooks.intro")));
  view.append(await activeList(rules, notifyRules, saved, signal, rerender));
  view.append(newPlaybook(saved, merchant.timezone, signal, rerender));
}

async function activeList(rules, notifyRules, saved, signal, rerender) {
  const mine = rules.filter((r) => r.preset === PRESET);
  const box = card(t("playbooks.active"));
  if (!mine.length) {
    box.append(emptyState(t("playbooks.none")));
    return box;
  }
  const details = await Promise.all(mine.map((r) => call("couponRule", { params: { rule_id: r.rule_id }, signal })));
  const reminders = Object.fromEntries(notifyRules.map((r) => [r.rule_id, r]));
  const names = Object.fromEntries(saved.map((a) => [a.audience_id, a.name]));
  const audienceText = (r) => {
    const a = r.rule.audience;
    if (a && a.audience_id) return t("playbooks.audience_saved", { name: names[a.audience_id] || a.audience_id });
    const parts = a && a.filter && a.filter.and;
    const [tiers, recency] = Array.isArray(parts) && parts.length === 2 ? parts : [];
    if (tiers && tiers.tier && recency && recency.recency_days && Object.keys(recency.recency_days).join() === "gte") {
      return t("playbooks.audience_tiers", { tiers: tiers.tier.map(tierName).join(" / "),
                                             days: recency.recency_days.gte });
    }
    return JSON.stringify(a ? a.filter : null);
  };
  const toggle = async (r, on) => {
    try {
      await call("couponRuleState", { params: { rule_id: r.rule_id }, body: { enabled: on }, signal });
      const reminder = reminders[notifyRuleId(r.rule_id)];
      if (reminder) {
        const { rule_id: id, ...body } = reminder;
        await call("notifyRulePut", { params: { rule_id: id }, body: { ...body, active: on }, signal });
      }
      rerender();
    } catch (e) {
      if (e.name !== "AbortError") box.append(errorBox(e));
    }
  };
  const run = async (r, button) => {
    button.disabled = true;
    try {
      await call("couponRuleRun", { params: { rule_id: r.rule_id }, signal });
      button.textContent = t("playbooks.run_started");
    } catch (e) {
      button.disabled = false;
      if (e.name !== "AbortError") box.append(errorBox(e));
    }
  };
  box.append(table([
    { label: t("playbooks.col_name"), value: ({ r }) => r.name },
    { label: t("playbooks.col_audience"), value: ({ r }) => audienceText(r) },
    { label: t("playbooks.col_state"), value: ({ r }) => (r.enabled ? t("playbooks.on") : t("playbooks.off")) },
    { label: t("playbooks.col_next"), value: ({ r }) => (r.enabled ? fmtTime(r.next_fire_at) : t("common.none")) },
    { label: t("playbooks.col_issued"), num: true, value: ({ d }) => fmtInt(d.spend.coupons) },
    { label: t("playbooks.col_reminder"), value: ({ r }) => {
      const n = reminders[notifyRuleId(r.rule_id)];
      return n ? n.channels.map((c) => c.channel).join(" → ") + (n.active ? "" : ` (${t("playbooks.off")})`)
        : t("common.none");
    } },
    { label: t("playbooks.col_holdout"), num: true, value: ({ r }) => fmtPct(r.rule.holdout_percent / 100, 0) },
    { label: "", value: ({ r }) => {
      const runButton = h("button", { type: "button", class: "link run", disabled: !r.enabled,
                                      onclick: () => run(r, runButton) }, t("playbooks.run"));
      return h("span", { class: "actions" }, runButton,
        h("button", { type: "button", class: "link", onclick: () => toggle(r, !r.enabled) },
          r.enabled ? t("playbooks.pause") : t("playbooks.resume")),
        h("a", { href: "#/coupons" }, t("playbooks.roi")));
    } },
  ], mine.map((r, i) => ({ r, d: details[i] }))));
  return box;
}

function newPlaybook(saved, timezone, signal, rerender) {
  const count = h("div", { class: "count", role: "status" });
  const summary = h("p", { class: "summary" });
  const log = h("ol", { class: "steps" });
  let seq = 0;
  let timer = null;

  async function recount() {
    const mine = ++seq;
    const audience = audienceOf(saved);
    summary.textContent = describe(audience);
    if (!audience) {
      count.textContent = t("playbooks.audience_incomplete");
      return;
    }
    count.textContent = t("audiences.counting");
    try {
      const r = await call("audienceQuery", { body: { filter: audience.filter, limit: 1 }, signal });
      if (mine !== seq) return;
      const holdout = intOrNull(form.holdout) || 0;
      count.replaceChildren(h("strong", { "data-count": r.count }, t("audiences.count", { count: fmtInt(r.count) })),
        " ", t("playbooks.reach", { reach: fmtInt(Math.round(r.count * (1 - holdout / 100))), holdout }));
    } catch (e) {
      if (e.name !== "AbortError" && mine === seq) count.replaceChildren(errorBox(e));
    }
  }
  const changed = () => { clearTimeout(timer); timer = setTimeout(recount, 300); };
  const bind = (field, attrs = {}) => h("input", { ...attrs, value: form[field],
                                                   oninput: (e) => { form[field] = e.target.value; changed(); } });
  const check = (field, label) => h("label", {}, h("input", { type: "checkbox", checked: form[field],
    onchange: (e) => { form[field] = e.target.checked; changed(); } }), " ", label);

  const sourceTiers = h("div", { class: "checks" },
    TIERS.map((x) => h("label", {}, h("input", { type: "checkbox", name: "tier", value: x,
      checked: form.tiers.includes(x), onchange: (e) => {
        form.tiers = e.target.checked ? [...form.tiers, x] : form.tiers.filter((v) => v !== x);
        changed();
      } }), " ", tierName(x))),
    h("label", {}, t("playbooks.inactive_days"), " ",
      bind("inactiveDays", { type: "number", min: "1", step: "1", class: "short", name: "inactive_days" })));
  const sourceSaved = saved.length
    ? h("select", { name: "audience", onchange: (e) => { form.audienceId = e.target.value; changed(); } },
      h("option", { value: "" }, t("playbooks.pick_audience")),
      saved.map((a) => h("option", { value: a.audience_id, selected: a.audience_id === form.audienceId }, a.name)))
    : h("span", { class: "muted" }, t("playbooks.no_saved"), " ", h("a", { href: "#/audiences" }, t("nav.audiences")));
  const radio = (value, label, body) => h("div", { class: "source" },
    h("label", {}, h("input", { type: "radio", name: "source", value, checked: form.source === value,
                                onchange: () => { form.source = value; changed(); } }), " ", label), body);

  const fieldsBox = h("div", { class: "fields" }, form.fields.map((f) => h("div", { class: "field-row" },
    h("input", { type: "text", class: "short", value: f.k, "aria-label": t("playbooks.wechat_key"),
                 oninput: (e) => { f.k = e.target.value; } }),
    h("input", { type: "text", class: "wide", value: f.v, "aria-label": t("playbooks.wechat_value"),
                 oninput: (e) => { f.v = e.target.value; } }))));
  const go = h("button", { type: "button", class: "primary enable", onclick: async () => {
    const audience = audienceOf(saved);
    if (!audience) {
      count.textContent = t("playbooks.audience_incomplete");
      return;
    }
    if (form.wechat && !form.wechatTemplate.trim()) {
      log.replaceChildren(errorBox(new ApiError(422, "invalid", t("playbooks.wechat_template_missing"))));
      return;
    }
    go.disabled = true;
    log.replaceChildren();
    const ruleId = await enable(audience, timezone, log, signal);
    go.disabled = false;
    if (ruleId) {
      log.append(h("li", { class: "done" }, t("playbooks.enabled"), " ",
        h("button", { type: "button", class: "link", onclick: () => rerender() }, t("playbooks.refresh"))));
    }
  } }, t("playbooks.enable"));

  const box = card(t("playbooks.new"),
    h("p", { class: "muted" }, t("playbooks.new_intro")),
    h("h3", {}, t("playbooks.who")),
    radio("tiers", t("playbooks.by_tier"), sourceTiers),
    radio("saved", t("playbooks.by_saved"), sourceSaved),
    count,
    h("h3", {}, t("playbooks.coupon")),
    h("div", { class: "form-grid" },
      h("label", {}, t("playbooks.pay_percent"), " ", bind("payPercent", { type: "number", min: "1", max: "99",
                                                                        class: "short", name: "pay_percent" })),
      h("label", {}, t("playbooks.max_discount"), " ", bind("maxDiscountYuan", { type: "number", min: "0", step: "0.01",
                                                                              class: "short", name: "max_discount" })),
      h("label", {}, t("playbooks.valid_days"), " ", bind("validDays", { type: "number", min: "1", class: "short",
                                                                      name: "valid_days" })),
      h("label", {}, t("playbooks.holdout"), " ", bind("holdout", { type: "number", min: "0", max: "50", class: "short",
                                                                 name: "holdout" }))),
    h("h3", {}, t("playbooks.reminder")),
    h("div", { class: "channel" }, check("wechat", t("playbooks.wechat")),
      h("label", {}, t("playbooks.wechat_template"), " ",
        bind("wechatTemplate", { type: "text", name: "wechat_template", placeholder: t("playbooks.wechat_template_hint") })),
      h("label", {}, t("playbooks.wechat_page"), " ", bind("page", { type: "text", name: "page" })),
      fieldsBox),
    h("div", { class: "channel" }, check("sms", t("playbooks.sms")),
      h("textarea", { name: "sms_text", rows: "2", class: "wide", oninput: (e) => { form.smsText = e.target.value; } },
        form.smsText)),
    h("p", {}, check("runNow", t("playbooks.run_now"))),
    summary,
    go,
    log);
  recount();
  return box;
}

function describe(audience) {
  if (!audience) return "";
  const pay = intOrNull(form.payPercent);
  const cap = form.maxDiscountYuan === "" ? null : Math.round(Number(form.maxDiscountYuan) * 100);
  const channels = [form.wechat ? t("playbooks.wechat") : null, form.sms ? t("playbooks.sms") : null].filter(Boolean);
  return t("playbooks.summary", {
    audience: audience.label,
    coupon: pay ? t("playbooks.coupon_name", { zhe: zhe(pay), pay }) : "?",
    cap: cap === null ? "" : t("playbooks.cap", { cap: fmtFen(cap) }),
    days: form.validDays || "?",
    reminder: channels.length ? channels.join(" → ") : t("playbooks.no_reminder"),
    holdout: form.holdout || "0",
  });
}
