"""`segmenter demo`: broker, Redis, worker(s) and generator on free ports, with a live view."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from stream.kafka import ensure_topics, wait_for_broker
from stream.serving.web import DashboardServer
from stream.settings import Settings
from stream.store import SegmentClient
from stream.tools.embedded import EmbeddedStack, free_port
from stream.tools.generator import TrafficGenerator
from stream.tools.process import (
    interrupt_on_signals,
    restore_signals,
    start_worker,
    stop_process,
)
from stream.tools.producer import ProduceStats, generated_messages, send_messages

__all__ = ["DemoSummary", "run_demo"]


@dataclass
class DemoSummary:
    seconds: float = 0.0
    sent: int = 0
    processed: int = 0
    customers: int = 0
    dead_letters: int = 0
    model_version: int | None = None
    peak_rate: float = 0.0
    sizes: dict[str, int] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    purity: float | None = None
    drift_alerts: list[dict[str, Any]] = field(default_factory=list)
    dashboard: str = ""

    @property
    def rate(self) -> float:
        return self.processed / self.seconds if self.seconds else 0.0


class _View:
    """Samples Redis once per tick and renders throughput and segment sizes."""

    def __init__(self, client: SegmentClient) -> None:
        self.client = client
        self.history: deque[tuple[float, int]] = deque(maxlen=6)
        self.peak = 0.0

    def render(self, elapsed: float, produced: ProduceStats) -> Group:
        stats = self.client.stats()
        processed = stats.get("events", 0)
        now = time.monotonic()
        self.history.append((now, processed))
        rate = 0.0
        if len(self.history) > 1 and self.history[-1][0] > self.history[0][0]:
            (t0, n0), (t1, n1) = self.history[0], self.history[-1]
            rate = (n1 - n0) / (t1 - t0)
        self.peak = max(self.peak, rate)
        model = self.client.model()
        workers = self.client.workers()
        head = Table.grid(padding=(0, 2))
        head.add_row(
            f"[b]{elapsed:4.0f}s[/b]",
            f"sent [b]{produced.events:,}[/b]",
            f"processed [b]{processed:,}[/b]",
            f"[b]{rate:,.0f}[/b] ev/s",
            f"lag {max(0, produced.events - processed):,}",
        )
        head.add_row(
            "",
            f"customers {self.client.customers():,}",
            f"dead letters {stats.get('dead_letters', 0)}",
            f"model v{model['version'] if model else '-'}",
            f"workers {len(workers)}",
        )
        sizes = self.client.sizes()
        total = sum(sizes.values()) or 1
        table = Table(title="customers per behavioral segment", expand=False)
        table.add_column("segment")
        table.add_column("customers", justify="right")
        table.add_column("share", justify="left")
        table.add_column("description")
        for seg, n in sorted(sizes.items(), key=lambda kv: kv[0]):
            label = _label(model, seg)
            bar = "█" * int(30 * n / total)
            table.add_row("unassigned" if seg == "-" else seg, f"{n:,}", bar, label)
        alerts = self.client.drift(3)
        drift = [f"[yellow]drift[/yellow] {a['message']}" for a in alerts] or [
            "[dim]no drift alerts[/dim]"
        ]
        if not workers:
            return Group(
                head, "[dim]waiting for the worker to join its consumer group...[/dim]", table
            )
        return Group(head, table, *drift)


def _label(model: dict[str, Any] | None, seg: str) -> str:
    if model is None or seg == "-":
        return ""
    from models.clustering import ModelSnapshot

    snapshot = ModelSnapshot.from_dict(model)
    index = int(seg)
    return snapshot.describe(index) if index < len(snapshot.centres) else ""


def run_demo(
    seconds: float | None,
    rate: float,
    customers: int,
    workers: int,
    console: Console,
    truth_path: Path | None = None,
    seed: int = 7,
    shift_at: float | None = None,
    shift_mix: dict[str, float] | None = None,
    dashboard_port: int = 8080,
) -> DemoSummary:
    """Run the whole product locally until ``seconds`` pass or Ctrl-C; always stop every child.

    At ``shift_at`` seconds the generator switches to the persona mix ``shift_mix``, which the
    drift monitor should report on the dashboard.
    """
    stack = EmbeddedStack()
    procs: list[subprocess.Popen[bytes]] = []
    servers: list[DashboardServer] = []
    stop = threading.Event()
    produced = ProduceStats()
    summary = DemoSummary()
    started = time.monotonic()
    console.print(
        "[b]segmenter demo[/b]: starting a Tansu broker and redis-server on free ports..."
    )
    previous = interrupt_on_signals()
    stack.start()
    assert stack.workdir is not None
    try:
        settings = Settings(
            kafka_url=stack.kafka_url,
            redis_url=stack.redis_url,
            log_level="warn",
            # Demo traffic moves event time ~250x faster than the clock: 5-minute buckets give
            # the dashboard's chart a point about every second.
            stats_bucket_seconds=300,
            # The demo sends a few hundred training samples a second: a shorter drift warm-up
            # than the production default lets the persona-mix switch show within a minute.
            drift_warmup_samples=5_000,
            drift_cooldown_samples=3_000,
            metrics_port=free_port(),
        )
        wait_for_broker(settings)
        ensure_topics(settings)
        dashboard = DashboardServer(settings, "127.0.0.1", _port_or_free(dashboard_port))
        dashboard.start()
        servers.append(dashboard)
        console.print(
            f"  broker    {stack.kafka_url}\n  redis     {stack.redis_url}\n"
            f"  logs      {stack.workdir}\n"
            f"  [b]dashboard {dashboard.url}[/b]  (read API: {dashboard.url}docs)\n"
            f"  metrics   http://127.0.0.1:{settings.metrics_port}/metrics (worker 0)"
        )
        for i in range(workers):
            # Each worker serves its own /metrics: worker 0 on the port printed above.
            own = settings if i == 0 else settings.model_copy(update={"metrics_port": free_port()})
            procs.append(start_worker(own, stack.workdir / f"worker-{i}.log", f"demo-worker-{i}"))
        # Sessions come faster than real time: event time starts a day back and runs faster
        # than the wall clock until it catches up, never past it (workers dead-letter events
        # dated ahead of their clock).
        generator = TrafficGenerator(
            customers=customers,
            seed=seed,
            start_ms=int(time.time() * 1000) - 86_400_000,
            not_after=lambda: int(time.time() * 1000),
        )

        def produce() -> None:
            nonlocal produced
            send_messages(
                settings,
                generated_messages(generator),
                rate=rate,
                stop=stop,
                on_progress=lambda s: _copy(s, produced),
            )

        thread = threading.Thread(target=produce, name="generator", daemon=True)
        thread.start()
        client = SegmentClient(stack.redis_url)
        view = _View(client)
        try:
            with Live(console=console, refresh_per_second=4, transient=False) as live:
                while seconds is None or time.monotonic() - started < seconds:
                    due = shift_at is not None and time.monotonic() - started >= shift_at
                    if due and shift_mix and generator.mix is None:
                        generator.shift(shift_mix)
                        live.console.print(
                            f"[yellow]generator switched its persona mix to {shift_mix}[/yellow]"
                        )
                    for proc in procs:
                        if proc.poll() is not None:
                            raise RuntimeError(
                                f"a worker exited with code {proc.returncode}; see {stack.workdir}"
                            )
                    live.update(view.render(time.monotonic() - started, produced))
                    time.sleep(0.5)
            # The generator's last messages are counted once its producer has flushed them.
            stop.set()
            thread.join(timeout=10)
            _drain(client, produced.events, procs, console, stop)
        except KeyboardInterrupt:
            console.print("[yellow]interrupted: stopping everything[/yellow]")
        stop.set()
        thread.join(timeout=10)
        summary = _summarize(
            client, generator, produced, time.monotonic() - started, view.peak, truth_path
        )
        summary.dashboard = dashboard.url
        client.close()
    finally:
        stop.set()
        # A second Ctrl-C must not cut the clean-up short and leave children running.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            for server in servers:
                server.stop()
            for proc in procs:
                stop_process(proc)
            stack.stop()
        finally:
            restore_signals(previous)
    return summary


def _port_or_free(port: int) -> int:
    """``port`` if nothing listens there yet, else a free one (a second demo on one machine)."""
    import socket

    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return free_port()
    return port


def _drain(
    client: SegmentClient,
    sent: int,
    procs: list[subprocess.Popen[bytes]],
    console: Console,
    stop: threading.Event,
    timeout: float = 30.0,
) -> None:
    """Stop the generator, then wait (bounded) until the workers have processed what was sent."""
    stop.set()
    deadline = time.monotonic() + timeout
    with console.status("letting the workers finish what was sent..."):
        while client.stats().get("events", 0) < sent and time.monotonic() < deadline:
            if any(p.poll() is not None for p in procs):
                return
            time.sleep(0.2)


def _copy(src: ProduceStats, dst: ProduceStats) -> None:
    dst.messages, dst.events, dst.elapsed = src.messages, src.events, src.elapsed


def _summarize(
    client: SegmentClient,
    generator: TrafficGenerator,
    produced: ProduceStats,
    elapsed: float,
    peak: float,
    truth_path: Path | None,
) -> DemoSummary:
    stats = client.stats()
    model = client.model()
    sizes = client.sizes()
    by_persona: dict[str, Counter[str]] = {}
    seen = set()
    for record in client.iter_records():
        persona = generator.truth.get(record["customer_id"])
        seen.add(record["customer_id"])
        if persona is not None:
            by_persona.setdefault(persona.name, Counter())[str(record["segment"])] += 1
    majority = sum(c.most_common(1)[0][1] for c in by_persona.values())
    total = sum(sum(c.values()) for c in by_persona.values())
    if truth_path is not None:
        generator.write_truth(truth_path, only=seen)
    return DemoSummary(
        seconds=elapsed,
        sent=produced.events,
        processed=stats.get("events", 0),
        customers=len(seen),
        dead_letters=stats.get("dead_letters", 0),
        model_version=model["version"] if model else None,
        peak_rate=peak,
        sizes=sizes,
        labels={seg: _label(model, seg) for seg in sizes},
        purity=majority / total if total else None,
        drift_alerts=client.drift(),
    )
