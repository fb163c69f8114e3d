"""The segmentation read paths on PostgreSQL: GET rfm from the stored segment (there read through
the driver itself) with its fallbacks and per-merchant cache, and audience queries from the
narrowest base selecting exactly what the union selects."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.segmentation_history import segmentation
from tests.unit import test_segmentation_read_rfm as rfm
from tests.unit.test_segmentation_read_audiences import check_narrow_bases_select_what_the_union_selects

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(300)]


@pytest.fixture
async def service(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pg_urls: dict[str, str]
) -> AsyncIterator[rfm.Service]:
    async with rfm.serving(tmp_path, monkeypatch, pg_urls["segmentation"]) as s:
        yield s


async def test_a_saved_configuration_shows_at_once_and_the_stored_segment_answers_once_re_scored(
    service: rfm.Service,
) -> None:
    await rfm.test_a_saved_configuration_shows_at_once_and_the_stored_segment_answers_once_re_scored(service)


async def test_a_segment_scored_under_an_older_configuration_is_never_served(service: rfm.Service) -> None:
    await rfm.test_a_segment_scored_under_an_older_configuration_is_never_served(service)


async def test_a_customer_with_paid_orders_and_no_segment_yet_is_computed(service: rfm.Service) -> None:
    await rfm.test_a_customer_with_paid_orders_and_no_segment_yet_is_computed(service)


async def test_the_cache_keeps_each_merchants_configuration_and_data_apart(service: rfm.Service) -> None:
    await rfm.test_the_cache_keeps_each_merchants_configuration_and_data_apart(service)


async def test_narrow_audience_bases_select_what_the_union_selects(pg_urls: dict[str, str], tmp_path: Path) -> None:
    async with segmentation(tmp_path, pg_urls["segmentation"]) as rt:
        await check_narrow_bases_select_what_the_union_selects(rt)


async def test_reads_in_one_turn_share_a_query_per_merchant_and_never_mix_merchants(service: rfm.Service) -> None:
    await rfm.test_reads_in_one_turn_share_a_query_per_merchant_and_never_mix_merchants(service)


async def test_a_failed_batch_fails_each_of_its_reads_and_the_next_one_works(service: rfm.Service) -> None:
    await rfm.test_a_failed_batch_fails_each_of_its_reads_and_the_next_one_works(service)
