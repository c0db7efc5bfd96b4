"""Kafka plumbing outside Faust: topic creation, a producer, and a topic reader for tools."""

from __future__ import annotations

import contextlib
import logging
import ssl
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import orjson
from faust.auth import Credentials, SASLCredentials, SSLCredentials
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from stream.errors import SegmenterError
from stream.settings import Settings
from stream.topology import topology

log = logging.getLogger(__name__)

__all__ = [
    "BrokerUnavailable",
    "PartitionMismatch",
    "TombstoneWatch",
    "client_options",
    "co_partitioned_count",
    "ensure_topics",
    "faust_credentials",
    "make_producer",
    "read_topic",
    "resolve_partitions",
    "ssl_context",
    "table_changelog",
    "topic_partitions",
    "wait_for_broker",
]


class BrokerUnavailable(SegmenterError):
    """Kafka could not be reached; the message says where and why."""


class PartitionMismatch(SegmenterError):
    """The topics co-partitioned with the feature table exist with different partition counts;
    the message names each topic and its count."""


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context for Kafka, or None when the protocol has no TLS.

    Verifies the broker's certificate and host name against ``kafka_ssl_ca_file`` (the
    system's CAs when unset), and presents a client certificate when one is configured.
    """
    if not settings.kafka_security_protocol.endswith("SSL"):
        return None
    ca = settings.kafka_ssl_ca_file
    context = ssl.create_default_context(cafile=str(ca) if ca else None)
    if settings.kafka_ssl_cert_file and settings.kafka_ssl_key_file:
        context.load_cert_chain(settings.kafka_ssl_cert_file, settings.kafka_ssl_key_file)
    return context


def client_options(settings: Settings) -> dict[str, Any]:
    """Connection options for every kafka-python client (admin, producer, consumer)."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers,
        "security_protocol": settings.kafka_security_protocol,
    }
    context = ssl_context(settings)
    if context is not None:
        options["ssl_context"] = context
    if settings.kafka_security_protocol.startswith("SASL_"):
        password = settings.kafka_sasl_password
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism
        options["sasl_plain_username"] = settings.kafka_sasl_username
        options["sasl_plain_password"] = password.get_secret_value() if password else ""
    return options


def faust_credentials(settings: Settings) -> Credentials | None:
    """The same connection security for the Faust worker (aiokafka), or None for PLAINTEXT."""
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return None
    context = ssl_context(settings)
    if protocol == "SSL":
        assert context is not None
        return SSLCredentials(context)
    password = settings.kafka_sasl_password
    return SASLCredentials(
        username=settings.kafka_sasl_username,
        password=password.get_secret_value() if password else "",
        ssl_context=context,
        mechanism=settings.kafka_sasl_mechanism,
    )


def wait_for_broker(settings: Settings, timeout: float | None = None) -> None:
    budget = settings.connect_timeout if timeout is None else timeout
    deadline = time.monotonic() + budget
    while True:
        try:
            admin = KafkaAdminClient(
                **client_options(settings),
                request_timeout_ms=3000,
                bootstrap_timeout_ms=int(max(0.5, min(budget, 5.0)) * 1000),
            )
            admin.close()
            return
        except KafkaError as exc:
            if time.monotonic() > deadline:
                raise BrokerUnavailable(
                    f"Kafka at {settings.kafka_url} is not reachable: {exc}"
                ) from exc
            time.sleep(0.2)


def topic_partitions(settings: Settings, names: Iterable[str]) -> dict[str, int | None]:
    """Each topic's partition count on the broker (None: the topic does not exist).

    Asking creates nothing (a metadata request without auto-creation).
    """
    wanted = list(dict.fromkeys(names))
    if not wanted:  # an empty list would describe every topic
        return {}
    admin = KafkaAdminClient(**client_options(settings))
    try:
        described = admin.describe_topics(wanted)
    finally:
        admin.close()
    counts: dict[str, int | None] = dict.fromkeys(wanted)
    for topic in described:
        if topic.get("error_code", 0) == 0 and topic.get("partitions"):
            counts[topic["name"]] = len(topic["partitions"])
    return counts


def table_changelog(settings: Settings) -> str:
    """The feature table's changelog topic, which Faust names and creates itself (the table is
    ``profiles``: stream/worker/app.py)."""
    return f"{settings.app_id}-profiles-changelog"


def resolve_partitions(configured: int, counts: Mapping[str, int | None]) -> int:
    """The one partition count of the topics co-partitioned with the feature table.

    ``counts`` holds each such topic's count on the broker (None: not created yet). Topics that
    exist decide, as co-partitioning requires: when they agree on a count, that is the count
    (the missing ones are created with it); when none exists, ``configured``
    (``SEGMENTER_PARTITIONS``). Raises ``PartitionMismatch`` naming every count when the
    existing ones disagree.

    >>> resolve_partitions(2, {"clickstream": 4, "purchases": 4, "identify": None})
    4
    >>> resolve_partitions(2, {"clickstream": None})
    2
    >>> try:
    ...     resolve_partitions(2, {"clickstream": 2, "purchases": 3, "identify": None})
    ... except PartitionMismatch as exc:
    ...     print(str(exc).split("they have: ")[1].split("; ")[0])
    clickstream 2, purchases 3 (not created yet: identify)
    """
    found = {name: n for name, n in counts.items() if n is not None}
    if len(set(found.values())) > 1:
        listed = ", ".join(f"{name} {n}" for name, n in found.items())
        absent = [name for name, n in counts.items() if n is None]
        if absent:
            listed += f" (not created yet: {', '.join(absent)})"
        raise PartitionMismatch(
            "the input topics and the feature table's changelog must have one partition count "
            f"(they are co-partitioned), but they have: {listed}; give them one count "
            f"(SEGMENTER_PARTITIONS is {configured})"
        )
    return next(iter(found.values()), configured)


