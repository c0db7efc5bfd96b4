"""One contract over every ``SegmentStore``: the Redis store on a real redis-server, the same
store on a real Redis Cluster (three masters, three replicas: ``redis_cluster.py``) and the
in-memory store run the same tests, so a unit test or tool on the in-memory one sees what the
worker sees in production, on one Redis or a cluster."""

from __future__ import annotations

import asyncio
import inspect
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from models.segments import SegmentChange
from models.step import RecordWrite
from stream.store import (
    InMemorySegmentStore,
    RedisSegmentStore,
    SegmentClient,
    SegmentStore,
    sync_client,
)
from stream.store.base import PartitionMark
from stream.store.keys import CHANGES_KEPT, EXAMPLES_KEPT, Keys, shard_of
from stream.store.views import customer_with_changes, segment_examples

from .conftest import wait_until
from .redis_cluster import redis_cluster  # noqa: F401 - the session's cluster fixture


class Sync:
    """A store's coroutine methods called synchronously, on one event loop for all its calls."""

    def __init__(self, store: SegmentStore) -> None:
        self.store = store
        self.loop = asyncio.new_event_loop()

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.store, name)
        return lambda *args, **kwargs: self.loop.run_until_complete(method(*args, **kwargs))

    def close(self) -> None:
        self.loop.run_until_complete(self.store.close())
        self.loop.close()


def drop_prefix(url: str, prefix: str) -> None:
    """Delete every key a test made under ``prefix`` (a cluster client scans every master)."""
    raw = sync_client(url)
    keys = list(raw.scan_iter(match=f"{prefix}*"))
    if keys:
        raw.delete(*keys)
    raw.close()


@pytest.fixture(
    params=[
        "memory",
        pytest.param("redis", marks=pytest.mark.integration),
        pytest.param("cluster", marks=pytest.mark.integration),
    ]
)
def store(request: pytest.FixtureRequest) -> Iterator[Sync]:
    if request.param == "memory":
        s = Sync(InMemorySegmentStore())
        yield s
        s.close()
        return
    if request.param == "cluster":
        url = request.getfixturevalue("redis_cluster").url
    else:
        url = request.getfixturevalue("stack").redis_url
    prefix = f"contract-{uuid.uuid4().hex[:8]}:"
    s = Sync(RedisSegmentStore(url, prefix))
    try:
        yield s
    finally:
        s.close()
        drop_prefix(url, prefix)


def w(cid: str, ts: int, n: int, seg: int | None, *members: str, **record: Any) -> RecordWrite:
    return RecordWrite(cid, ts, n, seg, {"customer_id": cid, "segment": seg, **record}, members)


def test_every_store_has_every_method_of_the_protocol(store):
    for name, wanted in inspect.getmembers(SegmentStore, inspect.isfunction):
        if name.startswith("_"):
            continue
        method = getattr(type(store.store), name)
        assert inspect.iscoroutinefunction(method), name
        have, want = inspect.signature(method), inspect.signature(wanted)
        assert list(have.parameters) == list(want.parameters), name


def test_a_write_then_get(store):
    store.ping()
    assert store.get("c-1") is None
    assert store.write_many([w("c-1", 100, 1, 3, "cluster:3", rule_segments=("vip",))]) == 1
    # Values go through JSON in both stores: a tuple comes back a list, a fresh copy each time.
    record = store.get("c-1")
    assert record == {"customer_id": "c-1", "segment": 3, "rule_segments": ["vip"]}
    record["segment"] = 9
    assert store.get("c-1")["segment"] == 3
    assert store.get("c-2") is None
    assert store.write_many([]) == 0


def test_an_older_write_is_ignored_and_an_equal_one_is_harmless(store):
    assert store.write_many([w("c", 100, 3, 1, "cluster:1", v="first")]) == 1
    assert store.write_many([w("c", 90, 9, 2, "cluster:2", v="older time")]) == 0
    assert store.write_many([w("c", 100, 2, 2, "cluster:2", v="fewer events")]) == 0
    assert store.get("c")["v"] == "first"
    assert store.write_many([w("c", 100, 3, 1, "cluster:1", v="first")]) == 1  # equal
    assert store.sizes() == {"1": 1} and store.members() == {"cluster:1": 1}
    assert store.write_many([w("c", 100, 4, 1, "cluster:1", v="more events")]) == 1
    assert store.get("c")["v"] == "more events"
    # In one batch, writes apply in order: the older of the two is refused.
    batch = [w("c", 300, 6, 2, "cluster:2", v="new"), w("c", 200, 5, 1, "cluster:1", v="old")]
    assert store.write_many(batch) == 1
    assert store.get("c")["v"] == "new" and store.sizes() == {"2": 1}


