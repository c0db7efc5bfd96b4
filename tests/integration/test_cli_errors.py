"""What a user sees when Kafka or Redis is not there: one clear line and exit code 2."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from stream.tools.embedded import free_port

pytestmark = pytest.mark.integration


def _run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SEGMENTER_")}
    return subprocess.run(
        [sys.executable, "-m", "stream", *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_worker_without_kafka_fails_with_the_address():
    port = free_port()
    done = _run(
        "worker", SEGMENTER_KAFKA_URL=f"kafka://127.0.0.1:{port}", SEGMENTER_CONNECT_TIMEOUT="2"
    )
    assert done.returncode == 2
    assert f"Kafka at kafka://127.0.0.1:{port} is not reachable" in done.stderr
    assert "Traceback" not in done.stderr


def test_worker_without_redis_fails_fast_with_the_address_and_no_password(stack):
    port = free_port()
    done = _run(
        "worker",
        SEGMENTER_KAFKA_URL=stack.kafka_url,
        SEGMENTER_REDIS_URL=f"redis://:s3cret@127.0.0.1:{port}/0",
    )
    assert done.returncode == 2
    assert f"Redis at redis://***@127.0.0.1:{port}/0 is not reachable" in done.stderr
    assert "s3cret" not in done.stderr and "Traceback" not in done.stderr


def test_get_without_redis_fails_fast():
    done = _run("get", "c-1", SEGMENTER_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    assert done.returncode == 2 and "not reachable" not in done.stdout
    assert "Redis at redis://127.0.0.1:" in done.stderr


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"SEGMENTER_PARTITIONS": "0"}, "partitions"),
        ({"SEGMENTER_HYSTERESIS": "1.5"}, "hysteresis"),
        ({"SEGMENTER_LIFECYCLE_AT_RISK_DAYS": "400"}, "lifecycle_at_risk_days"),
        ({"SEGMENTER_METRICS_PORT": "not-a-port"}, "metrics_port"),
        ({"SEGMENTER_LOG_LEVEL": "verbose"}, "log_level"),
    ],
)
def test_invalid_settings_fail_at_start_up_naming_the_field(env, named):
    done = _run("worker", **env)
    assert done.returncode == 2
    assert "invalid configuration" in done.stderr and named in done.stderr
    assert "Traceback" not in done.stderr


def test_an_invalid_segment_file_fails_at_start_up_naming_the_entry_and_line(stack, tmp_path):
    bad = tmp_path / "segments.yaml"
    bad.write_text(
        "segments:\n"
        "  big_spender:\n"
        "    kind: value\n"
        "    description: spends a lot\n"
        "    when: {customer_value_estimate: {gte: 1500}}\n"
        "  broken:\n"
        "    kind: value\n"
        "    description: no rule here\n"
    )
    done = _run(
        "worker",
        SEGMENTER_KAFKA_URL=stack.kafka_url,
        SEGMENTER_REDIS_URL=stack.redis_url,
        SEGMENTER_SEGMENTS_FILE=str(bad),
    )
    assert done.returncode == 2
    assert "broken" in done.stderr and "line" in done.stderr
    assert "Traceback" not in done.stderr
