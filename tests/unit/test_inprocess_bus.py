"""The embedded bus: a SQLite log read by consumer groups. It must give the guarantees the
services rely on from Kafka: every group sees every message, a group restarts from its committed
position (so what it fetched but did not commit comes again), topics do not mix, and nothing a
group still needs is pruned."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shared.bus.base import Message
from shared.bus.inprocess import InProcessBus


def msgs(topic: str, *values: str, key: bytes | None = b"m:u") -> list[Message]:
    return [Message(topic=topic, key=key, value=v.encode()) for v in values]


def values(records: list) -> list[str]:
    return [r.value.decode() for r in records]


@pytest.fixture
async def bus(tmp_path: Path) -> AsyncIterator[InProcessBus]:
    # A long prune period: the tests prune by hand, at the moment they choose.
    b = InProcessBus(tmp_path / "bus.sqlite", prune_every_s=3600)
    await b.start()
    try:
        yield b
    finally:
        await b.stop()


async def test_two_groups_each_see_every_message_in_order(bus: InProcessBus) -> None:
    a = bus.subscriber("group-a", ["shop.orders"])
    b = bus.subscriber("group-b", ["shop.orders"])
    await a.start()
    await b.start()
    await bus.publish(msgs("shop.orders", "1", "2", "3"))
    got_a = await a.fetch(10, 100)
    await a.commit(got_a)
    # b reads after a committed: a's commit must not move b.
    got_b = await b.fetch(10, 100)
    assert values(got_a) == values(got_b) == ["1", "2", "3"]
    assert [r.offset for r in got_a] == sorted(r.offset for r in got_a)
    assert all(r.key == b"m:u" and r.topic == "shop.orders" for r in got_a)


async def test_fetch_returns_at_most_max_records_and_continues_where_it_stopped(bus: InProcessBus) -> None:
    sub = bus.subscriber("g", ["t"])
    await sub.start()
    await bus.publish(msgs("t", *"abcde"))
    assert values(await sub.fetch(2, 100)) == ["a", "b"]
    assert values(await sub.fetch(2, 100)) == ["c", "d"]
    assert values(await sub.fetch(2, 100)) == ["e"]
    assert await sub.fetch(2, 20) == []


async def test_a_waiting_fetch_wakes_up_when_a_message_is_published(bus: InProcessBus) -> None:
    sub = bus.subscriber("g", ["t"])
    await sub.start()
    waiting = asyncio.create_task(sub.fetch(10, 10_000))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    await bus.publish(msgs("t", "late"))
    # Far less than the 10 s timeout: the publish woke the subscriber.
    got = await asyncio.wait_for(waiting, 2)
    assert values(got) == ["late"]


async def test_a_restarted_subscriber_resumes_from_its_commit_and_sees_uncommitted_records_again(
    tmp_path: Path,
) -> None:
    path = tmp_path / "bus.sqlite"
    first = InProcessBus(path, prune_every_s=3600)
    await first.start()
    sub = first.subscriber("g", ["t"])
    await sub.start()
    await first.publish(msgs("t", "1", "2", "3", "4"))
    fetched = await sub.fetch(10, 100)
    assert values(fetched) == ["1", "2", "3", "4"]
    await sub.commit(fetched[:2])
    await first.stop()  # the process ends: 3 and 4 were fetched, never committed

    second = InProcessBus(path, prune_every_s=3600)
    await second.start()
    try:
        again = second.subscriber("g", ["t"])
        await again.start()
        got = await again.fetch(10, 100)
        assert values(got) == ["3", "4"]
        assert [r.offset for r in got] == [r.offset for r in fetched[2:]]
        # A group that never committed starts from the beginning of the log.
        fresh = second.subscriber("other", ["t"])
        await fresh.start()
        assert values(await fresh.fetch(10, 100)) == ["1", "2", "3", "4"]
    finally:
        await second.stop()


async def test_committing_an_older_record_never_moves_a_group_back(tmp_path: Path) -> None:
    path = tmp_path / "bus.sqlite"
    first = InProcessBus(path, prune_every_s=3600)
    await first.start()
    sub = first.subscriber("g", ["t"])
    await sub.start()
    await first.publish(msgs("t", "1", "2", "3"))
    got = await sub.fetch(10, 100)
    await sub.commit(got)
    await sub.commit(got[:1])  # a late, stale commit
    await first.stop()

    second = InProcessBus(path, prune_every_s=3600)
    await second.start()
    try:
        again = second.subscriber("g", ["t"])
        await again.start()
        assert await again.fetch(10, 50) == []
    finally:
        await second.stop()


async def test_topics_are_isolated_and_a_group_reads_only_what_it_subscribed_to(bus: InProcessBus) -> None:
    orders = bus.subscriber("g", ["shop.orders"])
    both = bus.subscriber("g2", ["shop.orders", "shop.customers"])
    await orders.start()
    await both.start()
    await bus.publish(msgs("shop.orders", "o1") + msgs("shop.customers", "c1") + msgs("shop.orders", "o2"))
    got = await orders.fetch(10, 100)
    assert values(got) == ["o1", "o2"]
    assert {r.topic for r in got} == {"shop.orders"}
    await orders.commit(got)
    got_both = await both.fetch(10, 100)
    assert sorted(values(got_both)) == ["c1", "o1", "o2"]
    # One group, two topics: committing one topic leaves the other's position alone.
    same_group_customers = bus.subscriber("g", ["shop.customers"])
    await same_group_customers.start()
    assert values(await same_group_customers.fetch(10, 100)) == ["c1"]


async def test_headers_and_a_missing_key_survive_the_log(bus: InProcessBus) -> None:
    sub = bus.subscriber("g", ["t"])
    await sub.start()
    reason = "未知商户 unknown merchant".encode()
    await bus.publish(
        [Message(topic="t", key=None, value=b"\x00\xff", headers=(("reason", reason), ("raw", bytes(range(256)))))]
    )
    (r,) = await sub.fetch(10, 100)
    assert r.key is None
    assert r.value == b"\x00\xff"
    assert dict(r.headers) == {"reason": reason, "raw": bytes(range(256))}


async def test_prune_deletes_only_rows_every_known_group_has_committed_past(bus: InProcessBus) -> None:
    a = bus.subscriber("a", ["t"])
    b = bus.subscriber("b", ["t"])
    other = bus.subscriber("o", ["u"])
    await a.start()
    await b.start()
    await other.start()
    await bus.publish(msgs("t", "1", "2", "3", "4", "5") + msgs("u", "x"))
    got_a = await a.fetch(10, 100)
    await a.commit(got_a)  # a is past all five

    # b has committed nothing yet: nothing of t may go.
    assert await bus.prune() == 0

    got_b = await b.fetch(2, 100)
    await b.commit(got_b)  # b is past 1 and 2 only
    assert await bus.prune() == 2
    # A second prune has nothing more to do.
    assert await bus.prune() == 0

    # What b still needs is there, including after a restart of b (fresh subscriber, same group).
    b_again = bus.subscriber("b", ["t"])
    await b_again.start()
    assert values(await b_again.fetch(10, 100)) == ["3", "4", "5"]
    # Topic u was never committed by its group: untouched.
    assert values(await other.fetch(10, 100)) == ["x"]


async def test_caught_up_is_true_only_after_everything_was_fetched(bus: InProcessBus) -> None:
    sub = bus.subscriber("g", ["t", "t2"])
    await sub.start()
    assert await sub.caught_up()  # nothing published yet
    await bus.publish(msgs("t", "1", "2", "3") + msgs("t2", "z"))
    assert not await sub.caught_up()
    await sub.fetch(2, 100)
    assert not await sub.caught_up()
    await sub.fetch(10, 100)
    assert await sub.caught_up()
    await bus.publish(msgs("t2", "late"))
    assert not await sub.caught_up()
    # Fetched is enough (committing is the consumer's business, not the follower's).
    await sub.fetch(10, 100)
    assert await sub.caught_up()


async def test_many_buses_started_at_once_on_one_new_file_all_start(tmp_path: Path) -> None:
    # `run --workers N` starts N processes on one data dir: they race to create the file and
    # switch it to WAL, which SQLite may refuse at once ("database is locked"). Without the
    # retry in start(), a few of these 480 starts failed in every run tried.
    for round_ in range(40):
        buses = [InProcessBus(tmp_path / f"bus-{round_}.sqlite") for _ in range(12)]
        started = await asyncio.gather(*(b.start() for b in buses), return_exceptions=True)
        try:
            assert [r for r in started if isinstance(r, BaseException)] == []
        finally:
            await asyncio.gather(*(b.stop() for b in buses))
