"""`segmenter bench --core`: the pure step alone, in-process: no broker, no Redis, no Faust.

What one worker does per batch, minus the I/O: the messages as the worker builds them
(``SourceMessage``, the key's partition noted), ``SegmentStep.run`` on batches of the worker's
``SEGMENTER_BATCH_SIZE`` with the worker's own ``ProfileSource`` (``TableProfiles``: the live
profiles it keeps between batches, up to ``SEGMENTER_PROFILE_CACHE``, else each decoded from
its serialized state as the table holds it), then the encodings the worker's effects pay for:
each write's Redis value (``record_value``), each change and the batch's samples as JSON, and
each changed profile's state (``encode_profile``) for the table. The step is the worker's
(``build_step``, with the worker's decoder) and scores with a model trained first on the step's
own samples (``segmenter eval``'s ``Replay``). ``SEGMENTER_*`` settings apply as to a worker:
``SEGMENTER_PROFILE_CACHE=0 segmenter bench --core`` measures decoding every profile per batch.

The traffic is the throughput runs' (``bench_traffic``): generated clickstream events
(``TrafficGenerator(arrays=False)``), customers interleaved, one event per message or arrays of
exactly 10 events of one customer (the generator's own arrays are a session's clicks, of any
length, so a customer's clicks are regrouped by 10). Every customer first gets a few events in
an untimed warm-up pass, so the timed batches update existing profiles; each repetition starts
from that same state. The figure is the median of the repetitions' events/s (and the worst);
one more, instrumented, repetition times each stage with ``time.perf_counter_ns`` (its timers
add a little: the report gives both totals).
"""

from __future__ import annotations

import copy
import gc
import statistics
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, cast

import orjson
from rich.console import Console

import models.clustering
import models.facts
import models.features
import models.personas
import models.segments
import models.step
from models.clustering import ModelSnapshot
from models.features import CustomerProfile
from models.schedule import DueSchedule
from models.step import SegmentStep, SourceMessage, StepOutcome
from stream.build import core_build, core_compiled
from stream.settings import Settings
from stream.store.codec import record_value
from stream.tools.bench_report import STEP_ALONE, Figure, Floor, Report
from stream.tools.bench_traffic import as_arrays, as_singles, click_streams
from stream.tools.generator import Message, TrafficGenerator
from stream.worker.app import build_step, tune_gc
from stream.worker.effects import encode_profile
from stream.worker.faust_adapt import CustomerTable
from stream.worker.segmenting import TableProfiles

__all__ = [
    "CORE_SECTION",
    "STEP_ALONE",
    "CoreConfig",
    "CoreResult",
    "CoreRun",
    "StageClock",
    "add_to_report",
    "print_core",
    "run_core",
    "train_model",
]

CORE_SECTION = "The step alone, in-process (no broker, no Redis)"
#: Events per second the step alone should reach, per run.
TARGETS = {"one event per message": 25_000.0, "arrays of 10": 120_000.0}
GC = "garbage collection (wherever it ran)"
#: The rest of the instrumented run: what no timed part claims.
REST = "the rest (the step's loop, guard, schedule; timers)"

# Raw message fields as the worker reads them off Faust: source, topic, partition, offset,
# key, value.
_Raw = tuple[str, str, int, int, bytes, bytes]


@dataclass
class CoreConfig:
    customers: int = 5_000  # as the throughput runs
    single_events: int = 10_000  # timed, per repetition
    array_events: int = 50_000  # timed, per repetition
    warm_events: int = 2  # per customer, untimed, before the timed batches (arrays: one array)
    repeats: int = 5
    train_events: int = 20_000  # at least, through the Replay that trains the model

    @classmethod
    def quick(cls) -> CoreConfig:
        """A smoke run: small volumes, numbers not meaningful (still more customers than a
        batch has messages, so a batch of singles scores one customer per event)."""
        return cls(1_000, 2_000, 10_000, 2, 2, 10_000)


