"""Merchants, their API keys and customer tokens, as every service sees them.

The gateway owns merchants. Every other service keeps its own read-only copy, fed by
``merchant.upserted`` events on ``fugou.merchants`` (a service never reads another's tables).
API keys are high-entropy random strings, so they are stored as an HMAC-SHA256 under a server
pepper (fast to check on every request, useless if the table leaks without the pepper)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import jwt
from sqlalchemy import Boolean, Column, Index, LargeBinary, MetaData, String, Table, delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared import clock
from shared.db import UTCDateTime, insert_for
from shared.events import EnvelopeBase

API_KEY_PREFIX = "fg_"
_CACHE_TTL_S = 30.0
_TOKEN_LEEWAY_S = 30
_TOKEN_CACHE_SIZE = 100_000


def hash_api_key(api_key: str, pepper: str) -> str:
    return hmac.new(pepper.encode(), api_key.encode(), hashlib.sha256).hexdigest()


def new_api_key() -> str:
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def new_jwt_secret() -> str:
    return secrets.token_urlsafe(48)


@dataclass(frozen=True, slots=True)
class Merchant:
    merchant_id: str
    name: str
    timezone: str
    jwt_secret: str
    active: bool = True


@dataclass(frozen=True, slots=True)
class Customer:
    merchant: Merchant
    customer_id: str

    @property
    def merchant_id(self) -> str:
        return self.merchant.merchant_id


def merchant_tables(metadata: MetaData) -> tuple[Table, Table]:
    merchants = Table(
        "merchants",
        metadata,
        Column("merchant_id", String(128), primary_key=True),
        Column("name", String(255), nullable=False),
        Column("timezone", String(64), nullable=False),
        Column("jwt_secret", LargeBinary, nullable=False),
        Column("active", Boolean, nullable=False),
        Column("updated_at", UTCDateTime, nullable=False),
    )
    keys = Table(
        "merchant_api_keys",
        metadata,
        Column("key_hash", String(64), primary_key=True),
        Column("merchant_id", String(128), nullable=False),
        Index("ix_merchant_api_keys_merchant_id", "merchant_id"),
    )
    return merchants, keys


class Tenancy:
    """Looks up merchants by API key or customer token, with a short-lived cache."""

    def __init__(self, merchants: Table, keys: Table, sessions: async_sessionmaker[AsyncSession], pepper: str):
        self.merchants = merchants
        self.keys = keys
        self.sessions = sessions
        self.pepper = pepper
        self._by_key: dict[str, tuple[float, Merchant | None]] = {}
        self._by_id: dict[str, tuple[float, Merchant | None]] = {}
        # Verified customer tokens: a mini-program sends the same token with every call, and two
        # JWT decodes were a tenth of a hot read. A hit still checks the expiry, and that the
        # merchant is active and signs with the secret the token was verified with (a rotated
        # secret or a deactivated merchant refuses it as soon as by_id sees the change).
        self._tokens: dict[str, tuple[float, str, str, str]] = {}

    def invalidate(self) -> None:
        self._by_key.clear()
        self._by_id.clear()
        self._tokens.clear()

    def _row_to_merchant(self, row: Any) -> Merchant:
        return Merchant(
            merchant_id=row.merchant_id,
            name=row.name,
            timezone=row.timezone,
            jwt_secret=row.jwt_secret.decode(),
            active=row.active,
        )

    async def by_api_key(self, api_key: str) -> Merchant | None:
        digest = hash_api_key(api_key, self.pepper)
        now = time.monotonic()
        hit = self._by_key.get(digest)
        if hit and hit[0] > now:
            return hit[1]
        m, k = self.merchants, self.keys
        async with self.sessions() as session:
            row = (
                await session.execute(
                    select(m).join(k, k.c.merchant_id == m.c.merchant_id).where(k.c.key_hash == digest)
                )
            ).first()
        merchant = self._row_to_merchant(row) if row else None
        if merchant is not None and not merchant.active:
            merchant = None
        if len(self._by_key) > 10_000:
            self._by_key.clear()
        self._by_key[digest] = (now + _CACHE_TTL_S, merchant)
        return merchant

    async def by_id(self, merchant_id: str) -> Merchant | None:
        now = time.monotonic()
        hit = self._by_id.get(merchant_id)
        if hit and hit[0] > now:
            return hit[1]
        async with self.sessions() as session:
            row = (
                await session.execute(select(self.merchants).where(self.merchants.c.merchant_id == merchant_id))
            ).first()
        merchant = self._row_to_merchant(row) if row else None
        if len(self._by_id) > 10_000:
            self._by_id.clear()
        self._by_id[merchant_id] = (now + _CACHE_TTL_S, merchant)
        return merchant

    async def known(self, session: AsyncSession, merchant_ids: set[str]) -> set[str]:
        if not merchant_ids:
            return set()
        rows = await session.execute(
            select(self.merchants.c.merchant_id).where(
                self.merchants.c.merchant_id.in_(merchant_ids), self.merchants.c.active.is_(True)
            )
        )
        return set(rows.scalars())

    async def customer_from_token(self, token: str) -> Customer | None:
        hit = self._tokens.get(token)
        if hit is not None:
            exp, secret, mid, sub = hit
            if clock.timestamp() >= exp + _TOKEN_LEEWAY_S:
                del self._tokens[token]
                return None
            merchant = await self.by_id(mid)
            if merchant is not None and merchant.active and merchant.jwt_secret == secret:
                return Customer(merchant=merchant, customer_id=sub)
            del self._tokens[token]  # judged afresh below
        try:
            claims = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            return None
        claimed = claims.get("mid")
        if not isinstance(claimed, str):
            return None
        mid = claimed
        merchant = await self.by_id(mid)
        if merchant is None or not merchant.active:
            return None
        try:
            claims = jwt.decode(
                token,
                merchant.jwt_secret,
                algorithms=["HS256"],
                # exp is judged below against the one clock, not PyJWT's own reading of the time.
                options={
                    "require": ["sub", "mid", "exp"],
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                },
            )
        except jwt.PyJWTError:
            return None
        if not _in_force(claims, clock.timestamp()):
            return None
        if len(self._tokens) >= _TOKEN_CACHE_SIZE:
            self._tokens.clear()
        self._tokens[token] = (float(claims["exp"]), merchant.jwt_secret, mid, str(claims["sub"]))
        return Customer(merchant=merchant, customer_id=str(claims["sub"]))

    async def apply(self, session: AsyncSession, events: Sequence[EnvelopeBase]) -> None:
        """Project ``merchant.upserted`` events into this service's copy (set-based)."""
        if not events:
            return
        latest: dict[str, Any] = {}
        for e in events:
            latest[e.merchant_id] = e
        now = clock.now()
        rows = [
            {
                "merchant_id": mid,
                "name": e.data.name,
                "timezone": e.data.timezone,
                "jwt_secret": e.data.jwt_secret.encode(),
                "active": e.data.active,
                "updated_at": now,
            }
            for mid, e in latest.items()
        ]
        stmt = insert_for(session, self.merchants).values(rows)
        stmt = stmt.on_conflict_do_update(
            index_elements=[self.merchants.c.merchant_id],
            set_={c: stmt.excluded[c] for c in ("name", "timezone", "jwt_secret", "active", "updated_at")},
        )
        await session.execute(stmt)
        await session.execute(delete(self.keys).where(self.keys.c.merchant_id.in_(list(latest))))
        key_rows = [{"key_hash": h, "merchant_id": mid} for mid, e in latest.items() for h in e.data.api_key_hashes]
        if key_rows:
            ins = insert_for(session, self.keys).values(key_rows)
            await session.execute(
                ins.on_conflict_do_update(
                    index_elements=[self.keys.c.key_hash], set_={"merchant_id": ins.excluded.merchant_id}
                )
            )
        self.invalidate()


def _in_force(claims: dict[str, Any], now: float) -> bool:
    """A token's times judged against the one clock, with PyJWT's rules: ``exp`` passed, ``nbf`` and
    ``iat`` not yet reached, each within the leeway, each a number."""
    times = {name: claims.get(name) for name in ("exp", "nbf", "iat")}
    if any(v is not None and (isinstance(v, bool) or not isinstance(v, int | float)) for v in times.values()):
        return False
    exp, nbf, iat = times["exp"], times["nbf"], times["iat"]
    if exp is None or now >= exp + _TOKEN_LEEWAY_S:
        return False
    return all(t is None or now + _TOKEN_LEEWAY_S >= t for t in (nbf, iat))


def mint_customer_token(merchant_id: str, customer_id: str, secret: str, ttl: timedelta = timedelta(hours=2)) -> str:
    now = clock.now()
    return jwt.encode({"sub": customer_id, "mid": merchant_id, "iat": now, "exp": now + ttl}, secret, algorithm="HS256")