def co_partitioned_count(settings: Settings) -> int:
    """``resolve_partitions`` over the broker's counts of the topics the worker consumes (input
    topics, forget requests) and the feature table's changelog."""
    names = [*topology(settings).consumed, table_changelog(settings)]
    return resolve_partitions(settings.partitions, topic_partitions(settings, names))


def ensure_topics(settings: Settings) -> None:
    """Create the project's topics (every one of ``stream.topology``) if they are missing.

    Input topics and the feature table share one partition count (Faust's co-partitioning):
    a missing one is created with the count the existing ones agree on (``co_partitioned_count``;
    ``SEGMENTER_PARTITIONS`` when none exists, or when they disagree: the worker then stops
    with the counts). The sample and snapshot topics have one partition, read by the single
    model trainer.
    """
    compacted = topology(settings).compacted
    wanted = topology(settings).names
    admin = KafkaAdminClient(**client_options(settings))
    try:
        existing = set(admin.list_topics())
        if any(name not in existing for name in wanted):
            with contextlib.suppress(PartitionMismatch):
                count = co_partitioned_count(settings)
                if count != settings.partitions:
                    adapted = settings.model_copy(update={"partitions": count})
                    wanted = topology(adapted).names
        compact = {"cleanup.policy": "compact"}
        missing = [
            NewTopic(n, p, 1, topic_configs=compact if n in compacted else {})
            for n, p in wanted.items()
            if n not in existing
        ]
        if missing:
            # Another process (a second worker) may win the race to create them.
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(missing)
            log.info("created topics %s", ", ".join(t.name for t in missing))
    finally:
        admin.close()


def make_producer(settings: Settings, **overrides: object) -> KafkaProducer:
    options: dict[str, object] = {
        **client_options(settings),
        "linger_ms": 5,
        "acks": 1,
        "key_serializer": lambda k: k.encode() if isinstance(k, str) else k,
    }
    options.update(overrides)
    return KafkaProducer(**options)


def read_topic(
    settings: Settings, topic: str, timeout: float = 5.0, quiet: float = 1.0
) -> Iterator[tuple[bytes | None, Any]]:
    """Every message of a topic from the beginning, JSON-decoded, up to about its end.

    Ends ``quiet`` seconds after the end offsets read at the start are reached (Tansu may
    report an end offset short of the last batch's records, which come in that time), or after
    ``timeout`` seconds without any message. A topic written all the time still ends.
    """
    consumer = KafkaConsumer(**client_options(settings), enable_auto_commit=False, group_id=None)
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        if not tps:
            return
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = {tp: end for tp, end in consumer.end_offsets(tps).items() if end > 0}
        last_message = time.monotonic()
        reached = last_message if not ends else None
        while True:
            polled = consumer.poll(timeout_ms=100)
            now = time.monotonic()
            for tp, records in polled.items():
                for message in records:
                    last_message = now
                    if message.offset + 1 >= ends.get(tp, 0):
                        ends.pop(tp, None)
                    value = message.value
                    yield message.key, None if value is None else orjson.loads(value)
            if reached is None and not ends:
                reached = now
            if now - last_message >= timeout:
                return
            # Past the reported ends, read on briefly for what the broker under-reported.
            if reached is not None and (now - last_message >= quiet or now - reached >= quiet):
                return
    finally:
        consumer.close()


class TombstoneWatch:
    """Watches a topic for a tombstone (no value) of one key written after the watch began.

    ``segmenter forget`` starts one on ``segment-changes`` before it sends its request: the
    worker that erases the customer publishes the tombstone after the Redis erasure, so seeing
    it confirms the request. The watch begins at the end offsets the broker reports; a broker
    that reports short ends (Tansu) makes it read the partition's last records too, so an older
    tombstone of the same key in that last batch would confirm early (a repeated erasure).
    """

    def __init__(self, settings: Settings, topic: str, key: bytes) -> None:
        self.key = key
        self.consumer = KafkaConsumer(
            **client_options(settings), enable_auto_commit=False, group_id=None
        )
        try:
            partitions = self.consumer.partitions_for_topic(topic) or set()
            tps = [TopicPartition(topic, p) for p in sorted(partitions)]
            self.consumer.assign(tps)
            for tp, end in self.consumer.end_offsets(tps).items():
                self.consumer.seek(tp, end)
        except BaseException:
            self.consumer.close()
            raise

    def wait(self, timeout: float) -> bool:
        """True once the tombstone is read, False after ``timeout`` seconds without it."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            polled = self.consumer.poll(timeout_ms=int(min(left, 0.2) * 1000) + 1)
            for records in polled.values():
                if any(m.key == self.key and m.value is None for m in records):
                    return True

    def close(self) -> None:
        self.consumer.close()

    def __enter__(self) -> TombstoneWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def send_json(producer: KafkaProducer, topic: str, items: Iterable[tuple[str, object]]) -> int:
    n = 0
    for key, value in items:
        producer.send(topic, key=key, value=orjson.dumps(value))
        n += 1
    return n
