"""Child processes of the tools (demo, bench) and the integration tests: start, stop.

Every child runs in a process group of its own, so a Ctrl-C at the terminal reaches only the
parent, which then stops each child it started, by its own handle, cleanly first.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from stream.settings import Settings

__all__ = [
    "interrupt_on_signals",
    "restore_signals",
    "signals_as_interrupt",
    "spawn",
    "start_worker",
    "stop_process",
]


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


#: The signals a long tool turns into ``KeyboardInterrupt`` (``interrupt_on_signals``).
SIGNALS = (signal.SIGINT, signal.SIGTERM)


def interrupt_on_signals(once: bool = False) -> dict[int, Any]:
    """Turn SIGINT and SIGTERM into ``KeyboardInterrupt``, even where the parent ignored
    SIGINT (a background job, ``trap '' INT``), so that every way out of a long tool runs its
    clean-up and stops each child it started; returns the handlers before, for
    ``restore_signals``. ``once``: the first signal only, the next ones ignored (until
    restored), so that a second Ctrl-C, or a SIGTERM after a SIGINT, cannot cut that clean-up
    short. The main thread only."""

    def interrupt(_signum: int, _frame: FrameType | None) -> None:
        if once:
            for signum in SIGNALS:
                signal.signal(signum, signal.SIG_IGN)
        raise KeyboardInterrupt

    return {signum: signal.signal(signum, interrupt) for signum in SIGNALS}


def restore_signals(previous: dict[int, Any]) -> None:
    """Put back the handlers ``interrupt_on_signals`` replaced (None, a handler installed
    from C that Python cannot put back: the default)."""
    for signum, handler in previous.items():
        signal.signal(signum, signal.SIG_DFL if handler is None else handler)


@contextlib.contextmanager
def signals_as_interrupt() -> Iterator[None]:
    """``interrupt_on_signals(once=True)`` for the block (the soak, the bench); outside the
    main thread, the handlers stay as they are."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = interrupt_on_signals(once=True)
    try:
        yield
    finally:
        restore_signals(previous)
