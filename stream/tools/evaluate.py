"""`segmenter eval`: segmentation quality on generator traffic with known personas.

It runs the worker's own step (``models.step.SegmentStep``, built by the worker's
``build_step`` from the same settings, segments and personas files) in-process, fed the way a
worker is fed: messages go to the clickstream, purchases and identify topics' partitions by
key, and each batch is fetched from every partition in turn, so a session's purchase can come
before its clicks as it does from two topics. The one trainer learns from the step's samples
(with the sampling cap) and its snapshots reach the step on the worker's timers, on a clock
that simulates events arriving at ``rate`` a second. No broker, no Redis: quality is measured
without timing noise, and ``tests/integration/test_eval_matches_worker.py`` checks that the
worker and this replay write the same records for the same input.
"""

from __future__ import annotations

import math
import random
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace

import orjson

from models.clustering import ModelSnapshot
from models.facts import PopulationQuantiles
from models.features import DAY_MS, CustomerProfile, feature_vector
from models.identity import IDENTITY
from models.metrics import adjusted_rand_index
from models.personas import PROTOTYPE_FIELDS, Persona, PersonaCatalog
from models.schedule import DueSchedule
from models.segments import SegmentCatalog, assign
from models.step import RecordWrite, SegmentStep, SourceMessage, StepOutcome
from stream.settings import Settings
from stream.tools.generator import Message, Realism, TrafficGenerator
from stream.worker.app import build_catalog, build_step
from stream.worker.trainer import cluster_trainer

__all__ = [
    "CATALOG_JITTER",
    "DrawRun",
    "EvalResult",
    "Replay",
    "evaluate",
    "persona_catalog",
    "prototype_of",
    "run_draw",
]

_CLOCK_CUSTOMER = "eval-clock"  # moves event time on after the traffic (lifecycle exits)