def test_size_and_membership_counters_follow_moves(store):
    store.write_many(
        [
            w("a", 1, 1, 1, "cluster:1", "rule:vip"),
            w("b", 1, 1, 1, "cluster:1"),
            w("c", 1, 1, None),  # no cluster yet
        ]
    )
    assert store.sizes() == {"1": 2, "-": 1}
    assert store.members() == {"cluster:1": 2, "rule:vip": 1}
    store.write_many([w("a", 2, 2, 2, "cluster:2", "persona:Ann"), w("c", 2, 2, 1, "cluster:1")])
    assert store.sizes() == {"1": 2, "2": 1}  # "-" left at 0 is not a segment
    assert store.members() == {"cluster:1": 2, "cluster:2": 1, "persona:Ann": 1}
    store.write_many([w("a", 3, 3, 2, "cluster:2", "persona:Ann", "rule:vip")])  # same cluster
    assert store.sizes() == {"1": 2, "2": 1}
    assert store.members() == {"cluster:1": 2, "cluster:2": 1, "persona:Ann": 1, "rule:vip": 1}


def test_forget_removes_the_record_and_its_counts(store):
    store.write_many([w("a", 1, 1, 1, "cluster:1", "rule:vip"), w("b", 1, 1, 1, "cluster:1")])
    assert store.forget_many(["a", "a", "nobody"]) == 1
    assert store.get("a") is None and store.get("b") is not None
    assert store.sizes() == {"1": 1} and store.members() == {"cluster:1": 1}
    assert store.forget_many(["nobody"]) == 0
    assert store.forget_many([]) == 0
    # A forgotten customer can come back, counted once.
    assert store.write_many([w("a", 1, 1, 1, "cluster:1")]) == 1
    assert store.sizes() == {"1": 2} and store.members() == {"cluster:1": 2}


def moves(changes: list[dict[str, Any]]) -> list[tuple[int, int, str, str]]:
    return [(c["at"], c["events_applied"], c["change"], c["segment"]) for c in changes]


def balanced(snapshot: dict[str, Any]) -> bool:
    """Every size in a snapshot is its segment's entries minus its exits (read together)."""
    exited = snapshot["exited_total"]
    net = {m: n - exited.get(m, 0) for m, n in snapshot["entered_total"].items()}
    return {m: n for m, n in net.items() if n > 0} == snapshot["sizes"]


def test_changes_flows_and_examples_move_with_accepted_writes_only(store):
    first = w("a", 100, 1, 1, "cluster:1", "rule:vip", evaluated_at=100)
    assert store.write_many([first]) == 1
    assert moves(store.changes("a")) == [
        (100, 1, "entered", "cluster:1"),
        (100, 1, "entered", "rule:vip"),
    ]
    # A replayed write (at-least-once) and a refused older one change and count nothing.
    assert store.write_many([first]) == 1
    assert store.write_many([w("a", 90, 5, 2, "cluster:2", evaluated_at=90)]) == 0
    assert len(store.changes("a")) == 2
    # A later write that moves the customer: exits before entries, at its evaluation time
    # (a time-driven re-evaluation is later than the newest event), newest first.
    assert store.write_many([w("a", 200, 2, 2, "cluster:2", "rule:vip", evaluated_at=250)]) == 1
    assert store.write_many([w("a", 300, 3, 2, "cluster:2", "rule:vip")]) == 1  # no change
    got = store.changes("a")
    assert moves(got) == [
        (250, 2, "exited", "cluster:1"),
        (250, 2, "entered", "cluster:2"),
        (100, 1, "entered", "cluster:1"),
        (100, 1, "entered", "rule:vip"),
    ]
    # Each carries the id segment-changes gives the same change.
    assert (
        got[1]["change_id"]
        == SegmentChange("a", "cluster:2", "entered", 1, 2, 200, "", 1, 2, 250).change_id
    )
    assert store.changes("a", limit=1) == got[:2]  # the newest write's entry
    assert store.changes("nobody") == []
    assert store.examples("rule:vip") == ["a"] and store.examples("cluster:1") == []
    store.write_many([w("b", 1, 1, 1, "cluster:1")])
    snapshot = store.size_snapshot("w1", 1_000, 1_000, 5, 0.3)
    assert snapshot["entered_total"] == {"cluster:1": 2, "cluster:2": 1, "rule:vip": 1}
    assert snapshot["exited_total"] == {"cluster:1": 1}
    assert balanced(snapshot)
    # An erasure takes the customer out of everything, and counts as their exits.
    assert store.forget_many(["a"]) == 1
    assert store.changes("a") == [] and store.examples("rule:vip") == []
    snapshot = next_period(lambda: store.size_snapshot("w1", 1_000, 1_000, 5, 0.3))
    assert snapshot["exited_total"] == {"cluster:1": 1, "cluster:2": 1, "rule:vip": 1}
    assert snapshot["sizes"] == {"cluster:1": 1} and balanced(snapshot)
    # Back after an erasure: a history of its own, from scratch.
    store.write_many([w("a", 1, 1, 1, "cluster:1")])
    assert moves(store.changes("a")) == [(1, 1, "entered", "cluster:1")]


