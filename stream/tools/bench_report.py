"""The bench's figures and its report: a Markdown table, what stops each missed target, the
floors, the profiles, a chart."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

from stream.build import core_build

__all__ = ["STEP_ALONE", "Figure", "Floor", "Report", "draw_chart", "fmt", "write_report"]

#: The floors table's row of the step alone, in-process (``bench_core``).
STEP_ALONE = "our step alone, in-process (no Kafka, no Redis, no Faust)"
#: ... and our worker's, and a bare Faust agent's taking batches (``bench_throughput``'s).
OURS = "our worker"
BARE_TAKE = "bare Faust agent, batches"


class Floor(StrEnum):
    """What stops a figure's target when it is missed (``Figure.floor``): the report's "What
    stops each missed target" names it with numbers measured in the same run. ``NO_QUEUE``
    marks a figure that is itself a floor: freshness well under one worker's capacity."""

    WORKER = "the step alone, and what the worker adds to it"
    STEP = "the step's own stages"
    FRESHNESS = "the load against one worker's capacity"
    NO_QUEUE = "freshness without queueing"
    READ = "a bare GET on the same server"
    SCALE = "the machine's cores"
    DEFINITIONS = "the backfill's re-evaluations per second"


@dataclass
class Figure:
    """One measured figure beside its baseline (both from this run); NaN where one was not
    measured (the reason in ``note``)."""

    section: str
    what: str
    ours: float
    unit: str
    baseline: float | None = None
    baseline_name: str = ""
    target: str = ""
    met: bool | None = None
    note: str = ""
    #: What stops its target when missed (None: no floor measured), the traffic shape it was
    #: measured on (a key of ``Report.rates``), and the numbers its floor reads, filled where
    #: the figure is made: "needs" (events/s its target asks for), "rate" (events/s offered),
    #: "p50", "busy" (cores) ... (see ``what_stops``).
    floor: Floor | None = None
    run: str = ""
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or not self.baseline:
            return None
        if math.isnan(self.ours) or math.isnan(self.baseline):
            return None
        return self.ours / self.baseline


@dataclass
class Report:
    figures: list[Figure] = field(default_factory=list)
    #: Per run ("one event per message", "arrays of 10"): time by stage, and by function.
    profiles: dict[str, tuple[list[tuple[str, float]], list[tuple[str, float]]]] = field(
        default_factory=dict
    )
    notes: list[str] = field(default_factory=list)
    #: Per throughput run: events/s of each reader of the same topic (for the floors table).
    rates: dict[str, dict[str, float]] = field(default_factory=dict)
    #: The step alone, in-process, per run: µs per event by stage (one instrumented run).
    core_stages: dict[str, list[tuple[str, float]]] = field(default_factory=dict)
    #: ... and per run, µs per event: (that instrumented run, the median of the plain runs).
    core_totals: dict[str, tuple[float, float]] = field(default_factory=dict)
    core_about: str = ""  # how the step alone was run
    #: Per throughput run: the cores our worker's process used from its first event to its
    #: last, and the machine's busy cores meanwhile (out of ``psutil.cpu_count()``).
    worker_cores: dict[str, tuple[float, float]] = field(default_factory=dict)

    def add(self, figure: Figure) -> Figure:
        self.figures.append(figure)
        return figure


def fmt(value: float, unit: str) -> str:
    """A figure in its unit, to a sensible precision; NaN is a figure not measured.

    >>> fmt(0.4321, "ms"), fmt(12.34, "ms"), fmt(2048, "bytes"), fmt(51234.5, "events/s")
    ('0.432 ms', '12.3 ms', '2,048 B', '51,234 events/s')
    >>> fmt(float("nan"), "events/s")
    'not measured'
    """
    if math.isnan(value):
        return "not measured"
    if unit == "ms":
        return (
            f"{value:.3f} ms"
            if value < 1
            else f"{value:.1f} ms"
            if value < 100
            else (f"{value:,.0f} ms")
        )
    if unit == "s":
        return f"{value:.1f} s"
    if unit == "bytes":
        return f"{value:,.0f} B"
    return f"{value:,.0f} {unit}"


