"""A believable synthetic shop: 贝贝母婴旗舰店, a mother-and-baby store, and its customers' last
months, as the events a shop platform sends Fugou (pure: no I/O, no clock unless asked).

Why it looks the way it does: a demo is only convincing when every page shows something true, so
the shop is built from the behaviour Fugou exists to act on.

- Categories have real repurchase cycles (milk powder about every 30 days, diapers 21, wipes 25,
  baby food 20, vitamins 60, snacks 14, clothes 90; toys none), each with a few SKUs priced in
  integer fen.
- Customers have personas: loyal repurchasers who follow their baby's cycle, regulars who stretch
  it and sometimes skip, bargain hunters who stock up on 618 / 99 / 双11, one-timers, customers
  who churned after a few months, customers new this month, and browsers who never pay. Each
  persona's purchases follow the category cycles with jitter, so segmentation finds every tier,
  class and lifecycle tag (``new``, ``interest``, ``dormant``, ``replenish_due:<category>``).
- Orders go through their real states: created, paid (a minute or so later), sometimes never
  paid and cancelled (the customer often orders again), sometimes cancelled after payment, and
  sometimes refunded, in part (one line or one unit, with a ``refund_id``) or in full.
- Around them: registrations with regions, birthdays, valid and unique mainland mobiles, some
  e-mails, WeChat openids and consents; searches, carts and favourites; referrals; WeChat
  one-time subscription grants (template ``TPL-COUPON``).

Determinism: customer *i*'s life comes from its own ``random.Random(f"{seed}:…:{i}")``, so it does
not depend on how many customers are generated, and every ``event_id`` is derived from the seed,
the customer and the event's place in that customer's life. Feeding the same shop twice (same
seed, size and ``now``) posts the same ids, which the gateway takes as duplicates.

Every event is a dict in the contract's envelope (``event_id``, ``type``, ``merchant_id``,
``customer_id``, ``occurred_at`` in ISO 8601 with ``+08:00``, ``data``), within
``[now - months, now]``, and ``Shop.events`` lists them in time order. They are not validated
here (250,000 pydantic validations would triple the time); the tests validate every one.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from shared import clock

TZ = ZoneInfo("Asia/Shanghai")
SHOP_NAME = "贝贝母婴旗舰店"
SUBSCRIBE_TEMPLATE = "TPL-COUPON"  # the WeChat subscribe-message template the shop asks customers for
DAYS_PER_MONTH = 365.25 / 12


# ---------------------------------------------------------------- the catalogue


@dataclass(frozen=True, slots=True)
class Sku:
    sku: str
    name: str
    price_fen: int
    weight: float = 1.0  # how popular it is within its category


@dataclass(frozen=True, slots=True)
class Category:
    code: str
    name: str
    cycle_days: int | None  # None: bought on impulse, no repurchase cycle
    skus: tuple[Sku, ...]
    searches: tuple[str, ...]


CATEGORIES: tuple[Category, ...] = (
    Category(
        "milk-powder",
        "奶粉",
        30,
        (
            Sku("milk-feihe-3-800g", "飞鹤星飞帆3段 800g", 26800, 3),
            Sku("milk-aptamil-3-900g", "爱他美卓萃3段 900g", 35800, 2),
            Sku("milk-junlebao-3-800g", "君乐宝至臻3段 800g", 19800, 1.5),
            Sku("milk-a2-3-900g", "a2至初3段 900g", 32800, 1),
        ),
        ("奶粉", "3段奶粉", "飞鹤", "爱他美", "a2奶粉"),
    ),
    Category(
        "diapers",
        "纸尿裤",
        21,
        (
            Sku("diaper-pampers-l-52", "帮宝适一级帮 L52片", 13900, 3),
            Sku("diaper-merries-m-64", "花王妙而舒 M64片", 11900, 2),
            Sku("diaper-huggies-xl-42", "好奇金装 XL42片", 9900, 2),
        ),
        ("纸尿裤", "拉拉裤", "帮宝适", "花王"),
    ),
    Category(
        "wipes",
        "湿巾",
        25,
        (
            Sku("wipes-purcotton-80x6", "全棉时代婴儿湿巾 80抽×6包", 5990, 2),
            Sku("wipes-huggies-80x5", "好奇纯水湿巾 80抽×5包", 3990, 2),
        ),
        ("湿巾", "手口湿巾", "棉柔巾"),
    ),
    Category(
        "baby-food",
        "辅食",
        20,
        (
            Sku("food-rice-cereal", "婴儿高铁米粉 225g", 6800, 2),
            Sku("food-fruit-puree-6", "有机果泥 6袋装", 4500, 1.5),
            Sku("food-teething-sticks", "磨牙棒 64g", 2990, 1),
        ),
        ("米粉", "辅食", "果泥", "磨牙棒"),
    ),
    Category(
        "toys",
        "玩具",
        None,
        (
            Sku("toy-building-blocks", "大颗粒积木 100粒", 19900, 1),
            Sku("toy-plush-bunny", "安抚玩偶小兔", 7900, 1.5),
            Sku("toy-early-learning", "早教故事机", 25900, 1),
        ),
        ("积木", "玩具", "早教机", "安抚玩偶"),
    ),
    Category(
        "clothes",
        "童装",
        90,
        (
            Sku("clothes-romper", "纯棉连体衣", 12900, 2),
            Sku("clothes-sleeping-bag", "婴儿睡袋", 16900, 1),
            Sku("clothes-socks-3", "宝宝袜子 3双装", 3900, 1.5),
        ),
        ("连体衣", "睡袋", "童装", "宝宝袜子"),
    ),
    Category(
        "vitamins",
        "营养品",
        60,
        (
            Sku("vit-d3-drops", "维生素D3滴剂", 9800, 2),
            Sku("vit-dha-algae-oil", "DHA藻油", 23800, 1.5),
            Sku("vit-probiotics", "婴儿益生菌", 16800, 1),
        ),
        ("维生素D", "DHA", "益生菌"),
    ),
    Category(
        "snacks",
        "零食",
        14,
        (
            Sku("snack-yogurt-melts", "酸奶溶豆", 2500, 2),
            Sku("snack-rice-crackers", "宝宝米饼", 1990, 1.5),
            Sku("snack-cheese-sticks", "儿童奶酪棒", 4900, 2),
        ),
        ("溶豆", "米饼", "奶酪棒", "宝宝零食"),
    ),
)
BY_CODE: dict[str, Category] = {c.code: c for c in CATEGORIES}
CYCLES: dict[str, int] = {c.code: c.cycle_days for c in CATEGORIES if c.cycle_days}
# How likely a repurchaser follows each cycled category (a baby needs diapers more surely than DHA).
STAPLE_ODDS: dict[str, float] = {
    "milk-powder": 0.7,
    "diapers": 0.75,
    "wipes": 0.4,
    "baby-food": 0.3,
    "vitamins": 0.2,
    "snacks": 0.15,
    "clothes": 0.12,
}
MAX_STAPLES = 3
BUNDLE_DAYS = 5  # staples due within this many days of an order go into it
# Promotion days that move a Chinese shop (month, day): 38节, 618, 99大促, 双11, 双12.
PROMOTIONS: tuple[tuple[int, int], ...] = ((3, 8), (6, 18), (9, 9), (11, 11), (12, 12))
REGIONS: tuple[tuple[str, float], ...] = (
    ("广东", 12),
    ("浙江", 9),
    ("江苏", 9),
    ("上海", 8),
    ("北京", 7),
    ("山东", 6),
    ("四川", 5),
    ("河南", 5),
    ("湖北", 4),
    ("福建", 4),
    ("湖南", 4),
    ("安徽", 3),
    ("重庆", 3),
    ("陕西", 3),
    ("天津", 2),
    ("辽宁", 2),
)
MOBILE_PREFIXES = (
    "139",
    "138",
    "137",
    "136",
    "135",
    "150",
    "151",
    "152",
    "158",
    "159",
    "182",
    "183",
    "187",
    "188",
    "130",
    "131",
    "132",
    "155",
    "156",
    "185",
    "186",
    "133",
    "153",
    "180",
    "181",
    "189",
    "177",
    "199",
    "198",
    "166",
)
MAIL_DOMAINS = ("qq.com", "163.com", "126.com", "foxmail.com", "sina.com")
_URLSAFE = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
# Orders by local hour: a morning bump, a lunch bump, and the evening after the baby sleeps.
_HOUR_WEIGHTS = (
    1.0,
    0.6,
    0.3,
    0.2,
    0.2,
    0.3,
    0.8,
    1.5,
    2.0,
    3.0,
    4.0,
    4.0,
    3.5,
    3.0,
    3.0,
    3.0,
    3.0,
    3.0,
    3.0,
    4.0,
    6.0,
    7.0,
    6.0,
    3.0,
)
_HOURS = tuple(range(24))


# ---------------------------------------------------------------- personas


@dataclass(frozen=True, slots=True)
class Persona:
    name: str
    weight: float
    description: str


PERSONAS: tuple[Persona, ...] = (
    Persona("loyal", 0.12, "follows the baby's cycles all along: the S and A tiers"),
    Persona("regular", 0.22, "buys the staples, stretches the cycle, sometimes buys elsewhere"),
    Persona("bargain", 0.14, "stocks up on promotion days; cancels unpaid orders more"),
    Persona("one_timer", 0.24, "one order, never back"),
    Persona("churned", 0.14, "a repurchaser for one to four months, then gone: dormant"),
    Persona("new", 0.08, "registered in the last month: new"),
    Persona("browser", 0.06, "searches, carts and favourites, never pays: interest"),
)
_PERSONA_NAMES = tuple(p.name for p in PERSONAS)
_PERSONA_WEIGHTS = tuple(p.weight for p in PERSONAS)


# ---------------------------------------------------------------- the shop


@dataclass(slots=True)
class Customer:
    index: int
    customer_id: str
    persona: str
    registered_at: datetime
    profile: dict[str, Any]  # the customer.registered payload


@dataclass(slots=True)
class Shop:
    merchant_id: str
    seed: int
    now: datetime
    start: datetime
    customers: list[Customer]
    events: list[dict[str, Any]] = field(repr=False)

    def counts(self) -> Counter[str]:
        """Events per type."""
        return Counter(e["type"] for e in self.events)

    def buyers(self) -> int:
        """Customers with at least one order that counts for RFM (paid, not cancelled, not
        wholly refunded): how many segments segmentation should end with."""
        paid: dict[str, set[str]] = {}
        void: set[str] = set()
        for e in self.events:
            t = e["type"]
            if t == "order.paid":
                paid.setdefault(e["customer_id"], set()).add(e["data"]["order_id"])
            elif t == "order.cancelled" or (t == "order.refunded" and e["data"].get("full")):
                void.add(e["data"]["order_id"])
        return sum(1 for orders in paid.values() if orders - void)


def generate(
    customers: int = 10_000, months: int = 6, seed: int = 42, now: datetime | None = None, merchant_id: str = "demo"
) -> Shop:
    """The shop's customers and their events over the ``months`` before ``now`` (default: the
    clock, in Asia/Shanghai), in time order."""
    if customers < 1 or months < 1:
        raise ValueError("customers and months must be at least 1")
    if now is None:
        now = clock.now().astimezone(TZ)
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError(f"now must be timezone-aware, got the naive {now.isoformat()}")
    now = now.astimezone(TZ).replace(microsecond=0)
    start = now - timedelta(days=round(months * DAYS_PER_MONTH))
    promos = promotion_days(start, now)
    people = [_customer(i, seed, start, now) for i in range(customers)]
    registered = [c.registered_at for c in people]
    timed: list[tuple[datetime, int, int, dict[str, Any]]] = []
    for c in people:
        life = _Life(c, random.Random(f"{seed}:life:{c.index}"), seed, merchant_id, start, now, promos, registered)
        timed.extend(life.run())
    timed.sort(key=lambda t: (t[0], t[1], t[2]))
    return Shop(merchant_id, seed, now, start, people, [t[3] for t in timed])


def promotion_days(start: datetime, now: datetime) -> list[date]:
    """The promotion days inside the window."""
    out = []
    for year in range(start.year, now.year + 1):
        for month, day in PROMOTIONS:
            d = date(year, month, day)
            if start.date() <= d <= now.date():
                out.append(d)
    return out


def by_customer(events: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The same events grouped by customer (in order of each customer's first event), each
    customer's own in time order.

    Why: segmentation scores a customer once per consumer batch. Fed in global time order, a
    customer's first order of May is scored against today's clock before their later orders
    arrive, so a loyal customer briefly looks dormant, and rules on ``dormant`` would give them a
    recall coupon and message they never deserved. A customer's whole history in one batch is
    scored once, as it is now."""
    groups: dict[str | None, list[dict[str, Any]]] = {}
    for e in events:
        groups.setdefault(e.get("customer_id"), []).append(e)
    return [e for group in groups.values() for e in group]


