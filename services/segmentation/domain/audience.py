"""The audience filter language: a tree of and / or / not over conditions on a customer.

    {"and": [{"tier": ["B"]},
             {"bought_category": {"category": "milk-powder", "within_days": 90}},
             {"not": {"bought_category": {"category": "toys"}}}]}

Validated here (pure); compiled to SQL by adapters/audience_sql.py.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal, get_args

from pydantic import AwareDatetime, BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

_CELL = re.compile(r"^[1-5]-[1-5]-[1-5]$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class IntRange(_Strict):
    gte: Annotated[int, Field(ge=0)] | None = None
    lte: Annotated[int, Field(ge=0)] | None = None

    @model_validator(mode="after")
    def _ordered(self) -> IntRange:
        if self.gte is None and self.lte is None:
            raise ValueError("a range needs gte, lte or both")
        if self.gte is not None and self.lte is not None and self.gte > self.lte:
            raise ValueError(f"empty range: gte {self.gte} > lte {self.lte}")
        return self


class TimeRange(_Strict):
    gte: AwareDatetime | None = None
    lt: AwareDatetime | None = None

    @model_validator(mode="after")
    def _ordered(self) -> TimeRange:
        if self.gte is None and self.lt is None:
            raise ValueError("a time range needs gte, lt or both")
        if self.gte is not None and self.lt is not None and self.gte >= self.lt:
            raise ValueError("empty time range: gte must be before lt")
        return self


class Tier(_Strict):
    tier: list[Literal["S", "A", "B", "C"]] = Field(min_length=1)


class Cell(_Strict):
    cell: list[Annotated[str, Field(pattern=_CELL.pattern)]] = Field(min_length=1)


class RfmClassIs(_Strict):
    rfm_class: list[
        Literal[
            "important_value",
            "important_development",
            "important_retain",
            "important_winback",
            "general_value",
            "general_development",
            "general_retain",
            "general_winback",
        ]
    ] = Field(min_length=1)


class HasTag(_Strict):
    tag: list[Annotated[str, Field(min_length=1, max_length=160)]] = Field(
        min_length=1, description="Any of these tags (e.g. dormant, interest, replenish_due:milk-powder)."
    )


class Recency(_Strict):
    recency_days: IntRange


class Frequency(_Strict):
    frequency: IntRange


class Monetary(_Strict):
    monetary_fen: IntRange


class FirstOrder(_Strict):
    first_order_at: TimeRange


class LastOrder(_Strict):
    last_order_at: TimeRange


class Region(_Strict):
    region: list[Annotated[str, Field(min_length=1)]] = Field(min_length=1)


class MemberLevel(_Strict):
    """The customer's member level in the loyalty programme (from loyalty's level.changed)."""

    member_level: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(min_length=1)


class CategoryWindow(_Strict):
    category: Annotated[str, Field(min_length=1, max_length=128)]
    within_days: Annotated[int, Field(ge=1, le=3650)] | None = None


class BoughtCategory(_Strict):
    bought_category: CategoryWindow


class Interested(_Strict):
    """Favourited / carted an item never bought since (behaviour without purchase)."""

    interested_not_bought: Literal["favorite", "cart", "any"]


class OrderedUnpaid(_Strict):
    ordered_unpaid: Literal[True]


class And(_Strict):
    and_: list[Filter] = Field(alias="and", min_length=1)


class Or(_Strict):
    or_: list[Filter] = Field(alias="or", min_length=1)


class Not(_Strict):
    not_: Filter = Field(alias="not")


# One condition: its model, tagged with the one key that names it (in the order of the error
# message's list of kinds).
_Condition = (
    Annotated[And, Tag("and")]
    | Annotated[Or, Tag("or")]
    | Annotated[Not, Tag("not")]
    | Annotated[Tier, Tag("tier")]
    | Annotated[Cell, Tag("cell")]
    | Annotated[RfmClassIs, Tag("rfm_class")]
    | Annotated[HasTag, Tag("tag")]
    | Annotated[Recency, Tag("recency_days")]
    | Annotated[Frequency, Tag("frequency")]
    | Annotated[Monetary, Tag("monetary_fen")]
    | Annotated[FirstOrder, Tag("first_order_at")]
    | Annotated[LastOrder, Tag("last_order_at")]
    | Annotated[Region, Tag("region")]
    | Annotated[MemberLevel, Tag("member_level")]
    | Annotated[BoughtCategory, Tag("bought_category")]
    | Annotated[Interested, Tag("interested_not_bought")]
    | Annotated[OrderedUnpaid, Tag("ordered_unpaid")]
)
_KINDS: dict[str, type[BaseModel]] = {
    member.__metadata__[0].tag: get_args(member)[0] for member in get_args(_Condition)
}
_KIND_OF = {model: kind for kind, model in _KINDS.items()}


def _kind(value: object) -> str | None:
    """A condition is an object with exactly one key, which names it."""
    if isinstance(value, dict):
        return next(iter(value)) if len(value) == 1 and next(iter(value)) in _KINDS else None
    return _KIND_OF.get(type(value)) if isinstance(value, BaseModel) else None


Filter = Annotated[
    _Condition,
    Discriminator(
        _kind,
        custom_error_type="invalid_filter",
        custom_error_message="a condition is an object with one key, one of: " + ", ".join(_KINDS),
        custom_error_context={"kinds": ", ".join(_KINDS)},
    ),
]

for _model in (And, Or, Not):
    _model.model_rebuild()


def depth(f: BaseModel, level: int = 1) -> int:
    if isinstance(f, (And, Or)):
        children = f.and_ if isinstance(f, And) else f.or_
        return max(depth(c, level + 1) for c in children)
    if isinstance(f, Not):
        return depth(f.not_, level + 1)
    return level
