"""The bench's freshness phase: send-to-readable latency in Redis of probe customers mixed
into traffic at a given rate, and (with arrays, not at the floor rate) our client's read
against a bare redis-py GET, from a process of its own, under that ingest, in a window of its
own after the probes'."""

from __future__ import annotations

import multiprocessing
import random
import threading
import time
import uuid
from typing import Any

import orjson
import psutil
from kafka import KafkaProducer

from stream.kafka import make_producer
from stream.settings import Settings
from stream.store import Keys, SegmentClient, sync_client
from stream.tools.bench_context import BenchContext, Procs, check_alive
from stream.tools.bench_report import Figure, Floor
from stream.tools.bench_scale import cores_busy, cpu_seconds, process_seconds
from stream.tools.bench_traffic import as_arrays, as_singles, click_streams, percentile
from stream.tools.generator import Message
from stream.tools.producer import ProduceStats, send_messages

__all__ = ["Freshness", "ReadsUnderIngest", "read_probe"]


#: Warm-up steps at most (``warm_up``).
WARM_STEPS = 8


class Freshness:
    """Send-to-readable latency with probe customers at ``rate``; ``floor``: a rate well under
    one worker's capacity, to show the latency without queueing (no target)."""

    def __init__(self, ctx: BenchContext, rate: float, arrays: bool, floor: bool = False) -> None:
        self.ctx = ctx
        self.rate = rate
        self.arrays = arrays
        self.floor = floor
        self.size = 10 if arrays else 1
        self.reads = arrays and not floor  # reads under ingest too, after the probes' window
        self.label = f"{rate:,.0f} events/s, " + ("arrays of 10" if arrays else "one per message")
        self.settings = ctx.settings()
        self.stop = threading.Event()
        self.stop_at = 0.0
        self.lock = threading.Lock()
        self.sent: dict[str, float] = {}  # probe customer -> sent at (perf_counter)
        self.seen: dict[str, float] = {}  # probe customer -> first seen in Redis at
        self.acked: dict[str, float] = {}  # probe customer -> the broker acknowledged it at
        self.traffic = ProduceStats()  # the load sent beside the probes
        self.error: Exception | None = None  # the load's sending failed
        #: While the load and the probes were sent: events/s offered and applied by the
        #: worker (its counter in Redis), the cores the worker process used, and the machine's
        #: busy cores out of all.
        self.window: dict[str, float] = {}

    def run(self) -> None:
        ctx, config, settings = self.ctx, self.ctx.config, self.settings
        seconds = config.fresh_seconds
        windows = 2 if self.reads else 1  # probes, then reads
        per, step = traffic(config.customers, self.rate * seconds, windows, self.size)
        load = as_arrays(per, 10**9) if self.arrays else as_singles(per, 10**9)
        template = next(iter(per.values()))[: self.size]
        procs = ctx.start_workers(settings, 1, f"fresh{self.size}")
        producer = None
        try:
            ctx.wait_joined(settings, 1, procs)
            start = warm_up(ctx, settings, load, step, procs, self.label)
            ctx.say(f"freshness at {self.label}: {seconds:.0f} s of traffic with probes")
            producer = make_producer(settings)
            self._probe_window(load[start:], template, producer, procs)
            self._figures()
            if self.reads:
                # Reads under the same ingest in a window of their own, after the probes':
                # the reads' process and the Redis it keeps busy are not on the cores while
                # freshness is measured.
                rest = load[start + self.traffic.messages :]
                ctx.say(f"reads under ingest at {self.label}: {seconds:.0f} s")
                ReadsUnderIngest(ctx, settings, self.rate, self.label).run(
                    rest, list(per), producer
                )
        finally:
            if producer is not None:
                producer.close()
            ctx.stop(procs)

    def _probe_window(
        self,
        load: list[Message],
        template: list[dict[str, Any]],
        producer: KafkaProducer,
        procs: Procs,
    ) -> None:
        """The load at ``rate`` with a probe every 50 ms and their watch, for ``fresh_seconds``;
        meanwhile (``window``) the events/s offered and applied over its second half (both
        ends in steady state, so what is in flight at each end cancels out), the cores the
        worker used and the machine's busy cores over the whole window."""
        seconds = self.ctx.config.fresh_seconds
        threads = [
            threading.Thread(target=self._traffic, args=(load, producer), daemon=True),
            threading.Thread(target=self._probes, args=(template, producer), daemon=True),
            threading.Thread(target=self._watch, daemon=True),
        ]
        client = self.ctx.client(self.settings)
        machine = psutil.cpu_count() or 1
        try:
            cpu_before = process_seconds(procs)
            machine_before = cpu_seconds()
            window_start = time.monotonic()
            for t in threads:
                t.start()
            threads[0].join(timeout=seconds / 2)
            middle = (time.monotonic(), client.stats().get("events", 0), self._offered())
            threads[0].join()
            self.stop_at = time.perf_counter()
            self.stop.set()
            end = (time.monotonic(), client.stats().get("events", 0), self._offered())
            window = max(end[0] - window_start, 1e-6)
            cores = (process_seconds(procs) - cpu_before) / window
            busy = cores_busy(machine_before, cpu_seconds(), machine)
        finally:
            client.close()
        for t in threads[1:]:
            t.join(timeout=30)
        if self.error is not None:
            raise RuntimeError(f"sending the load failed: {self.error}") from self.error
        check_alive(procs)  # a worker that died during the probes fails the phase
        half = max(end[0] - middle[0], 1e-6)
        self.window = {
            "offered": (end[2] - middle[2]) / half,
            "applied": (end[1] - middle[1]) / half,
            "cores": cores,
            "busy": busy,
            "machine": float(machine),
        }

    def _offered(self) -> int:
        """Events sent so far in the probe window: the load's and the probes'."""
        with self.lock:
            probes = len(self.sent) * self.size
        return self.traffic.events + probes

    def _traffic(self, messages: list[Message], producer: KafkaProducer) -> None:
        """The load beside the probes; its stats fill in as it goes (``_offered``), and a
        failure is kept for the window to raise."""
        try:
            send_messages(
                self.settings,
                iter(messages),
                rate=self.rate - self.size * 20,  # the probes make up the rest
                seconds=self.ctx.config.fresh_seconds,
                stop=self.stop,
                on_progress=self._progress,
                producer=producer,
            )
        except Exception as exc:  # noqa: BLE001 - raised by the window, in the bench's thread
            self.error = exc
            self.stop.set()

    def _progress(self, stats: ProduceStats) -> None:
        self.traffic = stats  # the same object, counting on, from the first report

    def _probes(self, template: list[dict[str, Any]], producer: KafkaProducer) -> None:
        """A new customer every 50 ms, its first message timed from the send."""
        topic = self.settings.topic(self.settings.clickstream_topic)
        i = 0
        while not self.stop.is_set():
            cid = f"probe-{uuid.uuid4().hex[:8]}-{i}"
            events = [
                {**e, "customer_id": cid, "event_id": f"{cid}-{j}"} for j, e in enumerate(template)
            ]
            value = orjson.dumps(events if self.arrays else events[0])
            with self.lock:
                self.sent[cid] = time.perf_counter()
            future = producer.send(topic, key=cid.encode(), value=value)
            future.add_callback(self._acked, cid)  # in the producer's I/O thread
            i += 1
            time.sleep(0.05)

    def _acked(self, cid: str, _metadata: Any) -> None:
        self.acked[cid] = time.perf_counter()

    def _watch(self) -> None:
        """When each probe's record appears in Redis (polled every millisecond)."""
        client = sync_client(self.settings.redis_url.get_secret_value())
        keys = Keys(self.settings.redis_prefix)
        while not self.stop.is_set() or len(self.seen) < len(self.sent):
            with self.lock:
                pending = [c for c in self.sent if c not in self.seen]
            if pending:
                pipe = client.pipeline(transaction=False)
                for cid in pending:
                    pipe.exists(keys.record(cid))
                now = time.perf_counter()
                for cid, there in zip(pending, pipe.execute(), strict=True):
                    if there:
                        self.seen[cid] = now
            if self.stop.is_set() and time.perf_counter() - self.stop_at > 10:
                break
            time.sleep(0.001)
        client.close()

    def _figures(self) -> None:
        sent, seen = self.sent, self.seen
        latencies = [(seen[c] - sent[c]) * 1000 for c in sent if c in seen]
        lost = len(sent) - len(latencies)
        p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
        self.ctx.say(f"  freshness p50 {p50:.1f} ms, p99 {p99:.1f} ms over {len(latencies)} probes")
        section = "Freshness (send to readable in Redis)"
        note = f"{len(latencies)} probes" + (f", {lost} not seen within 10 s" if lost else "")
        if self.floor:
            note += "; well under one worker's capacity: the floor without queueing"
        target, met = ("", None) if self.floor else ("<= 50 ms", p99 <= 50)
        report = self.ctx.report
        report.add(Figure(section, f"p50 at {self.label}", p50, "ms", note=note))
        report.add(
            Figure(
                section,
                f"p99 at {self.label}",
                p99,
                "ms",
                target=target,
                met=met,
                note=note,
                # the floor's own p99 (no queueing), else the load against one worker's rate
                floor=Floor.NO_QUEUE if self.floor else Floor.FRESHNESS,
                run="arrays of 10" if self.arrays else "one event per message",
                extra={
                    "rate": self.rate,
                    "p50": p50,
                    **self.window,
                    **split(sent, self.acked, seen),
                },
            )
        )


