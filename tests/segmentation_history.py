"""Generated shop histories for segmentation's correctness tests, and what they must come to.

``generate_history`` makes a seeded, realistic history for one merchant: customers who buy across
a few categories (milk powder repeatedly, diapers, snacks, toys…), orders that are created then
paid, some never paid, some cancelled before or after payment, some partly or wholly refunded,
merchant price changes between creation and payment, plus carts and favourites. Every event is a
shop envelope (``shared.events.parse_event`` accepts it) with a +08:00 time, in time order.

``expected_tables`` computes, with plain pandas and none of the project's code, what the
``customers``, ``customer_categories`` and ``behaviours`` tables must hold for those events.
``redeliver`` and ``batches`` turn a history into what an unreliable bus would hand the consumer:
shuffled, some events twice (the same event id, or the same order/payment/refund re-sent under a
fresh id), cut into batches anywhere. ``read_tables`` reads the service's tables back in the same
shape as ``expected_tables``.

The checks at the end are shared by tests/unit/test_segmentation_correctness.py (small histories,
a few examples) and tests/integration/test_segmentation_correctness.py (at scale, and on PostgreSQL).
"""

from __future__ import annotations

import asyncio
import copy
import random
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from services.segmentation.service_layer.handlers import handle
from services.segmentation.spec import SPEC
from shared.bus.inprocess import InProcessBus
from shared.events import parse_event
from shared.runtime import ServiceRuntime
from shared.settings import Settings
from tests.factories import CST, local_day

MERCHANT = "demo"
DAYS = 540
# The history spans the DAYS days that end 45 days before the clock's today: refunds and re-sends
# come weeks after their orders, and none may land in the future, whatever the date. Read when the
# module is imported (after the suite's clock is installed).
START = local_day(-DAYS - 45, 8)

# sku -> price in fen, per category; the category of a sku never changes.
CATALOGUE: dict[str, dict[str, int]] = {
    "milk-powder": {"mp-a2-900g": 36800, "mp-feihe-800g": 25800, "mp-wyeth-400g": 19800, "mp-aptamil-800g": 33800},
    "diapers": {"dp-pampers-m": 15900, "dp-merries-l": 13900, "dp-huggies-xl": 8900},
    "snacks": {"sn-puffs": 990, "sn-biscuits": 1990, "sn-fruit-bar": 2990, "sn-rice-cake": 4990},
    "toys": {"ty-blocks": 12900, "ty-rattle": 2990, "ty-bath-duck": 3990, "ty-puzzle": 29900},
    "clothing": {"cl-onesie": 4900, "cl-socks-3p": 1990, "cl-jacket": 19900},
    "books": {"bk-picture": 3990, "bk-cloth": 1990, "bk-sound": 8900},
}
CATEGORY_OF = {sku: cat for cat, skus in CATALOGUE.items() for sku in skus}
UNCATEGORISED = {"gift-wrap": 500, "shipping-insurance": 150}  # lines the shop sends without a category
ORDER_TYPES = ("order.created", "order.paid", "order.cancelled", "order.refunded")
BEHAVIOUR_KINDS = {"cart.added": "cart", "item.favorited": "favorite"}

CUSTOMER_COLUMNS = ["customer_id", "paid_orders", "paid_amount_fen", "first_order_at", "last_order_at", "unpaid_orders"]
CATEGORY_COLUMNS = ["customer_id", "category", "orders", "amount_fen", "first_at", "last_at"]
BEHAVIOUR_COLUMNS = ["customer_id", "kind", "sku", "category", "count", "first_at", "last_at"]


# ---------------------------------------------------------------- the history


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _at(t: datetime) -> str:
    return t.astimezone(CST).isoformat()


def _envelope(
    rng: random.Random, type_: str, merchant_id: str, customer_id: str, at: datetime, data: dict[str, Any]
) -> dict[str, Any]:
    return {
        "event_id": _uuid(rng),
        "type": type_,
        "merchant_id": merchant_id,
        "customer_id": customer_id,
        "occurred_at": _at(at),
        "schema_version": 1,
        "data": data,
    }


def _when(rng: random.Random, start: datetime, days: int) -> datetime:
    t = start + timedelta(seconds=rng.randrange(days * 86400))
    if rng.random() < 0.3:  # some shops send sub-second times
        t += timedelta(microseconds=rng.randrange(1, 1_000_000))
    return t