def test_changes_lists_and_examples_are_bounded(store):
    for n in range(1, CHANGES_KEPT + 6):
        members = ("rule:x",) if n % 2 else ()
        assert store.write_many([w("a", n, n, None, *members)]) == 1
    got = moves(store.changes("a"))
    newest = CHANGES_KEPT + 5
    assert len(got) == CHANGES_KEPT and got[0] == (
        newest,
        newest,
        "entered" if newest % 2 else "exited",
        "rule:x",
    )
    ids = [f"c-{i}" for i in range(300)]
    store.write_many([w(c, 1, 1, None, "rule:r") for c in ids])
    by_shard: dict[int, list[str]] = {}
    for c in ids:
        by_shard.setdefault(shard_of(c), []).append(c)
    # The first few of each shard to enter, shard 0 first.
    wanted = [c for s in sorted(by_shard) for c in by_shard[s][:EXAMPLES_KEPT]]
    assert store.examples("rule:r", limit=1_000) == wanted
    assert store.examples("rule:r", limit=4) == wanted[:4]
    # Those who leave the segment leave the examples; a newcomer takes a free place.
    shard = shard_of(wanted[0])
    store.write_many([w(c, 2, 2, None) for c in by_shard[shard]])
    assert not set(by_shard[shard]) & set(store.examples("rule:r", limit=1_000))
    newcomer = next(c for c in (f"n-{i}" for i in range(10_000)) if shard_of(c) == shard)
    store.write_many([w(newcomer, 1, 1, None, "rule:r")])
    assert store.examples("rule:r", limit=1) == [newcomer]


@pytest.mark.integration
def test_a_store_keeping_no_changes_deletes_the_lines_kept_before_at_the_next_change(stack):
    """``SEGMENTER_CUSTOMER_CHANGES_KEPT`` lowered to 0: a customer's earlier lines do not stay
    in Redis for good; their next change deletes them, a write that changes nothing does not."""
    prefix = f"contract-{uuid.uuid4().hex[:8]}:"
    before = Sync(RedisSegmentStore(stack.redis_url, prefix))
    after = Sync(RedisSegmentStore(stack.redis_url, prefix, changes_kept=0))
    raw = sync_client(stack.redis_url)
    try:
        before.write_many([w("a", 1, 1, None, "rule:x"), w("b", 1, 1, None, "rule:x")])
        field = before.store.keys.changes(shard_of("a"))
        assert raw.hexists(field, "a")
        after.write_many([w("a", 2, 2, None, "rule:x")])  # no change: the lines stay
        assert len(after.changes("a")) == 1
        after.write_many([w("a", 3, 3, None), w("b", 3, 3, None, "rule:x")])
        assert after.changes("a") == [] and not raw.hexists(field, "a")
        assert len(after.changes("b")) == 1  # b did not change
    finally:
        before.close()
        after.close()
        raw.close()
        drop_prefix(stack.redis_url, prefix)


def test_status_counters_add_up(store):
    assert store.stats() == {}
    assert store.write_many([], {"events": 3, "messages": 1}) == 0
    assert store.write_many([w("a", 1, 1, 1)], {"events": 2, "dead_letters": 0}) == 1
    assert store.stats() == {"events": 5, "messages": 1, "dead_letters": 0}


def test_model_publish_version_and_read(store):
    assert store.model() is None and store.model_version() == 0
    store.publish_model({"version": 3, "centroids": [[0.5, 1.0]]})
    assert store.model_version() == 3
    assert store.model() == {"version": 3, "centroids": [[0.5, 1.0]]}
    store.publish_model({"version": 4, "centroids": []})
    assert store.model_version() == 4 and store.model()["version"] == 4


