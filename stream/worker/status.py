"""What a worker reports: its heartbeat and lag, and the periodic segment-size snapshot."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import faust
import orjson

from stream.settings import Settings
from stream.store import SegmentStore, is_outage
from stream.worker.definitions import LiveDefinitions
from stream.worker.effects import Effects, Send
from stream.worker.metrics import WorkerMetrics
from stream.worker.rebuild import StoreRebuild
from stream.worker.segmenting import Segmenting
from stream.worker.trainer import Trainer

log = logging.getLogger(__name__)

__all__ = ["Status", "unless_redis_is_down"]


class Status:
    def __init__(
        self,
        settings: Settings,
        app: faust.App,
        store: SegmentStore,
        segmenting: Segmenting,
        effects: Effects,
        trainer: Trainer,
        send: Send,
        stats_topic: str,
        metrics: WorkerMetrics,
        rebuild: StoreRebuild | None = None,
    ) -> None:
        self.settings = settings
        self.app = app
        self.store = store
        self.segmenting = segmenting
        self.effects = effects
        self.trainer = trainer
        self.send = send
        self.stats_topic = stats_topic
        self.metrics = metrics
        self.rebuild = rebuild
        self.definitions: LiveDefinitions | None = None

    def lag(self) -> int:
        """Messages behind the end of the assigned input partitions; updates the gauges."""
        total = 0
        offsets = self.segmenting.offsets
        for tp in self.app.consumer.assignment():
            if tp.topic not in self.segmenting.sources:
                continue
            try:
                highwater = self.app.consumer.highwater(tp)
            except Exception:  # not known yet right after an assignment
                continue
            if highwater is None:
                continue
            lag = max(0, highwater - offsets.get((tp.topic, tp.partition), -1) - 1)
            self.metrics.lag.labels(tp.topic, str(tp.partition)).set(lag)
            total += lag
        return total

    async def heartbeat(self) -> None:
        model = self.segmenting.model
        info: dict[str, Any] = {
            "worker_id": self.settings.worker_id,
            "partitions": sorted(self.segmenting.owned_partitions()),
            "model_version": model.version if model else None,
            "assigning": self.segmenting.assigning,  # the first model's one-off scoring
            "watermark": self.segmenting.watermark,
            "scheduled": len(self.segmenting.schedule),
            "trainer": self.trainer.active,
            "lag": self.lag(),
            "metrics_port": self.metrics.port,
            "at": int(time.time() * 1000),
            **self.effects.counters,
        }
        if self.rebuild is not None:
            info["rebuild"] = self.rebuild.status()
        if self.definitions is not None:
            info["definitions"] = self.definitions.status()
        await self.store.heartbeat(self.settings.worker_id, info, 10)

    async def publish_stats(self) -> None:
        """Snapshot every segment's size into its event-time bucket (one worker per period)."""
        s = self.settings
        snapshot = await self.store.size_snapshot(
            s.worker_id,
            self.segmenting.watermark,
            s.stats_bucket_seconds * 1000,
            s.stats_history,
            s.stats_interval,
        )
        if snapshot is None:
            return
        for segment, size in snapshot["sizes"].items():
            self.metrics.segment_size.labels(segment).set(size)
        await (await self.send(self.stats_topic, None, orjson.dumps(snapshot)))


async def unless_redis_is_down(what: str, job: Callable[[], Awaitable[None]]) -> None:
    """Run a periodic job; while Redis is away, skip it with a warning instead of crashing.

    An exception escaping a Faust timer stops the whole worker; these jobs (heartbeat, model
    refresh, size snapshots) simply run again on their next tick.
    """
    try:
        await job()
    except Exception as exc:
        if not is_outage(exc):
            raise
        log.warning("%s skipped: Redis is not available (%s)", what, exc)
