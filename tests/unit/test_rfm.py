"""RFM scoring rules and the merchant's configuration API."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from services.embedded import build_embedded_app
from services.segmentation.domain.config import RfmConfig
from services.segmentation.domain.rfm import (
    CLASSES,
    Boundaries,
    Split,
    default_tier,
    level_recency,
    level_up,
    quantile_bounds,
    score,
    to_three,
)
from shared.clock import ManualClock
from tests.conftest import embedded_settings, running
from tests.factories import eventually, order_paid

KEY = "fg_rfm_key"
H = {"X-Api-Key": KEY}


def test_levels_count_the_boundaries_reached_and_recency_runs_the_other_way() -> None:
    assert [level_up(v, (2, 5)) for v in (0, 1, 2, 4, 5, 9)] == [1, 1, 2, 2, 3, 3]
    assert [level_recency(d, (30, 90)) for d in (0, 30, 31, 90, 91)] == [3, 3, 2, 2, 1]


@pytest.mark.parametrize(
    ("r", "f", "m", "tier"),
    [
        (3, 3, 3, "S"),
        (3, 3, 2, "S"),
        (2, 3, 3, "S"),
        (3, 2, 2, "A"),
        (1, 3, 3, "A"),
        (2, 2, 2, "B"),
        (3, 1, 1, "B"),
        (1, 2, 2, "B"),
        (1, 1, 2, "C"),
        (1, 1, 1, "C"),
    ],
)
def test_the_default_tier_is_the_sum_of_levels(r: int, f: int, m: int, tier: str) -> None:
    assert default_tier(r, f, m) == tier


def test_five_levels_fold_onto_the_27_cells_for_the_tier() -> None:
    assert [to_three(lv, 5) for lv in (1, 2, 3, 4, 5)] == [1, 1, 2, 3, 3]
    b = Boundaries((10, 20, 30, 40), (2, 3, 4, 5), (100, 200, 300, 400))
    s = score(5, 9, 1000, boundaries=b, levels=5, split=Split(15, 3, 250))
    assert (s.cell, s.tier, s.rfm_class.code) == ("5-5-5", "S", "important_value")


def test_the_eight_classes_have_both_names() -> None:
    assert len({c.code for c in CLASSES.values()}) == 8
    assert CLASSES[(False, False, True)].zh_cn == "重要挽留客户"
    assert CLASSES[(True, False, False)].en == "General development"


def test_a_tier_override_wins_over_the_default() -> None:
    b = Boundaries((30, 90), (2, 4), (10_000, 50_000))
    plain = score(10, 1, 60_000, boundaries=b, levels=3, split=Split(30, 2, 20_000))
    assert (plain.cell, plain.tier, plain.rfm_class.code) == ("3-1-3", "A", "important_development")
    assert (
        score(10, 1, 60_000, boundaries=b, levels=3, split=Split(30, 2, 20_000), tier_overrides={"3-1-3": "S"}).tier
        == "S"
    )


def test_quantile_boundaries_stay_strictly_ascending_on_ties() -> None:
    assert quantile_bounds([1.0] * 10, 3) == (1.0, 2.0)
    assert quantile_bounds([float(i) for i in range(9)], 3) == (3.0, 6.0)


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (
            {"boundaries": {"mode": "fixed", "recency_days": [90, 30], "frequency": [2, 4], "monetary_fen": [1, 2]}},
            "overlap",
        ),
        (
            {"boundaries": {"mode": "fixed", "recency_days": [30], "frequency": [2, 4], "monetary_fen": [1, 2]}},
            "need 2 boundaries",
        ),
        ({"tier_overrides": {"3-3-3": "X"}}, "unknown tier"),
        ({"tier_overrides": {"4-1-1": "A"}}, "unknown cell"),
        ({"class_split": {"mode": "fixed", "frequency": 2}}, "missing"),
        ({"levels": 4}, "levels"),
    ],
)
def test_an_invalid_configuration_is_refused_with_the_reason(body: dict, says: str) -> None:
    with pytest.raises(ValidationError) as err:
        RfmConfig.model_validate(body)
    assert says in str(err.value)


async def test_the_configuration_is_versioned_and_decides_the_score(tmp_path: Path, frozen_clock: ManualClock) -> None:
    app = build_embedded_app(embedded_settings(tmp_path, bootstrap_api_key=KEY), announce=False)
    now = frozen_clock.now()  # the service's clock stands still: "200 days ago" stays 200 days
    async with running(app) as client:
        events = [order_paid("demo", "vip", f"v-{i}", 30_000, at=now - timedelta(days=3 + i)) for i in range(5)]
        events += [order_paid("demo", "once", "x-1", 5_000, at=now - timedelta(days=200))]
        assert (await client.post("/v1/events", json=events, headers=H)).json()["accepted"] == 6

        async def vip() -> dict:
            r = await client.get("/v1/customers/vip/rfm", headers=H)
            return r.json() if r.status_code == 200 else {}

        got = await eventually(vip, lambda v: v.get("frequency") == 5)
        assert got["why"]["config_version"] == 0 and got["why"]["boundaries_source"] == "quantile"

        config = {
            "period_days": None,
            "levels": 3,
            "boundaries": {
                "mode": "fixed",
                "recency_days": [30, 90],
                "frequency": [2, 4],
                "monetary_fen": [10_000, 100_000],
            },
            "tier_overrides": {"1-1-1": "B"},
            "class_split": {"mode": "fixed", "recency_days": 30, "frequency": 2, "monetary_fen": 20_000},
        }
        r = await client.put("/v1/segmentation/config", json=config, headers=H)
        assert r.status_code == 200 and r.json()["version"] == 1
        got = (await client.get("/v1/customers/vip/rfm", headers=H)).json()
        assert (got["r_level"], got["f_level"], got["m_level"], got["cell"], got["tier"]) == (3, 3, 3, "3-3-3", "S")
        assert got["rfm_class"] == {"code": "important_value", "zh_cn": "重要价值客户", "en": "Important value"}
        assert got["why"]["boundaries"]["frequency"] == [2, 4] and got["why"]["config_version"] == 1
        once = (await client.get("/v1/customers/once/rfm", headers=H)).json()
        assert (once["cell"], once["tier"], once["rfm_class"]["code"]) == ("1-1-1", "B", "general_winback")

        # A 30-day period: the 200-day-old order no longer counts toward F and M.
        r = await client.put("/v1/segmentation/config", json=config | {"period_days": 30}, headers=H)
        assert r.json()["version"] == 2
        once = (await client.get("/v1/customers/once/rfm", headers=H)).json()
        assert (once["frequency"], once["monetary_fen"], once["recency_days"]) == (0, 0, 200)
        assert (await client.get("/v1/segmentation/config", headers=H)).json()["version"] == 2

        bad = await client.put(
            "/v1/segmentation/config",
            headers=H,
            json=config
            | {"boundaries": {"mode": "fixed", "recency_days": [30, 30], "frequency": [2, 4], "monetary_fen": [1, 2]}},
        )
        assert bad.status_code == 422 and "overlap" in bad.json()["error"]["message"]
