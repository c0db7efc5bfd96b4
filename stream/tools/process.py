"""Child processes of the tools (demo, bench) and the integration tests: start, stop.

Every child runs in a process group of its own, so a Ctrl-C at the terminal reaches only the
parent, which then stops each child it started, by its own handle, cleanly first.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from stream.settings import Settings

__all__ = ["spawn", "start_worker", "stop_process"]


def spawn(
    args: Sequence[str],
    log_path: Path,
    env: Mapping[str, str] | None = None,
    append: bool = False,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``args`` in a new session (and process group), output and errors to
    ``log_path`` (appended to with ``append``), no standard input."""
    out = open(log_path, "ab" if append else "wb")  # noqa: SIM115 - handed to the child
    try:
        return subprocess.Popen(
            list(args),
            env=None if env is None else dict(env),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            start_new_session=True,
        )
    finally:
        out.close()


def start_worker(settings: Settings, log_path: Path, worker_id: str) -> subprocess.Popen[bytes]:
    """A worker (``python -m stream worker``) configured by ``settings``, logging to
    ``log_path``."""
    env = {**os.environ, **settings.env(), "SEGMENTER_WORKER_ID": worker_id}
    return spawn([sys.executable, "-m", "stream", "worker"], log_path, env)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """Stop a child cleanly (SIGTERM, so a worker leaves its consumer group), then by force."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