# ---------------------------------------------------------------- one customer


def _customer(index: int, seed: int, start: datetime, now: datetime) -> Customer:
    """Who the customer is and when they registered (their own generator, so that referrals can
    look up anyone's registration before any history is made)."""
    rng = random.Random(f"{seed}:who:{index}")
    persona = rng.choices(_PERSONA_NAMES, _PERSONA_WEIGHTS)[0]
    span = (now - start).total_seconds()
    share = {
        "loyal": (0.0, 0.25),
        "regular": (0.0, 0.5),
        "bargain": (0.0, 0.6),
        "one_timer": (0.0, 0.98),
        "churned": (0.0, 0.35),
        "browser": (0.0, 0.97),
    }
    if persona == "new":
        registered = now - timedelta(days=rng.uniform(0.5, 29.5))
    else:
        lo, hi = share[persona]
        registered = start + timedelta(seconds=span * rng.uniform(lo, hi))
    registered = registered.replace(microsecond=0)
    # Unique by construction: the last 8 digits are a bijection of the index (7919 is prime to 10^8).
    phone = rng.choice(MOBILE_PREFIXES) + f"{(index * 7919 + seed * 104_729 + 12_345_678) % 10**8:08d}"
    profile: dict[str, Any] = {"region": rng.choices([r for r, _ in REGIONS], [w for _, w in REGIONS])[0]}
    if rng.random() < 0.45:  # the parent's birthday, when they gave it
        born = date(now.year - rng.randint(24, 38), rng.randint(1, 12), rng.randint(1, 28))
        profile["birthday"] = born.isoformat()
    if rng.random() < 0.96:
        profile["phone"] = phone
    consents: dict[str, bool] = {"sms": rng.random() < 0.85}
    if rng.random() < 0.15:
        name = rng.choice(("mama", "baobao", "lily", "xiaomei", "yuer", "happy", "tutu", "doudou"))
        profile["email"] = f"{name}{rng.randint(100, 99_999)}@{rng.choice(MAIL_DOMAINS)}"
        consents["email"] = rng.random() < 0.6
    if rng.random() < 0.7:  # WeChat openids are 28 URL-safe characters starting with "o"
        profile["wechat_openid"] = "o" + "".join(rng.choices(_URLSAFE, k=27))
        consents["wechat"] = True
    profile["consents"] = consents
    return Customer(index, f"c-{index + 1:06d}", persona, registered, profile)


