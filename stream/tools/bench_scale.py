"""The bench's scale-out phase: two workers against one on four partitions, arrays of 10."""

from __future__ import annotations

import os
import threading

from stream.tools.bench_context import BenchContext
from stream.tools.bench_report import Figure
from stream.tools.bench_traffic import as_arrays, click_streams

__all__ = ["scale_out"]


def scale_out(ctx: BenchContext) -> None:
    """The same traffic through one worker, then two (each run on topics of its own)."""
    config = ctx.config
    per = click_streams(config.customers, config.scale_events + config.customers * 20, 53)
    messages = as_arrays(per, config.scale_events)
    events = sum(m.events for m in messages)
    rates = {}
    for n in (1, 2):
        settings = ctx.settings(partitions=4)
        procs = ctx.start_workers(settings, n, f"scale{n}")
        ctx.wait_joined(settings, n, procs)
        ctx.say(f"scale-out: {n} worker(s), {events:,} events in arrays of 10")
        threading.Thread(target=ctx.load, args=(settings, messages), daemon=True).start()
        _, rates[n] = ctx.worker_span(settings, events, procs)
        ctx.stop(procs)
        ctx.say(f"  {n} worker(s): {rates[n]:,.0f} events/s")
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
            note=f"{os.cpu_count()} CPU cores shared by broker, Redis, producer, workers",
        )
    )
