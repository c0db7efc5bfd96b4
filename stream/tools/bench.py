"""`segmenter bench` (`make bench`): speed, freshness, memory, recovery and scale-out, each
figure measured beside its baseline in the same run, on a broker and Redis of its own.

This module runs the phases in order, each in a module of its own sharing one
``bench_context.BenchContext`` (the stack, fresh settings per run, the report, the workers):
``bench_core`` (the pure step alone, in-process: also ``segmenter bench --core``),
``bench_throughput`` (against plain aiokafka and bare Faust, ``bench_faust``),
``bench_freshness`` (probes, and reads under ingest), ``bench_memory`` (memory per customer,
recovery after a restart), ``bench_definitions`` (segment definitions applied live: time to
every customer re-evaluated, freshness meanwhile), ``bench_scale`` (two workers against
one) and ``bench_million`` (a million customers through one worker with its state in RocksDB:
throughput, memory and disk per customer, a restart and a full recovery). ``bench_traffic``
shapes their traffic, ``bench_report`` holds the figures and writes the report and its chart,
``bench_profile`` turns py-spy's samples of the worker into time by stage.

These machines are shared and noisy, so the figures that matter are the ratios: our worker
against a plain aiokafka consumer and a bare Faust agent on the same topic, our client's read
against a bare redis-py GET on the same server, two workers against one. It measures; it does
not judge: the exit code is 0 whatever the numbers, and the report says which targets were met
and, for each one missed, what stops it in numbers of the same run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

from stream.kafka import wait_for_broker
from stream.settings import Settings
from stream.tools.bench_context import BenchConfig, BenchContext
from stream.tools.bench_core import add_to_report, run_core
from stream.tools.bench_definitions import LiveDefinitionsBench
from stream.tools.bench_freshness import Freshness
from stream.tools.bench_memory import MemoryAndRecovery
from stream.tools.bench_million import MillionCustomers
from stream.tools.bench_report import Figure, Report, fmt, write_report
from stream.tools.bench_scale import scale_out
from stream.tools.bench_throughput import Throughput
from stream.tools.embedded import EmbeddedStack
from stream.tools.process import signals_as_interrupt

__all__ = ["BenchConfig", "Figure", "phases", "run_bench"]


def phases(ctx: BenchContext) -> list[tuple[str, Callable[[], None]]]:
    """The bench's phases in the order they run, each a name and a call."""

    def core() -> None:
        add_to_report(run_core(ctx.config.core, say=ctx.say), ctx.report)

    return [
        ("the step alone, in-process", core),
        ("throughput, one event per message", lambda: Throughput(ctx, False).run()),
        ("throughput, arrays of 10", lambda: Throughput(ctx, True).run()),
        ("freshness at 10k events/s, arrays", lambda: Freshness(ctx, 10_000, True).run()),
        ("freshness at 2k events/s, singles", lambda: Freshness(ctx, 2_000, False).run()),
        (
            "freshness at 200 events/s, singles (the floor)",
            lambda: Freshness(ctx, 200, False, floor=True).run(),
        ),
        ("memory and recovery", lambda: MemoryAndRecovery(ctx).run()),
        ("live definitions: apply and backfill", lambda: LiveDefinitionsBench(ctx).run()),
        ("two workers against one", lambda: scale_out(ctx)),
        ("a million customers", lambda: MillionCustomers(ctx).run()),
    ]


def run_bench(
    config: BenchConfig,
    out: Path,
    console: Console,
    command: str = "make bench",
    only: str | None = None,
) -> Report:
    """Run every phase (or those whose name holds ``only``), write ``out`` (Markdown) and its
    chart; return the figures."""
    started = time.monotonic()
    # The report's directory first: a path that cannot be written fails now, not after the
    # whole run (a directory that did not exist lost a finished run's report).
    out.parent.mkdir(parents=True, exist_ok=True)
    with signals_as_interrupt():  # a SIGTERM stops the broker, Redis and workers too
        report = _run_phases(config, console, only)
    write_report(report, out, command, time.monotonic() - started)
    console.print(f"[b]written[/b] {out} and {out.with_suffix('.png')}")
    for f in report.figures:
        ratio = f" = {f.ratio:.2f} x {f.baseline_name}" if f.ratio is not None else ""
        met = "" if f.met is None else ("  [green]met[/green]" if f.met else "  [red]not met[/red]")
        console.print(f"  {f.section}: {f.what}: {fmt(f.ours, f.unit)}{ratio}{met}")
    return report


def _run_phases(config: BenchConfig, console: Console, only: str | None) -> Report:
    """The stack started, the phases run, the stack stopped (whatever happens); the figures."""
    report = Report()
    stack = EmbeddedStack()
    ctx: BenchContext | None = None
    try:
        stack.start()
        ctx = BenchContext(stack, console, report, config)
        console.print(
            f"[b]segmenter bench[/b]: broker {stack.kafka_url}, redis {stack.redis_url}, "
            f"logs in {stack.workdir}"
        )
        wait_for_broker(Settings(kafka_url=stack.kafka_url))
        todo = [(n, p) for n, p in phases(ctx) if only is None or only.lower() in n.lower()]
        if not todo:
            raise ValueError(f"no phase of the bench is named like {only!r}")
        for i, (name, phase) in enumerate(todo, 1):
            console.print(f"[b][{i}/{len(todo)}] {name}[/b]")
            try:
                phase()
            except Exception as exc:  # noqa: BLE001 - a failed phase is reported, the rest runs
                console.print(f"[red]  {name} failed: {exc}[/red]")
                report.notes.append(f"Phase '{name}' failed: {exc}")
    finally:
        if ctx is not None:
            ctx.close()
        stack.stop()
    return report