class _Life:
    """One customer's history: a purchase plan from their persona, played out as events."""

    def __init__(
        self,
        customer: Customer,
        rng: random.Random,
        seed: int,
        merchant_id: str,
        start: datetime,
        now: datetime,
        promos: list[date],
        registered: list[datetime],
    ):
        self.c, self.rng, self.seed, self.merchant_id = customer, rng, seed, merchant_id
        self.start, self.now, self.promos, self.registered = start, now, promos, registered
        self.out: list[tuple[datetime, int, int, dict[str, Any]]] = []
        self.seq = 0
        self.orders = 0
        self.last_order_at = customer.registered_at
        # Brand loyalty: each customer has their SKU in each category.
        self.sku = {cat.code: rng.choices(cat.skus, [s.weight for s in cat.skus])[0] for cat in CATEGORIES}

    # -- the plan --------------------------------------------------------------------------------

    def run(self) -> list[tuple[datetime, int, int, dict[str, Any]]]:
        c, rng = self.c, self.rng
        self.emit("customer.registered", c.registered_at, c.profile)
        if c.index > 0 and rng.random() < 0.1:  # referred by someone already registered
            referrer = rng.randrange(c.index)
            if self.registered[referrer] < c.registered_at:
                self.emit(
                    "referral.bound",
                    c.registered_at + timedelta(minutes=rng.uniform(1, 10)),
                    {"referrer_id": f"c-{referrer + 1:06d}"},
                )
        plan = self.plan()
        for at, basket in plan:
            self.place(at, basket)
        self.browse(plan)
        if "phone" in c.profile and c.profile["consents"].get("sms") and rng.random() < 0.04:
            # Some customers later turn SMS off (the whole profile again: the latest statement wins).
            at = c.registered_at + (self.now - c.registered_at) * rng.uniform(0.2, 0.99)
            self.emit("customer.updated", at, {**c.profile, "consents": {**c.profile["consents"], "sms": False}})
        return self.out

    def plan(self) -> list[tuple[datetime, list[tuple[str, int]]]]:
        """When the customer orders and what: (moment, [(category, quantity)]), in time order."""
        rng, c, now = self.rng, self.c, self.now
        first = c.registered_at + timedelta(minutes=rng.uniform(20, 60 * 48))
        persona = c.persona
        purchases: list[tuple[datetime, list[tuple[str, int]]]] = []
        if persona in ("loyal", "regular", "churned"):
            staples = [code for code, odds in STAPLE_ODDS.items() if rng.random() < odds][:MAX_STAPLES] or ["diapers"]
            stretch = {"loyal": (0.9, 1.05), "regular": (1.05, 1.35), "churned": (0.95, 1.2)}[persona]
            skip = {"loyal": 0.04, "regular": 0.12, "churned": 0.06}[persona]
            end = now
            if persona == "churned":
                end = min(now - timedelta(days=20), first + timedelta(days=rng.uniform(30, 125)))
            purchases = self.cycles(staples, first, end, stretch, skip)
            # Now and then a toy, in the basket or on its own (toys have no cycle to disturb).
            for _at, basket in purchases:
                if rng.random() < 0.1:
                    basket.append(("toys", 1))
            for _ in range(max(1, int((end - first).days / 30))):
                if rng.random() < 0.08:
                    purchases.append((first + (end - first) * rng.random(), [("toys", 1)]))
        elif persona == "bargain":
            for day in self.promos:
                if day >= first.date() and rng.random() < 0.75:
                    staples = rng.sample(("milk-powder", "diapers", "wipes", "baby-food"), rng.randint(1, 3))
                    purchases.append((self.promo_moment(day), [(code, rng.randint(2, 3)) for code in staples]))
            if not purchases or rng.random() < 0.5:
                at = first + (now - first) * rng.random()
                purchases.append((at, [(rng.choice(list(BY_CODE)), 1)]))
        elif persona in ("one_timer", "new"):
            basket = [(code, 1) for code in rng.sample(list(BY_CODE), rng.choice((1, 1, 2)))]
            purchases.append((first, basket))
            if persona == "new" and rng.random() < 0.35:
                code = basket[0][0]
                purchases.append((first + timedelta(days=rng.uniform(7, 20)), [(code, 1)]))
        purchases.sort(key=lambda p: p[0])
        return [(self.daytime(at), basket) for at, basket in purchases]

    def cycles(
        self, staples: list[str], first: datetime, end: datetime, stretch: tuple[float, float], skip: float
    ) -> list[tuple[datetime, list[tuple[str, int]]]]:
        """Each staple bought every (personal) cycle with jitter; what falls due within
        ``BUNDLE_DAYS`` of an order is bought with it, as parents do."""
        rng = self.rng
        buys: list[tuple[datetime, str]] = []
        for i, code in enumerate(staples):
            cycle = CYCLES[code] * rng.uniform(*stretch)
            at = first if i == 0 else first + timedelta(days=rng.uniform(0, 0.6 * cycle))
            while at < end:
                buys.append((at, code))
                gap = cycle * min(1.35, max(0.7, rng.gauss(1.0, 0.12)))
                if rng.random() < skip:  # bought elsewhere this time
                    gap += cycle
                at += timedelta(days=gap)
        buys.sort()
        orders: list[tuple[datetime, list[tuple[str, int]]]] = []
        for at, code in buys:
            if (
                orders
                and at - orders[-1][0] <= timedelta(days=BUNDLE_DAYS)
                and all(code != k for k, _ in orders[-1][1])
            ):
                orders[-1][1].append((code, 1))
            else:
                orders.append((at, [(code, 1)]))
        return orders

    def daytime(self, at: datetime) -> datetime:
        """The same day at an hour people shop (never before registering)."""
        rng = self.rng
        moment = datetime.combine(
            at.date(), time(rng.choices(_HOURS, _HOUR_WEIGHTS)[0], rng.randrange(60), rng.randrange(60)), TZ
        )
        return max(moment, self.c.registered_at + timedelta(minutes=rng.uniform(20, 90)))

    def promo_moment(self, day: date) -> datetime:
        """Promotions open at midnight (双11's first hour) or in the evening."""
        rng = self.rng
        hour = rng.choice((0, 0, 20, 21, 22, 10))
        return datetime.combine(day, time(hour, rng.randrange(60), rng.randrange(60)), TZ)

    # -- playing it out --------------------------------------------------------------------------

    def emit(self, type_: str, at: datetime, data: dict[str, Any]) -> bool:
        """Record an event; refuse (False) what would happen after now."""
        if at > self.now:
            return False
        at = max(at, self.c.registered_at)  # nothing before registering
        self.seq += 1
        c = self.c
        self.out.append(
            (
                at,
                c.index,
                self.seq,
                {
                    "event_id": f"{self.merchant_id}-s{self.seed}-{c.customer_id}-{self.seq:04d}",
                    "type": type_,
                    "merchant_id": self.merchant_id,
                    "customer_id": c.customer_id,
                    "occurred_at": at.isoformat(timespec="seconds"),
                    "data": data,
                },
            )
        )
        return True

    def line(self, code: str, quantity: int) -> dict[str, Any]:
        sku = self.sku[code]
        return {"sku": sku.sku, "category": code, "quantity": quantity, "amount_fen": sku.price_fen * quantity}

    def place(self, at: datetime, basket: list[tuple[str, int]], retry: bool = False) -> None:
        """One order through its states: browse, create, pay (or not), cancel, refund."""
        rng, c = self.rng, self.c
        at = max(at, self.last_order_at + timedelta(hours=1))  # one customer's orders never overlap
        if at > self.now:
            return
        lines = [self.line(code, q) for code, q in basket]
        if not retry:
            if rng.random() < 0.35:
                query = rng.choice(BY_CODE[basket[0][0]].searches)
                self.emit("search.performed", at - timedelta(minutes=rng.uniform(5, 40)), {"query": query})
            if rng.random() < 0.6:
                for ln in lines:
                    self.emit(
                        "cart.added",
                        at - timedelta(minutes=rng.uniform(1, 4)),
                        {"sku": ln["sku"], "category": ln["category"], "quantity": ln["quantity"]},
                    )
        self.orders += 1
        order_id = f"{c.customer_id}-o{self.orders:03d}"
        amount = sum(ln["amount_fen"] for ln in lines)
        self.last_order_at = at
        self.emit("order.created", at, {"order_id": order_id, "amount_fen": amount, "items": lines, "coupon_ids": []})
        unpaid = 0.12 if c.persona == "bargain" else 0.04
        if rng.random() < unpaid:  # never paid: the shop cancels it, and the customer often orders again
            closed = at + timedelta(minutes=30)
            if (
                self.emit("order.cancelled", closed, {"order_id": order_id, "reason": "超时未支付"})
                and not retry
                and rng.random() < 0.6
            ):
                self.place(closed + timedelta(minutes=rng.uniform(10, 150)), basket, retry=True)
            return
        paid_at = at + timedelta(minutes=rng.uniform(0.3, 12))
        if not self.emit(
            "order.paid", paid_at, {"order_id": order_id, "amount_fen": amount, "items": lines, "coupon_ids": []}
        ):
            return  # paid after now: it is still an unpaid order today
        if "wechat_openid" in c.profile and rng.random() < 0.3:
            self.emit(
                "wechat.subscription.granted",
                paid_at + timedelta(seconds=rng.uniform(5, 90)),
                {"template_id": SUBSCRIBE_TEMPLATE, "count": rng.choice((1, 1, 1, 2))},
            )
        fate = rng.random()
        if fate < 0.02:
            self.emit(
                "order.cancelled",
                paid_at + timedelta(minutes=rng.uniform(10, 180)),
                {"order_id": order_id, "reason": "买家申请取消（未发货）"},
            )
        elif fate < 0.08:
            self.refund(order_id, paid_at + timedelta(days=rng.uniform(2, 12)), lines, amount)

    def refund(self, order_id: str, at: datetime, lines: list[dict[str, Any]], amount: int) -> None:
        """A partial refund (one line, or one unit of a line) or, when nothing smaller fits or the
        customer sends it all back, a full one."""
        rng = self.rng
        data: dict[str, Any] = {"order_id": order_id, "refund_id": f"{order_id}-r1"}
        if len(lines) > 1 and rng.random() < 0.7:
            ln = rng.choice(lines)
            data.update(amount_fen=ln["amount_fen"], full=False, items=[ln])
        elif lines[0]["quantity"] > 1 and rng.random() < 0.7:
            ln = lines[0]
            unit = ln["amount_fen"] // ln["quantity"]
            data.update(amount_fen=unit, full=False, items=[{**ln, "quantity": 1, "amount_fen": unit}])
        else:
            data.update(amount_fen=amount, full=True, items=lines)
        self.emit("order.refunded", at, data)

    def browse(self, plan: list[tuple[datetime, list[tuple[str, int]]]]) -> None:
        """Favourites over the customer's life, and for some a cart or favourite in the last days
        with no order since: the ``interest`` tag."""
        rng, c, now = self.rng, self.c, self.now
        life = now - c.registered_at
        n = rng.choice((0, 0, 1, 1, 2, 3)) + (3 if c.persona == "browser" else 0)
        for _ in range(n):
            cat = rng.choice(CATEGORIES)
            sku = rng.choice(cat.skus)
            at = c.registered_at + life * rng.random()
            if rng.random() < 0.4:
                self.emit(
                    "search.performed", at - timedelta(minutes=rng.uniform(1, 5)), {"query": rng.choice(cat.searches)}
                )
            self.emit("item.favorited", at, {"sku": sku.sku, "category": cat.code, "quantity": 1})
        recent = 0.6 if c.persona == "browser" else 0.08
        if rng.random() < recent:
            at = now - timedelta(days=rng.uniform(0.1, 6))
            if at > self.last_order_at + timedelta(hours=1):
                cat = rng.choice(CATEGORIES)
                sku = rng.choice(cat.skus)
                kind = rng.choice(("cart.added", "item.favorited"))
                self.emit(kind, at, {"sku": sku.sku, "category": cat.code, "quantity": 1})
        if c.persona == "browser" and rng.random() < 0.3:  # ordered once, never paid
            code = rng.choice(list(BY_CODE))
            at = self.daytime(c.registered_at + life * rng.uniform(0.05, 0.9))
            if at > self.last_order_at:
                self.orders += 1
                order_id = f"{c.customer_id}-o{self.orders:03d}"
                ln = self.line(code, 1)
                self.last_order_at = at
                self.emit(
                    "order.created",
                    at,
                    {"order_id": order_id, "amount_fen": ln["amount_fen"], "items": [ln], "coupon_ids": []},
                )
                self.emit("order.cancelled", at + timedelta(minutes=30), {"order_id": order_id, "reason": "超时未支付"})


def iter_batches(
    events: Sequence[dict[str, Any]], size: int, keep_customers: bool = True
) -> Iterator[list[dict[str, Any]]]:
    """Batches of at most ``size`` events. With ``keep_customers``, a customer's consecutive
    events are not split across batches (unless they alone exceed ``size``), so that batches
    posted concurrently never race one customer's events against each other."""
    batch: list[dict[str, Any]] = []
    i, n = 0, len(events)
    while i < n:
        j = i + 1
        if keep_customers:
            cid = events[i].get("customer_id")
            while j < n and events[j].get("customer_id") == cid:
                j += 1
        run = events[i:j]
        if batch and len(batch) + len(run) > size:
            yield batch
            batch = []
        while len(run) > size:
            yield list(run[:size])
            run = run[size:]
        batch.extend(run)
        i = j
    if batch:
        yield batch
