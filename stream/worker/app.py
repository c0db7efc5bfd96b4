"""The Faust app: input topics, the customer feature table, the segmenting agent and the trainer."""

from __future__ import annotations

import asyncio
import base64
import logging
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import replace
from typing import Any, cast

import faust
import orjson
from faust.serializers import codecs
from faust.types import EventT

from models.clustering import ClusterTrainer, ModelSnapshot
from models.drift import DriftAlert, DriftMonitor
from models.events import DecodeError, Event, decode_message
from models.facts import LifecyclePolicy, PopulationQuantiles, RfmCuts, rfm_values
from models.features import CustomerProfile, feature_vector
from models.schedule import DueSchedule
from models.segments import (
    SegmentCatalog,
    SegmentChange,
    Stability,
    assign,
    changes_between,
    remember,
)
from stream.catalog import load_personas, load_segments
from stream.kafka import faust_credentials
from stream.settings import Settings
from stream.store import REDIS_OUTAGE, RecordWrite, RedisSegmentStore, retry_forever
from stream.worker.faust_adapt import SegmenterApp, SegmenterConsumer
from stream.worker.metrics import WorkerMetrics

log = logging.getLogger(__name__)

__all__ = ["END_MARKER_KEY", "CustomerTable", "Segmenter", "build_app"]

#: Reserved table key of the changelog end markers (see Segmenter._flush_changelog).
END_MARKER_KEY = "\x00segmenter-end"


