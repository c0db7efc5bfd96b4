"""`segmenter produce --out`: the file gets generated traffic until --events or --seconds
(issue 14: --seconds was ignored and it wrote on, 406 MB in 6 s). No broker needed."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

pytestmark = pytest.mark.integration


def _produce(tmp_path: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SEGMENTER_")}
    return subprocess.run(
        [sys.executable, "-m", "stream", "produce", "--truth", str(tmp_path / "truth.csv"), *args],
        env=clean,
        capture_output=True,
        text=True,
        timeout=timeout,  # before the fix --seconds never stopped it: this deadline failed
        cwd=tmp_path,
    )


def _events(path: Path) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for line in path.read_bytes().splitlines():
        value = orjson.loads(line)
        out.extend(value if isinstance(value, list) else [value])
    return out


def test_produce_out_stops_after_seconds(tmp_path: Path) -> None:
    out = tmp_path / "traffic.jsonl"
    started = time.monotonic()
    done = _produce(tmp_path, "--out", str(out), "--seconds", "0.5")
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started < 60
    events = _events(out)
    assert events and f"wrote {len(events):,} events" in done.stderr
    # Never dated after the wall clock: a worker would dead-letter events from the future.
    assert max(int(e["ts"]) for e in events) <= time.time() * 1000  # type: ignore[call-overload]


def test_produce_out_stops_after_events(tmp_path: Path) -> None:
    out = tmp_path / "traffic.jsonl"
    done = _produce(tmp_path, "--out", str(out), "--events", "500")
    assert done.returncode == 0, done.stderr
    # It stops at the first message that reaches 500 (an array may carry it past).
    assert 500 <= len(_events(out)) < 600
