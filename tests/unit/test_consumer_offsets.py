"""The consumer's rules for what counts as done (stream/consumer.py), one by one.

The whole failover runs against the real broker in tests/integration/test_scale_out.py. Here the
Faust consumer is built but never connected: the fetch (``_wait_next_records``), the seek sent
to aiokafka (``_seek``) and the high-water mark stand in for the broker, so each rule can be
driven into its corner case, which a real rebalance hits only by chance.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka.structs import ConsumerRecord
from faust.types import TP

from stream.worker.faust_adapt import BatchFeed, SegmenterApp, SegmenterConsumer

TOPIC = "in"


def _record(offset: int, partition: int = 0) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(TOPIC, partition, offset, 0, 0, b"k", b"v", None, 1, 1, [])


class Harness:
    """A guarded consumer whose fetches return the records we give it."""

    def __init__(self) -> None:
        self.app = SegmenterApp("offsets-test", broker="kafka://127.0.0.1:1")
        self.consumer: SegmenterConsumer = self.app.consumer  # type: ignore[assignment]
        self.consumer.guard([TOPIC])
        self.app.topics._acking_topics.add(TOPIC)  # as when the agent's topic subscribes
        self.seeks: list[int] = []
        self.fetches: list[list[int]] = []
        consumer: Any = self.consumer

        async def fake_seek(partition: Any, offset: int) -> None:
            self.seeks.append(offset)

        async def fake_fetch(timeout: float) -> Any:
            offsets = self.fetches.pop(0)
            tp = self.partition
            return {tp: [_record(o) for o in offsets]}, {tp}

        consumer._seek = fake_seek
        consumer._wait_next_records = fake_fetch
        consumer.highwater = lambda tp: 10**6

    @property
    def partition(self) -> TP:
        return TP(TOPIC, 0)

    async def read(self, *fetches: list[int]) -> list[int]:
        """Offsets the stream would get from these fetches, in order."""
        self.fetches.extend(fetches)
        got: list[int] = []
        for _ in fetches:
            async for _tp, message in self.consumer.getmany(timeout=0):
                got.append(message.offset)
        return got


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_records_from_before_a_seek_are_dropped_and_the_partition_read_again() -> None:
    async def scenario() -> None:
        h = Harness()
        counted: list[int] = []
        h.consumer.on_reread = lambda: counted.append(1)  # the worker's segmenter_offset_gaps
        await h.consumer.seek(h.partition, 210)  # as after a rebalance: committed offset 210
        # A record fetched before the seek (offset 293) arrives first: not delivered, and the
        # partition is sought back to 210; the rest of that fetch is dropped too.
        assert await h.read([293, 294]) == []
        assert h.seeks == [210, 210] and h.consumer.rereads == 1 and counted == [1]
        # The fresh read starts at 210 and goes on in order; a duplicate below is dropped.
        assert await h.read([210, 211, 212], [211, 213]) == [210, 211, 212, 213]
        assert not h.consumer._gap[h.partition]

    run(scenario())


def test_a_jump_the_broker_repeats_is_a_real_gap_and_counts_as_done() -> None:
    async def scenario() -> None:
        h = Harness()
        await h.consumer.seek(h.partition, 10)
        h.consumer._committed_offset[h.partition] = 10
        # Offsets 10 and 11 hold transaction markers: the fresh read jumps to 12 again.
        assert await h.read([12, 13]) == []
        assert await h.read([12, 13]) == [12, 13]
        assert h.seeks == [10, 10]
        for offset in (12, 13):
            h.consumer._acked[h.partition].append(offset)
        assert h.consumer._new_offset(h.partition) == 14

    run(scenario())


def test_a_skipped_event_is_released_but_not_counted_as_done() -> None:
    async def scenario() -> None:
        h = Harness()
        await h.consumer.seek(h.partition, 5)
        h.consumer._committed_offset[h.partition] = 5
        got = []
        h.fetches.append([5, 6, 7])
        async for _tp, message in h.consumer.getmany(timeout=0):
            got.append(message)
        skipped, *processed = got
        h.consumer.track_message(skipped)
        assert h.consumer.ack(skipped) is False  # a stream skipped it in a rebalance
        assert skipped.acked and skipped not in h.consumer.unacked
        for message in processed:
            h.consumer.processed(message)
            assert h.consumer.ack(message) is True
        # 6 and 7 are done, 5 is not: nothing may be committed (Faust would commit 8).
        assert h.consumer._new_offset(h.partition) is None
        assert h.consumer.skipped == 1

    run(scenario())


def test_nothing_is_committed_over_a_missing_offset_right_after_the_committed_one() -> None:
    async def scenario() -> None:
        h = Harness()
        tp = h.partition
        h.consumer._committed_offset[tp] = 249
        h.consumer._acked[tp].extend([250, 251, 252])
        assert h.consumer._new_offset(tp) is None  # faust-streaming #606 would give 253
        h.consumer._acked[tp].append(249)
        assert h.consumer._new_offset(tp) == 253

    run(scenario())


def test_other_topics_keep_fausts_own_rules() -> None:
    async def scenario() -> None:
        h = Harness()
        other = TP("samples", 0)
        h.consumer._committed_offset[other] = 249
        h.consumer._acked[other].extend([250, 251])
        assert h.consumer._new_offset(other) == 252

    run(scenario())


def test_a_partition_never_committed_is_read_again_from_its_beginning_after_a_rebalance() -> None:
    """Faust seeks only partitions with a committed offset after a rebalance; records it
    dropped meanwhile (fetched for a partition it had paused for the table recovery) were
    never read again on a partition the killed worker had not committed yet."""

    async def scenario() -> None:
        h = Harness()
        never = TP(TOPIC, 1)

        async def seek_to_committed() -> dict[TP, int | None]:
            return {h.partition: 210, never: None}

        began: list[TP] = []

        async def seek_to_beginning(partitions: list[TP]) -> None:
            began.extend(partitions)

        consumer: Any = h.consumer
        consumer.seek_to_committed = seek_to_committed
        consumer._seek_to_beginning = seek_to_beginning
        await h.consumer.perform_seek()
        assert began == [never]
        assert h.consumer._next == {h.partition: 210}  # the other: whatever comes first

    run(scenario())


def test_records_fetched_before_the_worker_is_ready_are_read_again_once_it_is() -> None:
    """After the rebalance's seek and before Faust says the worker is ready, the worker would
    release what it is given, and no seek follows to read it again: the consumer keeps such
    records back and seeks the partition to them."""

    async def scenario() -> None:
        h = Harness()
        feed = BatchFeed()
        h.consumer.feed = feed
        await h.consumer.seek(h.partition, 40)
        h.app.rebalancing = True
        await h.read([40, 41, 42])
        assert len(feed) == 0 and h.seeks == [40, 40]
        h.app.rebalancing = False
        await h.read([40, 41, 42])
        assert [m.offset for m in feed.drain()] == [40, 41, 42]

    run(scenario())
