"""``send_messages`` reports what the broker refused instead of dropping it silently.

The refusal comes from a stand-in producer (kafka-python's own ``Future``, failed): a real
broker refusing one message in a thousand cannot be provoked here on demand.
"""

from __future__ import annotations

import pytest
from kafka.errors import KafkaTimeoutError
from kafka.future import Future

from stream.settings import Settings
from stream.tools.generator import TrafficGenerator
from stream.tools.producer import SendError, generated_messages, send_messages


class _Producer:
    def __init__(self, refuse_every: int) -> None:
        self.refuse_every = refuse_every
        self.sent = 0
        self.flushed = False

    def send(self, topic, key=None, value=None):  # noqa: ANN001 - kafka-python's signature
        self.sent += 1
        future = Future()
        if self.refuse_every and self.sent % self.refuse_every == 0:
            return future.failure(KafkaTimeoutError(f"message {self.sent} expired"))
        return future.success(None)

    def flush(self) -> None:
        self.flushed = True


def test_refused_messages_are_counted_and_raised_after_the_rest_is_flushed() -> None:
    producer = _Producer(refuse_every=10)
    messages = generated_messages(TrafficGenerator(customers=20, seed=1))
    with pytest.raises(SendError, match=r"refused 5 of 50 messages.*message 10 expired"):
        send_messages(Settings(), _first(messages, 50), producer=producer)
    assert producer.flushed and producer.sent == 50


def test_nothing_refused_returns_the_counts() -> None:
    producer = _Producer(refuse_every=0)
    stats = send_messages(
        Settings(),
        _first(generated_messages(TrafficGenerator(customers=5, seed=1)), 20),
        producer=producer,
    )
    assert stats.messages == 20 and producer.flushed


def _first(messages, n):
    for i, message in enumerate(messages):
        if i == n:
            return
        yield message