def write_report(report: Report, out: Path, command: str, elapsed: float) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    chart = out.with_suffix(".png")
    draw_chart(report, chart)
    lines = [
        "# Benchmarks",
        "",
        f"Written by `{command}` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC in {elapsed / 60:.1f} "
        f"minutes, on {os.cpu_count()} CPU cores shared by the broker (Tansu), Redis, the "
        "producer and the workers. These machines are shared and noisy: compare each figure "
        "with its baseline, measured in the same run, not with other runs. The core "
        f"(`models/`): {core_build()}.",
        "",
        f"![throughput and ratios]({chart.name})",
        "",
        "| section | figure | ours | baseline | ratio | target | met |",
        "|---|---|---:|---|---:|---|---|",
    ]
    for f in report.figures:
        base = f"{fmt(f.baseline, f.unit)} ({f.baseline_name})" if f.baseline is not None else ""
        ratio = f"{f.ratio:.2f}" if f.ratio is not None else ""
        met = "" if f.met is None else ("yes" if f.met else "**no**")
        what = f.what + (f" ({f.note})" if f.note else "")
        lines.append(
            f"| {f.section} | {what} | {fmt(f.ours, f.unit)} | {base} | {ratio} | {f.target} "
            f"| {met} |"
        )
    lines += what_stops(report)
    if report.rates:
        lines += [
            "",
            "## Floors: time per event on this machine",
            "",
            "The same topic read by each reader, in this run (1 / throughput). What our worker "
            "adds is its time per event less the bare Faust agent's; the profiles below say "
            "where that time goes."
            + (
                " The step alone, in-process, is what our logic costs with no I/O and no "
                "framework at all."
                if any(STEP_ALONE in rates for rates in report.rates.values())
                else ""
            ),
            "",
            "| run | reader | events/s | time per event |",
            "|---|---|---:|---:|",
        ]
        for label, rates in report.rates.items():
            lines += [
                f"| {label} | {name} | {rate:,.0f} | {1e6 / rate:,.1f} µs |"
                for name, rate in rates.items()
                if rate > 0 and name != STEP_ALONE
            ]
            ours, bare = rates.get(OURS, 0), rates.get(BARE_TAKE, 0)
            if ours > 0 and bare > 0:
                lines.append(
                    f"| {label} | our logic (our worker less bare Faust with batches) | | "
                    f"{1e6 / ours - 1e6 / bare:,.1f} µs |"
                )
            alone = rates.get(STEP_ALONE, 0)
            if alone > 0:
                lines.append(f"| {label} | {STEP_ALONE} | {alone:,.0f} | {1e6 / alone:,.1f} µs |")
    lines += _core_stages(report)
    for label, (stages, functions) in report.profiles.items():
        lines += [
            "",
            f"## Where the worker's time goes ({label})",
            "",
            f"py-spy samples of the worker process during the {label} throughput run. By "
            "stage (a sample counts for the innermost of our stages on its stack, else for "
            "the library it is in):",
            "",
            "| share | stage |",
            "|---:|---|",
        ]
        lines += [f"| {share:.1%} | {name} |" for name, share in stages]
        lines += [
            "",
            "By self time (the function on top of the stack):",
            "",
            "| share | function |",
            "|---:|---|",
        ]
        lines += [f"| {share:.1%} | `{name}` |" for name, share in functions]
    if report.notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in report.notes]
    out.write_text("\n".join(lines) + "\n")


def what_stops(report: Report) -> list[str]:
    """The section after the main table: a bullet per figure whose target was missed, naming
    its floor in numbers of this run (or saying that none was measured)."""
    lines = ["", "## What stops each missed target", ""]
    missed = [f for f in report.figures if f.met is False]
    if not missed:
        return [*lines, "Every target measured in this run was met."]
    lines += [
        "Each missed target beside what stops it, in numbers measured in this run.",
        "",
    ]
    told: set[str] = set()  # runs whose worker's floor is told in full already
    for f in missed:
        got = fmt(f.ours, f.unit)
        if f.ratio is not None and f.baseline is not None:
            got += f" = {f.ratio:.2f} x {fmt(f.baseline, f.unit)}"
        if f.floor is Floor.WORKER:
            why = _worker(report, f, told=f.run in told)
            told.add(f.run)
        else:
            why = _WHAT_STOPS.get(f.floor, _no_floor)(report, f)
        lines.append(f"- **{f.section}: {f.what}** ({got}; target {f.target}): {why}")
    return lines


def _no_floor(report: Report, f: Figure) -> str:
    return "no floor is measured for it in this bench."


