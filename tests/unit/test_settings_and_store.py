import asyncio
import csv

import orjson
import pytest
from pydantic import ValidationError

from models.step import RecordWrite
from stream.errors import SegmenterError
from stream.settings import Settings
from stream.store import InMemorySegmentStore, StoreUnavailable
from stream.store.errors import safe_url
from stream.tools.generator import TrafficGenerator


def test_settings_read_the_segmenter_prefix_and_mask_secrets(monkeypatch):
    monkeypatch.setenv("SEGMENTER_KAFKA_URL", "kafka://a:1;b:2")
    monkeypatch.setenv("SEGMENTER_REDIS_URL", "redis://:hunter2@r:6379/0")
    monkeypatch.setenv("SEGMENTER_PARTITIONS", "8")
    s = Settings()
    assert s.bootstrap_servers == ["a:1", "b:2"] and s.partitions == 8
    assert "hunter2" not in repr(s) and "hunter2" not in str(s)
    assert s.env()["SEGMENTER_REDIS_URL"] == "redis://:hunter2@r:6379/0"  # children still get it
    assert "SEGMENTER_WORKER_ID" not in s.env()  # each process names itself


def test_invalid_settings_name_the_field(monkeypatch):
    monkeypatch.setenv("SEGMENTER_PARTITIONS", "0")
    with pytest.raises(ValidationError, match="partitions"):
        Settings()


def test_the_log_level_is_one_of_five_in_any_case(monkeypatch):
    monkeypatch.setenv("SEGMENTER_LOG_LEVEL", "WARN")
    assert Settings().log_level == "warn"
    monkeypatch.setenv("SEGMENTER_LOG_LEVEL", "verbose")
    with pytest.raises(ValidationError, match="log_level"):
        Settings()


def test_safe_url_hides_the_password():
    assert safe_url("redis://:pw@host:6379/0") == "redis://***@host:6379/0"
    assert safe_url("redis://host:6379/0") == "redis://host:6379/0"


def test_store_unavailable_is_a_segmenter_error_naming_the_server_without_its_password():
    error = StoreUnavailable.at("rediss://u:pw@host:1/0", OSError("refused"))
    assert isinstance(error, SegmenterError)
    assert str(error) == "Redis at rediss://***@host:1/0: refused"


def test_in_memory_store_refuses_stale_writes_and_keeps_sizes():
    store = InMemorySegmentStore()

    def w(ts, n, seg):
        return RecordWrite("c", ts, n, seg, {"customer_id": "c", "segment": seg, "event_ts": ts})

    async def run():
        assert await store.write_many([w(100, 3, 1)]) == 1
        assert await store.write_many([w(90, 9, 2)]) == 0  # older event time loses
        assert await store.write_many([w(100, 2, 2)]) == 0  # same time, fewer events loses
        assert await store.write_many([w(100, 3, 1)]) == 1  # an identical replay is harmless
        assert await store.write_many([w(200, 4, 2)]) == 1
        return await store.get("c"), await store.sizes()

    record, sizes = asyncio.run(run())
    assert record["segment"] == 2 and sizes == {"2": 1}


def test_in_memory_store_times_heartbeats_and_snapshot_periods_by_its_clock():
    now = [1000.0]
    store = InMemorySegmentStore(clock=lambda: now[0])

    async def run():
        await store.heartbeat("w1", {"worker_id": "w1"}, ttl=10)
        assert await store.workers() == [{"worker_id": "w1"}]
        assert await store.size_snapshot("w1", 5_000, 1_000, 3, 10.0) is not None
        assert await store.size_snapshot("w2", 6_000, 1_000, 3, 10.0) is None
        now[0] += 9.5  # the lock is held for 90% of the period
        assert (await store.size_snapshot("w2", 6_000, 1_000, 3, 10.0))["bucket"] == 6_000
        now[0] += 1.0
        assert await store.workers() == []
        for t in (7_000, 8_000, 9_000):
            now[0] += 10
            await store.size_snapshot("w1", t, 1_000, 3, 10.0)
        assert [h["bucket"] for h in await store.history()] == [7_000, 8_000, 9_000]

    asyncio.run(run())


