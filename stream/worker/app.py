"""The worker's composition root: the Faust app, its agents and timers, wired to the core."""

from __future__ import annotations

import asyncio
import atexit
import fcntl
import gc
import logging
import os
import shutil
import tempfile
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import faust
import orjson

from models.facts import LifecyclePolicy
from models.segments import SegmentCatalog, Stability
from models.session import SessionPolicy
from models.step import SamplingPolicy, SegmentStep
from stream.build import core_build
from stream.catalog import CatalogError, load_personas, load_segments
from stream.definitions import (
    DefinitionsReader,
    PublishedDefinitions,
    definitions_version,
    newest,
)
from stream.kafka import faust_credentials
from stream.settings import Settings
from stream.store import RedisSegmentStore
from stream.topology import topology
from stream.worker.decoding import FastDecoder
from stream.worker.definitions import LiveDefinitions
from stream.worker.effects import Effects
from stream.worker.faust_adapt import BatchFeed, CustomerTable, SegmenterApp, SegmenterConsumer
from stream.worker.metrics import WorkerMetrics
from stream.worker.rebuild import PartitionMarks, StoreRebuild
from stream.worker.segmenting import Segmenting
from stream.worker.status import Status, unless_redis_is_down
from stream.worker.trainer import Trainer

log = logging.getLogger(__name__)

__all__ = ["GC_THRESHOLDS", "Worker", "build_app", "build_catalog", "build_step", "tune_gc"]


@dataclass
class Worker:
    """The parts of one worker process, for the agents, the timers and the tests."""

    settings: Settings
    app: faust.App
    table: CustomerTable
    segmenting: Segmenting
    effects: Effects
    trainer: Trainer
    status: Status
    metrics: WorkerMetrics
    definitions: LiveDefinitions


#: The collector's thresholds in a worker: a young-generation pass every 50,000 allocations
#: instead of 700. A batch allocates many short-lived containers (events, facts, records) and
#: each pass walked them; `segmenter bench --core` measured about 10% more events a second
#: with one event per message and 25% more in arrays.
GC_THRESHOLDS = (50_000, 20, 10)


#: The RocksDB options of the profile table's databases (one per partition), for Faust's store
#: through rocksdict. Faust's defaults give each database a 2 GB block cache and three 64 MB
#: memtables; profiles are small and the worker keeps its hot ones live anyway
#: (``SEGMENTER_PROFILE_CACHE``), so these are small.
ROCKSDB_OPTIONS: dict[str, Any] = {
    "driver": "rocksdict",
    "block_cache_size": 16 * 2**20,
    "write_buffer_size": 8 * 2**20,
    "max_write_buffer_number": 2,
}


#: The file a worker holds locked (``flock``) in its temporary data directory while it runs.
_DATA_DIR_LOCK = ".worker.lock"
_held_locks: list[Any] = []


