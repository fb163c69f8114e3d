"""Redeeming points: the checkout offset (exchange units, the cap, the minimum) and the points
mall (catalogue validation and every refusal); and properties: the offset never exceeds the cap
or the balance, converts exactly, and is the largest that does."""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from services.loyalty.domain.common import LoyaltyError
from services.loyalty.domain.redemption import (
    Catalogue,
    CouponReward,
    GiftReward,
    MallRedemption,
    Offset,
    OffsetRules,
    cap_fen,
    max_offset,
    offset_for_points,
    redeem_item,
)

SH = ZoneInfo("Asia/Shanghai")
T0 = datetime(2026, 11, 1, 10, tzinfo=SH)


def offset_rules(**over: object) -> OffsetRules:
    return OffsetRules.model_validate(over)


def refused(call: object) -> LoyaltyError:
    assert callable(call)
    with pytest.raises(LoyaltyError) as info:
        call()
    return info.value


# --- the checkout offset ------------------------------------------------------------------------


def test_offset_rules_are_validated() -> None:
    for bad, needle in (
        ({"max_share_percent": 0}, "max_share_percent must be 1..100"),
        ({"max_share_percent": 101}, "max_share_percent must be 1..100"),
        ({"points_per_yuan": 0}, "points_per_yuan"),
        ({"points_per_yuan": 100.0}, "points_per_yuan"),
        ({"min_points": -1}, "min_points must not be negative"),
        ({"rate": 1}, "Extra inputs"),
    ):
        with pytest.raises(ValidationError, match=needle):
            offset_rules(**bad)


@pytest.mark.parametrize(
    ("n", "whole", "unit"),
    [
        (100, False, (1, 1)),
        (10, False, (1, 10)),
        (150, False, (3, 2)),
        (1, False, (1, 100)),
        (1000, False, (10, 1)),
        (150, True, (150, 100)),
    ],
)
def test_exchange_units_convert_exactly(n: int, whole: bool, unit: tuple[int, int]) -> None:
    assert offset_rules(points_per_yuan=n, whole_yuan=whole).unit == unit


def test_the_max_offset_is_floored_to_the_cap_and_the_balance() -> None:
    r = OffsetRules()  # 100 points = ¥1, at most 50%
    assert cap_fen(r, 999) == 499
    assert max_offset(r, order_fen=999, balance=10_000) == Offset(499, 499)
    assert max_offset(r, order_fen=999, balance=300) == Offset(300, 300)
    assert max_offset(offset_rules(points_per_yuan=150), order_fen=1_000, balance=10_000) == Offset(750, 500)
    assert max_offset(offset_rules(points_per_yuan=150), order_fen=1_000, balance=7) == Offset(6, 4)
    assert max_offset(offset_rules(whole_yuan=True), order_fen=999, balance=10_000) == Offset(400, 400)
    assert max_offset(offset_rules(max_fen_per_order=200), order_fen=10_000, balance=10_000) == Offset(200, 200)
    assert max_offset(r, order_fen=0, balance=10_000) == Offset()


def test_below_the_minimum_there_is_no_offset() -> None:
    r = offset_rules(min_points=500)
    assert max_offset(r, order_fen=10_000, balance=499) == Offset()
    assert max_offset(r, order_fen=999, balance=10_000) == Offset()  # the cap allows 499 only
    assert max_offset(r, order_fen=10_000, balance=800) == Offset(800, 800)


def test_asking_for_points_gets_the_exact_offset_or_the_reason() -> None:
    r = offset_rules(points_per_yuan=150, min_points=30)
    assert offset_for_points(r, 300, order_fen=1_000, balance=1_000) == Offset(300, 200)
    assert offset_for_points(r, 0, order_fen=1_000, balance=0) == Offset()
    cases = [
        (301, 1_000, 1_000, "invalid_amount", 422, "steps of 3 (¥0.02 each)"),
        (27, 1_000, 1_000, "below_minimum", 422, "at least 30 points"),
        (600, 1_000, 599, "insufficient_points", 409, "more than the 599 available"),
        (753, 1_000, 10_000, "exceeds_cap", 422, "above the ¥5.00 cap (50% of ¥10.00); use at most 750 points"),
        (-3, 1_000, 10_000, "negative_amount", 422, "must not be negative"),
        (1.5, 1_000, 10_000, "invalid_amount", 422, "whole number"),
    ]
    for points, order, balance, code, status, words in cases:
        err = refused(lambda p=points, o=order, b=balance: offset_for_points(r, p, order_fen=o, balance=b))
        assert (err.code, err.http_status, err.field) == (code, status, "points")
        assert words in err.message


