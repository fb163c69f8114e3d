"""A merchant's RFM configuration: validated as a whole, versioned by the service layer."""

from __future__ import annotations

import re
from itertools import pairwise
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from services.segmentation.domain.lifecycle import LifecycleConfig
from services.segmentation.domain.rfm import DIMENSIONS, TIERS, Boundaries, Split

_CELL = re.compile(r"^[1-3]-[1-3]-[1-3]$")


class FixedBoundaries(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Literal["fixed"] = "fixed"
    recency_days: list[Annotated[float, Field(ge=0)]]
    frequency: list[Annotated[float, Field(ge=1)]]
    monetary_fen: list[Annotated[float, Field(ge=0)]]


class QuantileBoundaries(BaseModel):
    """Boundaries at the quantiles of the merchant's own customers, recomputed on a schedule."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["quantile"] = "quantile"


class ClassSplit(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Literal["average", "fixed"] = "average"
    recency_days: Annotated[float, Field(ge=0)] | None = None
    frequency: Annotated[float, Field(ge=0)] | None = None
    monetary_fen: Annotated[float, Field(ge=0)] | None = None

    @model_validator(mode="after")
    def _fixed_needs_all(self) -> ClassSplit:
        given = [getattr(self, d) for d in DIMENSIONS]
        if self.mode == "fixed" and any(v is None for v in given):
            missing = [d for d in DIMENSIONS if getattr(self, d) is None]
            raise ValueError(f"a fixed split needs recency_days, frequency and monetary_fen; missing {missing}")
        if self.mode == "average" and any(v is not None for v in given):
            raise ValueError("an average split takes no numbers (set mode to 'fixed' to give them)")
        return self

    def as_split(self) -> Split:
        return Split(self.recency_days or 0, self.frequency or 0, self.monetary_fen or 0)


class RfmConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    period_days: Annotated[int, Field(ge=1, le=3650)] | None = Field(
        365, description="F and M count orders of the last N days; null counts all history."
    )
    levels: Literal[3, 5] = 3
    boundaries: FixedBoundaries | QuantileBoundaries = Field(default_factory=QuantileBoundaries, discriminator="mode")
    tier_overrides: dict[str, Literal["S", "A", "B", "C"]] = Field(
        default_factory=dict, description='Per-cell tiers over the default, e.g. {"3-1-3": "A"} (R-F-M on 3 levels).'
    )
    class_split: ClassSplit = Field(default_factory=ClassSplit)
    lifecycle: LifecycleConfig = Field(default_factory=LifecycleConfig)

    @field_validator("tier_overrides", mode="before")
    @classmethod
    def _known_cells_and_tiers(cls, v: object) -> object:
        if isinstance(v, dict):
            for cell, tier in v.items():
                if not isinstance(cell, str) or not _CELL.match(cell):
                    raise ValueError(f"unknown cell {cell!r}: cells are R-F-M levels 1..3, e.g. '3-2-1'")
                if tier not in TIERS:
                    raise ValueError(f"unknown tier {tier!r} for cell {cell}: tiers are {', '.join(TIERS)}")
        return v

    @model_validator(mode="after")
    def _boundaries_fit_levels(self) -> RfmConfig:
        if isinstance(self.boundaries, FixedBoundaries):
            for dim in DIMENSIONS:
                bounds = getattr(self.boundaries, dim)
                if len(bounds) != self.levels - 1:
                    raise ValueError(
                        f"boundaries.{dim}: {self.levels} levels need {self.levels - 1} boundaries, got {len(bounds)}"
                    )
                if any(b <= a for a, b in pairwise(bounds)):
                    raise ValueError(f"boundaries.{dim}: boundaries overlap; they must be strictly ascending")
        return self

    def fixed(self) -> Boundaries | None:
        if isinstance(self.boundaries, FixedBoundaries):
            b = self.boundaries
            return Boundaries(tuple(b.recency_days), tuple(b.frequency), tuple(b.monetary_fen))
        return None
