"""Faults to inject, for the soak (``segmenter soak``) and the fault tests: a broker of one's own
reached through a TCP proxy whose connections can be cut, and a redis-server of one's own that
can be restarted with its append-only file.

Every server listens on 127.0.0.1 only; each is a child process stopped by its own handle.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import redis

from stream.tools.embedded import free_port, redis_server_binary, tansu_binary
from stream.tools.process import spawn

__all__ = [
    "CuttableProxy",
    "OwnRedis",
    "WaitTimeout",
    "kafka_client_id",
    "listening",
    "own_broker",
    "wait_until",
]


class WaitTimeout(AssertionError):
    """A condition did not hold within its deadline (an assertion: a test fails on it)."""


def wait_until(
    predicate: Callable[[], object], timeout: float, what: str, every: float = 0.2
) -> object:
    """Poll until ``predicate()`` is truthy and return it; ``WaitTimeout`` naming ``what``
    after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise WaitTimeout(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


def listening(port: int) -> bool:
    """Something accepts connections on 127.0.0.1:``port``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def own_broker(port: int, advertised_port: int, log_path: Path) -> subprocess.Popen[bytes]:
    """A Tansu broker of one's own on ``port`` that advertises ``advertised_port`` (a proxy's,
    when one stands in front of it), logging to ``log_path``."""
    return spawn(
        [tansu_binary(), "broker", "--listener-url", f"tcp://127.0.0.1:{port}"]
        + ["--advertised-listener-url", f"tcp://127.0.0.1:{advertised_port}"]
        + ["--storage-engine", "memory://tansu/"],
        log_path,
    )


def kafka_client_id(head: bytes) -> str | None:
    """The client id in the header of the first Kafka request of ``head`` (size, api key,
    api version, correlation id, then the client id as an int16-length string in every request
    header version); None if ``head`` is too short to hold it.

    >>> kafka_client_id(struct.pack(">ihhih", 20, 18, 3, 1, 4) + b"soak" + b"rest")
    'soak'
    >>> kafka_client_id(b"\\x00\\x00") is None
    True
    """
    if len(head) < 14:
        return None
    (length,) = struct.unpack_from(">h", head, 12)
    if length < 0:
        return ""
    if len(head) < 14 + length:
        return None
    return head[14 : 14 + length].decode("utf-8", "replace")


class CuttableProxy:
    """A TCP proxy in front of a broker, whose connections can be cut and restored.

    ``spare``: Kafka client ids whose connections a cut leaves alone (the soak's own producer,
    so that traffic goes on while the workers are cut off); their first request is read to
    tell. While cut, every other connection is dropped and new ones are closed at once.
    """

    def __init__(self, upstream_port: int, spare: tuple[str, ...] = ()) -> None:
        self.port = free_port()
        self.upstream = upstream_port
        self.spare = spare
        self.conns: list[tuple[socket.socket, bool]] = []  # (socket, spared)
        self.lock = threading.Lock()
        self.listener: socket.socket | None = None
        self.is_cut = False

    def start(self) -> None:
        """Listen (again, after a ``cut``): the same as ``restore``."""
        self.restore()

    def restore(self) -> None:
        """Let connections in again."""
        self.is_cut = False
        if self.listener is not None:
            return
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._open, args=(client,), daemon=True).start()

    def _open(self, client: socket.socket) -> None:
        spared = bool(self.spare) and self._client_id(client) in self.spare
        if self.is_cut and not spared:
            client.close()
            return
        try:
            upstream = socket.create_connection(("127.0.0.1", self.upstream))
        except OSError:
            client.close()
            return
        with self.lock:
            self.conns += [(client, spared), (upstream, spared)]
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _client_id(client: socket.socket) -> str | None:
        """Peek at the client's first request (a Kafka client speaks first) for its id."""
        client.settimeout(5.0)
        try:
            for _ in range(50):
                head = client.recv(512, socket.MSG_PEEK)
                found = kafka_client_id(head)
                if found is not None or not head:
                    return found
                time.sleep(0.01)
        except OSError:
            return None
        finally:
            with contextlib.suppress(OSError):
                client.settimeout(None)
        return None

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        """Drop every connection (but the spared ones) and refuse new ones: the network is gone.
        Without ``spare`` the listener closes too (connections are refused outright)."""
        self.is_cut = True
        if not self.spare and self.listener is not None:
            self.listener.close()
            self.listener = None
        with self.lock:
            dropped = [s for s, spared in self.conns if not spared]
            self.conns = [(s, spared) for s, spared in self.conns if spared]
        for s in dropped:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def close(self) -> None:
        """Stop listening and drop every connection, spared or not."""
        self.spare = ()
        self.cut()
        with self.lock:
            rest, self.conns = self.conns, []
        for s, _ in rest:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()


class OwnRedis:
    """A redis-server of one's own on a free port (a restart or a FLUSHALL there touches nothing
    else). ``appendonly``: with an append-only file, so a clean restart keeps the data."""

    def __init__(self, workdir: Path, appendonly: bool = False) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.appendonly = appendonly
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 20.0) -> None:
        args = [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--dir", str(self.workdir), "--save", ""]
        args += ["--appendonly", "yes" if self.appendonly else "no"]
        self.proc = spawn(args, self.workdir / "redis.log", append=True)
        # Answering PING, not just listening: a restart with an append-only file refuses
        # commands while it loads the dataset.
        wait_until(self._answers, timeout, "redis-server to answer")

    def _answers(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with {self.proc.returncode} while starting")
        try:
            with redis.Redis.from_url(self.url, socket_timeout=1) as r:
                return bool(r.ping())
        except redis.RedisError:
            return False

    def flushall(self) -> None:
        with redis.Redis.from_url(self.url) as r:
            r.flushall()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # a clean shutdown: the append-only file is complete
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
