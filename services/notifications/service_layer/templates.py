"""Templates as the merchant keeps them: validated when saved (every problem, each naming its
part), versioned (a save with new content adds a version, the same content again adds none),
previewed with sample or given variables. Messages name the version they were rendered from."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from services.notifications.adapters.tables import templates
from services.notifications.domain import templates as dt
from shared.db import bulk_insert


@dataclass(frozen=True)
class StoredTemplate:
    key: str
    version: int
    spec: dt.TemplateSpec
    vars: tuple[str, ...]
    fingerprint: str
    created_at: datetime

    @property
    def provider_template(self) -> str | None:
        return self.spec.parts.provider_template


class TemplateRefused(ValueError):
    def __init__(self, problems: list[dt.Problem]):
        super().__init__("; ".join(f"{p.field}: {p.message}" for p in problems))
        self.problems = problems


def parts_json(parts: dt.TemplateParts, vars: Iterable[str]) -> str:
    body = {k: v for k, v in asdict(parts).items() if v not in (None, {})}
    body["fields"] = dict(parts.fields)
    body["vars"] = list(vars)
    return orjson.dumps(body).decode()


def _stored(r: Any) -> StoredTemplate:
    body = orjson.loads(r.parts)
    vars_ = tuple(body.pop("vars", ()))
    parts = dt.TemplateParts(**body)
    return StoredTemplate(
        r.key, r.version, dt.TemplateSpec(r.channel, r.locale, r.trigger, parts), vars_, r.fingerprint, r.created_at
    )


async def save(
    session: AsyncSession, merchant_id: str, key: str, spec: dt.TemplateSpec, vars: list[str], now: datetime
) -> tuple[StoredTemplate, bool]:
    """(the version in force, whether this save created it). Raises TemplateRefused."""
    problems = dt.validate(spec, vars)
    if problems:
        raise TemplateRefused(problems)
    fp = hashlib.sha256(f"{dt.fingerprint(spec)}:{','.join(sorted(vars))}".encode()).hexdigest()
    t = templates.c
    current = (
        await session.execute(
            select(templates)
            .where(t.merchant_id == merchant_id, t.key == key)
            .order_by(t.version.desc())
            .limit(1)
            .with_for_update()
        )
    ).first()
    if current is not None and current.fingerprint == fp:
        return _stored(current), False
    version = (current.version + 1) if current is not None else 1
    await bulk_insert(
        session,
        templates,
        ["merchant_id", "key", "version", "channel", "locale", "trigger", "parts", "fingerprint", "created_at"],
        [(merchant_id, key, version, spec.channel, spec.locale, spec.trigger, parts_json(spec.parts, vars), fp, now)],
    )
    return StoredTemplate(key, version, spec, tuple(vars), fp, now), True


async def latest(
    conn: AsyncSession | AsyncConnection, merchant_id: str, keys: Iterable[str]
) -> dict[str, StoredTemplate]:
    """The version in force of each key (missing keys are absent)."""
    keys = sorted(set(keys))
    if not keys:
        return {}
    t = templates.c
    newest = (
        select(t.key, func.max(t.version).label("v"))
        .where(t.merchant_id == merchant_id, t.key.in_(keys))
        .group_by(t.key)
        .subquery()
    )
    rows = await conn.execute(
        select(templates)
        .join(newest, (t.key == newest.c.key) & (t.version == newest.c.v))
        .where(t.merchant_id == merchant_id)
    )
    return {r.key: _stored(r) for r in rows}


async def versions(
    conn: AsyncSession | AsyncConnection, merchant_id: str, key: str, version: int | None = None
) -> list[StoredTemplate]:
    t = templates.c
    q = select(templates).where(t.merchant_id == merchant_id, t.key == key)
    if version is not None:
        q = q.where(t.version == version)
    return [_stored(r) for r in await conn.execute(q.order_by(t.version.desc()))]


async def listing(conn: AsyncSession | AsyncConnection, merchant_id: str) -> list[StoredTemplate]:
    t = templates.c
    newest = (
        select(t.key, func.max(t.version).label("v")).where(t.merchant_id == merchant_id).group_by(t.key).subquery()
    )
    rows = await conn.execute(
        select(templates)
        .join(newest, (t.key == newest.c.key) & (t.version == newest.c.v))
        .where(t.merchant_id == merchant_id)
        .order_by(t.key)
    )
    return [_stored(r) for r in rows]


def preview(
    spec: dt.TemplateSpec, vars: list[str], given: Mapping[str, Any] | None, shop_name: str | None = None
) -> tuple[dt.RenderedParts, dict[str, Any]]:
    """Render with the trigger's sample values, overridden by ``given`` (dotted names, e.g.
    ``{"coupon.name": "新人券"}``). Raises TemplateRefused, or dt.RenderError."""
    problems = dt.validate(spec, vars)
    if problems:
        raise TemplateRefused(problems)
    ctx = dt.sample_context(spec.trigger, spec.locale, {n.removeprefix("vars."): f"{{{n}}}" for n in vars})
    if shop_name:
        ctx["shop"] = {"name": shop_name}
    for dotted, value in (given or {}).items():
        head, _, tail = dotted.partition(".")
        if tail:
            ctx.setdefault(head, {})
            if isinstance(ctx[head], dict):
                ctx[head][tail] = value
        else:
            ctx[head] = value
    return dt.render(spec, ctx), ctx
