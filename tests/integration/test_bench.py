"""`segmenter bench --quick` runs every phase end to end and writes its report (slow: about
four minutes; `make test-slow`). It checks that the bench measures, not what it measures."""

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
        "Throughput, one event per message",
        "Throughput, arrays of 10",
        "Freshness",
        "Read latency",
        "Memory per customer",
        "Recovery",
        "Scale-out",
    ):
        assert section in text, section
    assert out.with_suffix(".png").exists()
