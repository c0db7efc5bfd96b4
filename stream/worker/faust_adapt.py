"""Every adaptation of Faust (faust-streaming 0.15.3, aiokafka driver) and Tansu (0.6.0) the
worker needs, in one place; each says what it works around.

- ``SegmenterConsumer`` / ``SegmenterConsumerThread``: what counts as done after a rebalance
  (below; faust-streaming #606 among them) and the fetch wait (Faust fixes it at 1.5 s, which
  Tansu always waits out).
- ``CustomerTable``: changelog records routed to the key's source partition and sent straight
  to the producer, one write path for updates and erasures, and end markers for Tansu's end
  offsets.
- ``BatchFeed``: the input topics' messages go from the consumer's fetch straight to the
  worker in batches, past Faust's per-message dispatch (a task per message, a channel queue,
  a stream; about 245 µs per message here before any work).
- ``DeadlineWorker``: a deadline on any stop (Faust's clean shutdown waited 60 s with the
  broker gone; after a crash it waited for good), and no
  terminal spinner (at log level warn and above it set the root logger to DEBUG, so every
  library built a debug record per message).

**The consumer.** ``tests/integration/test_scale_out.py`` (three workers, one stopped, one
killed) lost a few purchases in about a third of its runs. The survivor's logs showed three
ways Faust (0.15, aiokafka driver) commits an offset nobody processed:

1. **Records from before a seek.** After a rebalance Faust seeks every partition to its
   committed offset ``C``, but records fetched *before* the seek (from the old position, far
   ahead) can still reach the stream afterwards. Faust takes the jump from ``C`` to, say,
   ``C + 80`` for a legitimate gap (as in a compacted topic), marks ``C .. C + 79`` as done,
   and drops the records it then reads again from ``C`` as "already read". Seen as
   ``gap purchases[5] 211..293 committed 210`` right after ``Seek stream partitions to
   committed offsets``.
2. **Skipped events acknowledged as done.** While partitions are being revoked, streams skip
   what is left in their queues and acknowledge it, so the rebalance does not wait; that
   acknowledgement counts like a real one, and the commit made during the revocation moves
   past events that were never processed.
3. **A head gap of one.** ``_new_offset`` commits over a single missing offset right after the
   committed one (committed ``C``, acked ``C + 1 ...``): faust-streaming issue #606.

What this consumer does instead, on the topics an agent *guards* (the worker's input topics,
which are never compacted):

1. It follows the next offset it expects per partition (set by every seek). A record below it
   is dropped (already delivered); a record above it is dropped and the partition is sought
   back to the expected offset, so the records in between are read again. Only when the
   broker answers that fresh read with a jump to the same offset (a real gap: a transaction
   marker, a compacted or deleted range) is the jump accepted, and the gap alone counted as
   done.
   Faust's own gap bookkeeping is off for these topics.
   Two more rules keep the expectation honest around rebalances and seeks (both found by the
   chaos soak, ``docs/reliability.md``):

   - **No expectation survives a rebalance.** The one left from before pointed past records
     the rebalance released unapplied, while aiokafka fetched the partition again from its
     committed offset: the records in between were dropped as "delivered already", the ones
     after applied, and the ones in between, read again after the seek to the committed
     offsets, skipped as already applied (``CustomerProfile.seen_position``): events lost.
     Now a rebalance forgets every expectation, and a partition's records are dropped until
     the seek that follows the assignment (``perform_seek``) has set its expectation (a
     partition never committed: its earliest offset, sought too). A partition whose records
     were dropped so is sought again to its expectation once it is set: they may have come
     from a fetch drained after Faust's seek of it, while the seek still waited on the
     broker for other partitions, and moved the fetch position past them (a restarted
     worker read nothing: ``tests/integration/test_forget.py``).
   - **Only a fetch issued after a partition's last seek counts.** Each seek stamps the
     partition; a fetch whose records were drained while a seek of their partition was
     pending or under way (the fetch is drained in the consumer's thread, where the seek
     runs too, and the stamp is set when the seek returns from it to the app) is stale:
     its records of that partition are dropped, and the partition is sought again to the
     expected offset, since draining them moved the fetch position. So a stale fetch
     never passes for the broker repeating a jump (rule 1's real gap, which counts the
     skipped records as done), and the first trusted fetch after a rebalance starts at the
     committed offset or is a jump, read again.
2. Only events the agent registered as processed (:meth:`SegmenterConsumer.processed`) count
   as done. A skipped one releases the message but is read again from the committed offset.
3. Nothing is committed while the offset right after the committed one is not done, nor
   while the committed offset is not known: a revocation drops it before Faust waits for the
   batch in flight and commits what that acknowledges, and the first run of consecutive
   offsets acknowledged then may start past records nobody applied (seen in the chaos soak:
   a range counted as done, its garbage without dead letters).
4. Everything left unread during a rebalance is read again. Faust seeks back only partitions
   with a committed offset: records it fetched and dropped (of partitions it had just paused
   for the table recovery) stayed unread for good on a partition nobody had committed yet
   (``tests/integration/test_identity.py``: the identity topics of a worker killed seconds
   after their first messages; the new owner never applied them). Such partitions are sought
   to their beginning after every rebalance (their earliest offset is their expectation).
   And records fetched after that seek but before Faust calls the worker ready, which the
   worker would release with no seek to follow, are held back: the partition is sought back
   to its expected offset, read again once the rebalance is over.
5. A partition no longer read is read again. A guarded partition that has records to read and
   had none delivered (nor a seek) for ``stall_after`` seconds, whether others had theirs or
   nothing flowed at all, is sought again to its expected offset, and its state in aiokafka
   and Faust is logged (:meth:`SegmenterConsumer.check_stalled`; a chaos soak stalled on two
   partitions after a seek back, cause not established, ``docs/reliability.md``). Not while
   the broker does not answer or the feed is full.

A few events may be processed twice after a rebalance; the worker's effects are idempotent
(at-least-once), which is what the scale-out and fault tests check.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
import weakref
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any

import faust
import orjson
from faust.serializers import codecs
from faust.stores.rocksdb import Store as RocksStore
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, EventT, Message, TransportT
from faust.types.tuples import ack_lock
from faust.utils.functional import consecutive_numbers
from mode.utils.futures import notify

log = logging.getLogger(__name__)


class SegmenterConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's consumer thread; the fetch wait comes from the app, not a fixed 1.5 s.

    A fetch that finds no new records waits on the broker up to ``fetch_max_wait_ms`` for some.
    Apache Kafka answers as soon as records arrive; Tansu was measured answering only when the
    wait is over, so an event that arrives while a fetch waits is seen half the wait later on
    average (plain aiokafka against Tansu: p50 408 ms at Faust's fixed 1,500 ms, 78 ms at
    500 ms, 9 ms at 50 ms). ``SEGMENTER_FETCH_MAX_WAIT_MS`` sets it (default 25 ms).
    """

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        wait = getattr(self.app, "fetch_max_wait_ms", None)
        if wait is not None:
            consumer._fetch_max_wait_ms = int(wait)  # read by AIOKafkaConsumer.start()
        return consumer


