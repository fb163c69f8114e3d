"""ROI: the merchants' GMV / cost, the baseline, and the lift against the holdout with intervals."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.coupons.domain.roi import (
    Arm,
    Redemptions,
    cost_fen,
    mean_diff,
    proportion_diff,
    redemption_rate,
    report,
    roi,
    t_quantile,
    wilson,
)


def arm(values: list[int], orders: int | None = None) -> Arm:
    """An arm from each customer's GMV in fen (0 = did not order)."""
    converted = sum(1 for v in values if v > 0)
    return Arm(len(values), converted, converted if orders is None else orders, sum(values), sum(v * v for v in values))


def test_three_orders_of_80_yuan_with_50_yuan_of_coupons_is_an_roi_of_4_8() -> None:
    r = Redemptions(issued=10, redeemed=3, discount_fen=5000, gmv_fen=3 * 8000)
    out = report(r)
    assert (out.cost_fen, out.gmv_fen, out.roi) == (5000, 24000, 4.8)
    assert out.redemption_rate == 0.3 and out.aov_fen == 8000
    assert out.lift is None and any("holdout" in why for why in out.insufficient)


def test_a_set_cost_per_redemption_replaces_the_discounts() -> None:
    r = Redemptions(issued=100, redeemed=4, discount_fen=9999, gmv_fen=40000, cost_fen_per_redemption=500)
    assert cost_fen(r) == 2000 and report(r).roi == 20.0


def test_nothing_is_divided_by_zero() -> None:
    out = report(Redemptions(issued=0, redeemed=0, discount_fen=0, gmv_fen=0))
    assert (out.redemption_rate, out.roi, out.aov_fen) == (None, None, None)
    assert any("nothing issued" in why for why in out.insufficient)
    assert any("ROI: no cost" in why for why in out.insufficient)
    assert roi(100, 0) is None and redemption_rate(0, 0) is None
    empty = report(
        Redemptions(issued=5, redeemed=0, discount_fen=0, gmv_fen=0),
        treatment=Arm(0, 0, 0, 0, 0),
        holdout=Arm(0, 0, 0, 0, 0),
        baseline=Arm(0, 0, 0, 0, 0),
    )
    assert empty.lift is not None and empty.lift.conversion_diff is None
    assert empty.lift.gmv_per_customer_diff_fen is None and empty.lift.incremental_gmv_fen is None
    assert empty.baseline is not None and empty.baseline.gmv_per_customer_fen is None


def test_the_baseline_is_customers_without_coupons_per_customer() -> None:
    out = report(Redemptions(10, 3, 5000, 24000), baseline=arm([0, 0, 6000, 9000], orders=3))
    assert out.baseline is not None
    assert (
        out.baseline.conversion,
        out.baseline.gmv_per_customer_fen,
        out.baseline.orders_per_customer,
        out.baseline.aov_fen,
    ) == (0.5, 3750.0, 0.75, 5000.0)


def test_lift_against_the_holdout_gives_incremental_gmv_and_an_honest_roi() -> None:
    # 1,000 treated: 300 redeemed on ¥90 orders, 100 paid ¥80 without the coupon; 100 held out: 30 paid ¥80
    treated = [9000] * 300 + [8000] * 100 + [0] * 600
    held_out = [8000] * 30 + [0] * 70
    r = Redemptions(issued=1000, redeemed=300, discount_fen=150000, gmv_fen=300 * 9000)
    out = report(r, treatment=arm(treated), holdout=arm(held_out))
    lift = out.lift
    assert lift is not None and lift.conversion_diff is not None and lift.gmv_per_customer_diff_fen is not None
    t_mean, h_mean = 3500, 2400
    assert lift.gmv_per_customer_diff_fen.estimate == pytest.approx(t_mean - h_mean)
    assert lift.incremental_gmv_fen == (t_mean - h_mean) * 1000 == 1_100_000
    assert lift.incremental_roi == pytest.approx(lift.incremental_gmv_fen / 150000)
    assert out.roi == 18.0 and lift.incremental_roi == pytest.approx(7.33, abs=0.01)  # the honest one is smaller
    assert (lift.treatment.conversion, lift.holdout.conversion) == (0.4, 0.3)
    d = lift.conversion_diff
    assert d.low < d.estimate < d.high and d.method == "newcombe" and d.confidence == 0.95


