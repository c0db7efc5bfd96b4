"""The bench's million-customer phase: one worker with its state in RocksDB, ``million_customers``
customers of 10 events each (one array of 10 per customer), beside the same traffic shape at
``million_baseline`` customers in the same run; then the same worker restarted on its data
directory, and a worker that lost its disk recovering the whole changelog.

Each run loads its topic first (generated as it is sent, never held whole in memory), then
starts the worker: its throughput is the worker alone, read off its event counter in Redis
as the other phases do; memory is Redis ``used_memory``, the worker's RSS and its data
directory's size on disk, each grown over the run and divided by the customers. Tansu keeps
every topic in memory: loading stops early, and says so, if the machine runs short of memory.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import psutil

from stream.kafka import make_producer
from stream.settings import Settings
from stream.tools.bench_context import BenchContext, Procs
from stream.tools.bench_report import Figure, Report
from stream.tools.generator import HOUR_MS, Message, TrafficGenerator
from stream.tools.producer import send_messages
from stream.topology import topology

__all__ = [
    "MillionCustomers",
    "Recovery",
    "RunFigures",
    "dir_size",
    "load_acknowledged",
    "memory_figures",
    "recovery_figures",
    "ten_clicks",
]

#: Loading stops when the machine has less than this available (Tansu holds topics in memory).
MEMORY_FLOOR = 2 * 2**30
DAY_MS = 24 * HOUR_MS
#: A worker whose event counter has not moved for this long is taken as done (and noted).
STALL_SECONDS = 240.0


def dir_size(path: Path) -> int:
    """Bytes of every file under ``path`` (0 if it does not exist)."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def load_acknowledged(
    settings: Settings, messages: Iterable[Message], say: Callable[[str], None]
) -> int:
    """Send ``messages`` (large batches), then send again every one the broker did not
    acknowledge, until each is (5 rounds at most); events acknowledged. Under load a batch can
    fail its delivery and the plain producer path never looks at its future."""
    topics = topology(settings).topic_of_source
    producer = make_producer(settings, linger_ms=20, batch_size=256 * 1024)
    failed: list[Message] = []
    acked = [0]

    def send(message: Message) -> None:
        future = producer.send(
            topics[message.source], key=message.key, value=orjson.dumps(message.value)
        )
        future.add_callback(lambda _: acked.__setitem__(0, acked[0] + message.events))
        future.add_errback(lambda _: failed.append(message))

    try:
        for message in messages:
            send(message)
        producer.flush()
        for attempt in range(5):
            if not failed:
                break
            say(f"  {len(failed):,} messages not acknowledged: sending them again ({attempt + 1})")
            again, failed[:] = list(failed), []
            for message in again:
                send(message)
            producer.flush()
    finally:
        producer.close()
    if failed:
        raise RuntimeError(f"{len(failed):,} messages were never acknowledged by the broker")
    return acked[0]


def ten_clicks(generator: TrafficGenerator, customer_id: str) -> Message:
    """One message of exactly 10 clickstream events of one customer, in event-time order:
    the generator's sessions of that customer, cut at 10 (its identify and purchases left out)."""
    clicks: list[dict[str, Any]] = []
    while len(clicks) < 10:
        for message in generator.session(customer_id):
            if message.source == "clickstream":
                value = message.value
                clicks += value if isinstance(value, list) else [value]
    clicks = sorted(clicks[:10], key=lambda e: int(e["ts"]))
    return Message("clickstream", customer_id, clicks)


@dataclass
class RunFigures:
    """One run's measurements: customers loaded, the worker's rate, memory and disk grown."""

    customers: int
    events: int
    rate: float  # events per second, the worker's counter from first to last event
    rss_before: int
    rss_after: int
    redis_growth: int
    disk: int  # the data directory after the worker stopped

    def per(self, grown: int) -> float:
        return grown / max(self.customers, 1)


@dataclass
class Recovery:
    """A worker started with a new event waiting: seconds to 'Worker ready' and to the event
    applied (None: not seen), and its RSS then."""

    ready: float | None
    applied: float | None
    rss: int


