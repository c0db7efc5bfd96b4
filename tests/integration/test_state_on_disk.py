"""Worker state in RocksDB (``SEGMENTER_STATE_STORE=rocksdb``) on a real Tansu broker and a real
redis-server: a worker SIGKILLed mid-stream and restarted on the same data directory reopens
its databases, reads only the changelog after the offsets it had persisted, and ends with every
customer's canonical value features exact over both halves of the traffic."""

from __future__ import annotations

import re
import signal

import pytest

from stream.tools.generator import TrafficGenerator
from stream.tools.producer import send_messages

from .conftest import Workers, make_settings, wait_until
from .oracle import expected_value_features, feature_mismatches

# RocksDB state is not the default (docs/reliability.md): in make test-slow.
pytestmark = [pytest.mark.integration, pytest.mark.slow]

_START_ROW = re.compile(r"^\|\s*(?:\S*profiles-changelog|〃)\s*\|\s*(\d+)\s*\|\s*(\d+)\s*\|")


def reading_starts(log: str) -> dict[int, int]:
    """Faust's "Reading Starts At - Active" table of the last recovery: partition to offset."""
    starts: dict[int, int] = {}
    lines = log.splitlines()
    for i, line in enumerate(lines):
        if "Reading Starts At - Active" in line:
            starts = {}
            for row in lines[i + 1 : i + 12]:
                m = _START_ROW.match(row)
                if m:
                    starts[int(m.group(1))] = int(m.group(2))
    return starts


def test_a_restart_on_the_same_data_directory_reads_only_the_changelog_it_missed(stack, tmp_path):
    settings = make_settings(
        stack, partitions=2, state_store="rocksdb", data_dir=str(tmp_path / "state")
    )
    generator = TrafficGenerator(customers=120, seed=31, session_gap_ms=60_000)
    first = [m for _ in range(4) for cid in generator.customer_ids for m in generator.session(cid)]
    second = [m for _ in range(2) for cid in generator.customer_ids for m in generator.session(cid)]
    workers = Workers(settings, tmp_path)
    try:
        workers.start(1)
        sent = send_messages(settings, iter(first)).events
        wait_until(lambda: workers.client.stats().get("events", 0) >= sent, 90, "the first half")
        proc = workers.procs["w0"]
        proc.send_signal(signal.SIGKILL)  # type: ignore[attr-defined]
        proc.wait()  # type: ignore[attr-defined]
        del workers.procs["w0"]

        send_messages(settings, iter(second))  # while no worker runs
        workers.start(1)
        expected = expected_value_features(first + second)
        wait_until(
            lambda: not feature_mismatches(workers.client, expected),
            120,
            "every customer's features to cover both halves",
        )
        starts = reading_starts((tmp_path / "w1.log").read_text(errors="replace"))
        assert set(starts) == {0, 1}, starts
        # Both partitions had records before the kill: a restart from the local databases
        # starts past them (a worker without its disk starts at 0).
        assert all(offset > 0 for offset in starts.values()), starts
    except BaseException:
        for worker_id in workers.procs:
            print(f"--- {worker_id}\n{workers.log(worker_id, 80)}")
        raise
    finally:
        workers.stop()
