"""Settings refuse unsafe defaults in production; and the check that every service's migrations
build exactly the schema its code declares (tests/schema_checks.py, run for every service on SQLite
and PostgreSQL by tests/integration/test_migrations.py) is able to fail."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlalchemy import Column, Integer, MetaData, Table

from services.registry import SPECS
from shared.db import create_engine
from shared.runtime import ServiceSpec, migrate
from shared.settings import Settings
from tests.schema_checks import schema_differences

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


async def test_the_schema_check_would_see_a_table_missing_from_the_migrations(tmp_path: Path) -> None:
    # The comparison the migration check rests on must be able to fail: a metadata with one more
    # table differs.
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