class MillionCustomers:
    """A million customers through one RocksDB worker, against ``million_baseline``; restart and
    full recovery."""

    def __init__(self, ctx: BenchContext) -> None:
        self.ctx = ctx
        self.n = ctx.config.million_customers
        self.base_n = ctx.config.million_baseline
        self.stopped_early = False
        self.shape = "10 events (arrays of 10)"

    def run(self) -> None:
        ctx = self.ctx
        base_settings = self._settings("base")
        base = self._run(base_settings, self._generator(self.base_n, 61), "m-base")
        settings = self._settings("main")
        generator = self._generator(self.n, 67)
        big = self._run(settings, generator, "m-main")
        ctx.note(
            f"A million customers: with {big.events:,} events of {big.customers:,} customers "
            f"loaded and read, {self._machine()} (Tansu keeps every topic in memory)."
        )
        memory_figures(ctx.report, big, base)
        probe = generator.customer_ids[0]
        restart = self._recover(settings, generator, probe, "m-restart")
        lost = self._recover(
            settings.model_copy(update={"data_dir": str(ctx.workdir / "million-lost")}),
            generator,
            probe,
            "m-lost",
        )
        recovery_figures(ctx.report, big, restart, lost)
        if self.stopped_early:
            ctx.note(
                f"A million customers: the machine ran short of memory (Tansu holds every topic "
                f"in memory), so loading stopped at {big.customers:,} customers."
            )

    # -- runs ---------------------------------------------------------------------------------

    def _settings(self, name: str) -> Settings:
        # info: the recovery timings read "Worker ready" off the log
        return self.ctx.settings(
            state_store="rocksdb",
            data_dir=str(self.ctx.workdir / f"million-{name}"),
            log_level="info",
        )

    def _generator(self, customers: int, seed: int) -> TrafficGenerator:
        now = int(time.time() * 1000)
        # ~3 sessions a customer, 0.5 s of event clock apart: started far enough back that no
        # event is dated after the wall clock (the worker dead-letters those)
        start = now - max(2 * DAY_MS, customers * 3 * 500 + DAY_MS)
        return TrafficGenerator(
            customers=customers,
            seed=seed,
            start_ms=start,
            session_gap_ms=500,
            arrays=False,
            not_after=lambda: now,
        )

    def _messages(self, generator: TrafficGenerator, loaded: list[int]) -> Iterator[Message]:
        """Each customer's 10 events, customer after customer; stops short of the machine's
        memory floor (``loaded[0]`` counts the customers sent)."""
        for i, cid in enumerate(generator.customer_ids):
            if i % 10_000 == 0:
                if psutil.virtual_memory().available < MEMORY_FLOOR:
                    self.stopped_early = True
                    self.ctx.say(f"  [red]memory short: loading stopped at {i:,} customers[/red]")
                    return
                if i and i % 100_000 == 0:
                    self.ctx.say(f"  loading: {i:,} customers, {self._machine()}")
            loaded[0] = i + 1
            yield ten_clicks(generator, cid)

    def _run(self, settings: Settings, generator: TrafficGenerator, tag: str) -> RunFigures:
        ctx = self.ctx
        n = len(generator.customer_ids)
        ctx.say(f"million: loading {n:,} customers x {self.shape} ...")
        loaded = [0]
        started = time.monotonic()
        events = load_acknowledged(settings, self._messages(generator, loaded), ctx.say)
        customers, elapsed = loaded[0], time.monotonic() - started
        ctx.say(
            f"  loaded {customers:,} customers, {events:,} events in {elapsed:,.0f} s "
            f"({events / max(elapsed, 1e-6):,.0f} events/s); {self._machine()}"
        )
        redis_before = int(ctx.redis.info("memory")["used_memory"])
        procs = ctx.start_workers(settings, 1, tag)
        worker = psutil.Process(procs[0].pid)
        rss_before, rate = self._span(settings, events, procs, worker)
        time.sleep(2)  # the last batch's records and heartbeat
        rss_after = worker.memory_info().rss
        redis_growth = int(ctx.redis.info("memory")["used_memory"]) - redis_before
        ctx.stop(procs)
        disk = dir_size(Path(settings.data_dir))
        run = RunFigures(customers, events, rate, rss_before, rss_after, redis_growth, disk)
        ctx.say(
            f"  {customers:,} customers: {rate:,.0f} events/s; Redis {run.per(redis_growth):,.0f}"
            f" B, worker RSS {run.per(rss_after - rss_before):,.0f} B (total "
            f"{rss_after / 2**20:,.0f} MiB), disk {run.per(disk):,.0f} B per customer"
        )
        return run

    def _recover(
        self, settings: Settings, generator: TrafficGenerator, probe: str, tag: str
    ) -> Recovery:
        """Start a worker on ``settings.data_dir`` with a new event of ``probe`` waiting: seconds
        to 'Worker ready' and to the event applied, and its RSS then."""
        ctx = self.ctx
        client = ctx.client(settings)
        before = int((client.get(probe) or {}).get("events_applied", 0))
        state = "its data directory" if Path(settings.data_dir).exists() else "an empty disk"
        ctx.say(f"million: a worker starts on {state} ({tag})")
        started = time.monotonic()
        procs = ctx.start_workers(settings, 1, tag)
        send_messages(settings, iter([ten_clicks(generator, probe)]))
        log = ctx.workdir / f"{tag}-w0.log"
        ready = applied = None
        rss = 0
        try:
            while time.monotonic() - started < 3600 and applied is None:
                self._check(procs)
                now = time.monotonic() - started
                if ready is None and "Worker ready" in log.read_text(errors="replace"):
                    ready = now
                    ctx.say(f"  Worker ready after {ready:,.1f} s")
                if int((client.get(probe) or {}).get("events_applied", 0)) > before:
                    applied = now
                time.sleep(0.1)
            rss = psutil.Process(procs[0].pid).memory_info().rss
        finally:
            client.close()
            ctx.stop(procs)
        done = "not applied" if applied is None else f"applied after {applied:,.1f} s"
        ctx.say(f"  new event {done}; RSS {rss / 2**20:,.0f} MiB")
        return Recovery(ready, applied, rss)

    def _span(
        self, settings: Settings, events: int, procs: Procs, worker: psutil.Process
    ) -> tuple[int, float]:
        """Watch a worker from its start until it has applied ``events`` events: its RSS
        before its first event, and its rate from the first event seen to the last (the
        events done when it was first seen left out: the topic is loaded before it starts)."""
        ctx, client = self.ctx, self.ctx.client(settings)
        rss_before, first, last_say = 0, None, 0.0
        started = moved = time.monotonic()
        seen = 0
        try:
            while time.monotonic() - started < 4 * 3600:
                self._check(procs)
                done, now = int(client.stats().get("events", 0)), time.monotonic()
                if not done:
                    rss_before = worker.memory_info().rss
                elif first is None:
                    first = (now, done)
                    ctx.say(f"  worker's first events after {now - started:,.1f} s")
                if done != seen:
                    seen, moved = done, now
                stalled = first is not None and now - moved > STALL_SECONDS
                if first is not None and (done >= events or stalled):
                    if stalled:
                        ctx.note(
                            f"A million customers: the worker stopped at {done:,} of {events:,} "
                            f"acknowledged events ({STALL_SECONDS:.0f} s without progress); "
                            "the figures are of the events it applied."
                        )
                    return rss_before, (done - first[1]) / max(moved - first[0], 1e-6)
                if now - last_say >= 20:
                    last_say = now
                    rss = worker.memory_info().rss / 2**20
                    ctx.say(f"  worker: {done:,}/{events:,} events, RSS {rss:,.0f} MiB")
                time.sleep(0.02)
        finally:
            client.close()
        raise RuntimeError(f"the worker did not apply {events:,} events in 4 hours")

    @staticmethod
    def _check(procs: Procs) -> None:
        if procs[0].poll() is not None:
            raise RuntimeError(f"a recovering worker exited with {procs[0].returncode}")

    def _machine(self) -> str:
        broker = self.ctx.stack.processes[0] if self.ctx.stack.processes else None
        tansu = psutil.Process(broker.pid).memory_info().rss / 2**30 if broker else 0.0
        free = psutil.virtual_memory().available / 2**30
        return f"broker RSS {tansu:,.1f} GiB, machine {free:,.1f} GiB available"


