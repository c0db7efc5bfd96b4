"""``RecordBatches`` (stream/worker/faust_adapt.py) against the real broker: records handed over
as one batch per partition land where ``send`` puts them, in order, with the counts given."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from stream.tools.embedded import EmbeddedStack
from stream.worker.faust_adapt import RecordBatches

pytestmark = pytest.mark.integration


def test_batched_records_land_where_send_puts_them_in_order(stack: EmbeddedStack) -> None:
    bootstrap = stack.kafka_url.removeprefix("kafka://")
    batched, single = f"b-{uuid.uuid4().hex[:8]}", f"s-{uuid.uuid4().hex[:8]}"
    keys = [f"cust-{i % 37}".encode() for i in range(3000)]
    values = [f"{i}".encode() * 40 for i in range(3000)]  # 3000 records: several batches each

    async def run() -> tuple[dict[int, list[tuple[bytes, bytes]]], ...]:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(t, 4, 1) for t in (batched, single)])
        finally:
            await admin.close()
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_batch_size=16384)
        await producer.start()
        try:
            records = [(batched, k, v, None) for k, v in zip(keys, values, strict=True)]
            records.append((batched, b"pinned", b"to-3", 3))
            sent = await RecordBatches(lambda: producer).send(records)
            metas = await asyncio.gather(*(f for f, _ in sent))
            assert sum(n for _, n in sent) == len(records)
            assert len(sent) > 4  # 16 KiB batches: some partitions needed more than one
            futures = [
                await producer.send(single, v, key=k) for k, v in zip(keys, values, strict=True)
            ]
            await asyncio.gather(*futures)
        finally:
            await producer.stop()
        ends = {}
        for meta, (_, n) in zip(metas, sent, strict=True):
            ends[meta.partition] = max(ends.get(meta.partition, -1), meta.offset + n - 1)
        return await read(batched), await read(single), ends

    async def read(topic: str) -> dict[int, list[tuple[bytes, bytes]]]:
        consumer = AIOKafkaConsumer(
            topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest"
        )
        await consumer.start()
        out: dict[int, list[tuple[bytes, bytes]]] = {}
        try:
            total = 0
            async with asyncio.timeout(60):
                while total < len(keys) + (topic == batched):
                    got = await consumer.getmany(timeout_ms=1000)
                    for tp, messages in got.items():
                        out.setdefault(tp.partition, []).extend((m.key, m.value) for m in messages)
                        total += len(messages)
        finally:
            await consumer.stop()
        return out

    by_batch, by_send, ends = asyncio.run(run())
    assert by_batch.get(3, [])[-1] == (b"pinned", b"to-3")
    by_batch[3] = by_batch[3][:-1]
    # The same partition for every key as send picks, the records in the order given.
    assert {p: rs for p, rs in by_batch.items() if rs} == by_send
    # The last offset of each partition's batches is its last record's.
    assert ends == {p: len(rs) - 1 + (p == 3) for p, rs in by_batch.items() if rs or p == 3}


def test_a_marker_sent_right_after_its_records_is_each_partitions_last_batch(
    stack: EmbeddedStack,
) -> None:
    """``CustomerTable.write``'s end markers: one lone record per partition handed over by a
    second ``send`` right after the records' batches, before their delivery. Each round, every
    marker must be its partition's last record and Tansu's end offset (its last batch's first
    offset + 1) must be the marker's offset + 1, so a recovery reading to it reads every record.
    Twenty rounds of 2,000 records in several batches a partition."""
    bootstrap = stack.kafka_url.removeprefix("kafka://")
    topic = f"m-{uuid.uuid4().hex[:8]}"

    async def run() -> list[tuple[dict[int, int], dict[int, int], dict[int, int]]]:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(topic, 4, 1)])
        finally:
            await admin.close()
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_batch_size=16384)
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
        await producer.start()
        await consumer.start()
        rounds = []
        try:
            batches = RecordBatches(lambda: producer)
            tps = [TopicPartition(topic, p) for p in range(4)]
            for r in range(20):
                records = [
                    (topic, f"c-{i % 53}".encode(), f"{r}-{i}".encode() * 30, None)
                    for i in range(2000)
                ]
                sent = await batches.send(records)
                markers = await batches.send((topic, b"marker", None, p) for p in range(4))
                metas = await asyncio.gather(*(f for f, _ in [*sent, *markers]))
                last: dict[int, int] = {}
                for meta, (_, n) in zip(metas, [*sent, *markers], strict=True):
                    last[meta.partition] = max(last.get(meta.partition, -1), meta.offset + n - 1)
                marker_at = {m.partition: m.offset for m in metas[len(sent) :]}
                ends = await consumer.end_offsets(tps)
                rounds.append((marker_at, last, {tp.partition: o for tp, o in ends.items()}))
        finally:
            await consumer.stop()
            await producer.stop()
        return rounds

    for marker_at, last, ends in asyncio.run(run()):
        assert marker_at == last  # every marker is its partition's last record
        assert ends == {p: o + 1 for p, o in marker_at.items()}  # and the reported end covers it
