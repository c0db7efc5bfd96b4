"""Sending events into the input topics: generated traffic at a chosen rate, or a file replay."""

from __future__ import annotations

import csv
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from kafka import KafkaProducer

from stream.errors import SegmenterError
from stream.kafka import make_producer
from stream.settings import Settings
from stream.tools.generator import Message, TrafficGenerator
from stream.topology import INPUT_SOURCES, topology

__all__ = [
    "ProduceStats",
    "ReplayError",
    "SendError",
    "generated_messages",
    "read_events_file",
    "send_messages",
]


class SendError(SegmenterError):
    """Messages the broker did not take: what a send lost."""


class ReplayError(SegmenterError):
    """A replay file that cannot be read; the message names the line."""


@dataclass
class ProduceStats:
    messages: int = 0
    events: int = 0
    started: float = 0.0
    elapsed: float = 0.0

    @property
    def rate(self) -> float:
        return self.events / self.elapsed if self.elapsed else 0.0


def generated_messages(generator: TrafficGenerator) -> Iterator[Message]:
    for session in generator.sessions():
        yield from session


def send_messages(
    settings: Settings,
    messages: Iterable[Message],
    rate: float = 0.0,
    max_events: int | None = None,
    seconds: float | None = None,
    stop: threading.Event | None = None,
    on_progress: Callable[[ProduceStats], None] | None = None,
    producer: KafkaProducer | None = None,
) -> ProduceStats:
    """Send messages to the topics of their sources, keyed by customer id.

    ``rate`` is events per second (0: as fast as possible); stops after ``max_events`` events,
    ``seconds`` seconds, when ``stop`` is set, or when ``messages`` run out. Raises
    ``SendError`` once the rest is flushed if the broker refused any message (after the
    producer's own retries): a count of what was lost and the first reason, not silence.
    """
    topics = topology(settings).topic_of_source
    own = producer is None
    producer = producer or make_producer(settings)
    stats = ProduceStats(started=time.monotonic())
    last_report = 0.0
    failed: list[BaseException] = []
    try:
        for message in messages:
            now = time.monotonic()
            stats.elapsed = now - stats.started
            if (stop and stop.is_set()) or (seconds is not None and stats.elapsed >= seconds):
                break
            if max_events is not None and stats.events >= max_events:
                break
            if rate > 0:  # pace: never run ahead of rate * elapsed
                ahead = stats.events / rate - stats.elapsed
                if ahead > 0:
                    time.sleep(min(ahead, 0.05))
            producer.send(
                topics[message.source], key=message.key, value=orjson.dumps(message.value)
            ).add_errback(failed.append)
            stats.messages += 1
            stats.events += message.events
            if on_progress and now - last_report >= 0.25:
                last_report = now
                on_progress(stats)
        producer.flush()
    finally:
        if own:
            producer.close()
    stats.elapsed = time.monotonic() - stats.started
    if on_progress:
        on_progress(stats)
    if failed:
        raise SendError(
            f"the broker refused {len(failed):,} of {stats.messages:,} messages sent "
            f"(first: {failed[0]!r})"
        )
    return stats


def _source_of(event: dict[str, Any]) -> str:
    if "traits" in event and "type" not in event:
        return "identify"
    if event.get("type") == "purchase" or ("amount" in event and "type" not in event):
        return "purchases"
    return "clickstream"


_NUMERIC = {"ts", "amount", "price", "quantity", "company_size", "age"}


def _csv_value(name: str, text: str) -> Any:
    if text == "":
        return None
    if name in _NUMERIC:
        try:
            return int(text)
        except ValueError:
            try:
                return float(text)
            except ValueError:
                return text  # left for the decoder to reject with a reason
    return text


def read_events_file(path: Path) -> Iterator[Message]:
    """Messages from a JSONL file (an event or an array of one customer's events per line) or a
    CSV file with a header of event field names. A ``topic`` field (clickstream, purchases,
    identify) picks the topic; otherwise it is inferred: ``traits`` means identify, a
    ``purchase`` type or an ``amount`` means purchases, anything else is clickstream.
    Malformed events are still sent, so that the worker dead-letters them with a reason."""
    if not path.exists():
        raise ReplayError(f"{path}: no such file")
    if path.suffix.lower() == ".csv":
        with open(path, newline="") as fh:
            for row in csv.DictReader(fh):
                event = {k: _csv_value(k, v) for k, v in row.items() if k and v is not None}
                event = {k: v for k, v in event.items() if v is not None}
                source = str(event.pop("topic", None) or _source_of(event))
                yield Message(source, str(event.get("customer_id", "")), event)
        return
    with open(path, "rb") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                value = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise ReplayError(f"{path}:{number}: not JSON: {exc}") from None
            first = value[0] if isinstance(value, list) and value else value
            if not isinstance(first, dict):
                raise ReplayError(f"{path}:{number}: expected an event object or an array of them")
            source = str(first.get("topic") or _source_of(first))
            if source not in INPUT_SOURCES:
                raise ReplayError(f"{path}:{number}: unknown topic {source!r}")
            yield Message(source, str(first.get("customer_id", "")), value)