def memory_figures(report: Report, big: RunFigures, base: RunFigures) -> None:
    """Throughput, memory and disk per customer, beside the smaller run."""
    section = _section(big)
    base_name = f"{base.customers:,} customers, same traffic shape"
    report.add(
        Figure(
            section,
            "one worker, arrays of 10",
            big.rate,
            "events/s",
            base.rate,
            base_name,
            note=f"{big.events:,} events loaded first, then read by the worker alone",
        )
    )
    grown = big.per(big.rss_after - big.rss_before)
    report.add(
        Figure(
            section,
            "worker process, RSS growth / customers",
            grown,
            "bytes",
            base.per(base.rss_after - base.rss_before),
            base_name,
            "<= 2 KB",
            grown <= 2048,
            f"RocksDB state; {big.rss_after / 2**20:,.0f} MiB RSS at the end, "
            f"{big.rss_before / 2**20:,.0f} MiB after joining",
        )
    )
    report.add(
        Figure(
            section,
            "Redis, used_memory growth / customers",
            big.per(big.redis_growth),
            "bytes",
            base.per(base.redis_growth),
            base_name,
            "<= 1 KB",
            big.per(big.redis_growth) <= 1024,
        )
    )
    report.add(
        Figure(
            section,
            "worker's data directory (RocksDB) on disk / customers",
            big.per(big.disk),
            "bytes",
            base.per(base.disk),
            base_name,
            note=f"{big.disk / 2**20:,.0f} MiB after a clean stop",
        )
    )