class SegmenterConsumer(faust_aiokafka.Consumer):
    """The aiokafka consumer, strict about what counts as done on guarded topics."""

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return SegmenterConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        app = self.app
        self.guarded_topics: set[str] = set(getattr(app, "guarded_topics", ()))
        #: Where the guarded topics' messages go instead of Faust's streams (None: streams).
        self.feed: BatchFeed | None = getattr(app, "input_feed", None)
        self._processed: weakref.WeakSet[Message] = weakref.WeakSet()
        #: The next offset expected per guarded partition, set by a seek since the last
        #: rebalance; a partition missing here is not settled and its records are dropped.
        self._next: dict[TP, int] = {}
        self._start: dict[TP, int] = {}  # where a partition never committed was first read
        self._reread: dict[TP, tuple[int, int]] = {}  # sought back: (expected, jumped to)
        #: Stamp of each partition's last seek (a counter): a fetch begun under an older one
        #: is stale (module docstring).
        self._sought: dict[TP, int] = {}
        self._seeks = 0
        #: Rebalances seen (``_unsettle``): a seek that waited across one sets no expectation.
        self._rebalances = 0
        #: Records dropped from stale fetches (counted; the partition is read again).
        self.stale = 0
        #: Events skipped during a rebalance and left to be read again.
        self.skipped = 0
        #: Times a partition was read again because its records jumped ahead.
        self.rereads = 0
        #: Called on each of those (the worker counts them in ``segmenter_offset_gaps``).
        self.on_reread: Callable[[], object] | None = None
        #: When each guarded partition last had a record delivered or was sought, and when
        #: any had a record delivered (``check_stalled``).
        self._moved: dict[TP, float] = {}
        self._flowing = 0.0
        self._clock: Callable[[], float] = time.monotonic
        #: Times a partition with records to read was sought again for having none delivered.
        self.stalls = 0
        #: Records dropped without a word, per partition: before its seek after a rebalance,
        #: and below the expected offset (told in the log of a stall).
        self._unsettled: Counter[TP] = Counter()
        self._behind: Counter[TP] = Counter()
        #: Partitions with records dropped before their seek set an expectation: draining
        #: them moved the fetch position past them, so they are sought again once it is set.
        self._unsettled_dropped: set[TP] = set()

    def guard(self, topics: Iterable[str]) -> None:
        """Apply the strict rules (module docstring) to these topics."""
        self.guarded_topics.update(topics)

    def processed(self, message: Message) -> None:
        """Register that the worker's effects for this message are done."""
        self._processed.add(message)

    # -- what counts as done -------------------------------------------------------------

    def ack(self, message: Message) -> bool:
        if message.topic not in self.guarded_topics or message in self._processed:
            self._processed.discard(message)
            return bool(super().ack(message))
        with ack_lock:  # skipped: release it, do not count it
            if not message.acked:
                message.acked = True
                self._unacked_messages.discard(message)
                self.skipped += 1
                notify(self._waiting_for_ack)
        return False

    def _new_offset(self, tp: TP) -> int | None:
        if tp.topic not in self.guarded_topics:
            return super()._new_offset(tp)
        acked = self._acked[tp]
        if not acked:
            return None
        gaps = self._gap[tp]
        if gaps:  # real gaps (see getmany) count as done
            for interval in sorted(gaps.overlap(0, max(acked) + 1), key=lambda i: i.begin):
                acked.extend(range(interval.begin, interval.end))
            gaps.chop(0, max(acked) + 1)
        acked.sort()
        committed = self._committed_offset[tp]
        floor = committed if committed is not None else self._start.get(tp)
        if floor is None:
            # Not known: a revocation forgot it (Faust drops it, then waits for the batch in
            # flight and commits what it acknowledges). Commit nothing: the next owner reads
            # those records again, where committing their first run of consecutive offsets
            # could skip records nobody applied.
            return None
        if acked[0] > floor:
            return None  # the offset right after the committed one is not done yet
        batch = next(consecutive_numbers(acked))
        acked[: len(batch)] = []
        self._acked_index[tp].difference_update(batch)
        return int(batch[-1]) + 1

    async def _add_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
        if tp.topic not in self.guarded_topics:  # guarded topics: gaps come from getmany only
            await super()._add_gap(tp, offset_from, offset_to)

    # -- what is read ---------------------------------------------------------------------

    async def perform_seek(self) -> None:
        """Faust's seek to the committed offsets, then every guarded partition's expectation:
        its committed offset, or for a partition never committed its earliest offset (sought
        too: aiokafka seeks only to a committed offset). Every expectation is set at once,
        after the last wait on the broker, and stamped: a fetch begun before is stale."""
        guarded = [tp for tp in self.assignment() if tp.topic in self.guarded_topics]
        self._stamp(guarded)  # a fetch begun during the seek is stale, whatever it returns
        await super().perform_seek()
        assigned = self.assignment()
        starts = {tp: self._read_offset.get(tp) for tp in guarded if tp in assigned}
        unread = [tp for tp, offset in starts.items() if offset is None]
        expected = {tp: offset for tp, offset in starts.items() if offset is not None}
        if unread:
            earliest = await self.earliest_offsets(*unread)
            for tp in unread:
                expected[tp] = self._start[tp] = earliest.get(tp) or 0
                await super().seek(tp, expected[tp])
        for tp, offset in expected.items():
            if self._committed_offset.get(tp) is None:  # committed 0: Faust keeps None
                self._start[tp] = offset  # the floor of what may be committed
        self._stamp(expected)
        # Records dropped while the seek waited on the broker (no expectation yet) came from
        # a fetch drained after Faust's seek of their partition: the fetch position is past
        # them, and with no later record to show the jump, nothing would read them again.
        # Taken with the expectations, with no wait in between: from here on a record of
        # these partitions is checked against its expectation, never dropped unseen.
        redo = sorted(self._unsettled_dropped.intersection(expected))
        self._unsettled_dropped.difference_update(expected)
        for tp, offset in expected.items():
            self._expect(tp, offset)
        for tp in redo:
            log.info(
                "%s[%d] records fetched before its seek were dropped: reading again from %d",
                tp.topic,
                tp.partition,
                expected[tp],
            )
            await self._seek_back(tp, expected[tp])

    async def _seek(self, partition: TP, offset: int) -> None:
        # In the consumer's thread, as Faust's other calls into aiokafka are (its own
        # ``_seek`` calls aiokafka's ``seek`` from the app's thread). aiokafka's fetcher drops
        # the partition's fetched records on a seek: done from the app's thread while the
        # consumer's thread drained them, it crashed the Fetcher with a KeyError and the
        # worker read nothing more (a worker restarted after a SIGKILL, once in about a
        # dozen runs of tests/integration/test_faults.py under load).
        thread = self._thread

        async def seek() -> None:
            thread.seek(partition, offset)

        await thread.call_thread(seek)

    async def seek(self, partition: TP, offset: int) -> None:
        rebalances = self._rebalances
        await super().seek(partition, offset)  # waits on the consumer's thread
        if partition.topic in self.guarded_topics:
            self._stamp([partition])
            if self._rebalances == rebalances:  # no expectation survives a rebalance
                self._expect(partition, offset)

    def _stamp(self, tps: Iterable[TP]) -> None:
        now = self._clock()
        for tp in tps:
            self._seeks += 1
            self._sought[tp] = self._seeks
            self._moved[tp] = now

    def _expect(self, tp: TP, offset: int) -> None:
        self._next[tp] = offset
        self._reread.pop(tp, None)

    def _unsettle(self) -> None:
        """A rebalance: no expectation from before it holds (module docstring)."""
        self._rebalances += 1
        self._next.clear()
        self._reread.clear()

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        self._unsettle()
        await super().on_partitions_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TP], generation_id: int = 0) -> None:
        self._unsettle()
        await super().on_partitions_assigned(assigned, generation_id)

    async def _seek_back(self, tp: TP, offset: int) -> None:
        try:
            await self.seek(tp, offset)
        except Exception as exc:  # no longer assigned: the next owner reads it
            log.warning("could not seek %s[%d]: %r", tp.topic, tp.partition, exc)

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, Message]]:
        # The seeks this fetch is issued after: Faust's getmany fetches before anything else.
        fetched_after = dict(self._sought)
        dropped: set[TP] = set()  # partitions whose rest of this fetch is dropped
        async for tp, message in super().getmany(timeout):
            if tp.topic not in self.guarded_topics:
                yield tp, message
                continue
            if tp in dropped:
                continue
            offset, expected = message.offset, self._next.get(tp)
            if expected is None:
                # Not settled since the rebalance: read again after its seek (sought again
                # there if this came after it, ``perform_seek``).
                self._unsettled[tp] += 1
                self._unsettled_dropped.add(tp)
                continue
            if self._sought.get(tp) != fetched_after.get(tp):
                # Fetched before the partition's last seek, or while it was under way: this
                # fetch moved the fetch position, so read again from where we expect.
                dropped.add(tp)
                self.stale += 1
                log.info(
                    "%s[%d] offset %d fetched before a seek: dropped, reading again from %d",
                    tp.topic,
                    tp.partition,
                    offset,
                    expected,
                )
                await self._seek_back(tp, expected)
                continue
            if offset < expected:
                self._behind[tp] += 1
                continue  # delivered already
            if self.app.rebalancing and self.feed is not None:
                # Fetched after the rebalance's seek, before the worker is ready: it would
                # release the batch, and no seek follows to read it again. Read it again
                # from where we expect once the rebalance is over (from ``expected``, not
                # from this record: a jump is checked on that fresh read).
                dropped.add(tp)
                await self._seek_back(tp, expected)
                await asyncio.sleep(0.05)  # not a busy loop of fetches while it lasts
                continue
            if offset > expected:
                if self._reread.get(tp) != (expected, offset):
                    dropped.add(tp)
                    self.rereads += 1
                    if self.on_reread is not None:
                        self.on_reread()
                    log.warning(
                        "%s[%d] jumped from offset %d to %d: reading again from %d",
                        tp.topic,
                        tp.partition,
                        expected,
                        offset,
                        expected,
                    )
                    await self._seek_back(tp, expected)
                    self._reread[tp] = (expected, offset)
                    continue
                # A fetch issued after the seek back jumped to the same offset: nothing is
                # there (a fetch from before it is stale, above, and never gets here).
                log.warning(
                    "%s[%d] offsets %d to %d are missing on the broker: counted as done",
                    tp.topic,
                    tp.partition,
                    expected,
                    offset - 1,
                )
                self._gap[tp].addi(expected, offset)
                self._gap[tp].merge_overlaps()
            self._next[tp] = offset + 1
            self._reread.pop(tp, None)
            feed = self.feed
            if feed is None:
                yield tp, message
                continue
            # What Faust's drain loop does for a message it hands to a stream, then the feed.
            self.track_message(message)
            self._read_offset[tp] = offset
            self._moved[tp] = self._flowing = self._clock()
            feed.put(message)
            if feed.full:
                await feed.wait_space()

    # -- a partition no longer read ------------------------------------------------------

    #: Seconds a guarded partition with records to read may go without one (nor a seek)
    #: before ``check_stalled`` seeks it again.
    stall_after = 20.0

    async def check_stalled(self) -> list[TP]:
        """Seek again the guarded partitions that have records to read and had none delivered
        (nor a seek) for ``stall_after`` seconds, whether or not other partitions had theirs;
        returns them. Outside rebalances, with the flow on and room in the feed, only.

        A 10-minute chaos soak stalled with two partitions never read again after the guard
        had sought them back on a jump, each just before a broker cut, through two more
        rebalances (docs/reliability.md), cause not established; and a restarted worker
        read nothing at all when its one new record had been dropped before the seek after
        its assignment (fixed in ``perform_seek``). A stall is logged with the state of the
        partition in aiokafka and Faust, and its records are read again from the expected
        offset (the committed one when none is expected). Partitions that have nothing to
        read are left alone, and so is everything while the broker does not answer (a cut:
        nothing can flow) or the feed is full (the worker holds the fetch back). An idle
        worker asks the broker for its late partitions' end offsets each time: one request.
        """
        feed = self.feed
        if feed is None or feed.full or self.app.rebalancing or not self.flow_active:
            return []
        now = self._clock()
        late = sorted(  # in partition order: the log and the seeks do not follow set order
            tp
            for tp in self.assignment()
            if tp.topic in self.guarded_topics and now - self._moved.get(tp, now) > self.stall_after
        )
        if not late:
            return []
        try:
            ends = await self.highwaters(*late)
        except Exception as exc:  # the broker is unreachable: nothing flows anyway
            log.info("stall check skipped: %r", exc)
            return []
        if self.app.rebalancing or feed.full:
            return []  # began while the broker answered
        assigned = self.assignment()
        flowing = self._flowing
        stalled: list[TP] = []
        for tp in late:
            if self.app.rebalancing:
                break  # began while an earlier partition's seek waited on the consumer's thread
            at = self._next.get(tp, self._committed_offset.get(tp))
            end = ends.get(tp)
            if at is None or end is None or end <= at or tp not in assigned:
                continue
            others = f"{now - flowing:.0f} s ago" if flowing else "never since the start"
            log.warning(
                "%s[%d] had no record for %.0f s (the last record of any partition came %s), "
                "offsets %d to %d unread: reading again from %d (%s)",
                tp.topic,
                tp.partition,
                now - self._moved.get(tp, now),
                others,
                at,
                end - 1,
                at,
                self._describe(tp),
            )
            self.stalls += 1
            if tp not in self._get_active_partitions():
                self.resume_partitions([tp])  # outside a rebalance every one is active
            await self._seek_back(tp, at)
            stalled.append(tp)
        return stalled

    def _describe(self, tp: TP) -> str:
        """The partition's state in aiokafka and Faust, for the log (read across threads)."""
        try:
            consumer: Any = self._thread._consumer
            fetcher = consumer._fetcher
            state = consumer._subscription.subscription.assignment.state_value(tp)
            held = fetcher._records.get(tp)
            waiting = type(held).__name__ if held is not None else None
            return (
                f"aiokafka position {state._position}, paused {state.paused}, awaiting reset "
                f"{state.awaiting_reset}, fetched and not taken {waiting}, "
                f"nodes with a fetch in flight {sorted(fetcher._in_flight)}; Faust active "
                f"{tp in self._get_active_partitions()}, paused {tp in self._paused_partitions}, "
                f"expected {self._next.get(tp)}, committed {self._committed_offset.get(tp)}; "
                f"records dropped before its seek {self._unsettled[tp]}, below the expected "
                f"offset {self._behind[tp]}"
            )
        except Exception as exc:
            return f"state not readable: {exc!r}"

    def stop_flow(self) -> None:
        """A rebalance begins: release what waits in the feed (it is read again from the
        committed offsets after the rebalance, as Faust does with its streams' buffers)."""
        super().stop_flow()
        self._unsettle()
        if self.feed is not None:
            for message in self.feed.drain():
                self.ack(message)  # not processed: released, not counted as done


