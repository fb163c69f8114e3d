// Every visible string of the console, in zh-CN (the default) and en. The two dictionaries are
// plain JSON between the BEGIN/END markers (tests/unit/test_console.py parses them): keep them
// strict JSON, and add every key to both.

const MESSAGES = {
  // BEGIN zh-CN
  "zh-CN": {
    "app.title": "复购 · 商家后台",
    "app.brand": "复购 Fugou",
    "app.signout": "退出登录",
    "app.language": "语言",
    "app.loading": "加载中…",
    "app.retry": "重试",
    "app.error": "请求失败",
    "app.error_network": "无法连接到服务：请确认 make run 正在运行",
    "app.not_found": "没有这个页面",
    "nav.rfm": "RFM 分层",
    "nav.tiers": "客户等级与分类",
    "nav.coupons": "优惠券 ROI",
    "nav.loyalty": "积分负债",
    "nav.messages": "消息漏斗",
    "nav.audiences": "人群圈选",
    "login.title": "登录商家后台",
    "login.intro": "请输入商家 API Key（make run 启动时打印，也保存在 data/demo-api-key）。",
    "login.key": "API Key",
    "login.submit": "登录",
    "login.checking": "正在验证…",
    "login.wrong_key": "API Key 无效或已被吊销，请检查后重试。",
    "login.expired": "登录已失效：API Key 过期、被吊销或错误，请重新登录。",
    "login.signed_out": "已退出登录。",
    "login.empty": "请输入 API Key。",
    "login.note": "API Key 只保存在本浏览器标签页的会话中，关闭标签页即失效。",
    "common.count": "人数",
    "common.none": "—",
    "common.prev": "上一页",
    "common.next": "下一页",
    "common.page": "第 {n} 页",
    "common.as_of": "统计时间：{time}",
    "common.what_to_do": "下一步",
    "empty.no_orders": "还没有订单数据：通过 POST /v1/events 发送订单事件（order.paid 等），或运行 make demo 生成示例店铺。",
    "rfm.title": "RFM 3×3×3 分层",
    "rfm.intro": "每个热力图是一个 M（消费金额）等级下的 R（最近一次购买）× F（购买频次）分布；点击格子查看其中的客户。",
    "rfm.kpi_customers": "有分层的客户",
    "rfm.kpi_repurchase": "复购率",
    "rfm.kpi_repurchase_detail": "{repeat} / {buying} 位购买客户复购",
    "rfm.kpi_config": "配置版本",
    "rfm.m_level": "M{m}（{label}）",
    "rfm.level_high": "高",
    "rfm.level_mid": "中",
    "rfm.level_low": "低",
    "rfm.axis_r": "R 最近购买（高 = 最近）",
    "rfm.axis_f": "F 购买频次",
    "rfm.cell": "格子 {cell}",
    "rfm.cell_tooltip": "R{r} F{f} M{m}：{count} 人（{share}）",
    "rfm.members_title": "格子 {cell} 的客户（共 {count} 人）",
    "rfm.members_empty": "这个格子里没有客户。",
    "col.customer": "客户 ID",
    "col.tier": "等级",
    "col.class": "分类",
    "col.cell": "格子",
    "col.frequency": "频次",
    "col.monetary": "金额",
    "col.last_order": "最近下单",
    "col.region": "地区",
    "col.tags": "标签",
    "tiers.title": "客户等级与 8 类客户",
    "tiers.tiers_chart": "S/A/B/C 等级",
    "tiers.classes_chart": "8 类客户",
    "tiers.trend_title": "近 90 天趋势",
    "tiers.trend_tiers": "等级趋势",
    "tiers.trend_classes": "分类趋势",
    "tiers.trend_repurchase": "复购率趋势",
    "tiers.trend_tags": "生命周期标签趋势",
    "tag.new": "新客",
    "tag.interest": "有兴趣未购买",
    "tag.dormant": "沉睡",
    "tag.churn_risk": "流失风险",
    "tiers.trend_pending": "趋势数据尚未开放：当前服务还没有 GET /v1/segments/trend。升级到提供每日快照的版本后，这里会显示近 90 天的等级、分类、标签与复购率变化。",
    "tiers.trend_empty": "还没有历史快照：服务运行时每小时记录一次，每天保留一个点，明天再来看看趋势。",
    "tier.S": "S 级",
    "tier.A": "A 级",
    "tier.B": "B 级",
    "tier.C": "C 级",
    "class.important_value": "重要价值客户",
    "class.important_development": "重要发展客户",
    "class.important_retain": "重要保持客户",
    "class.important_winback": "重要挽留客户",
    "class.general_value": "一般价值客户",
    "class.general_development": "一般发展客户",
    "class.general_retain": "一般保持客户",
    "class.general_winback": "一般挽留客户",
    "coupons.title": "优惠券 ROI",
    "coupons.intro": "ROI = 用券订单 GMV / 券成本。对照组：规则从未决策过的客户；留出组：规则留出不发券的客户（需设置 holdout_percent）。",
    "coupons.empty": "还没有优惠券规则：用一键玩法 POST /v1/coupons/presets/{name}，或 POST /v1/coupons/rules 创建规则，或运行 make demo。",
    "coupons.roi_chart": "各规则 ROI",
    "coupons.conversion_chart": "转化率：发券组 vs 对照组 vs 留出组",
    "coupons.rules": "规则",
    "coupons.templates": "券模板",
    "coupons.no_templates": "还没有券模板。",
    "coupons.no_rules": "还没有规则。",
    "coupons.name": "名称",
    "coupons.issued": "发放",
    "coupons.redeemed": "核销",
    "coupons.redemption_rate": "核销率",
    "coupons.cost": "成本",
    "coupons.gmv": "GMV",
    "coupons.roi": "ROI",
    "coupons.baseline": "对照组转化",
    "coupons.treatment": "发券组转化",
    "coupons.holdout": "留出组转化",
    "coupons.lift": "转化提升（95% 区间）",
    "coupons.incremental_gmv": "增量 GMV",
    "coupons.incremental_roi": "增量 ROI",
    "coupons.notes": "说明",
    "loyalty.title": "积分负债",
    "loyalty.empty": "还没有积分：用 PUT /v1/loyalty/rules 设置积分规则，客户付款后会自动获得积分；或运行 make demo。",
    "loyalty.customers": "持有积分的客户",
    "loyalty.points": "可用积分",
    "loyalty.pending": "待生效积分（退货期内）",
    "loyalty.debt": "退款欠回积分",
    "loyalty.value": "可用积分折合金额",
    "loyalty.expired_unswept": "已过期待清理",
    "loyalty.never_expire": "永不过期积分",
    "loyalty.sv_paid": "储值余额（实付）",
    "loyalty.sv_bonus": "储值余额（赠送）",
    "loyalty.forecast": "积分到期预测（按月）",
    "loyalty.forecast_empty": "没有会到期的积分。",
    "loyalty.points_unit": "积分",
    "messages.title": "消息漏斗",
    "messages.empty": "还没有消息：用 PUT /v1/notifications/rules/{rule_id} 设置触发规则，或 POST /v1/notifications/campaigns 发起活动；也可以运行 make demo。",
    "messages.since": "时间范围",
    "messages.since_7": "近 7 天",
    "messages.since_30": "近 30 天",
    "messages.since_90": "近 90 天",
    "messages.since_all": "全部",
    "messages.funnel": "排队 → 发送 → 送达",
    "messages.held_back": "被拦下的消息（按原因）",
    "messages.held_back_none": "没有消息被拦下。",
    "messages.col_status": "状态",
    "messages.col_reason": "原因",
    "stage.total": "全部消息",
    "stage.queued": "排队中",
    "stage.held": "暂缓",
    "stage.sent": "已发送",
    "stage.delivered": "已送达",
    "stage.failed": "失败",
    "stage.skipped": "未发送",
    "stage.paused": "已暂停",
    "stage.cancelled": "已取消",
    "status.skipped": "未发送",
    "status.held": "暂缓",
    "status.failed": "失败",
    "status.dead": "放弃重试",
    "reason.cap_reached": "达到频次上限",
    "reason.quiet_hours": "免打扰时段",
    "reason.consent_denied": "客户拒收",
    "reason.consent_missing": "未获营销同意",
    "reason.duplicate": "重复消息",
    "reason.no_contact": "没有联系方式",
    "reason.invalid_contact": "联系方式无效",
    "reason.no_subscription_credit": "无订阅消息额度",
    "reason.campaign_cancelled": "活动已取消",
    "reason.unknown": "未知原因",
    "audiences.title": "人群圈选",
    "audiences.intro": "组合条件圈选客户，人数实时更新。",
    "audiences.match": "满足",
    "audiences.match_and": "全部条件（且）",
    "audiences.match_or": "任一条件（或）",
    "audiences.add": "添加条件",
    "audiences.remove": "删除",
    "audiences.negate": "排除（非）",
    "audiences.kind_tier": "客户等级",
    "audiences.kind_class": "客户分类",
    "audiences.kind_tag": "标签",
    "audiences.kind_recency": "最近购买天数",
    "audiences.tag_placeholder": "标签，逗号分隔，如 dormant, replenish_due:milk-powder",
    "audiences.gte": "不少于（天）",
    "audiences.lte": "不多于（天）",
    "audiences.count": "符合条件：{count} 人",
    "audiences.counting": "计算中…",
    "audiences.no_conditions": "添加至少一个完整的条件后显示人数。",
    "audiences.incomplete": "有未填完的条件，暂不计入。",
    "audiences.show": "查看客户",
    "audiences.filter_json": "筛选条件（JSON，可用于 POST /v1/audiences）",
    "audiences.empty_shop": "店铺还没有客户数据，圈选结果会是 0 人：先通过 POST /v1/events 发送订单事件，或运行 make demo。"
  },
  // END zh-CN
  // BEGIN en
  "en": {
    "app.title": "Fugou · Merchant console",
    "app.brand": "Fugou 复购",
    "app.signout": "Sign out",
    "app.language": "Language",
    "app.loading": "Loading…",
    "app.retry": "Retry",
    "app.error": "Request failed",
    "app.error_network": "Cannot reach the service: check that make run is running",
    "app.not_found": "No such page",
    "nav.rfm": "RFM grid",
    "nav.tiers": "Tiers & classes",
    "nav.coupons": "Coupon ROI",
    "nav.loyalty": "Points liability",
    "nav.messages": "Message funnel",
    "nav.audiences": "Audience builder",
    "login.title": "Sign in to the merchant console",
    "login.intro": "Enter the merchant's API key (make run prints it at start and keeps it in data/demo-api-key).",
    "login.key": "API key",
    "login.submit": "Sign in",
    "login.checking": "Checking…",
    "login.wrong_key": "This API key is unknown or revoked. Check it and try again.",
    "login.expired": "Your session ended: the API key expired, was revoked or is wrong. Please sign in again.",
    "login.signed_out": "You are signed out.",
    "login.empty": "Enter an API key.",
    "login.note": "The key is kept only in this browser tab's session and is gone when the tab closes.",
    "common.count": "Count",
    "common.none": "—",
    "common.prev": "Previous",
    "common.next": "Next",
    "common.page": "Page {n}",
    "common.as_of": "As of {time}",
    "common.what_to_do": "What to do",
    "empty.no_orders": "No orders yet: send order events (order.paid and others) to POST /v1/events, or run make demo for a sample shop.",
    "rfm.title": "RFM 3×3×3 grid",
    "rfm.intro": "Each heatmap is R (recency) × F (frequency) at one M (monetary) level; click a cell for its customers.",
    "rfm.kpi_customers": "Customers with a segment",
    "rfm.kpi_repurchase": "Repurchase rate",
    "rfm.kpi_repurchase_detail": "{repeat} of {buying} buying customers came back",
    "rfm.kpi_config": "Configuration version",
    "rfm.m_level": "M{m} ({label})",
    "rfm.level_high": "high",
    "rfm.level_mid": "middle",
    "rfm.level_low": "low",
    "rfm.axis_r": "R recency (high = recent)",
    "rfm.axis_f": "F frequency",
    "rfm.cell": "Cell {cell}",
    "rfm.cell_tooltip": "R{r} F{f} M{m}: {count} customers ({share})",
    "rfm.members_title": "Customers in cell {cell} ({count} in all)",
    "rfm.members_empty": "No customers in this cell.",
    "col.customer": "Customer ID",
    "col.tier": "Tier",
    "col.class": "Class",
    "col.cell": "Cell",
    "col.frequency": "Orders",
    "col.monetary": "Spent",
    "col.last_order": "Last order",
    "col.region": "Region",
    "col.tags": "Tags",
    "tiers.title": "Tiers and the 8 classes",
    "tiers.tiers_chart": "S/A/B/C tiers",
    "tiers.classes_chart": "The 8 classes",
    "tiers.trend_title": "The last 90 days",
    "tiers.trend_tiers": "Tiers over time",
    "tiers.trend_classes": "Classes over time",
    "tiers.trend_repurchase": "Repurchase rate over time",
    "tiers.trend_tags": "Lifecycle tags over time",
    "tag.new": "New",
    "tag.interest": "Interested, not bought",
    "tag.dormant": "Dormant",
    "tag.churn_risk": "Churn risk",
    "tiers.trend_pending": "Trends are not available yet: this version of the service has no GET /v1/segments/trend. Once a version with daily snapshots runs, the last 90 days of tiers, classes and repurchase rate show here.",
    "tiers.trend_empty": "No history yet: the service takes a snapshot hourly while it runs and keeps one a day; come back tomorrow for a trend.",
    "tier.S": "Tier S",
    "tier.A": "Tier A",
    "tier.B": "Tier B",
    "tier.C": "Tier C",
    "class.important_value": "Important value",
    "class.important_development": "Important development",
    "class.important_retain": "Important retain",
    "class.important_winback": "Important win-back",
    "class.general_value": "General value",
    "class.general_development": "General development",
    "class.general_retain": "General retain",
    "class.general_winback": "General win-back",
    "coupons.title": "Coupon ROI",
    "coupons.intro": "ROI = GMV of the orders that used the coupons / their cost. Baseline: customers the rule never decided for; holdout: customers the rule held out (set holdout_percent).",
    "coupons.empty": "No coupon rules yet: apply a playbook with POST /v1/coupons/presets/{name}, create a rule with POST /v1/coupons/rules, or run make demo.",
    "coupons.roi_chart": "ROI per rule",
    "coupons.conversion_chart": "Conversion: treated vs baseline vs holdout",
    "coupons.rules": "Rules",
    "coupons.templates": "Coupon templates",
    "coupons.no_templates": "No coupon templates yet.",
    "coupons.no_rules": "No rules yet.",
    "coupons.name": "Name",
    "coupons.issued": "Issued",
    "coupons.redeemed": "Redeemed",
    "coupons.redemption_rate": "Redemption rate",
    "coupons.cost": "Cost",
    "coupons.gmv": "GMV",
    "coupons.roi": "ROI",
    "coupons.baseline": "Baseline conversion",
    "coupons.treatment": "Treated conversion",
    "coupons.holdout": "Holdout conversion",
    "coupons.lift": "Conversion lift (95% interval)",
    "coupons.incremental_gmv": "Incremental GMV",
    "coupons.incremental_roi": "Incremental ROI",
    "coupons.notes": "Notes",
    "loyalty.title": "Points liability",
    "loyalty.empty": "No points yet: set the loyalty rules with PUT /v1/loyalty/rules and customers earn points when they pay; or run make demo.",
    "loyalty.customers": "Customers holding points",
    "loyalty.points": "Available points",
    "loyalty.pending": "Pending points (return windows)",
    "loyalty.debt": "Points owed after refunds",
    "loyalty.value": "Value of available points",
    "loyalty.expired_unswept": "Expired, not yet swept",
    "loyalty.never_expire": "Points that never expire",
    "loyalty.sv_paid": "Stored value (paid)",
    "loyalty.sv_bonus": "Stored value (bonus)",
    "loyalty.forecast": "Points expiring, by month",
    "loyalty.forecast_empty": "No points are due to expire.",
    "loyalty.points_unit": "points",
    "messages.title": "Message funnel",
    "messages.empty": "No messages yet: set a trigger rule with PUT /v1/notifications/rules/{rule_id} or start a campaign with POST /v1/notifications/campaigns; or run make demo.",
    "messages.since": "Period",
    "messages.since_7": "Last 7 days",
    "messages.since_30": "Last 30 days",
    "messages.since_90": "Last 90 days",
    "messages.since_all": "All time",
    "messages.funnel": "Queued → sent → delivered",
    "messages.held_back": "Held back, by reason",
    "messages.held_back_none": "Nothing was held back.",
    "messages.col_status": "Status",
    "messages.col_reason": "Reason",
    "stage.total": "All messages",
    "stage.queued": "Queued",
    "stage.held": "Held",
    "stage.sent": "Sent",
    "stage.delivered": "Delivered",
    "stage.failed": "Failed",
    "stage.skipped": "Skipped",
    "stage.paused": "Paused",
    "stage.cancelled": "Cancelled",
    "status.skipped": "Skipped",
    "status.held": "Held",
    "status.failed": "Failed",
    "status.dead": "Gave up",
    "reason.cap_reached": "Frequency cap reached",
    "reason.quiet_hours": "Quiet hours",
    "reason.consent_denied": "Customer opted out",
    "reason.consent_missing": "No marketing consent",
    "reason.duplicate": "Duplicate",
    "reason.no_contact": "No contact address",
    "reason.invalid_contact": "Invalid contact address",
    "reason.no_subscription_credit": "No subscription-message credit",
    "reason.campaign_cancelled": "Campaign cancelled",
    "reason.unknown": "Unknown reason",
    "audiences.title": "Audience builder",
    "audiences.intro": "Combine conditions to select customers; the count updates as you type.",
    "audiences.match": "Match",
    "audiences.match_and": "all conditions (and)",
    "audiences.match_or": "any condition (or)",
    "audiences.add": "Add a condition",
    "audiences.remove": "Remove",
    "audiences.negate": "Exclude (not)",
    "audiences.kind_tier": "Tier",
    "audiences.kind_class": "Class",
    "audiences.kind_tag": "Tag",
    "audiences.kind_recency": "Days since last purchase",
    "audiences.tag_placeholder": "Tags, comma-separated, e.g. dormant, replenish_due:milk-powder",
    "audiences.gte": "At least (days)",
    "audiences.lte": "At most (days)",
    "audiences.count": "Matching: {count} customers",
    "audiences.counting": "Counting…",
    "audiences.no_conditions": "Add at least one complete condition to see the count.",
    "audiences.incomplete": "Some conditions are incomplete and left out for now.",
    "audiences.show": "Show customers",
    "audiences.filter_json": "The filter (JSON, usable with POST /v1/audiences)",
    "audiences.empty_shop": "The shop has no customer data yet, so every audience is 0: send order events to POST /v1/events first, or run make demo."
  }
  // END en
};

