"""Worker state in RocksDB (``SEGMENTER_STATE_STORE=rocksdb``) on a real Tansu broker and a real
redis-server: a worker SIGKILLed mid-stream and restarted on the same data directory reopens
its databases, reads only the changelog after the offsets it had persisted, and ends with every
customer's canonical value features exact over both halves of the traffic; and partitions taken
over and given back between two workers, each on its own data directory, while traffic flows
(local databases kept through rebalances, others left stale and brought up to date from the
changelog), with every customer's features exact at the end."""

from __future__ import annotations

import re
import signal

import pytest

from stream.tools.generator import Message, TrafficGenerator
from stream.tools.process import start_worker, stop_process
from stream.tools.producer import send_messages

from .conftest import Workers, make_settings, wait_until
from .oracle import expected_value_features, feature_mismatches

# Restarts, takeovers and give-backs with session timeouts: minutes, in make test-slow.
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


def test_partitions_taken_over_and_given_back_keep_every_event(stack, tmp_path):
    """w0 alone fills its databases of all four partitions; w1 takes two of them (w0 keeps two,
    trusting its local state, and its copies of the other two go stale); w1 stops and w0 takes
    them back, reading only what w1 wrote; w1 comes back on its own stale directory; traffic
    flows through every rebalance. The soak's loss with RocksDB state was of this kind: events
    of kept partitions applied out of order after a rebalance (docs/reliability.md)."""
    settings = make_settings(stack, partitions=4, state_store="rocksdb")
    generator = TrafficGenerator(customers=160, seed=47, session_gap_ms=60_000)

    def rounds(n: int) -> list[Message]:
        return [m for _ in range(n) for c in generator.customer_ids for m in generator.session(c)]

    sent: list[Message] = []
    workers = Workers(settings, tmp_path)  # its client; each worker has a data dir of its own
    procs: dict[str, object] = {}

    def start(worker_id: str) -> None:
        own = settings.model_copy(update={"data_dir": str(tmp_path / f"data-{worker_id[:2]}")})
        procs[worker_id] = start_worker(own, tmp_path / f"{worker_id}.log", worker_id)

    def send(messages: list[Message]) -> None:
        send_messages(settings, iter(messages))
        sent.extend(messages)

    def owners() -> dict[str, int]:
        return {b["worker_id"]: len(b["partitions"]) for b in workers.client.workers()}

    def settle(expected: dict[str, int], what: str) -> None:
        def done() -> bool:
            for worker_id, proc in procs.items():
                assert proc.poll() is None, f"{worker_id} exited"  # type: ignore[attr-defined]
            return owners() == expected

        wait_until(done, 120, what)

    def exact() -> None:
        expected = expected_value_features(sent)
        wait_until(
            lambda: not feature_mismatches(workers.client, expected),
            120,
            f"every customer's features over {len(sent)} messages",
        )

    try:
        start("w0")
        settle({"w0": 4}, "w0 to own the four partitions")
        send(rounds(2))
        exact()
        start("w1")
        send(rounds(1))  # during the rebalance
        settle({"w0": 2, "w1": 2}, "w1 to take two partitions")
        send(rounds(2))
        exact()
        stop_process(procs.pop("w1"))  # type: ignore[arg-type]
        send(rounds(1))  # during the takeover
        settle({"w0": 4}, "w0 to take all four back")
        send(rounds(1))
        exact()
        start("w1b")  # the same data directory as w1: its databases of two partitions are stale
        send(rounds(1))  # during the give-back
        settle({"w0": 2, "w1b": 2}, "w1 back with two partitions")
        send(rounds(2))
        exact()
        logs = (tmp_path / "w0.log").read_text(errors="replace")
        assert "Reading Starts At - Active" in logs
    except BaseException:
        for worker_id in procs:
            log = tmp_path / f"{worker_id}.log"
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-60:])
            print(f"--- {worker_id}\n{tail}")
        raise
    finally:
        for proc in procs.values():
            stop_process(proc)  # type: ignore[arg-type]
        workers.client.close()
