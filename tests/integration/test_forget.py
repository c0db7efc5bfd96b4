"""`segmenter forget`: a customer is erased everywhere the project keeps data, and downstream
systems get a tombstone to erase too."""

from __future__ import annotations

import re

import pytest
import redis
from kafka import KafkaConsumer, TopicPartition

from stream.kafka import read_topic
from stream.store import Keys
from stream.tools.generator import TrafficGenerator
from stream.tools.producer import send_messages

from .conftest import Workers, make_settings, run_cli, wait_until

pytestmark = pytest.mark.integration


def _changelog(settings, key: str) -> list[bytes | None]:  # type: ignore[no-untyped-def]
    topic = f"{settings.app_id}-profiles-changelog"
    consumer = KafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers, group_id=None, consumer_timeout_ms=3000
    )
    tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    values = [m.value for m in consumer if m.key == f'"{key}"'.encode()]
    consumer.close()
    return values


def test_forget_erases_a_customer_everywhere_and_publishes_a_tombstone(stack, tmp_path):
    settings = make_settings(stack, partitions=2)
    generator = TrafficGenerator(customers=80, seed=23, session_gap_ms=60_000)
    messages = [
        m for _ in range(3) for cid in generator.customer_ids for m in generator.session(cid)
    ]
    victim, other = generator.customer_ids[0], generator.customer_ids[1]
    workers = Workers(settings, tmp_path)
    try:
        workers.start(1)
        sent = send_messages(settings, iter(messages)).events
        wait_until(lambda: workers.client.stats().get("events", 0) >= sent, 90, "the traffic")
        # Every customer assigned by the first model (in chunks, live batches between them):
        # the counters compared below move no more.
        wait_until(
            lambda: all(r["segment"] is not None for r in workers.client.iter_records()),
            60,
            "every customer's segment",
        )
        record = workers.client.get(victim)
        members_before, customers_before = workers.client.members(), workers.client.customers()

        done = run_cli(settings, "forget", victim)
        assert done.returncode == 0, done.stderr
        assert workers.client.get(victim) is None
        assert run_cli(settings, "get", victim).returncode == 1
        assert workers.client.get(other) is not None  # only the one customer
        # Out of the size counters, and in no Redis key at all.
        assert workers.client.customers() == customers_before - 1
        members_after = workers.client.members()
        mine = {f"cluster:{record['segment']}", f"persona:{record['persona']}"}
        mine |= {f"rule:{r}" for r in record["rule_segments"]}
        for segment, n in members_before.items():
            assert members_after.get(segment, 0) == n - (segment in mine), segment
        raw = redis.Redis.from_url(stack.redis_url)
        assert list(raw.scan_iter(match=f"*{victim}*")) == []
        history = raw.hvals(Keys(settings.redis_prefix).history)
        assert all(victim not in (v or b"").decode() for v in history)
        raw.close()
        exported = run_cli(settings, "export")
        assert victim not in exported.stdout and other in exported.stdout
        # A tombstone for downstream systems, after the customer's changes.
        changes = [(k, v) for k, v in read_topic(settings, settings.topic("segment-changes"))]
        theirs = [v for k, v in changes if k == victim.encode()]
        assert theirs and theirs[-1] is None and any(v is not None for v in theirs)
        # The table: its changelog ends with a tombstone, so a restarted worker has no profile.
        wait_until(lambda: (_changelog(settings, victim) or [b""])[-1] is None, 30, "a tombstone")
        applied = workers.client.get(other)["events_applied"]
        workers.stop()
        workers = Workers(settings, tmp_path)
        (restarted,) = workers.start(1)
        workers.wait_joined(1)
        send_messages(settings, iter(generator.session(other)))
        wait_until(
            lambda: workers.client.get(other)["events_applied"] > applied,
            60,
            "the restarted worker to process",
        )
        assert workers.client.get(victim) is None
        # Its recovered table holds every customer but the forgotten one. The worker logs the
        # count just after the batch's Redis write, so wait for the line rather than race it.
        wait_until(
            lambda: "lifecycle schedule:" in workers.log(restarted, 400), 30, "the schedule line"
        )
        scheduled = re.findall(r"lifecycle schedule: (\d+) customers", workers.log(restarted, 400))
        assert int(scheduled[-1]) == 79, workers.log(restarted, 40)
    finally:
        workers.stop()
