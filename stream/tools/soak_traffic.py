"""The soak's traffic (``segmenter soak``): the CDNOW purchase log replayed in event-time order,
generated clicks of the same customers, and about 5% garbage messages of several kinds; and a
paced sender that remembers where every message landed (topic, partition, offset), so that the
checks can match each garbage message to its dead letter one to one."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from kafka import KafkaProducer

from stream.tools.cdnow import Purchase
from stream.tools.generator import Message

__all__ = ["GARBAGE_KINDS", "Outgoing", "Sender", "SoakTraffic"]

HOUR_MS = 3_600_000
CLICK_TYPES = ("page_view", "product_view", "search", "add_to_cart", "checkout_start")
CATEGORIES = ("pop", "rock", "jazz", "classical", "soundtracks")


def _not_json(n: int, cid: str) -> tuple[str, bytes | None, bytes]:
    return "purchases", cid.encode(), b'{"event_id": "junk-%d", "customer_id": ' % n


def _not_an_object(n: int, cid: str) -> tuple[str, bytes | None, bytes]:
    return "clickstream", cid.encode(), orjson.dumps(f"junk-{n}")


def _purchase(n: int, cid: str, **change: Any) -> dict[str, Any]:
    event = {"event_id": f"junk-{n}", "customer_id": cid, "ts": 870_000_000_000, "amount": 9.99}
    return {k: v for k, v in {**event, **change}.items() if v is not None}


def _missing_field(n: int, cid: str) -> tuple[str, bytes | None, bytes]:
    return "purchases", cid.encode(), orjson.dumps(_purchase(n, cid, amount=None))


def _wrong_type(n: int, cid: str) -> tuple[str, bytes | None, bytes]:
    return "purchases", cid.encode(), orjson.dumps(_purchase(n, cid, amount="9.99"))


def _negative_amount(n: int, cid: str) -> tuple[str, bytes | None, bytes]:
    return "purchases", cid.encode(), orjson.dumps(_purchase(n, cid, amount=-5.0))


def _no_offset(n: int, cid: str) -> tuple[str, bytes | None, bytes]:
    value = _purchase(n, cid, ts="1997-06-01T10:00:00")
    return "purchases", cid.encode(), orjson.dumps(value)


def _click(n: int, cid: str, kind: str) -> dict[str, Any]:
    return {"event_id": f"junk-{n}", "type": kind, "customer_id": cid, "ts": 870_000_000_000}


def _unknown_type(n: int, cid: str) -> tuple[str, bytes | None, bytes]:
    return "clickstream", cid.encode(), orjson.dumps(_click(n, cid, "teleport"))


def _key_mismatch(n: int, cid: str) -> tuple[str, bytes | None, bytes]:
    return "clickstream", cid.encode(), orjson.dumps(_click(n, f"other-{n}", "page_view"))


def _no_key(n: int, cid: str) -> tuple[str, bytes | None, bytes]:
    return "clickstream", None, orjson.dumps(_click(n, cid, "search"))


#: Kinds of garbage: each makes (source, key, value) of a message the worker must refuse.
GARBAGE_KINDS: Mapping[str, Callable[[int, str], tuple[str, bytes | None, bytes]]] = {
    "not JSON": _not_json,
    "not an object": _not_an_object,
    "missing field": _missing_field,
    "wrong type": _wrong_type,
    "negative amount": _negative_amount,
    "timestamp without offset": _no_offset,
    "unknown event type": _unknown_type,
    "customer_id not the key": _key_mismatch,
    "no key": _no_key,
}


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message to send: its source, key and bytes; the event message it carries (for the
    oracle), or the kind of garbage it is."""

    source: str
    key: bytes | None
    value: bytes
    message: Message | None = None
    garbage: str | None = None


