"""Input topics that exist before the segmenter, with another partition count than
``SEGMENTER_PARTITIONS``: the worker's table follows them when they agree, and the worker stops
with exit code 2 and one line naming each topic's count when they do not (issue 14).

Before, the table kept ``SEGMENTER_PARTITIONS`` partitions and the first event on a partition
beyond them crashed the agent, again and again, and nothing was processed."""

from __future__ import annotations

import uuid

import orjson
import pytest
from kafka import KafkaAdminClient
from kafka.admin import NewTopic

from stream.kafka import client_options, topic_partitions
from stream.settings import Settings
from stream.store import SegmentClient
from stream.tools.embedded import EmbeddedStack
from stream.topology import topology

from .conftest import Workers, make_settings, run_cli, wait_until

pytestmark = pytest.mark.integration

CUSTOMERS = [f"pc-{i:03d}" for i in range(40)]  # spread over every partition of 4


def _bare_settings(stack: EmbeddedStack, **overrides: object) -> Settings:
    """Settings like ``make_settings`` gives, but no topic created yet."""
    run = uuid.uuid4().hex[:8]
    options: dict[str, object] = {
        "kafka_url": stack.kafka_url,
        "redis_url": stack.redis_url,
        "topic_prefix": f"t{run}-",
        "app_id": f"segmenter-{run}",
        "redis_prefix": f"t{run}:",
        "session_timeout": 10.0,
        "heartbeat_interval": 1.0,
        "metrics_port": 0,
        **overrides,
    }
    return Settings(**options)  # type: ignore[arg-type]


def _create(settings: Settings, counts: dict[str, int]) -> None:
    """Create topics (full names) with these partition counts, as another team would."""
    admin = KafkaAdminClient(**client_options(settings))
    try:
        admin.create_topics([NewTopic(name, n, 1) for name, n in counts.items()])
    finally:
        admin.close()


def _send_purchases(producer, settings: Settings, round_: int = 0) -> None:  # type: ignore[no-untyped-def]
    topic = settings.topic(settings.purchases_topic)
    for i, customer_id in enumerate(CUSTOMERS):
        event = {"event_id": f"e-{customer_id}-{round_}", "customer_id": customer_id}
        value = orjson.dumps({**event, "ts": 1_795_000_000_000 + i + round_, "amount": 10.0})
        producer.send(topic, key=customer_id.encode(), value=value)
    producer.flush()


def _every_customer_applied(workers: Workers, events: int = 1) -> bool:
    workers.check_alive()
    records = [workers.client.get(c) for c in CUSTOMERS]
    return all(r is not None and r["events_applied"] >= events for r in records)


def test_the_table_follows_input_topics_that_have_more_partitions(stack, tmp_path, producer):
    probe = _bare_settings(stack)
    _create(probe, dict.fromkeys(topology(probe).consumed, 4))  # inputs and forget requests
    settings = make_settings(stack, topic_prefix=probe.topic_prefix, partitions=2)
    workers = Workers(settings, tmp_path)
    try:
        (worker,) = workers.start(1)
        _send_purchases(producer, settings)
        # Customers on partitions 2 and 3 crashed the agent before; now every one is applied.
        wait_until(lambda: _every_customer_applied(workers), 90, "every customer's record")
        wait_until(
            lambda: [b["partitions"] for b in workers.client.workers()] == [[0, 1, 2, 3]],
            30,
            "the worker to own all 4 partitions",
        )
        assert "SEGMENTER_PARTITIONS is 2" in workers.log(worker, 400)
        # And it goes on: a second round reaches every customer.
        _send_purchases(producer, settings, round_=1)
        wait_until(lambda: _every_customer_applied(workers, 2), 60, "the second round")
        changelog = f"{settings.app_id}-profiles-changelog"
        assert topic_partitions(settings, [changelog]) == {changelog: 4}
    finally:
        workers.stop()


def test_input_topics_auto_created_by_a_producer_before_the_first_worker(stack, tmp_path, producer):
    settings = _bare_settings(stack, partitions=2)
    # A producer sends first: the broker creates the topic with its default count.
    _send_purchases(producer, settings)
    purchases = settings.topic(settings.purchases_topic)
    (auto,) = topic_partitions(settings, [purchases]).values()
    assert auto is not None and auto != 2, "this test needs a broker default other than 2"
    workers = Workers(settings, tmp_path)
    try:
        workers.start(1)
        wait_until(lambda: _every_customer_applied(workers), 90, "every customer's record")
        # The topics the worker created itself took the same count.
        consumed = list(topology(settings).consumed)
        assert set(topic_partitions(settings, consumed).values()) == {auto}
    finally:
        workers.stop()


def test_input_topics_that_disagree_stop_the_worker_with_exit_code_2(stack):
    settings = _bare_settings(stack, partitions=2)
    clickstream = settings.topic(settings.clickstream_topic)
    purchases = settings.topic(settings.purchases_topic)
    _create(settings, {clickstream: 2, purchases: 3})
    done = run_cli(settings, "worker", timeout=90)
    assert done.returncode == 2, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    line = lines[0]
    assert f"{clickstream} 2" in line and f"{purchases} 3" in line, line
    assert "SEGMENTER_PARTITIONS" in line
    # Nothing was created on the way out.
    identify = settings.topic(settings.identify_topic)
    assert topic_partitions(settings, [identify]) == {identify: None}
    client = SegmentClient(settings.redis_url.get_secret_value(), settings.redis_prefix)
    assert client.workers() == []
    client.close()