def test_the_per_order_maximum_is_named_in_the_cap_message() -> None:
    r = offset_rules(max_fen_per_order=100)
    err = refused(lambda: offset_for_points(r, 101, order_fen=10_000, balance=10_000))
    assert "at most ¥1.00 per order" in err.message and err.code == "exceeds_cap"


@given(
    n=st.integers(1, 5_000),
    share=st.integers(1, 100),
    whole=st.booleans(),
    per_order=st.none() | st.integers(1, 10**6),
    minimum=st.integers(0, 2_000),
    order=st.integers(0, 10**7),
    balance=st.integers(0, 10**7),
)
def test_the_offset_never_exceeds_the_cap_or_the_balance_and_converts_exactly(
    n: int, share: int, whole: bool, per_order: int | None, minimum: int, order: int, balance: int
) -> None:
    r = offset_rules(
        points_per_yuan=n, max_share_percent=share, whole_yuan=whole, max_fen_per_order=per_order, min_points=minimum
    )
    best = max_offset(r, order_fen=order, balance=balance)
    cap = cap_fen(r, order)
    assert cap <= order * share / 100 and (per_order is None or cap <= per_order)
    assert 0 <= best.fen <= cap and 0 <= best.points <= balance
    assert best.points * 100 == best.fen * n  # every point used buys exactly its value
    unit_points, unit_fen = r.unit
    if best.points:
        assert best.points >= minimum
        assert offset_for_points(r, best.points, order_fen=order, balance=balance) == best
    more = best.points + unit_points
    if best.points or more >= minimum:  # one more unit breaks the cap or the balance
        assert best.fen + unit_fen > cap or more > balance


# --- the points mall ----------------------------------------------------------------------------


CATALOGUE = Catalogue.model_validate(
    {
        "items": [
            {
                "item_id": "c-10",
                "name": "¥10 无门槛券",
                "points": 1_000,
                "reward": {"type": "coupon", "template_id": "t-10"},
            },
            {
                "item_id": "mug",
                "name": "马克杯",
                "points": 3_000,
                "reward": {"type": "gift", "sku": "mug-01"},
                "stock": 5,
                "per_customer_limit": 2,
            },
            {
                "item_id": "old",
                "name": "旧品",
                "points": 10,
                "reward": {"type": "coupon", "template_id": "t-1"},
                "active": False,
            },
            {
                "item_id": "xmas",
                "name": "圣诞券",
                "points": 10,
                "reward": {"type": "coupon", "template_id": "t-2"},
                "available_from": "2026-12-20T00:00:00+08:00",
                "available_until": "2026-12-26T00:00:00+08:00",
            },
        ]
    }
)


def test_the_catalogue_is_validated() -> None:
    gift = {"item_id": "g", "name": "g", "points": 10, "reward": {"type": "gift", "sku": "s"}}
    cases = [
        ([gift], "a gift needs stock"),
        ([{**gift, "stock": 1}, {**gift, "stock": 2}], "item_id 'g' twice"),
        ([{**gift, "stock": -1}], "stock must not be negative"),
        ([{**gift, "stock": 1, "per_customer_limit": 0}], "per_customer_limit must be at least 1"),
        ([{**gift, "stock": 1, "points": 0}], "points"),
        ([{**gift, "stock": 1, "points": 1.5}], "points"),
        ([{**gift, "stock": 1, "reward": {"type": "cash", "fen": 1}}], "reward"),
        ([{**gift, "stock": 1, "available_from": "2026-12-20T00:00:00"}], "timezone"),
        (
            [
                {
                    **gift,
                    "stock": 1,
                    "available_from": "2026-12-20T00:00:00+08:00",
                    "available_until": "2026-12-19T00:00:00+08:00",
                }
            ],
            "available_until must be after available_from",
        ),
    ]
    for items, needle in cases:
        with pytest.raises(ValidationError, match=needle):
            Catalogue.model_validate({"items": items})