def test_lift_needs_both_arms() -> None:
    with pytest.raises(ValueError, match="both"):
        report(Redemptions(1, 1, 1, 1), treatment=arm([1, 2]))


def test_wilson_and_newcombe_match_the_published_example() -> None:
    w = wilson(81, 263)
    assert w is not None and (round(w.low, 4), round(w.high, 4)) == (0.2553, 0.3662)  # Newcombe 1998, table I
    d = proportion_diff(56, 70, 48, 80)  # Newcombe 1998, method 10: 0.0524 to 0.3339
    assert d is not None and (round(d.estimate, 4), round(d.low, 4), round(d.high, 4)) == (0.2, 0.0524, 0.3339)
    assert proportion_diff(1, 0, 1, 2) is None


@pytest.mark.parametrize(
    ("df", "q"), [(1, 12.7062), (2, 4.3027), (5, 2.5706), (10, 2.2281), (30, 2.0423), (120, 1.9799), (1e9, 1.9600)]
)
def test_t_quantiles_match_the_tables(df: float, q: float) -> None:
    assert t_quantile(0.975, df) == pytest.approx(q, abs=1e-4)
    assert t_quantile(0.025, df) == pytest.approx(-q, abs=1e-4)


def test_welch_from_sums_matches_the_textbook_formula() -> None:
    a, b = [12, 15, 11, 19, 14, 16], [9, 10, 14, 8, 11]
    got = mean_diff(len(a), sum(a), sum(x * x for x in a), len(b), sum(b), sum(x * x for x in b))
    assert got is not None and got.method == "welch"
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    va = sum((x - ma) ** 2 for x in a) / (len(a) - 1)
    vb = sum((x - mb) ** 2 for x in b) / (len(b) - 1)
    se = math.sqrt(va / len(a) + vb / len(b))
    df = se**4 / ((va / len(a)) ** 2 / (len(a) - 1) + (vb / len(b)) ** 2 / (len(b) - 1))
    half = t_quantile(0.975, df) * se
    assert (got.estimate, got.low, got.high) == pytest.approx((ma - mb, ma - mb - half, ma - mb + half))
    assert mean_diff(1, 5, 25, 3, 3, 3) is None  # one customer: no variance to speak of
    assert mean_diff(3, 3, 3, 3, 6, 12) is None  # nobody's GMV varies


def test_arms_and_redemptions_reject_impossible_numbers() -> None:
    with pytest.raises(ValueError, match="redeemed"):
        Redemptions(issued=1, redeemed=2, discount_fen=0, gmv_fen=0)
    with pytest.raises(TypeError, match="gmv_fen must be an integer"):
        Redemptions(issued=1, redeemed=1, discount_fen=0, gmv_fen=10.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="converted"):
        Arm(customers=1, converted=2, orders=2, gmv_fen=0, gmv_sq_fen2=0)
    with pytest.raises(ValueError, match="sum of each customer's GMV squared"):
        Arm(customers=2, converted=2, orders=2, gmv_fen=200, gmv_sq_fen2=100)


@given(st.integers(0, 50), st.integers(1, 50), st.integers(0, 50), st.integers(1, 50))
def test_a_difference_of_proportions_interval_holds_its_estimate(x1: int, n1: int, x2: int, n2: int) -> None:
    x1, x2 = min(x1, n1), min(x2, n2)
    d = proportion_diff(x1, n1, x2, n2)
    assert d is not None and -1 <= d.low <= d.estimate <= d.high <= 1


@given(
    st.lists(st.integers(0, 10**7), min_size=2, max_size=30), st.lists(st.integers(0, 10**7), min_size=2, max_size=30)
)
def test_a_welch_interval_holds_its_estimate(a: list[int], b: list[int]) -> None:
    got = mean_diff(len(a), sum(a), sum(x * x for x in a), len(b), sum(b), sum(x * x for x in b))
    if got is not None:
        assert got.low <= got.estimate <= got.high
        assert got.estimate == pytest.approx(sum(a) / len(a) - sum(b) / len(b))
