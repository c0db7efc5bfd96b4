"""`segmenter triggers` against a real local HTTP server that fails on purpose, real broker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import orjson
import pytest

from models.segments import SegmentChange
from stream.kafka import read_topic
from stream.settings import Settings

from .conftest import make_settings, wait_until

pytestmark = pytest.mark.integration


class Hook:
    """A webhook receiver: records every request; some customers fail on purpose."""

    def __init__(self, delay: float = 0.0) -> None:
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        self.delay = delay
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                change = json.loads(body)
                attempt = int(self.headers["X-Segmenter-Attempt"])
                with hook.lock:
                    hook.requests.append(
                        {"change": change, "attempt": attempt, "headers": dict(self.headers)}
                    )
                time.sleep(hook.delay)
                customer = change["customer_id"]
                if customer == "refused":
                    status = 400  # permanent: no retry
                elif customer == "down":
                    status = 503  # always failing: retried, then dead-lettered
                elif customer == "flaky" and attempt < 3:
                    status = 503
                else:
                    status = 204
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/segments"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def delivered(self) -> list[dict]:
        """Changes answered with success (a 204), in arrival order."""
        with self.lock:
            return [
                r["change"]
                for r in self.requests
                if r["change"]["customer_id"] not in ("refused", "down")
                and not (r["change"]["customer_id"] == "flaky" and r["attempt"] < 3)
            ]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook() -> Iterator[Hook]:
    h = Hook()
    yield h
    h.close()


def _changes(customers: list[str], per_customer: int) -> list[SegmentChange]:
    out = []
    for customer in customers:
        for n in range(1, per_customer + 1):
            segment = "rule:vip" if n % 2 else f"cluster:{n}"
            out.append(
                SegmentChange(
                    customer, segment, "entered", False, True, 1_000 * n, "test", 1, n, 1_000 * n
                )
            )
    return out


def _publish(settings: Settings, producer, changes: list[SegmentChange]) -> None:  # type: ignore[no-untyped-def]
    topic = settings.topic(settings.changes_topic)
    for c in changes:
        producer.send(topic, key=c.customer_id, value=orjson.dumps(c.to_dict()))
    producer.flush()


def _start(settings: Settings, logdir: Path, name: str, *args: str) -> subprocess.Popen[bytes]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SEGMENTER_")}
    log = open(logdir / f"{name}.log", "wb")  # noqa: SIM115 (kept open for the child)
    return subprocess.Popen(
        [sys.executable, "-m", "stream", "triggers", *args],
        env={**clean, **settings.env()},
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def _stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()


def test_every_change_is_delivered_in_order_with_retries_and_failures_dead_lettered(
    stack, producer, hook, tmp_path
):
    settings = make_settings(stack)
    changes = _changes([f"c-{i}" for i in range(30)] + ["flaky", "refused", "down"], 4)
    _publish(settings, producer, changes)
    proc = _start(
        settings,
        tmp_path,
        "triggers",
        "--webhook",
        hook.url,
        "--max-attempts",
        "3",
        "--backoff",
        "0.05",
        "--max-backoff",
        "0.2",
        "--header",
        "Authorization: Bearer hook-secret",
    )
    try:
        expected = [c for c in changes if c.customer_id not in ("refused", "down")]
        wait_until(lambda: len(hook.delivered()) >= len(expected), 90, "every change delivered")
        letters = wait_until(
            lambda: (
                [v for _, v in read_topic(settings, settings.topic("trigger-dead-letters"), 2)]
                if len(hook.requests) >= len(expected) + 2 + 4 + 1
                else None
            ),
            60,
            "the dead letters",
        )
    finally:
        assert _stop(proc) == 0, (tmp_path / "triggers.log").read_text()
    delivered = hook.delivered()
    # Exactly the documented body, once each, in order per customer.
    assert sorted(d["change_id"] for d in delivered) == sorted(c.change_id for c in expected)
    assert {d["change_id"]: d for d in delivered} == {c.change_id: c.to_dict() for c in expected}
    for customer in {c.customer_id for c in expected}:
        got = [d["events_applied"] for d in delivered if d["customer_id"] == customer]
        assert got == sorted(got), f"changes of {customer} out of order: {got}"
    for r in hook.requests:
        assert r["headers"]["Idempotency-Key"] == r["change"]["change_id"]
        assert r["headers"]["Content-Type"] == "application/json"
        assert r["headers"]["Authorization"] == "Bearer hook-secret"
    flaky = [r["attempt"] for r in hook.requests if r["change"]["customer_id"] == "flaky"]
    assert flaky == [1, 2, 3] * 4  # each of its 4 changes: two 503s, then success
    by_customer: dict[str, list[dict]] = {}
    for letter in letters:
        by_customer.setdefault(letter["change"]["customer_id"], []).append(letter)
    assert set(by_customer) == {"refused", "down"}
    assert all(
        (lt["attempts"], lt["status"]) == (1, 400) and "refused" in lt["reason"]
        for lt in by_customer["refused"]
    )
    assert all(
        (lt["attempts"], lt["status"]) == (3, 503) and "gave up after 3" in lt["reason"]
        for lt in by_customer["down"]
    )
    assert len(letters) == 8 and all(lt["webhook"] == hook.url for lt in letters)


def test_a_segment_filter_delivers_only_that_segment(stack, producer, hook, tmp_path):
    settings = make_settings(stack)
    customers = [f"c-{i}" for i in range(10)]
    changes = _changes(customers, 4)
    _publish(settings, producer, changes)
    proc = _start(settings, tmp_path, "filtered", "--webhook", hook.url, "--segment", "vip")
    try:
        vip = [c for c in changes if c.segment == "rule:vip"]
        wait_until(lambda: len(hook.delivered()) >= len(vip), 90, "the vip changes")
        # Then one more vip change per customer: delivered in order per customer, so once all
        # have arrived every earlier change was judged, and nothing else may have arrived.
        last = [
            SegmentChange(c, "rule:vip", "exited", True, False, 9_000, "test", 1, 9, 9_000)
            for c in customers
        ]
        _publish(settings, producer, last)
        wait_until(lambda: len(hook.delivered()) >= len(vip) + len(last), 90, "the last ones")
    finally:
        _stop(proc)
    expected = sorted(c.change_id for c in [*vip, *last])
    assert sorted(d["change_id"] for d in hook.delivered()) == expected


def test_a_killed_trigger_process_loses_nothing(stack, producer, tmp_path):
    hook = Hook(delay=0.03)
    try:
        settings = make_settings(stack)
        changes = _changes([f"c-{i}" for i in range(40)], 5)
        _publish(settings, producer, changes)
        first = _start(settings, tmp_path, "first", "--webhook", hook.url)
        wait_until(lambda: len(hook.delivered()) >= 60, 90, "some deliveries")
        first.kill()  # SIGKILL: no clean-up, no final commit
        first.wait()
        before = len(hook.delivered())
        assert before < len(changes)
        second = _start(settings, tmp_path, "second", "--webhook", hook.url)
        try:
            wait_until(
                lambda: (
                    {d["change_id"] for d in hook.delivered()} >= {c.change_id for c in changes}
                ),
                90,
                "every change after the restart",
            )
        finally:
            assert _stop(second) == 0
        delivered = [d["change_id"] for d in hook.delivered()]
        duplicates = len(delivered) - len(set(delivered))
        # At least once: at most the change in flight at the kill is delivered twice, and
        # the receiver tells it by its Idempotency-Key.
        assert duplicates <= 1, duplicates
    finally:
        hook.close()
