// The login page: checks the key against GET /v1/merchant, keeps it in sessionStorage, goes home.
import { ApiError, HOME_URL, call, remember } from "./api.js";
import { applyStatic, locale, setLocale, t } from "./i18n.js";

const form = document.getElementById("login-form");
const input = document.getElementById("api-key");
const submit = document.getElementById("login-submit");
const error = document.getElementById("login-error");
const notice = document.getElementById("login-notice");
const lang = document.getElementById("lang-select");

const REASONS = { expired: () => t("login.expired"), signed_out: () => t("login.signed_out") };
const reason = new URLSearchParams(window.location.search).get("reason");
let errorKey = null;

function render() {
  applyStatic(document);
  lang.value = locale();
  notice.hidden = !(reason in REASONS);
  if (!notice.hidden) notice.textContent = REASONS[reason]();
  error.hidden = errorKey === null;
  if (errorKey !== null) error.textContent = typeof errorKey === "function" ? errorKey() : errorKey;
}

lang.addEventListener("change", () => {
  setLocale(lang.value);
  render();
});

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const key = input.value.trim();
  if (!key) {
    errorKey = () => t("login.empty");
    render();
    return;
  }
  submit.disabled = true;
  submit.textContent = t("login.checking");
  try {
    const me = await call("merchant", { key });
    remember(key, me.name || me.merchant_id);
    window.location.assign(HOME_URL + "#/rfm");
    return;
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) errorKey = () => t("login.wrong_key");
    else if (e instanceof ApiError && e.status === 0) errorKey = () => t("app.error_network");
    else errorKey = `${t("app.error")}: ${e.message}`;
  } finally {
    submit.disabled = false;
  }
  render();
});

render();
input.focus();
