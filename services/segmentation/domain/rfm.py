"""RFM scoring: levels, cells, S/A/B/C tiers and the 8 RFM classes (pure, no I/O).

Vocabulary (DESIGN.md): R = days since the last paid order, F = paid orders, M = paid amount in
fen, F and M over the merchant's period. Levels are numbered 1 (low) to L (high); for R a *short*
recency is a high level. Boundaries are ascending numbers, one fewer than the levels:

- F, M: value < b1 → 1, b1 ≤ value < b2 → 2, …, value ≥ b_last → L
- R:    days ≤ b1 → L, b1 < days ≤ b2 → L-1, …, days > b_last → 1
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

DIMENSIONS = ("recency_days", "frequency", "monetary_fen")
TIERS = ("S", "A", "B", "C")


@dataclass(frozen=True, slots=True)
class RfmClass:
    code: str
    zh_cn: str
    en: str


# Keyed by (R high, F high, M high).
CLASSES: dict[tuple[bool, bool, bool], RfmClass] = {
    (True, True, True): RfmClass("important_value", "重要价值客户", "Important value"),
    (True, False, True): RfmClass("important_development", "重要发展客户", "Important development"),
    (False, True, True): RfmClass("important_retain", "重要保持客户", "Important retain"),
    (False, False, True): RfmClass("important_winback", "重要挽留客户", "Important win-back"),
    (True, True, False): RfmClass("general_value", "一般价值客户", "General value"),
    (True, False, False): RfmClass("general_development", "一般发展客户", "General development"),
    (False, True, False): RfmClass("general_retain", "一般保持客户", "General retain"),
    (False, False, False): RfmClass("general_winback", "一般挽留客户", "General win-back"),
}


def default_tier(r: int, f: int, m: int) -> str:
    """DESIGN.md's default on the 27 cells: sum of levels 8–9 → S, 7 → A, 5–6 → B, 3–4 → C."""
    total = r + f + m
    return "S" if total >= 8 else "A" if total == 7 else "B" if total >= 5 else "C"


def to_three(level: int, levels: int) -> int:
    """Fold a 5-level score onto 3 levels (1–2 → 1, 3 → 2, 4–5 → 3) for the 27-cell tier map."""
    if levels == 3:
        return level
    return 1 if level <= 2 else 2 if level == 3 else 3


def level_up(value: float, bounds: tuple[float, ...]) -> int:
    """Level for F or M: how many boundaries the value reaches, plus one."""
    return 1 + sum(1 for b in bounds if value >= b)


def level_recency(days: float, bounds: tuple[float, ...]) -> int:
    """Level for R: the fewer days, the higher."""
    return len(bounds) + 1 - sum(1 for b in bounds if days > b)


@dataclass(frozen=True, slots=True)
class Boundaries:
    recency_days: tuple[float, ...]
    frequency: tuple[float, ...]
    monetary_fen: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class Split:
    """Where the 8-class split cuts each dimension (R high when days ≤ recency_days)."""

    recency_days: float
    frequency: float
    monetary_fen: float


@dataclass(frozen=True, slots=True)
class Score:
    r_level: int
    f_level: int
    m_level: int
    cell: str
    tier: str
    rfm_class: RfmClass


def tier_of(r: int, f: int, m: int, levels: int, tier_overrides: Mapping[str, str] | None = None) -> str:
    """The tier of a cell: the merchant's override of its 27-cell fold, else the default."""
    r3, f3, m3 = to_three(r, levels), to_three(f, levels), to_three(m, levels)
    return (tier_overrides or {}).get(f"{r3}-{f3}-{m3}") or default_tier(r3, f3, m3)


def score(
    recency_days: int,
    frequency: int,
    monetary_fen: int,
    *,
    boundaries: Boundaries,
    levels: int,
    split: Split,
    tier_overrides: Mapping[str, str] | None = None,
) -> Score:
    r = level_recency(recency_days, boundaries.recency_days)
    f = level_up(frequency, boundaries.frequency)
    m = level_up(monetary_fen, boundaries.monetary_fen)
    tier = tier_of(r, f, m, levels, tier_overrides)
    klass = CLASSES[
        (recency_days <= split.recency_days, frequency >= split.frequency, monetary_fen >= split.monetary_fen)
    ]
    return Score(r, f, m, f"{r}-{f}-{m}", tier, klass)


def quantile_bounds(sorted_values: list[float], levels: int) -> tuple[float, ...]:
    """Boundaries at the 1/L, 2/L, … quantiles of the merchant's own customers (nearest rank),
    made strictly ascending so every level stays reachable."""
    if not sorted_values:
        return tuple(float(i + 1) for i in range(levels - 1))
    n = len(sorted_values)
    out: list[float] = []
    for i in range(1, levels):
        v = float(sorted_values[min(n - 1, (i * n) // levels)])
        if out and v <= out[-1]:
            v = out[-1] + 1
        out.append(v)
    return tuple(out)
