"""The Redis record layout on a real redis-server and a real Redis Cluster: what a reader in
another language sees, the write script's ordering and counters, and the size of a typical
record. The behaviour every store shares is in ``test_store_contract.py``."""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Iterator

import orjson
import pytest
from redis.crc import key_slot

from models.step import RecordWrite
from stream.store import Keys, RedisSegmentStore, SegmentClient, sync_client

from .redis_cluster import redis_cluster  # noqa: F401 - the session's cluster fixture

pytestmark = pytest.mark.integration

PREFIX = "layout:"
KEYS = Keys(PREFIX)

RECORD = {
    "customer_id": "cust-5bc8fb-000823",
    "segment": 2,
    "segment_label": "browses deeply, tablet, rarely buys",
    "confidence": 0.9079,
    "persona": "Browsing Bella",
    "persona_confidence": 0.6362,
    "persona_reasons": [
        "afternoon_share near 1.00 (persona) vs 1.00",
        "desktop_share near 0.00 (persona) vs 0.00",
        "avg_order_value near 0.50 (persona) vs 0.00",
    ],
    "rule_segments": ["home_and_garden", "tablet_user", "europe", "lifecycle_new"],
    "lifecycle": "new",
    "model_version": 1,
    "event_ts": 1794924913053,
    "evaluated_at": 1794924913053,
    "updated_at": 1795000000000,
    "events_applied": 16,
    "features": {
        "orders_total": 0,
        "revenue_total": 0.0,
        "first_seen_ts": 1794924496847,
        "last_seen_ts": 1794924913053,
        "avg_viewed_price": 86.11,
        "views_per_session": 16.0,
        "top_categories": ["garden", "home-decor"],
        "primary_device": "tablet",
        "country": "FR",
        "channel": "social",
    },
    "facts": {"lifecycle": "new", "region": "Western Europe", "top_category": "garden"},
    "traits": {},
    "worker_id": "bench-1234567",
}
MEMBERS = (
    "cluster:2",
    "persona:Browsing Bella",
    "rule:europe",
    "rule:home_and_garden",
    "rule:lifecycle_new",
    "rule:tablet_user",
)


