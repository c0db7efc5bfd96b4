"""`segmenter demo`, as a new user runs it: the whole stack in one command, and clean exits."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from stream.store import SegmentClient

from .conftest import wait_until

pytestmark = pytest.mark.integration


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _collect(proc: subprocess.Popen[str], lines: list[str]) -> None:
    assert proc.stderr is not None
    for line in proc.stderr:
        lines.append(line)


def _redis_url(lines: list[str]) -> str | None:
    for line in list(lines):
        found = re.search(r"redis\s+(redis://127\.0\.0\.1:\d+/\d+)", line)
        if found:
            return found.group(1)
    return None


def _demo(*args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEGMENTER_")}
    return subprocess.Popen(
        [sys.executable, "-m", "stream", "demo", *args],
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )


def test_demo_runs_for_n_seconds_processes_everything_and_prints_a_summary():
    # 2,000 ev/s (the default rate) reaches the model's 1,000-sample warm-up within seconds.
    proc = _demo("--seconds", "40", "--rate", "2000", "--customers", "300")
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err[-3000:]
    match = re.search(r"sent ([\d,]+) events, processed ([\d,]+)", err)
    assert match, err[-3000:]
    sent, processed = (int(g.replace(",", "")) for g in match.groups())
    assert sent > 2000 and processed == sent
    assert re.search(r"model v\d+", err) and "segment" in err
    assert re.search(r"dashboard\s+http://127\.0\.0\.1:\d+/", err)  # the address is printed
    assert re.search(r"drift alerts: \d+", err)


def test_sigterm_stops_the_demo_and_every_process_it_started():
    proc = _demo("--rate", "200", "--customers", "50")
    try:
        # broker, redis-server and the worker
        kids = wait_until(
            lambda: len(_children(proc.pid)) >= 3 and _children(proc.pid),
            60,
            "the demo to start its children",
        )
        # Running, not starting: its worker has processed the generator's first events (the
        # demo prints its Redis address on stderr, read here as it comes).
        lines: list[str] = []
        reader = threading.Thread(target=_collect, args=(proc, lines), daemon=True)
        reader.start()
        url = wait_until(lambda: _redis_url(lines), 60, "the demo to print its Redis address")
        client = SegmentClient(url)
        wait_until(lambda: client.stats().get("events", 0) > 0, 60, "the demo's first events")
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        reader.join(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "interrupted" in "".join(lines)
    assert [pid for pid in kids if _alive(pid)] == []  # type: ignore[union-attr]