def test_redeeming_a_coupon_item_says_what_to_take_and_to_issue() -> None:
    got = redeem_item(CATALOGUE, "c-10", balance=2_500, now=T0, quantity=2)
    assert got == MallRedemption("c-10", 2, 2_000, CouponReward(template_id="t-10"))
    gift = redeem_item(CATALOGUE, "mug", balance=3_000, now=T0, stock_left=1)
    assert gift.reward == GiftReward(sku="mug-01") and gift.points == 3_000


def test_every_mall_refusal_has_a_code_a_status_and_a_field() -> None:
    xmas_before = T0
    xmas_after = datetime(2026, 12, 26, tzinfo=SH)
    cases = [
        (lambda: redeem_item(CATALOGUE, "nope", balance=10**6, now=T0), "unknown_item", 404, "item_id"),
        (lambda: redeem_item(CATALOGUE, "old", balance=10**6, now=T0), "item_unavailable", 409, "item_id"),
        (lambda: redeem_item(CATALOGUE, "xmas", balance=10**6, now=xmas_before), "item_unavailable", 409, "item_id"),
        (lambda: redeem_item(CATALOGUE, "xmas", balance=10**6, now=xmas_after), "item_unavailable", 409, "item_id"),
        (lambda: redeem_item(CATALOGUE, "c-10", balance=10**6, now=T0, quantity=0), "invalid_amount", 422, "quantity"),
        (
            lambda: redeem_item(CATALOGUE, "c-10", balance=10**6, now=T0, quantity=-1),
            "negative_amount",
            422,
            "quantity",
        ),
        (
            lambda: redeem_item(CATALOGUE, "c-10", balance=10**6, now=T0, quantity=100),
            "invalid_amount",
            422,
            "quantity",
        ),
        (
            lambda: redeem_item(CATALOGUE, "mug", balance=10**6, now=T0, redeemed_before=1, quantity=2),
            "limit_reached",
            409,
            "quantity",
        ),
        (lambda: redeem_item(CATALOGUE, "mug", balance=10**6, now=T0, stock_left=0), "out_of_stock", 409, "item_id"),
        (lambda: redeem_item(CATALOGUE, "c-10", balance=999, now=T0), "insufficient_points", 409, "points"),
    ]
    for call, code, status, field in cases:
        err = refused(call)
        assert (err.code, err.http_status, err.field) == (code, status, field), err


def test_refusal_messages_say_why_in_numbers() -> None:
    assert refused(
        lambda: redeem_item(CATALOGUE, "mug", balance=10**6, now=T0, redeemed_before=1, quantity=2)
    ).message == ("item 'mug' is limited to 2 per customer; you have 1, so 1 more at most")
    assert refused(lambda: redeem_item(CATALOGUE, "c-10", balance=999, now=T0)).message == (
        "1 × 'c-10' costs 1000 points, more than the 999 available"
    )
    assert "is on sale from 2026-12-20" in refused(lambda: redeem_item(CATALOGUE, "xmas", balance=99, now=T0)).message


def test_the_configured_stock_applies_when_no_live_count_is_given() -> None:
    err = refused(
        lambda: redeem_item(
            Catalogue.model_validate(
                {
                    "items": [
                        {"item_id": "g", "name": "g", "points": 1, "reward": {"type": "gift", "sku": "s"}, "stock": 1}
                    ]
                }
            ),
            "g",
            balance=10,
            now=T0,
            quantity=2,
        )
    )
    assert (err.code, err.message) == ("out_of_stock", "item 'g' has 1 left, 2 asked")


def test_on_sale_lists_what_a_customer_can_see() -> None:
    assert [i.item_id for i in CATALOGUE.on_sale(T0)] == ["c-10", "mug"]
    assert [i.item_id for i in CATALOGUE.on_sale(datetime(2026, 12, 24, tzinfo=SH))] == ["c-10", "mug", "xmas"]
    with pytest.raises(ValueError, match="naive"):
        CATALOGUE.on_sale(T0.replace(tzinfo=None))
    assert (
        redeem_item(CATALOGUE, "xmas", balance=10, now=datetime(2026, 12, 26, tzinfo=SH) - timedelta(seconds=1)).points
        == 10
    )
