"""The Quix Streams peer of `segmenter bench`: the minimal job of a streaming segmenter.

Per customer (the message key), it keeps the count of events, the sum of their amounts (0 for
clicks, which have none) and the last event time in Quix's state (RocksDB, with its changelog
topic), and writes each customer's result to Redis through Quix's own ``RedisSink`` (which
flushes at each checkpoint). A message is one event object or a JSON array of one customer's
events, as the bench sends them.

It runs in a virtualenv of its own (``bench_peer.peer_python``: Quix pins confluent-kafka and
pydantic versions of its own), so it imports only the standard library, quixstreams and redis,
nothing of ``stream`` or ``models``, and those only when it runs (pytest imports every module of
``stream`` for its doctests)::

    python bench_peer_quix.py --bootstrap HOST:PORT --topic T --redis-url redis://HOST:PORT/0 \
        --prefix P --group G --events N --result out.json

It stops once it has processed ``N`` events and writes ``{"first", "last", "events",
"messages", "version"}`` (``time.time()``) to ``--result``: ``first`` when it took its first
message, ``last`` when the checkpoint holding the ``N``-th event had flushed its results to Redis
(as our worker is timed by its event count in Redis, written with the records). It prints the
rate.

Tansu adaptations, before the Application starts: Tansu answers DescribeConfigs with no
configs, so Kafka's defaults for ``retention.ms`` (7 days) and ``retention.bytes`` (none) are
filled in where the broker reported nothing (Quix's topic manager reads them to configure its
changelog topics); Tansu holds a JoinGroup for half the session timeout, so the session timeout
is 6 s (Kafka's 45 s default would take 22 s to join).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from typing import Any
from urllib.parse import urlparse

#: Kafka's broker defaults, for the topic configs a broker does not report.
KAFKA_DEFAULTS = {"retention.ms": "604800000", "retention.bytes": "-1"}
SESSION_TIMEOUT_MS = 6000


def default_topic_configs() -> None:
    """Fill Kafka's defaults into the topic configs the broker left out (Tansu: all)."""
    from quixstreams.models.topics.admin import TopicAdmin

    inspect = TopicAdmin.inspect_topics

    def inspect_topics(self: Any, topic_names: list[str], timeout: float = 30) -> Any:
        configs = inspect(self, topic_names, timeout)
        for config in configs.values():
            if config is not None:
                if config.extra_config is None:
                    config.extra_config = {}
                for name, value in KAFKA_DEFAULTS.items():
                    if config.extra_config.get(name) is None:
                        config.extra_config[name] = value
        return configs

    TopicAdmin.inspect_topics = inspect_topics


class Progress:
    """Events and messages taken, and when the run's first and last were done."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.events = 0
        self.messages = 0
        self.first = 0.0
        self.last = 0.0


def timed_redis_sink(progress: Progress, **options: Any) -> Any:
    """Quix's RedisSink, noting when the flush that wrote the target's results ended."""
    from quixstreams.sinks.community.redis import RedisSink

    class TimedRedisSink(RedisSink):  # type: ignore[misc]
        def flush(self) -> None:
            reached = progress.events >= progress.target  # all of those results are added
            super().flush()
            if reached and not progress.last:
                progress.last = time.time()

    return TimedRedisSink(**options)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", required=True, help="host:port of the broker")
    parser.add_argument("--topic", required=True, action="append", help="an input topic")
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--prefix", default="", help="prefix of the Redis keys")
    parser.add_argument("--group", required=True, help="the consumer group (fresh per run)")
    parser.add_argument("--events", type=int, required=True, help="stop after this many")
    parser.add_argument("--result", required=True, help="where to write the timings (JSON)")
    parser.add_argument("--state-dir", default=None)
    args = parser.parse_args(argv)

    import quixstreams
    from quixstreams import Application

    default_topic_configs()
    progress = Progress(args.events)
    app = Application(
        broker_address=args.bootstrap,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        state_dir=args.state_dir or tempfile.mkdtemp(prefix="bench-quix-"),
        consumer_extra_config={"session.timeout.ms": SESSION_TIMEOUT_MS},
        loglevel="WARNING",
    )
    redis_url = urlparse(args.redis_url)
    sink = timed_redis_sink(
        progress,
        host=redis_url.hostname or "127.0.0.1",
        port=redis_url.port or 6379,
        db=int(redis_url.path.strip("/") or 0),
        password=redis_url.password,
        key_serializer=lambda key, _value: args.prefix + key,
    )

    def apply(value: Any, state: Any) -> dict[str, Any]:
        if not progress.first:
            progress.first = time.time()
        events = value if isinstance(value, list) else [value]
        customer = state.get("customer") or {"count": 0, "sum": 0.0, "last": 0}
        for event in events:
            customer["count"] += 1
            customer["sum"] += event.get("amount") or 0
            if event["ts"] > customer["last"]:
                customer["last"] = event["ts"]
        state.set("customer", customer)
        progress.messages += 1
        progress.events += len(events)
        if progress.events >= progress.target:
            app.stop()  # the run loop ends; its last checkpoint flushes the sink
        return customer

    for name in args.topic:
        topic = app.topic(name, key_deserializer="str", value_deserializer="json")
        sdf = app.dataframe(topic)
        sdf = sdf.apply(apply, stateful=True)
        sdf.sink(sink)
    app.run()

    if not progress.last:  # stopped before the target (a signal): no figure
        print(f"quix peer: stopped after {progress.events} of {args.events} events")
        return 1
    with open(args.result, "w") as out:
        json.dump(
            {
                "first": progress.first,
                "last": progress.last,
                "events": progress.events,
                "messages": progress.messages,
                "version": quixstreams.__version__,
            },
            out,
        )
    span = max(progress.last - progress.first, 1e-6)
    print(
        f"quix peer: {progress.events} events in {progress.messages} messages, "
        f"{span:.2f} s, {progress.events / span:,.0f} events/s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
