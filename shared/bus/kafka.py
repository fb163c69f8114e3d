"""Apache Kafka through aiokafka.

Exactly-once effects are built on the database (outbox + inbox keyed by event_id), not on
Kafka transactions: aiokafka speaks only version 0 of the transaction protocol. So the producer
is idempotent with acks=all, and consumers commit offsets by hand, per partition, as
``last offset + 1``, only after the database commit."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import CommitFailedError, IllegalStateError

from shared.bus.base import Message, Record, committed_positions
from shared.topics import partitions

log = structlog.get_logger("fugou.bus")

_TOPIC_ALREADY_EXISTS = 36


class KafkaBus:
    def __init__(self, bootstrap: str, client_id: str = "fugou", prefix: str = "", replication_factor: int = 1):
        self.bootstrap = bootstrap
        self.client_id = client_id
        # Several environments (or test runs) can share one cluster: the prefix goes in front of
        # every physical topic and group name; the code only ever sees logical names.
        self.prefix = prefix
        self.replication_factor = replication_factor
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        if self._producer is not None:
            return
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            client_id=self.client_id,
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            max_batch_size=1 << 20,
            request_timeout_ms=30000,
            compression_type=None,
        )
        await producer.start()
        self._producer = producer

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def ensure_topics(self, topics: Sequence[str]) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, client_id=f"{self.client_id}-admin")
        await admin.start()
        try:
            existing = set(await admin.list_topics())
            missing = [self.prefix + t for t in topics if self.prefix + t not in existing]
            if missing:
                resp = await admin.create_topics(
                    [
                        NewTopic(
                            name=t,
                            num_partitions=partitions(t[len(self.prefix) :]),
                            replication_factor=self.replication_factor,
                        )
                        for t in missing
                    ]
                )
                for topic, code, *_ in resp.topic_errors:
                    if code not in (0, _TOPIC_ALREADY_EXISTS):
                        raise RuntimeError(f"could not create topic {topic}: error {code}")
                log.info("kafka.topics_created", topics=missing)
        finally:
            await admin.close()

    async def ping(self) -> None:
        if self._producer is None:
            raise RuntimeError("kafka producer not started")
        await asyncio.wait_for(self._producer.client.fetch_all_metadata(), 3)
        if not self._producer.client.cluster.brokers():
            raise RuntimeError("no Kafka broker reachable")

    async def publish(self, messages: Sequence[Message]) -> None:
        if not messages:
            return
        if self._producer is None:
            raise RuntimeError("kafka producer not started")
        send = self._producer.send
        p = self.prefix
        futures = [await send(p + m.topic, m.value, key=m.key, headers=list(m.headers) or None) for m in messages]
        await asyncio.gather(*futures)

    def subscriber(self, group_id: str, topics: Sequence[str]) -> KafkaSubscriber:
        return KafkaSubscriber(self.bootstrap, group_id, topics, client_id=self.client_id, prefix=self.prefix)


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, sub: KafkaSubscriber):
        self.sub = sub

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        # A batch in flight when partitions move is already in the database; its offsets may fail to
        # commit, and the new owner's redelivery is absorbed by the inbox.
        log.info("kafka.partitions_revoked", group=self.sub.group_id, partitions=[str(tp) for tp in revoked])

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        log.info("kafka.partitions_assigned", group=self.sub.group_id, partitions=[str(tp) for tp in assigned])


class KafkaSubscriber:
    def __init__(
        self, bootstrap: str, group_id: str, topics: Sequence[str], client_id: str = "fugou", prefix: str = ""
    ):
        self.group_id = group_id
        self.prefix = prefix
        self.topics = [prefix + t for t in topics]
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=prefix + group_id,
            client_id=f"{client_id}-{group_id}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            max_partition_fetch_bytes=4 << 20,
            fetch_max_bytes=32 << 20,
            session_timeout_ms=30000,
            heartbeat_interval_ms=3000,
            max_poll_interval_ms=300000,
        )

    async def start(self) -> None:
        await self._consumer.start()
        self._consumer.subscribe(self.topics, listener=_Rebalance(self))

    async def stop(self) -> None:
        await self._consumer.stop()

    async def fetch(self, max_records: int, timeout_ms: int) -> list[Record]:
        batches = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
        out: list[Record] = []
        cut = len(self.prefix)
        for tp, msgs in batches.items():
            topic = tp.topic[cut:]
            out.extend(
                Record(
                    topic=topic,
                    partition=tp.partition,
                    offset=m.offset,
                    key=m.key,
                    value=m.value,
                    headers=tuple(m.headers or ()),
                )
                for m in msgs
            )
        return out

    async def caught_up(self) -> bool:
        assigned = list(self._consumer.assignment())
        if not assigned:
            return False
        ends = await self._consumer.end_offsets(assigned)
        for tp in assigned:
            if await self._consumer.position(tp) < ends[tp]:
                return False
        return True

    async def commit(self, records: Sequence[Record]) -> None:
        assigned = self._consumer.assignment()
        offsets = {TopicPartition(self.prefix + t, p): o for (t, p), o in committed_positions(records).items()}
        offsets = {tp: o for tp, o in offsets.items() if tp in assigned}
        if not offsets:
            return
        try:
            await self._consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            # The partitions moved during the batch. Its effects are committed in the database;
            # the new owner will get these records again and its inbox will skip them.
            log.warning("kafka.commit_skipped_after_rebalance", group=self.group_id, error=repr(exc))