@dataclass
class CoreRun:
    """The step alone on one kind of traffic: events/s per repetition, time by stage."""

    label: str
    events: int  # timed events per repetition
    messages: int
    batches: int
    rates: list[float]  # events/s, one per repetition
    target: float
    stages: list[tuple[str, float]] = field(default_factory=list)  # µs per event
    instrumented_us: float = 0.0  # µs per event of the instrumented repetition
    records: int = 0  # records written per repetition: one scoring each
    customers: int = 0  # in the traffic, each seen in the warm-up

    @property
    def median(self) -> float:
        return statistics.median(self.rates)

    @property
    def worst(self) -> float:
        return min(self.rates)

    @property
    def us_per_event(self) -> float:
        return 1e6 / self.median if self.median else float("inf")

    @property
    def met(self) -> bool:
        return self.median >= self.target


@dataclass
class CoreResult:
    runs: list[CoreRun]
    batch_size: int
    profile_cache: int
    model_version: int
    trained_samples: int
    seconds: float = 0.0


# -- the model ---------------------------------------------------------------------------------


def train_model(settings: Settings, events: int, customers: int, seed: int = 71) -> ModelSnapshot:
    """A model trained as the worker's trainer would, on the step's own samples (``Replay``)."""
    from stream.tools.evaluate import Replay

    replay = Replay(settings)
    generator = TrafficGenerator(customers=customers, seed=seed)
    drained = 0
    while replay.sent < events or replay.model is None:
        if replay.sent > 20 * events + 200_000:
            raise RuntimeError("no model after many events: is warmup_samples too high?")
        for message in generator.session(generator.pick()):
            replay.send(message)
        if replay.sent - drained >= 1000:  # a fetch's worth at a time, as `segmenter eval`
            replay.drain()
            drained = replay.sent
    replay.drain()
    assert replay.model is not None
    return replay.model


# -- the stages ----------------------------------------------------------------------------------


