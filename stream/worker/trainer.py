"""The one trainer: learns the cluster model and RFM quantiles from samples, watches drift."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import orjson

from models.clustering import ClusterTrainer, ModelSnapshot
from models.drift import DriftAlert, DriftMonitor, FlowMonitor
from models.facts import PopulationQuantiles
from stream.settings import Settings
from stream.store import SegmentStore, retry_forever
from stream.worker.effects import Send
from stream.worker.metrics import WorkerMetrics

log = logging.getLogger(__name__)

__all__ = ["Trainer", "cluster_trainer", "flow_monitor"]


def cluster_trainer(settings: Settings) -> ClusterTrainer:
    """The model trainer as the settings configure it (the worker's and `segmenter eval`'s)."""
    return ClusterTrainer(
        n_clusters=None if settings.n_clusters == "auto" else settings.n_clusters,
        halflife=settings.learning_rate,
        warmup=settings.warmup_samples,
        seed=settings.seed,
        min_share=settings.min_segment_share,
        categories=settings.cluster_categories,
        category_weight=settings.cluster_category_weight,
    )


def flow_monitor(settings: Settings) -> FlowMonitor:
    """The segment-flow drift monitor as the settings configure it (the worker's and
    `segmenter eval-incidents`')."""
    return FlowMonitor(
        bucket_ms=settings.drift_flow_bucket_seconds * 1000,
        baseline_days=settings.drift_flow_baseline_days,
        min_history_days=settings.drift_flow_min_history_days,
        rise=settings.drift_flow_rise,
        threshold=settings.drift_flow_threshold,
        min_count=settings.drift_flow_min_count,
        min_ratio=settings.drift_flow_min_ratio,
    )


class Trainer:
    """Runs in the worker that owns the one-partition samples topic; state is built lazily,
    so the other workers carry none of it."""

    def __init__(
        self,
        settings: Settings,
        store: SegmentStore,
        send: Send,
        topics: dict[str, str],
        metrics: WorkerMetrics,
        serving_model: Callable[[], ModelSnapshot | None],
    ) -> None:
        self.settings = settings
        self.store = store
        self.send = send
        self.topics = topics  # role (snapshots, drift) -> topic name
        self.metrics = metrics
        self.serving_model = serving_model  # the model the workers score with: drift uses it
        self.trainer: ClusterTrainer | None = None
        self.population = PopulationQuantiles()
        self.drift = DriftMonitor(
            delta=settings.drift_delta,
            min_effect=settings.drift_min_effect,
            centre_threshold=settings.drift_centre_threshold,
            warmup=settings.drift_warmup_samples,
            cooldown=settings.drift_cooldown_samples,
        )
        self.flows = flow_monitor(settings)
        self._flows_restored = False
        self.dirty = False
        self.pending_alerts: list[DriftAlert] = []
        self.lock = threading.Lock()

    @property
    def active(self) -> bool:
        return self.trainer is not None

    async def train(self, batch: Sequence[bytes]) -> None:
        """Learn from a batch of sample messages (each a JSON array of samples) and watch the
        workers' segment flows (each a JSON object, ``effects.flows_message``)."""
        if not self._flows_restored:
            await self._restore_flows()
        samples_raw = []
        for raw in batch:
            if raw[:1] == b"{":
                self._watch_flows(orjson.loads(raw))
            else:
                samples_raw.append(raw)
        if not samples_raw:
            await self._publish_alerts()
            return
        batch = samples_raw
        if self.trainer is None:
            self.trainer = cluster_trainer(self.settings)
            data = await retry_forever("Redis model read", self.store.model)
            if data and self.trainer.restore(ModelSnapshot.from_dict(data)):
                log.info("trainer restored model version %s", self.trainer.version)
            elif data:
                # Workers go on scoring with the stored model meanwhile (it loads as it was).
                log.warning(
                    "stored model version %s has no learned space, or other features or "
                    "cluster count than the settings: retraining from %s new samples",
                    data.get("version"),
                    self.trainer.warmup,
                )
        was_ready = self.trainer.ready
        samples = [sample for raw in batch for sample in orjson.loads(raw)]
        # In a thread: seeding (ten k-means++ starts) takes seconds of pure Python, and the
        # event loop must keep serving heartbeats and events meanwhile.
        await asyncio.get_running_loop().run_in_executor(None, self._learn, samples)
        self.dirty = True
        if self.trainer.ready and not was_ready:
            await self.publish_model()  # the first model goes out at once
        await self._publish_alerts()

    async def _restore_flows(self) -> None:
        """A new trainer (a restart, a rebalance) learns the flows' history from the size
        snapshots in Redis, rather than waiting days for it: when they are taken per bucket
        of the flow monitor's size. The newest bucket, still filling, is left out."""
        self._flows_restored = True
        if self.settings.stats_bucket_seconds != self.settings.drift_flow_bucket_seconds:
            log.info("flow drift starts without history (the size snapshots' bucket differs)")
            return
        history = await retry_forever(
            "Redis history", self.store.history, self.settings.stats_history
        )
        snapshots = [
            (int(h["bucket"]), h.get("entered_total", {}), h.get("exited_total", {}))
            for h in sorted(history, key=lambda h: int(h["bucket"]))[:-1]
        ]
        learnt = self.flows.restore(snapshots)
        if learnt:
            log.info("flow drift restored %d buckets of history from the size snapshots", learnt)

    def _watch_flows(self, message: dict[str, Any]) -> None:
        counts = {(segment, change): int(n) for segment, change, n in message["flows"]}
        self.pending_alerts += self.flows.add(counts, int(message["watermark"]))

    def _learn(self, samples: Sequence[dict[str, Any]]) -> None:
        assert self.trainer is not None
        model = self.serving_model()
        with self.lock:
            for sample in samples:
                x = sample["x"]
                self.trainer.learn_one(x, sample.get("key"))
                if sample["rfm"]:
                    self.population.update(*sample["rfm"])
                if model is not None:
                    # Drift is watched on the stream the model learns from, scored by the model
                    # the workers use; before the first model there is nothing to watch.
                    segment, distance, _ = model.predict(x)
                    self.pending_alerts += self.drift.update(
                        x,
                        segment,
                        distance,
                        int(sample["ts"] or 0),
                        model.version,
                        len(model.centres),
                    )

    async def publish_model(self) -> None:
        if self.trainer is None or not self.trainer.ready or not self.dirty:
            return
        with self.lock:
            snapshot = self.trainer.snapshot().to_dict()
            cuts = self.population.cuts()
            serving = self.serving_model()
            if cuts is not None:
                snapshot["rfm_cuts"] = cuts.to_dict()
            elif serving is not None and serving.rfm_cuts:
                snapshot["rfm_cuts"] = serving.rfm_cuts  # keep the last until enough data
        # Stalls, rather than drops, a snapshot while Redis is away: the trainer waits with it.
        await retry_forever("Redis model publish", self.store.publish_model, snapshot)
        await (await self.send(self.topics["snapshots"], None, orjson.dumps(snapshot)))
        self.dirty = False
        self.pending_alerts += self.drift.model_moved(
            snapshot["version"],
            snapshot["centres"],
            self.drift.clock,
            orjson.dumps([snapshot["features"], snapshot.get("scaling")]),
        )
        await self._publish_alerts()

    async def _publish_alerts(self) -> None:
        alerts, self.pending_alerts = self.pending_alerts, []
        if not alerts:
            return
        if any(a.kind == "segment_flow" for a in alerts):
            # The store counts every worker's members; the monitor's count starts with it.
            sizes = await retry_forever("Redis sizes", self.store.members)
            alerts = [
                replace(a, size=sizes.get(a.segment, a.size))
                if a.kind == "segment_flow" and a.segment
                else a
                for a in alerts
            ]
        payloads = [a.to_dict() for a in alerts]
        for alert in alerts:
            log.warning("drift: %s", alert.message)
            self.metrics.drift_alerts.labels(alert.kind).inc()
        await retry_forever(
            "Redis drift", self.store.push_drift, payloads, self.settings.drift_history
        )
        futures = [
            await self.send(self.topics["drift"], a["subject"].encode(), orjson.dumps(a))
            for a in payloads
        ]
        await asyncio.gather(*futures)
