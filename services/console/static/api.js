// The console's only way to the services: their public HTTP APIs, with the merchant's API key.
// Every path the console calls is in PATHS (tests/unit/test_console.py checks each against the
// app's OpenAPI); PENDING lists the ones another change is still adding.

export const PATHS = {
  merchant: "GET /v1/merchant",
  summary: "GET /v1/segments/summary",
  trend: "GET /v1/segments/trend",
  audienceQuery: "POST /v1/audiences/query",
  couponRoi: "GET /v1/coupons/reports/roi",
  liability: "GET /v1/loyalty/reports/liability",
  funnel: "GET /v1/notifications/funnel",
  audiences: "GET /v1/audiences",
  audienceSave: "POST /v1/audiences",
  audienceDelete: "DELETE /v1/audiences/{audience_id}",
  audienceCsv: "POST /v1/audiences/query.csv",
  audienceMembersCsv: "GET /v1/audiences/{audience_id}/members.csv",
  couponRules: "GET /v1/coupons/rules",
  couponRule: "GET /v1/coupons/rules/{rule_id}",
  couponRuleState: "PATCH /v1/coupons/rules/{rule_id}",
  couponRuleRun: "POST /v1/coupons/rules/{rule_id}/run",
  couponPreset: "POST /v1/coupons/presets/{name}",
  notifyTemplates: "GET /v1/notifications/templates",
  notifyTemplateSave: "POST /v1/notifications/templates",
  notifyRules: "GET /v1/notifications/rules",
  notifyRulePut: "PUT /v1/notifications/rules/{rule_id}",
  notifyChannels: "GET /v1/notifications/channels",
};

// Called, but may answer 404 until its change lands: the page shows an empty state then.
export const PENDING = [];

export const LOGIN_URL = "/console/login";
export const HOME_URL = "/console";
const KEY_STORAGE = "fugou.console.apiKey";
const NAME_STORAGE = "fugou.console.merchant";

export class ApiError extends Error {
  constructor(status, code, message, fields) {
    super(message);
    this.status = status;
    this.code = code;
    this.fields = fields || [];
  }
}

export function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE);
}

export function merchantName() {
  return sessionStorage.getItem(NAME_STORAGE);
}

export function remember(key, name) {
  sessionStorage.setItem(KEY_STORAGE, key);
  sessionStorage.setItem(NAME_STORAGE, name || "");
}

export function forget() {
  sessionStorage.removeItem(KEY_STORAGE);
  sessionStorage.removeItem(NAME_STORAGE);
}

// Back to the login page, saying why (expired: a key the services refused; signed_out).
// Once: several calls refused at once (a page's reports in parallel) must not start several
// navigations, the second aborting the first.
let leaving = false;
export function toLogin(reason) {
  if (leaving) return;
  leaving = true;
  forget();
  window.location.assign(`${LOGIN_URL}?reason=${encodeURIComponent(reason)}`);
}

async function errorOf(response) {
  let body = null;
  try {
    body = await response.json();
  } catch { /* not JSON */ }
  const err = body && body.error;
  if (err && typeof err.message === "string") {
    return new ApiError(response.status, err.code || "error", err.message, err.fields);
  }
  return new ApiError(response.status, "http_" + response.status, response.statusText || "HTTP " + response.status);
}

// Calls PATHS[name] and saves the answer as a file (a CSV export): fetched with the key, so the
// key never goes into a URL. Options as for call(); filename: the fallback name.
export async function download(name, options = {}, filename = "export.csv") {
  const response = await send(name, options);
  const blob = await response.blob();
  const disposition = response.headers.get("Content-Disposition") || "";
  const given = /filename="?([^";]+)"?/.exec(disposition);
  const url = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = url;
  a.download = given ? given[1] : filename;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
  return blob.size;
}

// Calls PATHS[name]. options: query (object), body (JSON), params (for {placeholders}),
// key (instead of the stored one: the login check), allow404 (answer null on 404),
// signal (AbortSignal). A 401 with the stored key sends the browser to the login page.
export async function call(name, options = {}) {
  const response = await send(name, options);
  if (response === null || response.status === 204) return null;
  return response.json();
}

// The request behind call() and download(): the Response when it is 2xx; null for an allowed
// 404; an ApiError otherwise.
async function send(name, options) {
  const spec = PATHS[name];
  if (!spec) throw new Error(`unknown API ${name}`);
  const [method, template] = spec.split(" ");
  const path = template.replace(/\{(\w+)\}/g, (_, p) => encodeURIComponent(options.params?.[p] ?? ""));
  const url = new URL(path, window.location.origin);
  for (const [k, v] of Object.entries(options.query || {})) {
    if (v !== undefined && v !== null && v !== "") url.searchParams.set(k, String(v));
  }
  const key = options.key ?? apiKey();
  const headers = { Accept: options.accept || "application/json" };
  if (key) headers["X-Api-Key"] = key;
  if (options.body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(url, {
      method, headers, signal: options.signal, credentials: "omit", cache: "no-store",
      body: options.body === undefined ? undefined : JSON.stringify(options.body),
    });
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError(0, "network", e.message || "network error");
  }
  if (response.status === 401 && options.key === undefined) {
    toLogin("expired");
    throw new ApiError(401, "unauthorized", "signed out");
  }
  if (response.status === 404 && options.allow404) return null;
  if (!response.ok) throw await errorOf(response);
  return response;
}
