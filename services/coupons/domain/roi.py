"""Honest ROI of a rule or template, from plain numbers the service layer's SQL returns (pure).

Three figures, from the merchants' own measure to the honest one:

1. **ROI = GMV / cost** (the merchants' measure): GMV = the paid amount of the orders that
   redeemed a coupon; cost = ``cost_fen_per_redemption`` × redemptions when the template sets
   it, else the discounts actually given. 3 orders × ¥80 with ¥50 of coupons → 24000 / 5000 =
   4.8. It credits the coupon with every order it touched, including orders that would have
   happened anyway.
2. **Baseline**: the same per-customer figures for customers who held no coupon of the rule
   (conversion = share who paid an order in the window, GMV per customer, orders per customer,
   average order value), beside the coupon orders' average value.
3. **Incremental lift against the holdout**: the rule's treated customers (everyone it fired
   for and did not hold out, redeemed or not: intention to treat) against its holdout, over
   the same window. Conversion difference with a Newcombe hybrid score interval (Wilson
   intervals of each proportion combined, Newcombe 1998 method 10); GMV-per-customer
   difference with Welch's t interval (Welch–Satterthwaite degrees of freedom), from each arm's
   count, sum and sum of squares of per-customer GMV. Incremental GMV = that difference ×
   treated customers; incremental ROI = incremental GMV / cost.

Ratios and statistics are floats (means in fen included); amounts of money stay integer fen.
Where a figure would divide by zero (or a test lacks data) it is None, and ``insufficient``
says why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from statistics import NormalDist


@dataclass(frozen=True, slots=True)
class Interval:
    """An estimate with its two-sided confidence interval."""

    estimate: float
    low: float
    high: float
    confidence: float
    method: str


@dataclass(frozen=True, slots=True)
class Redemptions:
    """What a rule or template's coupons did: counted by the service layer over a window."""

    issued: int
    redeemed: int
    discount_fen: int  # the discounts actually given on those redemptions
    gmv_fen: int  # the paid amount of the orders that redeemed
    cost_fen_per_redemption: int | None = None

    def __post_init__(self) -> None:
        _non_negative(self, "issued", "redeemed", "discount_fen", "gmv_fen")
        if self.cost_fen_per_redemption is not None:
            _non_negative(self, "cost_fen_per_redemption")
        if self.redeemed > self.issued:
            raise ValueError(f"redeemed ({self.redeemed}) cannot exceed issued ({self.issued})")


@dataclass(frozen=True, slots=True)
class Arm:
    """A group of customers over the window: how many, how many paid at least one order, their
    orders and GMV, and the sum of squares of each customer's GMV (fen²), for the variance."""

    customers: int
    converted: int
    orders: int
    gmv_fen: int
    gmv_sq_fen2: int

    def __post_init__(self) -> None:
        _non_negative(self, "customers", "converted", "orders", "gmv_fen", "gmv_sq_fen2")
        if self.converted > self.customers:
            raise ValueError(f"converted ({self.converted}) cannot exceed customers ({self.customers})")
        if self.converted > self.orders:
            raise ValueError(f"converted ({self.converted}) customers need at least as many orders ({self.orders})")
        if self.customers * self.gmv_sq_fen2 < self.gmv_fen**2:
            raise ValueError(
                "gmv_sq_fen2 is too small for gmv_fen over these customers: "
                "it must be the sum of each customer's GMV squared"
            )


@dataclass(frozen=True, slots=True)
class ArmFigures:
    customers: int
    conversion: float | None  # share of customers with a paid order in the window
    gmv_per_customer_fen: float | None
    orders_per_customer: float | None
    aov_fen: float | None  # average order value


@dataclass(frozen=True, slots=True)
class Lift:
    """Treatment minus holdout."""

    treatment: ArmFigures
    holdout: ArmFigures
    conversion_diff: Interval | None  # a difference of proportions: 0.05 = 5 points
    gmv_per_customer_diff_fen: Interval | None
    incremental_gmv_fen: int | None
    incremental_roi: float | None


