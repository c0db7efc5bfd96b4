"""The consumer's rules for what counts as done (stream/worker/faust_adapt.py), one by one.

The whole failover runs against the real broker in tests/integration/test_scale_out.py. Here the
Faust consumer is built but never connected: the fetch (``_wait_next_records``), the seek sent
to aiokafka (``_seek``) and the high-water mark stand in for the broker, so each rule can be
driven into its corner case, which a real rebalance hits only by chance.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka.structs import ConsumerRecord
from faust.types import TP

from stream.worker.faust_adapt import BatchFeed, SegmenterApp, SegmenterConsumer

TOPIC = "in"


def _record(offset: int, partition: int = 0) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(TOPIC, partition, offset, 0, 0, b"k", b"v", None, 1, 1, [])


Fetch = list[int] | dict[TP, list[int]]


class Harness:
    """A guarded consumer whose fetches return the records we give it.

    A fetch is a list of offsets of ``partition``, or offsets per partition. ``during(f)``
    makes the next fetch run ``f`` while it is in flight (as a seek running beside it in the
    app while the consumer's thread drains the records).
    """

    partition = TP(TOPIC, 0)

    def __init__(self, committed: dict[TP, int | None] | None = None) -> None:
        self.app = SegmenterApp("offsets-test", broker="kafka://127.0.0.1:1")
        self.consumer: SegmenterConsumer = self.app.consumer  # type: ignore[assignment]
        self.consumer.guard([TOPIC])
        self.app.topics._acking_topics.add(TOPIC)  # as when the agent's topic subscribes
        self.seeks: list[int] = []
        self.fetches: list[Fetch] = []
        self.in_flight: list[Callable[[], Awaitable[Any]] | None] = []
        #: What the broker holds as committed (perform_seek reads it); None: never committed.
        self.committed: dict[TP, int | None] = committed or {self.partition: 0}
        consumer: Any = self.consumer

        async def fake_seek(partition: Any, offset: int) -> None:
            self.seeks.append(offset)

        async def fake_fetch(timeout: float) -> Any:
            fetch = self.fetches.pop(0)
            during = self.in_flight.pop(0) if self.in_flight else None
            if during is not None:
                await during()
            per_tp = fetch if isinstance(fetch, dict) else {self.partition: fetch}
            records = {tp: [_record(o, tp.partition) for o in offs] for tp, offs in per_tp.items()}
            return records, set(records)

        async def seek_to_committed() -> dict[TP, int | None]:
            for offset in self.committed.values():
                if offset:  # aiokafka seeks only to a committed offset above 0
                    self.seeks.append(offset)
            return dict(self.committed)

        async def earliest_offsets(*tps: TP) -> dict[TP, int]:
            return {tp: 0 for tp in tps}

        consumer._seek = fake_seek
        consumer._wait_next_records = fake_fetch
        consumer.seek_to_committed = seek_to_committed
        consumer.earliest_offsets = earliest_offsets
        consumer.assignment = lambda: set(self.committed)
        consumer.highwater = lambda tp: 10**6

    def during(self, action: Callable[[], Awaitable[Any]]) -> None:
        self.in_flight.extend([None] * (len(self.fetches) - len(self.in_flight)))
        self.in_flight.append(action)

    async def read(self, *fetches: Fetch) -> list[int]:
        """Offsets the stream would get from these fetches, in order."""
        self.fetches.extend(fetches)
        got: list[int] = []
        for _ in fetches:
            async for _tp, message in self.consumer.getmany(timeout=0):
                got.append(message.offset)
        return got

    async def rebalance(self) -> None:
        """A rebalance up to the seek: Faust stops the flow, the partitions come back and
        the flow is resumed (to read the changelog, or at once when nothing is to be read)."""
        self.consumer.stop_flow()
        self.consumer.resume_flow()


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


# -- around rebalances (the chaos soak's losses, docs/reliability.md) ----------------------


def test_records_fetched_after_a_rebalance_before_its_seek_are_not_delivered() -> None:
    """The soak's loss with RocksDB state: the expectation left from before the rebalance
    (215) pointed past records the rebalance released unapplied (212-214), while aiokafka
    fetched the partition again from its committed offset (212). Checked against the old
    expectation, 212-214 were dropped as delivered already and 215-216 delivered; read again
    after the seek, 212-214 came after 215-216 and were skipped as already applied."""

    async def scenario() -> None:
        h = Harness(committed={Harness.partition: 212})
        await h.consumer.seek(h.partition, 210)
        assert await h.read([210, 211, 212, 213, 214]) == [210, 211, 212, 213, 214]
        # 210 and 211 are done and committed (212); 212-214 are released by the rebalance.
        await h.rebalance()
        before_seek = await h.read([212, 213, 214, 215, 216])
        await h.consumer.perform_seek()
        after_seek = await h.read([212, 213, 214, 215, 216])
        assert before_seek + after_seek == [212, 213, 214, 215, 216]  # in order, once

    run(scenario())


def test_a_fetch_in_flight_across_a_seek_is_never_taken_for_a_real_gap() -> None:
    """A fetch begun before a seek (records the consumer's thread drained from the old
    position) repeated a jump the guard had just sought back from; taken for a real gap, the
    records skipped (12) were counted as done without ever being read."""

    async def scenario() -> None:
        h = Harness(committed={Harness.partition: 12})
        await h.consumer.seek(h.partition, 10)
        assert await h.read([10, 11]) == [10, 11]
        # While the next fetch is in flight, the partition is sought (to its committed
        # offset, 12); the fetch brings 13 from the position it was issued at.
        h.during(h.consumer.perform_seek)
        assert await h.read([13]) == []
        # Again a fetch from before a seek brings the same jump, 12 to 13.
        h.during(lambda: h.consumer.seek(h.partition, 12))
        assert await h.read([13]) == []
        assert not h.consumer._gap[h.partition]  # 12 is not counted as done
        assert h.seeks[-1] == 12  # stale records moved the fetch position: sought back
        assert await h.read([12, 13]) == [12, 13]

    run(scenario())


def test_a_kept_partition_with_no_changelog_to_read_waits_for_its_seek() -> None:
    """With RocksDB state a kept partition needs no changelog read: Faust resumes the flow at
    once and the records come while the seek still waits on the broker for the committed
    offsets (one request per partition) and for the earliest offset of a partition never
    committed. None of them may be checked against the expectation from before (727)."""

    async def scenario() -> None:
        kept, fresh = Harness.partition, TP(TOPIC, 1)
        h = Harness(committed={kept: 427, fresh: None})
        await h.consumer.seek(kept, 700)
        assert await h.read(list(range(700, 727))) == list(range(700, 727))
        await h.rebalance()  # kept through it; 427 is the committed offset
        delivered: list[int] = []

        async def fetch_while_waiting(*tps: TP) -> dict[TP, int]:
            delivered.extend(await h.read({kept: [727, 728], fresh: [0, 1]}))
            return {tp: 0 for tp in tps}

        h.consumer.earliest_offsets = fetch_while_waiting  # type: ignore[method-assign]
        delivered.extend(await h.read({kept: [727, 728]}))  # before the seek
        await h.consumer.perform_seek()
        assert delivered == []
        assert h.consumer._next == {kept: 427, fresh: 0}
        # A fetch the seek overlapped, then fresh reads from the committed offsets.
        h.during(lambda: h.consumer.seek(kept, 427))
        assert await h.read({kept: [729]}) == []
        assert sorted(await h.read({kept: [427, 428], fresh: [0, 1]})) == [0, 1, 427, 428]

    run(scenario())


def test_records_dropped_while_the_seek_waits_on_the_broker_are_read_again() -> None:
    """tests/integration/test_forget.py's hang: a restarted worker's partition got its last
    record (126, just sent) from a fetch drained after Faust's seek to the committed offset
    (126) and before the expectation was set, while the seek still waited on the broker for
    the earliest offset of a partition never committed. Dropped unseen, it had moved the
    fetch position to the log's end: with no later record to show a jump, nothing read it
    again. Here the broker is modelled: a fetch returns the records from the position to the
    log's end and moves the position there, as aiokafka does."""

    async def scenario() -> None:
        kept, fresh = Harness.partition, TP(TOPIC, 1)
        h = Harness(committed={kept: 126, fresh: None})
        log_end = {kept: 127, fresh: 0}
        position = {kept: 126, fresh: 0}
        consumer: Any = h.consumer

        async def seek(tp: TP, offset: int) -> None:
            h.seeks.append(offset)
            position[tp] = offset

        async def seek_to_committed() -> dict[TP, int | None]:
            for tp, offset in h.committed.items():
                if offset:
                    await seek(tp, offset)
            return dict(h.committed)

        async def fetch(timeout: float) -> Any:
            records = {
                tp: [_record(o, tp.partition) for o in range(position[tp], log_end[tp])]
                for tp in position
                if position[tp] < log_end[tp]
            }
            position.update({tp: log_end[tp] for tp in records})
            return records, set(position)

        delivered: list[int] = []

        async def read() -> None:
            async for _tp, message in h.consumer.getmany(timeout=0):
                delivered.append(message.offset)

        async def fetch_while_waiting(*tps: TP) -> dict[TP, int]:
            await read()  # the fetch Faust's fetcher drains meanwhile
            return {tp: 0 for tp in tps}

        consumer._seek = seek
        consumer.seek_to_committed = seek_to_committed
        consumer._wait_next_records = fetch
        consumer.earliest_offsets = fetch_while_waiting
        await h.rebalance()
        await h.consumer.perform_seek()
        assert delivered == [] and h.consumer._next == {kept: 126, fresh: 0}
        assert h.seeks == [126, 0, 126]  # Faust's, the fresh partition's, and read again
        for _ in range(3):
            await read()
        assert delivered == [126]

    run(scenario())


def test_nothing_is_committed_while_the_committed_offset_is_forgotten_by_a_revocation() -> None:
    """Faust drops a revoked partition's committed offset, then waits for the batch in flight
    and commits what it acknowledges. That batch (5653-5998) was taken before records no one
    applied (3295-5652); committing its run (5999) counted those as done."""

    async def scenario() -> None:
        h = Harness(committed={Harness.partition: 3295})
        tp = h.partition
        await h.consumer.perform_seek()
        assert h.consumer._committed_offset[tp] == 3295
        h.consumer._committed_offset.pop(tp)  # as Consumer.on_partitions_revoked does
        h.consumer._acked.pop(tp, None)
        h.consumer._acked[tp].extend(range(5653, 5999))
        assert h.consumer._new_offset(tp) is None

    run(scenario())


def test_a_partition_committed_at_offset_0_commits_what_is_done() -> None:
    """Faust reads a committed offset of 0 (a group reset to the earliest on a log that starts
    at 0) as none committed: without a floor of its own, nothing was ever committed again."""

    async def scenario() -> None:
        h = Harness(committed={Harness.partition: 0})
        tp = h.partition
        await h.consumer.perform_seek()
        assert h.consumer._committed_offset.get(tp) is None
        h.consumer._acked[tp].extend(range(0, 5))
        assert h.consumer._new_offset(tp) == 5

    run(scenario())


# -- what a rebalance leaves unread (tests/integration/test_identity.py's timeouts) --------


def test_a_partition_never_committed_is_read_again_from_its_beginning_after_a_rebalance() -> None:
    """Faust seeks only partitions with a committed offset after a rebalance; records it
    dropped meanwhile (fetched for a partition it had paused for the table recovery) were
    never read again on a partition the killed worker had not committed yet."""

    async def scenario() -> None:
        never = TP(TOPIC, 1)
        h = Harness(committed={Harness.partition: 210, never: None})
        earliest: list[TP] = []

        async def earliest_offsets(*tps: TP) -> dict[TP, int]:
            earliest.extend(tps)
            return {tp: 7 for tp in tps}  # older records were deleted

        h.consumer.earliest_offsets = earliest_offsets  # type: ignore[method-assign]
        await h.consumer.perform_seek()
        assert earliest == [never]
        assert h.seeks == [210, 7]  # the committed one by Faust, the other to its beginning
        assert h.consumer._next == {h.partition: 210, never: 7}

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


def test_records_held_back_during_a_rebalance_are_read_again_from_the_expected_offset() -> None:
    """A record held back before the worker is ready may come after a jump (from a fetch of
    the old position): the partition is read again from where it is expected, not from that
    record, or the records in between would never be read."""

    async def scenario() -> None:
        h = Harness()
        h.consumer.feed = BatchFeed()
        await h.consumer.seek(h.partition, 40)
        h.app.rebalancing = True
        assert await h.read([45, 46]) == []
        assert h.seeks == [40, 40] and h.consumer._next[h.partition] == 40
        h.app.rebalancing = False
        await h.read([40, 41])
        assert [m.offset for m in h.consumer.feed.drain()] == [40, 41]

    run(scenario())


# -- a partition no longer read (the stalled 10-minute soak, docs/reliability.md) ----------


def test_a_partition_no_longer_read_is_sought_again(caplog: Any) -> None:
    """A partition with records to read that got none for ``stall_after`` seconds is sought
    again to its expected offset, and the log says so: while the other partitions had theirs
    (the stalled soak), and when nothing flowed at all (the restarted worker of
    test_forget.py). One that has nothing to read is left alone, and so is everything while
    the broker does not answer (a cut) or the feed is full."""

    async def scenario() -> None:
        stuck, busy = Harness.partition, TP(TOPIC, 1)
        h = Harness(committed={stuck: 10, busy: 20})
        feed = h.consumer.feed = BatchFeed(maxsize=4)
        now = [0.0]

        async def read(fetch: Fetch) -> list[int]:
            await h.read(fetch)
            return sorted(m.offset for m in feed.drain())

        h.consumer._clock = lambda: now[0]
        ends = {stuck: 50, busy: 40}
        cut = [False]

        async def highwaters(*tps: TP) -> dict[TP, int]:
            if cut[0]:
                raise ConnectionError("broker cut")
            return {tp: ends[tp] for tp in tps}

        h.consumer.highwaters = highwaters  # type: ignore[method-assign]
        await h.consumer.perform_seek()
        now[0] = 1.0
        assert sorted(await read({stuck: [10, 11], busy: [20]})) == [10, 11, 20]
        # Others flow, this one does not.
        now[0] = 102.0
        assert await read({busy: [21]}) == [21]
        seeks = len(h.seeks)
        with caplog.at_level("WARNING"):
            assert await h.consumer.check_stalled() == [stuck]
        assert h.seeks[seeks:] == [12] and h.consumer.stalls == 1
        assert "in[0] had no record for 101 s (the last record of any partition came 0 s ago)" in (
            caplog.text
        )
        assert "offsets 12 to 49 unread: reading again from 12" in caplog.text
        # Read again from there: delivered, it is no longer late.
        assert await read({stuck: [12, 13]}) == [12, 13]
        assert await h.consumer.check_stalled() == []
        # Nothing flows at all: left alone while the broker does not answer or the feed is
        # full; sought again when the broker answers and there is room.
        now[0] = 200.0
        cut[0] = True
        assert await h.consumer.check_stalled() == []
        cut[0] = False
        for offset in (22, 23, 24, 25):
            feed.put(h.consumer._to_message(busy, _record(offset, 1)))
        assert feed.full and await h.consumer.check_stalled() == []
        feed.drain()
        caplog.clear()
        with caplog.at_level("WARNING"):
            assert await h.consumer.check_stalled() == [stuck, busy]
        assert h.seeks[-2:] == [14, 22] and h.consumer.stalls == 3
        assert "in[0] had no record for 98 s (the last record of any partition came 98 s ago)" in (
            caplog.text
        )
        # Late, but nothing to read: left alone.
        now[0] = 300.0
        ends[stuck], ends[busy] = 14, 22
        assert await h.consumer.check_stalled() == []

    run(scenario())


def test_a_seek_runs_in_the_consumers_thread() -> None:
    """Faust calls aiokafka's ``seek`` from the app's thread; aiokafka's fetcher, draining a
    fetch in the consumer's thread, then lost the partition's records mid-loop and crashed
    (a worker restarted after a SIGKILL). The race itself cannot be driven here: a stand-in
    for mode's ``call_thread`` runs the call in another thread, and the test checks that the
    seek reaches aiokafka only through it."""
    import threading

    app = SegmenterApp("seek-test", broker="kafka://127.0.0.1:1")
    consumer: Any = app.consumer
    thread = consumer._thread
    seen: list[tuple[str, TP, int]] = []
    thread.seek = lambda tp, offset: seen.append((threading.current_thread().name, tp, offset))

    async def call_thread(fun: Callable[[], Awaitable[Any]]) -> Any:
        result: list[Any] = []
        runner = threading.Thread(target=lambda: result.append(asyncio.run(fun())), name="kafka")
        runner.start()
        runner.join()
        return result[0]

    thread.call_thread = call_thread
    asyncio.run(consumer.seek(TP(TOPIC, 0), 5))
    assert seen == [("kafka", TP(TOPIC, 0), 5)]


def test_a_seek_that_waits_across_a_rebalance_sets_no_expectation() -> None:
    """A seek now waits on the consumer's thread. A rebalance that comes meanwhile forgets
    every expectation; the seek, done, must not set one from before it: the partition's
    records are dropped until the seek after the new assignment sets its expectation."""

    async def scenario() -> None:
        h = Harness()
        consumer: Any = h.consumer

        async def seek_across_a_rebalance(partition: Any, offset: int) -> None:
            h.seeks.append(offset)
            await asyncio.sleep(0)
            await consumer.on_partitions_revoked({partition})  # while the seek waits

        consumer._seek = seek_across_a_rebalance
        await consumer.seek(h.partition, 12)
        assert h.seeks == [12] and h.partition not in consumer._next
        # Records are not delivered before the next seek sets the expectation.
        assert await h.read([12, 13]) == []

    run(scenario())