class SegmenterTransport(faust_aiokafka.Transport):
    Consumer = SegmenterConsumer


class SegmenterApp(faust.App):
    """A Faust app whose consumer is :class:`SegmenterConsumer`."""

    #: The consumer's fetch wait on the broker, ms (see :class:`SegmenterConsumerThread`).
    fetch_max_wait_ms: int | None = None
    #: Topics the consumer applies its strict rules to, and the feed their messages go to.
    guarded_topics: tuple[str, ...] = ()
    input_feed: BatchFeed | None = None

    def _new_transport(self) -> TransportT:
        return SegmenterTransport(self.conf.broker_consumer, self)


#: Reserved table key of the changelog end markers (see ``CustomerTable.write``).
END_MARKER_KEY = "\x00segmenter-end"


#: A record for the broker: topic, key, value, partition (None: the producer's partitioner,
#: by key, as ``send`` picks it).
Record = tuple[str, bytes | None, bytes | None, int | None]


class RecordBatches:
    """Hands records to aiokafka's producer as one record batch per topic partition.

    ``send`` per record costs about 12-14 µs of the worker's time here (a future, a metadata
    wait, the partitioner, the accumulator's bookkeeping); appending to a batch and handing it
    over with ``send_batch`` about 3 µs (20,000 records of 200 bytes to a Tansu broker on this
    machine). A batch's changelog states and its changes are thousands of records in a
    backfill. A keyed record goes to the partition ``send`` would pick (the producer's own
    partitioner), so a customer's records stay on one partition, in order. Each batch is
    closed before it is handed over: a record sent in a later call (an end marker) never joins
    it. ``send`` returns each batch's delivery future with its record count.
    """

    def __init__(self, producer: Callable[[], Any]) -> None:
        self.producer = producer  # the started aiokafka producer (Faust's producer's own)

    async def send(self, records: Iterable[Record]) -> list[tuple[Awaitable[Any], int]]:
        producer = self.producer()
        known: set[str] = set()
        open_: dict[tuple[str, int], Any] = {}
        out: list[tuple[Awaitable[Any], int]] = []

        async def hand_over(topic: str, partition: int, batch: Any) -> None:
            batch.close()
            future = await producer.send_batch(batch, topic, partition=partition)
            out.append((future, batch.record_count()))

        for topic, key, value, partition in records:
            if topic not in known:
                await producer.partitions_for(topic)  # its metadata, for the partitioner
                known.add(topic)
            if partition is None:
                partition = producer._partition(topic, None, None, None, key, value)
            batch = open_.get((topic, partition))
            if batch is None:
                batch = open_[(topic, partition)] = producer.create_batch()
            if batch.append(key=key, value=value, timestamp=None) is None:  # full
                await hand_over(topic, partition, batch)
                batch = open_[(topic, partition)] = producer.create_batch()
                if batch.append(key=key, value=value, timestamp=None) is None:
                    raise ValueError(f"a record for {topic} is larger than a record batch")
        for (topic, partition), batch in open_.items():
            await hand_over(topic, partition, batch)
        return out