def _worker(report: Report, f: Figure, told: bool = False) -> str:
    """The step alone against the rate the target needs; what the worker adds beyond it
    (``told``: said already, for another target on the same run)."""
    needs = f.extra.get("needs", math.nan)
    rates = report.rates.get(f.run, {})
    step, ours = rates.get(STEP_ALONE, math.nan), f.ours  # our worker's rate, in each figure
    if not needs > 0:
        return "the rate its target needs was not recorded in this run."
    text = f"it needs {needs:,.0f} events/s ({1e6 / needs:,.1f} µs per event)."
    if not step > 0:
        text += " The step alone was not measured in this run: its floor is not known."
        return text if told else text + _cores(report, f.run)
    text += (
        f" The step alone, in-process, ran {step:,.0f} events/s ({1e6 / step:,.1f} µs per event)"
    )
    if ours > step:
        return text + (
            f", yet our worker ran faster ({1e6 / ours:,.1f} µs per event): the two did not do "
            "the same work in this run (their customers and batches differ) or the machine was "
            "busier while the step ran, so this run does not say what stops the worker."
        )
    if step < needs:
        text += (
            ": below that, so the worker cannot pass it whatever its I/O costs (the step's time "
            'by stage is in "Where the step\'s time goes").'
        )
    else:
        text += ": above that, so what stops it is what the worker adds to the step."
    if told:
        return text + " What the worker adds beyond the step: as for the target above."
    bare = rates.get(BARE_TAKE, math.nan)
    text += (
        f" The worker adds {1e6 / ours - 1e6 / step:,.1f} µs per event beyond the step "
        f"({1e6 / ours:,.1f} µs against {1e6 / step:,.1f}: Faust, Kafka, the Redis client, "
        "the trainer)"
        + (f"; a bare Faust agent taking batches costs {1e6 / bare:,.1f} µs" if bare > 0 else "")
        + "."
    )
    text += _cores(report, f.run)
    profile = report.profiles.get(f.run)
    if not profile:
        return text + " No profile of the worker was taken in this run."
    top = sorted(profile[0], key=lambda stage: -stage[1])[:3]
    return (
        text + " Its profile's largest stages: " + "; ".join(f"{n} {s:.1%}" for n, s in top) + "."
    )


def _cores(report: Report, run: str) -> str:
    """How busy the worker's process was over the run: near one core, under one interpreter
    lock, what it adds is its own work; well below, it also waited (the broker, Redis)."""
    if run not in report.worker_cores:
        return ""
    worker, machine = report.worker_cores[run]
    if not worker > 0:
        return ""
    text = f" From its first event to its last the worker's process used {worker:.2f} of a core" + (
        f" (the machine's cores {machine:.2f} busy)" if machine > 0 else ""
    )
    if worker >= 0.85:
        return text + ": busy nearly all the time, so what it adds is its own work, not waiting."
    return text + f": idle about {1 - worker:.0%} of the time, waiting on the broker or Redis."


def _step(report: Report, f: Figure) -> str:
    """The step's µs per event against the target's budget, and its largest stages."""
    needs = f.extra.get("needs", math.nan)
    if not (needs > 0 and f.ours > 0):
        return "its rate, or the rate its target needs, was not measured in this run."
    budget, took = 1e6 / needs, 1e6 / f.ours
    text = (
        f"at {needs:,.0f} events/s its budget is {budget:,.1f} µs per event; it took "
        f"{took:,.1f} µs, {took / budget:.1f}x the budget."
    )
    stages = report.core_stages.get(f.run)
    if not stages:
        return text + " Its time by stage was not measured in this run."
    top = sorted(stages, key=lambda stage: -stage[1])[:3]
    total = report.core_totals.get(f.run, (math.nan, math.nan))[0]
    return (
        text
        + f" Its three largest stages (the instrumented run, {total:,.1f} µs per event in all): "
        + "; ".join(f"{name} {us:,.1f} µs" for name, us in top)
        + "."
    )


