"""A worker writing into a real Redis Cluster (three masters, three replicas: ``redis_cluster.py``)
through two master failovers mid-stream, one graceful (``CLUSTER FAILOVER`` on a replica) and
one by force (the master's process killed, its replica promoted by the cluster): afterwards
every record is exact (canonical features equal to the oracle's) and the size and membership
counters equal a recount of the records. Then the readers on the cluster: ``segmenter get``,
``status``, ``segments``, ``export`` and ``forget``, ``SegmentClient`` and the HTTP API.

The contract every store keeps runs on the cluster too (``test_store_contract.py``), and the
record layout (``test_store_layout.py``)."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections import Counter
from typing import Any, cast

import httpx
import orjson
import pytest
import redis
import trustme

from models.step import RecordWrite
from stream.kafka import make_producer
from stream.serving.web import DashboardServer
from stream.store import RedisSegmentStore, SegmentClient, StoreUnavailable
from stream.tools.embedded import free_port
from stream.tools.generator import Message, TrafficGenerator
from stream.tools.producer import send_messages

from .conftest import Workers, make_settings, run_cli, wait_until
from .oracle import expected_value_features, feature_mismatches
from .redis_cluster import (  # noqa: F401 - redis_cluster: the session's cluster fixture
    LocalRedisCluster,
    has_tls,
    redis_cluster,
    require_redis_7,
)

pytestmark = pytest.mark.integration

CUSTOMERS = 150
ROUNDS = 12  # sessions per customer: 2 before, 4 around each failover, 2 after both


def recount(client: SegmentClient) -> tuple[dict[str, int], dict[str, int], int]:
    """Sizes and memberships counted from the records' header lines (every master scanned),
    and the number of records."""
    raw = cast(redis.RedisCluster, client.client)
    keys = list(raw.scan_iter(match=client.keys.records_pattern, count=1000))
    sizes: Counter[str] = Counter()
    members: Counter[str] = Counter()
    for value in raw.mget_nonatomic(keys):
        if value is None:
            continue
        _ts, _n, segment, segments = value.split(b"\n", 1)[0].decode().split(" ", 3)
        sizes[segment] += 1
        members.update(orjson.loads(segments))
    return dict(sizes), dict(members), len(keys)


def counters_match(client: SegmentClient) -> bool:
    sizes, members, records = recount(client)
    return client.sizes() == sizes and client.members() == members and records == CUSTOMERS


class Sender:
    """Sends rounds of sessions in a thread, paced. The rounds from ``hold`` on wait until the
    test lets them go (``release``, as a failover begins), so that the failover falls among
    them however fast the worker keeps up; ``times`` are when each round went out."""

    def __init__(self, settings: Any, producer: Any) -> None:
        self.settings, self.producer = settings, producer
        self.sent = 0
        self.times: list[float] = []
        self.done = 0
        self.error: BaseException | None = None
        self.thread: threading.Thread | None = None
        self._gate = threading.Event()

    def send(self, messages: list[Message]) -> None:
        self.times.append(time.monotonic())
        stats = send_messages(self.settings, iter(messages), producer=self.producer)
        self.sent += stats.events

    def start(self, rounds: list[list[Message]], pause: float, hold: int) -> None:
        self.times, self.done, self.error = [], 0, None
        self._gate.clear()

        def run() -> None:
            try:
                for i, messages in enumerate(rounds):
                    if i == hold:  # let go: at once
                        if not self._gate.wait(timeout=120):
                            raise TimeoutError(f"round {i} was never let go")
                    elif i:
                        time.sleep(pause)
                    self.send(messages)
                    self.done += 1
            except BaseException as exc:  # reported by join
                self.error = exc

        self.thread = threading.Thread(target=run, name="sender", daemon=True)
        self.thread.start()

    def wait_rounds(self, n: int, timeout: float = 60.0) -> None:
        wait_until(lambda: self.done >= n or self.error, timeout, f"{n} rounds sent")

    def release(self) -> float:
        """Let the held rounds go; returns when (``time.monotonic``)."""
        at = time.monotonic()
        self._gate.set()
        return at

    def join(self) -> None:
        assert self.thread is not None
        self.thread.join(timeout=120)
        assert not self.thread.is_alive()
        if self.error is not None:
            raise self.error

    def sent_within(self, start: float, end: float) -> int:
        """Rounds that went out between ``start`` and ``end``."""
        return sum(start <= t <= end for t in self.times)


def test_a_worker_on_a_redis_cluster_stays_exact_through_master_failovers(
    stack, tmp_path, request: pytest.FixtureRequest
):
    cluster: LocalRedisCluster = request.getfixturevalue("redis_cluster")
    settings = make_settings(stack, redis_url=cluster.url)
    generator = TrafficGenerator(customers=CUSTOMERS, seed=29, session_gap_ms=60_000)
    rounds = [
        [m for cid in generator.customer_ids for m in generator.session(cid)] for _ in range(ROUNDS)
    ]
    expected = expected_value_features(m for r in rounds for m in r)
    workers = Workers(settings, tmp_path)
    producer = make_producer(settings)
    sender = Sender(settings, producer)
    killed: int | None = None

    def processed() -> int:
        """Events the worker counted; right after a master dies this test's own client may
        need a few tries while it learns the new slot owners (the worker retries the same)."""
        deadline = time.monotonic() + 30
        while True:
            workers.check_alive()
            try:
                return cast(int, workers.client.stats().get("events", 0))
            except StoreUnavailable:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    try:
        workers.start(1)
        for messages in rounds[:2]:
            sender.send(messages)
        wait_until(lambda: processed() >= sender.sent, 120, "the first rounds")

        # A graceful failover while events flow: the replica catches up, then takes the slots.
        # Two rounds go out first; the other two are let go as the failover begins.
        sender.start(rounds[2:6], pause=0.6, hold=2)
        sender.wait_rounds(2)
        first = cluster.master_ports()[0]
        began = sender.release()
        promoted = cluster.failover(first)
        promoted_at, ended = time.time() * 1000, time.monotonic()
        sender.join()
        assert promoted in cluster.master_ports() and first not in cluster.master_ports()
        assert sender.sent_within(began, ended) >= 1, "no round went out during the failover"

        # A master killed while events flow: the cluster promotes its replica by itself (it
        # takes seconds to notice). Two rounds first; the other two go out while it does.
        sender.start(rounds[6:10], pause=1.0, hold=2)
        sender.wait_rounds(2)
        killed = next(p for p in cluster.master_ports() if p != promoted)
        began = sender.release()
        taken_over = cluster.kill(killed)
        taken_over_at, ended = time.time() * 1000, time.monotonic()
        sender.join()
        assert sender.sent_within(began, ended) >= 1, "no round went out during the failover"

        # Every customer once more on the settled cluster, so that a write the killed master
        # acknowledged but never replicated (Redis replicates asynchronously) is superseded.
        for messages in rounds[10:]:
            sender.send(messages)
        wait_until(lambda: processed() >= sender.sent, 120, "every event processed")
        wait_until(lambda: not feature_mismatches(workers.client, expected), 60, "exact features")
        wait_until(lambda: counters_match(workers.client), 30, "counters equal to a recount")
        workers.check_alive()

        # The nodes promoted mid-stream hold records written after their promotion.
        for port, since in ((promoted, promoted_at), (taken_over, taken_over_at)):
            node = redis.Redis(port=port)
            keys = list(node.scan_iter(match=workers.client.keys.records_pattern, count=1000))
            node.close()
            assert keys, f"no record on 127.0.0.1:{port}"
            records = [workers.client.get(_customer(k)) for k in keys]
            assert max(r["updated_at"] for r in records if r) > since

        check_readers(settings, workers.client, generator)
    except BaseException:
        print(workers.log("w0", 200))
        raise
    finally:
        producer.close()
        workers.stop()
        if killed is not None:
            cluster.restart(killed)  # healthy again for the tests after this one


def _customer(key: bytes) -> str:
    """The customer id of a record key (``P c:{S}<id>``)."""
    return key.decode().split("}", 1)[1]


def check_readers(settings: Any, client: SegmentClient, generator: TrafficGenerator) -> None:
    """The CLI, ``SegmentClient`` and the HTTP API read the cluster with the one URL setting."""
    someone = generator.customer_ids[7]
    record = client.get(someone)
    assert record is not None and record["customer_id"] == someone

    done = run_cli(settings, "get", someone)
    assert done.returncode == 0, done.stderr
    assert orjson.loads(done.stdout) == record

    done = run_cli(settings, "status")
    assert done.returncode == 0, done.stderr
    status = orjson.loads(done.stdout)
    assert status["sizes"] == client.sizes() and sum(status["sizes"].values()) == CUSTOMERS
    assert [w["worker_id"] for w in status["workers"]] == ["w0"]  # found in the workers index

    done = run_cli(settings, "segments", "--json")
    assert done.returncode == 0, done.stderr
    report = orjson.loads(done.stdout)
    assert report["customers"] == CUSTOMERS and report["segments"]

    done = run_cli(settings, "export")
    assert done.returncode == 0, done.stderr
    exported = [orjson.loads(line) for line in done.stdout.splitlines() if line]
    assert sorted(r["customer_id"] for r in exported) == sorted(generator.customer_ids)

    assert client.customers() == CUSTOMERS
    assert sorted(r["customer_id"] for r in client.iter_records(batch=40)) == sorted(
        generator.customer_ids
    )
    assert client.model() is not None and client.workers()
    assert client.history() and client.stats()["events"] > 0

    dashboard = DashboardServer(settings, "127.0.0.1", free_port())
    dashboard.start()
    try:
        with httpx.Client(base_url=dashboard.url, timeout=10) as http:
            assert http.get("/healthz").json() == {"status": "ok"}
            assert http.get(f"/customers/{someone}").json() == record
            assert http.get("/customers/nobody").status_code == 404
            assert http.get("/segments").json()["customers"] == CUSTOMERS
            overview = http.get("/api/overview").json()
            assert overview["workers"] and overview["history"]
    finally:
        dashboard.stop()

    # Erasure on the cluster: the record goes, and the customer's share of every counter.
    victim = generator.customer_ids[3]
    done = run_cli(settings, "forget", victim)
    assert done.returncode == 0, done.stderr
    assert client.get(victim) is None and client.customers() == CUSTOMERS - 1
    sizes, members, records = recount(client)
    assert records == CUSTOMERS - 1
    assert client.sizes() == sizes and client.members() == members


def test_a_cluster_over_tls_with_a_password_is_one_url_too(tmp_path):
    executable, argv0, cli = require_redis_7()
    if not has_tls(executable, argv0):
        reason = "this Redis 7 has no TLS: `make system-deps` installs Debian's, which has"
        if os.environ.get("SEGMENTER_REQUIRE_TLS_REDIS"):
            pytest.fail(reason)
        pytest.skip(reason)
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    server.cert_chain_pems[0].write_to_path(str(tmp_path / "server.pem"))
    server.private_key_pem.write_to_path(str(tmp_path / "server.key"))
    tls = (tmp_path / "server.pem", tmp_path / "server.key", tmp_path / "ca.pem")
    password = "cluster-Pa55-3e1f"
    cluster = LocalRedisCluster(
        tmp_path, executable, argv0, cli, replicas=0, password=password, tls=tls
    ).start()
    try:
        url = cluster.url
        assert url.startswith(f"rediss+cluster://:{password}@127.0.0.1:")
        store = RedisSegmentStore(url, "tls:")
        writes = [
            RecordWrite(f"c-{i}", 1, 1, i % 2, {"customer_id": f"c-{i}"}, ("rule:x",))
            for i in range(100)
        ]

        async def write() -> int:
            try:
                return await store.write_many(writes, {"events": 100})
            finally:
                await store.close()

        assert asyncio.run(write()) == 100
        client = SegmentClient(url, "tls:")
        assert client.sizes() == {"0": 50, "1": 50} and client.members() == {"rule:x": 100}
        assert client.get("c-7") == {"customer_id": "c-7"}
        assert len(list(client.iter_records())) == 100
        client.close()
        # Without the CA, or with a wrong password: a clear error that quotes no password.
        with pytest.raises(StoreUnavailable, match="CERTIFICATE_VERIFY_FAILED") as caught:
            SegmentClient(url.split("?", 1)[0], "tls:").ping()
        assert password not in str(caught.value)
        wrong = url.replace(password, "not-the-password")
        with pytest.raises(StoreUnavailable) as caught:
            SegmentClient(wrong, "tls:").ping()
        assert "not-the-password" not in str(caught.value) and "***@" in str(caught.value)
    finally:
        cluster.stop()


def test_the_cli_on_an_unreachable_cluster_says_so_in_one_line(stack):
    dead = f"redis+cluster://:hunter2@127.0.0.1:{free_port()},127.0.0.1:{free_port()}"
    settings = make_settings(stack, redis_url=dead)
    done = run_cli(settings, "status", timeout=60)
    assert done.returncode == 2, done.stderr
    assert "Redis at redis+cluster://***@127.0.0.1:" in done.stderr + done.stdout
    assert "hunter2" not in done.stderr + done.stdout and "Traceback" not in done.stderr
