"""The bench's scale-out phase: two workers against one on four partitions, arrays of 10, with
the whole machine's busy CPU during each run (the broker, Redis and the producer share it), and
the workers' own."""

from __future__ import annotations

import contextlib
import math
import threading
import time

import psutil

from stream.tools.bench_context import BenchContext, Procs
from stream.tools.bench_report import Figure, Floor
from stream.tools.bench_traffic import as_arrays, click_streams

__all__ = ["cores_busy", "cpu_seconds", "process_seconds", "scale_out"]


def cpu_seconds() -> tuple[float, float]:
    """The machine's CPU seconds since boot, summed over its cores (``/proc/stat``, by
    ``psutil.cpu_times``): (busy, all). Busy is all but idle and iowait (steal counts: the
    core was not free); guest time is in user time already, so it is not counted twice."""
    t = psutil.cpu_times()
    total = sum(t) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)
    return total - t.idle - getattr(t, "iowait", 0.0), total


def cores_busy(before: tuple[float, float], after: tuple[float, float], cores: int) -> float:
    """Cores busy on average between two ``cpu_seconds()``, out of ``cores`` (NaN if no time
    passed).

    >>> cores_busy((10.0, 40.0), (13.0, 44.0), 2), cores_busy((1.0, 2.0), (1.0, 2.0), 2)
    (1.5, nan)
    """
    busy, total = after[0] - before[0], after[1] - before[1]
    return cores * busy / total if total > 0 else math.nan


def process_seconds(procs: Procs) -> float:
    """CPU seconds (user and system) the processes have used so far (those that still run)."""
    total = 0.0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            times = psutil.Process(proc.pid).cpu_times()
            total += times.user + times.system
    return total


def scale_out(ctx: BenchContext) -> None:
    """The same traffic through one worker, then two (each run on topics of its own)."""
    config = ctx.config
    per = click_streams(config.customers, config.scale_events + config.customers * 20, 53)
    messages = as_arrays(per, config.scale_events)
    events = sum(m.events for m in messages)
    cores = psutil.cpu_count() or 1  # the cores psutil.cpu_times sums over
    rates, busy, workers = {}, {}, {}  # per run: events/s, cores busy, the workers' cores
    for n in (1, 2):
        settings = ctx.settings(partitions=4)
        procs = ctx.start_workers(settings, n, f"scale{n}")
        ctx.wait_joined(settings, n, procs)
        ctx.say(f"scale-out: {n} worker(s), {events:,} events in arrays of 10")
        before, used, started = cpu_seconds(), process_seconds(procs), time.monotonic()
        threading.Thread(target=ctx.load, args=(settings, messages), daemon=True).start()
        _, rates[n] = ctx.worker_span(settings, events, procs)
        busy[n] = cores_busy(before, cpu_seconds(), cores)
        workers[n] = (process_seconds(procs) - used) / (time.monotonic() - started)
        ctx.stop(procs)
        ctx.say(
            f"  {n} worker(s): {rates[n]:,.0f} events/s; {busy[n]:.1f} of {cores} cores busy, "
            f"{workers[n]:.1f} by the workers"
        )
    ctx.report.add(
        Figure(
            "Scale-out (4 partitions, arrays of 10)",
            "two workers vs one",
            rates[2],
            "events/s",
            rates[1],
            "one worker",
            ">= 1.6",
            rates[2] / rates[1] >= 1.6,
            note=f"{cores} CPU cores shared by broker, Redis, producer, workers: {busy[2]:.1f} "
            f"busy with two workers ({workers[2]:.1f} by the workers), {busy[1]:.1f} with one "
            f"({workers[1]:.1f} by the worker); the whole machine, from the load's start to the "
            "last event",
            floor=Floor.SCALE,
            extra={  # cores busy: the whole machine's, and the workers' own
                "cores": cores,
                "busy": busy[2],
                "by workers": workers[2],
                "busy with one": busy[1],
                "by the one worker": workers[1],
            },
        )
    )
