"""Faults on the real broker and Redis, each ending with nothing lost and nothing counted twice."""

from __future__ import annotations

import contextlib
import random
import signal
import threading
import time
from types import SimpleNamespace

import pytest

from stream.store import SegmentClient, StoreUnavailable
from stream.tools.embedded import free_port
from stream.tools.faults import CuttableProxy, listening, own_broker
from stream.tools.generator import TrafficGenerator
from stream.tools.producer import send_messages

from .conftest import OwnRedis, Workers, make_settings, wait_until
from .oracle import expected_value_features, feature_mismatches

pytestmark = pytest.mark.integration


def test_a_worker_killed_mid_replay_loses_and_double_counts_nothing(stack, tmp_path):
    """SIGKILL (no clean-up, no final commit) while a large replay is being processed, then a
    new worker: every customer's canonical value features equal an independent computation
    over the log, exactly (orders and revenue would show an event counted twice)."""
    settings = make_settings(stack, partitions=2)
    generator = TrafficGenerator(customers=300, seed=5, session_gap_ms=60_000)
    messages = [
        m for _ in range(12) for cid in generator.customer_ids for m in generator.session(cid)
    ]
    expected = expected_value_features(messages)
    total = sum(m.events for m in messages)
    workers = Workers(settings, tmp_path)
    try:
        workers.start(1)
        workers.wait_joined(1)
        # Sent at a bounded rate from a thread, so the worker cannot be done with the log when
        # the kill comes (it keeps up with any rate this machine can send at).
        sender = threading.Thread(
            target=send_messages, args=(settings, iter(messages)), kwargs={"rate": 10_000}
        )
        sender.start()
        wait_until(
            lambda: workers.client.stats().get("events", 0) >= total // 3, 90, "a third processed"
        )
        victim = workers.procs.pop("w0")
        victim.kill()  # type: ignore[attr-defined]
        victim.wait()  # type: ignore[attr-defined]
        sender.join(120)
        assert workers.client.stats()["events"] < total, "too late: the replay was done"
        (restarted,) = workers.start(1)
        try:
            wait_until(
                lambda: not feature_mismatches(workers.client, expected), 180, "exact features"
            )
        except BaseException:  # what was left, for a run that fails only on a busy machine
            left = feature_mismatches(workers.client, expected)
            print(f"{len(left)} of {len(expected)} customers differ, e.g.", list(left.items())[:3])
            print("stats", workers.client.stats(), "of", total, "events")
            print(workers.log(restarted, lines=120))
            raise
        assert feature_mismatches(workers.client, expected) == {}
    finally:
        workers.stop()


@pytest.mark.slow  # the chaos soak covers this fault too; in make test-slow
def test_redis_down_for_30_seconds_under_load_stalls_the_worker_and_loses_nothing(stack, tmp_path):
    redis_dir = tmp_path / "redis"
    redis_dir.mkdir()
    own = OwnRedis(redis_dir, appendonly=True)
    own.start()
    settings = make_settings(stack, redis_url=own.url, partitions=2)
    generator = TrafficGenerator(customers=200, seed=9, session_gap_ms=60_000)
    messages = [
        m for _ in range(10) for cid in generator.customer_ids for m in generator.session(cid)
    ]
    expected = expected_value_features(messages)
    workers = Workers(settings, tmp_path)
    stop = threading.Event()
    try:
        workers.start(1)
        workers.wait_joined(1)
        # Load that goes on through the outage: the events arrive at a steady rate.
        sender = threading.Thread(
            target=send_messages,
            args=(settings, iter(messages)),
            kwargs={"rate": 1500, "stop": stop},
        )
        sender.start()
        wait_until(lambda: workers.client.stats().get("events", 0) > 3000, 60, "load under way")
        own.stop()
        down_at = time.monotonic()
        # Reads fail at once with a clear error, not a hang.
        reader = SegmentClient(own.url, settings.redis_prefix, timeout=1.0)
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match=f"127.0.0.1:{own.port}"):
            reader.get(generator.customer_ids[0])
        assert time.monotonic() - started < 3.0
        while time.monotonic() - down_at < 30:
            workers.check_alive()  # the worker does not crash
            time.sleep(1)
        own.start()
        sender.join(timeout=120)
        wait_until(
            lambda: not feature_mismatches(workers.client, expected), 180, "caught up, exactly"
        )
        workers.check_alive()
        assert "retrying" in workers.log("w0", 400)  # it backed off, and said so
    finally:
        stop.set()
        workers.stop()
        own.stop()


