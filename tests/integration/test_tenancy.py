"""Tenant isolation and the migrated schemas on real Kafka and PostgreSQL: the same checks as the
embedded run (tests/unit/test_tenancy.py, test_settings_and_migrations.py), so that isolation
and schema hold on the production stack too, not only on SQLite."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.embedded import build_embedded_app
from services.registry import SPECS
from tests.conftest import kafka_pg_settings, running
from tests.infra import Kafka
from tests.unit.test_settings_and_migrations import assert_migrations_match_metadata
from tests.unit.test_tenancy import (
    Tenants,
    check_events_for_another_merchant_are_rejected,
    check_rfm_of_another_merchants_customer_is_not_found,
    two_tenants_with_orders,
)


@pytest.fixture
async def tenants(kafka: Kafka, pg_urls: dict[str, str], tmp_path: Path) -> AsyncIterator[Tenants]:
    settings = kafka_pg_settings(tmp_path, kafka, pg_urls)
    async with running(build_embedded_app(settings, announce=False)) as client:
        yield await two_tenants_with_orders(client, settings)


@pytest.mark.kafka
@pytest.mark.postgres
async def test_isolation_holds_on_kafka_and_postgresql(tenants: Tenants) -> None:
    # One app for both checks: starting the stack dominates the cost.
    await check_events_for_another_merchant_are_rejected(tenants)
    await check_rfm_of_another_merchants_customer_is_not_found(tenants)


@pytest.mark.postgres
@pytest.mark.parametrize("name", sorted(SPECS))
async def test_migrations_build_exactly_the_declared_schema_on_postgresql(name: str, pg_urls: dict[str, str]) -> None:
    await assert_migrations_match_metadata(SPECS[name], pg_urls[name])
