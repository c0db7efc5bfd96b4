"""`segmenter bench --quick` runs every phase end to end and writes its report (slow: about
four minutes; `make test-slow`); `--core` runs only the step alone, in-process. They check
that the bench measures, not what it measures."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.mark.timeout(900)
def test_quick_bench_runs_every_phase_and_writes_the_report(tmp_path):
    out = tmp_path / "bench.md"
    done = subprocess.run(
        [sys.executable, "-m", "stream", "bench", "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    text = out.read_text()
    assert "failed" not in text, text
    for section in (
        "The step alone, in-process",
        "Where the step's time goes (in-process)",
        "Throughput, one event per message",
        "Throughput, arrays of 10",
        "our worker vs Quix Streams peer",  # measured, or "not measured" with the reason
        "Freshness",
        "Read latency",
        "Memory per customer",
        "Recovery",
        "Scale-out",
        "## What stops each missed target",
    ):
        assert section in text, section
    assert out.with_suffix(".png").exists()


@pytest.mark.timeout(300)
def test_core_runs_only_the_step_in_process_prints_it_and_writes_no_report(tmp_path):
    out = tmp_path / "bench.md"
    done = subprocess.run(
        [sys.executable, "-m", "stream", "bench", "--core", "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    printed = done.stdout + done.stderr
    for text in ("one event per message", "arrays of 10", ">= 25,000", ">= 120,000", "µs"):
        assert text in printed, text
    assert "decode events" in printed and "record encode" in printed
    assert not out.exists()