def split(
    sent: dict[str, float], acked: dict[str, float], seen: dict[str, float]
) -> dict[str, float]:
    """Of each probe's time (ms), p50 and p99: from its send until the broker acknowledged it
    (the bench's producer, beside its load, and the broker), then until it was readable in
    Redis (the worker).

    >>> split({"a": 0.0, "b": 0.0}, {"a": 0.01}, {"a": 0.05, "b": 0.2})["to_redis_p50"]
    40.0
    """
    probes = [c for c in sent if c in seen and c in acked]
    to_broker = [(acked[c] - sent[c]) * 1000 for c in probes]
    to_redis = [(seen[c] - acked[c]) * 1000 for c in probes]
    return {
        "to_broker_p50": percentile(to_broker, 0.5),
        "to_broker_p99": percentile(to_broker, 0.99),
        "to_redis_p50": percentile(to_redis, 0.5),
        "to_redis_p99": percentile(to_redis, 0.99),
    }


def traffic(
    customers: int, window_events: float, windows: int, size: int
) -> tuple[dict[str, list[dict[str, Any]]], int]:
    """The customers' events for the warm-up's steps and the windows' load with room to
    spare, and a warm-up step in messages: a round of every customer's messages, or a tenth
    of a window's."""
    events = int(window_events * 1.3 * windows)
    step = max(events // windows // size // 10, customers)
    return click_streams(customers, events + WARM_STEPS * step * size, seed=29), step


def warm_up(
    ctx: BenchContext,
    settings: Settings,
    load: list[Message],
    step: int,
    procs: Procs,
    label: str,
) -> int:
    """Warm up: the first messages create the customers and the model's first records, so
    the worker is in steady state: its first model is out (the trainer's seeding, then
    every worker's one-off scoring of the customers it saw before it, are start-up, not
    the latency a shop sees). Warm-up traffic goes in steps of ``step`` messages, each
    applied before the next, until the model is there: the trainer learns only from
    customers with a few events and two visits, at a capped number of samples a second, so
    one event per message takes several rounds of the customers. At most ``WARM_STEPS``;
    how many messages it took."""
    start, events = 0, 0
    while start < WARM_STEPS * step:
        warm = load[start : start + step]
        start += step
        send_messages(settings, iter(warm))
        events += sum(m.events for m in warm)
        ctx.worker_span(settings, events, procs)  # the worker's total: every step applied
        if ctx.wait_model(settings, procs, timeout=5.0):
            break
    if not ctx.wait_model(settings, procs, timeout=60.0):
        ctx.note(f"freshness at {label}: no model after the warm-up")
    ctx.worker_span(settings, events, procs)  # nothing of the warm-up left to apply
    return start


class ReadsUnderIngest:
    """Our client's read against a bare redis-py GET of the same keys, from a process of its
    own, while the load goes on at ``rate`` (after the probes' window, on the same worker)."""

    def __init__(self, ctx: BenchContext, settings: Settings, rate: float, label: str) -> None:
        self.ctx = ctx
        self.settings = settings
        self.rate = rate
        self.label = label

    def run(self, load: list[Message], customers: list[str], producer: KafkaProducer) -> None:
        self._read_figures(*self._read_window(load, customers, producer))

    def _read_window(
        self, load: list[Message], customers: list[str], producer: KafkaProducer
    ) -> tuple[list[float], list[float]]:
        """The load at ``rate`` again, while a process of its own reads (``read_probe``, once
        it is connected); the two lists of read latencies."""
        seconds = self.ctx.config.fresh_seconds
        spawn = multiprocessing.get_context("spawn")  # not this process: its threads hold the GIL
        ready, results = spawn.Event(), spawn.Queue()
        reader = spawn.Process(
            target=read_probe,
            args=(
                self.settings.redis_url.get_secret_value(),
                self.settings.redis_prefix,
                customers,
                seconds,
                results,
                ready,
            ),
            daemon=True,
        )
        reader.start()
        try:
            if not ready.wait(timeout=120):
                raise RuntimeError("the read test's process did not start within 120 s")
            send_messages(
                self.settings, iter(load), rate=self.rate, seconds=seconds, producer=producer
            )
            reads: tuple[list[float], list[float]] = results.get(timeout=seconds + 120)
        finally:
            reader.join(timeout=10)
            if reader.is_alive():
                reader.kill()
        return reads

    def _read_figures(self, ours: list[float], bare: list[float]) -> None:
        o50, o99 = percentile(ours, 0.5) * 1000, percentile(ours, 0.99) * 1000
        b50, b99 = percentile(bare, 0.5) * 1000, percentile(bare, 0.99) * 1000
        self.ctx.say(f"  reads: client get p99 {o99:.3f} ms, bare GET p99 {b99:.3f} ms")
        section = f"Read latency under ingest ({self.label})"
        n = f"{len(ours):,} and {len(bare):,} reads, interleaved, own process"
        report = self.ctx.report
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
                floor=Floor.READ,
            )
        )


def read_probe(
    url: str, prefix: str, ids: list[str], seconds: float, results: Any, ready: Any = None
) -> None:
    """Our client's ``get`` and a bare redis-py GET of the same key, back to back in a random
    order, for ``seconds``; puts both lists of latencies (seconds) on ``results``. Runs in a
    process of its own, so the bench's producer threads do not hold the GIL over a read.
    ``ready`` (an event) is set once both clients are connected, as the reads begin."""
    ours = SegmentClient(url, prefix)
    bare = sync_client(url)
    bare.ping()
    if ready is not None:
        ready.set()
    rng = random.Random(3)
    timings: tuple[list[float], list[float]] = ([], [])
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        cid = rng.choice(ids)
        key = Keys(prefix).record(cid)
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
