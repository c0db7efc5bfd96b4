"""A bench stopped by SIGTERM (a CI job cancelled, `kill`) stops the broker, Redis and the
workers it started, as Ctrl-C does: none of them is left running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def children_of(pid: int) -> set[int]:
    """Every live process whose parent is ``pid``, and theirs (from /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z":  # a zombie has exited already
            parents[int(entry.name)] = int(fields[1])
    found: set[int] = set()
    todo = [pid]
    while todo:
        parent = todo.pop()
        for child, ppid in parents.items():
            if ppid == parent and child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.timeout(300)
def test_a_terminated_bench_stops_every_process_it_started(tmp_path):
    log = tmp_path / "bench.log"
    with open(log, "wb") as out:
        bench = subprocess.Popen(
            [sys.executable, "-m", "stream", "bench", "--quick", "--only", "throughput"],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            env={**os.environ, "SEGMENTER_KEEP_LOGS": ""},
        )
    started: set[int] = set()
    try:
        # Until its broker and Redis run and a phase has begun (the stack is up).
        deadline = time.monotonic() + 120
        while "loading" not in log.read_text(errors="replace"):
            assert bench.poll() is None, log.read_text(errors="replace")[-2000:]
            assert time.monotonic() < deadline, log.read_text(errors="replace")[-2000:]
            time.sleep(0.1)
        started = children_of(bench.pid)
        assert len(started) >= 2, started  # the broker and Redis at least
        bench.send_signal(signal.SIGTERM)
        bench.wait(timeout=90)
        deadline = time.monotonic() + 30
        while any(alive(p) for p in started) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [p for p in started if alive(p)], log.read_text(errors="replace")[-2000:]
    finally:  # whatever failed, nothing of the bench's is left running
        if bench.poll() is None:
            bench.kill()
            bench.wait()
        for pid in started | children_of(bench.pid):
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
