"""The bench's throughput phase: our worker against a plain aiokafka consumer, a bare Faust
agent (message by message, and taking batches) and a Quix Streams peer doing the minimal job
(``bench_peer``) on the same topic, with a py-spy profile of the worker by stage."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid

import orjson
import psutil

from stream.kafka import ssl_context
from stream.settings import Settings
from stream.tools.bench_context import BenchContext
from stream.tools.bench_peer import PeerRun, measure_peer
from stream.tools.bench_profile import (
    finish_profile,
    start_profile,
    summarize_profile,
    summarize_stages,
)
from stream.tools.bench_report import BARE_TAKE, OURS, Figure, Floor
from stream.tools.bench_scale import cores_busy, cpu_seconds, process_seconds
from stream.tools.bench_traffic import as_arrays, as_singles, click_streams
from stream.tools.process import spawn
from stream.topology import topology

__all__ = ["Throughput", "bare_faust", "raw_consumer"]

#: The floors table's readers (``Report.rates``), by the key write_report reads (``OURS`` and
#: ``BARE_TAKE`` are read by name there too).
RAW = "plain aiokafka consumer (read + parse)"
BARE = "bare Faust agent, per message"
PEER = "Quix Streams peer (the minimal job: state + RedisSink)"


def raw_consumer(settings: Settings, messages: int) -> float:
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


def bare_faust(ctx: BenchContext, settings: Settings, messages: int, mode: str) -> float:
    """Messages per second of a bare Faust agent (stream/tools/bench_faust.py) on the topic."""
    result = ctx.workdir / f"bare-{mode}-{uuid.uuid4().hex[:6]}.json"
    env = {
        **os.environ,
        **settings.env(),
        "BENCH_TARGET": str(messages),
        "BENCH_RESULT": str(result),
        "BENCH_MODE": mode,
    }
    proc = spawn(
        [sys.executable, "-m", "stream.tools.bench_faust", "worker", "-l", "warn"],
        ctx.workdir / f"bare-{mode}.log",
        env,
        append=True,
    )
    ctx.adopt(proc)
    try:
        proc.wait(timeout=900)
    finally:
        ctx.stop([proc])
    data = orjson.loads(result.read_bytes())
    span = float(data["last"]) - float(data["first"])
    return float(data["messages"]) / max(span, 1e-6)


class Throughput:
    """One throughput run: one event per message, or arrays of 10 events of one customer."""

    def __init__(self, ctx: BenchContext, arrays: bool) -> None:
        self.ctx = ctx
        self.arrays = arrays
        self.size = 10 if arrays else 1
        self.label = "arrays of 10" if arrays else "one event per message"

    def run(self) -> None:
        ctx, config, size = self.ctx, self.ctx.config, self.size
        total = config.array_events if self.arrays else config.single_events
        per = click_streams(config.customers, total + config.customers * 20, seed=11 + size)
        messages = as_arrays(per, total) if self.arrays else as_singles(per, total)
        events = sum(m.events for m in messages)
        settings = ctx.settings()
        ctx.say(
            f"throughput, {self.label}: loading {events:,} events in {len(messages):,} messages"
        )
        sent = ctx.load(settings, messages)
        ctx.say(f"  loaded at {sent:,.0f} events/s; plain aiokafka consumer...")
        raw = raw_consumer(settings, len(messages)) * size
        ctx.say(f"  aiokafka {raw:,.0f} events/s; bare Faust agent, message by message...")
        bare = bare_faust(ctx, settings, len(messages), "each") * size
        ctx.say(f"  bare Faust {bare:,.0f} events/s; bare Faust agent taking batches...")
        bare_take = bare_faust(ctx, settings, len(messages), "take") * size
        ctx.say(f"  bare Faust (batches) {bare_take:,.0f} events/s; Quix Streams peer...")
        topics = sorted({topology(settings).topic_of_source[m.source] for m in messages})
        peer = measure_peer(ctx, settings, topics, events, f"tp{size}")
        ctx.say(
            f"  Quix peer {peer.rate:,.0f} events/s"
            if peer.measured
            else f"  Quix peer not measured: {peer.reason}"
        )
        ctx.say("  our worker...")
        ours = self._ours(settings, events)
        ctx.say(f"  our worker {ours:,.0f} events/s")
        # update, not replace: the core phase adds the step alone to the same runs
        ctx.report.rates.setdefault(self.label, {}).update(
            {RAW: raw, BARE: bare, BARE_TAKE: bare_take, PEER: peer.rate, OURS: ours}
        )
        self._figures(ours, raw, bare, bare_take)
        self._peer_figures(ours, raw, peer)

    def _ours(self, settings: Settings, events: int) -> float:
        """Our worker on the loaded topic, profiled by py-spy when asked and installed."""
        ctx = self.ctx
        procs = ctx.start_workers(settings, 1, f"tp{self.size}")
        profile_out = ctx.workdir / "worker-profile.txt"
        profilers: list[subprocess.Popen[bytes] | None] = []
        before: list[tuple[float, tuple[float, float]]] = []  # the worker's, the machine's

        def first() -> None:  # from the first event processed: not the worker's start-up
            before.append((process_seconds(procs), cpu_seconds()))
            if ctx.config.profile:
                profilers.append(start_profile(procs[0].pid, profile_out))

        span, ours = ctx.worker_span(
            settings,
            events,
            procs,
            lambda n: ctx.say(f"  worker: {n:,}/{events:,} events"),
            on_first=first,
        )
        if before:
            worker, machine = before[0]
            ctx.report.worker_cores[self.label] = (
                (process_seconds(procs) - worker) / span,
                cores_busy(machine, cpu_seconds(), psutil.cpu_count() or 1),
            )
        profiler = profilers[0] if profilers else None
        if ctx.config.profile and profiler is None:
            ctx.note("py-spy is not installed here: no profile taken.")
        if profiler is not None:
            raw = finish_profile(profiler, profile_out)
            if raw is None:
                ctx.report.notes.append(
                    "py-spy could not profile the worker here (no profile taken)."
                )
            else:
                ctx.report.profiles[self.label] = (summarize_stages(raw), summarize_profile(raw))
        ctx.stop(procs)
        return ours

    def _figures(self, ours: float, raw: float, bare: float, bare_take: float) -> None:
        report = self.ctx.report
        section = f"Throughput, {self.label}"
        # The speed issue's targets: one worker >= 8,000 events/s one event per message and
        # >= 50,000 in arrays of 10, and >= 0.1 / 0.2 of a plain aiokafka consumer in this run.
        floor, ratio = (50_000, 0.2) if self.arrays else (8_000, 0.1)
        report.add(
            Figure(
                section,
                "our worker",
                ours,
                "events/s",
                target=f">= {floor:,} events/s",
                met=ours >= floor,
                floor=Floor.WORKER,  # the report names what stops it, if missed
                run=self.label,
                extra={"needs": floor},  # events/s of our worker that meet the target
            )
        )
        report.add(
            Figure(
                section,
                "our worker vs bare Faust agent",
                ours,
                "events/s",
                bare,
                "bare Faust agent (per message)",
            )
        )
        report.add(
            Figure(
                section,
                "our worker vs plain aiokafka",
                ours,
                "events/s",
                raw,
                "aiokafka consumer (read + parse)",
                f">= {ratio}",
                ours / raw >= ratio,
                floor=Floor.WORKER,
                run=self.label,
                extra={"needs": ratio * raw},
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

    def _peer_figures(self, ours: float, raw: float, peer: PeerRun) -> None:
        report, section = self.ctx.report, f"Throughput, {self.label}"
        measured = peer.measured
        report.add(
            Figure(
                section,
                "Quix Streams peer",
                peer.rate,
                "events/s",
                raw,
                "aiokafka consumer (read + parse)",
                note="the minimal job: per-customer count, sum and last time in its RocksDB "
                "state, results to Redis by its RedisSink"
                if measured
                else f"not measured: {peer.reason}",
            )
        )
        report.add(
            Figure(
                section,
                "our worker vs Quix Streams peer",
                ours,
                "events/s",
                peer.rate,
                "Quix Streams peer",
                ">= 1.0",
                ours / peer.rate >= 1.0 if measured else None,
                floor=Floor.WORKER,
                run=self.label,
                extra={"needs": peer.rate},
            )
        )
        if measured:
            self.ctx.note(
                f"Quix Streams peer: quixstreams {peer.version} in a virtualenv of its own "
                "(.venv-peer/quix3), one process on the same topic, read from the beginning: per "
                "customer (the message key) the count of events, the sum of their amounts and the "
                "last event time in its state (RocksDB, with its changelog topic), each message's "
                "result written to Redis by its RedisSink at the checkpoints (Quix's default "
                "commit interval, 5 s; the last one when it reaches its target); timed from its "
                "first message to the end of the Redis flush holding the last event's result, as "
                "our worker is timed by its event count in Redis. On Tansu, with Kafka's default "
                "retention.ms and retention.bytes filled in (Tansu reports no topic configs) and "
                "a 6 s session timeout (Tansu holds a group join for half of it)."
            )