export const LOCALES = ["zh-CN", "en"];
export const DEFAULT_LOCALE = "zh-CN";
const STORAGE_KEY = "fugou.console.locale";

let current = (() => {
  try {
    const saved = localStorage.getItem(STORAGE_KEY);
    return LOCALES.includes(saved) ? saved : DEFAULT_LOCALE;
  } catch {
    return DEFAULT_LOCALE;
  }
})();

const listeners = new Set();

export function locale() {
  return current;
}

export function setLocale(next) {
  if (!LOCALES.includes(next) || next === current) return;
  current = next;
  try {
    localStorage.setItem(STORAGE_KEY, next);
  } catch { /* private mode: the choice lasts for this page */ }
  document.documentElement.lang = next;
  applyStatic(document);
  for (const fn of listeners) fn(next);
}

export function onLocaleChange(fn) {
  listeners.add(fn);
}

// A key marked for the i18n test without translating it yet (for tables of keys).
export const k = (key) => key;

// The text for a key in the current locale, with {name} placeholders filled from vars.
export function t(key, vars = {}) {
  const text = MESSAGES[current][key] ?? MESSAGES[DEFAULT_LOCALE][key] ?? key;
  return text.replace(/\{(\w+)\}/g, (whole, name) => (name in vars ? String(vars[name]) : whole));
}

