"""What the bench's phases share: the run's volumes, its stack, its report and its workers.

Each phase (``bench_throughput``, ``bench_freshness``, ``bench_memory``, ``bench_scale``,
``bench_core``) takes a ``BenchContext``: the embedded broker and Redis, fresh settings per
run (topics, app id and Redis prefix of their own), the report the phase adds its figures to,
and the worker processes it starts, which the context stops if a phase fails.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from rich.console import Console

from stream.kafka import ensure_topics
from stream.settings import Settings
from stream.store import SegmentClient
from stream.tools.bench_core import CoreConfig
from stream.tools.bench_report import Report
from stream.tools.embedded import EmbeddedStack
from stream.tools.generator import Message
from stream.tools.process import start_worker, stop_process
from stream.tools.producer import send_messages

__all__ = ["BenchConfig", "BenchContext", "Procs"]

Procs = list[subprocess.Popen[bytes]]


@dataclass
class BenchConfig:
    single_events: int = 60_000  # one event per message
    array_events: int = 400_000  # arrays of 10 events of one customer per message
    customers: int = 5_000  # customers of the throughput and freshness traffic
    memory_customers: int = 100_000
    fresh_seconds: float = 20.0
    scale_events: int = 300_000
    profile: bool = True
    core: CoreConfig = field(default_factory=CoreConfig)  # the step alone, in-process
    million_customers: int = 1_000_000  # 10 events each, in one array, RocksDB (bench_million)
    million_baseline: int = 100_000  # the same traffic shape, beside it in the same run

    @classmethod
    def quick(cls) -> BenchConfig:
        """A smoke run (about two minutes): small volumes, every phase, numbers not meaningful."""
        return cls(
            6_000,
            30_000,
            500,
            3_000,
            4.0,
            30_000,
            profile=False,
            core=CoreConfig.quick(),
            million_customers=20_000,
            million_baseline=2_000,
        )


class BenchContext:
    """The stack, the report, the volumes and the worker processes of one bench run."""

    def __init__(
        self, stack: EmbeddedStack, console: Console, report: Report, config: BenchConfig
    ) -> None:
        assert stack.workdir is not None, "start the stack first"
        self.stack = stack
        self.workdir: Path = stack.workdir
        self.console = console
        self.report = report
        self.config = config
        self.redis = redis.Redis.from_url(stack.redis_url)
        self.procs: Procs = []

    def settings(self, **overrides: Any) -> Settings:
        """Settings of a run of its own: fresh topics, app id and Redis prefix."""
        run = uuid.uuid4().hex[:6]
        options: dict[str, Any] = {
            "kafka_url": self.stack.kafka_url,
            "redis_url": self.stack.redis_url,
            "topic_prefix": f"b{run}-",
            "app_id": f"bench-{run}",
            "redis_prefix": f"b{run}:",
            "session_timeout": 10.0,
            "heartbeat_interval": 1.0,
            "log_level": "warn",
            "metrics_port": 0,
            "stats_interval": 3600.0,  # no periodic snapshots in the way of the timings
            # The bench's traffic gives many customers one session (the million phase: one
            # array of clicks each); it measures speed with a model, as it always did.
            "min_sessions_for_sample": 1,
        }
        options.update(overrides)
        settings = Settings(**options)
        ensure_topics(settings)
        return settings

    def say(self, text: str) -> None:
        self.console.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] {text}")

    def note(self, text: str) -> None:
        """A note at the end of the report, once."""
        if text not in self.report.notes:
            self.report.notes.append(text)

    # -- processes ----------------------------------------------------------------------------

    def start_workers(self, settings: Settings, n: int, tag: str) -> Procs:
        procs = [
            start_worker(settings, self.workdir / f"{tag}-w{i}.log", f"{tag}-w{i}")
            for i in range(n)
        ]
        self.procs += procs
        return procs

    def adopt(self, proc: subprocess.Popen[bytes]) -> None:
        """Stop ``proc`` with the workers if the bench ends before it does."""
        self.procs.append(proc)

    def stop(self, procs: Procs) -> None:
        for proc in procs:
            stop_process(proc)
            with contextlib.suppress(ValueError):
                self.procs.remove(proc)

    def client(self, settings: Settings) -> SegmentClient:
        return SegmentClient(settings.redis_url.get_secret_value(), settings.redis_prefix)

    def wait_joined(self, settings: Settings, n: int, procs: Procs) -> None:
        """Until ``n`` workers have shared every partition between them (180 s at most)."""
        client = self.client(settings)
        deadline = time.monotonic() + 180
        try:
            while time.monotonic() < deadline:
                check_alive(procs)
                beats = client.workers()
                owned = sum(len(b["partitions"]) for b in beats)
                if (
                    len(beats) >= n
                    and all(b["partitions"] for b in beats)
                    and owned == settings.partitions
                ):
                    return
                time.sleep(0.2)
        finally:
            client.close()
        raise RuntimeError(f"{n} workers did not share the partitions within 180 s")

    def wait_model(self, settings: Settings, procs: Procs, timeout: float = 120.0) -> bool:
        """Until every worker scores with a model (its heartbeat's model version) and has
        assigned the customers it saw before its first (``assigning``); False if that did
        not come within ``timeout`` seconds."""
        client = self.client(settings)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                check_alive(procs)
                beats = client.workers()
                if beats and all(b.get("model_version") and not b.get("assigning") for b in beats):
                    return True
                time.sleep(0.2)
        finally:
            client.close()
        return False

    def load(self, settings: Settings, messages: list[Message]) -> float:
        """Send messages as fast as the producer goes; events per second sent."""
        return send_messages(settings, iter(messages)).rate

    def worker_span(
        self,
        settings: Settings,
        events: int,
        procs: Procs,
        on_tick: Callable[[int], None] | None = None,
        on_first: Callable[[], None] | None = None,
    ) -> tuple[float, float]:
        """Wall time from the first processed event to the ``events``-th, read off the
        workers' shared counter in Redis; (seconds, events per second). ``on_first`` is called
        when the first processed event is seen (a profile then covers the processing, not the
        worker's start-up)."""
        client = self.client(settings)
        first = None
        deadline = time.monotonic() + 900
        last_tick = 0.0
        try:
            while time.monotonic() < deadline:
                done = client.stats().get("events", 0)
                now = time.monotonic()
                if done and first is None:
                    first = now
                    if on_first is not None:
                        on_first()
                if done >= events and first is not None:
                    span = max(now - first, 1e-6)
                    return span, events / span
                if on_tick and now - last_tick > 2:
                    last_tick = now
                    on_tick(done)
                check_alive(procs)
                time.sleep(0.01)
        finally:
            client.close()
        raise RuntimeError(f"the worker did not process {events} events in 900 s")

    def close(self) -> None:
        for proc in list(self.procs):
            stop_process(proc)
        self.procs.clear()
        self.redis.close()


def check_alive(procs: Procs) -> None:
    for proc in procs:
        if proc.poll() is not None:
            raise RuntimeError(f"a bench worker exited with {proc.returncode}")
