"""The bench's figures and its report: a Markdown table, the floors, the profiles, a chart."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

__all__ = ["STEP_ALONE", "Figure", "Report", "draw_chart", "fmt", "write_report"]

#: The floors table's row of the step alone, in-process (``bench_core``).
STEP_ALONE = "our step alone, in-process (no Kafka, no Redis, no Faust)"


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
        "with its baseline, measured in the same run, not with other runs.",
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
            ours, bare = rates.get("our worker", 0), rates.get("bare Faust agent, batches", 0)
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