class Touches:
    """Which keys a table's states changed since a watch began, and when: ``seq`` counts the
    changes, ``last[key]`` is the count at the key's newest one (``CustomerTable.watch``). A
    reader that took a state at ``seq`` == s knows it is still the table's if
    ``last.get(key, -1) < s``, without reading the state again.

    The backfill's own writes are noted too (harmless: chunks do not overlap), and nothing
    is dropped until the watch ends: about 31 bytes per customer written meanwhile.

    >>> t = Touches(); s = t.seq; t.note(["a"]); t.changed_since("a", s), t.changed_since("b", s)
    (True, False)
    """

    def __init__(self) -> None:
        self.seq = 0
        self.last: dict[str, int] = {}

    def note(self, keys: Iterable[str]) -> None:
        seq = self.seq
        last = self.last
        for key in keys:
            last[key] = seq
        self.seq = seq + 1

    def changed_since(self, key: str, seq: int) -> bool:
        return self.last.get(key, -1) >= seq


class CustomerTable(faust.Table):  # type: ignore[type-arg]
    """The profile table: customer id to our own bytes (the worker encodes profiles itself).

    Three adaptations:

    - **Partition by source.** Faust routes a changelog record to the partition of the
      *current* event; inside a batch that is the last event of the batch, another customer's.
      Each key's changelog goes to the partition its events came from (``partition_of``, kept
      from the input and from the changelog during recovery), so the table stays co-partitioned
      with the input whatever partitioner the producers used.
    - **Straight to the producer.** ``table[key] = value`` wraps every record in Faust's
      per-message machinery (a FutureMessage, a buffer and a callback), which cost more than all
      our feature and segment work together. ``write`` sends the same records (JSON key, raw
      value) and waits for their delivery; erasures (value None) take the same path.
    - **RocksDB without a current event.** Faust's RocksDB store writes a key to the database
      of the *current event's* partition and asserts there is one; the worker writes after a
      batch, outside any event. ``write`` puts each key straight into the database of its own
      partition (``partition_of``), reads go there too (``load``), and after the changelog
      records are delivered it stores their offsets as the partition's persisted offset, as
      Faust does for its own sends: a restarted worker with the same ``SEGMENTER_DATA_DIR``
      reopens its databases and reads only the changelog after that offset.
    - **End markers (Tansu).** Tansu answers "end offset" with the last batch's first offset
      + 1, so a recovery that trusts it stops before the rest of a many-record batch and
      restores older states (events lost). After the records, ``write`` sends a lone tombstone
      of a reserved key to each partition written, in a record batch of its own handed over
      after theirs; it is always the last batch, and recovery deletes that key again. Apache
      Kafka does not need it (``SEGMENTER_CHANGELOG_END_MARKERS`` false).
    """

    def __init__(self, *args: Any, end_markers: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.key_serializer = "json"  # JSON keeps customer ids str across recovery
        self.value_serializer = "raw"
        self.end_markers = end_markers
        self.partition_of: dict[str, int] = {}
        self._watches: list[Touches] = []
        self.batches = RecordBatches(lambda: self.app.producer._ensure_producer())  # type: ignore[attr-defined]

    def partition_for_key(self, key: Any) -> int | None:
        partition = self.partition_of.get(key)
        return partition if partition is not None else super().partition_for_key(key)

    def apply_changelog_batch(self, batch: Iterable[EventT[Any]]) -> None:
        events = list(batch)
        for event in events:
            key = event.key
            if isinstance(key, str) and key != END_MARKER_KEY:
                self.partition_of[key] = event.message.partition
        self._touched(e.key for e in events if isinstance(e.key, str))
        super().apply_changelog_batch(events)

    @property
    def rocks(self) -> RocksStore | None:
        """The RocksDB store, if the table has one (``SEGMENTER_STATE_STORE=rocksdb``)."""
        data = self.data
        return data if isinstance(data, RocksStore) else None

    def load(self, key: str) -> bytes | None:
        """The stored value of ``key`` (of a known partition, with RocksDB), or None."""
        rocks = self.rocks
        if rocks is None:
            return self.data.get(key)
        partition = self.partition_of.get(key)
        if partition is None:
            return None
        db = rocks._db_for_partition(partition)
        return db.get(rocks._encode_key(key))  # type: ignore[no-any-return]

    def stored(self) -> Iterable[tuple[str, bytes]]:
        """Every stored (customer id, value) of the active partitions, end markers left out.
        With RocksDB, keys reopened from disk learn their partition here."""
        rocks = self.rocks
        if rocks is None:
            for key, value in self.data.items():
                if key != END_MARKER_KEY and value:
                    yield key, value
            return
        for partition, db in self._active_databases(rocks):
            for raw_key, value in rocks._visible_items(db):
                key = rocks._decode_key(raw_key)
                if key != END_MARKER_KEY and value:
                    self.partition_of[key] = partition
                    yield key, value

    def stored_ids(self, partitions: Iterable[int] | None = None) -> list[str]:
        """Every stored customer id of the active partitions (of ``partitions`` among them,
        if given): ``stored`` without reading the values, for a backfill to list its customers
        before it reads each chunk's states (with RocksDB, a key with an empty value would be
        listed, where ``stored`` leaves it out; the worker stores none: a state is a JSON
        object, and an erasure deletes the key). About 0.1 s for 100,000 ids with RocksDB
        (keys read in bulk and decoded by orjson, the JSON codec Faust's own key decoding
        calls; Faust's per-key path took four times as long)."""
        wanted = None if partitions is None else set(partitions)
        rocks = self.rocks
        if rocks is None:
            partition_of = self.partition_of
            return [
                key
                for key, value in self.data.items()
                if key != END_MARKER_KEY
                and value
                and (wanted is None or partition_of.get(key) in wanted)
            ]
        out: list[str] = []
        for partition, db in self._active_databases(rocks, wanted):
            raws = db.keys()  # noqa: SIM118 (a rocksdict database, not a dict)
            keys = [orjson.loads(raw) for raw in raws if raw != rocks.offset_key]
            keys = [key for key in keys if key != END_MARKER_KEY]
            self.partition_of.update(dict.fromkeys(keys, partition))
            out.extend(keys)
        return out

    def _active_databases(
        self, rocks: RocksStore, wanted: set[int] | None = None
    ) -> list[tuple[int, Any]]:
        """The RocksDB databases of the active partitions (of ``wanted`` among them)."""
        actives = {tp.partition for tp in self.app.assignor.assigned_actives()}
        return [
            (partition, db)
            for partition, db in list(rocks._dbs.items())
            if partition in actives and (wanted is None or partition in wanted)
        ]

    def watch(self) -> Touches:
        """A record of the keys this table's states change from now on (``Touches``), until
        ``unwatch``."""
        touches = Touches()
        self._watches.append(touches)
        return touches

    def unwatch(self, touches: Touches) -> None:
        if touches in self._watches:
            self._watches.remove(touches)

    def _touched(self, keys: Iterable[str]) -> None:
        if self._watches:
            keys = tuple(keys)  # every watch notes them all (``keys`` may be an iterator)
            for touches in self._watches:
                touches.note(keys)

    async def write(self, values: Mapping[str, bytes | None]) -> None:
        """Deliver these values' changelog records (None: delete), then the end markers, then
        keep the values in the local store. Returns once the broker has them all: only then
        may the input be acknowledged, or a rebalance could recover the table without them
        while the offsets are committed. Local last: a state in RocksDB is always one the
        changelog holds (a crash in between re-reads it from the changelog on restart)."""
        if not values:
            return
        topic = self.changelog_topic.get_topic_name()
        sent = await self.batches.send(
            (topic, codecs.dumps(self.key_serializer, key), value, self.partition_of[key])
            for key, value in values.items()
        )
        if self.end_markers:
            # Each marker in a record batch of its own, handed over after the values' batches
            # (closed by then), without waiting for their delivery (a round trip a batch).
            # aiokafka keeps a partition's batches in order: ``send_batch`` queues a batch
            # only once the partition's queue is empty, a partition stays muted while its
            # request is in flight, and a retried batch goes back to the head of its queue.
            # So the marker is the partition's last batch, and never shares one.
            marker = codecs.dumps(self.key_serializer, END_MARKER_KEY)
            partitions = sorted({self.partition_of[key] for key in values})
            sent += await self.batches.send((topic, marker, None, p) for p in partitions)
        newest: dict[int, int] = {}  # what a restart with this data directory need not read
        for meta, count in zip(
            await asyncio.gather(*(future for future, _ in sent)),
            (count for _, count in sent),
            strict=True,
        ):
            newest[meta.partition] = max(newest.get(meta.partition, -1), meta.offset + count - 1)
        self._touched(values)
        rocks = self.rocks
        if rocks is None:
            for key, value in values.items():
                if value is None:
                    self.data.pop(key, None)
                else:
                    self.data[key] = value
            return
        for key, value in values.items():
            db, raw_key = rocks._db_for_partition(self.partition_of[key]), rocks._encode_key(key)
            if value is None:
                db.delete(raw_key)
            else:
                db.put(raw_key, value)
        for partition, offset in newest.items():
            rocks.set_persisted_offset(TP(topic, partition), offset)


class BatchFeed:
    """Input messages from the consumer's fetch to the worker, taken in batches.

    Faust hands every message to a stream through its conductor: a task per message
    (``wait_first``), a channel queue, an event object, and the stream's own bookkeeping; a
    bare Faust agent costs about 245 µs per message here before doing anything. The worker
    needs none of it for its input: the consumer puts each message (tracked as pending, as
    Faust does) here, and the worker takes batches, applies them and acknowledges each
    message once the batch's effects are done. A full feed holds the fetch back.

    ``take`` returns up to ``size`` messages: as soon as one is there it waits at most
    ``within`` seconds for the batch to fill, and ends it early when nothing more came for
    ``idle`` seconds (what was fetched is in: do not wait for more).
    """

    def __init__(self, maxsize: int = 20_000) -> None:
        self.maxsize = maxsize
        #: Rebalances seen (each drains the feed): a batch taken under an older one is stale.
        self.generation = 0
        self._messages: deque[Message] = deque()
        self._ready = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()

    def __len__(self) -> int:
        return len(self._messages)

    @property
    def full(self) -> bool:
        return len(self._messages) >= self.maxsize

    def put(self, message: Message) -> None:
        self._messages.append(message)
        self._ready.set()
        if self.full:
            self._space.clear()

    async def wait_space(self) -> None:
        await self._space.wait()

    async def take(self, size: int, within: float, idle: float | None = None) -> list[Message]:
        messages = self._messages
        while not messages:
            self._ready.clear()
            await self._ready.wait()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while len(messages) < size:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            self._ready.clear()
            try:
                wait = remaining if idle is None else min(remaining, idle)
                await asyncio.wait_for(self._ready.wait(), wait)
            except TimeoutError:
                break
        batch = [messages.popleft() for _ in range(min(size, len(messages)))]
        if not self.full:
            self._space.set()
        return batch

    def since(self, generation: int) -> Callable[[], bool]:
        """True while no rebalance came after ``generation`` (read as a batch is taken)."""
        return lambda: self.generation == generation

    def drain(self) -> list[Message]:
        """Everything waiting, removed (a rebalance: batches taken before are stale)."""
        self.generation += 1
        out = list(self._messages)
        self._messages.clear()
        self._space.set()
        return out


class DeadlineWorker(faust.Worker):
    """Faust's worker with a deadline on shutdown.

    On SIGTERM or SIGINT Faust stops cleanly: it finishes the batch, commits and leaves the
    group. With the broker gone, that stop waited 60 s on a consumer thread before giving up
    (measured), longer than a supervisor's grace period. After ``shutdown_deadline`` seconds
    the process now exits by itself; what was not acknowledged is read again by the next
    owner (at-least-once, as after a SIGKILL).

    The same deadline holds for a stop after a crash: a service that crashed (the consumer's
    Fetcher, say) left the stop waiting on it for good, a process alive that read nothing and
    that no supervisor would restart. It exits 1 instead.
    """

    shutdown_deadline = 15.0
    _deadline: threading.Timer | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Faust's progress spinner, on at log level warn and above, sets the root logger to
        # DEBUG so it spins on every record: aiokafka then built a debug record per message
        # sent (11% of a loaded worker's time, measured with py-spy).
        self.spinner = None

    def _arm_deadline(self) -> None:
        if self._deadline is not None:
            return
        deadline = self.shutdown_deadline
        crashed = self.crashed

        def give_up() -> None:
            cause = "after a crash" if crashed or self.crashed else "(broker gone?)"
            log.warning("shutdown took over %.0f s %s; exiting now", deadline, cause)
            logging.shutdown()
            os._exit(1)

        self._deadline = threading.Timer(deadline, give_up)
        self._deadline.daemon = True
        self._deadline.start()

    def _schedule_shutdown(self, signum: signal.Signals) -> None:
        self._arm_deadline()
        super()._schedule_shutdown(signum)

    async def stop(self) -> None:
        self._arm_deadline()  # whatever the cause: a signal, a crash, the end of the run
        await super().stop()
