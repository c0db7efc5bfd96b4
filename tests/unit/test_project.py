"""Structure checks: the pure core stays pure, and the compose file matches the settings."""

import ast
import sys
from pathlib import Path

import pytest
import yaml

from stream.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
ALLOWED_IN_CORE = {"river", "numpy", "models", "__future__"}


def test_models_imports_only_river_numpy_and_the_standard_library():
    offenders = []
    for path in (ROOT / "models").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top not in ALLOWED_IN_CORE and top not in sys.stdlib_module_names:
                    offenders.append(f"{path.name}: {name}")
    assert offenders == []


def test_compose_runs_kafka_kraft_redis_two_workers_and_the_generator():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"kafka", "redis", "worker-1", "worker-2", "generator"} <= set(services)
    assert services["kafka"]["image"].startswith("apache/kafka")
    assert (
        "controller" in services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]
    )  # KRaft, no ZooKeeper
    assert services["redis"]["image"].startswith("redis")
    for name in ("worker-1", "worker-2"):
        assert services[name]["command"] == ["segmenter", "worker"]
    assert services["generator"]["command"][:2] == ["segmenter", "produce"]
    known = {f"SEGMENTER_{f.upper()}" for f in Settings.model_fields}
    for name in ("worker-1", "worker-2", "generator"):
        env = services[name]["environment"]
        used = {k for k in env if k.startswith("SEGMENTER_")}
        assert used and used <= known, used - known
        assert env["SEGMENTER_KAFKA_URL"] == "kafka://kafka:9092"


def test_container_image_runs_as_non_root():
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    assert "\nUSER " in dockerfile and "USER root" not in dockerfile


def test_the_shell_runs_numpys_blas_on_one_thread():
    # In a fresh process, as the worker and the CLI start: numpy loaded after the shell.
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    code = (
        "import stream, models.clustering\n"
        "from threadpoolctl import threadpool_info\n"
        "print(sorted({pool['num_threads'] for pool in threadpool_info()}))"
    )
    control = code.replace("import stream, models.clustering", "import models.clustering")
    threads = [
        subprocess.run(
            [sys.executable, "-c", c], env=env, capture_output=True, text=True, check=True
        ).stdout.strip()
        for c in (control, code)
    ]
    if threads[0] in ("[]", "[1]"):  # no BLAS threadpoolctl knows, or one thread anyway
        pytest.skip(f"numpy's BLAS runs {threads[0]} threads here without the setting")
    assert threads[1] == "[1]"
