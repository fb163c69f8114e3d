"""The notifications dispatcher against real stores and real loopback providers: once per
trigger under redelivery, caps exact under concurrent dispatchers (PostgreSQL), quiet hours
holding and releasing, retries with backoff and the dead letter, an outage that loses nothing,
WeChat credits spent on the most valuable message and given back when a send is refused."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.notifications.adapters.tables import messages, messaging, wechat_credits
from services.notifications.domain import templates as dt
from services.notifications.service_layer import config, dispatch, handlers, templates
from services.notifications.service_layer.state import Notifier
from services.notifications.spec import SPEC
from shared.db import create_engine, session_factory
from shared.events import EnvelopeBase, new_event
from shared.runtime import migrate
from shared.settings import Settings
from tests.conftest import Backend
from tests.factories import local_day
from tests.providers import FakeProviders

M = "m-notify"
# The merchant's clock is Asia/Shanghai (CST). The tests run on this week's Tuesday (the most recent
# one, today if today is one), read from the suite's clock: caps count a calendar day and an ISO week.
TUESDAY = local_day(-((local_day().weekday() - 1) % 7))


def shanghai(days: int, hour: int, minute: int = 0) -> datetime:
    """``hour:minute`` in Shanghai, ``days`` after that Tuesday."""
    return TUESDAY + timedelta(days=days, hours=hour, minutes=minute)


# 11:00 in Shanghai: outside the default quiet hours (21:00–09:00).
NOON = shanghai(0, 11)


@dataclass
class Store:
    sessions: async_sessionmaker[AsyncSession]
    dialect: str


@pytest.fixture
async def store(backend: Backend, tmp_path: Path) -> AsyncIterator[Store]:
    """The notifications store, once on SQLite and once on PostgreSQL (the shared ``backend``)."""
    url = backend.database_url("notifications") or f"sqlite+aiosqlite:///{tmp_path / 'n.sqlite'}"
    engine = create_engine(url)
    await migrate(engine, SPEC)
    sessions = session_factory(engine)
    async with sessions() as s, s.begin():
        await s.execute(
            messaging.merchants.insert().values(
                merchant_id=M,
                name="贝贝母婴",
                timezone="Asia/Shanghai",
                jwt_secret=b"merchant-secret-0123456789",
                active=True,
                updated_at=NOON,
            )
        )
    yield Store(sessions, backend.name)
    await engine.dispose()


@pytest.fixture(scope="module")
def fake() -> Any:
    with FakeProviders() as providers:
        yield providers


async def setup(
    store: Store,
    *,
    policy: config.Policy | None = None,
    channel: tuple[str, dict[str, Any]] | None = None,
    rule_purpose: str | None = None,
    wechat: bool = False,
) -> None:
    async with store.sessions() as s, s.begin():
        await templates.save(
            s,
            M,
            "cpn-sms",
            dt.TemplateSpec(
                "sms",
                "zh-CN",
                "coupon.issued",
                dt.TemplateParts(
                    text="{{ shop.name }}送您{{ coupon.name }}，{{ coupon.expires_at | date }}前有效。退订回T"
                ),
            ),
            [],
            NOON,
        )
        choices = [{"channel": "sms", "template": "cpn-sms"}]
        if wechat:
            await templates.save(
                s,
                M,
                "cpn-wx",
                dt.TemplateSpec(
                    "wechat",
                    "zh-CN",
                    "coupon.issued",
                    dt.TemplateParts(provider_template="TPL-COUPON", fields={"thing1": "{{ coupon.name }}"}),
                ),
                [],
                NOON,
            )
            choices = [{"channel": "wechat", "template": "cpn-wx"}]
        await config.save_rule(
            s,
            M,
            config.NotifyRule.model_validate(
                {
                    "rule_id": "coupon-arrived",
                    "name": "券到账提醒",
                    "trigger": "coupon.issued",
                    "channels": choices,
                    "purpose": rule_purpose,
                }
            ),
            NOON,
        )
        await config.save_policy(s, M, policy or config.Policy(marketing_requires_explicit_consent=False), NOON)
        if channel is not None:
            await config.save_channel(
                s,
                M,
                "wechat" if channel[0] == "wechat" else "sms",
                config.ChannelSettings(provider=channel[0], config=channel[1]),
                NOON,
            )


def customer(cid: str, phone: str = "13800138000", openid: str | None = None) -> EnvelopeBase:
    data: dict[str, Any] = {"phone": phone, "consents": {"sms": True}}
    if openid:
        data["wechat_openid"] = openid
    return new_event("customer.registered", M, data, customer_id=cid, occurred_at=NOON - timedelta(days=30))


def coupon(cid: str, n: int = 0, value: int = 2000) -> EnvelopeBase:
    return new_event(
        "coupon.issued",
        M,
        {
            "coupon_id": f"k-{cid}-{n}",
            "template_id": "t1",
            "template_name": f"满{value // 100 * 5}减{value // 100}",
            "kind": "amount_off",
            "face_value_fen": value,
            "starts_at": NOON.isoformat(),
            "expires_at": (NOON + timedelta(days=7)).isoformat(),
        },
        customer_id=cid,
        occurred_at=NOON,
    )


async def feed(store: Store, events: list[EnvelopeBase], now: datetime = NOON) -> None:
    async with store.sessions() as s, s.begin():
        await handlers.handle(s, events, now)


async def statuses(store: Store) -> dict[str, int]:
    async with store.sessions() as s:
        return {st: n for st, n in await s.execute(select(messages.c.status, func.count()).group_by(messages.c.status))}


def notifier() -> Notifier:
    return Notifier(Settings(env="test"))


async def test_a_redelivered_trigger_makes_one_message_and_it_reaches_the_provider(store: Store, fake: Any) -> None:
    fake.reset()
    await setup(store, channel=("generic", fake.channel_config("generic")))
    event = coupon("c1")
    await feed(store, [customer("c1"), event])
    await feed(store, [event])  # the bus delivers it again
    n = notifier()
    stats = await dispatch.dispatch_once(n, store.sessions, now=NOON)
    await n.aclose()
    assert (stats.claimed, stats.sent) == (1, 1)
    got = fake.received("generic")
    assert len(got) == 1 and got[0]["phone"] == "+8613800138000"
    assert "贝贝母婴送您满100减20" in got[0]["text"]
    assert await statuses(store) == {"sent": 1}


async def test_provider_errors_are_retried_with_backoff_then_dead_lettered(store: Store, fake: Any) -> None:
    fake.reset()
    await setup(
        store,
        policy=config.Policy(marketing_requires_explicit_consent=False, max_attempts=3),
        channel=("generic", fake.channel_config("generic")),
    )
    await feed(store, [customer("c1"), coupon("c1")])
    fake.script("/sms", {"status": 500}, {"status": 503}, {"status": 500})
    n = notifier()
    now = NOON
    seen_due = []
    for _ in range(3):
        await dispatch.dispatch_once(n, store.sessions, now=now)
        async with store.sessions() as s:
            row = (await s.execute(select(messages.c.status, messages.c.due_at, messages.c.attempts))).one()
        seen_due.append(row.due_at)
        now = max(now, row.due_at) + timedelta(seconds=1)
    await n.aclose()
    assert row.status == "dead" and row.attempts == 3
    # Backoff: the second wait is longer than the first.
    assert seen_due[1] - seen_due[0] > timedelta(seconds=1)
    assert fake.requests("/sms") == 3


async def test_a_provider_outage_holds_messages_and_loses_none(store: Store, fake: Any) -> None:
    fake.reset()
    closed = "http://127.0.0.1:9/sms"  # nothing listens on the discard port
    await setup(store, channel=("generic", fake.channel_config("generic", url=closed)))
    await feed(
        store, [customer(f"c{i}", phone=f"1380013{i:04d}") for i in range(20)] + [coupon(f"c{i}") for i in range(20)]
    )
    n = notifier()
    stats = await dispatch.dispatch_once(n, store.sessions, now=NOON)
    assert stats.retried == 20 and await statuses(store) == {"queued": 20}
    async with store.sessions() as s, s.begin():  # the provider is back
        await config.save_channel(
            s, M, "sms", config.ChannelSettings(provider="generic", config=fake.channel_config("generic")), NOON
        )
    n.routes.clear()
    later = NOON + timedelta(hours=1)
    await dispatch.dispatch_once(n, store.sessions, now=later)
    await n.aclose()
    assert await statuses(store) == {"sent": 20}
    assert fake.count("generic") == 20


async def test_quiet_hours_hold_marketing_until_the_window_opens_and_let_transactional_through(
    store: Store, fake: Any
) -> None:
    night = shanghai(0, 22, 30)
    await setup(store)  # console channel, default quiet hours 21:00–09:00
    await feed(store, [customer("c1"), coupon("c1")], now=night)
    n = notifier()
    stats = await dispatch.dispatch_once(n, store.sessions, now=night)
    assert stats.held == 1
    async with store.sessions() as s:
        row = (await s.execute(select(messages.c.status, messages.c.due_at))).one()
    assert row.status == "held"
    assert row.due_at == shanghai(1, 9)  # 09:00 the next morning
    # Not before the window opens …
    assert (await dispatch.dispatch_once(n, store.sessions, now=row.due_at - timedelta(seconds=1))).claimed == 0
    # … and then, once.
    assert (await dispatch.dispatch_once(n, store.sessions, now=row.due_at)).sent == 1
    assert await statuses(store) == {"delivered": 1}
    # A transactional rule at the same hour goes at once.
    async with store.sessions() as s, s.begin():
        await config.save_rule(
            s,
            M,
            config.NotifyRule.model_validate(
                {
                    "rule_id": "coupon-arrived",
                    "name": "券到账",
                    "trigger": "coupon.issued",
                    "channels": [{"channel": "sms", "template": "cpn-sms"}],
                    "purpose": "transactional",
                }
            ),
            night,
        )
    await feed(store, [coupon("c1", 2)], now=night)
    assert (await dispatch.dispatch_once(n, store.sessions, now=night)).sent == 1
    await n.aclose()


async def test_marketing_caps_count_across_triggers_and_days_on_the_merchants_clock(store: Store) -> None:
    await setup(store)  # sms: 1 a day, 3 a week
    assert NOON.weekday() == 1  # a Tuesday, so the five days below are one ISO week
    await feed(store, [customer("c1")])
    n = notifier()
    sent = []
    for day in range(5):  # Tue … Sat: one coupon a day, two on Tuesday
        now = NOON + timedelta(days=day)
        await feed(
            store, [coupon("c1", day * 10), coupon("c1", day * 10 + 1)] if day == 0 else [coupon("c1", day)], now=now
        )
        sent.append((await dispatch.dispatch_once(n, store.sessions, now=now)).sent)
    await n.aclose()
    # Tuesday: one of two (day cap); Wed, Thu: one each; Fri, Sat: none (3 this ISO week).
    assert sent == [1, 1, 1, 0, 0]
    async with store.sessions() as s:
        reasons = {r for (r,) in await s.execute(select(messages.c.reason).where(messages.c.status == "skipped"))}
    assert reasons == {"cap_reached"}


@pytest.mark.postgres
async def test_caps_hold_exactly_with_dispatchers_racing_on_postgresql(pg_urls: dict[str, str]) -> None:
    engine = create_engine(pg_urls["notifications"])
    await migrate(engine, SPEC)
    store = Store(session_factory(engine), "postgres")
    async with store.sessions() as s, s.begin():
        await s.execute(
            messaging.merchants.insert().values(
                merchant_id=M, name="店", timezone="Asia/Shanghai", jwt_secret=b"x" * 20, active=True, updated_at=NOON
            )
        )
    await setup(store)  # sms 1/day: each customer may get exactly one of their 6 coupons today
    customers = [f"c{i}" for i in range(40)]
    await feed(store, [customer(c, phone=f"139{i:08d}") for i, c in enumerate(customers)])
    await feed(store, [coupon(c, k) for c in customers for k in range(6)])
    notifiers = [notifier() for _ in range(4)]
    # Four dispatchers at once, small batches, so that one customer's messages land in different ones.
    await asyncio.gather(*(dispatch.dispatch_once(x, store.sessions, limit=15, now=NOON) for x in notifiers))
    for _ in range(20):
        rounds = await asyncio.gather(
            *(dispatch.dispatch_once(x, store.sessions, limit=15, now=NOON) for x in notifiers)
        )
        if all(r.claimed == 0 for r in rounds):
            break
    for x in notifiers:
        await x.aclose()
    async with store.sessions() as s:
        per_customer = dict(
            list(
                await s.execute(
                    select(messages.c.customer_id, func.count())
                    .where(messages.c.status.in_(("sent", "delivered")))
                    .group_by(messages.c.customer_id)
                )
            )
        )
        left = (await s.execute(select(func.count()).where(messages.c.status == "queued"))).scalar()
    await engine.dispose()
    assert left == 0
    assert per_customer == {c: 1 for c in customers}


async def test_wechat_credits_go_to_the_most_valuable_message_and_come_back_when_refused(
    store: Store, fake: Any
) -> None:
    fake.reset()
    openid = "o" + "x" * 27
    await setup(
        store,
        wechat=True,
        channel=("wechat", fake.channel_config("wechat")),
        policy=config.Policy(marketing_requires_explicit_consent=False, caps={}),
    )
    grant = new_event(
        "wechat.subscription.granted", M, {"template_id": "TPL-COUPON", "count": 1}, customer_id="c1", occurred_at=NOON
    )
    await feed(store, [customer("c1", openid=openid), grant])
    await feed(store, [coupon("c1", 1, value=500), coupon("c1", 2, value=5000)])
    n = notifier()
    stats = await dispatch.dispatch_once(n, store.sessions, now=NOON)
    assert (stats.sent, stats.skipped) == (1, 1)
    sent = fake.received("wechat")
    assert len(sent) == 1 and sent[0]["data"]["thing1"]["value"] == "满250减50"  # the ¥50 coupon, not the ¥5
    async with store.sessions() as s:
        credits = (await s.execute(select(wechat_credits.c.credits))).scalar()
    assert credits == 0
    # The customer refused (43101): the credit spent on it comes back.
    async with store.sessions() as s, s.begin():
        await s.execute(update(wechat_credits).values(credits=1))
    fake.configure(refusing_openids=[openid])
    await feed(store, [coupon("c1", 3, value=9000)])
    stats = await dispatch.dispatch_once(n, store.sessions, now=NOON)
    await n.aclose()
    fake.configure(refusing_openids=[])
    assert stats.failed == 1
    async with store.sessions() as s:
        credits = (await s.execute(select(wechat_credits.c.credits))).scalar()
    assert credits == 1


async def test_birthdays_are_wished_on_the_merchants_own_day_once_a_year(store: Store) -> None:
    from services.notifications.service_layer.workers import birthdays_once

    async with store.sessions() as s, s.begin():
        await templates.save(
            s,
            M,
            "bday",
            dt.TemplateSpec(
                "sms",
                "zh-CN",
                "birthday",
                dt.TemplateParts(text="{{ shop.name }}祝您{{ birthday.month }}月{{ birthday.day }}日生日快乐！退订回T"),
            ),
            [],
            NOON,
        )
        await config.save_rule(
            s,
            M,
            config.NotifyRule.model_validate(
                {
                    "rule_id": "birthday",
                    "name": "生日祝福",
                    "trigger": "birthday",
                    "channels": [{"channel": "sms", "template": "bday"}],
                }
            ),
            NOON,
        )
        await config.save_policy(s, M, config.Policy(marketing_requires_explicit_consent=False), NOON)
    today, tomorrow = NOON.date(), shanghai(1, 0).date()
    born_on = tomorrow.replace(year=tomorrow.year - 36)  # with the year (a leap year if tomorrow is 29 February)
    born = new_event(
        "customer.registered",
        M,
        {"phone": "13800138000", "birthday": born_on.isoformat()},
        customer_id="c1",
        occurred_at=NOON,
    )
    other = new_event(
        "customer.registered",
        M,
        {"phone": "13800138001", "birthday": f"{today:%m-%d}"},
        customer_id="c2",
        occurred_at=NOON,
    )
    await feed(store, [born, other])
    # 17:00 UTC on Tuesday is already Wednesday in Shanghai: c1's birthday there, not c2's.
    evening = shanghai(1, 1)
    assert (evening.astimezone(UTC).date(), evening.astimezone(UTC).hour) == (today, 17)
    assert await birthdays_once(store.sessions, "http://fugou.test", evening) == 1
    assert await birthdays_once(store.sessions, "http://fugou.test", evening + timedelta(hours=2)) == 0  # once
    async with store.sessions() as s:
        rows = (await s.execute(select(messages.c.customer_id, messages.c.trigger_key))).all()
    assert [(r.customer_id, r.trigger_key) for r in rows] == [("c1", f"birthday:{tomorrow.year}")]
    n = notifier()
    await dispatch.dispatch_once(n, store.sessions, now=evening + timedelta(hours=10))  # 11:00 local
    await n.aclose()
    async with store.sessions() as s:
        rendered = (await s.execute(select(messages.c.rendered))).scalar()
    assert f"{tomorrow.month}月{tomorrow.day}日生日快乐" in rendered


async def test_a_dormant_customer_gets_the_recall_and_a_due_category_its_replenishment(store: Store) -> None:
    async with store.sessions() as s, s.begin():
        await templates.save(
            s,
            M,
            "recall",
            dt.TemplateSpec(
                "sms", "zh-CN", "segment.changed", dt.TemplateParts(text="{{ shop.name }}想您了，回来看看？退订回T")
            ),
            [],
            NOON,
        )
        await templates.save(
            s,
            M,
            "restock",
            dt.TemplateSpec(
                "sms",
                "zh-CN",
                "replenishment.due",
                dt.TemplateParts(text="您的{{ replenishment.category }}该补货啦。退订回T"),
            ),
            [],
            NOON,
        )
        await config.save_rule(
            s,
            M,
            config.NotifyRule.model_validate(
                {
                    "rule_id": "recall",
                    "name": "沉睡召回",
                    "trigger": "segment.changed",
                    "conditions": {"entered_tags": ["dormant"]},
                    "channels": [{"channel": "sms", "template": "recall"}],
                }
            ),
            NOON,
        )
        await config.save_rule(
            s,
            M,
            config.NotifyRule.model_validate(
                {
                    "rule_id": "restock",
                    "name": "补货提醒",
                    "trigger": "replenishment.due",
                    "channels": [{"channel": "sms", "template": "restock"}],
                }
            ),
            NOON,
        )
        await config.save_policy(s, M, config.Policy(marketing_requires_explicit_consent=False, caps={}), NOON)

    def changed(cid: str, before: list[str], after: list[str]) -> EnvelopeBase:
        return new_event(
            "segment.changed",
            M,
            {"before": {"tier": "B", "tags": before}, "after": {"tier": "B", "tags": after}},
            customer_id=cid,
            occurred_at=NOON,
        )

    await feed(store, [customer("c1"), customer("c2", phone="13800138002"), customer("c3", phone="13800138003")])
    await feed(
        store,
        [
            changed("c1", ["new"], ["dormant"]),  # entered dormant: recall
            changed("c2", ["dormant"], ["dormant", "replenish_due:milk-powder"]),  # already dormant
            changed("c3", [], ["interest"]),
        ],
    )  # neither
    async with store.sessions() as s:
        rows = sorted(
            (r.customer_id, r.rule_id) for r in await s.execute(select(messages.c.customer_id, messages.c.rule_id))
        )
    assert rows == [("c1", "recall"), ("c2", "restock")]
    n = notifier()
    await dispatch.dispatch_once(n, store.sessions, now=NOON)
    await n.aclose()
    async with store.sessions() as s:
        texts = {
            r.customer_id: r.rendered for r in await s.execute(select(messages.c.customer_id, messages.c.rendered))
        }
    assert "milk-powder该补货啦" in texts["c2"]


async def test_provider_receipts_mark_their_messages_delivered_or_failed_once(store: Store, fake: Any) -> None:
    from services.notifications.adapters.channels import Receipt
    from services.notifications.service_layer import reads

    fake.reset()
    await setup(store, channel=("generic", fake.channel_config("generic")))
    await feed(store, [customer("c1"), customer("c2", phone="13800138002"), coupon("c1"), coupon("c2")])
    n = notifier()
    assert (await dispatch.dispatch_once(n, store.sessions, now=NOON)).sent == 2
    await n.aclose()
    async with store.sessions() as s:
        sent = {
            r.customer_id: r.provider_id
            for r in await s.execute(select(messages.c.customer_id, messages.c.provider_id))
        }
    report = [
        Receipt(sent["c1"], None, "delivered", "DELIVERED", NOON + timedelta(seconds=5)),
        Receipt(sent["c1"], None, "delivered", "DELIVERED", NOON + timedelta(seconds=9)),  # pushed again
        Receipt(sent["c2"], None, "failed", "UNDELIV", None),
        Receipt("not-ours", None, "delivered", None, None),
    ]
    async with store.sessions() as s, s.begin():
        assert await reads.apply_receipts(s, M, "generic", report, NOON + timedelta(minutes=1)) == 3
        assert await reads.apply_receipts(s, "another-merchant", "generic", report, NOON) == 0
        assert await reads.apply_receipts(s, M, "aliyun", report, NOON) == 0  # another provider's ids
    async with store.sessions() as s:
        rows = {
            r.customer_id: r
            for r in await s.execute(
                select(messages.c.customer_id, messages.c.status, messages.c.reason, messages.c.delivered_at)
            )
        }
    assert (rows["c1"].status, rows["c1"].delivered_at) == ("delivered", NOON + timedelta(seconds=5))
    assert (rows["c2"].status, rows["c2"].reason) == ("failed", "UNDELIV")
