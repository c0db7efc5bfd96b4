"""`segmenter triggers`: deliver segment changes to a webhook, at least once, in order per customer.

Each change from ``segment-changes`` is POSTed as JSON (the topic's own shape) with the headers
``Idempotency-Key`` (the change's ``change_id``, the same on every retry and redelivery),
``X-Segmenter-Attempt`` and ``Content-Type: application/json``. A 2xx answer is delivered.
Connection errors, timeouts, 408, 425, 429 and 5xx are retried with exponential backoff
(``Retry-After`` is honoured, capped at the backoff ceiling) up to ``max_attempts``; any other
answer, or the last failed attempt, sends the change with the reason to the trigger
dead-letter topic. The consumer commits a change's offset only after it was delivered or
dead-lettered, so a crash loses nothing: at worst the receiver sees a change again, under the
same idempotency key.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
from kafka import KafkaConsumer, TopicPartition
from kafka.structs import OffsetAndMetadata

from stream.kafka import client_options, make_producer
from stream.settings import Settings

log = logging.getLogger(__name__)

__all__ = ["Delivery", "TriggerStats", "WebhookSender", "matches", "run_triggers"]

RETRYABLE = frozenset({408, 425, 429})


@dataclass(frozen=True, slots=True)
class Delivery:
    ok: bool
    attempts: int
    status: int | None = None
    error: str = ""


@dataclass
class TriggerStats:
    delivered: int = 0
    failed: int = 0
    skipped: int = 0
    retries: int = 0
    started: float = field(default_factory=time.monotonic)

    def line(self) -> str:
        return (
            f"delivered {self.delivered:,}, dead-lettered {self.failed:,}, "
            f"skipped by filter {self.skipped:,}, retries {self.retries:,} "
            f"in {time.monotonic() - self.started:.0f}s"
        )


class WebhookSender:
    """POST one change with retries and exponential backoff; never raises for HTTP trouble."""

    def __init__(
        self,
        url: str,
        max_attempts: int = 6,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        timeout: float = 5.0,
        headers: dict[str, str] | None = None,
        sleep: Callable[[float], Any] = time.sleep,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.url = url
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.headers = dict(headers or {})
        self.sleep = sleep
        self.client = httpx.Client(timeout=timeout)

    def delay(self, attempt: int, retry_after: str | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based).

        >>> s = WebhookSender("http://x", backoff=0.5, max_backoff=4)
        >>> [s.delay(n) for n in range(1, 6)]
        [0.5, 1.0, 2.0, 4.0, 4.0]
        >>> s.delay(1, retry_after="3")
        3.0
        """
        wait = float(min(self.max_backoff, self.backoff * 2 ** (attempt - 1)))
        if retry_after:
            with contextlib.suppress(ValueError):  # an HTTP date: keep our own backoff
                wait = min(self.max_backoff, max(0.0, float(retry_after)))
        return wait

    def send(self, change: dict[str, Any], stop: threading.Event | None = None) -> Delivery:
        body = orjson.dumps(change)
        status: int | None = None
        error = ""
        for attempt in range(1, self.max_attempts + 1):
            retry_after = None
            headers = {
                **self.headers,
                "Content-Type": "application/json",
                "Idempotency-Key": str(change.get("change_id", "")),
                "X-Segmenter-Attempt": str(attempt),
            }
            try:
                response = self.client.post(self.url, content=body, headers=headers)
            except httpx.HTTPError as exc:
                status, error = None, f"{type(exc).__name__}: {exc}"
            else:
                status = response.status_code
                if 200 <= status < 300:
                    return Delivery(True, attempt, status)
                error = f"HTTP {status}: {response.text[:200]}"
                if status not in RETRYABLE and status < 500:
                    return Delivery(False, attempt, status, f"refused ({error})")
                retry_after = response.headers.get("retry-after")
            if attempt < self.max_attempts:
                wait = self.delay(attempt, retry_after)
                if stop is not None and stop.wait(wait):
                    # Shutting down: report not delivered, so the offset is not committed.
                    return Delivery(False, attempt, status, "interrupted")
                if stop is None:
                    self.sleep(wait)
        return Delivery(
            False, self.max_attempts, status, f"gave up after {attempt} attempts: {error}"
        )

    def close(self) -> None:
        self.client.close()