def _freshness(report: Report, f: Figure) -> str:
    """The offered rate against one worker's throughput on the same traffic shape, and what
    the worker applied while the probes were sent."""
    rate, p50 = f.extra.get("rate", math.nan), f.extra.get("p50", math.nan)
    applied, offered = f.extra.get("applied", math.nan), f.extra.get("offered", math.nan)
    window = offered > 0 and applied >= 0  # False for NaN: not measured
    capacity = report.rates.get(f.run, {}).get(OURS, math.nan)
    if capacity > 0:
        load = rate / capacity
        text = (
            f"the offered {rate:,.0f} events/s is {load:.2f} of one worker's throughput on "
            f"{f.run} in this run ({capacity:,.0f} events/s)"
        )
        if not window:  # else what the worker applied says it, below
            text += ": " + (
                "above its capacity, the probes queue behind a growing backlog"
                if load >= 1
                else "near its capacity, the probes queue behind the load"
                if load >= 0.8
                else "well under its capacity, so the load alone does not explain it"
            )
        text += f" (p50 {fmt(p50, 'ms')})."
    else:
        text = (
            f"our worker's throughput on {f.run} was not measured in this run, so the load "
            f"against its capacity is not known (p50 {fmt(p50, 'ms')})."
        )
    if window:
        # What the worker did while the probes were sent (the rates over the window's second
        # half), with the bench's producer threads and the broker beside it on the same cores.
        text += (
            f" While the probes were sent (their window's second half) the worker applied "
            f"{applied:,.0f} events/s of the "
            f"{offered:,.0f} offered ({applied / offered:.2f}), on "
            f"{f.extra.get('cores', math.nan):.2f} of a core, with the machine's "
            f"{f.extra.get('machine', math.nan):.0f} cores {f.extra.get('busy', math.nan):.2f} "
            "busy (the bench's producer and the broker beside it): "
            + (
                "it fell behind, and the probes queued behind the backlog."
                if applied < 0.95 * offered
                else "it kept up; each probe waited for the batch in progress, then its own."
            )
        )
    broker, worker = f.extra.get("to_broker_p50", math.nan), f.extra.get("to_redis_p50", math.nan)
    if broker >= 0 and worker >= 0:
        text += (
            f" Of a probe's time, the send until the broker acknowledged it (the bench's "
            f"producer beside its load, and the broker) took p50 {fmt(broker, 'ms')}, p99 "
            f"{fmt(f.extra.get('to_broker_p99', math.nan), 'ms')}; from there until it was "
            f"readable in Redis (the worker) p50 {fmt(worker, 'ms')}, p99 "
            f"{fmt(f.extra.get('to_redis_p99', math.nan), 'ms')}."
        )
    floor = next((g for g in report.figures if g.floor is Floor.NO_QUEUE), None)
    if floor is None:
        return text + " The floor without queueing was not measured in this run."
    return text + f" The floor without queueing, {floor.what}: {fmt(floor.ours, floor.unit)}."


def _read(report: Report, f: Figure) -> str:
    """Our client's read against a bare GET of the same keys, interleaved."""
    bare = f.baseline if f.baseline is not None else math.nan
    if math.isnan(bare):
        return "the bare redis-py GET was not measured in this run."
    text = f"a bare redis-py GET's p99, in the same reads, was {fmt(bare, 'ms')}"
    if bare > 1:
        return (
            text + f", itself above 1 ms: the machine ({os.cpu_count()} cores shared by the "
            "broker, Redis, the producer and the worker, under ingest) is the floor."
        )
    if f.ours > 1.5 * bare:
        return text + f": our client adds {f.ours - bare:,.3f} ms over it at p99."
    return text + f", leaving {1 - bare:,.3f} ms of the 1 ms to our client."


def _scale(report: Report, f: Figure) -> str:
    """The whole machine's busy cores, and the workers' own, during the two runs
    (``bench_scale``)."""
    cores, busy, workers = (f.extra.get(k, math.nan) for k in ("cores", "busy", "by workers"))
    one, by_one = (f.extra.get(k, math.nan) for k in ("busy with one", "by the one worker"))
    if math.isnan(busy):
        return "the machine's CPU use was not measured in this run: no floor to name."
    text = (
        f"the machine's cores were {busy:.1f} of {cores:.0f} busy during the two-worker run "
        f"and {one:.1f} during the one-worker run; the two workers themselves used {workers:.1f} "
        f"cores, the one worker {by_one:.1f}"
        + (f" (two had {workers / by_one:.2f}x the CPU of one)" if by_one > 0 else "")
    )
    if busy >= 0.9 * cores:
        return text + (
            ". With the cores full, the workers get what the broker, Redis, the producer (it "
            "loads the topic during the run) and anything else on the machine leave them: the "
            "machine's cores are the floor."
        )
    return text + ". The cores were not all busy, so they alone do not stop it."