def test_heartbeats_are_kept_for_their_ttl(store):
    assert store.workers() == []
    store.heartbeat("w2", {"worker_id": "w2", "partitions": [1]}, 1)
    store.heartbeat("w1", {"worker_id": "w1", "partitions": [0]}, 30)
    store.heartbeat("w1", {"worker_id": "w1", "partitions": [0, 2]}, 30)  # replaces
    assert store.workers() == [
        {"worker_id": "w1", "partitions": [0, 2]},
        {"worker_id": "w2", "partitions": [1]},
    ]
    wait_until(
        lambda: [b["worker_id"] for b in store.workers()] == ["w1"],
        10,
        "w2's heartbeat to expire after its 1 s",
        every=0.05,
    )
    assert [b["worker_id"] for b in store.workers()] == ["w1"]


@pytest.mark.integration
def test_workers_are_found_without_scanning_the_keyspace(stack):
    """Readers (status, the dashboard, the API) list workers every few seconds: a SCAN would
    read every customer's key each time, so it must not be how heartbeats are found."""
    prefix = f"beats-{uuid.uuid4().hex[:8]}:"
    raw = sync_client(stack.redis_url)
    store = Sync(RedisSegmentStore(stack.redis_url, prefix))
    client = SegmentClient(stack.redis_url, prefix)
    try:
        keys = Keys(prefix)
        raw.mset({keys.record(f"c-{i}"): b"x" for i in range(2000)})
        store.heartbeat("w1", {"worker_id": "w1"}, 30)
        store.heartbeat("w2", {"worker_id": "w2"}, 30)

        def scans() -> int:
            return int(raw.info("commandstats").get("cmdstat_scan", {}).get("calls", 0))

        before = scans()
        assert [b["worker_id"] for b in store.workers()] == ["w1", "w2"]
        assert [b["worker_id"] for b in client.workers()] == ["w1", "w2"]
        assert scans() == before
        raw.delete(keys.worker("w2"))  # expired: its id stays in the index a while
        assert [b["worker_id"] for b in client.workers()] == ["w1"]
        assert raw.zrange(keys.workers, 0, -1) == [b"w1", b"w2"]
        # An id whose heartbeat expired over an hour ago leaves at the next heartbeat.
        raw.zadd(keys.workers, {"w0": int(time.time() * 1000) - 2 * 3_600_000})
        store.heartbeat("w1", {"worker_id": "w1"}, 30)
        assert sorted(raw.zrange(keys.workers, 0, -1)) == [b"w1", b"w2"]
    finally:
        client.close()
        store.close()
        keys = list(raw.scan_iter(match=f"{prefix}*", count=1000))
        raw.delete(*keys)
        raw.close()


def test_drift_alerts_are_kept_newest_first_and_bounded(store):
    assert store.drift() == []
    store.push_drift([{"n": 1}, {"n": 2}], 3)
    assert store.drift() == [{"n": 2}, {"n": 1}]
    store.push_drift([{"n": 3}, {"n": 4}], 3)
    store.push_drift([], 3)
    assert store.drift() == [{"n": 4}, {"n": 3}, {"n": 2}]
    assert store.drift(limit=1) == [{"n": 4}]


def next_period(take: Any) -> Any:
    """The snapshot of the next period: ``take`` returns None while this period's lock holds
    (a call then writes nothing), so it is called until it gets one, within a deadline."""
    return wait_until(take, 10, "the next snapshot period", every=0.02)


def test_a_size_snapshot_goes_to_the_first_caller_of_a_period(store):
    store.write_many([w("a", 1, 1, 1, "cluster:1", "rule:vip"), w("b", 1, 1, None)])
    # A period of 3 s: its lock (2.7 s) outlasts any pause before the call for the same
    # period below on a busy machine (with 0.3 s, a 270 ms lock, a plain CI run once saw it
    # expire in between).
    first = store.size_snapshot("w1", 12_345, 1_000, 2, 3.0)
    assert first is not None
    assert {k: v for k, v in first.items() if k != "at"} == {
        "bucket": 12_000,
        "watermark": 12_345,
        "customers": 2,
        "sizes": {"cluster:1": 1, "rule:vip": 1},
        "entered_total": {"cluster:1": 1, "rule:vip": 1},
        "exited_total": {},
    }
    assert abs(first["at"] - time.time() * 1000) < 60_000
    assert store.size_snapshot("w2", 13_000, 1_000, 2, 0.3) is None  # same period
    assert store.history() == [first]
    second = next_period(lambda: store.size_snapshot("w2", 13_500, 1_000, 2, 0.3))
    assert second["watermark"] == 13_500 and second["bucket"] == 13_000
    # The watermark is the newest any snapshot taker gave, never an older one; a later
    # snapshot in the same bucket replaces the earlier.
    third = next_period(lambda: store.size_snapshot("w1", 11_000, 1_000, 2, 0.3))
    assert third["watermark"] == 13_500 and third["bucket"] == 13_000
    assert store.history() == [first, third]
    fourth = next_period(lambda: store.size_snapshot("w1", 14_100, 1_000, 2, 0.3))
    assert fourth["bucket"] == 14_000
    assert store.history() == [third, fourth]  # ``keep`` buckets, oldest first
    assert store.history(limit=1) == [fourth]


