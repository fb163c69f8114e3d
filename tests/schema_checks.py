"""Whether a service's migrations build exactly the schema its code declares (so autogenerate
would have nothing to add), and can be undone and redone: the check of tests/integration/
test_migrations.py (on SQLite and PostgreSQL), and the comparison it rests on, which tests/unit/
test_settings_and_migrations.py shows able to fail."""

from __future__ import annotations

from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from shared.db import create_engine
from shared.runtime import ServiceSpec, alembic_config, migrate


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