def _definitions(report: Report, f: Figure) -> str:
    """The worker's own backfill: customers re-evaluated per second, against what the target
    leaves it after the time from the publish to its start, and its rate cap."""
    n, seconds = f.extra.get("customers", math.nan), f.extra.get("backfill seconds", math.nan)
    cap, allowed = f.extra.get("rate cap", 0.0), f.extra.get("seconds allowed", math.nan)
    if not seconds > 0:
        return "the worker's own backfill time was not measured in this run."
    lead = f.ours - seconds
    rate = n / seconds
    text = (
        f"the worker's own backfill took {seconds:.1f} s of it: {n:,.0f} customers re-evaluated "
        f"at {rate:,.0f} a second; the rest, {lead:.1f} s, is from the publish to the "
        "backfill's start."
    )
    budget = allowed - lead
    if not budget > 0:
        return text + (
            f" That alone is {allowed:.0f} s or more: the floor is the time before the "
            "backfill starts."
        )
    text += f" {allowed:.0f} s leaves the backfill {budget:.1f} s: {n / budget:,.0f} a second."
    if cap > 0 and n / cap > budget:
        return text + (
            f" Its rate cap (SEGMENTER_BACKFILL_RATE {cap:,.0f}/s) forbids that: "
            f"{n / cap:.1f} s at least."
        )
    if cap > 0 and rate >= 0.95 * cap:
        return text + (
            f" It ran at its rate cap (SEGMENTER_BACKFILL_RATE {cap:,.0f}/s): the cap is the "
            "floor in this run."
        )
    return text + (
        " The floor is the re-evaluation itself"
        + (
            f" (below its rate cap, SEGMENTER_BACKFILL_RATE {cap:,.0f}/s)."
            if cap > 0
            else " (no rate cap, SEGMENTER_BACKFILL_RATE 0)."
        )
    )


_WHAT_STOPS: dict[Floor | None, Callable[[Report, Figure], str]] = {
    Floor.STEP: _step,
    Floor.FRESHNESS: _freshness,
    Floor.READ: _read,
    Floor.SCALE: _scale,
    Floor.DEFINITIONS: _definitions,
}


def _core_stages(report: Report) -> list[str]:
    """The step alone's time by stage, a column per run."""
    if not report.core_stages:
        return []
    runs = list(report.core_stages)
    lines = [
        "",
        "## Where the step's time goes (in-process)",
        "",
        "The step alone (no broker, no Redis, no Faust), with each part timed by "
        "`time.perf_counter_ns` in one more run over the same batches; µs per event and share of "
        f"that run. {report.core_about}",
        "",
        "| stage | " + " | ".join(runs) + " |",
        "|---|" + "---:|" * len(runs),
    ]
    by_run = [dict(report.core_stages[run]) for run in runs]
    totals = [report.core_totals.get(run, (0.0, 0.0)) for run in runs]
    for name in dict.fromkeys(stage for run in runs for stage, _ in report.core_stages[run]):
        cells = [
            f"{d.get(name, 0.0):,.2f} µs ({d.get(name, 0.0) / t[0]:.0%})" if t[0] else ""
            for d, t in zip(by_run, totals, strict=True)
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append(
        "| total: this run (the timers add a little); the median of the plain runs | "
        + " | ".join(f"{t[0]:,.1f} µs; {t[1]:,.1f} µs" for t in totals)
        + " |"
    )
    return lines


def draw_chart(report: Report, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rated = [f for f in report.figures if f.ratio is not None]
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(rated) + 1.5))
    labels = [f"{f.section}: {f.what}" for f in rated]
    ratios = [f.ratio or 0.0 for f in rated]
    colors = ["#2b8a3e" if f.met else "#c92a2a" if f.met is False else "#495057" for f in rated]
    ax.barh(range(len(rated)), ratios, color=colors)
    ax.set_yticks(range(len(rated)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.axvline(1.0, color="#868e96", linewidth=0.8)
    for i, r in enumerate(ratios):
        ax.text(r, i, f" {r:.2f}", va="center", fontsize=8)
    ax.set_xlabel("ours / baseline (same run); green: target met, red: not met")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