def test_generator_is_deterministic_and_keeps_the_truth_out_of_events(tmp_path):
    a = TrafficGenerator(customers=50, seed=3)
    b = TrafficGenerator(customers=50, seed=3)
    sa = [m for _ in range(200) for m in a.session(a.rng.choice(a.customer_ids))]
    sb = [m for _ in range(200) for m in b.session(b.rng.choice(b.customer_ids))]
    assert sa == sb
    blob = b"".join(orjson.dumps(m.value) for m in sa)
    for persona in a.personas:
        assert persona.name.encode() not in blob
    assert {m.source for m in sa} == {"clickstream", "purchases", "identify"}
    assert a.write_truth(tmp_path / "t.csv") == 50
    with open(tmp_path / "t.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["persona"] for r in rows} <= {p.name for p in a.personas}


def test_kafka_security_settings_are_checked_at_start_up(tmp_path):
    with pytest.raises(ValidationError, match="kafka_sasl_username and kafka_sasl_password"):
        Settings(kafka_security_protocol="SASL_SSL")
    with pytest.raises(ValidationError, match="kafka_ssl_ca_file"):
        Settings(kafka_security_protocol="SSL", kafka_ssl_ca_file=str(tmp_path / "missing.pem"))
    (tmp_path / "client.pem").write_text("not read until a connection")
    with pytest.raises(ValidationError, match="go together"):
        Settings(kafka_ssl_cert_file=str(tmp_path / "client.pem"))
    with pytest.raises(ValidationError, match="kafka_sasl_mechanism"):
        Settings(kafka_sasl_mechanism="MD5")


def test_kafka_client_options_carry_sasl_and_tls_and_hide_the_password():
    from stream.kafka import client_options, faust_credentials

    plain = Settings()
    assert client_options(plain)["security_protocol"] == "PLAINTEXT"
    assert faust_credentials(plain) is None
    s = Settings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="seg",
        kafka_sasl_password="hunter2",
    )
    options = client_options(s)
    assert (
        options["sasl_mechanism"] == "SCRAM-SHA-512" and options["sasl_plain_password"] == "hunter2"
    )
    assert options["ssl_context"].verify_mode.name == "CERT_REQUIRED"
    credentials = faust_credentials(s)
    assert credentials is not None and credentials.protocol.value == "SASL_SSL"
    assert "hunter2" not in repr(credentials) and "hunter2" not in repr(s)
    assert s.env()["SEGMENTER_KAFKA_SASL_PASSWORD"] == "hunter2"  # a worker process gets it


def test_record_expiry_is_refused_because_it_left_the_counters_wrong():
    # Records used to expire in Redis (SET ... EX) while `sizes` and `members` kept counting
    # them, and no exit was published; the setting is gone and a value other than 0 says so.
    with pytest.raises(ValidationError, match="RECORD_TTL_SECONDS is no longer supported"):
        Settings(record_ttl_seconds=3600)
    assert Settings(record_ttl_seconds=0).record_ttl_seconds == 0


def test_one_redis_url_setting_names_a_single_redis_or_a_cluster():
    from stream.store import RedisConfigError, is_cluster, parse_redis_url

    single = parse_redis_url("rediss://:pw@h:6380/2?ssl_ca_certs=/ca.pem")
    assert not single.cluster and single.url == "rediss://:pw@h:6380/2?ssl_ca_certs=/ca.pem"
    cluster = parse_redis_url("redis+cluster://:pw@10.0.0.1:7000, 10.0.0.2:7001,node-3")
    assert cluster.cluster and cluster.url == "redis://:pw@10.0.0.1:7000"
    assert cluster.seeds == (("10.0.0.1", 7000), ("10.0.0.2", 7001), ("node-3", 6379))
    tls = parse_redis_url("rediss+cluster://u:pw@[::1]:7000/0?ssl_ca_certs=/ca.pem")
    assert tls.url == "rediss://u:pw@[::1]:7000/0?ssl_ca_certs=/ca.pem"
    assert tls.seeds == (("::1", 7000),)
    assert is_cluster("REDIS+CLUSTER://h:1") and not is_cluster("unix:///tmp/r.sock")
    for bad, why in [
        ("http://h:1", "the scheme must be"),
        ("h:6379", "the scheme must be"),
        ("redis+cluster://:hunter2@h:1/1", "only database 0"),
        ("redis+cluster://:hunter2@h:1,:2", "bad node"),
        ("redis+cluster://:hunter2@h:port", "bad node"),
        ("redis://:hunter2@h:1/0?socket_timeout=soon", "socket_timeout"),
    ]:
        with pytest.raises(RedisConfigError, match=why) as caught:
            parse_redis_url(bad)
        assert "hunter2" not in str(caught.value)
        assert isinstance(caught.value, SegmenterError) and isinstance(caught.value, ValueError)


