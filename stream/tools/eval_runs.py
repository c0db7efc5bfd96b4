"""`segmenter eval` over many draws: every figure's median and worst beside its target.

A draw is one seed at one size (``evaluate``: generated traffic through the worker's step).
Draws run in parallel processes; the report takes, per size, the median and the worst of each
figure over the seeds, and a target holds only if it holds at every size. Real-data rows (the
CDNOW log, issue 12 part 5) come from ``stream.tools.eval_real`` when that module is present.
"""

from __future__ import annotations

import multiprocessing
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass

from stream.settings import Settings
from stream.tools.evaluate import CATALOG_JITTER, EvalResult, evaluate

__all__ = [
    "FULL",
    "QUICK",
    "TARGETS",
    "Draw",
    "Row",
    "Size",
    "Target",
    "draws",
    "real_data_rows",
    "report",
    "run_draws",
]


@dataclass(frozen=True)
class Size:
    """A draw size: ``events`` generated events from ``customers`` customers."""

    name: str
    events: int
    customers: int

    @classmethod
    def parse(cls, text: str) -> Size:
        """``EVENTS:CUSTOMERS``, e.g. ``200000:5000``.

        >>> Size.parse("1000000:20000")
        Size(name='1M', events=1000000, customers=20000)
        """
        events, sep, customers = text.partition(":")
        try:
            size = cls(_short(int(events)), int(events), int(customers))
        except ValueError:
            size = None
        if not sep or size is None or size.events < 1 or size.customers < 1:
            raise ValueError(f"expected EVENTS:CUSTOMERS (positive numbers), got {text!r}")
        return size


@dataclass(frozen=True)
class Draw:
    size: Size
    seed: int


@dataclass(frozen=True)
class Target:
    """A figure's target on one statistic over the draws: ``median`` or ``worst``.

    ``higher`` says which way is better (the worst of a share of changes is its largest).
    """

    figure: str
    label: str
    statistic: str
    bound: float
    higher: bool
    strict: bool = False

    def met(self, value: float) -> bool:
        if self.higher:
            return value > self.bound if self.strict else value >= self.bound
        return value < self.bound if self.strict else value <= self.bound

    def text(self) -> str:
        op = (">" if self.strict else ">=") if self.higher else ("<" if self.strict else "<=")
        return f"{self.statistic} {op} {_fmt(self.figure, self.bound)}"


#: Issue 12's targets, plus the lifecycle check every draw already made.
TARGETS: tuple[Target, ...] = (
    Target("ari", "adjusted Rand index, clusters vs true personas", "median", 0.9, True),
    Target("ari", "adjusted Rand index, clusters vs true personas", "worst", 0.8, True),
    Target(
        "persona_accuracy",
        f"persona accuracy, catalog moved +-{CATALOG_JITTER:.0%}",
        "median",
        0.9,
        True,
    ),
    Target("id_changes", "segment id changes of unchanged customers", "worst", 0.01, False, True),
    Target(
        "lifecycle_on_time", "lifecycle exits on the first advance past due", "worst", 1.0, True
    ),
)

#: ``make eval``: ten seeds at 100k and at 1M events (customers scaled with the events, so a
#: customer has as many sessions on average at both sizes, over ten times the event time).
FULL: tuple[tuple[Size, ...], tuple[int, ...]] = (
    (Size("100k", 100_000, 2_000), Size("1M", 1_000_000, 20_000)),
    tuple(range(1, 11)),
)
#: ``--quick``: a smoke run, not the measured figures (five seeds at 100k and at 300k).
QUICK: tuple[tuple[Size, ...], tuple[int, ...]] = (
    (Size("100k", 100_000, 2_000), Size("300k", 300_000, 6_000)),
    tuple(range(1, 6)),
)


@dataclass(frozen=True)
class Row:
    """One line of the report: a figure at one size (or on real data) beside its target."""

    figure: str
    scope: str
    median: str
    worst: str
    target: str
    met: bool
    draws: int = 1  # seeds the median and the worst are over


def draws(sizes: Sequence[Size], seeds: Iterable[int]) -> list[Draw]:
    """Every seed at every size, the big draws first (they finish last otherwise)."""
    ordered = sorted(sizes, key=lambda s: -s.events)
    return [Draw(size, seed) for size in ordered for seed in seeds]