class SoakTraffic:
    """The purchases in event-time order; before a share of them (``click_share``) a session of
    one to four clicks of the same customer on the same day; and, after any message, a garbage
    message with probability ``garbage_share / (1 - garbage_share)`` (about that share of all
    messages), its kind drawn at random. Deterministic for a seed.

    >>> from datetime import date
    >>> p = [Purchase(i, str(i % 7), date(1997, 1, 1 + i % 28), 1, 10.0) for i in range(400)]
    >>> out = list(SoakTraffic(p, seed=1))
    >>> 0.03 < sum(o.garbage is not None for o in out) / len(out) < 0.07
    True
    """

    def __init__(
        self,
        purchases: Sequence[Purchase],
        seed: int = 1,
        garbage_share: float = 0.05,
        click_share: float = 0.6,
    ) -> None:
        self.purchases = purchases
        self.rng = random.Random(seed)
        self.garbage_odds = garbage_share / (1.0 - garbage_share)
        self.click_share = click_share
        self.clicks = 0

    def __iter__(self) -> Iterator[Outgoing]:
        rng = self.rng
        junk = 0
        kinds = list(GARBAGE_KINDS)
        for purchase in self.purchases:
            messages = [purchase.message()]
            if rng.random() < self.click_share:
                messages.insert(0, self._session(purchase))
            for message in messages:
                value = orjson.dumps(message.value)
                yield Outgoing(message.source, message.key.encode(), value, message=message)
                if rng.random() < self.garbage_odds:
                    junk += 1
                    kind = rng.choice(kinds)
                    source, key, raw = GARBAGE_KINDS[kind](junk, purchase.customer_id)
                    yield Outgoing(source, key, raw, garbage=kind)

    def _session(self, purchase: Purchase) -> Message:
        rng = self.rng
        cid = purchase.customer_id
        ts = purchase.ts + rng.randrange(20 * HOUR_MS)
        category = rng.choice(CATEGORIES)
        clicks = []
        for _ in range(rng.randint(1, 4)):
            self.clicks += 1
            ts += rng.randrange(5_000, 120_000)
            clicks.append(
                {
                    "event_id": f"click-{self.clicks}",
                    "type": rng.choice(CLICK_TYPES),
                    "customer_id": cid,
                    "ts": ts,
                    "session_id": f"s-{purchase.line}",
                    "category": category,
                    "device": rng.choice(("desktop", "mobile", "tablet")),
                    "country": "US",
                }
            )
        return Message("clickstream", cid, clicks)


@dataclass
class Sent:
    """Where one message landed (or ``offset`` -1 while its delivery is pending)."""

    out: Outgoing
    topic: str
    partition: int = -1
    offset: int = -1


@dataclass
class Sender:
    """Sends ``Outgoing`` messages at ``rate`` messages per second from a thread, until they run
    out or ``stop`` is set; remembers every message with where it landed. A delivery that fails
    is sent again (before the next new message), so a message may land twice (when only its
    acknowledgement was lost); every copy acknowledged is remembered."""

    producer: KafkaProducer
    topics: Mapping[str, str]  # source -> topic
    rate: float
    sent: list[Sent] = field(default_factory=list)
    failures: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    counts: Counter[str] = field(default_factory=Counter)
    thread: threading.Thread | None = None
    retry: deque[Sent] = field(default_factory=deque)

    def start(self, traffic: Iterator[Outgoing]) -> None:
        self.thread = threading.Thread(target=self._run, args=(traffic,), daemon=True)
        self.thread.start()

    def _run(self, traffic: Iterator[Outgoing]) -> None:
        started = time.monotonic()
        for n, out in enumerate(traffic):
            ahead = n / self.rate - (time.monotonic() - started)
            if self.stop.wait(max(0.0, ahead)):
                break
            self._resend()
            record = Sent(out, self.topics[out.source])
            self.counts["garbage" if out.garbage else out.source] += 1
            self._send(record)
        self.producer.flush()
        while self.retry and not self.stop.is_set():
            self._resend()
            self.producer.flush()

    def _resend(self) -> None:
        while self.retry:
            failed = self.retry.popleft()
            self._send(Sent(failed.out, failed.topic))

    def _send(self, record: Sent) -> None:
        self.sent.append(record)
        future = self.producer.send(record.topic, key=record.out.key, value=record.out.value)
        future.add_callback(self._landed, record)
        future.add_errback(self._failed, record)

    def _landed(self, record: Sent, metadata: Any) -> None:
        record.partition, record.offset = metadata.partition, metadata.offset

    def _failed(self, record: Sent, _exc: BaseException) -> None:
        self.failures += 1
        record.offset = -2
        self.retry.append(record)

    def join(self, timeout: float) -> None:
        if self.thread is not None:
            self.thread.join(timeout)

    def delivered(self) -> list[Sent]:
        return [s for s in self.sent if s.offset >= 0]

    def pending(self) -> int:
        return sum(s.offset == -1 for s in self.sent) + len(self.retry)
