"""`segmenter soak` (`make soak`): a chaos soak. Steady traffic with a known oracle while a
seeded schedule kills workers, restarts Redis and cuts the broker connection; at the end,
nothing may be lost.

It starts a Tansu broker of its own, reached only through a cuttable TCP proxy
(``stream.tools.faults``), a redis-server of its own with an append-only file, and a few
workers in one consumer group. The traffic (``stream.tools.soak_traffic``) is the CDNOW
purchase log replayed in event-time order, generated clicks of the same customers and about 5%
garbage of several kinds, sent at a steady rate by a producer the proxy spares. Meanwhile the
schedule (``fault_schedule``: seeded, printed as it goes) SIGKILLs a worker and starts a
replacement, restarts Redis (a clean stop or a SIGKILL, keeping its AOF), or cuts every worker
connection to the broker for some seconds, one fault at a time.

Then the traffic stops, and the soak waits, on the condition and with a deadline, until the
group has committed every input message sent (a commit means the message's effects are
done), and checks (``stream.tools.soak_checks``): canonical features exact for every
customer, every garbage message in ``dead-letters`` with its reason, counters equal to a
recount. It prints what was injected and what was lost, and exits 0 only if nothing was.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from stream.kafka import ensure_topics, make_producer, wait_for_broker
from stream.settings import Settings
from stream.store import SegmentClient, StoreUnavailable
from stream.tools.cdnow import cdnow_purchases
from stream.tools.embedded import free_port
from stream.tools.faults import CuttableProxy, OwnRedis, listening, own_broker, wait_until
from stream.tools.process import signals_as_interrupt, start_worker, stop_process
from stream.tools.soak_checks import Findings, check, uncommitted
from stream.tools.soak_report import SoakResult, print_result
from stream.tools.soak_traffic import Sender, SoakTraffic
from stream.topology import topology

__all__ = ["Fault", "SoakConfig", "fault_schedule", "run_soak"]

PRODUCER_ID = "segmenter-soak"
FAULTS = ("kill", "redis", "cut")


@dataclass(frozen=True)
class SoakConfig:
    minutes: float = 10.0  # the whole run, about: injection, then catching up and checks
    seed: int = 1
    rate: float = 250.0  # messages per second
    workers: int = 3
    partitions: int = 6
    garbage_share: float = 0.05
    catch_up_seconds: float = 300.0  # deadline for the workers to commit everything sent

    @property
    def injection_seconds(self) -> float:
        """Traffic and faults; the rest of ``minutes`` is left to catching up and checks."""
        return max(45.0, self.minutes * 60 * 0.85)


@dataclass(frozen=True)
class Fault:
    at: float  # seconds after the traffic started
    kind: str  # kill, redis, cut
    seconds: float  # how long Redis stays down or the proxy cut (0 for a kill)
    hard: bool = False  # a Redis restart after SIGKILL rather than a clean stop

    def describe(self) -> str:
        if self.kind == "kill":
            return "SIGKILL a worker, start a replacement"
        if self.kind == "redis":
            how = "SIGKILL" if self.hard else "clean stop"
            return f"restart Redis ({how}, down {self.seconds:.0f} s, AOF kept)"
        return f"cut the broker connection for {self.seconds:.0f} s"


def fault_schedule(seed: int, injection_seconds: float) -> list[Fault]:
    """One fault about every 25 s from 10 s in, each over before the next and before the
    traffic stops; the first three are one of each kind. Deterministic for a seed.

    >>> sorted(f.kind for f in fault_schedule(1, 76))
    ['cut', 'kill', 'redis']
    >>> len(fault_schedule(1, 510))
    19
    """
    rng = random.Random(seed)
    start, end = 10.0, injection_seconds - 15.0
    n = max(3, int((end - start) / 25))
    gap = (end - start) / n
    kinds = rng.sample(FAULTS, 3) + [rng.choice(FAULTS) for _ in range(n - 3)]
    out = []
    hard = False
    for i, kind in enumerate(kinds):
        at = start + i * gap + rng.uniform(0, gap * 0.3)
        longest = max(2.0, gap * 0.6)
        seconds = 0.0
        if kind == "redis":
            seconds = min(rng.uniform(2, 8), longest)
            hard = not hard  # alternately a SIGKILL and a clean stop, a SIGKILL first
        elif kind == "cut":
            seconds = min(rng.uniform(5, 15), longest)
        out.append(Fault(round(at, 1), kind, round(seconds, 1), hard and kind == "redis"))
    return out


@dataclass
class Crew:
    """The worker processes: start, SIGKILL, replace; a worker that exits by itself is a crash
    (counted, and replaced so that the run goes on)."""

    settings: Settings
    logdir: Path
    procs: dict[str, object] = field(default_factory=dict)
    started: int = 0
    crashes: list[str] = field(default_factory=list)

    def start(self) -> str:
        worker_id = f"w{self.started}"
        self.started += 1
        self.procs[worker_id] = start_worker(
            self.settings, self.logdir / f"{worker_id}.log", worker_id
        )
        return worker_id

    def kill(self, rng: random.Random) -> str:
        worker_id = rng.choice(sorted(self.procs))
        proc = self.procs.pop(worker_id)
        proc.kill()  # type: ignore[attr-defined]
        proc.wait()  # type: ignore[attr-defined]
        return worker_id

    def replace_crashed(self) -> list[str]:
        """Workers that exited without being told to: counted, and replaced."""
        gone = [w for w, p in self.procs.items() if p.poll() is not None]  # type: ignore[attr-defined]
        for worker_id in gone:
            code = self.procs.pop(worker_id).returncode  # type: ignore[attr-defined]
            self.crashes.append(f"{worker_id} exited with {code}")
            self.start()
        return gone

    def stop(self) -> None:
        for proc in self.procs.values():  # every one told first, then each waited for
            with contextlib.suppress(OSError):
                proc.terminate()  # type: ignore[attr-defined]
        for proc in self.procs.values():
            stop_process(proc)  # type: ignore[arg-type]
        self.procs.clear()


class Soak:
    """One run: the stack, the traffic, the schedule, the wait, the checks (``run``)."""

    def __init__(self, config: SoakConfig, say: Callable[[str], None]) -> None:
        self.config = config
        self.say = say
        self.rng = random.Random(config.seed)
        self.workdir = Path(tempfile.mkdtemp(prefix="segmenter-soak-"))
        self.result = SoakResult(config=config, workdir=self.workdir)
        self.injected: Counter[str] = Counter()
        self.broker_port = free_port()
        self.proxy = CuttableProxy(self.broker_port, spare=(PRODUCER_ID,))
        self.redis = OwnRedis(self.workdir, appendonly=True)
        run = uuid.uuid4().hex[:6]
        self.settings = Settings(
            kafka_url=f"kafka://127.0.0.1:{self.proxy.port}",
            redis_url=self.redis.url,
            topic_prefix=f"soak{run}-",
            app_id=f"soak-{run}",
            redis_prefix=f"soak{run}:",
            partitions=config.partitions,
            session_timeout=10.0,
            heartbeat_interval=1.0,
            warmup_samples=200,
            metrics_port=0,
            log_level="info",
        )
        self.result.state_store = f"{self.settings.state_store} (`SEGMENTER_STATE_STORE`)"
        self.crew = Crew(self.settings, self.workdir)
        self.broker: object = None
        self.sender: Sender | None = None
        self.started = self.started_traffic = time.monotonic()
        self.next_progress = 0.0

    def run(self) -> SoakResult:
        self.result.began = datetime.now(UTC)
        self.started = time.monotonic()
        try:
            self._start_stack()
            self._inject()
            self._finish()
        finally:
            self.result.seconds = time.monotonic() - self.started
            self._stop_stack()
        return self.result

    def _start_stack(self) -> None:
        self.broker = own_broker(self.broker_port, self.proxy.port, self.workdir / "tansu.log")
        self.proxy.start()
        wait_until(lambda: listening(self.broker_port), 20, "the broker")
        self.redis.start()
        wait_for_broker(self.settings)
        ensure_topics(self.settings)
        purchases = cdnow_purchases()
        self.say(
            f"soak: seed {self.config.seed}, {self.config.minutes:g} min, broker via proxy "
            f"{self.settings.kafka_url}, redis {self.redis.url} (AOF), logs in {self.workdir}"
        )
        for _ in range(self.config.workers):
            self.crew.start()
        self._wait_joined()
        producer = make_producer(self.settings, client_id=PRODUCER_ID, acks="all", retries=5)
        topics = topology(self.settings).topic_of_source
        self.sender = Sender(producer, topics, self.config.rate)
        traffic = SoakTraffic(purchases, self.config.seed, self.config.garbage_share)
        self.started_traffic = time.monotonic()
        self.next_progress = 10.0
        self.sender.start(iter(traffic))

    def _wait_joined(self) -> None:
        client = SegmentClient(self.redis.url, self.settings.redis_prefix)

        def joined() -> bool:
            self._check_crew()
            beats = client.workers()
            owned = sum(len(b["partitions"]) for b in beats)
            return len(beats) >= self.config.workers and owned == self.config.partitions

        try:
            wait_until(joined, 120, f"{self.config.workers} workers to share the partitions", 0.5)
        finally:
            client.close()

    def _inject(self) -> None:
        schedule = fault_schedule(self.config.seed, self.config.injection_seconds)
        self.say(f"schedule: {len(schedule)} faults")
        for fault in schedule:
            self._tick_until(fault.at)
            self.say(f"[{self._elapsed():5.0f}s] fault: {fault.describe()}")
            self._apply(fault)
        self._tick_until(self.config.injection_seconds)

    def _apply(self, fault: Fault) -> None:
        self.injected[fault.kind] += 1
        if fault.kind == "kill":
            victim = self.crew.kill(self.rng)
            replacement = self.crew.start()
            self.say(f"          killed {victim}, started {replacement}")
        elif fault.kind == "redis":
            self.injected["redis_hard"] += fault.hard
            if fault.hard and self.redis.proc is not None:
                self.redis.proc.kill()
                self.redis.proc.wait()
            else:
                self.redis.stop()
            self._tick_until(self._elapsed() + fault.seconds)
            self.redis.start()
            self.say(f"[{self._elapsed():5.0f}s] Redis back")
        else:
            self.proxy.cut()
            self._tick_until(self._elapsed() + fault.seconds)
            self.proxy.restore()
            self.injected["cut_seconds"] += round(fault.seconds)
            self.say(f"[{self._elapsed():5.0f}s] broker connection restored")

    def _elapsed(self) -> float:
        return time.monotonic() - self.started_traffic

    def _tick_until(self, at: float) -> None:
        """Until ``at`` seconds into the traffic: a progress line every 10 s, crashed workers
        replaced."""
        clock = threading.Event()  # never set: its wait is the pause until the next tick
        while (left := at - self._elapsed()) > 0:
            clock.wait(min(left, 1.0))
            self._check_crew()
            if self._elapsed() >= self.next_progress:
                self.next_progress = self._elapsed() + 10.0
                self._progress()

    def _check_crew(self) -> None:
        for worker_id in self.crew.replace_crashed():
            self.say(f"[{self._elapsed():5.0f}s] worker {worker_id} CRASHED; replaced")

    def _progress(self) -> None:
        assert self.sender is not None
        counts = self.sender.counts
        try:
            with contextlib.closing(SegmentClient(self.redis.url, self.settings.redis_prefix)) as c:
                applied = f"{c.stats().get('events', 0):,} events applied"
        except StoreUnavailable:
            applied = "Redis down"
        self.say(
            f"[{self._elapsed():5.0f}s] sent {sum(counts.values()):,} messages "
            f"({counts['garbage']:,} garbage), {applied}, "
            f"workers {','.join(sorted(self.crew.procs))}"
            + (", proxy CUT" if self.proxy.is_cut else "")
        )

    def _finish(self) -> None:
        assert self.sender is not None
        self.sender.stop.set()
        self.sender.join(60)
        wait_until(lambda: self.sender is not None and not self.sender.pending(), 60, "deliveries")
        self.result.injected = self.injected
        self.result.sender = self.sender
        self.say(f"[{self._elapsed():5.0f}s] traffic stopped; waiting for the workers to catch up")
        caught_up_at = time.monotonic()
        try:
            wait_until(self._caught_up, self.config.catch_up_seconds, "every message committed", 1)
            self.result.caught_up = time.monotonic() - caught_up_at
        except AssertionError:
            self.result.lag = self._lag()
            deadline = self.config.catch_up_seconds
            self.say(f"NOT caught up within {deadline:.0f} s: {self.result.lag}")
        self.result.crashes = list(self.crew.crashes)
        self.say("checking features, dead letters and counters")
        self.result.findings = check(self.settings, self.sender.delivered(), Findings())

    def _lag(self) -> dict[str, int]:
        assert self.sender is not None
        return uncommitted(self.settings, self.sender.delivered())

    def _caught_up(self) -> bool:
        self._check_crew()
        note = ""
        try:
            lag = self._lag()
        except Exception as exc:  # noqa: BLE001 - e.g. the group is rebalancing: not yet
            lag, note = {"?": 1}, f" (committed offsets not readable: {exc!r})"
        if self._elapsed() >= self.next_progress:
            self.next_progress = self._elapsed() + 10.0
            behind = sum(lag.values())
            self.say(f"[{self._elapsed():5.0f}s] not committed yet: {behind:,} messages{note}")
        return not lag

    def _stop_stack(self) -> None:
        if self.sender is not None:
            self.sender.stop.set()
            self.sender.join(10)
            with contextlib.suppress(Exception):
                self.sender.producer.close(timeout=5)
        self.crew.stop()
        self.proxy.close()
        if self.broker is not None:
            stop_process(self.broker, timeout=10)  # type: ignore[arg-type]
        self.redis.stop()


def run_soak(config: SoakConfig, say: Callable[[str], None], out: Path | None = None) -> SoakResult:
    """Run the soak; print its result; with ``out``, write it into that file's soak section.
    SIGTERM stops it like Ctrl-C, and either way every process it started is stopped."""
    with signals_as_interrupt():
        soak = Soak(config, say)
        try:
            result = soak.run()
        except BaseException:
            say(f"soak aborted; logs kept in {soak.workdir}")
            raise
    print_result(result, say)
    if out is not None:
        result.write(out)
        say(f"written {out}")
    if result.ok and not os.environ.get("SEGMENTER_KEEP_LOGS"):
        shutil.rmtree(result.workdir, ignore_errors=True)
    else:
        say(f"logs kept in {result.workdir}")
    return result
