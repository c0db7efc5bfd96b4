"""`segmenter forget` exits 0 only once a worker confirmed the erasure (its tombstone on
segment-changes), and 1 when none did in time (issue 14: `forget UNKNOWN-ID` exited 0 at once,
though no worker had seen the request)."""

from __future__ import annotations

import time

import pytest

from stream.kafka import read_topic

from .conftest import Workers, make_settings, run_cli, wait_until

pytestmark = pytest.mark.integration


def _tombstones(settings, customer_id: str) -> int:  # type: ignore[no-untyped-def]
    changes = read_topic(settings, settings.topic(settings.changes_topic), timeout=2.0)
    return sum(1 for k, v in changes if k == customer_id.encode() and v is None)


def test_forgetting_an_unknown_customer_waits_for_a_workers_confirmation(stack, tmp_path):
    settings = make_settings(stack, partitions=2)
    workers = Workers(settings, tmp_path)
    try:
        workers.start(1)
        workers.wait_joined(1)
        done = run_cli(settings, "forget", "nobody-at-all", "--wait", "60")
        assert done.returncode == 0, done.stderr
        assert "forgotten: nobody-at-all (confirmed by a worker)" in done.stderr
        # It returned after the worker's erasure, not before: the worker counted it.
        assert workers.client.stats().get("forgotten", 0) == 1
        assert _tombstones(settings, "nobody-at-all") == 1
    finally:
        workers.stop()


def test_forget_with_no_worker_running_exits_1_after_the_wait_and_the_request_stays(
    stack, tmp_path
):
    settings = make_settings(stack, partitions=2)
    started = time.monotonic()
    done = run_cli(settings, "forget", "c-queued", "--wait", "2", timeout=90)
    assert done.returncode == 1, done.stderr
    assert time.monotonic() - started >= 2
    assert "no worker confirmed it within 2s" in done.stderr, done.stderr
    assert _tombstones(settings, "c-queued") == 0
    # The request waits in its topic: the first worker to start applies it.
    workers = Workers(settings, tmp_path)
    try:
        workers.start(1)
        wait_until(lambda: _tombstones(settings, "c-queued") == 1, 90, "the queued erasure")
    finally:
        workers.stop()
