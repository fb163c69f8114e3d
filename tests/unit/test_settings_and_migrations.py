"""Settings refuse unsafe defaults in production, and every service's migrations build exactly the
schema its code declares (so autogenerate would have nothing to add) and can be undone and redone.
The schema checks are plain functions: tests/integration/test_tenancy.py runs them on PostgreSQL."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from pydantic import ValidationError
from sqlalchemy import inspect

from services.registry import SPECS
from shared.db import create_engine
from shared.runtime import ServiceSpec, alembic_config, migrate
from shared.settings import Settings

# ---------------------------------------------------------------- settings


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No FUGOU_* variable nor .env file may leak into what is being tested."""
    for name in list(os.environ):
        if name.startswith("FUGOU_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def test_production_without_secrets_is_refused(clean_env: None) -> None:
    with pytest.raises(ValidationError) as info:
        Settings(env="production")
    assert "FUGOU_API_KEY_PEPPER" in str(info.value)


def test_production_with_only_the_pepper_is_refused_for_the_admin_token(clean_env: None) -> None:
    with pytest.raises(ValidationError) as info:
        Settings(env="production", api_key_pepper="a-real-pepper")  # type: ignore[arg-type]
    assert "FUGOU_ADMIN_TOKEN" in str(info.value)


def test_production_with_both_secrets_from_the_environment_starts(
    clean_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FUGOU_ENV", "production")
    monkeypatch.setenv("FUGOU_API_KEY_PEPPER", "a-real-pepper")
    monkeypatch.setenv("FUGOU_ADMIN_TOKEN", "a-real-admin-token")
    monkeypatch.setenv("FUGOU_INTERNAL_TOKEN", "a-real-internal-token")
    s = Settings()
    assert s.env == "production"
    assert s.api_key_pepper.get_secret_value() == "a-real-pepper"
    assert s.admin_token.get_secret_value() == "a-real-admin-token"
    assert s.internal_token.get_secret_value() == "a-real-internal-token"
    # Secrets stay out of reprs and logs.
    assert "a-real-pepper" not in repr(s)


def test_development_works_with_nothing_configured(clean_env: None) -> None:
    s = Settings()
    assert s.env == "development" and s.bus == "inprocess"
    assert s.database_url("segmentation").startswith("sqlite+aiosqlite:///")


def test_a_database_url_set_for_a_service_is_used_for_that_service_only(clean_env: None) -> None:
    s = Settings(segmentation_database_url="postgresql+asyncpg://u@h/seg")
    assert s.database_url("segmentation") == "postgresql+asyncpg://u@h/seg"
    assert s.database_url("coupons").endswith("coupons.sqlite")


# ---------------------------------------------------------------- migrations


def schema_differences(spec: ServiceSpec, sync_conn: Any) -> list[Any]:
    """What autogenerate would emit to turn the migrated database into the spec's metadata."""
    ctx = MigrationContext.configure(
        sync_conn,
        opts={
            # The version table is Alembic's own bookkeeping, not part of the service's schema.
            "version_table": f"alembic_version_{spec.name}",
            "compare_type": True,
            "compare_server_default": True,
        },
    )
    return compare_metadata(ctx, spec.metadata)


def tables_of(sync_conn: Any) -> set[str]:
    return set(inspect(sync_conn).get_table_names())


async def assert_migrations_match_metadata(spec: ServiceSpec, url: str) -> None:
    engine = create_engine(url)
    try:
        await migrate(engine, spec)
        async with engine.connect() as conn:
            diff = await conn.run_sync(lambda c: schema_differences(spec, c))
            assert diff == [], f"{spec.name}: migrations and metadata differ: {diff}"
            assert await conn.run_sync(tables_of) >= set(spec.metadata.tables)

        def _downgrade(sync_conn: Any) -> None:
            cfg = alembic_config(spec)
            cfg.attributes["connection"] = sync_conn
            command.downgrade(cfg, "base")

        async with engine.begin() as conn:
            await conn.run_sync(_downgrade)
        async with engine.connect() as conn:
            left = await conn.run_sync(tables_of) - {f"alembic_version_{spec.name}"}
            assert left == set(), f"{spec.name}: downgrade to base left {left}"

        # Up again, as a rollback-then-redeploy would.
        await migrate(engine, spec)
        async with engine.connect() as conn:
            assert await conn.run_sync(lambda c: schema_differences(spec, c)) == []
        # And a second upgrade to head is a no-op (several processes start at once).
        await migrate(engine, spec)
    finally:
        await engine.dispose()


@pytest.mark.parametrize("name", sorted(SPECS))
async def test_migrations_build_exactly_the_declared_schema_on_sqlite(name: str, tmp_path: Path) -> None:
    await assert_migrations_match_metadata(SPECS[name], f"sqlite+aiosqlite:///{tmp_path / name}.sqlite")


async def test_the_schema_check_would_see_a_table_missing_from_the_migrations(tmp_path: Path) -> None:
    # The comparison above must be able to fail: a metadata with one more table differs.
    from sqlalchemy import Column, Integer, MetaData, Table

    spec = SPECS["coupons"]
    extra = MetaData(naming_convention=spec.metadata.naming_convention)
    for table in spec.metadata.tables.values():
        table.to_metadata(extra)
    Table("not_migrated", extra, Column("id", Integer, primary_key=True))
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'c.sqlite'}")
    try:
        await migrate(engine, spec)
        async with engine.connect() as conn:
            diff = await conn.run_sync(
                lambda c: schema_differences(
                    ServiceSpec(
                        name=spec.name, metadata=extra, tables=spec.tables, migrations=spec.migrations, routers=[]
                    ),
                    c,
                )
            )
    finally:
        await engine.dispose()
    assert [d[0] for d in diff] == ["add_table"]
