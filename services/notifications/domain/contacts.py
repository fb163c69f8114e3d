"""Contact addresses, opt-out replies and unsubscribe links (pure, no I/O).

Addresses are normalised before they are stored or used, and refused with ``InvalidContact``
naming the field (``phone``, ``email``, ``openid``) and the reason:

- **Phone** numbers become E.164 (``+8613800138000``). Spaces, ``-``, ``.``, brackets and
  full-width digits are ignored; ``+`` or ``00`` starts an international number. Without either,
  the default region decides: for ``CN`` an 11-digit number starting with 1 is mainland, and
  ``86`` followed by one is too; other regions need the international form. A mainland number
  must be a mobile (``1[3-9]`` and 9 more digits: landlines get no SMS); any other country is
  checked as basic E.164 (a country code and 8–14 digits, 15 digits at most, no leading 0).
- **Email**: one ``@``; a dot-atom local part (at most 64); a domain of at least two labels
  of letters, digits and ``-`` with a letter TLD (at most 253). The domain is lower-cased, the
  local part kept as given (it may be case-sensitive).
- **WeChat openid**: 20–64 URL-safe characters (letters, digits, ``_``, ``-``).

Opt-out by SMS reply: ``T``, ``TD``, ``退订``, ``N``, ``STOP`` or ``UNSUBSCRIBE``, ignoring case,
full/half width, spaces and trailing punctuation (``Ｔ``, `` td。``). Anything else (``OK``,
``谢谢``) is not an opt-out.

Unsubscribe links carry a token ``<payload>.<mac>``: the payload is url-safe base64 (no padding)
of ``["u1", merchant_id, customer_id, channel]`` and the mac is HMAC-SHA256 of the payload under
the service's secret. Tokens do not expire: an unsubscribe link must keep working.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import unicodedata

MAINLAND_MOBILE = re.compile(r"^1[3-9]\d{9}$")
E164_DIGITS = re.compile(r"^[1-9]\d{8,14}$")
OPENID = re.compile(r"^[A-Za-z0-9_\-]{20,64}$")
_PHONE_NOISE = re.compile(r"[\s\-.()]")
_LOCAL_ATOM = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-]+$")
_DOMAIN_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9\-]{0,61}[a-z0-9])?$")
_TLD = re.compile(r"^(?:[a-z]{2,63}|xn--[a-z0-9\-]{1,59})$")

OPT_OUT_WORDS = frozenset({"T", "TD", "退订", "N", "STOP", "UNSUBSCRIBE"})
_TRAILING = ".。!！,，;；~～"


class InvalidContact(ValueError):
    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class InvalidToken(ValueError):
    pass


# ---------------------------------------------------------------- phone


def normalize_phone(raw: str, default_region: str = "CN") -> str:
    """The number in E.164, or ``InvalidContact("phone", …)``."""
    s = _PHONE_NOISE.sub("", unicodedata.normalize("NFKC", raw or ""))
    if not s:
        raise InvalidContact("phone", "empty")
    if s.startswith("+"):
        digits = s[1:]
    elif s.startswith("00"):
        digits = s[2:]
    elif default_region == "CN" and s.startswith("1") and len(s) == 11:
        digits = "86" + s
    elif default_region == "CN" and s.startswith("861") and len(s) == 13:
        digits = s
    else:
        raise InvalidContact("phone", "not a mainland mobile number; give others as +<country code><number>")
    if not digits.isascii() or not digits.isdigit():
        raise InvalidContact("phone", "only digits after the country code")
    if digits.startswith("86"):
        if not MAINLAND_MOBILE.fullmatch(digits[2:]):
            raise InvalidContact("phone", "a mainland mobile number is 11 digits starting 13–19")
    elif not E164_DIGITS.fullmatch(digits):
        raise InvalidContact("phone", "an international number is a country code and 8–14 digits")
    return "+" + digits


def mainland_national(e164: str) -> str:
    """``+8613800138000`` → ``13800138000`` (Aliyun SMS takes mainland numbers without +86)."""
    if not e164.startswith("+86") or not MAINLAND_MOBILE.fullmatch(e164[3:]):
        raise InvalidContact("phone", "not a mainland China mobile number")
    return e164[3:]


# ---------------------------------------------------------------- email and openid


def normalize_email(raw: str) -> str:
    s = (raw or "").strip()
    if s.count("@") != 1:
        raise InvalidContact("email", "an address has exactly one @")
    local, domain = s.split("@")
    domain = domain.lower()
    if not local or len(local) > 64:
        raise InvalidContact("email", "the part before @ is 1–64 characters")
    atoms = local.split(".")
    if not all(_LOCAL_ATOM.fullmatch(a) for a in atoms):
        raise InvalidContact("email", "the part before @ has a character or dot out of place")
    labels = domain.split(".")
    if len(domain) > 253 or len(labels) < 2 or not all(_DOMAIN_LABEL.fullmatch(lb) for lb in labels):
        raise InvalidContact("email", "the domain is not a valid host name")
    if not _TLD.fullmatch(labels[-1]):
        raise InvalidContact("email", "the domain has no valid top-level domain")
    address = f"{local}@{domain}"
    if len(address) > 254:
        raise InvalidContact("email", "an address is at most 254 characters")
    return address


def normalize_openid(raw: str) -> str:
    s = (raw or "").strip()
    if not OPENID.fullmatch(s):
        raise InvalidContact("openid", "an openid is 20–64 letters, digits, _ or -")
    return s


# Which channels need an address of the customer's, and how it is checked.
ADDRESS_FIELD = {"sms": "phone", "email": "email", "wechat": "openid"}


def normalize_address(channel: str, raw: str) -> str:
    """The customer's address on ``channel``, normalised (webhook and console need none)."""
    if channel == "sms":
        return normalize_phone(raw)
    if channel == "email":
        return normalize_email(raw)
    if channel == "wechat":
        return normalize_openid(raw)
    return raw