@dataclass(frozen=True, slots=True)
class RoiReport:
    issued: int
    redeemed: int
    redemption_rate: float | None
    cost_fen: int
    gmv_fen: int
    roi: float | None  # GMV / cost, the merchants' measure
    aov_fen: float | None  # average value of the orders that redeemed
    baseline: ArmFigures | None
    lift: Lift | None
    insufficient: tuple[str, ...] = ()


def _non_negative(obj: object, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an integer (fen, counts), got {value!r}")
        if value < 0:
            raise ValueError(f"{name} must be 0 or more, got {value}")


def ratio(numerator: int, denominator: int) -> float | None:
    """numerator / denominator, or None when the denominator is 0."""
    return None if denominator == 0 else numerator / denominator


def redemption_rate(issued: int, redeemed: int) -> float | None:
    return ratio(redeemed, issued)


def cost_fen(r: Redemptions) -> int:
    """The merchant's cost: cost_fen_per_redemption × redemptions when set, else the discounts."""
    if r.cost_fen_per_redemption is not None:
        return r.cost_fen_per_redemption * r.redeemed
    return r.discount_fen


def roi(gmv_fen: int, cost: int) -> float | None:
    """GMV / cost (the merchants' measure); None when nothing was spent."""
    return ratio(gmv_fen, cost)


def figures(arm: Arm) -> ArmFigures:
    return ArmFigures(
        arm.customers,
        ratio(arm.converted, arm.customers),
        ratio(arm.gmv_fen, arm.customers),
        ratio(arm.orders, arm.customers),
        ratio(arm.gmv_fen, arm.orders),
    )


# --- intervals ----------------------------------------------------------------------------------


def _z(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    return NormalDist().inv_cdf(1 - (1 - confidence) / 2)


def wilson(successes: int, n: int, confidence: float = 0.95) -> Interval | None:
    """The Wilson score interval of a proportion; None when n is 0."""
    if n == 0:
        return None
    z = _z(confidence)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return Interval(p, max(0.0, centre - half), min(1.0, centre + half), confidence, "wilson")


def proportion_diff(x1: int, n1: int, x2: int, n2: int, confidence: float = 0.95) -> Interval | None:
    """p1 − p2 with Newcombe's hybrid score interval (1998, method 10); None if an arm is empty."""
    a, b = wilson(x1, n1, confidence), wilson(x2, n2, confidence)
    if a is None or b is None:
        return None
    d = a.estimate - b.estimate
    low = d - math.sqrt((a.estimate - a.low) ** 2 + (b.high - b.estimate) ** 2)
    high = d + math.sqrt((a.high - a.estimate) ** 2 + (b.estimate - b.low) ** 2)
    # A difference of proportions lies in [-1, 1]; clamp the float error at the extremes.
    return Interval(d, max(-1.0, low), min(1.0, high), confidence, "newcombe")


def _betacf(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz's method)."""
    tiny = 1e-300

    def nonzero(v: float) -> float:
        return v if abs(v) > tiny else tiny

    c, d = 1.0, 1 / nonzero(1 - (a + b) * x / (a + 1))
    h = d
    for m in range(1, 1000):
        even = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        odd = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        for coefficient in (even, odd):
            d = 1 / nonzero(1 + coefficient * d)
            c = nonzero(1 + coefficient / c)
            h *= d * c
        if abs(d * c - 1) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1) / (a + b + 2):
        return front * _betacf(a, b, x) / a
    return 1 - front * _betacf(b, a, 1 - x) / b


def t_cdf(t: float, df: float) -> float:
    """Student's t distribution function (df may be fractional)."""
    tail = 0.5 * _betainc(df / 2, 0.5, df / (df + t * t))
    return 1 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t with df degrees of freedom (bisection on the cdf)."""
    if not 0 < p < 1:
        raise ValueError(f"p must be between 0 and 1, got {p}")
    if df > 1e7:
        return NormalDist().inv_cdf(p)
    if p < 0.5:
        return -t_quantile(1 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return (lo + hi) / 2


def mean_diff(
    n1: int, sum1: int, sumsq1: int, n2: int, sum2: int, sumsq2: int, confidence: float = 0.95
) -> Interval | None:
    """mean1 − mean2 with Welch's t interval, from each sample's size, sum and sum of squares
    (integers, so the variances are computed exactly). None when a sample has fewer than 2
    values or both have no variance."""
    if n1 < 2 or n2 < 2:
        return None
    v1 = Fraction(n1 * sumsq1 - sum1 * sum1, n1 * (n1 - 1))  # sample variances, exact
    v2 = Fraction(n2 * sumsq2 - sum2 * sum2, n2 * (n2 - 1))
    if v1 < 0 or v2 < 0:
        raise ValueError("a sum of squares is smaller than its sum allows")
    s1, s2 = v1 / n1, v2 / n2
    se2 = s1 + s2
    if se2 == 0:
        return None
    df = float(se2 * se2 / (s1 * s1 / (n1 - 1) + s2 * s2 / (n2 - 1)))
    d = sum1 / n1 - sum2 / n2
    half = t_quantile(1 - (1 - confidence) / 2, df) * math.sqrt(float(se2))
    return Interval(d, d - half, d + half, confidence, "welch")


# --- the report ---------------------------------------------------------------------------------


def lift(treatment: Arm, holdout: Arm, cost: int, confidence: float = 0.95) -> tuple[Lift, list[str]]:
    """Treatment against holdout over the same window; the reasons any figure is missing."""
    missing: list[str] = []
    conv = proportion_diff(treatment.converted, treatment.customers, holdout.converted, holdout.customers, confidence)
    if conv is None:
        missing.append("conversion lift: an arm has no customers")
    gmv = mean_diff(
        treatment.customers,
        treatment.gmv_fen,
        treatment.gmv_sq_fen2,
        holdout.customers,
        holdout.gmv_fen,
        holdout.gmv_sq_fen2,
        confidence,
    )
    if gmv is None:
        missing.append("GMV lift interval: an arm has fewer than 2 customers or no arm's GMV varies")
    t_mean, h_mean = ratio(treatment.gmv_fen, treatment.customers), ratio(holdout.gmv_fen, holdout.customers)
    incremental = None if t_mean is None or h_mean is None else round((t_mean - h_mean) * treatment.customers)
    inc_roi = None if incremental is None else ratio(incremental, cost)
    if incremental is not None and inc_roi is None:
        missing.append("incremental ROI: no cost")
    return Lift(figures(treatment), figures(holdout), conv, gmv, incremental, inc_roi), missing


def report(
    r: Redemptions,
    *,
    treatment: Arm | None = None,
    holdout: Arm | None = None,
    baseline: Arm | None = None,
    confidence: float = 0.95,
) -> RoiReport:
    """The ROI report of one rule or template: the merchants' ratio, the baseline of customers
    without coupons, and the lift against the holdout when both arms are given."""
    missing: list[str] = []
    rate = redemption_rate(r.issued, r.redeemed)
    if rate is None:
        missing.append("redemption rate: nothing issued")
    cost = cost_fen(r)
    ratio_ = roi(r.gmv_fen, cost)
    if ratio_ is None:
        missing.append("ROI: no cost (nothing redeemed, or redemptions cost nothing)")
    aov = ratio(r.gmv_fen, r.redeemed)
    base = figures(baseline) if baseline is not None else None
    result: Lift | None = None
    if treatment is not None and holdout is not None:
        result, more = lift(treatment, holdout, cost, confidence)
        missing.extend(more)
    elif treatment is not None or holdout is not None:
        raise ValueError("lift needs both the treatment and the holdout arm")
    else:
        missing.append("lift: no holdout (set the rule's holdout_percent)")
    return RoiReport(r.issued, r.redeemed, rate, cost, r.gmv_fen, ratio_, aov, base, result, tuple(missing))