def _run_one(settings: Settings, draw: Draw) -> tuple[Draw, EvalResult]:
    return draw, evaluate(settings, None, draw.size.events, draw.size.customers, draw.seed)


def run_draws(
    settings: Settings,
    todo: Sequence[Draw],
    jobs: int = 2,
    say: Callable[[str], None] = print,
    run: Callable[[Settings, Draw], tuple[Draw, EvalResult]] = _run_one,
) -> dict[Draw, EvalResult]:
    """Run the draws in ``jobs`` processes (in this one if ``jobs`` is 1), saying each one's
    end: ``draw i of n``, its size and seed, its figures and the time elapsed."""
    started = time.monotonic()
    results: dict[Draw, EvalResult] = {}

    def done(draw: Draw, result: EvalResult) -> None:
        results[draw] = result
        say(
            f"draw {len(results)} of {len(todo)}: {draw.size.name} seed {draw.seed}: "
            f"ARI {result.ari:.3f}, persona {result.persona_accuracy:.1%}, "
            f"id changes {result.id_changes:.2%}, lifecycle on time "
            f"{result.lifecycle_on_time:.1%} ({time.monotonic() - started:,.0f} s elapsed)"
        )

    if jobs <= 1:
        for draw in todo:
            done(*run(settings, draw))
        return results
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        futures = [pool.submit(run, settings, draw) for draw in todo]
        for future in as_completed(futures):
            done(*future.result())
    return results


def report(
    results: dict[Draw, EvalResult], targets: Sequence[Target] = TARGETS
) -> tuple[list[Row], bool]:
    """Per size, each target's figure as median and worst over the seeds; ``ok`` only if every
    target holds at every size."""
    sizes = sorted({d.size for d in results}, key=lambda s: s.events)
    rows: list[Row] = []
    ok = True
    seen: set[tuple[str, str]] = set()
    for target in targets:
        for size in sizes:
            values = [r.figures()[target.figure] for d, r in results.items() if d.size == size]
            median = statistics.median(values)
            worst = min(values) if target.higher else max(values)
            met = target.met(median if target.statistic == "median" else worst)
            ok = ok and met
            key = (target.figure, size.name)
            if key in seen:  # a second target on the same figure: add it to the first line
                first = next(
                    i
                    for i, r in enumerate(rows)
                    if (r.figure, r.scope) == (target.label, size.name)
                )
                prev = rows[first]
                rows[first] = Row(
                    prev.figure,
                    prev.scope,
                    prev.median,
                    prev.worst,
                    f"{prev.target}, {target.text()}",
                    prev.met and met,
                    prev.draws,
                )
                continue
            seen.add(key)
            rows.append(
                Row(
                    target.label,
                    size.name,
                    _fmt(target.figure, median),
                    _fmt(target.figure, worst),
                    target.text(),
                    met,
                    len(values),
                )
            )
    return rows, ok


def real_data_rows(settings: Settings, seeds: int = 5) -> list[Row]:
    """Rows measured on the real CDNOW log (issue 12 part 5), printed beside the generator's:
    ``stream.tools.eval_real.rows``, each figure's median and worst over ``seeds`` runs (the
    trainer's and the offline k-means' seeds; the log is one)."""
    from stream.tools import eval_real

    return [
        Row(figure, "CDNOW", median, worst, target, met, seeds)
        for figure, median, worst, target, met in eval_real.rows(settings, seeds)
    ]


def _short(n: int) -> str:
    if n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n % 1_000 == 0:
        return f"{n // 1_000}k"
    return str(n)


def _fmt(figure: str, value: float) -> str:
    if figure == "ari":
        return f"{value:.3f}"
    if figure == "id_changes":
        return f"{value:.2%}"
    return f"{value:.1%}"


def markdown(rows: Sequence[Row]) -> str:
    """The report as a Markdown table (the README's "Measured quality" section)."""
    lines = [
        "| figure | draws | median | worst | target | |",
        "|---|---|---:|---:|---|---|",
    ]
    for r in rows:
        draws = f"{r.scope}, {r.draws} seeds" if r.draws > 1 else r.scope
        lines.append(
            f"| {r.figure} | {draws} | {r.median} | {r.worst} | {r.target} | "
            f"{'met' if r.met else 'MISSED'} |"
        )
    return "\n".join(lines)
