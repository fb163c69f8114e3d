"""A coupon bought in loyalty's points mall lands in the customer's coupon wallet: loyalty spends
the points and announces points.redeemed, coupons issues the template (through the one issuing
path: stock and limits hold), once per redemption."""

from __future__ import annotations

from pathlib import Path

from tests.factories import eventually
from tests.loyalty_shop import open_shop, paid

TEMPLATE = {
    "name": "10元无门槛",
    "kind": {"type": "no_threshold", "amount_off_fen": 1000},
    "valid_days": 30,
    "per_customer_limit": 5,
}


async def test_a_mall_coupon_is_issued_to_the_buyers_wallet(tmp_path: Path) -> None:
    async with open_shop(tmp_path) as shop:
        await shop.rules(earn={"return_window_days": 0})
        r = await shop.client.post("/v1/coupons/templates", json=TEMPLATE, headers=shop.headers)
        assert r.status_code == 201, r.text
        template_id = r.json()["template_id"]
        item = {
            "item_id": "c10",
            "name": "10元券",
            "points": 100,
            "reward": {"type": "coupon", "template_id": template_id},
        }
        assert (await shop.client.post("/v1/loyalty/mall/items", json=item, headers=shop.headers)).status_code == 201
        await shop.send(paid(shop, "u-1", "seed", 50_000))  # 500 points
        me = await shop.token("u-1")
        r = await shop.client.post("/v1/me/mall/redeem", json={"item_id": "c10", "quantity": 2}, headers=me)
        assert r.status_code == 201, r.text

        async def wallet() -> list[dict]:
            r = await shop.client.get("/v1/me/coupons", headers=me)
            assert r.status_code == 200, r.text
            body = r.json()
            return [
                c
                for group in body.values()
                if isinstance(group, list)
                for c in group
                if isinstance(c, dict) and c.get("template_id") == template_id
            ]

        held = await eventually(wallet, lambda cs: len(cs) == 2, timeout=30)
        assert {c["state"] for c in held} == {"available"}
        other = await shop.token("u-2")
        assert await wallet() == held and (await shop.client.get("/v1/me/coupons", headers=other)).status_code == 200
        assert (await shop.points("u-1"))["balance"] == 300
