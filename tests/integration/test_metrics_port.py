"""Several workers on one host with the same SEGMENTER_METRICS_PORT (issue 14): the second one
used to die at start-up with ``OSError: [Errno 98] Address already in use``; now it serves
``/metrics`` on a free port and says which in its log and its heartbeat."""

from __future__ import annotations

import urllib.request

import pytest

from stream.tools.embedded import free_port

from .conftest import Workers, make_settings, run_cli, wait_until

pytestmark = pytest.mark.integration


def _metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        return str(answer.read().decode())


def test_two_workers_on_one_host_with_one_metrics_port_both_serve_metrics(stack, tmp_path):
    port = free_port()
    settings = make_settings(stack, partitions=2, metrics_port=port)
    workers = Workers(settings, tmp_path)
    try:
        workers.start(2)
        workers.wait_joined(2)
        ports = {b["worker_id"]: b["metrics_port"] for b in workers.client.workers()}
        assert sorted(ports) == ["w0", "w1"] and port in ports.values(), ports
        assert len(set(ports.values())) == 2, ports
        for worker_id, served in ports.items():
            assert "segmenter_events_total" in _metrics(served), worker_id
        moved = next(w for w, p in ports.items() if p != port)
        assert f"metrics on a free port, {ports[moved]}" in workers.log(moved, 400)
    finally:
        workers.stop()


def test_metrics_on_an_address_that_cannot_be_bound_is_one_line_and_exit_code_2(stack):
    settings = make_settings(stack, metrics_host="192.0.2.1", metrics_port=free_port())
    done = run_cli(settings, "worker", timeout=90)
    assert done.returncode == 2, done.stderr[-3000:]
    (line,) = done.stderr.strip().splitlines()
    assert "SEGMENTER_METRICS_PORT" in line and "192.0.2.1" in line, line


def test_a_worker_without_metrics_reports_no_port(stack, tmp_path):
    settings = make_settings(stack, partitions=1)  # metrics_port 0: off
    workers = Workers(settings, tmp_path)
    try:
        workers.start(1)
        workers.wait_joined(1)
        wait_until(lambda: workers.client.workers(), 10, "a heartbeat")
        assert workers.client.workers()[0]["metrics_port"] is None
    finally:
        workers.stop()
