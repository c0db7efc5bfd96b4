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

from stream.worker.faust_adapt import SegmenterApp, SegmenterConsumer

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
            return {tp: [_record(o, tp.partition) for o in offsets]}, {tp}

        consumer._seek = fake_seek
        consumer._wait_next_records = fake_fetch
        consumer.assignment = lambda: {self.partition, TP(TOPIC, 1)}
        consumer.highwater = lambda tp: 10**6

    partition = TP(TOPIC, 0)  # the partition the fetches return

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


def test_after_a_rebalance_nothing_is_delivered_before_the_seek_to_the_committed_offsets() -> None:
    """The chaos soak's loss with RocksDB state (docs/reliability.md): the consumer's fetch
    position and the offset the guard expected were both left where the last fetch before the
    rebalance ended, so a record read from there between the partitions' resumption and the
    seek to the committed offsets passed, and was applied before the records it jumped over;
    those, read again after the seek, were skipped as already applied."""

    async def scenario() -> None:
        h = Harness()
        tp = h.partition
        await h.consumer.seek(tp, 210)
        assert await h.read([210, 211, 212, 213, 214]) == [210, 211, 212, 213, 214]
        # 210 and 211 are done and committed (212); 212-214 were released by the rebalance.
        h.consumer.stop_flow()  # a rebalance starts: Faust stops the flow
        h.consumer.resume_flow()  # the partitions come back; the recovery resumes the flow
        # A fetch from where the last one ended, before the seek: nothing of it is delivered.
        assert await h.read([215, 216]) == []
        committed = {tp: 212}

        async def seek_to_committed() -> dict[TP, int]:
            return committed

        h.consumer.seek_to_committed = seek_to_committed  # type: ignore[method-assign]
        await h.consumer.perform_seek()
        # Then a record fetched before the seek is a jump (read again from 212), and the
        # partition is read in order from the committed offset.
        assert await h.read([215]) == []
        assert await h.read([212, 213, 214, 215, 216]) == [212, 213, 214, 215, 216]

    run(scenario())


def test_a_partition_never_committed_is_read_from_its_earliest_offset_after_the_seek() -> None:
    async def scenario() -> None:
        h = Harness()
        tp = h.partition
        h.consumer.stop_flow()
        h.consumer.resume_flow()
        assert await h.read([3, 4]) == []  # before the seek of the assignment: dropped

        async def seek_to_committed() -> dict[TP, int | None]:
            return {tp: None}  # nothing committed: aiokafka does not seek

        async def earliest_offsets(*tps: TP) -> dict[TP, int]:
            return {tp: 3}  # the log starts at 3 (older records deleted)

        h.consumer.seek_to_committed = seek_to_committed  # type: ignore[method-assign,assignment]
        h.consumer.earliest_offsets = earliest_offsets  # type: ignore[method-assign]
        await h.consumer.perform_seek()
        assert h.seeks == [3]  # from the start of the log
        assert await h.read([3, 4, 5]) == [3, 4, 5]
        h.consumer._acked[tp].extend([4, 5])
        assert h.consumer._new_offset(tp) is None  # 3 is not done: nothing committed
        h.consumer._acked[tp].append(3)
        assert h.consumer._new_offset(tp) == 6

    run(scenario())


def test_no_partition_is_delivered_before_every_expectation_of_the_rebalance_is_set() -> None:
    """A record delivered while the seek still waits on another partition would reach a batch
    while the worker is not ready (the rebalance is not over), be left out, and never be read
    again: every partition's expectation is set at once, after the last wait."""

    async def scenario() -> None:
        h = Harness()
        committed, fresh = TP(TOPIC, 0), TP(TOPIC, 1)
        h.consumer.stop_flow()
        h.consumer.resume_flow()
        during: list[int] = []

        async def seek_to_committed() -> dict[TP, int | None]:
            return {committed: 5, fresh: None}

        async def earliest_offsets(*tps: TP) -> dict[TP, int]:
            during.extend(await h.read([5, 6]))  # a fetch while the seek waits on the broker
            return {fresh: 0}

        async def seek(partition: TP, offset: int) -> None:
            h.seeks.append(offset)
            during.extend(await h.read([5, 6]))  # and while it seeks the fresh partition

        h.consumer.seek_to_committed = seek_to_committed  # type: ignore[method-assign,assignment]
        h.consumer.earliest_offsets = earliest_offsets  # type: ignore[method-assign]
        h.consumer._seek = seek  # type: ignore[method-assign]
        await h.consumer.perform_seek()
        assert during == []
        assert h.consumer._next == {committed: 5, fresh: 0}
        assert await h.read([5, 6]) == [5, 6]

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
