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
- ``DeadlineWorker``: a deadline on Faust's clean shutdown (60 s with the broker gone), and no
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
2. Only events the agent registered as processed (:meth:`SegmenterConsumer.processed`) count
   as done. A skipped one releases the message but is read again from the committed offset.
3. Nothing is committed while the offset right after the committed one is not done.
4. Everything left unread during a rebalance is read again. Faust seeks back only partitions
   with a committed offset: records it fetched and dropped (of partitions it had just paused
   for the table recovery) stayed unread for good on a partition nobody had committed yet
   (``tests/integration/test_identity.py``: the identity topics of a worker killed seconds
   after their first messages; the new owner never applied them). Such partitions are sought
   to their beginning after every rebalance. And records fetched after that seek but before
   Faust calls the worker ready, which the worker would release with no seek to follow, are
   held back: the partition is sought back to them, read again once the rebalance is over.

A few events may be processed twice after a rebalance; the worker's effects are idempotent
(at-least-once), which is what the scale-out and fault tests check.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import weakref
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any

import faust
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
        self._next: dict[TP, int] = {}
        self._start: dict[TP, int] = {}  # first offset read of a partition never committed
        self._reread: dict[TP, tuple[int, int]] = {}  # sought back: (expected, jumped to)
        #: Events skipped during a rebalance and left to be read again.
        self.skipped = 0
        #: Times a partition was read again because its records jumped ahead.
        self.rereads = 0
        #: Called on each of those (the worker counts them in ``segmenter_offset_gaps``).
        self.on_reread: Callable[[], object] | None = None

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
        if floor is not None and acked[0] > floor:
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
        await super().perform_seek()
        # Faust seeks only partitions with a committed offset. What it fetched and dropped
        # (records of partitions it paused meanwhile, during a table recovery) and what the
        # worker released during the rebalance is read again from there; on a partition
        # never committed yet the position stays past those records, and they were never
        # read: from its beginning instead (the worker's auto_offset_reset, earliest).
        uncommitted = [
            tp
            for tp, offset in self._read_offset.items()
            if tp.topic in self.guarded_topics and offset is None
        ]
        if uncommitted:
            await self._seek_to_beginning(uncommitted)
        for tp, offset in self._read_offset.items():
            if tp.topic in self.guarded_topics:
                self._expect(tp, offset)

    async def _seek_to_beginning(self, partitions: list[TP]) -> None:
        await self._thread.seek_to_beginning(
            *(faust_aiokafka.ensure_aiokafka_TP(tp) for tp in partitions)
        )

    async def seek(self, partition: TP, offset: int) -> None:
        await super().seek(partition, offset)
        if partition.topic in self.guarded_topics:
            self._expect(partition, offset)

    def _expect(self, tp: TP, offset: int | None) -> None:
        if offset is None:
            self._next.pop(tp, None)
        else:
            self._next[tp] = offset
        self._reread.pop(tp, None)

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, Message]]:
        reread: set[TP] = set()  # partitions sought back during this fetch: drop the rest
        async for tp, message in super().getmany(timeout):
            if tp.topic not in self.guarded_topics:
                yield tp, message
                continue
            if tp in reread:
                continue
            offset, expected = message.offset, self._next.get(tp)
            if (
                self.app.rebalancing
                and self.feed is not None
                and (expected is None or offset >= expected)
            ):
                # Fetched after the rebalance's seek, before the worker is ready: it would
                # release the batch, and no seek follows to read it again. Read it again
                # from here once the rebalance is over.
                reread.add(tp)
                try:
                    await self.seek(tp, offset)
                except Exception as exc:  # no longer assigned: the next owner reads it
                    log.warning("could not seek %s[%d]: %r", tp.topic, tp.partition, exc)
                await asyncio.sleep(0.05)  # not a busy loop of fetches while it lasts
                continue
            if expected is None:
                self._start.setdefault(tp, offset)
            elif offset < expected:
                continue  # delivered already
            elif offset > expected:
                if self._reread.get(tp) != (expected, offset):
                    reread.add(tp)
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
                    try:
                        await self.seek(tp, expected)
                    except Exception as exc:  # no longer assigned: the next owner reads it
                        log.warning("could not seek %s[%d]: %r", tp.topic, tp.partition, exc)
                    self._reread[tp] = (expected, offset)
                    continue
                # A fresh read from ``expected`` jumped to the same offset: nothing is there.
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
            feed.put(message)
            if feed.full:
                await feed.wait_space()

    def stop_flow(self) -> None:
        """A rebalance begins: release what waits in the feed (it is read again from the
        committed offsets after the rebalance, as Faust does with its streams' buffers)."""
        super().stop_flow()
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
    closed before it is handed over: a record sent later with ``send`` (an end marker) never
    joins it. ``send`` returns each batch's delivery future with its record count.
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
      of a reserved key to each partition written; it is always the last batch, and recovery
      deletes that key again. Apache Kafka does not need it (``SEGMENTER_CHANGELOG_END_MARKERS``
      false).
    """

    def __init__(self, *args: Any, end_markers: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.key_serializer = "json"  # JSON keeps customer ids str across recovery
        self.value_serializer = "raw"
        self.end_markers = end_markers
        self.partition_of: dict[str, int] = {}
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
        actives = {tp.partition for tp in self.app.assignor.assigned_actives()}
        for partition, db in list(rocks._dbs.items()):
            if partition not in actives:
                continue
            for raw_key, value in rocks._visible_items(db):
                key = rocks._decode_key(raw_key)
                if key != END_MARKER_KEY and value:
                    self.partition_of[key] = partition
                    yield key, value

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
        newest: dict[int, int] = {}  # what a restart with this data directory need not read
        for meta, count in zip(
            await asyncio.gather(*(future for future, _ in sent)),
            (count for _, count in sent),
            strict=True,
        ):
            newest[meta.partition] = max(newest.get(meta.partition, -1), meta.offset + count - 1)
        if self.end_markers:
            partitions = sorted({self.partition_of[key] for key in values})
            markers = [await self._send(END_MARKER_KEY, None, p) for p in partitions]
            for meta in await asyncio.gather(*markers):
                newest[meta.partition] = max(newest.get(meta.partition, -1), meta.offset)
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

    async def _send(
        self, key: str, value: bytes | None, partition: int | None = None
    ) -> Awaitable[Any]:
        return await self.app.producer.send(
            self.changelog_topic.get_topic_name(),
            codecs.dumps(self.key_serializer, key),
            value,
            self.partition_of[key] if partition is None else partition,
            None,
            None,
        )


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

    def drain(self) -> list[Message]:
        """Everything waiting, removed."""
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
    """

    shutdown_deadline = 15.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Faust's progress spinner, on at log level warn and above, sets the root logger to
        # DEBUG so it spins on every record: aiokafka then built a debug record per message
        # sent (11% of a loaded worker's time, measured with py-spy).
        self.spinner = None

    def _schedule_shutdown(self, signum: signal.Signals) -> None:
        deadline = self.shutdown_deadline

        def give_up() -> None:
            log.warning("clean shutdown took over %.0f s (broker gone?); exiting now", deadline)
            logging.shutdown()
            os._exit(1)

        timer = threading.Timer(deadline, give_up)
        timer.daemon = True
        timer.start()
        super()._schedule_shutdown(signum)
