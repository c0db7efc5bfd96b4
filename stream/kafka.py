"""Kafka plumbing outside Faust: topic creation, a producer, and a topic reader for tools."""

from __future__ import annotations

import contextlib
import logging
import ssl
import time
from collections.abc import Iterable, Iterator
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
    "client_options",
    "ensure_topics",
    "faust_credentials",
    "make_producer",
    "read_topic",
    "ssl_context",
    "wait_for_broker",
]


class BrokerUnavailable(SegmenterError):
    """Kafka could not be reached; the message says where and why."""


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


def ensure_topics(settings: Settings) -> None:
    """Create the project's topics (every one of ``stream.topology``) if they are missing.

    Input topics and the feature table share one partition count (Faust's co-partitioning);
    the sample and snapshot topics have one partition, read by the single model trainer.
    """
    wanted = topology(settings).names
    admin = KafkaAdminClient(**client_options(settings))
    try:
        existing = set(admin.list_topics())
        missing = [NewTopic(n, p, 1) for n, p in wanted.items() if n not in existing]
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


def send_json(producer: KafkaProducer, topic: str, items: Iterable[tuple[str, object]]) -> int:
    n = 0
    for key, value in items:
        producer.send(topic, key=key, value=orjson.dumps(value))
        n += 1
    return n