def _temporary_data_dir() -> str:
    """A data directory for this process alone (``SEGMENTER_DATA_DIR`` empty), removed when it
    exits: nobody starts on it again, so its RocksDB databases would only fill the disk. A
    worker killed (SIGKILL) cannot remove its own, so each holds a lock file in it while it
    runs, and a worker starting removes this user's directories whose lock nobody holds (a
    lock works across processes, pid namespaces and containers sharing the directory)."""
    root = Path(tempfile.gettempdir())
    for old in root.glob("segmenter-worker-*"):
        try:
            if old.stat().st_uid != os.getuid() or not (old / _DATA_DIR_LOCK).exists():
                continue
            with open(old / _DATA_DIR_LOCK, "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held: its worker runs
        except OSError:
            continue
        shutil.rmtree(old, ignore_errors=True)
    path = tempfile.mkdtemp(prefix="segmenter-worker-")
    # Locked under another name, then renamed: a worker starting meanwhile sees the lock file
    # only once it is held (the lock is the file's, so it holds across the rename).
    taking = Path(path) / f"{_DATA_DIR_LOCK}.taking"
    lock = open(taking, "w")  # noqa: SIM115 - held for the process's life
    fcntl.flock(lock, fcntl.LOCK_EX)
    taking.replace(Path(path) / _DATA_DIR_LOCK)
    _held_locks.append(lock)
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def tune_gc() -> None:
    """What the worker runs with: start-up objects frozen out of collections, and
    ``GC_THRESHOLDS``."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def build_catalog(
    settings: Settings, published: Mapping[str, PublishedDefinitions] | None = None
) -> SegmentCatalog:
    """Rules, personas, lifecycle thresholds and stability: the published definitions of each
    kind (``segmenter segments apply``), else the settings' files."""
    published = published or {}
    segments, personas = published.get("segments"), published.get("personas")
    return SegmentCatalog(
        rules=(
            load_segments(text=segments.text, source=segments.source)
            if segments
            else load_segments(settings.segments_file)
        ),
        personas=(
            load_personas(text=personas.text, source=personas.source)
            if personas
            else load_personas(settings.personas_file)
        ),
        version=definitions_version(published),
        lifecycle=LifecyclePolicy(
            settings.lifecycle_new_days,
            settings.lifecycle_at_risk_days,
            settings.lifecycle_lapsed_days,
        ),
        stability=Stability(settings.hysteresis, int(settings.min_dwell_seconds * 1000)),
        sessions=SessionPolicy(settings.session_timeout_minutes),
    )


def build_step(settings: Settings, catalog: SegmentCatalog | None = None) -> SegmentStep:
    """The pure step as the worker runs it (``segmenter eval`` and the bench build it here too)."""
    return SegmentStep(
        catalog if catalog is not None else build_catalog(settings),
        SamplingPolicy(
            settings.sample_every,
            settings.min_events_for_sample,
            settings.max_samples_per_second,
            settings.min_sessions_for_sample,
        ),
        settings.limits,
        settings.worker_id,
        orjson.loads,
        FastDecoder(settings.limits, orjson.loads),
        max_future_ms=int(settings.max_future_skew_seconds * 1000),
    )


def published_in_force(
    settings: Settings, reader: DefinitionsReader
) -> dict[str, PublishedDefinitions]:
    """The newest published definitions this worker can compile (empty: the settings' files).

    ``apply`` validated them; one that does not compile here was published by another
    version of segmenter: the worker starts on the settings' files and says so.
    """
    found = newest(reader.read_new())
    try:
        build_catalog(settings, found)
    except CatalogError as exc:
        log.error("published definitions do not compile here; using the settings' files: %s", exc)
        return {}
    return found


#: Bytes of one record batch the worker's producer builds (Faust's default is 16 KiB; under
#: the million bytes of a request, Faust's and brokers' default limit).
PRODUCER_BATCH_BYTES = 512 * 1024


def build_app(settings: Settings) -> tuple[faust.App, Worker]:
    """The composition root of a worker process."""
    app = SegmenterApp(
        settings.app_id,
        broker=settings.kafka_url,
        broker_credentials=faust_credentials(settings),
        store=f"{settings.state_store}://",
        autodiscover=False,
        datadir=settings.data_dir or _temporary_data_dir(),
        topic_partitions=settings.partitions,
        topic_replication_factor=1,
        table_standby_replicas=0,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.session_timeout,
        broker_heartbeat_interval=settings.heartbeat_interval,
        web_enabled=False,
        worker_redirect_stdouts=False,
        # A batch's changelog states and changes go out together and are awaited together:
        # Kafka's 16 KiB record batches split them into many requests, one after another.
        producer_max_batch_size=PRODUCER_BATCH_BYTES,
    )
    app.fetch_max_wait_ms = settings.fetch_max_wait_ms
    table = CustomerTable(
        app,
        name="profiles",
        default=None,
        partitions=topology(settings).input_partitions,
        beacon=app.tables.beacon,
        help="Per-customer feature state (models.features.CustomerProfile.to_state)",
        end_markers=settings.changelog_end_markers,
        options=dict(ROCKSDB_OPTIONS) if settings.state_store == "rocksdb" else None,
    )
    app.tables.add(table)
    topics = topology(settings)
    names = topics.by_key  # changes, samples, dead_letter, snapshots, drift, stats, ...
    sources = topics.consumed  # the input topics and the forget requests, to their source
    input_topic = app.topic(*sources, value_serializer="raw", key_serializer="raw")
    app.topics.add(input_topic)  # subscribed, though no Faust stream reads it: the feed does
    feed = BatchFeed()
    app.guarded_topics = tuple(input_topic.topics)
    app.input_feed = feed
    samples_topic = app.topic(
        names["samples"],
        value_serializer="raw",
        key_serializer="raw",
        partitions=topics["samples"].partitions,
    )

    async def send(topic: str, key: bytes | None, value: bytes | None) -> Awaitable[Any]:
        # Straight to the producer rather than Topic.send: Faust's per-message wrapping costs
        # more than the send itself at thousands of records a second.
        return cast(Awaitable[Any], await app.producer.send(topic, key, value, None, None, None))

    def owned_partitions() -> set[int]:
        first = topics["clickstream"].topic
        return {tp.partition for tp in app.consumer.assignment() if tp.topic == first}

    metrics = WorkerMetrics()
    store = RedisSegmentStore(
        settings.redis_url.get_secret_value(),
        settings.redis_prefix,
        changes_kept=settings.customer_changes_kept,
    )
    marks = PartitionMarks(settings.app_id, settings.worker_id)
    effects = Effects(store, table, table.batches.send, names, settings.worker_id, metrics, marks)
    reader = DefinitionsReader(settings)
    in_force = published_in_force(settings, reader)
    segmenting = Segmenting(
        build_step(settings, build_catalog(settings, in_force)),
        table,
        effects,
        store,
        sources,
        owned_partitions,
        metrics,
        settings.profile_cache,
        ready=lambda: not app.rebalancing,
    )
    segmenting.live_waiting = lambda: len(feed) > 0
    trainer = Trainer(settings, store, send, names, metrics, lambda: segmenting.model)
    rebuild = StoreRebuild(
        segmenting,
        store,
        marks,
        ready=lambda: not app.rebalancing,  # true again once the table is recovered
        table_partitions=settings.partitions,
        spawn=app.add_future,
        crash=app.crash,
    )
    definitions = LiveDefinitions(
        segmenting,
        reader,
        in_force,
        lambda published: build_catalog(settings, published),
        settings.backfill_rate,
        ready=lambda: not app.rebalancing,
        processes=settings.backfill_process,
        spawn=app.add_future,
        crash=app.crash,
    )
    status = Status(
        settings, app, store, segmenting, effects, trainer, send, names["stats"], metrics, rebuild
    )
    status.definitions = definitions
    worker = Worker(
        settings, app, table, segmenting, effects, trainer, status, metrics, definitions
    )

    @app.task  # type: ignore[untyped-decorator]
    async def segment() -> None:
        # The input topics' messages come in batches through the feed, past Faust's streams
        # (faust_adapt.BatchFeed). Each is acknowledged only once the batch's effects are done,
        # and registered as processed first: on these topics only those count as done (a
        # message released during a rebalance does not; see faust_adapt.SegmenterConsumer).
        consumer = cast(SegmenterConsumer, app.consumer)
        consumer.on_reread = metrics.offset_gaps.inc
        tune_gc()
        log.info("the core (models/): %s", core_build())
        idle = settings.batch_idle or None
        try:
            while True:
                batch = await feed.take(settings.batch_size, settings.batch_within, idle)
                applied = {
                    id(m) for m in await segmenting.handle(batch, feed.since(feed.generation))
                }
                for message in batch:
                    if id(message) in applied:
                        consumer.processed(message)
                    consumer.ack(message)  # a message left out is released, not done
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug, not bad input (that is a dead letter): stop
            log.exception("the segmenting loop failed; stopping the worker")
            await app.crash(exc)

    @app.agent(samples_topic, name="train")
    async def train(stream: faust.StreamT[bytes]) -> None:
        async for batch in stream.take(1000, within=0.25):
            await trainer.train(batch)

    @app.timer(settings.snapshot_interval)  # type: ignore[untyped-decorator]
    async def publish_model() -> None:
        await unless_redis_is_down("model publish", trainer.publish_model)

    @app.timer(settings.model_refresh_interval)  # type: ignore[untyped-decorator]
    async def refresh_model() -> None:
        await unless_redis_is_down("model refresh", segmenting.refresh_model)
        await unless_redis_is_down("first model", segmenting.assign_unassigned)

    @app.timer(1.0)  # type: ignore[untyped-decorator]
    async def expire_due() -> None:
        await unless_redis_is_down("time-driven re-evaluation", segmenting.expire_due)

    @app.timer(settings.store_check_interval)  # type: ignore[untyped-decorator]
    async def check_store() -> None:
        await unless_redis_is_down("store check", rebuild.check)

    @app.task  # type: ignore[untyped-decorator]
    async def refresh_definitions() -> None:
        # A loop rather than a Faust timer: a check that takes longer than the short interval
        # (the switch waits for a batch's lock; a slow broker) is not an overlap to warn of.
        while not app.should_stop:
            await app.sleep(settings.definitions_refresh_interval)
            if not app.should_stop:
                await definitions.refresh()

    @app.timer(SegmenterConsumer.stall_after / 4)  # type: ignore[untyped-decorator]
    async def check_stalled() -> None:
        # An input partition no longer read while the others are is read again (and logged).
        await cast(SegmenterConsumer, app.consumer).check_stalled()

    @app.timer(1.0)  # type: ignore[untyped-decorator]
    async def heartbeat() -> None:
        await unless_redis_is_down("heartbeat", status.heartbeat)

    @app.timer(settings.stats_interval)  # type: ignore[untyped-decorator]
    async def publish_stats() -> None:
        await unless_redis_is_down("size snapshot", status.publish_stats)

    if settings.metrics_port:
        metrics.serve(settings.metrics_host, settings.metrics_port)

    return app, worker