def test_the_factory_builds_redis_py_clients_and_every_reader_and_writer_uses_it():
    import redis.asyncio
    from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

    from stream.store import (
        AsyncSegmentClient,
        RedisConfigError,
        RedisSegmentStore,
        SegmentClient,
        async_client,
        sync_client,
    )

    single = sync_client("redis://127.0.0.1:1/3", socket_timeout=0.5)
    assert type(single).__name__ == "Redis"
    assert single.connection_pool.connection_kwargs["db"] == 3
    single.close()

    async def build() -> None:
        one = async_client("redis://127.0.0.1:1/0")
        assert isinstance(one, redis.asyncio.Redis)
        await one.aclose()
        # The asyncio cluster client connects on its first command, not when it is made.
        many = async_client("redis+cluster://:pw@127.0.0.1:1,127.0.0.1:2", socket_timeout=0.5)
        assert isinstance(many, AsyncRedisCluster)
        assert sorted(many.nodes_manager.startup_nodes) == ["127.0.0.1:1", "127.0.0.1:2"]
        await many.aclose()
        store = RedisSegmentStore("redis+cluster://127.0.0.1:1")
        assert store.cluster and isinstance(store.client, AsyncRedisCluster)
        await store.close()
        reader = AsyncSegmentClient("redis+cluster://127.0.0.1:1")
        assert isinstance(reader.client, AsyncRedisCluster)
        await reader.close()

    asyncio.run(build())
    assert SegmentClient("redis+cluster://127.0.0.1:1").cluster
    with pytest.raises(RedisConfigError, match="only database 0"):
        SegmentClient("redis+cluster://127.0.0.1:1/5")


def test_an_unreachable_cluster_is_store_unavailable_without_the_password():
    from stream.store import SegmentClient

    client = SegmentClient("redis+cluster://:hunter2@127.0.0.1:1", timeout=0.2)
    with pytest.raises(StoreUnavailable, match="not reachable") as caught:
        client.ping()
    assert "hunter2" not in str(caught.value) and "***@127.0.0.1:1" in str(caught.value)
    with pytest.raises(StoreUnavailable):
        client.sizes()
    client.close()


def test_cluster_errors_during_a_failover_are_retried_not_fatal():
    from redis.exceptions import (
        AskError,
        ClusterDownError,
        MasterDownError,
        MovedError,
        ReadOnlyError,
        RedisClusterException,
        ResponseError,
        SlotNotCoveredError,
        TryAgainError,
    )

    from stream.store import REDIS_OUTAGE, retry_forever

    failures = [
        MovedError("3999 127.0.0.1:6381"),
        AskError("3999 127.0.0.1:6381"),
        ClusterDownError("CLUSTERDOWN The cluster is down"),
        MasterDownError("MASTERDOWN Link with MASTER is down"),
        TryAgainError("TRYAGAIN Multiple keys request during rehashing of slot"),
        ReadOnlyError("READONLY You can't write against a read only replica."),
        SlotNotCoveredError('Slot "3999" is not covered by the cluster.'),
        RedisClusterException("Redis Cluster cannot be connected."),
        ConnectionError("Connection refused"),
    ]
    assert all(isinstance(f, REDIS_OUTAGE) for f in failures)
    assert not isinstance(ResponseError("WRONGTYPE"), REDIS_OUTAGE)  # a bug stays fatal
    calls = []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) <= len(failures):
            raise failures[len(calls) - 1]
        return "written"

    result = asyncio.run(retry_forever("Redis write", flaky, first_delay=0.001, max_delay=0.001))
    assert result == "written" and len(calls) == len(failures) + 1


def test_an_invalid_setting_never_echoes_its_value():
    # pydantic prints the refused input by default; a password must not reach a log or terminal.
    with pytest.raises(ValidationError) as refused:
        Settings(kafka_security_protocol="SASL_SSL", kafka_sasl_password="pw-secret-1")
    with pytest.raises(ValidationError) as wrong_type:
        Settings(partitions="pw-secret-2")
    assert "pw-secret" not in str(refused.value) + str(wrong_type.value)