class CustomerTable(faust.Table):  # type: ignore[type-arg]
    """A table whose changelog partition is the source partition of the key's events.

    Faust normally takes the partition of the *current* event; inside a batch from
    ``take_events`` that is the last event of the batch, which belongs to another key. Routing
    by the recorded source partition keeps the changelog co-partitioned with the input
    topics whatever partitioner the producers used.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Keys are customer ids (JSON keeps them str across recovery); values are our own
        # orjson bytes of CustomerProfile.to_state(), so Faust must not re-encode them.
        self.key_serializer = "json"
        self.value_serializer = "raw"
        self.partition_of: dict[str, int] = {}

    def partition_for_key(self, key: Any) -> int | None:
        partition = self.partition_of.get(key)
        return partition if partition is not None else super().partition_for_key(key)

    async def put(
        self, key: str, value: bytes | None, partition: int | None = None
    ) -> Awaitable[Any]:
        """Set (or, with None, delete) a key and send its changelog record straight to the
        producer; returns the delivery future.

        What ``table[key] = value`` does, without Faust's per-message machinery around the send
        (a FutureMessage, a buffer and a callback per record), which cost more than all our
        feature and segment work together. The record is the same: JSON key, raw value, in the
        key's source partition (or ``partition``).
        """
        if partition is None:
            partition = self.partition_of.get(key)
        if value is None:
            self.data.pop(key, None)
        else:
            self.data[key] = value
        return await self.app.producer.send(
            self.changelog_topic.get_topic_name(),
            codecs.dumps(self.key_serializer, key),
            value,
            partition,
            None,
            None,
        )


class Segmenter:
    """Everything one worker process does; the agents below only hand it batches."""

    def __init__(
        self, settings: Settings, app: faust.App, store: RedisSegmentStore, catalog: SegmentCatalog
    ) -> None:
        self.settings = settings
        self.app = app
        self.store = store
        self.input_topics = settings.input_topics
        self.forget_topic = settings.topic(settings.forget_topic)
        self.table = CustomerTable(
            app,
            name="profiles",
            default=None,
            partitions=settings.partitions,
            beacon=app.tables.beacon,
            help="Per-customer feature state (models.features.CustomerProfile.to_state)",
        )
        app.tables.add(self.table)
        self.dead_letters = app.topic(
            settings.topic(settings.dead_letter_topic), value_serializer="raw", key_serializer="raw"
        )
        self.changes = app.topic(
            settings.topic(settings.changes_topic), value_serializer="raw", key_serializer="raw"
        )
        self.samples = app.topic(
            settings.topic(settings.samples_topic),
            value_serializer="raw",
            key_serializer="raw",
            partitions=1,
        )
        self.snapshots = app.topic(
            settings.topic(settings.snapshots_topic),
            value_serializer="raw",
            key_serializer="raw",
            partitions=1,
        )
        self.stats_topic = app.topic(
            settings.topic(settings.stats_topic), value_serializer="raw", key_serializer="raw"
        )
        self.drift_topic = app.topic(
            settings.topic(settings.drift_topic), value_serializer="raw", key_serializer="raw"
        )
        self.catalog = catalog
        self.watermark = 0  # the newest event time this worker has applied
        self._sample_tokens = settings.max_samples_per_second
        self._sample_at = time.monotonic()
        self.due = DueSchedule()
        self._scheduled_for: set[int] = set()
        self.model: ModelSnapshot | None = None
        self.trainer: ClusterTrainer | None = None
        self.trainer_dirty = False
        self.trainer_lock = threading.Lock()
        self.population = PopulationQuantiles()
        self.drift = DriftMonitor(
            delta=settings.drift_delta,
            min_effect=settings.drift_min_effect,
            centre_threshold=settings.drift_centre_threshold,
            warmup=settings.drift_warmup_samples,
            cooldown=settings.drift_cooldown_samples,
        )
        self.pending_alerts: list[DriftAlert] = []
        self.metrics = WorkerMetrics()
        self.offsets: dict[tuple[str, int], int] = {}  # newest offset handled per partition
        self.lock = asyncio.Lock()
        self.counters = {
            "events": 0,
            "messages": 0,
            "dead_letters": 0,
            "records": 0,
            "changes": 0,
            "expired": 0,
        }

    # -- the segmenting agent -----------------------------------------------------------------

    async def handle(self, batch: Sequence[EventT[Any]]) -> None:
        """Apply one batch of input messages. Effects run in an order that makes a crash safe.

        Redis first, then segment changes, then the table: a crash before the table write
        means the messages are redelivered and every effect is redone idempotently; a crash
        after it means the event ids are in the dedupe window and nothing is applied twice.
        """
        started = time.perf_counter()
        async with self.lock:
            await self._handle(batch)
        self.metrics.batch_seconds.observe(time.perf_counter() - started)
        now = time.time()
        per_topic: dict[str, int] = {}
        for event in batch:
            message = event.message
            per_topic[message.topic] = per_topic.get(message.topic, 0) + 1
            self.metrics.event_delay.observe(max(0.0, now - message.timestamp))
            key = (message.topic, message.partition)
            self.offsets[key] = max(self.offsets.get(key, -1), message.offset)
        for topic, n in per_topic.items():
            self.metrics.messages.labels(topic).inc(n)

    async def _handle(self, batch: Sequence[EventT[Any]]) -> None:
        limits = self.settings.limits
        per_customer: dict[str, list[tuple[str, int, list[Event]]]] = {}
        dead: list[tuple[bytes | None, bytes]] = []
        forget: dict[str, int] = {}
        for event in batch:
            message = event.message
            value = event.value
            if message.topic == self.forget_topic:
                if message.key:
                    customer_id = message.key.decode("utf-8", "replace")
                    forget[customer_id] = message.partition
                continue
            try:
                if not message.key:
                    raise DecodeError("message has no key; the key must be the customer_id")
                decoded = decode_message(
                    self.input_topics[message.topic],
                    value or b"",
                    message.key,
                    limits,
                    orjson.loads,
                )
            except DecodeError as exc:
                dead.append((message.key, self._dead_letter(message, value, exc.reason)))
                continue
            except Exception as exc:  # a decoder bug must not make a poison message
                # The exception's text may quote the message (ids, traits): type only above
                # debug; the reason goes with the message to the dead-letter topic.
                log.error(
                    "decoder failed (%s) on %s[%s]@%s",
                    type(exc).__name__,
                    message.topic,
                    message.partition,
                    message.offset,
                )
                log.debug("decoder failure", exc_info=True)
                reason = f"could not decode ({type(exc).__name__}: {str(exc)[:120]})"
                dead.append((message.key, self._dead_letter(message, value, reason)))
                continue
            customer_id = decoded[0].customer_id
            self.metrics.events.labels(message.topic).inc(len(decoded))
            position = f"{message.topic}/{message.partition}"
            per_customer.setdefault(customer_id, []).append((position, message.offset, decoded))
            self.table.partition_of[customer_id] = message.partition

        writes: list[RecordWrite] = []
        changes: list[SegmentChange] = []
        samples: list[bytes] = []
        states: dict[str, bytes] = {}
        now_ms = int(time.time() * 1000)
        n_events = 0
        for customer_id, messages in per_customer.items():
            raw = self.table.get(customer_id)
            profile = (
                CustomerProfile.from_state(orjson.loads(raw))
                if raw
                else CustomerProfile(customer_id)
            )
            before = profile.applied
            for position, offset, events in messages:
                n_events += len(events)
                if not profile.seen_position(position, offset):
                    for e in events:
                        profile.apply(e)
            if profile.applied == before:
                continue  # every message was a redelivery or every event a duplicate
            profile.partition = self.table.partition_of[customer_id]
            self.watermark = max(self.watermark, profile.last_seen_ts or 0)
            self._score(profile, now_ms, writes, changes)
            if self._wants_sample(before, profile.applied):
                samples.append(self._sample(profile))
            states[customer_id] = orjson.dumps(profile.to_state())

        counters = {
            "events": n_events,
            "messages": len(batch),
            "dead_letters": len(dead),
            "records": len(writes),
        }
        await self._commit(writes, changes, states, counters, samples, dead)
        if forget:
            await self._forget(forget)
        await self._expire_due()

    async def _forget(self, customers: dict[str, int]) -> None:
        """Erase customers everywhere this worker keeps them (segmenter forget).

        Redis record and counters first, then a tombstone on ``segment-changes`` (key =
        customer, no value) for downstream systems to erase too, then the table entry (a
        changelog tombstone). Events of the same batch are erased with the customer; an event
        that arrives later starts a new profile.
        """
        ids = sorted(customers)
        await retry_forever("Redis forget", self.store.forget_many, ids)
        topic = self.changes.get_topic_name()
        futures = [await self._produce(topic, c.encode(), None) for c in ids]
        await asyncio.gather(*futures)
        for customer_id in ids:
            self.table.partition_of[customer_id] = customers[customer_id]
            if self.table.get(customer_id) is not None:
                del self.table[customer_id]
            self.due.set(customer_id, None)
        await self._flush_changelog(set(customers.values()))
        self.counters["forgotten"] = self.counters.get("forgotten", 0) + len(ids)
        log.info("forgot %d customers", len(ids))

    def _score(
        self,
        profile: CustomerProfile,
        now_ms: int,
        writes: list[RecordWrite],
        changes: list[SegmentChange],
        at: int | None = None,
        trigger: str = "event",
    ) -> bool:
        """Assign, collect changes and the record write; True if any segment changed."""
        assignment = assign(profile, self.model, self.catalog, at)
        found = changes_between(profile, assignment, trigger)
        changes.extend(found)
        remember(profile, assignment)
        self.due.set(
            profile.customer_id, self.catalog.lifecycle.next_change(profile, assignment.now)
        )
        if trigger != "event" and not found:
            return False
        writes.append(
            RecordWrite(
                profile.customer_id,
                assignment.event_ts,
                assignment.applied,
                assignment.segment,
                {**assignment.record(profile, now_ms), "worker_id": self.settings.worker_id},
                assignment.members(),
            )
        )
        return bool(found)

    async def _expire_due(self) -> None:
        """Re-evaluate customers whose lifecycle stage came due as the watermark moved.

        Event time only: with no new events, the watermark stands still and nothing expires,
        so a replay of a log ends in the same segments as the live stream did.
        """
        owned = self._owned_partitions()
        if owned != self._scheduled_for:
            self._reschedule(owned)
        due = self.due.pop_due(self.watermark)
        if due:
            await self._rescore(due, owned, "watermark", counter="expired")

    async def _rescore(
        self,
        customer_ids: Iterable[str],
        owned: set[int],
        trigger: str,
        counter: str | None = None,
        only: Callable[[CustomerProfile], bool] | None = None,
    ) -> int:
        """Score stored customers of owned partitions at the watermark, outside their events.

        A customer's state is saved whenever a record write came of it (``_score`` skips the
        write for a time-driven evaluation that changed nothing). Returns the writes made.
        """
        writes: list[RecordWrite] = []
        changes: list[SegmentChange] = []
        states: dict[str, bytes] = {}
        now_ms = int(time.time() * 1000)
        for customer_id in customer_ids:
            raw = self.table.get(customer_id)
            if not raw:
                continue
            profile = CustomerProfile.from_state(orjson.loads(raw))
            if profile.partition not in owned or (only is not None and not only(profile)):
                continue
            before = len(writes)
            self._score(profile, now_ms, writes, changes, self.watermark, trigger)
            if len(writes) > before:
                states[customer_id] = orjson.dumps(profile.to_state())
        if writes:
            counters = {"records": len(writes)}
            if counter:
                counters[counter] = len(writes)
            await self._commit(writes, changes, states, counters)
        return len(writes)

    def _reschedule(self, owned: set[int]) -> None:
        """After a rebalance, schedule the customers of the partitions this worker now owns."""
        self.due.clear()
        for customer_id, raw in self.table.items():
            if customer_id == END_MARKER_KEY or not raw:
                continue
            state = orjson.loads(raw)
            partition = state.get("p")
            if partition in owned:
                self.table.partition_of[customer_id] = partition
                profile = CustomerProfile.from_state(state)
                at = max(self.watermark, profile.last_seen_ts or 0)
                self.due.set(customer_id, self.catalog.lifecycle.next_change(profile, at))
        self._scheduled_for = set(owned)
        log.info("lifecycle schedule: %d customers on partitions %s", len(self.due), sorted(owned))

    def _sample(self, profile: CustomerProfile) -> bytes:
        """A training sample: the feature vector and, for a buyer, raw RFM for the quantiles."""
        rfm = rfm_values(profile, profile.last_seen_ts or 0) if profile.orders_total else None
        return orjson.dumps({"x": feature_vector(profile), "rfm": rfm, "ts": profile.last_seen_ts})

    def _wants_sample(self, before: int, after: int) -> bool:
        every = self.settings.sample_every
        due = after >= self.settings.min_events_for_sample and after // every > before // every
        return due and self._sample_budget()

    def _sample_budget(self) -> bool:
        """A token bucket of ``max_samples_per_second`` (one second's worth of burst)."""
        rate = self.settings.max_samples_per_second
        if rate <= 0:
            return True
        now = time.monotonic()
        self._sample_tokens = min(rate, self._sample_tokens + (now - self._sample_at) * rate)
        self._sample_at = now
        if self._sample_tokens < 1:
            return False
        self._sample_tokens -= 1
        return True

    async def _commit(
        self,
        writes: list[RecordWrite],
        changes: list[SegmentChange],
        states: dict[str, bytes],
        counters: dict[str, int],
        samples: Sequence[bytes] = (),
        dead: Sequence[tuple[bytes | None, bytes]] = (),
    ) -> None:
        """Apply a batch's effects in the one order that makes a crash safe (see handle)."""
        await retry_forever("Redis write", self.store.write_many, writes, counters)
        await self._send_all(changes, samples, dead)
        # The table's changelog records must reach the broker before the batch is acknowledged:
        # otherwise a rebalance recovers the table from a changelog without them while the
        # input offsets are committed, and the events are lost.
        futures = [await self.table.put(customer_id, st) for customer_id, st in states.items()]
        if futures:
            await asyncio.gather(*futures)
            await self._end_markers({self.table.partition_of[c] for c in states})
        for name, by in counters.items():
            self.counters[name] = self.counters.get(name, 0) + by

    async def _flush_changelog(self, partitions: set[int | None]) -> None:
        """Deliver the table's changelog writes queued by Faust, then the end markers."""
        await self.app.producer.flush()
        await self._end_markers(partitions)

    async def _end_markers(self, partitions: set[int | None]) -> None:
        """Close each changelog partition written to with a record alone in its batch: Tansu
        answers "end offset" with the last batch's first offset + 1, so a table recovery that
        trusts it stops before the other records of a many-record batch and
        restores older states (events lost). A lone tombstone of a reserved key, sent after the
        flush, is always the last batch; recovery deletes that key again, so the table never
        holds it. Apache Kafka does not need this (SEGMENTER_CHANGELOG_END_MARKERS=false).
        Call it only once the records before it are delivered.
        """
        if not self.settings.changelog_end_markers:
            return
        futures = []
        for partition in sorted(p for p in partitions if p is not None):
            futures.append(await self.table.put(END_MARKER_KEY, None, partition))
        if futures:
            await asyncio.gather(*futures)

    async def _send_all(
        self,
        changes: list[SegmentChange],
        samples: Sequence[bytes],
        dead: Sequence[tuple[bytes | None, bytes]],
    ) -> None:
        futures = []
        changes_topic = self.changes.get_topic_name()
        for change in changes:
            payload = orjson.dumps(change.to_dict())
            futures.append(await self._produce(changes_topic, change.customer_id.encode(), payload))
        if samples:  # one message per batch: a JSON array of the batch's samples
            array = b"[" + b",".join(samples) + b"]"
            futures.append(await self._produce(self.samples.get_topic_name(), None, array))
        for dead_key, letter in dead:
            futures.append(
                await self._produce(self.dead_letters.get_topic_name(), dead_key, letter)
            )
        if futures:
            await asyncio.gather(*futures)  # delivered before the table write and the ack
        self.counters["changes"] += len(changes)
        for change in changes:
            self.metrics.changes.labels(change.change).inc()
        if dead:
            self.metrics.dead_letters.inc(len(dead))

    async def _produce(self, topic: str, key: bytes | None, value: bytes | None) -> Awaitable[Any]:
        """Hand one record to the producer; returns its delivery future. Straight to the
        producer rather than ``Topic.send``: Faust's per-message wrapping costs more than the
        send itself at thousands of records a second."""
        return await self.app.producer.send(topic, key, value, None, None, None)

    def _dead_letter(self, message: Any, value: bytes | None, reason: str) -> bytes:
        # A reason may quote the message (a customer id, a trait): only at debug level here;
        # it travels with the message to the dead-letter topic.
        log.warning(
            "dead letter from %s[%s]@%s (reason on the dead-letter topic)",
            message.topic,
            message.partition,
            message.offset,
        )
        log.debug(
            "dead letter from %s[%s]@%s: %s",
            message.topic,
            message.partition,
            message.offset,
            reason,
        )
        raw = value or b""
        return orjson.dumps(
            {
                "reason": reason,
                "topic": message.topic,
                "partition": message.partition,
                "offset": message.offset,
                "key": message.key.decode("utf-8", "replace") if message.key else None,
                "value_b64": base64.b64encode(raw).decode(),
                "worker_id": self.settings.worker_id,
                "dead_at": int(time.time() * 1000),
            }
        )

    # -- the model ----------------------------------------------------------------------------

    async def refresh_model(self) -> None:
        """Load a newer snapshot; on the very first one, score customers still unassigned."""
        version = await self.store.model_version()
        if not version or (self.model and self.model.version >= version):
            return
        data = await self.store.get_json("model")
        if data is None:
            return
        first = self.model is None
        self.model = ModelSnapshot.from_dict(data)
        self.metrics.model_version.set(self.model.version)
        if self.model.rfm_cuts:
            self.catalog = replace(self.catalog, rfm=RfmCuts.from_dict(self.model.rfm_cuts))
        log.info(
            "model version %s loaded (%s samples)", self.model.version, self.model.trained_samples
        )
        if first:
            async with self.lock:
                await self._score_unassigned()

    async def _score_unassigned(self) -> None:
        assigned = await self._rescore(
            list(self.table.partition_of),
            self._owned_partitions(),
            "event",
            only=lambda profile: profile.segment is None,
        )
        if assigned:
            log.info("first model: assigned %d customers seen before it", assigned)

    def _owned_partitions(self) -> set[int]:
        topic = self.settings.topic(self.settings.clickstream_topic)
        return {tp.partition for tp in self.app.consumer.assignment() if tp.topic == topic}

    async def train(self, batch: Sequence[bytes]) -> None:
        if self.trainer is None:
            self.trainer = ClusterTrainer(
                n_clusters=self.settings.n_clusters,
                halflife=self.settings.learning_rate,
                warmup=self.settings.warmup_samples,
                seed=self.settings.seed,
                min_share=self.settings.min_segment_share,
            )
            data = await retry_forever("Redis model read", self.store.get_json, "model")
            if data:
                self.trainer.restore(ModelSnapshot.from_dict(data))
                log.info("trainer restored model version %s", self.trainer.version)
        was_ready = self.trainer.ready
        # In a thread: seeding (ten k-means++ starts) takes seconds of pure Python, and the
        # event loop must keep serving heartbeats and events meanwhile.
        await asyncio.get_running_loop().run_in_executor(None, self._learn, batch)
        self.trainer_dirty = True
        if self.trainer.ready and not was_ready:
            await self.publish_model()  # the first model goes out at once
        await self._publish_alerts()

    async def _publish_alerts(self) -> None:
        alerts, self.pending_alerts = self.pending_alerts, []
        if not alerts:
            return
        payloads = [a.to_dict() for a in alerts]
        for alert in alerts:
            log.warning("drift: %s", alert.message)
            self.metrics.drift_alerts.labels(alert.kind).inc()
        await retry_forever(
            "Redis drift", self.store.push_drift, payloads, self.settings.drift_history
        )
        futures = [
            await self.drift_topic.send(key=a["subject"].encode(), value=orjson.dumps(a))
            for a in payloads
        ]
        await asyncio.gather(*futures)

    def _learn(self, batch: Sequence[bytes]) -> None:
        assert self.trainer is not None
        model = self.model
        with self.trainer_lock:
            for sample in _samples(batch):
                x = sample["x"]
                self.trainer.learn_one(x)
                if sample.get("rfm"):
                    self.population.update(*sample["rfm"])
                if model is not None:
                    # Drift is watched on the same stream the model learns from, scored by the
                    # model the workers use; before the first model there is nothing to watch.
                    segment, distance, _ = model.predict(x)
                    self.pending_alerts += self.drift.update(
                        x,
                        segment,
                        distance,
                        int(sample.get("ts") or 0),
                        model.version,
                        len(model.centres),
                    )

    async def publish_model(self) -> None:
        if self.trainer is None or not self.trainer.ready or not self.trainer_dirty:
            return
        with self.trainer_lock:
            snapshot = self.trainer.snapshot().to_dict()
            cuts = self.population.cuts()
            if cuts is not None:
                snapshot["rfm_cuts"] = cuts.to_dict()
            elif self.model is not None and self.model.rfm_cuts:
                snapshot["rfm_cuts"] = self.model.rfm_cuts  # keep the last until enough data
        # Stalls, rather than drops, a snapshot while Redis is away: the trainer waits with it.
        await retry_forever("Redis model publish", self.store.publish_model, snapshot)
        await self.snapshots.send(value=orjson.dumps(snapshot))
        self.trainer_dirty = False
        self.pending_alerts += self.drift.model_moved(
            snapshot["version"], snapshot["centres"], self.drift.clock
        )
        await self._publish_alerts()

    async def publish_stats(self) -> None:
        """Snapshot every segment's size into its event-time bucket (one worker per period)."""
        s = self.settings
        snapshot = await self.store.size_snapshot(
            s.worker_id,
            self.watermark,
            s.stats_bucket_seconds * 1000,
            s.stats_history,
            s.stats_interval,
        )
        if snapshot is None:
            return
        for segment, size in snapshot["sizes"].items():
            self.metrics.segment_size.labels(segment).set(size)
        await self.stats_topic.send(value=orjson.dumps(snapshot))

    def _lag(self) -> int:
        """Messages behind the end of the assigned input partitions; updates the gauges."""
        total = 0
        for tp in self.app.consumer.assignment():
            if tp.topic not in self.input_topics:
                continue
            try:
                highwater = self.app.consumer.highwater(tp)
            except Exception:  # not known yet right after an assignment
                continue
            if highwater is None:
                continue
            lag = max(0, highwater - self.offsets.get((tp.topic, tp.partition), -1) - 1)
            self.metrics.lag.labels(tp.topic, str(tp.partition)).set(lag)
            total += lag
        return total

    async def heartbeat(self) -> None:
        info = {
            "worker_id": self.settings.worker_id,
            "partitions": sorted(self._owned_partitions()),
            "model_version": self.model.version if self.model else None,
            "watermark": self.watermark,
            "scheduled": len(self.due),
            "trainer": self.trainer is not None,
            "lag": self._lag(),
            "at": int(time.time() * 1000),
            **self.counters,
        }
        await self.store.set_json(f"worker:{self.settings.worker_id}", info, ttl=10)


async def _unless_redis_is_down(what: str, job: Callable[[], Awaitable[None]]) -> None:
    """Run a periodic job; while Redis is away, skip it with a warning instead of crashing.

    An exception escaping a Faust timer stops the whole worker; these jobs (heartbeat, model
    refresh, size snapshots) simply run again on their next tick.
    """
    try:
        await job()
    except REDIS_OUTAGE as exc:
        log.warning("%s skipped: Redis is not available (%s)", what, exc)


async def event_batches(
    stream: faust.StreamT[bytes], size: int, within: float, idle: float | None = None
) -> AsyncIterator[list[EventT[Any]]]:
    """Batches of up to ``size`` events, a partial one after ``within`` seconds or as soon as
    no event came for ``idle`` seconds (what was fetched is in: do not wait for more); no acks.

    The caller acknowledges each event once the batch's effects are done. Faust's own batching
    can fail that: ``take_events`` acknowledges a batch in a ``finally``, so a batch cut short
    by a stop or a crash was committed anyway (events lost on restart); ``noack_take`` fills
    its buffer from a background drainer that reads ``stream.current_event`` after an await.
    Here one iterator reads the stream and nothing is cancelled: a read still pending when the
    time is up carries over to the next batch.
    """
    stream.enable_acks = False
    events = stream.events().__aiter__()
    loop = asyncio.get_running_loop()
    pending: asyncio.Future[EventT[Any]] | None = None
    batch: list[EventT[Any]] = []
    deadline = 0.0
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(events.__anext__())
            timeout = max(0.0, deadline - loop.time()) if batch else None
            if timeout is not None and idle is not None:
                timeout = min(timeout, idle)
            done, _ = await asyncio.wait({pending}, timeout=timeout)
            if done:
                try:
                    event = pending.result()
                except StopAsyncIteration:
                    break
                pending = None
                if not batch:
                    deadline = loop.time() + within
                batch.append(event)
                if len(batch) < size:
                    continue
            yield batch
            batch = []
        if batch:
            yield batch
    finally:
        if pending is not None:
            pending.cancel()


def _samples(batch: Sequence[bytes]) -> Iterator[dict[str, Any]]:
    """Training samples of a batch of messages, each one sample or an array of them."""
    for raw in batch:
        decoded = orjson.loads(raw)
        yield from decoded if isinstance(decoded, list) else [decoded]


def build_app(settings: Settings) -> tuple[faust.App, Segmenter]:
    """The composition root of a worker process."""
    app = SegmenterApp(
        settings.app_id,
        broker=settings.kafka_url,
        broker_credentials=faust_credentials(settings),
        store="memory://",
        autodiscover=False,
        datadir=settings.data_dir or tempfile.mkdtemp(prefix="segmenter-worker-"),
        topic_partitions=settings.partitions,
        topic_replication_factor=1,
        table_standby_replicas=0,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.session_timeout,
        broker_heartbeat_interval=settings.heartbeat_interval,
        web_enabled=False,
        worker_redirect_stdouts=False,
    )
    app.fetch_max_wait_ms = settings.fetch_max_wait_ms
    store = RedisSegmentStore(
        settings.redis_url.get_secret_value(), settings.redis_prefix, settings.record_ttl_seconds
    )
    catalog = SegmentCatalog(
        rules=load_segments(settings.segments_file),
        personas=load_personas(settings.personas_file),
        lifecycle=LifecyclePolicy(
            settings.lifecycle_new_days,
            settings.lifecycle_at_risk_days,
            settings.lifecycle_lapsed_days,
        ),
        stability=Stability(settings.hysteresis, int(settings.min_dwell_seconds * 1000)),
    )
    segmenter = Segmenter(settings, app, store, catalog)
    source = app.topic(
        *settings.input_topics,
        settings.topic(settings.forget_topic),
        value_serializer="raw",
        key_serializer="raw",
    )

    @app.agent(source, name="segment")
    async def segment(stream: faust.StreamT[bytes]) -> None:
        # Acknowledge a batch only once all its effects are done (see event_batches), and
        # register each event as processed first: on these topics only those count as done
        # (a skip during a rebalance does not; see stream/consumer.py).
        consumer = cast(SegmenterConsumer, app.consumer)
        consumer.guard(source.topics)
        consumer.on_reread = segmenter.metrics.offset_gaps.inc
        async for batch in event_batches(
            stream, settings.batch_size, settings.batch_within, settings.batch_idle or None
        ):
            await segmenter.handle(batch)
            for event in batch:
                consumer.processed(event.message)
                await stream.ack(event)

    @app.agent(segmenter.samples, name="train")
    async def train(stream: faust.StreamT[bytes]) -> None:
        async for batch in stream.take(1000, within=0.25):
            await segmenter.train(batch)

    @app.timer(settings.snapshot_interval)  # type: ignore[untyped-decorator]
    async def publish_model() -> None:
        await _unless_redis_is_down("model publish", segmenter.publish_model)

    @app.timer(settings.model_refresh_interval)  # type: ignore[untyped-decorator]
    async def refresh_model() -> None:
        await _unless_redis_is_down("model refresh", segmenter.refresh_model)

    @app.timer(1.0)  # type: ignore[untyped-decorator]
    async def heartbeat() -> None:
        await _unless_redis_is_down("heartbeat", segmenter.heartbeat)

    @app.timer(settings.stats_interval)  # type: ignore[untyped-decorator]
    async def publish_stats() -> None:
        await _unless_redis_is_down("size snapshot", segmenter.publish_stats)

    if settings.metrics_port:
        segmenter.metrics.serve(settings.metrics_host, settings.metrics_port)

    return app, segmenter