class Replay:
    """The worker's step and trainer in one process, fed as a worker is fed.

    ``model`` fixes the model the step scores with (no trainer then); otherwise the trainer
    learns from the step's samples and publishes on the simulated clock.
    """

    def __init__(
        self,
        settings: Settings,
        catalog: SegmentCatalog | None = None,
        rate: float = 2000.0,
        model: ModelSnapshot | None = None,
    ) -> None:
        self.settings = settings
        self.step: SegmentStep = build_step(settings, catalog)
        self.rate = rate
        self.partitions = settings.partitions
        self.queues: dict[str, deque[SourceMessage]] = {}
        self.profiles: dict[str, CustomerProfile] = {}
        self.schedule = DueSchedule()
        self.watermark = 0
        self.model = model
        self.fixed_model = model is not None
        self.trainer = cluster_trainer(settings)
        self.population = PopulationQuantiles()
        self.records: dict[str, RecordWrite] = {}
        self.sent = 0  # events handed to the topics: the simulated clock
        self.applied_events = 0
        #: Called with every step's outcome, once the replay has applied it.
        self.on_outcome: Callable[[StepOutcome], None] | None = None
        self._offsets: dict[str, int] = {}
        self._published: ModelSnapshot | None = None
        self._next_snapshot = settings.snapshot_interval
        self._next_refresh = settings.model_refresh_interval

    @property
    def clock(self) -> float:
        """Seconds since the start, as if events arrived at ``rate`` a second."""
        return self.sent / self.rate

    def send(self, message: Message) -> None:
        """Put one message on its topic's partition, chosen by key as a producer would."""
        self._put(message.source, message.key.encode(), orjson.dumps(message.value))
        self.sent += message.events

    def _put(self, source: str, key: bytes, value: bytes) -> None:
        partition = zlib.crc32(key) % self.partitions
        log = f"{source}/{partition}"
        offset = self._offsets.get(log, 0)
        self._offsets[log] = offset + 1
        self.queues.setdefault(log, deque()).append(SourceMessage(source, log, offset, key, value))

    def feed(self, generator: TrafficGenerator, events: float) -> None:
        """Send ``generator``'s picked customers' sessions until ``events`` events are sent,
        consuming them a fetch's worth (1,000 events) at a time, then the rest."""
        drained = 0
        while self.sent < events:
            for message in generator.session(generator.pick()):
                self.send(message)
            if self.sent - drained >= 1000:
                self.drain()
                drained = self.sent
        self.drain()

    def drain(self, per_fetch: int = 50) -> None:
        """Consume everything sent so far, in batches of ``SEGMENTER_BATCH_SIZE`` made of
        fetches of up to ``per_fetch`` records from each partition in turn."""
        size = self.settings.batch_size
        batch: list[SourceMessage] = []
        while any(self.queues.values()):
            for log in sorted(self.queues):
                queue = self.queues[log]
                for _ in range(min(per_fetch, len(queue))):
                    batch.append(queue.popleft())
                    if len(batch) >= size:
                        self._run(batch)
                        batch = []
        if batch:
            self._run(batch)
        while self.schedule.has_due(self.watermark):  # what a step left due (bounded per step)
            self._run([])

    def _run(self, batch: list[SourceMessage]) -> None:
        outcome = self.step.run(
            batch, self.profiles, self.model, self.watermark, self.schedule, 0, self.clock
        )
        self.watermark = outcome.watermark
        for customer_id, profile in outcome.states.items():
            if profile is None:
                self.profiles.pop(customer_id, None)
            else:
                self.profiles[customer_id] = profile
        for merged_id in outcome.aliases:  # identity stitching: the merged id's record goes
            self.records.pop(merged_id, None)
        for write in outcome.writes:
            self.records[write.customer_id] = write
        for key, value in outcome.forwards:  # to the identity topic, consumed like the others
            self._put(IDENTITY, key, value)
        self.applied_events += sum(outcome.events.values())
        if not self.fixed_model:
            self._train(outcome.samples)
        if self.on_outcome is not None:
            self.on_outcome(outcome)

    def _train(self, samples: Iterable[dict[str, object]]) -> None:
        """The trainer's learning, its snapshot timer and the workers' refresh timer."""
        was_ready = self.trainer.ready
        for sample in samples:
            # The customer's hashed key: the trainer counts each customer once (as the worker's).
            self.trainer.learn_one(sample["x"], sample.get("key"))  # type: ignore[arg-type]
            if sample["rfm"]:
                self.population.update(*sample["rfm"])  # type: ignore[misc]
        clock = self.clock
        if self.trainer.ready and (not was_ready or clock >= self._next_snapshot):
            snapshot = self.trainer.snapshot().to_dict()
            cuts = self.population.cuts()
            if cuts is not None:
                snapshot["rfm_cuts"] = cuts.to_dict()
            self._published = ModelSnapshot.from_dict(snapshot)
            self._next_snapshot = clock + self.settings.snapshot_interval
        if self._published is not None and (self.model is None or clock >= self._next_refresh):
            self.model = self._published
            self._next_refresh = clock + self.settings.model_refresh_interval

    def advance(self, ts: int) -> None:
        """Move event time to ``ts`` with one event of a customer of its own (as other
        customers' events do in the worker); lifecycle expiry follows."""
        self.send(
            Message(
                "clickstream",
                _CLOCK_CUSTOMER,
                {
                    "event_id": f"clock-{ts}",
                    "type": "page_view",
                    "customer_id": _CLOCK_CUSTOMER,
                    "ts": ts,
                },
            )
        )
        self.drain()


#: Persona accuracy is measured with a catalog whose every number is moved by up to this share
#: from the generator's (what a marketer writes by hand, not the true centroids).
CATALOG_JITTER = 0.3