def test_no_size_snapshot_before_any_event_time(store):
    assert store.size_snapshot("w1", 0, 1_000, 5, 0.3) is None
    assert store.history() == []


def test_partition_markers_move_only_from_the_value_expected(store):
    assert store.partition_marks("app", [0, 1, 2]) == (0, {0: None, 1: None, 2: None})
    # A write never creates a missing marker (Redis lost it: it stays lost).
    assert store.write_many([w("a", 1, 1, 1)], {}, [PartitionMark("app", 0, b"m0", b"m1")]) == 1
    assert store.partition_marks("app", [0]) == (0, {0: None})
    assert store.put_partition_mark("app", 0, b"m1") is True  # unconditional
    assert store.put_partition_mark("app", 1, b"x1", b"expected") is False  # missing
    assert store.put_partition_mark("app", 0, b"m2", b"m0") is False  # holds something else
    assert store.put_partition_mark("app", 0, b"m2", b"m1") is True
    # With the records, in order: each mark moves from its expected value only.
    marks = [PartitionMark("app", 0, b"m2", b"m3"), PartitionMark("app", 0, b"m3", b"m4")]
    marks.append(PartitionMark("app", 1, b"m0", b"m1"))
    assert store.write_many([w("b", 1, 1, 2)], {"events": 1}, marks) == 1
    assert store.partition_marks("app", [0, 1]) == (0, {0: b"m4", 1: None})
    assert store.write_many([], {}, [PartitionMark("app", 0, b"m4", b"m5")]) == 0
    assert store.partition_marks("app", [0]) == (0, {0: b"m5"})
    # Another app's markers are its own.
    assert store.partition_marks("other", [0]) == (0, {0: None})
    assert store.sizes() == {"1": 1, "2": 1} and store.stats() == {"events": 1}


def test_rebuild_requests_count_up_per_app(store):
    assert store.request_rebuild("app") == 1
    assert store.request_rebuild("app") == 2
    assert store.request_rebuild("other") == 1
    assert store.put_partition_mark("app", 3, b'{"request": 2}')
    assert store.partition_marks("app", [3, 4]) == (2, {3: b'{"request": 2}', 4: None})


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["redis", "cluster"])
def test_the_sync_client_reads_and_raises_what_the_worker_store_keeps(kind, request):
    url = (
        request.getfixturevalue("redis_cluster").url
        if kind == "cluster"
        else request.getfixturevalue("stack").redis_url
    )
    prefix = f"contract-{uuid.uuid4().hex[:8]}:"
    s = Sync(RedisSegmentStore(url, prefix))
    client = SegmentClient(url, prefix)
    try:
        assert client.partition_marks("app", [0, 1]) == (0, {0: None, 1: None})
        assert client.request_rebuild("app") == 1
        assert s.partition_marks("app", [0]) == (1, {0: None})
        s.put_partition_mark("app", 1, b'{"request": 1, "worker_id": "w1"}')
        assert client.partition_marks("app", [0, 1]) == (
            1,
            {0: None, 1: {"request": 1, "worker_id": "w1"}},
        )
        # The views' reads: a record with its changes in one round trip, a segment's examples.
        assert customer_with_changes(client, "a") == (None, [])
        s.write_many([w("a", 5, 1, 1, "cluster:1", "rule:vip"), w("b", 5, 1, 2, "rule:vip")])
        record, changes = customer_with_changes(client, "a")
        assert record == s.get("a") and changes == s.changes("a") and len(changes) == 2
        assert segment_examples(client, "rule:vip") == s.examples("rule:vip")
        assert sorted(segment_examples(client, "rule:vip")) == ["a", "b"]
        assert segment_examples(client, "rule:none") == []
        # An id merged into a customer reads that customer's record and changes.
        s.write_many([w("anon", 4, 1, 1, "cluster:1")])
        s.merge_many({"anon": "a"})
        assert customer_with_changes(client, "anon") == (record, changes)
    finally:
        client.close()
        s.close()
        drop_prefix(url, prefix)