def test_shuffled_and_duplicated_deliveries_give_the_clean_logs_features(stack, tmp_path):
    """Older events after newer ones, and a fifth of the messages delivered twice at random
    places: the canonical value features equal those of the clean, ordered log."""
    settings = make_settings(stack, partitions=2)
    generator = TrafficGenerator(customers=150, seed=13, session_gap_ms=60_000)
    clean = [m for _ in range(6) for cid in generator.customer_ids for m in generator.session(cid)]
    expected = expected_value_features(clean)
    rng = random.Random(3)
    messy = list(clean)
    rng.shuffle(messy)
    for duplicate in rng.sample(clean, len(clean) // 5):
        messy.insert(rng.randrange(len(messy) + 1), duplicate)
    workers = Workers(settings, tmp_path)
    try:
        workers.start(1)
        send_messages(settings, iter(messy))
        wait_until(
            lambda: not feature_mismatches(workers.client, expected), 120, "the clean features"
        )
        assert feature_mismatches(workers.client, expected) == {}
    finally:
        workers.stop()


@pytest.mark.slow  # the chaos soak covers this fault too; in make test-slow
def test_the_worker_reconnects_by_itself_after_the_broker_connection_drops(tmp_path):
    """A broker of this test's own, reached only through a proxy (it advertises the proxy's
    address): the proxy cuts every connection for 15 s under load, then lets them in again."""
    broker_port = free_port()
    proxy = CuttableProxy(broker_port)
    broker = own_broker(broker_port, proxy.port, tmp_path / "tansu.log")
    workers = None
    try:
        proxy.start()
        redis_dir = tmp_path / "redis"
        redis_dir.mkdir()
        stack = SimpleNamespace(kafka_url=f"kafka://127.0.0.1:{proxy.port}", redis_url=None)
        own_redis = OwnRedis(redis_dir, appendonly=True)
        own_redis.start()
        stack.redis_url = own_redis.url
        wait_until(lambda: listening(broker_port), 20, "the broker")
        settings = make_settings(stack, partitions=2)  # type: ignore[arg-type]
        generator = TrafficGenerator(customers=150, seed=17, session_gap_ms=60_000)
        messages = [
            m for _ in range(8) for cid in generator.customer_ids for m in generator.session(cid)
        ]
        expected = expected_value_features(messages)
        half = len(messages) // 2
        workers = Workers(settings, tmp_path)
        workers.start(1)
        workers.wait_joined(1)
        send_messages(settings, iter(messages[:half]))
        wait_until(lambda: workers.client.stats().get("events", 0) > 0, 60, "processing")
        proxy.cut()
        for _ in range(15):
            workers.check_alive()
            time.sleep(1)
        proxy.start()
        send_messages(settings, iter(messages[half:]))
        wait_until(lambda: not feature_mismatches(workers.client, expected), 180, "exact features")
        workers.check_alive()
    finally:
        if workers is not None:
            workers.stop()
        proxy.cut()
        broker.terminate()
        broker.wait(timeout=20)
        with contextlib.suppress(Exception):
            own_redis.stop()


def test_a_worker_whose_broker_vanished_stops_within_its_shutdown_timeout(tmp_path):
    """SIGTERM with the broker gone: Faust's clean stop waited 60 s on its consumer thread
    (longer than a supervisor's grace period); the worker now exits after its shutdown
    timeout, leaving the unacknowledged rest to the next owner."""
    broker_port = free_port()
    broker = own_broker(broker_port, broker_port, tmp_path / "tansu.log")
    redis_dir = tmp_path / "redis"
    redis_dir.mkdir()
    own_redis = OwnRedis(redis_dir, appendonly=True)
    workers = None
    try:
        own_redis.start()
        wait_until(lambda: listening(broker_port), 20, "the broker")
        stack = SimpleNamespace(
            kafka_url=f"kafka://127.0.0.1:{broker_port}", redis_url=own_redis.url
        )
        settings = make_settings(stack, partitions=2, shutdown_timeout=4.0)  # type: ignore[arg-type]
        workers = Workers(settings, tmp_path)
        (worker_id,) = workers.start(1)
        workers.wait_joined(1)
        broker.kill()
        broker.wait(timeout=20)
        # Stopped while its consumer is failing to fetch from the vanished broker.
        wait_until(
            lambda: "Failed fetch messages" in workers.log(worker_id, 200),
            30,
            "the worker to find the broker gone",
        )
        proc = workers.procs[worker_id]
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)  # type: ignore[attr-defined]
        proc.wait(timeout=40)  # type: ignore[attr-defined]
        took = time.monotonic() - started
        assert took < 4.0 + 6.0, f"the worker took {took:.0f} s to stop"
        assert "exiting now" in workers.log(worker_id) or took < 4.0
    finally:
        if workers is not None:
            workers.stop()
        if broker.poll() is None:
            broker.kill()
        own_redis.stop()