def matches(change: dict[str, Any], segments: Iterable[str], changes: Iterable[str]) -> bool:
    """Whether the filters let this change through (no filter: everything).

    A segment filter matches the full name (``rule:vip``, ``persona:Bargain Ben``) or the
    name without its kind (``vip``, ``Bargain Ben``).

    >>> c = {"segment": "rule:vip", "change": "entered"}
    >>> matches(c, [], []), matches(c, ["vip"], []), matches(c, ["rule:vip"], ["exited"])
    (True, True, False)
    """
    wanted = set(segments)
    kinds = set(changes)
    segment = str(change.get("segment", ""))
    if wanted and segment not in wanted and segment.split(":", 1)[-1] not in wanted:
        return False
    return not kinds or change.get("change") in kinds


def run_triggers(
    settings: Settings,
    sender: WebhookSender,
    segments: Iterable[str] = (),
    changes: Iterable[str] = (),
    group: str = "segmenter-triggers",
    stop: threading.Event | None = None,
    on_progress: Callable[[TriggerStats], None] | None = None,
    progress_every: float = 5.0,
) -> TriggerStats:
    """Consume ``segment-changes`` until ``stop`` is set (SIGINT / SIGTERM set it too)."""
    stop = stop or threading.Event()
    segments, changes = list(segments), list(changes)
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stop.set())
    topic = settings.topic(settings.changes_topic)
    dead_topic = settings.topic(settings.trigger_dead_letter_topic)
    consumer = KafkaConsumer(
        topic,
        **client_options(settings),
        group_id=f"{settings.topic_prefix}{group}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=50,
        # Tansu lets a new member in after about half the session timeout: keep it short.
        session_timeout_ms=int(settings.session_timeout * 1000),
        heartbeat_interval_ms=int(settings.heartbeat_interval * 1000),
        # A change may wait out several backoffs; the group must not evict us meanwhile.
        max_poll_interval_ms=15 * 60 * 1000,
    )
    producer = make_producer(settings, acks="all")
    stats = TriggerStats()
    last_report = time.monotonic()
    try:
        while not stop.is_set():
            polled = consumer.poll(timeout_ms=500)
            for tp, records in polled.items():
                for record in records:
                    if stop.is_set():
                        break
                    if not _handle(
                        record, sender, segments, changes, producer, dead_topic, stats, stop
                    ):
                        break  # interrupted mid-delivery: leave it uncommitted
                    consumer.commit(
                        {
                            TopicPartition(tp.topic, tp.partition): OffsetAndMetadata(
                                record.offset + 1, "", -1
                            )
                        }
                    )
            if on_progress and time.monotonic() - last_report >= progress_every:
                on_progress(stats)
                last_report = time.monotonic()
    finally:
        consumer.close()
        producer.flush()
        producer.close()
        sender.close()
    return stats


def _handle(
    record: Any,
    sender: WebhookSender,
    segments: list[str],
    changes: list[str],
    producer: Any,
    dead_topic: str,
    stats: TriggerStats,
    stop: threading.Event,
) -> bool:
    """Deliver or dead-letter one record; False if shutdown interrupted it (not done)."""
    try:
        change = orjson.loads(record.value)
        if not isinstance(change, dict):
            raise ValueError("not a JSON object")
    except (orjson.JSONDecodeError, ValueError) as exc:
        _dead_letter(
            producer,
            dead_topic,
            record,
            None,
            Delivery(False, 0, None, f"bad change: {exc}"),
            sender.url,
        )
        stats.failed += 1
        return True
    if not matches(change, segments, changes):
        stats.skipped += 1
        return True
    result = sender.send(change, stop)
    if result.error == "interrupted":
        return False
    stats.retries += result.attempts - 1
    if result.ok:
        stats.delivered += 1
        return True
    log.warning("change %s not delivered: %s", change.get("change_id"), result.error)
    _dead_letter(producer, dead_topic, record, change, result, sender.url)
    stats.failed += 1
    return True


def _dead_letter(
    producer: Any,
    topic: str,
    record: Any,
    change: dict[str, Any] | None,
    result: Delivery,
    url: str,
) -> None:
    letter = {
        "reason": result.error,
        "attempts": result.attempts,
        "status": result.status,
        "webhook": _safe_url(url),
        "change": change,
        "value": None if change is not None else record.value.decode("utf-8", "replace"),
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "failed_at": int(time.time() * 1000),
    }
    # Delivered to the broker before the change's offset is committed.
    producer.send(topic, key=record.key, value=orjson.dumps(letter)).get(timeout=30)


def _safe_url(url: str) -> str:
    """The webhook without credentials or query string (which may hold a token).

    >>> _safe_url("https://user:pw@hooks.example.com/x?token=s3cret")
    'https://hooks.example.com/x'
    """
    parsed = httpx.URL(url)
    return str(parsed.copy_with(username=None, password=None, query=None))
