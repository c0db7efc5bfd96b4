"""deploy/ stays true to the code: every setting it names exists, every metric it queries is
one the worker exports, and the workers run as a non-root user."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from stream.settings import Settings
from stream.worker.metrics import WorkerMetrics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def _documents() -> list[dict]:  # type: ignore[type-arg]
    docs = []
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def _exported_metrics() -> set[str]:
    names = set()
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
    for metric in WorkerMetrics().registry.collect():
        names.update(metric.name + s for s in suffixes.get(metric.type, [""]))
    return names


def test_every_setting_named_in_the_manifests_exists():
    fields = {f"SEGMENTER_{name.upper()}" for name in Settings.model_fields}
    named = set()
    for doc in _documents():
        if doc["kind"] in ("ConfigMap", "Secret") and doc["metadata"]["name"].startswith("segm"):
            named |= set((doc.get("data") or {}) | (doc.get("stringData") or {}))
        named |= set(re.findall(r"SEGMENTER_[A-Z_]+", json.dumps(doc)))
    named.discard("SEGMENTER_")
    assert named, "no settings found in deploy/k8s"
    assert named <= fields, sorted(named - fields)
    # And the ConfigMap's values are valid settings.
    config = next(d for d in _documents() if d["kind"] == "ConfigMap")["data"]
    Settings(**{k.removeprefix("SEGMENTER_").lower(): v for k, v in config.items()})


def test_workers_run_as_non_root_and_within_the_partition_count():
    docs = _documents()
    worker = next(
        d for d in docs if d["kind"] == "StatefulSet" and "worker" in d["metadata"]["name"]
    )
    # Its RocksDB state on a volume of each pod's own, where SEGMENTER_DATA_DIR points.
    claims = {c["metadata"]["name"] for c in worker["spec"]["volumeClaimTemplates"]}
    mounts = {
        m["name"]: m["mountPath"]
        for m in worker["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    }
    assert (
        mounts[next(iter(claims))]
        == next(d for d in docs if d["kind"] == "ConfigMap")["data"]["SEGMENTER_DATA_DIR"]
    )
    pod = worker["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"]
    config = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
    assert worker["spec"]["replicas"] <= int(config["SEGMENTER_PARTITIONS"])
    assert "USER segmenter" in (DEPLOY / "Dockerfile").read_text()


def test_grafana_and_prometheus_query_only_exported_metrics():
    exported = _exported_metrics()
    dashboard = json.loads((DEPLOY / "grafana" / "segmenter-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    exprs += [r["expr"] for g in rules["groups"] for r in g["rules"]]
    used = {m for e in exprs for m in re.findall(r"\bsegmenter_[a-z_]+", e)}
    assert used and used <= exported, sorted(used - exported)
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert {c["job_name"] for c in scrape["scrape_configs"]} >= {"segmenter-worker"}


def test_the_redis_cluster_option_replaces_the_single_redis():
    """deploy/k8s-redis-cluster: the base without its single Redis, six cluster nodes, and the
    workers' URL a cluster URL the code accepts (a sibling of the base: kustomize refuses an
    overlay inside its base)."""
    from stream.store.connect import is_cluster, parse_redis_url

    overlay = DEPLOY / "k8s-redis-cluster"
    kustomization = yaml.safe_load((overlay / "kustomization.yaml").read_text())
    assert kustomization["resources"] == ["../k8s", "redis-cluster.yaml"]
    patches = [yaml.safe_load(p["patch"]) for p in kustomization["patches"]]
    deleted = {(p["kind"], p["metadata"]["name"]) for p in patches if p.get("$patch") == "delete"}
    assert deleted == {("StatefulSet", "redis"), ("Service", "redis")}
    secret = next(p for p in patches if p["kind"] == "Secret")
    url = secret["stringData"]["SEGMENTER_REDIS_URL"]
    assert is_cluster(url) and parse_redis_url(url)
    docs = [d for d in yaml.safe_load_all((overlay / "redis-cluster.yaml").read_text()) if d]
    nodes = next(d for d in docs if d["kind"] == "StatefulSet")
    assert nodes["spec"]["replicas"] == 6
    start = nodes["spec"]["template"]["spec"]["containers"][0]["args"][0]
    assert "--cluster-enabled yes" in start and "--appendonly yes" in start
    create = next(d for d in docs if d["kind"] == "Job")
    assert "--cluster-replicas 1" in create["spec"]["template"]["spec"]["containers"][0]["args"][0]


def test_the_manifests_build_with_kustomize():
    """``kubectl kustomize`` builds the base and the Redis Cluster overlay (skipped where kubectl
    is not installed): the single Redis is gone from the overlay, the cluster is there."""
    import shutil
    import subprocess

    import pytest

    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    built = {}
    for name in ("k8s", "k8s-redis-cluster"):
        out = subprocess.run(
            [kubectl, "kustomize", str(DEPLOY / name)], capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0, out.stderr
        built[name] = {(d["kind"], d["metadata"]["name"]) for d in yaml.safe_load_all(out.stdout)}
    assert ("StatefulSet", "redis") in built["k8s"]
    assert ("StatefulSet", "redis") not in built["k8s-redis-cluster"]
    assert ("StatefulSet", "redis-cluster") in built["k8s-redis-cluster"]
    assert ("StatefulSet", "segmenter-worker") in built["k8s-redis-cluster"]