// Static markup: data-i18n (text), data-i18n-placeholder, data-i18n-title, data-i18n-aria-label.
export function applyStatic(root) {
  document.documentElement.lang = current;
  for (const el of root.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
  for (const el of root.querySelectorAll("[data-i18n-placeholder]")) el.placeholder = t(el.dataset.i18nPlaceholder);
  for (const el of root.querySelectorAll("[data-i18n-title]")) el.title = t(el.dataset.i18nTitle);
  for (const el of root.querySelectorAll("[data-i18n-aria-label]")) {
    el.setAttribute("aria-label", t(el.dataset.i18nAriaLabel));
  }
  const title = root.querySelector("title[data-i18n-doc]");
  if (title) document.title = t(title.dataset.i18nDoc);
}

// Numbers, money (integer fen) and shares in the current locale.
export function fmtInt(n) {
  return n == null ? t("common.none") : new Intl.NumberFormat(current).format(n);
}

export function fmtFen(fen) {
  if (fen == null) return t("common.none");
  return new Intl.NumberFormat(current, { style: "currency", currency: "CNY", currencyDisplay: "narrowSymbol" }).format(fen / 100);
}

export function fmtPct(x, digits = 1) {
  if (x == null || Number.isNaN(x)) return t("common.none");
  return new Intl.NumberFormat(current, { style: "percent", maximumFractionDigits: digits,
                                           minimumFractionDigits: digits }).format(x);
}

export function fmtNum(x, digits = 2) {
  if (x == null || Number.isNaN(x)) return t("common.none");
  return new Intl.NumberFormat(current, { maximumFractionDigits: digits }).format(x);
}

export function fmtTime(iso) {
  if (!iso) return t("common.none");
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : new Intl.DateTimeFormat(current, { dateStyle: "medium",
                                                                              timeStyle: "short" }).format(d);
}