@dataclass
class EvalResult:
    """One draw's figures. ``customers``: profiles at the end; ``warm_customers``: those scored
    (past warm-up, not bots); ``stable_customers``: those in the id-change figure (not
    switchers)."""

    events: int
    customers: int
    ari: float
    persona_accuracy: float
    id_changes: float  # share of unchanged customers whose segment moves as the model learns
    warm_customers: int
    segments_used: int
    lifecycle_exits: int = 0
    lifecycle_on_time: float = 1.0  # share of stage changes made on the first advance past due
    stable_customers: int = 0
    seed: int = 0

    def figures(self) -> dict[str, float]:
        """The figures a multi-draw report summarizes, by name."""
        return {
            "ari": self.ari,
            "persona_accuracy": self.persona_accuracy,
            "id_changes": self.id_changes,
            "lifecycle_on_time": self.lifecycle_on_time if self.lifecycle_exits else 0.0,
        }

    def rows(self) -> list[tuple[str, str, str, bool]]:
        """(figure, value, target, met) for printing one draw."""
        return [
            (
                "adjusted Rand index, clusters vs true personas",
                f"{self.ari:.3f}",
                ">= 0.90",
                self.ari >= 0.9,
            ),
            (
                f"persona accuracy, catalog moved +-{CATALOG_JITTER:.0%}",
                f"{self.persona_accuracy:.1%}",
                ">= 90%",
                self.persona_accuracy >= 0.9,
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
    catalog: SegmentCatalog | None = None,
    events: int = 100_000,
    customers: int = 2000,
    seed: int = 7,
    min_sessions: int = 3,
    rate: float = 2000.0,
    on_progress: Callable[[int], None] | None = None,
    realism: Realism | None = None,
    jitter: float = CATALOG_JITTER,
) -> EvalResult:
    """Run ``events`` generated events through the worker's step; score customers past warm-up
    (at least ``min_sessions`` sessions: one session says little about who someone is) by the
    records the worker would hold at the end.

    Who counts where: bots (no persona) and one-visit bounces (never past warm-up) are in the
    traffic and the training but in no figure; a mixed customer's true persona is the one most
    of their sessions come from; a customer who switched persona is labelled by the persona
    they are at the end, and left out of the id-change figure (their behavior changed).

    Personas are matched with a catalog of the generator's numbers, each moved by up to
    ``jitter`` (seeded by ``seed``: :func:`persona_catalog`), unless ``catalog`` is given.
    """
    realism = realism if realism is not None else Realism()
    if catalog is None:
        catalog = replace(
            build_catalog(settings),
            personas=persona_catalog(settings, events, customers, seed, realism, jitter),
        )
    draw = run_draw(
        settings, catalog, events, customers, seed, min_sessions, rate, on_progress, realism
    )
    replay, generator, half, half_model = draw.replay, draw.generator, draw.half, draw.half_model
    final = replay.model
    assert final is not None
    step_catalog = replay.step.catalog_for(final)
    warm = {
        c: p
        for c, p in replay.profiles.items()
        if p.sessions >= min_sessions and generator.kind(c) in ("pure", "mixed", "switcher")
    }
    truth = [generator.truth[c].name for c in warm]
    clusters = [p.segment for p in warm.values()]
    personas = [p.persona for p in warm.values()]
    changed = 0
    for profile in half.values():
        # The same behavior scored by the midpoint model, then by the final one as the worker
        # would: with hysteresis from where the midpoint model put it.
        profile.segment = assign(profile, half_model, step_catalog).segment
        changed += assign(profile, final, step_catalog).segment != profile.segment
    exits, on_time = _lifecycle_exits(replay, generator.rng, set(warm))
    return EvalResult(
        events=replay.sent,
        customers=len(replay.profiles),
        ari=adjusted_rand_index(truth, clusters),
        persona_accuracy=sum(t == p for t, p in zip(truth, personas, strict=True)) / len(truth),
        id_changes=changed / len(half) if half else 0.0,
        warm_customers=len(warm),
        segments_used=len(set(clusters)),
        lifecycle_exits=exits,
        lifecycle_on_time=on_time,
        stable_customers=len(half),
        seed=seed,
    )


@dataclass
class DrawRun:
    """One draw's traffic through the step: the replay at the end, its generator (the truth),
    and the customers past warm-up at the midpoint (``half``, not switchers, nor bots) with the
    model they were scored by then."""

    replay: Replay
    generator: TrafficGenerator
    half: dict[str, CustomerProfile]
    half_model: ModelSnapshot


def run_draw(
    settings: Settings,
    catalog: SegmentCatalog,
    events: int,
    customers: int,
    seed: int,
    min_sessions: int = 3,
    rate: float = 2000.0,
    on_progress: Callable[[int], None] | None = None,
    realism: Realism | None = None,
) -> DrawRun:
    """``events`` generated events (seed ``seed``) through the worker's step and trainer."""
    generator = TrafficGenerator(
        customers=customers, seed=seed, session_gap_ms=60_000, realism=realism or Realism()
    )
    replay = Replay(settings, catalog, rate)
    half: dict[str, CustomerProfile] = {}
    half_model: ModelSnapshot | None = None
    progress = 0
    while replay.sent < events:
        for message in generator.session(generator.pick()):
            replay.send(message)
        if replay.sent - progress >= 1000:  # a fetch's worth at a time
            replay.drain()
            progress = replay.sent
            if on_progress:
                on_progress(replay.sent)
        if half_model is None and replay.sent >= events // 2 and replay.model is not None:
            replay.drain()
            half_model = replay.model
            half = {
                c: CustomerProfile.from_state(p.to_state())
                for c, p in replay.profiles.items()
                if p.sessions >= min_sessions and generator.kind(c) in ("pure", "mixed")
            }
    replay.drain()
    assert replay.model is not None and half_model is not None, (
        "too few events for a model; raise --events"
    )
    return DrawRun(replay, generator, half, half_model)


def persona_catalog(
    settings: Settings,
    events: int,
    customers: int,
    seed: int,
    realism: Realism | None = None,
    jitter: float = CATALOG_JITTER,
    pilot_share: float = 0.2,
) -> PersonaCatalog:
    """What a marketer would write by hand: each persona's average behavior, every number
    moved by a random factor in ``[1 - jitter, 1 + jitter]`` (seeded by ``seed``).

    The averages are measured, not copied from the generator's parameters: a pilot of
    ``pilot_share`` of the draw (other customers, another seed; as many sessions per customer
    over the same span of event time) goes through the worker's step, and each persona's
    prototype is the mean, in readable units, of its pure customers past warm-up (3+ sessions).
    That is the persona's true centre as the features see it, before the jitter.
    """
    n = max(50, round(customers * pilot_share))
    scale = customers / n
    generator = TrafficGenerator(
        customers=n,
        seed=seed + 1_000_003,
        session_gap_ms=round(60_000 * scale),
        realism=realism,
    )
    replay = Replay(settings, SegmentCatalog())
    replay.feed(generator, events / scale)
    sums: dict[str, dict[str, float]] = {}
    counts: dict[str, int] = {}
    for customer_id, profile in replay.profiles.items():
        if profile.sessions < 3 or generator.kind(customer_id) != "pure":
            continue
        name = generator.truth[customer_id].name
        readable = prototype_of(feature_vector(profile))
        row = sums.setdefault(name, dict.fromkeys(readable, 0.0))
        for field_name, value in readable.items():
            row[field_name] += value
        counts[name] = counts.get(name, 0) + 1
    rng = random.Random(f"catalog-{seed}-{customers}")
    personas = []
    for persona in generator.personas:
        if persona.name not in counts:
            raise ValueError(f"the pilot saw no customer of {persona.name}; raise --events")
        prototype = {}
        for field_name, total in sums[persona.name].items():
            value = total / counts[persona.name] * rng.uniform(1.0 - jitter, 1.0 + jitter)
            scale_of = PROTOTYPE_FIELDS[field_name][1]
            prototype[field_name] = round(value if scale_of else min(1.0, value), 4)
        personas.append(Persona(persona.name, "", prototype))
    return PersonaCatalog(personas)


def prototype_of(x: Mapping[str, float]) -> dict[str, float]:
    """A feature vector in the persona catalog's readable units (``PROTOTYPE_FIELDS``)."""
    out = {}
    for name, (target, scale) in PROTOTYPE_FIELDS.items():
        value = x.get(target, 0.0)
        out[name] = math.expm1(value * math.log1p(scale)) if scale else value
    return out


def _lifecycle_exits(replay: Replay, rng: random.Random, customers: set[str]) -> tuple[int, float]:
    """Move event time past the traffic in random steps, as idle time would, through the
    step's own schedule, and count stage changes published on the first advance past their due
    time: after each step, every customer's record must show the stage the policy gives at
    the watermark; a record that lags behind is a miss."""
    policy = replay.step.catalog.lifecycle
    stages = {c: replay.records[c].record["lifecycle"] for c in customers}
    exits = missed = 0
    watermark = replay.watermark
    end = watermark + 200 * DAY_MS
    while watermark < end:
        watermark += rng.randrange(DAY_MS // 4, 3 * DAY_MS)
        replay.advance(watermark)
        for customer_id in customers:
            published = replay.records[customer_id].record["lifecycle"]
            if published != stages[customer_id]:
                exits += 1
                stages[customer_id] = published
            missed += published != policy.stage(replay.profiles[customer_id], watermark)
    return exits, exits / (exits + missed) if exits + missed else 0.0