class Store:
    """The worker's asyncio store driven from a test: one event loop for all its calls, plus a
    bare redis-py connection and our sync client on the same server."""

    def __init__(self, url: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.store = RedisSegmentStore(url, PREFIX)
        self.raw = sync_client(url)  # redis-py's own client, of a cluster where it is one
        self.client = SegmentClient(url, PREFIX)

    def write(self, *writes: RecordWrite) -> int:
        return self.loop.run_until_complete(self.store.write_many(list(writes)))

    def forget(self, *ids: str) -> int:
        return self.loop.run_until_complete(self.store.forget_many(list(ids)))

    def close(self) -> None:
        keys = list(self.raw.scan_iter(match=f"{PREFIX}*"))
        if keys:
            self.raw.delete(*keys)
        self.loop.run_until_complete(self.store.close())
        self.loop.close()
        self.client.close()
        self.raw.close()


@pytest.fixture(params=["redis", "cluster"])
def store(request: pytest.FixtureRequest) -> Iterator[Store]:
    if request.param == "cluster":
        url = request.getfixturevalue("redis_cluster").url
    else:
        url = request.getfixturevalue("stack").redis_url
    s = Store(url)
    try:
        yield s
    finally:
        s.close()


def test_a_record_is_one_string_whose_first_line_any_reader_can_parse(store):
    _write, raw, client = store.write, store.raw, store.client
    cid = RECORD["customer_id"]
    write = RecordWrite(cid, RECORD["event_ts"], 16, 2, RECORD, MEMBERS)
    assert _write(write) == 1
    # The key: the prefix, "c:", the counter shard as a hash tag, the id as it is.
    shard = zlib.crc32(cid.encode()) % 64
    assert KEYS.record(cid) == f"layout:c:{{{shard}}}{cid}" == "layout:c:{8}cust-5bc8fb-000823"
    value = raw.get(KEYS.record(cid))
    head, _, body = value.partition(b"\n")
    ts, n, seg, members = head.decode().split(" ", 3)
    assert (int(ts), int(n), seg) == (RECORD["event_ts"], 16, "2")
    assert orjson.loads(members) == sorted(MEMBERS)
    assert body.startswith(b"z2:")
    assert client.get(cid) == RECORD
    # A typical record, with its key, in well under 1 KB (issue 5's target).
    assert raw.memory_usage(KEYS.record(cid)) < 1024
    # An older state is refused; the same one again is harmless; counters moved once.
    assert _write(RecordWrite(cid, RECORD["event_ts"] - 1, 20, 4, {}, ())) == 0
    assert _write(write) == 1
    assert client.get(cid) == RECORD
    assert client.sizes() == {"2": 1}
    assert client.members() == dict.fromkeys(MEMBERS, 1)
    # The counters are in the customer's shard, in the record's hash slot.
    assert raw.hgetall(KEYS.sizes(shard)) == {b"2": b"1"}
    assert raw.hgetall(KEYS.members(shard)) == {m.encode(): b"1" for m in MEMBERS}
    assert len({key_slot(k.encode()) for k in KEYS.script_keys(cid)}) == 1
    assert list(client.iter_records()) == [RECORD]
    # Forgetting deletes the key and takes the customer out of every counter.
    assert store.forget(cid) == 1
    assert raw.exists(KEYS.record(cid)) == 0
    assert client.sizes() == {} and client.members() == {}
    assert raw.hgetall(KEYS.sizes(shard)) == {b"2": b"0"}  # a field at 0, not a segment


def test_customers_over_every_shard_are_counted_found_and_forgotten(store):
    # 600 customers fill all 64 counter shards (on a cluster: every master); the readers sum
    # the shards, and SCAN finds every record.
    ids = [f"cust-{i:04d}" for i in range(600)]
    writes = [
        RecordWrite(
            c, 1_000 + i, 1, i % 3, {"customer_id": c, "segment": i % 3}, (f"rule:r{i % 2}",)
        )
        for i, c in enumerate(ids)
    ]
    assert store.write(*writes) == 600
    assert len({Keys(PREFIX).script_keys(c)[1] for c in ids}) == 64
    client = store.client
    assert client.sizes() == {"0": 200, "1": 200, "2": 200}
    assert client.members() == {"rule:r0": 300, "rule:r1": 300}
    assert client.customers() == 600
    assert sorted(r["customer_id"] for r in client.iter_records(batch=50)) == ids
    assert store.forget(*ids[:100]) == 100
    assert client.customers() == 500 and sum(client.members().values()) == 500


def test_a_server_that_lost_the_scripts_gets_them_again_and_applies_each_write_once(store):
    # A replica promoted to master has an empty script cache (scripts are not replicated):
    # EVALSHA answers NOSCRIPT, the store loads the script and runs exactly the refused calls.
    ids = [f"cust-{i:03d}" for i in range(40)]

    def batch(ts: int) -> list[RecordWrite]:
        return [RecordWrite(c, ts, ts, 1, {"customer_id": c, "ts": ts}, ("rule:x",)) for c in ids]

    assert store.write(*batch(1)) == 40
    store.raw.script_flush()  # every master of a cluster
    done = store.loop.run_until_complete(store.store.write_many(batch(2), {"events": 40}))
    assert done == 40
    assert store.loop.run_until_complete(store.store.stats()) == {"events": 40}  # added once
    assert store.client.members() == {"rule:x": 40}
    assert {r["ts"] for r in store.client.iter_records()} == {2}
    store.raw.script_flush()
    assert store.forget(*ids[:10]) == 10
    assert store.client.customers() == 30


def test_a_shards_writes_in_one_call_are_judged_one_by_one_in_order(store):
    # The store sends a batch's writes of one counter shard as one script call: each record is
    # still judged against what is stored when its turn comes, a customer twice in a batch
    # included, and only the accepted writes move the counters.
    a, b, c = "cust-00051", "cust-00109", "cust-00177"  # all three in shard 7
    assert {Keys(PREFIX).script_keys(x)[1] for x in (a, b, c)} == {KEYS.sizes(7)}

    def w(cid: str, ts: int, seg: int, rule: str) -> RecordWrite:
        return RecordWrite(cid, ts, ts, seg, {"customer_id": cid, "ts": ts}, (rule,))

    assert store.write(w(a, 10, 1, "rule:x"), w(b, 10, 1, "rule:x")) == 2
    written = store.write(
        w(a, 5, 2, "rule:y"),  # older than a's record: refused
        w(b, 20, 2, "rule:y"),  # newer: written
        w(b, 15, 3, "rule:z"),  # older than the write just before it in the same call: refused
        w(c, 1, 1, "rule:x"),  # a new customer
        w(c, 2, 2, "rule:y"),  # and newer again in the same call
    )
    assert written == 3
    got = {r["customer_id"]: r["ts"] for r in store.client.iter_records()}
    assert got == {a: 10, b: 20, c: 2}
    assert store.client.sizes() == {"1": 1, "2": 2}
    assert store.client.members() == {"rule:x": 1, "rule:y": 2}
    changes = store.loop.run_until_complete(store.store.changes(c))
    assert [(ch["at"], ch["segment"], ch["change"]) for ch in changes] == [
        (2, "rule:x", "exited"),
        (2, "rule:y", "entered"),
        (1, "rule:x", "entered"),
    ]
