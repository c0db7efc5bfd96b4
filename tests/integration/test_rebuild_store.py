"""Redis is a cache of the workers' state: on the real broker and a redis-server of this test's
own (no persistence), a worker under live traffic rebuilds what a FLUSHALL took, and
`segmenter rebuild-store` rebuilds on request; records exact against an independent
computation, counters equal to a recount of the records."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from stream.settings import Settings
from stream.store import RedisSegmentStore, SegmentClient
from stream.tools.generator import Message, TrafficGenerator
from stream.tools.producer import ProduceStats, send_messages

from .conftest import OwnRedis, Workers, make_settings, run_cli, wait_until
from .oracle import expected_value_features, feature_mismatches, recount

pytestmark = pytest.mark.integration

CUSTOMERS = 1000


@dataclass
class Deployment:
    settings: Settings
    redis: OwnRedis
    workers: Workers
    generator: TrafficGenerator
    first: list[Message]  # sent and applied before the tests
    live: list[Message]  # what a test may send while it breaks Redis
    sent: list[Message] = field(default_factory=list)  # of ``live``, what was sent

    @property
    def client(self) -> SegmentClient:
        return self.workers.client

    def beat(self) -> dict[str, Any]:
        self.workers.check_alive()
        beats = self.client.workers()
        return beats[0] if beats else {}

    def expected(self) -> dict[str, dict[str, Any]]:
        return expected_value_features(self.first + self.sent)


@pytest.fixture(scope="module")
def deployment(stack, tmp_path_factory) -> Iterator[Deployment]:  # type: ignore[no-untyped-def]
    workdir = tmp_path_factory.mktemp("rebuild")
    own = OwnRedis(workdir)
    own.start()
    settings = make_settings(stack, redis_url=own.url, partitions=2, store_check_interval=0.5)
    workers = Workers(settings, workdir)
    generator = TrafficGenerator(customers=CUSTOMERS, seed=21, session_gap_ms=60_000)
    ids = generator.customer_ids
    first = [m for _ in range(3) for c in ids for m in generator.session(c)]
    live = [m for _ in range(10) for c in ids for m in generator.session(c)]
    d = Deployment(settings, own, workers, generator, first, live)
    try:
        workers.start(1)
        workers.wait_joined(1)
        stats = send_messages(settings, iter(first))
        wait_until(
            lambda: d.beat().get("events", 0) >= stats.events, 180, "the first traffic applied"
        )
        yield d
    except BaseException:
        print(workers.log("w0", 200))
        raise
    finally:
        workers.stop()
        own.stop()


def assert_exact(d: Deployment) -> None:
    """Every customer's record against the independent computation; counters a recount."""
    expected = d.expected()
    client = d.client
    wait_until(lambda: not feature_mismatches(client, expected), 180, "every record exact")
    assert feature_mismatches(client, expected) == {}
    wait_until(
        lambda: recount(client) == (client.sizes(), client.members()),
        60,
        "the counters to equal a recount of the records",
    )
    assert sum(client.sizes().values()) == len(expected) == CUSTOMERS
    wait_until(  # a first model's assignments go in chunks
        lambda: all(r["segment"] is not None for r in client.iter_records()),
        60,
        "every customer's segment",
    )


def test_a_flushall_under_live_traffic_is_rebuilt_exactly(deployment):
    d = deployment
    result: dict[str, ProduceStats] = {}
    stop = threading.Event()

    def send_live() -> None:
        result["stats"] = send_messages(d.settings, iter(d.live), rate=1500, stop=stop)

    sender = threading.Thread(target=send_live)
    before = d.beat()
    sender.start()
    try:
        wait_until(
            lambda: d.beat().get("events", 0) > before["events"] + 3000, 90, "live traffic applied"
        )
        flushed_at = int(time.time() * 1000)
        d.redis.flushall()

        def rebuilt() -> dict[str, Any] | None:
            beat = d.beat()
            rebuild = beat.get("rebuild") or {}
            done = (rebuild.get("finished_at") or 0) >= flushed_at and not rebuild["running"]
            return beat if done else None

        beat = wait_until(rebuilt, 120, "the worker to rebuild what FLUSHALL took")
        assert sender.is_alive(), "the traffic was still being sent when the rebuild ended"
    finally:
        stop.set()
        sender.join(60)
    d.sent = d.live[: result["stats"].messages]
    rebuild = beat["rebuild"]  # type: ignore[index]
    assert rebuild["reason"] == "no marker" and rebuild["partitions"] == [0, 1]
    assert rebuild["done"] == rebuild["total"] >= CUSTOMERS
    assert rebuild["live_events"] > 0, "live batches ran between the rebuild's chunks"
    assert "store rebuild done" in d.workers.log("w0", 400)

    assert_exact(d)
    # The model FLUSHALL took is back: the worker put its own back, the trainer went on.
    serving = d.beat()["model_version"]
    assert serving
    wait_until(lambda: (d.client.model() or {}).get("version", 0) >= serving, 60, "the model back")


def test_rebuild_store_rewrites_every_partition_and_waits_for_the_workers(deployment):
    d = deployment
    # A loss the markers cannot see (say, on a cluster master that holds no marker): records
    # gone with their share of the counters, as a replica that lagged would have them.
    victims = d.generator.customer_ids[:25]
    store = RedisSegmentStore(d.redis.url, d.settings.redis_prefix)

    async def lose() -> int:
        try:
            return await store.forget_many(victims)
        finally:
            await store.close()

    assert asyncio.run(lose()) == len(victims)
    assert d.client.get(victims[0]) is None
    rebuilt_before = d.beat()["rebuild"]["rebuilt"]

    done = run_cli(d.settings, "rebuild-store", "--wait", "120", timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "rebuild request" in done.stderr and "rebuilt: all 2 partitions" in done.stderr
    request, marks = d.client.partition_marks(d.settings.app_id, [0, 1])
    assert request >= 1
    assert all(m is not None and m["request"] == request for m in marks.values())
    wait_until(  # the heartbeat, once a second, says so too
        lambda: d.beat()["rebuild"]["rebuilt"] >= rebuilt_before + CUSTOMERS,
        30,
        "the heartbeat to count the rebuilt customers",
    )
    assert_exact(d)


def test_rebuild_store_without_a_worker_exits_1_and_leaves_the_request(deployment):
    alone = deployment.settings.model_copy(update={"redis_prefix": "t-nobody:"})
    done = run_cli(alone, "rebuild-store", "--wait", "2")
    assert done.returncode == 1, done.stderr
    assert "no live worker" in done.stderr and "the request stays" in done.stderr
    client = SegmentClient(deployment.redis.url, "t-nobody:")
    try:
        assert client.partition_marks(alone.app_id, [0])[0] == 1
    finally:
        client.close()