def recovery_figures(report: Report, big: RunFigures, restart: Recovery, lost: Recovery) -> None:
    """A restart on the data directory, and a worker that lost its disk."""
    section = _section(big)
    nan = float("nan")
    r_ready, r_applied = restart.ready, restart.applied
    l_ready, l_applied, l_rss = lost.ready, lost.applied, lost.rss
    applied = nan if r_applied is None else r_applied
    report.add(
        Figure(
            section,
            "restart on its data directory: start to a new event applied",
            applied,
            "s",
            target="<= 30 s",
            met=None if r_applied is None else r_applied <= 30,
            note="SIGTERM, then a new worker on the same RocksDB databases, reading only "
            "the changelog after their offsets"
            + (f"; 'Worker ready' at {r_ready:.1f} s" if r_ready is not None else ""),
        )
    )
    report.add(
        Figure(
            section,
            "a worker that lost its disk: start to 'Worker ready'",
            nan if l_ready is None else l_ready,
            "s",
            note="an empty data directory: the whole changelog read back into RocksDB",
        )
    )
    report.add(
        Figure(
            section,
            "a worker that lost its disk: start to a new event applied",
            nan if l_applied is None else l_applied,
            "s",
            note=f"RSS {l_rss / 2**20:,.0f} MiB once recovered",
        )
    )


def _section(big: RunFigures) -> str:
    return f"A million customers ({big.customers:,} customers, RocksDB, one worker)"


class ShortMillion(MillionCustomers):
    """The phase shortened for a machine too loaded to run it whole: each customer one message
    of ``clicks`` synthetic clicks (cheap to make: no generator sessions), no baseline run; then
    the same restart and lost-disk measurements (``python -m stream.tools.bench_million``)."""

    def __init__(self, ctx: BenchContext, clicks: int) -> None:
        super().__init__(ctx)
        self.clicks = clicks
        self.shape = f"{clicks} clicks (one message)"

    def _messages(self, generator: TrafficGenerator, loaded: list[int]) -> Iterator[Message]:
        start = int(time.time() * 1000) - 3 * DAY_MS
        for i, cid in enumerate(generator.customer_ids):
            if i and i % 100_000 == 0:
                self.ctx.say(f"  loading: {i:,} customers, {self._machine()}")
            loaded[0] = i + 1
            ts = start + i * 200
            clicks = [
                {
                    "event_id": f"m-{i}-{k}",
                    "type": "search",
                    "customer_id": cid,
                    "ts": ts + k * 1000,
                    "session_id": f"s-{i}",
                    "device": "desktop",
                    "country": "GB",
                    "channel": "direct",
                    "page": "/search",
                }
                for k in range(self.clicks)
            ]
            yield Message("clickstream", cid, clicks)

    def run(self) -> None:
        ctx = self.ctx
        settings = self._settings("main")
        generator = self._generator(self.n, 67)
        big = self._run(settings, generator, "m-main")
        ctx.note(
            f"A shortened million run: {big.customers:,} customers, each one message of "
            f"{self.clicks} clicks ({big.events:,} events), no baseline; {self._machine()}."
        )
        probe = generator.customer_ids[0]
        restart = self._recover(settings, generator, probe, "m-restart")
        lost = self._recover(
            settings.model_copy(update={"data_dir": str(ctx.workdir / "million-lost")}),
            generator,
            probe,
            "m-lost",
        )
        section, grown = _section(big), big.per(big.rss_after - big.rss_before)
        for what, ours, unit, target, met in (
            (f"one worker, {self.clicks} clicks a message", big.rate, "events/s", "", None),
            ("worker process, RSS growth / customers", grown, "bytes", "<= 2 KB", grown <= 2048),
            ("Redis, used_memory growth / customers", big.per(big.redis_growth), "bytes", "", None),
            ("worker's data directory (RocksDB) / customers", big.per(big.disk), "bytes", "", None),
        ):
            ctx.report.add(Figure(section, what, ours, unit, target=target, met=met))
        recovery_figures(ctx.report, big, restart, lost)


def main(argv: list[str] | None = None) -> None:
    """``python -m stream.tools.bench_million [--customers N] [--clicks K] [--out PATH]``."""
    import argparse

    from rich.console import Console

    from stream.kafka import wait_for_broker
    from stream.tools.bench_context import BenchConfig
    from stream.tools.bench_report import Report, write_report
    from stream.tools.embedded import EmbeddedStack

    parser = argparse.ArgumentParser(description=ShortMillion.__doc__)
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--clicks", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("/tmp/million-short.md"))
    args = parser.parse_args(argv)
    console, report, stack = Console(), Report(), EmbeddedStack()
    stack.start()
    ctx = BenchContext(stack, console, report, BenchConfig(million_customers=args.customers))
    console.print(f"logs in {stack.workdir}")
    started = time.monotonic()
    try:
        wait_for_broker(Settings(kafka_url=stack.kafka_url))
        ShortMillion(ctx, args.clicks).run()
    finally:
        ctx.close()
        stack.stop()
    command = (
        f"python -m stream.tools.bench_million --customers {args.customers} --clicks {args.clicks}"
    )
    write_report(report, args.out, command, time.monotonic() - started)
    console.print(f"written {args.out}")


if __name__ == "__main__":
    main()
