"""`segmenter eval`: segmentation quality on generator traffic with known personas.

It runs the same pure core the worker runs (decoding, features, the sampling rule, the one
trainer and its snapshots) in-process, so quality is measured without broker timing noise.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import orjson

from models.clustering import ClusterTrainer, ModelSnapshot
from models.events import decode_message
from models.facts import LifecyclePolicy
from models.features import DAY_MS, CustomerProfile, feature_vector
from models.metrics import adjusted_rand_index
from models.personas import PersonaCatalog
from models.schedule import DueSchedule
from stream.settings import Settings
from stream.tools.generator import TrafficGenerator

__all__ = ["EvalResult", "evaluate"]


@dataclass
class EvalResult:
    events: int
    customers: int
    ari: float
    persona_accuracy: float
    id_changes: float  # share of warm customers whose segment changes as the model learns
    warm_customers: int
    segments_used: int
    lifecycle_exits: int = 0
    lifecycle_on_time: float = 1.0  # share of stage changes made on the first advance past due

    def rows(self) -> list[tuple[str, str, str, bool]]:
        """(figure, value, target, met) for printing."""
        return [
            (
                "adjusted Rand index, clusters vs true personas",
                f"{self.ari:.3f}",
                ">= 0.90",
                self.ari >= 0.9,
            ),
            (
                "nearest-persona accuracy",
                f"{self.persona_accuracy:.1%}",
                ">= 95%",
                self.persona_accuracy >= 0.95,
            ),
            (
                "segment id changes of unchanged customers",
                f"{self.id_changes:.2%}",
                "< 1%",
                self.id_changes < 0.01,
            ),
            (
                "lifecycle exits on the first advance past due",
                f"{self.lifecycle_on_time:.1%} of {self.lifecycle_exits:,}",
                "100%",
                self.lifecycle_exits > 0 and self.lifecycle_on_time == 1.0,
            ),
        ]


def evaluate(
    settings: Settings,
    catalog: PersonaCatalog,
    events: int = 100_000,
    customers: int = 2000,
    seed: int = 7,
    min_sessions: int = 3,
    on_progress: Callable[[int], None] | None = None,
) -> EvalResult:
    """Run ``events`` generated events through the core; score customers past warm-up
    (at least ``min_sessions`` sessions: one session says little about who someone is)."""
    generator = TrafficGenerator(customers=customers, seed=seed, session_gap_ms=60_000)
    trainer = ClusterTrainer(
        n_clusters=settings.n_clusters,
        halflife=settings.learning_rate,
        warmup=settings.warmup_samples,
        seed=settings.seed,
        min_share=settings.min_segment_share,
    )
    profiles: dict[str, CustomerProfile] = {}
    snapshot: ModelSnapshot | None = None
    half: ModelSnapshot | None = None
    half_vectors: dict[str, dict[str, float]] = {}
    seen = 0
    snapshot_every = 500  # samples between snapshots, standing in for the worker's 2 s timer
    samples = 0
    while seen < events:
        for message in generator.session(generator.rng.choice(generator.customer_ids)):
            decoded = decode_message(
                message.source,
                orjson.dumps(message.value),
                message.key.encode(),
                settings.limits,
                orjson.loads,
            )
            profile = profiles.setdefault(message.key, CustomerProfile(message.key))
            before = profile.applied
            for event in decoded:
                profile.apply(event)
            seen += len(decoded)
            every = settings.sample_every
            if (
                profile.applied >= settings.min_events_for_sample
                and profile.applied // every > before // every
            ):
                trainer.learn_one(feature_vector(profile))
                samples += 1
                if trainer.ready and (snapshot is None or samples % snapshot_every == 0):
                    snapshot = trainer.snapshot()
        if half is None and seen >= events // 2 and snapshot is not None:
            half = snapshot
            half_vectors = {
                c: feature_vector(p) for c, p in profiles.items() if p.sessions >= min_sessions
            }
        if on_progress and seen % 1000 < 20:
            on_progress(seen)
    assert snapshot is not None and half is not None, "too few events for a model; raise --events"
    final = trainer.snapshot()
    warm = {c: p for c, p in profiles.items() if p.sessions >= min_sessions}
    truth = [generator.truth[c].name for c in warm]
    clusters = [final.predict(feature_vector(p))[0] for p in warm.values()]
    personas = [catalog.match(feature_vector(p)).name for p in warm.values()]
    changed = sum(1 for x in half_vectors.values() if half.predict(x)[0] != final.predict(x)[0])
    exits, on_time = _lifecycle_exits(profiles, generator.rng)
    return EvalResult(
        events=seen,
        customers=len(profiles),
        ari=adjusted_rand_index(truth, clusters),
        persona_accuracy=sum(t == p for t, p in zip(truth, personas, strict=True)) / len(truth),
        id_changes=changed / len(half_vectors) if half_vectors else 0.0,
        warm_customers=len(warm),
        segments_used=len(set(clusters)),
        lifecycle_exits=exits,
        lifecycle_on_time=on_time,
    )


def _lifecycle_exits(profiles: dict[str, CustomerProfile], rng: random.Random) -> tuple[int, float]:
    """Advance the watermark past the traffic in random steps, as idle time would, and count
    stage changes made on the first advance past their due time (the worker's mechanism:
    the same schedule and policy). A change of stage the schedule did not flag is a miss."""
    policy = LifecyclePolicy()
    watermark = max(p.last_seen_ts or 0 for p in profiles.values())
    schedule = DueSchedule()
    stages: dict[str, str] = {}
    due: dict[str, int | None] = {}
    for cid, p in profiles.items():
        stages[cid] = policy.stage(p, watermark)
        due[cid] = policy.next_change(p, watermark)
        schedule.set(cid, due[cid])
    exits = on_time = 0
    end = watermark + 200 * DAY_MS
    while watermark < end:
        previous, watermark = watermark, watermark + rng.randrange(DAY_MS // 4, 3 * DAY_MS)
        popped = set(schedule.pop_due(watermark))
        for cid, p in profiles.items():
            stage = policy.stage(p, watermark)
            if stage == stages[cid] and cid not in popped:
                continue
            if stage != stages[cid]:
                exits += 1
                d = due[cid]
                on_time += cid in popped and d is not None and previous < d <= watermark
                stages[cid] = stage
            due[cid] = policy.next_change(p, watermark)
            schedule.set(cid, due[cid])
    return exits, on_time / exits if exits else 0.0
