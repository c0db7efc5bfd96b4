"""Real components: one Tansu broker and one redis-server per test session, started on free
ports; every test gets its own topics, consumer group and Redis key prefix, so tests never
share broker or Redis state."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from stream.kafka import ensure_topics, make_producer
from stream.settings import Settings
from stream.store import SegmentClient
from stream.tools import faults
from stream.tools.embedded import EmbeddedStack
from stream.tools.faults import OwnRedis
from stream.tools.process import start_worker, stop_process

__all__ = ["OwnRedis", "Workers", "make_settings", "run_cli", "wait_until"]

pytestmark = pytest.mark.integration


def run_cli(
    settings: Settings, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run `segmenter ARGS` as a user would, configured only by these settings."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SEGMENTER_")}
    return subprocess.run(
        [sys.executable, "-m", "stream", *args],
        env={**clean, **settings.env()},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def wait_until(
    predicate: Callable[[], object], timeout: float, what: str, every: float = 0.2
) -> object:
    """Poll until ``predicate()`` is truthy; fail with ``what`` after ``timeout`` seconds."""
    try:
        return faults.wait_until(predicate, timeout, what, every)
    except faults.WaitTimeout as exc:
        pytest.fail(str(exc))


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


@pytest.fixture(scope="session")
def stack() -> Iterator[EmbeddedStack]:
    with EmbeddedStack() as s:
        yield s


def make_settings(stack: EmbeddedStack, **overrides: object) -> Settings:
    run = uuid.uuid4().hex[:8]
    options: dict[str, object] = {
        "kafka_url": stack.kafka_url,
        "redis_url": stack.redis_url,
        "topic_prefix": f"t{run}-",
        "app_id": f"segmenter-{run}",
        "redis_prefix": f"t{run}:",
        "warmup_samples": 60,
        "session_timeout": 10.0,
        "heartbeat_interval": 1.0,
        "snapshot_interval": 1.0,
        "log_level": "info",
        "metrics_port": 0,  # several workers share this machine; a test that needs it sets one
    }
    options.update(overrides)
    settings = Settings(**options)  # type: ignore[arg-type]
    ensure_topics(settings)
    return settings


class Workers:
    """Starts worker processes for one test and always stops them (cleanly, then by force)."""

    def __init__(self, settings: Settings, logdir: Path) -> None:
        self.settings = settings
        self.logdir = logdir
        self.procs: dict[str, object] = {}
        self.client = SegmentClient(settings.redis_url.get_secret_value(), settings.redis_prefix)

    def start(self, n: int = 1) -> list[str]:
        ids = []
        for _ in range(n):
            # A fresh id (and log file) even after a restart in the same test directory.
            index = len(self.procs)
            while (self.logdir / f"w{index}.log").exists():
                index += 1
            worker_id = f"w{index}"
            self.procs[worker_id] = start_worker(
                self.settings, self.logdir / f"{worker_id}.log", worker_id
            )
            ids.append(worker_id)
        return ids

    def wait_joined(self, n: int, timeout: float = 90.0) -> None:
        """Wait until n workers report partitions of the input topics (the group is balanced)."""

        def joined() -> bool:
            self.check_alive()
            beats = self.client.workers()
            return (
                len(beats) >= n
                and all(b["partitions"] for b in beats)
                and sum(len(b["partitions"]) for b in beats) == self.settings.partitions
            )

        wait_until(joined, timeout, f"{n} workers to share the partitions")

    def check_alive(self) -> None:
        for worker_id, proc in self.procs.items():
            if proc.poll() is not None:  # type: ignore[attr-defined]
                pytest.fail(
                    f"worker {worker_id} exited with {proc.returncode}:\n{self.log(worker_id)}"
                )  # type: ignore[attr-defined]

    def log(self, worker_id: str, lines: int = 60) -> str:
        path = self.logdir / f"{worker_id}.log"
        return (
            "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
            if path.exists()
            else ""
        )

    def stop(self) -> None:
        for proc in self.procs.values():
            stop_process(proc)  # type: ignore[arg-type]
        self.client.close()


@pytest.fixture
def producer(stack: EmbeddedStack):  # type: ignore[no-untyped-def]
    p = make_producer(Settings(kafka_url=stack.kafka_url))
    yield p
    p.close()