class StageClock:
    """Time spent in each stage, exclusive of the timed stages called inside it (ns); and in
    the garbage collector, wherever it ran (``on_gc``, a ``gc.callbacks`` entry)."""

    def __init__(self) -> None:
        self.ns: Counter[str] = Counter()
        self._children: list[int] = []  # time of timed calls inside each open timed call
        self._gc_started = 0

    def on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter_ns()
            return
        took = time.perf_counter_ns() - self._gc_started
        self.ns[GC] += took
        if self._children:
            self._children[-1] += took  # not the stage's own time

    def wrap(self, stage: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        ns, children, clock = self.ns, self._children, time.perf_counter_ns

        def timed(*args: Any, **kwargs: Any) -> Any:
            children.append(0)
            started = clock()
            try:
                return fn(*args, **kwargs)
            finally:
                took = clock() - started
                ns[stage] += took - children.pop()
                if children:
                    children[-1] += took

        return timed


#: Parts of the step timed by wrapping them while the instrumented repetition runs: (stage,
#: owner, attribute), each counted without the parts it calls (``assign`` without the facts,
#: vector, clusters, personas and rules it calls). The step (and ``assign``) calls them by these
#: names, so a wrapper put there is what runs.
STEP_PARTS: tuple[tuple[str, Any, str], ...] = (
    ("feature updates (CustomerProfile.apply)", models.features.CustomerProfile, "apply"),
    ("scoring: facts (customer_facts)", models.segments, "customer_facts"),
    ("scoring: feature vector (feature_vector)", models.segments, "feature_vector"),
    ("scoring: feature vector (feature_vector)", models.step, "feature_vector"),
    (
        "scoring: the batch's points (score_points, numpy)",
        models.step,
        "score_points",
    ),
    (
        "scoring: clusters (ModelSnapshot.predict, distance)",
        models.clustering.ModelSnapshot,
        "predict",
    ),
    (
        "scoring: clusters (ModelSnapshot.predict, distance)",
        models.clustering.ModelSnapshot,
        "distance",
    ),
    ("scoring: personas (PersonaCatalog.match)", models.personas.PersonaCatalog, "match"),
    ("scoring: rules (evaluate_rules)", models.segments, "evaluate_rules"),
    ("scoring: the rest of assign", models.step, "assign"),
    ("segment changes (changes_between, remember)", models.step, "changes_between"),
    ("segment changes (changes_between, remember)", models.step, "remember"),
    ("due time (SegmentCatalog.next_change)", models.segments.SegmentCatalog, "next_change"),
    (
        "record build (SegmentAssignment.record, members)",
        models.segments.SegmentAssignment,
        "record",
    ),
    (
        "record build (SegmentAssignment.record, members)",
        models.segments.SegmentAssignment,
        "members",
    ),
    ("training samples (_sample: vector, RFM)", models.step, "_sample"),
)
#: The step's decoder: its ``decode`` (the one the worker gives it, else the core's
#: ``decode_message``), timed per step instance (``time_decoder``).
DECODE = "decode events (the step's decoder)"
#: Parts of the worker's shell around the step, timed the same way (``Shell``'s attributes).
SHELL_PARTS: tuple[tuple[str, str], ...] = (
    ("messages in (SourceMessage, key's partition)", "messages_in"),
    ("profile in (live, else orjson.loads, from_state)", "profile_in"),
    ("record encode (record_value: JSON, zstd)", "encode_record"),
    ("changes and samples to JSON", "encode_json"),
    ("profile state out (encode_profile)", "encode_state"),
    ("live profiles kept (TableProfiles.saved)", "keep_live"),
)


def time_decoder(step: SegmentStep, clock: StageClock) -> tuple[tuple[str, Any, str], ...]:
    """Time the decoder ``step`` runs: its own ``decode`` if it has one (wrapped here, on this
    instance); else the part to wrap for the duration, the core's ``decode_message``."""
    intake = step.intake
    intake.decode = clock.wrap(DECODE, intake.decode)
    return ()


@contextmanager
def instrumented(clock: StageClock, extra: Sequence[tuple[str, Any, str]] = ()) -> Iterator[None]:
    """Every ``STEP_PARTS`` entry (and ``extra``) wrapped in ``clock``, and the garbage
    collector timed, for the duration; restored after."""
    saved: list[tuple[Any, str, Any]] = []
    gc.callbacks.append(clock.on_gc)
    try:
        for stage, owner, name in (*STEP_PARTS, *extra):
            original = vars(owner)[name]
            saved.append((owner, name, original))
            setattr(owner, name, clock.wrap(stage, original))
        yield
    finally:
        for owner, name, original in reversed(saved):
            setattr(owner, name, original)
        gc.callbacks.remove(clock.on_gc)


# -- one worker's batches, in-process ----------------------------------------------------------


class _Table:
    """What ``TableProfiles`` reads of the worker's table: serialized states and partitions."""

    def __init__(self, data: dict[str, bytes], partition_of: dict[str, int]) -> None:
        self.data = data
        self.partition_of = partition_of

    def load(self, key: str) -> bytes | None:
        return self.data.get(key)


class Shell:
    """The worker's per-batch work around the step (``Segmenting.handle`` and ``Effects``),
    with the I/O left out: each part is an attribute, so a run can time it."""

    def __init__(
        self, step: SegmentStep, model: ModelSnapshot, state: WarmState, live: int
    ) -> None:
        self.step = step
        self.model = model
        self.table = _Table(dict(state.data), dict(state.partition_of))
        self.profiles = TableProfiles(cast(CustomerTable, self.table), live)
        self.profiles.owned = set(state.owned)
        # The live profiles a worker holds after the warm-up batches (up to ``live``), decoded
        # afresh for each run: a run updates them in place.
        self.profiles.saved(
            {
                c: CustomerProfile.from_state(orjson.loads(raw), owned=True)
                for c, raw in state.data.items()
            }
        )
        self.schedule = copy.deepcopy(state.schedule)
        self.watermark = state.watermark
        self.records = 0  # written, so far
        self.messages_in: Callable[[Sequence[_Raw]], list[SourceMessage]] = self._messages_in
        self.profile_in: Callable[[str], CustomerProfile | None] = self.profiles.get
        self.encode_record: Callable[..., tuple[bytes, bytes]] = record_value
        self.encode_json: Callable[[Any], bytes] = orjson.dumps
        self.encode_state: Callable[[CustomerProfile | None], bytes | None] = encode_profile
        self.keep_live: Callable[[dict[str, CustomerProfile | None]], None] = self.profiles.saved

    def get(self, customer_id: str) -> CustomerProfile | None:
        """The step's ``ProfileSource``."""
        return self.profile_in(customer_id)

    def _messages_in(self, batch: Sequence[_Raw]) -> list[SourceMessage]:
        messages = []
        partition_of = self.table.partition_of
        for source, topic, partition, offset, key, value in batch:
            messages.append(SourceMessage(source, f"{topic}/{partition}", offset, key, value))
            partition_of[key.decode("utf-8", "replace")] = partition
        return messages

    def run(self, batch: Sequence[_Raw]) -> int:
        """One batch through the step and the encodings of its effects; events applied."""
        outcome: StepOutcome = self.step.run(
            self.messages_in(batch),
            self,
            self.model,
            self.watermark,
            self.schedule,
            now_ms=int(time.time() * 1000),
            clock=time.monotonic(),
        )
        for write in outcome.writes:
            self.encode_record(write)
        for change in outcome.changes:
            self.encode_json(change.to_dict())
        if outcome.samples:
            self.encode_json(outcome.samples)
        data = self.table.data
        for customer_id, profile in outcome.states.items():
            state = self.encode_state(profile)
            if state is None:
                data.pop(customer_id, None)
            else:
                data[customer_id] = state
        self.keep_live(outcome.states)
        self.watermark = outcome.watermark
        self.records += len(outcome.writes)
        return sum(outcome.events.values())


@dataclass
class WarmState:
    """The table, partitions, schedule and watermark after the untimed warm-up batches."""

    data: dict[str, bytes] = field(default_factory=dict)
    partition_of: dict[str, int] = field(default_factory=dict)
    owned: set[int] = field(default_factory=set)
    schedule: DueSchedule = field(default_factory=DueSchedule)
    watermark: int = 0


def as_raw(messages: Sequence[Message], partitions: int) -> list[_Raw]:
    """Messages as the worker reads them: JSON bytes on a partition by key, offsets in order."""
    offsets: dict[int, int] = {}
    out: list[_Raw] = []
    for message in messages:
        key = message.key.encode()
        partition = zlib.crc32(key) % partitions
        offset = offsets.get(partition, 0)
        offsets[partition] = offset + 1
        topic = message.source
        out.append((message.source, topic, partition, offset, key, orjson.dumps(message.value)))
    return out


def batches(raw: Sequence[_Raw], size: int) -> list[Sequence[_Raw]]:
    return [raw[i : i + size] for i in range(0, len(raw), size)]


def measure(
    label: str,
    messages: Sequence[Message],
    warm: int,
    settings: Settings,
    model: ModelSnapshot,
    repeats: int,
) -> CoreRun:
    """The first ``warm`` messages untimed, then the rest ``repeats`` times from that same
    state, then once more instrumented."""
    raw = as_raw(messages, settings.partitions)
    state = warm_up(batches(raw[:warm], settings.batch_size), settings, model)
    timed = batches(raw[warm:], settings.batch_size)
    events = sum(m.events for m in messages[warm:])
    rates = []
    for _ in range(repeats):
        shell = Shell(build_step(settings), model, state, settings.profile_cache)
        applied, seconds = _timed_run(shell, timed)
        if applied != events:
            raise RuntimeError(f"the step applied {applied:,} of {events:,} events")
        rates.append(events / seconds)
    if core_compiled():  # its functions call each other directly, past the stage timers
        return CoreRun(
            label, events, len(raw) - warm, len(timed), rates, TARGETS[label], records=shell.records
        )
    clock = StageClock()
    step = build_step(settings)
    extra = time_decoder(step, clock)
    shell = Shell(step, model, state, settings.profile_cache)
    for stage, name in SHELL_PARTS:
        setattr(shell, name, clock.wrap(stage, getattr(shell, name)))
    with instrumented(clock, extra):
        _, seconds = _timed_run(shell, timed)
    total_ns = seconds * 1e9
    every = dict.fromkeys(
        [DECODE, *(s for s, _, _ in STEP_PARTS), *(s for s, _ in SHELL_PARTS), GC], 0
    )
    every.update(clock.ns)  # each stage, run or not, so every run lists the same ones
    ranked = sorted(every.items(), key=lambda item: -item[1])
    stages = [(stage, ns / 1000 / events) for stage, ns in ranked]
    rest = (total_ns - sum(clock.ns.values())) / 1000 / events
    return CoreRun(
        label,
        events,
        len(raw) - warm,
        len(timed),
        rates,
        TARGETS[label],
        [*stages, (REST, max(rest, 0.0))],
        total_ns / 1000 / events,
        shell.records,
    )


def warm_up(
    warm_batches: Sequence[Sequence[_Raw]], settings: Settings, model: ModelSnapshot
) -> WarmState:
    """The state after the untimed batches: every partition owned, as one worker owns them."""
    owned = set(range(settings.partitions))
    shell = Shell(build_step(settings), model, WarmState(owned=owned), settings.profile_cache)
    for batch in warm_batches:
        shell.run(batch)
    return WarmState(
        shell.table.data, shell.table.partition_of, owned, shell.schedule, shell.watermark
    )


def _timed_run(shell: Shell, timed: Sequence[Sequence[_Raw]]) -> tuple[int, float]:
    applied = 0
    started = time.perf_counter_ns()
    for batch in timed:
        applied += shell.run(batch)
    return applied, max(time.perf_counter_ns() - started, 1) / 1e9


# -- the section -----------------------------------------------------------------------------------


def run_core(
    config: CoreConfig, settings: Settings | None = None, say: Callable[[str], None] = print
) -> CoreResult:
    """Both runs (one event per message, arrays of 10) of the step alone."""
    started = time.monotonic()
    settings = settings if settings is not None else Settings()
    thresholds = gc.get_threshold()
    tune_gc()  # as the worker runs
    try:
        return _run_core(config, settings, say, started)
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


def _run_core(
    config: CoreConfig, settings: Settings, say: Callable[[str], None], started: float
) -> CoreResult:
    say(f"core: training a model on at least {config.train_events:,} events (Replay)")
    model = train_model(settings, config.train_events, config.customers)
    runs = []
    for label, arrays in (("one event per message", False), ("arrays of 10", True)):
        messages, warm, customers = traffic(config, arrays)
        say(
            f"core, {label}: {len(messages) - warm:,} messages of {customers:,} customers "
            f"timed {config.repeats} times, after {warm:,} untimed"
        )
        run = measure(label, messages, warm, settings, model, config.repeats)
        run.customers = customers
        runs.append(run)
        say(
            f"  {run.median:,.0f} events/s (worst {run.worst:,.0f}), "
            f"{run.us_per_event:.1f} µs per event"
        )
    return CoreResult(
        runs,
        settings.batch_size,
        settings.profile_cache,
        model.version,
        model.trained_samples,
        time.monotonic() - started,
    )


def traffic(config: CoreConfig, arrays: bool) -> tuple[list[Message], int, int]:
    """The throughput runs' kind of traffic: the messages, how many of the first are the
    untimed warm-up (the first ``warm_events`` events of each customer; with arrays, the first
    array), and how many customers there are."""
    n = config.customers
    # spare events, as the throughput runs have: every customer has some, and a customer's
    # last few clicks, which do not make an array of 10, are left out
    events = config.array_events if arrays else config.single_events
    per = click_streams(n, events + n * 30, seed=13 if arrays else 12)
    if arrays:
        warm = len(per)
        return as_arrays(per, warm * 10 + events), warm, len(per)
    warm = len(per) * config.warm_events
    return as_singles(per, warm + events), warm, len(per)


def add_to_report(result: CoreResult, report: Report) -> None:
    """The runs' figures beside their targets, the floors' row, the time by stage."""
    for run in result.runs:
        note = (
            f"median of {len(run.rates)} runs of {run.events:,} events, worst "
            f"{run.worst:,.0f} events/s; {run.us_per_event:.1f} µs per event"
        )
        report.add(
            Figure(
                CORE_SECTION,
                run.label,
                run.median,
                "events/s",
                target=f">= {run.target:,.0f} events/s",
                met=run.met,
                note=note,
                floor=Floor.STEP,
                run=run.label,
                extra={"needs": run.target},
            )
        )
        report.rates.setdefault(run.label, {})[STEP_ALONE] = run.median
        if run.stages:  # not measured in a compiled build
            report.core_stages[run.label] = run.stages
            report.core_totals[run.label] = (run.instrumented_us, run.us_per_event)
    report.core_about = describe(result)


def describe(result: CoreResult) -> str:
    """How the step was run, in a sentence."""
    runs = "; ".join(
        f"{r.label}: {r.customers:,} customers, {r.records / r.events:.2f} scored per event"
        for r in result.runs
        if r.events
    )
    return (
        f"Batches of {result.batch_size} messages (SEGMENTER_BATCH_SIZE), customers interleaved, "
        f"every one seen before the timed batches ({runs}); live profiles kept between batches: "
        f"up to {result.profile_cache:,} (SEGMENTER_PROFILE_CACHE); a model (version "
        f"{result.model_version}, {result.trained_samples:,} samples) trained first on the "
        f"step's own samples; the core {core_build()}."
    )


def print_core(result: CoreResult, console: Console) -> None:
    """The section as ``segmenter bench --core`` prints it: plain lines under 100 columns."""

    def line(text: str) -> None:
        console.print(text, markup=False, highlight=False)

    line(f"The step alone, in-process (no broker, no Redis). {describe(result)}")
    line("")
    line(f"{'run':<24}{'events/s':>10}{'worst':>10}{'µs/event':>10}   {'target':<20}met")
    for run in result.runs:
        line(
            f"{run.label:<24}{run.median:>10,.0f}{run.worst:>10,.0f}{run.us_per_event:>10.1f}   "
            f"{f'>= {run.target:,.0f} events/s':<20}{'yes' if run.met else 'no'}"
        )
    line(f"(median and worst of {len(result.runs[0].rates)} repetitions)")
    line("")
    if not any(r.stages for r in result.runs):
        line("µs per event by stage: not measured (a compiled core's functions call each other")
        line("directly, past the stage timers; the pure build times them: make bench ARGS=--core)")
        line(f"({result.seconds:.0f} s)")
        return
    heads = "".join(f"{r.label:>22}" for r in result.runs)
    line(f"{'µs per event by stage (one instrumented run)':<52}{heads}")
    by_run = [dict(r.stages) for r in result.runs]
    for name in dict.fromkeys(s for r in result.runs for s, _ in r.stages):
        cells = "".join(
            f"{_share(d.get(name, 0.0), r):>22}" for d, r in zip(by_run, result.runs, strict=True)
        )
        line(f"{name:<52}{cells}")
    line(
        f"{'total, instrumented':<52}" + "".join(f"{r.instrumented_us:>22.1f}" for r in result.runs)
    )
    line(
        f"{'total, uninstrumented (median)':<52}"
        + "".join(f"{r.us_per_event:>22.1f}" for r in result.runs)
    )
    line(f"({result.seconds:.0f} s)")


def _share(us: float, run: CoreRun) -> str:
    return f"{us:.2f} ({us / run.instrumented_us:4.0%})" if run.instrumented_us else f"{us:.2f}"
