"""The bench's memory and recovery phase: bytes per customer in Redis and in the worker with
many customers, then how long a new worker takes to recover them all from the changelog."""

from __future__ import annotations

import random
import statistics
import time

import psutil

from stream.settings import Settings
from stream.store import Keys
from stream.tools.bench_context import BenchContext
from stream.tools.bench_report import Figure, fmt
from stream.tools.generator import TrafficGenerator
from stream.tools.producer import send_messages

__all__ = ["MemoryAndRecovery"]


class MemoryAndRecovery:
    """``memory_customers`` customers into one worker; then a new worker recovers them."""

    def __init__(self, ctx: BenchContext) -> None:
        self.ctx = ctx
        self.n = ctx.config.memory_customers
        self.settings = ctx.settings(log_level="info")  # recovery reads "Worker ready" off it
        self.generator = TrafficGenerator(customers=self.n, seed=41)

    def run(self) -> None:
        self.memory()
        self.recovery()

    def memory(self) -> None:
        ctx, n, settings, generator = self.ctx, self.n, self.settings, self.generator
        procs = ctx.start_workers(settings, 1, "mem")
        ctx.wait_joined(settings, 1, procs)
        worker = psutil.Process(procs[0].pid)
        time.sleep(1)
        rss_before = worker.memory_info().rss
        redis_before = int(ctx.redis.info("memory")["used_memory"])
        messages = [m for cid in generator.customer_ids for m in generator.session(cid)]
        events = sum(m.events for m in messages)
        ctx.say(f"memory: {n:,} customers, {events:,} events in {len(messages):,} messages")
        send_messages(settings, iter(messages))
        ctx.worker_span(
            settings, events, procs, lambda k: ctx.say(f"  worker: {k:,}/{events:,} events")
        )
        time.sleep(2)
        client = ctx.client(settings)
        customers = client.customers()
        client.close()
        rss_after = worker.memory_info().rss
        redis_after = int(ctx.redis.info("memory")["used_memory"])
        sample = random.Random(5).sample(generator.customer_ids, min(1000, n))
        keys = Keys(settings.redis_prefix)
        usage = [int(ctx.redis.memory_usage(keys.record(c)) or 0) for c in sample]
        per_redis = (redis_after - redis_before) / n
        per_worker = (rss_after - rss_before) / n
        ctx.say(f"  Redis {per_redis:,.0f} B/customer, worker {per_worker:,.0f} B/customer")
        # The worker stops here: recovery starts a new one with the same app id.
        ctx.stop(procs)
        section = f"Memory per customer ({n:,} customers)"
        ctx.report.add(
            Figure(
                section,
                "Redis, used_memory growth / customers",
                per_redis,
                "bytes",
                target="<= 1 KB",
                met=per_redis <= 1024,
                note=f"{customers:,} records; MEMORY USAGE of one record "
                f"{statistics.mean(usage):,.0f} B on average",
            )
        )
        ctx.report.add(
            Figure(
                section,
                "worker process, RSS growth / customers",
                per_worker,
                "bytes",
                note=(
                    "the Faust table in memory holds every profile of its partitions"
                    if settings.state_store == "memory"
                    else "profiles in RocksDB (its caches count, its files on disk do not)"
                )
                + f"; up to {settings.profile_cache:,} live profiles besides",
            )
        )

    def recovery(self) -> None:
        """A new worker with the same app id rebuilds its table from the changelog."""
        ctx, n, settings = self.ctx, self.n, self.settings
        ctx.say(f"recovery: a new worker recovers {n:,} customers from the changelog")
        started = time.monotonic()
        procs = ctx.start_workers(settings, 1, "recover")
        log = ctx.workdir / "recover-w0.log"
        ready = None
        while time.monotonic() - started < 900:
            if procs[0].poll() is not None:
                raise RuntimeError("the recovering worker exited")
            if "Worker ready" in log.read_text(errors="replace"):
                ready = time.monotonic() - started
                break
            time.sleep(0.1)
        applied = self._first_new_event(settings, started)
        text = log.read_text(errors="replace")
        scheduled = [line for line in text.splitlines() if "lifecycle schedule:" in line]
        ctx.stop(procs)
        section = f"Recovery after a restart ({n:,} customers)"
        note = ""
        if scheduled:  # the worker's log line, less its time, pid and level
            note = "lifecycle schedule:" + scheduled[-1].split("lifecycle schedule:", 1)[1].rstrip()
        if ready is not None:
            ctx.report.add(
                Figure(section, "start to 'Worker ready' (table recovered)", ready, "s", note=note)
            )
        if applied is not None:
            ctx.report.add(Figure(section, "start to a new event applied", applied, "s"))
        nan = float("nan")  # not measured: the worker did not get there
        ready_s, applied_s = (
            fmt(nan if ready is None else ready, "s"),
            fmt(nan if applied is None else applied, "s"),
        )
        ctx.say(f"  ready after {ready_s}, first new event applied after {applied_s}")

    def _first_new_event(self, settings: Settings, started: float) -> float | None:
        """Seconds from ``started`` until a new session of a known customer is applied."""
        client = self.ctx.client(settings)
        probe = self.generator.customer_ids[0]
        before = (client.get(probe) or {}).get("events_applied", 0)
        send_messages(settings, iter(self.generator.session(probe)))
        applied = None
        while time.monotonic() - started < 900:
            if (client.get(probe) or {}).get("events_applied", 0) > before:
                applied = time.monotonic() - started
                break
            time.sleep(0.05)
        client.close()
        return applied
