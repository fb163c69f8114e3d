"""Alembic plumbing shared by every service's ``migrations/env.py``, and the DDL of the tables
every service has (outbox, inbox, merchants). Those helpers are versioned by name: a migration
calls ``create_messaging_tables_v1`` forever; a later change gets a ``_v2`` and a new revision."""

from __future__ import annotations

import asyncio
from typing import Any

import sqlalchemy as sa
from alembic import op

from shared.db import BigId, UTCDateTime, create_engine


def run_env(context: Any) -> None:
    """Body of a service's env.py: online migrations on the connection we were handed (or on a
    URL given as ``sqlalchemy.url``), with batch mode so ALTERs work on SQLite too."""
    config = context.config
    metadata = config.attributes.get("target_metadata")
    version_table = config.get_main_option("version_table") or "alembic_version"

    def _run(connection: Any) -> None:
        context.configure(
            connection=connection,
            target_metadata=metadata,
            version_table=version_table,
            render_as_batch=True,
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()

    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return

    async def _online() -> None:
        engine = create_engine(config.get_main_option("sqlalchemy.url"))
        async with engine.begin() as conn:
            await conn.run_sync(_run)
        await engine.dispose()

    asyncio.run(_online())


def create_messaging_tables_v1() -> None:
    op.create_table(
        "outbox",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("merchant_id", sa.String(128), nullable=False),
        sa.Column("topic", sa.String(255), nullable=False),
        sa.Column("key", sa.LargeBinary, nullable=True),
        sa.Column("payload", sa.LargeBinary, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
    )
    op.create_index("ix_outbox_merchant_id", "outbox", ["merchant_id"])
    op.create_table(
        "inbox",
        sa.Column("merchant_id", sa.String(128), primary_key=True),
        sa.Column("event_id", sa.String(128), primary_key=True),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("applied_at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "merchants",
        sa.Column("merchant_id", sa.String(128), primary_key=True),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("jwt_secret", sa.LargeBinary, nullable=False),
        sa.Column("active", sa.Boolean, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "merchant_api_keys",
        sa.Column("key_hash", sa.String(64), primary_key=True),
        sa.Column("merchant_id", sa.String(128), nullable=False),
    )
    op.create_index("ix_merchant_api_keys_merchant_id", "merchant_api_keys", ["merchant_id"])
