"""Pricing a cart: one coupon's discount with its reason codes, and the best combination."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from services.coupons.domain.cart import (
    MAX_GROUPS,
    PER_GROUP,
    Cart,
    Held,
    best_combination,
    combine,
    discount_for,
    evaluate,
    stacking_conflict,
)
from services.coupons.domain.templates import CouponTemplate, Reason

SH = ZoneInfo("Asia/Shanghai")
NOW = datetime(2026, 11, 7, 10, tzinfo=SH)  # a Saturday morning


def tpl(kind: dict[str, Any], **over: Any) -> CouponTemplate:
    return CouponTemplate.model_validate({"name": "券", "kind": kind, "valid_days": 30, **over})


def pct(pay: int, **kind: Any) -> dict[str, Any]:
    return {"type": "percent", "pay_percent": pay, **kind}


def off(amount: int, threshold: int | None = None) -> dict[str, Any]:
    if threshold is None:
        return {"type": "no_threshold", "amount_off_fen": amount}
    return {"type": "amount_off", "amount_off_fen": amount, "threshold_fen": threshold}


SHIP: dict[str, Any] = {"type": "free_shipping"}


def cart(*lines: tuple[str, str | None, int], shipping: int = 0, paid_today: int = 0) -> Cart:
    return Cart.model_validate(
        {
            "lines": [{"sku": s, "category": c, "quantity": 1, "amount_fen": a} for s, c, a in lines],
            "shipping_fen": shipping,
            "paid_orders_today": paid_today,
        }
    )


def held(coupon_id: str, template: CouponTemplate, days: int = 10) -> Held:
    return Held(coupon_id, template, expires_at=NOW + timedelta(days=days), starts_at=NOW - timedelta(days=1))


MILK_AND_TOY = cart(("milk-900g", "milk-powder", 15000), ("duck", "toys", 10000), shipping=800)


# --- one coupon ---------------------------------------------------------------------------------


def test_a_percent_discount_rounds_down_to_the_fen() -> None:
    applied = discount_for(tpl(pct(80)), cart(("a", None, 999)))
    assert applied.ok and applied.discount_fen == 199 and applied.on == "goods"  # 999 × 20% = 199.8


def test_a_percent_discount_is_capped() -> None:
    assert discount_for(tpl(pct(50, max_discount_fen=3000)), MILK_AND_TOY).discount_fen == 3000


def test_a_scoped_percent_discount_counts_the_scoped_lines_only() -> None:
    t = tpl(pct(90), scope={"categories": ["milk-powder"]})
    assert discount_for(t, MILK_AND_TOY).discount_fen == 1500


def test_the_threshold_counts_the_in_scope_amount_only() -> None:
    t = tpl(off(2000, 20000), scope={"categories": ["milk-powder"]})
    applied = discount_for(t, MILK_AND_TOY)  # the cart is ¥250, but only ¥150 of milk powder
    assert applied.reason == Reason.BELOW_THRESHOLD and applied.discount_fen == 0
    assert "¥150.00" in applied.message and "¥200.00" in applied.message and "¥50.00 more" in applied.message
    assert discount_for(tpl(off(2000, 20000)), MILK_AND_TOY).discount_fen == 2000


def test_an_amount_off_never_exceeds_the_in_scope_amount() -> None:
    assert discount_for(tpl(off(5000), scope={"skus": ["duck"]}), cart(("duck", None, 3000))).discount_fen == 3000
    assert discount_for(tpl(off(5000, 5000)), cart(("duck", None, 5000))).discount_fen == 5000


def test_nothing_in_scope_is_out_of_scope() -> None:
    applied = discount_for(tpl(off(500), scope={"skus": ["milk-400g"]}), MILK_AND_TOY)
    assert applied.reason == Reason.OUT_OF_SCOPE and not applied.ok
    shipping = discount_for(tpl(SHIP, scope={"categories": ["fresh"]}), MILK_AND_TOY)
    assert shipping.reason == Reason.OUT_OF_SCOPE and shipping.on == "shipping"


def test_a_discount_that_rounds_to_nothing_is_refused() -> None:
    applied = discount_for(tpl(pct(95)), cart(("gum", None, 19)))
    assert applied.reason == Reason.NOTHING_TO_DISCOUNT


def test_free_shipping_takes_off_the_fee_up_to_its_cap() -> None:
    assert discount_for(tpl(SHIP), MILK_AND_TOY).discount_fen == 800
    assert discount_for(tpl({**SHIP, "max_shipping_fen": 500}), MILK_AND_TOY).discount_fen == 500
    assert discount_for(tpl(SHIP), cart(("a", None, 100))).reason == Reason.NOTHING_TO_DISCOUNT


def test_the_second_order_of_the_day_ships_free() -> None:
    t = tpl({**SHIP, "nth_order_today": 2})
    first = discount_for(t, cart(("a", None, 1000), shipping=600, paid_today=0))
    assert first.reason == Reason.NOT_NTH_ORDER_TODAY and "number 1" in first.message
    assert discount_for(t, cart(("a", None, 1000), shipping=600, paid_today=1)).discount_fen == 600
    assert discount_for(t, cart(("a", None, 1000), shipping=600, paid_today=4)).discount_fen == 600


def test_a_held_coupon_is_checked_for_time_first() -> None:
    t = tpl(pct(80), hours=[[18, 22]])
    assert evaluate(held("c1", t), MILK_AND_TOY, NOW, SH).reason == Reason.OUTSIDE_HOURS
    assert evaluate(held("c1", t), MILK_AND_TOY, NOW.replace(hour=19), SH).discount_fen == 5000
    expired = Held("c2", tpl(pct(80)), expires_at=NOW)
    assert evaluate(expired, MILK_AND_TOY, NOW, SH).reason == Reason.EXPIRED
    later = Held("c3", tpl(pct(80)), expires_at=NOW + timedelta(days=9), starts_at=NOW + timedelta(days=1))
    assert evaluate(later, MILK_AND_TOY, NOW, SH).reason == Reason.NOT_YET_VALID


def test_a_cart_is_validated() -> None:
    with pytest.raises(ValidationError, match="lines"):
        Cart(lines=[])
    for bad in ({"amount_fen": -1}, {"amount_fen": 99.5}, {"quantity": 0}):
        with pytest.raises(ValidationError):
            Cart.model_validate({"lines": [{"sku": "a", "quantity": 1, "amount_fen": 100, **bad}]})
    with pytest.raises(ValidationError, match="paid_orders_today"):
        Cart.model_validate({"lines": [{"sku": "a", "quantity": 1, "amount_fen": 100}], "paid_orders_today": -1})
    with pytest.raises(ValueError, match="timezone-aware"):
        Held("c", tpl(pct(80)), expires_at=NOW.replace(tzinfo=None))


# --- combinations -------------------------------------------------------------------------------


def test_one_discount_and_one_free_shipping_combine_by_default() -> None:
    coupons = [held("p80", tpl(pct(80))), held("p90", tpl(pct(90))), held("ship", tpl(SHIP))]
    best = best_combination(coupons, MILK_AND_TOY, NOW, SH)
    assert set(best.coupon_ids) == {"p80", "ship"}
    assert (best.goods_discount_fen, best.shipping_discount_fen, best.total_discount_fen) == (5000, 800, 5800)
    assert [p.coupon_id for p in best.usable] == ["p80", "p90", "ship"]


def test_an_exclusive_coupon_is_used_alone_when_it_is_worth_more() -> None:
    coupons = [held("p90", tpl(pct(90))), held("ship", tpl(SHIP)), held("big", tpl(off(3000), exclusive=True))]
    best = best_combination(coupons, MILK_AND_TOY, NOW, SH)  # together 2500 + 800 beat 3000 alone
    assert set(best.coupon_ids) == {"p90", "ship"} and best.total_discount_fen == 3300
    bigger = [*coupons[:2], held("big", tpl(off(4000), exclusive=True))]
    assert best_combination(bigger, MILK_AND_TOY, NOW, SH).coupon_ids == ("big",)


def test_ties_go_to_fewer_coupons_then_the_soonest_expiry_then_the_id() -> None:
    pair = [held("p90", tpl(pct(90))), held("ship", tpl(SHIP))]  # 2500 + 800 = 3300
    alone = held("solo", tpl(off(3300), exclusive=True))
    assert best_combination([*pair, alone], MILK_AND_TOY, NOW, SH).coupon_ids == ("solo",)
    late, soon = held("a-late", tpl(off(1000)), days=20), held("z-soon", tpl(off(1000)), days=3)
    assert best_combination([late, soon], MILK_AND_TOY, NOW, SH).coupon_ids == ("z-soon",)
    same_a, same_b = held("b", tpl(off(1000))), held("a", tpl(off(1000)))
    assert best_combination([same_a, same_b], MILK_AND_TOY, NOW, SH).coupon_ids == ("a",)


def test_coupons_that_do_not_apply_are_listed_with_their_reasons() -> None:
    coupons = [
        held("toys", tpl(off(3000, 30000), scope={"categories": ["toys"]})),
        held("night", tpl(pct(50), hours=[[20, 24]])),
        held("ok", tpl(off(100))),
    ]
    best = best_combination(coupons, MILK_AND_TOY, NOW, SH)
    assert best.coupon_ids == ("ok",)
    assert {k: v.reason for k, v in best.refused.items()} == {
        "toys": Reason.BELOW_THRESHOLD,
        "night": Reason.OUTSIDE_HOURS,
    }


def test_no_usable_coupon_gives_the_empty_combination() -> None:
    best = best_combination([], MILK_AND_TOY, NOW, SH)
    assert best.chosen == () and best.total_discount_fen == 0 and best.considered == 1


def test_stacked_groups_never_take_more_than_a_line_is_worth() -> None:
    duck = {"skus": ["duck"]}
    coupons = [
        held("g1", tpl(off(2000), scope=duck, stack_group="platform"), days=1),
        held("g2", tpl(off(2000), scope=duck, stack_group="shop"), days=2),
    ]
    best = best_combination(coupons, cart(("duck", None, 3000), ("milk", None, 9000)), NOW, SH)
    assert best.total_discount_fen == 3000
    assert [(p.coupon_id, p.discount_fen, p.lines_fen) for p in best.chosen] == [
        ("g1", 2000, (2000, 0)),
        ("g2", 1000, (1000, 0)),
    ]


def test_a_discount_is_spread_over_its_lines_in_proportion() -> None:
    best = combine([held("c", tpl(off(1000)))], cart(("a", None, 1000), ("b", None, 2000), ("c", None, 0)), NOW, SH)
    assert best.chosen[0].lines_fen == (333, 667, 0)


def test_the_customers_own_choice_must_respect_stacking() -> None:
    a, b = held("a", tpl(pct(80))), held("b", tpl(off(500)))
    excl = held("x", tpl(off(500), exclusive=True))
    assert "both in stack group 'discount'" in (stacking_conflict([a, b]) or "")
    assert "exclusive" in (stacking_conflict([excl, held("s", tpl(SHIP))]) or "")
    assert "twice" in (stacking_conflict([a, a]) or "")
    assert stacking_conflict([a, held("s", tpl(SHIP))]) is None
    with pytest.raises(ValueError, match="stack group"):
        combine([a, b], MILK_AND_TOY, NOW, SH)
    chosen = combine([a, held("s", tpl(SHIP))], MILK_AND_TOY, NOW, SH)
    assert chosen.total_discount_fen == 5800
    with pytest.raises(ValueError, match="listed twice"):
        best_combination([a, a], MILK_AND_TOY, NOW, SH)


# --- properties ---------------------------------------------------------------------------------

SKUS, CATEGORIES = ("x", "y", "z"), ("a", "b")


@st.composite
def kinds(draw: st.DrawFn) -> dict[str, Any]:
    which = draw(st.sampled_from(["percent", "amount_off", "no_threshold", "free_shipping"]))
    if which == "percent":
        return pct(draw(st.integers(1, 99)), max_discount_fen=draw(st.none() | st.integers(1, 5000)))
    if which == "amount_off":
        amount = draw(st.integers(1, 5000))
        return off(amount, draw(st.integers(amount, 20000)))
    if which == "no_threshold":
        return off(draw(st.integers(1, 5000)))
    return {
        **SHIP,
        "nth_order_today": draw(st.none() | st.integers(2, 3)),
        "max_shipping_fen": draw(st.none() | st.integers(1, 1000)),
    }


scopes = st.one_of(
    st.just("all"),
    st.lists(st.sampled_from(CATEGORIES), min_size=1, max_size=2, unique=True).map(lambda c: {"categories": c}),
    st.lists(st.sampled_from(SKUS), min_size=1, max_size=3, unique=True).map(lambda s: {"skus": s}),
)


@st.composite
def templates(draw: st.DrawFn) -> CouponTemplate:
    return tpl(
        draw(kinds()),
        scope=draw(scopes),
        exclusive=draw(st.integers(0, 4)) == 0,
        stack_group=draw(st.sampled_from([None, None, "g1", "g2"])),
    )


@st.composite
def carts(draw: st.DrawFn) -> Cart:
    lines = draw(
        st.lists(
            st.tuples(st.sampled_from(SKUS), st.sampled_from([*CATEGORIES, None]), st.integers(0, 20000)),
            min_size=1,
            max_size=3,
        )
    )
    return cart(*lines, shipping=draw(st.integers(0, 1500)), paid_today=draw(st.integers(0, 3)))


@st.composite
def wallets(draw: st.DrawFn) -> list[Held]:
    n = draw(st.integers(0, 7))
    return [
        Held(f"c{i}", draw(templates()), expires_at=NOW + timedelta(days=draw(st.integers(0, 5)))) for i in range(n)
    ]


def brute_force(coupons: list[Held], c: Cart) -> tuple[int, tuple[str, ...]]:
    """The best (total, sorted ids) over every subset that stacks, by the same tie-break."""
    usable = [h for h in coupons if evaluate(h, c, NOW, SH).ok]
    best: tuple[Any, ...] | None = None
    for k in range(len(usable) + 1):
        for subset in itertools.combinations(usable, k):
            if stacking_conflict(list(subset)) is not None:
                continue
            total = combine(list(subset), c, NOW, SH).total_discount_fen
            key = (-total, k, tuple(sorted(h.expires_at for h in subset)), tuple(sorted(h.coupon_id for h in subset)))
            if best is None or key < best:
                best = key
    assert best is not None
    return -best[0], best[3]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(wallets(), carts())
def test_best_combination_matches_brute_force_and_never_breaks_stacking(coupons: list[Held], c: Cart) -> None:
    best = best_combination(coupons, c, NOW, SH)
    chosen = [h for h in coupons if h.coupon_id in best.coupon_ids]
    assert stacking_conflict(chosen) is None
    assert best.total_discount_fen == combine(chosen, c, NOW, SH).total_discount_fen
    assert best.goods_discount_fen <= c.goods_fen and best.shipping_discount_fen <= c.shipping_fen
    total, ids = brute_force(coupons, c)
    assert best.total_discount_fen <= total
    groups: dict[str, int] = {}
    for p in best.usable:
        t = next(h.template for h in coupons if h.coupon_id == p.coupon_id)
        if not t.exclusive:
            groups[t.group] = groups.get(t.group, 0) + 1
    if len(groups) <= MAX_GROUPS and all(n <= PER_GROUP for n in groups.values()):
        assert (best.total_discount_fen, tuple(sorted(best.coupon_ids))) == (total, ids)


@given(carts(), st.integers(1, 99), st.none() | st.integers(1, 50000), scopes)
def test_a_percent_discount_never_exceeds_the_in_scope_amount(c: Cart, pay: int, cap: int | None, scope: Any) -> None:
    t = tpl(pct(pay, max_discount_fen=cap), scope=scope)
    applied = discount_for(t, c)
    base = c.in_scope_fen(t)
    assert 0 <= applied.discount_fen <= base
    if applied.ok:
        expected = base * (100 - pay) // 100
        assert applied.discount_fen == (expected if cap is None else min(expected, cap))


@given(wallets(), carts())
def test_every_pick_adds_up_over_its_lines(coupons: list[Held], c: Cart) -> None:
    best = best_combination(coupons, c, NOW, SH)
    per_line = [0] * len(c.lines)
    for p in best.chosen:
        if p.on == "goods":
            assert sum(p.lines_fen) == p.discount_fen
            per_line = [a + b for a, b in zip(per_line, p.lines_fen, strict=True)]
    assert all(0 <= taken <= line.amount_fen for taken, line in zip(per_line, c.lines, strict=True))