# ---------------------------------------------------------------- opt-out replies


def is_opt_out_reply(text: str) -> bool:
    s = "".join(unicodedata.normalize("NFKC", text or "").split()).rstrip(_TRAILING).upper()
    return s in OPT_OUT_WORDS


# ---------------------------------------------------------------- unsubscribe links


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def _mac(secret: bytes, payload: str) -> str:
    if not secret:
        raise ValueError("an unsubscribe secret must not be empty")
    return _b64(hmac.new(secret, payload.encode("ascii"), hashlib.sha256).digest())


def sign_unsubscribe(secret: bytes, merchant_id: str, customer_id: str, channel: str) -> str:
    payload = _b64(
        json.dumps(["u1", merchant_id, customer_id, channel], ensure_ascii=False, separators=(",", ":")).encode()
    )
    return f"{payload}.{_mac(secret, payload)}"


def verify_unsubscribe(secret: bytes, token: str) -> tuple[str, str, str]:
    """(merchant_id, customer_id, channel) of a token this service signed; ``InvalidToken`` otherwise."""
    payload, dot, mac = (token or "").partition(".")
    if not dot or not payload.isascii() or not mac.isascii():
        raise InvalidToken("malformed unsubscribe token")
    if not hmac.compare_digest(_mac(secret, payload), mac):
        raise InvalidToken("unsubscribe token does not verify")
    try:
        version, merchant_id, customer_id, channel = json.loads(_unb64(payload))
    except (ValueError, TypeError) as exc:
        raise InvalidToken("malformed unsubscribe token") from exc
    if version != "u1" or not all(isinstance(v, str) for v in (merchant_id, customer_id, channel)):
        raise InvalidToken("malformed unsubscribe token")
    return merchant_id, customer_id, channel


def callback_token(secret: bytes, merchant_id: str) -> str:
    """The secret a merchant's provider callbacks (receipts, SMS replies) carry in their URL: the
    endpoints are public (providers call them), so without it anyone knowing a merchant id and a
    customer's phone could opt that customer out."""
    return hmac.new(secret, f"fugou-callbacks:{merchant_id}".encode(), hashlib.sha256).hexdigest()[:32]
