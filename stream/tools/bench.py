"""`segmenter bench` (`make bench`): speed, freshness, memory, recovery and scale-out, each
figure measured beside its baseline in the same run, on a broker and Redis of its own.

These machines are shared and noisy, so the figures that matter are the ratios: our worker
against a plain aiokafka consumer and a bare Faust agent on the same topic, our client's read
against a bare redis-py GET on the same server, two workers against one. It measures; it does
not judge: the exit code is 0 whatever the numbers, and the report says which targets were met.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import psutil
import redis
from rich.console import Console

from stream.kafka import ensure_topics, make_producer, ssl_context, wait_for_broker
from stream.settings import Settings
from stream.store import SegmentClient, record_key
from stream.tools.demo import start_worker, stop_process
from stream.tools.embedded import EmbeddedStack
from stream.tools.generator import Message, TrafficGenerator
from stream.tools.producer import send_messages

__all__ = ["BenchConfig", "Figure", "run_bench"]


@dataclass
class BenchConfig:
    single_events: int = 60_000  # one event per message
    array_events: int = 400_000  # arrays of 10 events of one customer per message
    customers: int = 5_000  # customers of the throughput and freshness traffic
    memory_customers: int = 100_000
    fresh_seconds: float = 20.0
    scale_events: int = 300_000
    profile: bool = True

    @classmethod
    def quick(cls) -> BenchConfig:
        """A smoke run (about two minutes): small volumes, every phase, numbers not meaningful."""
        return cls(6_000, 30_000, 500, 3_000, 4.0, 30_000, profile=False)


@dataclass
class Figure:
    """One measured figure beside its baseline (both from this run)."""

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

    def add(self, figure: Figure) -> Figure:
        self.figures.append(figure)
        return figure


# --- traffic ------------------------------------------------------------------------------


def click_streams(customers: int, events: int, seed: int) -> dict[str, list[dict[str, Any]]]:
    """About ``events`` generated clickstream events, per customer in event-time order."""
    generator = TrafficGenerator(customers=customers, seed=seed, arrays=False)
    per: dict[str, list[dict[str, Any]]] = {}
    total = 0
    while total < events:
        for message in generator.session(generator.pick()):
            if message.source == "clickstream":
                per.setdefault(message.key, []).append(message.value)  # type: ignore[arg-type]
                total += 1
    return per


def as_singles(per: dict[str, list[dict[str, Any]]], events: int) -> list[Message]:
    """One event per message, customers interleaved (each customer's events in order)."""
    out: list[Message] = []
    queues = {cid: iter(evs) for cid, evs in per.items()}
    while queues and len(out) < events:
        for cid in list(queues):
            event = next(queues[cid], None)
            if event is None:
                del queues[cid]
            else:
                out.append(Message("clickstream", cid, event))
    return out[:events]


def as_arrays(per: dict[str, list[dict[str, Any]]], events: int, size: int = 10) -> list[Message]:
    """Arrays of exactly ``size`` events of one customer per message."""
    chunks = {
        cid: [evs[i : i + size] for i in range(0, len(evs) - size + 1, size)]
        for cid, evs in per.items()
    }
    out: list[Message] = []
    while chunks and len(out) * size < events:
        for cid in list(chunks):
            if not chunks[cid]:
                del chunks[cid]
            else:
                out.append(Message("clickstream", cid, chunks[cid].pop(0)))
    return out[: events // size]


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --- the bench ----------------------------------------------------------------------------


class Bench:
    def __init__(self, stack: EmbeddedStack, workdir: Path, console: Console) -> None:
        self.stack = stack
        self.workdir = workdir
        self.console = console
        self.redis = redis.Redis.from_url(stack.redis_url)
        self.procs: list[subprocess.Popen[bytes]] = []

    def settings(self, **overrides: Any) -> Settings:
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
        }
        options.update(overrides)
        settings = Settings(**options)
        ensure_topics(settings)
        return settings

    def say(self, text: str) -> None:
        self.console.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] {text}")

    # processes

    def start_workers(self, settings: Settings, n: int, tag: str) -> list[subprocess.Popen[bytes]]:
        procs = []
        for i in range(n):
            log = self.workdir / f"{tag}-w{i}.log"
            procs.append(start_worker(settings, log, f"{tag}-w{i}"))
        self.procs += procs
        return procs

    def stop(self, procs: list[subprocess.Popen[bytes]]) -> None:
        for proc in procs:
            stop_process(proc)
            with contextlib.suppress(ValueError):
                self.procs.remove(proc)

    def wait_joined(self, settings: Settings, n: int, procs: list[subprocess.Popen[bytes]]) -> None:
        client = SegmentClient(settings.redis_url.get_secret_value(), settings.redis_prefix)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            for proc in procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"a bench worker exited with {proc.returncode}")
            beats = client.workers()
            owned = sum(len(b["partitions"]) for b in beats)
            if (
                len(beats) >= n
                and all(b["partitions"] for b in beats)
                and owned == settings.partitions
            ):
                client.close()
                return
            time.sleep(0.2)
        raise RuntimeError(f"{n} workers did not share the partitions within 180 s")

    def load(self, settings: Settings, messages: list[Message]) -> float:
        """Send messages as fast as the producer goes; events per second sent."""
        stats = send_messages(settings, iter(messages))
        return stats.rate

    def worker_span(
        self,
        settings: Settings,
        events: int,
        procs: list[subprocess.Popen[bytes]],
        on_tick: Callable[[int], None] | None = None,
    ) -> tuple[float, float]:
        """Wall time from the first processed event to the ``events``-th, read off the
        workers' shared counter in Redis; (seconds, events per second)."""
        client = SegmentClient(settings.redis_url.get_secret_value(), settings.redis_prefix)
        first = None
        deadline = time.monotonic() + 900
        last_tick = 0.0
        try:
            while time.monotonic() < deadline:
                done = client.stats().get("events", 0)
                now = time.monotonic()
                if done and first is None:
                    first = now
                if done >= events and first is not None:
                    span = max(now - first, 1e-6)
                    return span, events / span
                if on_tick and now - last_tick > 2:
                    last_tick = now
                    on_tick(done)
                for proc in procs:
                    if proc.poll() is not None:
                        raise RuntimeError(f"a bench worker exited with {proc.returncode}")
                time.sleep(0.01)
        finally:
            client.close()
        raise RuntimeError(f"the worker did not process {events} events in 900 s")

    def raw_consumer(self, settings: Settings, messages: int) -> float:
        """Messages per second of a plain aiokafka consumer that reads and parses every value."""
        from aiokafka import AIOKafkaConsumer, TopicPartition

        async def run() -> float:
            consumer = AIOKafkaConsumer(
                bootstrap_servers=settings.bootstrap_servers,
                security_protocol=settings.kafka_security_protocol,
                ssl_context=ssl_context(settings),
                enable_auto_commit=False,
                group_id=None,
                max_partition_fetch_bytes=4 * 1024 * 1024,
            )
            await consumer.start()
            try:
                tps = []
                for topic in settings.input_topics:
                    parts = consumer.partitions_for_topic(topic)
                    if not parts:
                        await consumer._client.force_metadata_update()  # noqa: SLF001
                        parts = consumer.partitions_for_topic(topic) or set()
                    tps += [TopicPartition(topic, p) for p in parts]
                consumer.assign(tps)
                await consumer.seek_to_beginning(*tps)
                seen, first = 0, 0.0
                while seen < messages:
                    batch = await consumer.getmany(timeout_ms=1000, max_records=10_000)
                    for records in batch.values():
                        if not first:
                            first = time.monotonic()
                        for record in records:
                            orjson.loads(record.value)
                        seen += len(records)
                return seen / max(time.monotonic() - first, 1e-6)
            finally:
                await consumer.stop()

        rate: float = asyncio.run(run())
        return rate

    def bare_faust(self, settings: Settings, messages: int, mode: str) -> float:
        """Messages per second of a bare Faust agent (stream/bench_faust.py) on the topic."""
        result = self.workdir / f"bare-{mode}-{uuid.uuid4().hex[:6]}.json"
        env = {
            **os.environ,
            **settings.env(),
            "BENCH_TARGET": str(messages),
            "BENCH_RESULT": str(result),
            "BENCH_MODE": mode,
        }
        log = open(self.workdir / f"bare-{mode}.log", "ab")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen(
            [sys.executable, "-m", "stream.tools.bench_faust", "worker", "-l", "warn"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.procs.append(proc)
        try:
            proc.wait(timeout=900)
        finally:
            stop_process(proc)
            self.procs.remove(proc)
        data = orjson.loads(result.read_bytes())
        span = float(data["last"]) - float(data["first"])
        return float(data["messages"]) / max(span, 1e-6)

    # phases

    def throughput(self, report: Report, config: BenchConfig, arrays: bool) -> None:
        size = 10 if arrays else 1
        label = "arrays of 10" if arrays else "one event per message"
        total = config.array_events if arrays else config.single_events
        per = click_streams(config.customers, total + config.customers * 20, seed=11 + size)
        messages = as_arrays(per, total) if arrays else as_singles(per, total)
        events = sum(m.events for m in messages)
        settings = self.settings()
        self.say(f"throughput, {label}: loading {events:,} events in {len(messages):,} messages")
        sent = self.load(settings, messages)
        self.say(f"  loaded at {sent:,.0f} events/s; plain aiokafka consumer...")
        raw = self.raw_consumer(settings, len(messages)) * size
        self.say(f"  aiokafka {raw:,.0f} events/s; bare Faust agent, message by message...")
        bare = self.bare_faust(settings, len(messages), "each") * size
        self.say(f"  bare Faust {bare:,.0f} events/s; bare Faust agent taking batches...")
        bare_take = self.bare_faust(settings, len(messages), "take") * size
        self.say(f"  bare Faust (batches) {bare_take:,.0f} events/s; our worker...")
        procs = self.start_workers(settings, 1, f"tp{size}")
        profiler = self._profile(procs[0].pid, config) if config.profile else None
        missing = "py-spy is not installed here: no profile taken."
        if config.profile and profiler is None and missing not in report.notes:
            report.notes.append(missing)
        _, ours = self.worker_span(
            settings, events, procs, lambda n: self.say(f"  worker: {n:,}/{events:,} events")
        )
        if profiler is not None:
            self._finish_profile(profiler, report, label)
        self.stop(procs)
        self.say(f"  our worker {ours:,.0f} events/s")
        report.rates[label] = {
            "plain aiokafka consumer (read + parse)": raw,
            "bare Faust agent, per message": bare,
            "bare Faust agent, batches": bare_take,
            "our worker": ours,
        }
        section = f"Throughput, {label}"
        if arrays:
            report.add(
                Figure(
                    section,
                    "our worker",
                    ours,
                    "events/s",
                    target=">= 50,000 events/s",
                    met=ours >= 50_000,
                )
            )
        else:
            report.add(
                Figure(
                    section,
                    "our worker vs bare Faust agent",
                    ours,
                    "events/s",
                    bare,
                    "bare Faust agent (per message)",
                    ">= 0.7",
                    ours / bare >= 0.7,
                )
            )
        # The plain-consumer ratio has a target with arrays only.
        raw_target = (">= 0.25", ours / raw >= 0.25) if arrays else ("", None)
        report.add(
            Figure(
                section,
                "our worker vs plain aiokafka",
                ours,
                "events/s",
                raw,
                "aiokafka consumer (read + parse)",
                *raw_target,
            )
        )
        report.add(
            Figure(
                section,
                "bare Faust agent, per message",
                bare,
                "events/s",
                raw,
                "aiokafka consumer (read + parse)",
                note="Faust's own floor",
            )
        )
        report.add(
            Figure(
                section,
                "our worker vs bare Faust taking batches",
                ours,
                "events/s",
                bare_take,
                "bare Faust agent (noack_take batches)",
            )
        )

    def _profile(self, pid: int, config: BenchConfig) -> subprocess.Popen[bytes] | None:
        out = self.workdir / "worker-profile.txt"
        try:
            return subprocess.Popen(
                [
                    _py_spy(),
                    "record",
                    "--pid",
                    str(pid),
                    "--format",
                    "raw",
                    "--rate",
                    "200",
                    "--output",
                    str(out),
                    "--nonblocking",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        except OSError:
            return None

    def _finish_profile(
        self, profiler: subprocess.Popen[bytes], report: Report, label: str
    ) -> None:
        profiler.send_signal(signal.SIGINT)
        try:
            profiler.wait(timeout=30)
        except subprocess.TimeoutExpired:
            profiler.kill()
        out = self.workdir / "worker-profile.txt"
        if not out.exists():
            report.notes.append("py-spy could not profile the worker here (no profile taken).")
            return
        raw = out.read_text(errors="replace")
        out.unlink()
        report.profiles[label] = (summarize_stages(raw), summarize_profile(raw))

    def freshness(
        self, report: Report, config: BenchConfig, rate: float, arrays: bool, floor: bool = False
    ) -> None:
        """Send-to-readable latency with probe customers at ``rate``; ``floor``: a rate well
        under one worker's capacity, to show the latency without queueing (no target)."""
        size = 10 if arrays else 1
        label = f"{rate:,.0f} events/s, " + ("arrays of 10" if arrays else "one per message")
        settings = self.settings()
        per = click_streams(config.customers, int(rate * config.fresh_seconds * 1.3), seed=29)
        load = as_arrays(per, 10**9) if arrays else as_singles(per, 10**9)
        template = next(iter(per.values()))[:size]
        procs = self.start_workers(settings, 1, f"fresh{size}")
        self.wait_joined(settings, 1, procs)
        # Warm up: the first messages create the customers and the model's first records.
        send_messages(settings, iter(load[: len(load) // 10]))
        self.worker_span(settings, sum(m.events for m in load[: len(load) // 10]), procs)
        self.say(f"freshness at {label}: {config.fresh_seconds:.0f} s of traffic with probes")
        stop = threading.Event()
        producer = make_producer(settings)
        topic = settings.topic(settings.clickstream_topic)
        sent: dict[str, float] = {}
        seen: dict[str, float] = {}
        lock = threading.Lock()
        reads_ours: list[float] = []
        reads_bare: list[float] = []  # both filled by read_probe, in another process

        def traffic() -> None:
            send_messages(
                settings,
                iter(load[len(load) // 10 :]),
                rate=rate - size * 20,  # the probes make up the rest
                seconds=config.fresh_seconds,
                stop=stop,
                producer=producer,
            )

        def probes() -> None:
            i = 0
            while not stop.is_set():
                cid = f"probe-{uuid.uuid4().hex[:8]}-{i}"
                events = [
                    {**e, "customer_id": cid, "event_id": f"{cid}-{j}"}
                    for j, e in enumerate(template)
                ]
                value = orjson.dumps(events if arrays else events[0])
                with lock:
                    sent[cid] = time.perf_counter()
                producer.send(topic, key=cid.encode(), value=value)
                i += 1
                time.sleep(0.05)

        def watch() -> None:
            client = redis.Redis.from_url(settings.redis_url.get_secret_value())
            while not stop.is_set() or len(seen) < len(sent):
                with lock:
                    pending = [c for c in sent if c not in seen]
                if pending:
                    pipe = client.pipeline(transaction=False)
                    for cid in pending:
                        pipe.exists(record_key(settings.redis_prefix, cid))
                    now = time.perf_counter()
                    for cid, there in zip(pending, pipe.execute(), strict=True):
                        if there:
                            seen[cid] = now
                if stop.is_set() and time.perf_counter() - stop_at[0] > 10:
                    break
                time.sleep(0.0005)
            client.close()

        stop_at = [0.0]
        threads = [threading.Thread(target=f, daemon=True) for f in (traffic, probes, watch)]
        reader = None
        if (
            arrays and not floor
        ):  # reads from a process of its own: this one's threads would delay them
            spawn = multiprocessing.get_context("spawn")
            results: Any = spawn.Queue()
            reader = spawn.Process(
                target=read_probe,
                args=(
                    settings.redis_url.get_secret_value(),
                    settings.redis_prefix,
                    list(per),
                    config.fresh_seconds,
                    results,
                ),
                daemon=True,
            )
            reader.start()
        for t in threads:
            t.start()
        if reader is not None:
            reads_ours, reads_bare = results.get(timeout=config.fresh_seconds + 120)
            reader.join(timeout=10)
        threads[0].join()
        stop_at[0] = time.perf_counter()
        stop.set()
        for t in threads[1:]:
            t.join(timeout=30)
        producer.close()
        self.stop(procs)
        latencies = [(seen[c] - sent[c]) * 1000 for c in sent if c in seen]
        lost = len(sent) - len(latencies)
        p50, p99 = _percentile(latencies, 0.5), _percentile(latencies, 0.99)
        self.say(f"  freshness p50 {p50:.1f} ms, p99 {p99:.1f} ms over {len(latencies)} probes")
        section = "Freshness (send to readable in Redis)"
        note = f"{len(latencies)} probes" + (f", {lost} not seen within 10 s" if lost else "")
        if floor:
            note += "; well under one worker's capacity: the floor without queueing"
        target, met = ("", None) if floor else ("<= 50 ms", p99 <= 50)
        report.add(Figure(section, f"p50 at {label}", p50, "ms", note=note))
        report.add(Figure(section, f"p99 at {label}", p99, "ms", target=target, met=met, note=note))
        if arrays and not floor:
            o50, o99 = _percentile(reads_ours, 0.5) * 1000, _percentile(reads_ours, 0.99) * 1000
            b50, b99 = _percentile(reads_bare, 0.5) * 1000, _percentile(reads_bare, 0.99) * 1000
            self.say(f"  reads: client get p99 {o99:.3f} ms, bare GET p99 {b99:.3f} ms")
            section = f"Read latency under ingest ({label})"
            n = f"{len(reads_ours):,} and {len(reads_bare):,} reads, interleaved, own process"
            report.add(
                Figure(section, "client get p50", o50, "ms", b50, "bare redis-py GET p50", note=n)
            )
            report.add(
                Figure(
                    section,
                    "client get p99",
                    o99,
                    "ms",
                    b99,
                    "bare redis-py GET p99",
                    "<= 1 ms and <= 1.5x bare",
                    o99 <= 1.0 and o99 <= 1.5 * b99,
                    note=n,
                )
            )

    def memory_and_recovery(self, report: Report, config: BenchConfig) -> None:
        n = config.memory_customers
        settings = self.settings(log_level="info")
        procs = self.start_workers(settings, 1, "mem")
        self.wait_joined(settings, 1, procs)
        worker = psutil.Process(procs[0].pid)
        time.sleep(1)
        rss_before = worker.memory_info().rss
        redis_before = int(self.redis.info("memory")["used_memory"])
        generator = TrafficGenerator(customers=n, seed=41)
        messages = [m for cid in generator.customer_ids for m in generator.session(cid)]
        events = sum(m.events for m in messages)
        self.say(f"memory: {n:,} customers, {events:,} events in {len(messages):,} messages")
        send_messages(settings, iter(messages))
        self.worker_span(
            settings, events, procs, lambda k: self.say(f"  worker: {k:,}/{events:,} events")
        )
        time.sleep(2)
        client = SegmentClient(settings.redis_url.get_secret_value(), settings.redis_prefix)
        customers = client.customers()
        rss_after = worker.memory_info().rss
        redis_after = int(self.redis.info("memory")["used_memory"])
        sample = random.Random(5).sample(generator.customer_ids, min(1000, n))
        usage = [
            int(self.redis.memory_usage(record_key(settings.redis_prefix, c)) or 0) for c in sample
        ]
        per_redis = (redis_after - redis_before) / n
        per_worker = (rss_after - rss_before) / n
        self.say(f"  Redis {per_redis:,.0f} B/customer, worker {per_worker:,.0f} B/customer")
        section = f"Memory per customer ({n:,} customers)"
        report.add(
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
        report.add(
            Figure(
                section,
                "worker process, RSS growth / customers",
                per_worker,
                "bytes",
                note="the Faust table (memory://) holds every profile of its partitions",
            )
        )
        # Recovery: a new worker with the same app id rebuilds its table from the changelog.
        self.stop(procs)
        self.say(f"recovery: a new worker recovers {n:,} customers from the changelog")
        started = time.monotonic()
        procs = self.start_workers(settings, 1, "recover")
        log = self.workdir / "recover-w0.log"
        ready = None
        while time.monotonic() - started < 900:
            if procs[0].poll() is not None:
                raise RuntimeError("the recovering worker exited")
            if "Worker ready" in log.read_text(errors="replace"):
                ready = time.monotonic() - started
                break
            time.sleep(0.1)
        probe = generator.customer_ids[0]
        before = (client.get(probe) or {}).get("events_applied", 0)
        send_messages(settings, iter(generator.session(probe)))
        applied = None
        while time.monotonic() - started < 900:
            if (client.get(probe) or {}).get("events_applied", 0) > before:
                applied = time.monotonic() - started
                break
            time.sleep(0.05)
        text = log.read_text(errors="replace")
        scheduled = [line for line in text.splitlines() if "lifecycle schedule:" in line]
        self.stop(procs)
        client.close()
        section = f"Recovery after a restart ({n:,} customers)"
        note = scheduled[-1].split("]: ", 1)[-1] if scheduled else ""
        if ready is not None:
            report.add(
                Figure(section, "start to 'Worker ready' (table recovered)", ready, "s", note=note)
            )
        if applied is not None:
            report.add(Figure(section, "start to a new event applied", applied, "s"))
        self.say(f"  ready after {ready} s, first new event applied after {applied} s")

    def scale(self, report: Report, config: BenchConfig) -> None:
        per = click_streams(config.customers, config.scale_events + config.customers * 20, 53)
        messages = as_arrays(per, config.scale_events)
        events = sum(m.events for m in messages)
        rates = {}
        for n in (1, 2):
            settings = self.settings(partitions=4)
            procs = self.start_workers(settings, n, f"scale{n}")
            self.wait_joined(settings, n, procs)
            self.say(f"scale-out: {n} worker(s), {events:,} events in arrays of 10")
            threading.Thread(target=self.load, args=(settings, messages), daemon=True).start()
            _, rates[n] = self.worker_span(settings, events, procs)
            self.stop(procs)
            self.say(f"  {n} worker(s): {rates[n]:,.0f} events/s")
        report.add(
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

    def close(self) -> None:
        for proc in list(self.procs):
            stop_process(proc)
        self.redis.close()


def read_probe(url: str, prefix: str, ids: list[str], seconds: float, results: Any) -> None:
    """Our client's ``get`` and a bare redis-py GET of the same key, back to back in a random
    order, for ``seconds``; puts both lists of latencies (seconds) on ``results``. Runs in a
    process of its own, so the bench's producer threads do not hold the GIL over a read."""
    ours = SegmentClient(url, prefix)
    bare = redis.Redis.from_url(url)
    rng = random.Random(3)
    timings: tuple[list[float], list[float]] = ([], [])
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        cid = rng.choice(ids)
        key = record_key(prefix, cid)
        for use_ours in (True, False) if rng.random() < 0.5 else (False, True):
            t = time.perf_counter()
            if use_ours:
                ours.get(cid)
                timings[0].append(time.perf_counter() - t)
            else:
                bare.get(key)
                timings[1].append(time.perf_counter() - t)
        time.sleep(0.001)
    ours.close()
    bare.close()
    results.put(timings)


def _py_spy() -> str:
    """py-spy beside this Python (the project's venv), else from PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else "py-spy"


#: The worker's stages, by the functions that run them: a py-spy sample counts for the first
#: of these found walking its stack from the innermost frame out.
STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("decoding events", ("decode_message (",)),
    ("feature updates", ("CustomerProfile.apply (",)),
    (
        "scoring: clusters, personas, rules, facts",
        ("assign (models/segments.py", "changes_between (", "remember ("),
    ),
    ("building and compressing the record", ("SegmentAssignment.record (", "encode_record (")),
    ("profile state to and from JSON", ("CustomerProfile.from_state (", "to_state (")),
    ("Redis writes (client side)", ("RedisSegmentStore.write_many (",)),
    (
        "changelog, changes and samples to Kafka",
        ("Segmenter._commit (", "Segmenter._send_all (", "Segmenter._produce (", "put ("),
    ),
    ("model training and drift (the trainer)", ("Segmenter._learn (", "Segmenter.train (")),
    ("our batching and the rest of the agent", ("stream/app.py", "stream/consumer.py")),
)
#: Where a sample with none of our stages on its stack is, by its innermost frame's file.
LIBRARIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Faust and mode: streams, consumer, tables", ("faust/", "mode/")),
    ("aiokafka and kafka-python: fetch, unpack, send", ("aiokafka/", "kafka/")),
    ("asyncio event loop and sockets", ("asyncio/", "selectors.py", "socket.py")),
    ("redis-py", ("redis/",)),
)


def _stacks(raw: str) -> Iterator[tuple[list[str], int]]:
    """py-spy's raw (collapsed) output: each stack, outermost frame first, and its samples."""
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            yield stack.split(";"), int(count)


def _shares(counts: Counter[str], top: int | None = None) -> list[tuple[str, float]]:
    total = sum(counts.values())
    return [(name, n / total) for name, n in counts.most_common(top)] if total else []


def summarize_stages(raw: str) -> list[tuple[str, float]]:
    """Share of py-spy samples per stage of the worker (``STAGES``), else per library."""
    counts: Counter[str] = Counter()
    for frames, n in _stacks(raw):
        counts[_stage_of(frames)] += n
    return _shares(counts)


def _stage_of(frames: list[str]) -> str:
    for frame in reversed(frames):
        for stage, marks in STAGES:
            if any(mark in frame for mark in marks):
                return stage
    leaf = frames[-1]
    for library, marks in LIBRARIES:
        if any(mark in leaf for mark in marks):
            return library
    return "other (Python runtime, threads, logging, metrics)"


def summarize_profile(raw: str, top: int = 15) -> list[tuple[str, float]]:
    """Self-time share per function from py-spy's raw (collapsed) stacks, largest first."""
    own: Counter[str] = Counter()
    for frames, n in _stacks(raw):
        own[frames[-1]] += n
    return _shares(own, top)


# --- the report ---------------------------------------------------------------------------


def _fmt(value: float, unit: str) -> str:
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
        base = f"{_fmt(f.baseline, f.unit)} ({f.baseline_name})" if f.baseline is not None else ""
        ratio = f"{f.ratio:.2f}" if f.ratio is not None else ""
        met = "" if f.met is None else ("yes" if f.met else "**no**")
        what = f.what + (f" ({f.note})" if f.note else "")
        lines.append(
            f"| {f.section} | {what} | {_fmt(f.ours, f.unit)} | {base} | {ratio} | {f.target} "
            f"| {met} |"
        )
    if report.rates:
        lines += [
            "",
            "## Floors: time per event on this machine",
            "",
            "The same topic read by each reader, in this run (1 / throughput). What our worker "
            "adds is its time per event less the bare Faust agent's; the profiles below say "
            "where that time goes.",
            "",
            "| run | reader | events/s | time per event |",
            "|---|---|---:|---:|",
        ]
        for label, rates in report.rates.items():
            lines += [
                f"| {label} | {name} | {rate:,.0f} | {1e6 / rate:,.1f} µs |"
                for name, rate in rates.items()
                if rate > 0
            ]
            ours, bare = rates.get("our worker", 0), rates.get("bare Faust agent, batches", 0)
            if ours > 0 and bare > 0:
                lines.append(
                    f"| {label} | our logic (our worker less bare Faust with batches) | | "
                    f"{1e6 / ours - 1e6 / bare:,.1f} µs |"
                )
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


def run_bench(
    config: BenchConfig, out: Path, console: Console, command: str = "make bench"
) -> Report:
    """Run every phase, write ``out`` (Markdown) and its chart; return the figures."""
    started = time.monotonic()
    report = Report()
    stack = EmbeddedStack()
    stack.start()
    assert stack.workdir is not None
    bench = Bench(stack, stack.workdir, console)
    console.print(
        f"[b]segmenter bench[/b]: broker {stack.kafka_url}, redis {stack.redis_url}, "
        f"logs in {stack.workdir}"
    )
    phases: list[tuple[str, Callable[[], None]]] = [
        ("throughput, one event per message", lambda: bench.throughput(report, config, False)),
        ("throughput, arrays of 10", lambda: bench.throughput(report, config, True)),
        ("freshness at 5k events/s, arrays", lambda: bench.freshness(report, config, 5000, True)),
        ("freshness at 1k events/s, singles", lambda: bench.freshness(report, config, 1000, False)),
        (
            "freshness at 200 events/s, singles (the floor)",
            lambda: bench.freshness(report, config, 200, False, floor=True),
        ),
        ("memory and recovery", lambda: bench.memory_and_recovery(report, config)),
        ("two workers against one", lambda: bench.scale(report, config)),
    ]
    try:
        wait_for_broker(Settings(kafka_url=stack.kafka_url))
        for i, (name, phase) in enumerate(phases, 1):
            console.print(f"[b][{i}/{len(phases)}] {name}[/b]")
            try:
                phase()
            except Exception as exc:  # noqa: BLE001 - a failed phase is reported, the rest runs
                console.print(f"[red]  {name} failed: {exc}[/red]")
                report.notes.append(f"Phase '{name}' failed: {exc}")
    finally:
        bench.close()
        stack.stop()
    write_report(report, out, command, time.monotonic() - started)
    console.print(f"[b]written[/b] {out} and {out.with_suffix('.png')}")
    for f in report.figures:
        ratio = f" = {f.ratio:.2f} x {f.baseline_name}" if f.ratio is not None else ""
        met = "" if f.met is None else ("  [green]met[/green]" if f.met else "  [red]not met[/red]")
        console.print(f"  {f.section}: {f.what}: {_fmt(f.ours, f.unit)}{ratio}{met}")
    return report
