"""Every service's migrations build exactly the schema its code declares (so autogenerate would
have nothing to add), can be undone to nothing and redone, and a second upgrade changes nothing:
on SQLite (the embedded store) and on PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.registry import SPECS
from tests.conftest import Backend
from tests.schema_checks import assert_migrations_match_metadata


@pytest.mark.parametrize("name", sorted(SPECS))
async def test_migrations_build_exactly_the_declared_schema(name: str, backend: Backend, tmp_path: Path) -> None:
    url = backend.database_url(name) or f"sqlite+aiosqlite:///{tmp_path / name}.sqlite"
    await assert_migrations_match_metadata(SPECS[name], url)