def _lines(rng: random.Random, likes: Sequence[str]) -> list[dict[str, Any]]:
    lines = []
    for _ in range(rng.choices([1, 2, 3, 4], [50, 30, 15, 5])[0]):
        category = rng.choice(likes) if rng.random() < 0.85 else rng.choice(list(CATALOGUE))
        sku = rng.choice(list(CATALOGUE[category]))
        quantity = rng.choices([1, 2, 3, 6], [70, 20, 7, 3])[0]
        lines.append(
            {"sku": sku, "category": category, "quantity": quantity, "amount_fen": CATALOGUE[category][sku] * quantity}
        )
    if rng.random() < 0.08:
        sku = rng.choice(list(UNCATEGORISED))
        lines.append({"sku": sku, "category": None, "quantity": 1, "amount_fen": UNCATEGORISED[sku]})
    return lines


def _order(
    rng: random.Random,
    merchant_id: str,
    customer_id: str,
    order_id: str,
    likes: Sequence[str],
    start: datetime,
    days: int,
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    created_at = _when(rng, start, days)
    lines = _lines(rng, likes)
    discount = rng.choice([0, 0, 0, 500, 1000, 2000]) if rng.random() < 0.3 else 0
    amount = max(100, sum(line["amount_fen"] for line in lines) - discount)
    coupons = [f"cp-{rng.randrange(1000)}"] if discount else []
    send_created = rng.random() >= 0.03  # a few shops report only the payment of some orders
    if send_created:
        out.append(
            _envelope(
                rng,
                "order.created",
                merchant_id,
                customer_id,
                created_at,
                {"order_id": order_id, "amount_fen": amount, "items": lines, "coupon_ids": coupons},
            )
        )
    fate = rng.random()
    if send_created and fate < 0.10:  # never paid
        if rng.random() < 0.5:  # the shop cancels it (timeout or by the customer)
            out.append(
                _envelope(
                    rng,
                    "order.cancelled",
                    merchant_id,
                    customer_id,
                    created_at + timedelta(minutes=rng.randrange(15, 60 * 48)),
                    {"order_id": order_id, "reason": rng.choice(["timeout", "customer", None])},
                )
            )
        return out
    paid_at = created_at + timedelta(seconds=rng.randrange(20, 1800))
    paid_lines, paid_amount = lines, amount
    if rng.random() < 0.04:  # the merchant changed the price (改价) before payment: the payment's numbers win
        paid_lines = [dict(line, amount_fen=line["amount_fen"] * 9 // 10) for line in lines]
        paid_amount = max(100, amount * 9 // 10 - rng.randrange(0, 100))
    out.append(
        _envelope(
            rng,
            "order.paid",
            merchant_id,
            customer_id,
            paid_at,
            {"order_id": order_id, "amount_fen": paid_amount, "items": paid_lines, "coupon_ids": coupons},
        )
    )

    def refund(at: datetime, amount_fen: int, full: bool, items: list[dict[str, Any]]) -> None:
        refund_id = f"rf-{order_id}-{sum(e['type'] == 'order.refunded' for e in out) + 1}"
        out.append(
            _envelope(
                rng,
                "order.refunded",
                merchant_id,
                customer_id,
                at,
                {"order_id": order_id, "refund_id": refund_id, "amount_fen": amount_fen, "full": full, "items": items},
            )
        )

    later = paid_at + timedelta(days=rng.randrange(1, 20), seconds=rng.randrange(86400))
    if fate < 0.15:  # cancelled after payment, usually with a full refund
        cancelled_at = paid_at + timedelta(minutes=rng.randrange(5, 600))
        out.append(
            _envelope(
                rng,
                "order.cancelled",
                merchant_id,
                customer_id,
                cancelled_at,
                {"order_id": order_id, "reason": "customer"},
            )
        )
        if rng.random() < 0.6:
            refund(cancelled_at + timedelta(minutes=rng.randrange(1, 120)), paid_amount, True, paid_lines)
    elif fate < 0.21:  # wholly refunded: flagged full, or refunds that add up to the payment
        how = rng.random()
        if how < 0.6:
            refund(later, paid_amount, True, paid_lines)
        elif how < 0.8 and paid_amount >= 2:
            first = rng.randrange(1, paid_amount)
            refund(later, first, False, paid_lines[:1])
            refund(
                later + timedelta(days=rng.randrange(0, 5), minutes=rng.randrange(1, 600)),
                paid_amount - first,
                False,
                paid_lines[1:],
            )
        else:  # a full return after a goodwill partial refund: flagged full, amount of what was left
            first = max(1, paid_amount // 10)
            refund(later, first, False, [])
            if paid_amount > first:
                refund(later + timedelta(days=rng.randrange(1, 5)), paid_amount - first, True, paid_lines)
            else:
                refund(later + timedelta(days=rng.randrange(1, 5)), 1, True, paid_lines)
    elif fate < 0.33 and paid_amount >= 3:  # partly refunded, once or twice, never the whole amount
        left = paid_amount - 1
        for k in range(rng.choice([1, 1, 2])):
            if left < 1:
                break
            part = rng.randrange(1, min(left, max(1, paid_amount // 2)) + 1)
            left -= part
            refund(later + timedelta(days=3 * k), part, False, [rng.choice(paid_lines)])
    return out


def generate_history(
    customers: int,
    seed: int,
    *,
    merchant_id: str = MERCHANT,
    max_orders: int = 12,
    start: datetime = START,
    days: int = DAYS,
) -> list[dict[str, Any]]:
    """A seeded history of ``customers`` customers, every event a shop envelope, in time order."""
    rng = random.Random(seed)
    events: list[dict[str, Any]] = []
    categories = list(CATALOGUE)
    for c in range(customers):
        customer_id = f"c-{seed % 100000:05d}-{c:06d}"
        likes = rng.sample(categories, rng.choice([1, 2, 2, 3]))
        if rng.random() < 0.5 and "milk-powder" not in likes:
            likes.append("milk-powder")  # the staple of a mother-and-baby shop
        n = rng.choices(range(max_orders + 1), [12, 20, 14, 10, 8, 7, 6, 5, 4, 4, 4, 3, 3][: max_orders + 1])[0]
        for k in range(n):
            events += _order(rng, merchant_id, customer_id, f"o-{customer_id}-{k:02d}", likes, start, days)
        for _ in range(rng.choice([0, 0, 1, 2, 3, 5, 8])):
            type_ = rng.choice(list(BEHAVIOUR_KINDS))
            category = rng.choice(likes) if rng.random() < 0.7 else rng.choice(categories)
            sku = rng.choice(list(CATALOGUE[category]))
            events.append(
                _envelope(
                    rng,
                    type_,
                    merchant_id,
                    customer_id,
                    _when(rng, start, days),
                    {
                        "sku": sku,
                        "category": category if rng.random() < 0.9 else None,
                        "quantity": rng.choice([1, 1, 2]),
                    },
                )
            )
    order = sorted(range(len(events)), key=lambda i: (datetime.fromisoformat(events[i]["occurred_at"]), i))
    return [events[i] for i in order]


# ---------------------------------------------------------------- unreliable delivery


def redeliver(
    events: Sequence[dict[str, Any]], rng: random.Random, *, duplicate: float = 0.25, shuffle: bool = True
) -> list[dict[str, Any]]:
    """The events as an at-least-once bus might deliver them: each, with probability ``duplicate``,
    a second time, either as the very same envelope (same event id) or, for order events, re-sent
    by the shop under a fresh event id: the same order, payment, cancellation or refund (same
    ``refund_id``), sometimes stamped with the later time of the re-send. Then shuffled."""
    out = [copy.deepcopy(e) for e in events]
    for e in events:
        if rng.random() >= duplicate:
            continue
        again = copy.deepcopy(e)
        if e["type"] in ORDER_TYPES and rng.random() < 0.6:
            again["event_id"] = _uuid(rng)
            if rng.random() < 0.5:
                again["occurred_at"] = _at(
                    datetime.fromisoformat(e["occurred_at"]) + timedelta(seconds=rng.randrange(1, 3 * 86400))
                )
        out.append(again)
        if rng.random() < 0.1:
            out.append(copy.deepcopy(again))
    if shuffle:
        rng.shuffle(out)
    return out


def batches(events: Sequence[dict[str, Any]], rng: random.Random, max_size: int) -> list[list[dict[str, Any]]]:
    """Cut the events into consecutive batches of 1..max_size."""
    out, i = [], 0
    while i < len(events):
        n = rng.randint(1, max_size)
        out.append(list(events[i : i + n]))
        i += n
    return out


# ---------------------------------------------------------------- what the tables must hold (pandas)


def _frames(events: Sequence[dict[str, Any]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    rows, lines = [], []
    for e in events:
        d = e["data"]
        rows.append(
            {
                "event_id": e["event_id"],
                "type": e["type"],
                "customer_id": e["customer_id"],
                "at": e["occurred_at"],
                "order_id": d.get("order_id"),
                "amount_fen": d.get("amount_fen"),
                "refund_id": d.get("refund_id"),
                "full": d.get("full"),
                "sku": d.get("sku"),
                "category": d.get("category"),
            }
        )
        if e["type"] in ("order.created", "order.paid"):
            lines += [
                {"event_id": e["event_id"], "category": it.get("category"), "amount_fen": it["amount_fen"]}
                for it in d.get("items", [])
            ]
    ev = pd.DataFrame(
        rows,
        columns=[
            "event_id",
            "type",
            "customer_id",
            "at",
            "order_id",
            "amount_fen",
            "refund_id",
            "full",
            "sku",
            "category",
        ],
    )
    ev["at"] = pd.to_datetime(ev["at"], utc=True, format="ISO8601")
    items = pd.DataFrame(lines, columns=["event_id", "category", "amount_fen"])
    return ev, items


def _first_per_order(ev: pd.DataFrame, type_: str) -> pd.DataFrame:
    """The earliest event of a type per order (a re-sent payment is the same payment)."""
    return ev[ev["type"] == type_].sort_values(["at", "event_id"], kind="stable").drop_duplicates("order_id")


def expected_tables(events: Sequence[dict[str, Any]]) -> dict[str, pd.DataFrame]:
    """customers, customer_categories and behaviours as the rules say they must be, from the raw
    events alone. Exactly-once at the order level: one payment per order (the earliest), one
    refund per refund id. Behaviours count every event id once."""
    ev, items = _frames(events)
    ev = ev.drop_duplicates("event_id")
    order_ev = ev[ev["type"].isin(ORDER_TYPES)]

    orders = order_ev.drop_duplicates("order_id")[["order_id", "customer_id"]].set_index("order_id")
    created = _first_per_order(ev, "order.created").set_index("order_id")
    paid = _first_per_order(ev, "order.paid").set_index("order_id")
    cancelled = set(ev.loc[ev["type"] == "order.cancelled", "order_id"])
    refunds = ev[ev["type"] == "order.refunded"].drop_duplicates("refund_id")
    refunded = refunds.groupby("order_id").agg(refunded_fen=("amount_fen", "sum"), full=("full", "any"))

    orders["created"] = orders.index.isin(created.index)
    orders["paid_at"] = paid["at"].reindex(orders.index)
    orders["paid_fen"] = paid["amount_fen"].reindex(orders.index)
    orders["paid_event"] = paid["event_id"].reindex(orders.index)
    orders["cancelled"] = orders.index.isin(list(cancelled))
    orders["refunded_fen"] = refunded["refunded_fen"].reindex(orders.index).fillna(0)
    orders["full"] = refunded["full"].reindex(orders.index).fillna(False).astype(bool)
    is_paid = orders["paid_at"].notna()
    orders["counts"] = (
        is_paid & ~orders["cancelled"] & ~orders["full"] & (orders["refunded_fen"] < orders["paid_fen"].fillna(0))
    )
    orders["unpaid"] = orders["created"] & ~is_paid & ~orders["cancelled"]
    counting = orders[orders["counts"]].copy()
    counting["contribution"] = counting["paid_fen"] - counting["refunded_fen"]

    everyone = pd.Index(sorted(orders["customer_id"].unique()), name="customer_id")
    per = counting.groupby("customer_id").agg(
        paid_orders=("contribution", "size"),
        paid_amount_fen=("contribution", "sum"),
        first_order_at=("paid_at", "min"),
        last_order_at=("paid_at", "max"),
    )
    customers = per.reindex(everyone)
    customers["paid_orders"] = customers["paid_orders"].fillna(0).astype("int64")
    customers["paid_amount_fen"] = customers["paid_amount_fen"].fillna(0).astype("int64")
    customers["unpaid_orders"] = orders.groupby("customer_id")["unpaid"].sum().reindex(everyone).astype("int64")
    customers = customers.reset_index()[CUSTOMER_COLUMNS]

    # A counting order always has a payment, whose lines are the ones that count.
    lines = items.merge(
        counting.reset_index()[["order_id", "customer_id", "paid_event", "paid_at"]],
        left_on="event_id",
        right_on="paid_event",
    )
    lines = lines[lines["category"].notna()]
    categories = (
        lines.groupby(["customer_id", "category"])
        .agg(
            orders=("order_id", "nunique"),
            amount_fen=("amount_fen", "sum"),
            first_at=("paid_at", "min"),
            last_at=("paid_at", "max"),
        )
        .reset_index()[CATEGORY_COLUMNS]
    )

    b = ev[ev["type"].isin(list(BEHAVIOUR_KINDS))].copy()
    b["kind"] = b["type"].map(BEHAVIOUR_KINDS)
    behaviours = (
        b.groupby(["customer_id", "kind", "sku"])
        .agg(category=("category", "first"), count=("event_id", "size"), first_at=("at", "min"), last_at=("at", "max"))
        .reset_index()[BEHAVIOUR_COLUMNS]
    )
    return {"customers": customers, "customer_categories": categories, "behaviours": behaviours}


# ---------------------------------------------------------------- comparing


def _py(v: Any) -> Any:
    if v is None or v is pd.NaT or (isinstance(v, float) and v != v):
        return None
    if isinstance(v, pd.Timestamp):
        return v.to_pydatetime().astimezone(UTC)
    if isinstance(v, datetime):
        return v.astimezone(UTC)
    if hasattr(v, "item"):  # numpy scalars
        return v.item()
    return v


KEYS = {"customers": 1, "customer_categories": 2, "behaviours": 3}  # leading key columns per table


def records(table: str, frame: pd.DataFrame) -> dict[tuple[Any, ...], tuple[Any, ...]]:
    """A table as {key: values} of plain Python values (UTC datetimes, ints, None) to compare exactly."""
    n = KEYS[table]
    out = {}
    for row in frame.itertuples(index=False):
        values = tuple(_py(v) for v in row)
        out[values[:n]] = values[n:]
    return out


def diff(table: str, expected: pd.DataFrame, actual: pd.DataFrame, limit: int = 8) -> list[str]:
    """The rows of ``table`` that differ, described; empty when the two are equal."""
    e, a = records(table, expected), records(table, actual)
    out = [
        f"{table} {k}: expected {e.get(k)}, got {a.get(k)}"
        for k in sorted(set(e) | set(a), key=repr)
        if e.get(k) != a.get(k)
    ]
    if len(out) > limit:
        out = [*out[:limit], f"… {len(out) - limit} more"]
    return out


async def read_tables(session: Any, merchant_id: str = MERCHANT) -> dict[str, pd.DataFrame]:
    """The service's customers, customer_categories and behaviours of a merchant, as DataFrames."""
    from sqlalchemy import select

    from services.segmentation.adapters.tables import behaviours, customer_categories, customers

    out = {}
    for name, table, columns in (
        ("customers", customers, CUSTOMER_COLUMNS),
        ("customer_categories", customer_categories, CATEGORY_COLUMNS),
        ("behaviours", behaviours, BEHAVIOUR_COLUMNS),
    ):
        rows = (
            await session.execute(select(*[table.c[c] for c in columns]).where(table.c.merchant_id == merchant_id))
        ).all()
        out[name] = pd.DataFrame([tuple(r) for r in rows], columns=columns)
    return out


@asynccontextmanager
async def segmentation(data_dir: Path, database_url: str | None = None) -> AsyncIterator[ServiceRuntime]:
    """The segmentation service's runtime on a fresh database (migrated; no consumer, no relay):
    SQLite under data_dir unless a database URL is given."""
    bus = InProcessBus(data_dir / "bus.sqlite")
    await bus.start()
    rt = ServiceRuntime(SPEC, Settings(data_dir=data_dir), bus, database_url=database_url)
    try:
        await rt.start(relay=False, consumer=False)
        yield rt
    finally:
        await rt.stop()
        await bus.stop()


async def feed(rt: ServiceRuntime, parts: Sequence[Sequence[dict[str, Any]]]) -> None:
    """What the consumer does: one handle() per batch, each in its own transaction."""
    for part in parts:
        events = [parse_event(e) for e in part]
        async with rt.sessions() as session, session.begin():
            await handle(session, events)


# ---------------------------------------------------------------- checks


COMPARED = ("customers", "customer_categories")


def in_batches(events: Sequence[dict[str, Any]], size: int) -> list[list[dict[str, Any]]]:
    return [list(events[i : i + size]) for i in range(0, len(events), size)]


async def tables(rt: ServiceRuntime, merchant_id: str = MERCHANT) -> dict[str, pd.DataFrame]:
    async with rt.sessions() as session:
        return await read_tables(session, merchant_id)


def assert_the_history_exercises_every_rule(events: Sequence[dict[str, Any]], expected: dict[str, Any], n: int) -> None:
    """A history of ``n`` customers holds every case the rules tell apart, in proportion to its
    size (for 2,000 customers: more than 20,000 events, 1,500 customers with an order row, 300 with
    five paid orders or more, 100 with an unpaid order, 10 who never paid, 3,000 categories)."""
    c = expected["customers"]
    assert len(events) > 10 * n
    assert len(c) > 0.75 * n and (c.paid_orders >= 5).sum() > 0.15 * n and (c.unpaid_orders > 0).sum() > 0.05 * n
    assert (c.paid_orders == 0).sum() > 0.005 * n and len(expected["customer_categories"]) > 1.5 * n


async def check_equal_to_pandas(data_dir: Path, customers: int, seed: int) -> None:
    """A generated history of ``customers`` fed through handle() on SQLite in batches of 500 ends in
    exactly the tables pandas computes from the raw events, and the history exercises every rule."""
    events = generate_history(customers, seed=seed)
    started = time.perf_counter()
    expected = expected_tables(events)
    pandas_s = time.perf_counter() - started
    async with segmentation(data_dir) as rt:
        started = time.perf_counter()
        await feed(rt, in_batches(events, 500))
        feed_s = time.perf_counter() - started
        actual = await tables(rt)
    # The history exercises every rule, not only the happy path.
    assert_the_history_exercises_every_rule(events, expected, customers)
    problems = [p for name in (*COMPARED, "behaviours") for p in diff(name, expected[name], actual[name])]
    assert not problems, "\n".join(problems)
    c = expected["customers"]
    print(f"\n{len(events)} events, {len(c)} customers: handle() {feed_s:.2f}s on SQLite, pandas {pandas_s:.2f}s")


async def _final_tables(data_dir: Path, parts: Sequence[Sequence[dict[str, Any]]]) -> dict[str, Any]:
    async with segmentation(data_dir) as rt:
        await feed(rt, parts)
        return await tables(rt)


def check_redelivery_leaves_the_tables_unchanged(
    seed: int, customers: int, rnd: random.Random, duplicate: float, max_batch: int
) -> None:
    """One example of the property: the history delivered shuffled, partly twice and re-batched
    ends in the tables of its in-order delivery, which are pandas' tables."""
    history = generate_history(customers, seed)
    delivered = redeliver(history, rnd, duplicate=duplicate)
    parts = batches(delivered, rnd, max_batch)
    with tempfile.TemporaryDirectory(prefix="fg-seg-") as root:
        # Hypothesis and pytest-asyncio's loop do not mix; each example runs on a loop of its own.
        in_order = asyncio.run(_final_tables(Path(root) / "in-order", in_batches(history, 25)))
        shuffled = asyncio.run(_final_tables(Path(root) / "shuffled", parts))
    expected = expected_tables(history)
    problems = [p for name in COMPARED for p in diff(name, in_order[name], shuffled[name])]
    assert not problems, "shuffled/duplicated delivery differs from in-order:\n" + "\n".join(problems)
    problems = [p for name in COMPARED for p in diff(name, expected[name], in_order[name])]
    assert not problems, "in-order delivery differs from pandas:\n" + "\n".join(problems)
