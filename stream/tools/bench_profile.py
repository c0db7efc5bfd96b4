"""The bench's profile of a worker: py-spy's samples, by stage of the worker and by function.

A stage is named by the code that runs it, as objects (functions, classes, modules, packages)
rather than as strings: their file and qualified name are read off the objects the way py-spy
prints a frame (``CustomerProfile.apply (models/features.py:180)``), so renaming or moving a
function moves its stage with it, and a stage that names something gone fails at import (and in
``tests/unit/test_bench_helpers.py``) instead of silently misfiling samples.
"""

from __future__ import annotations

import asyncio
import inspect
import selectors
import signal
import socket
import subprocess
import sys
import types
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import aiokafka
import aiokafka.producer
import faust
import faust.transport.drivers.aiokafka
import faust.transport.producer
import kafka
import mode
import redis

import models.clustering
import models.drift
import models.events
import models.facts
import models.features
import models.segments
import models.step
import stream.store
import stream.worker
import stream.worker.app
import stream.worker.decoding
import stream.worker.effects
import stream.worker.faust_adapt

__all__ = [
    "LIBRARIES",
    "STAGES",
    "Mark",
    "finish_profile",
    "py_spy",
    "short_filename",
    "start_profile",
    "summarize_profile",
    "summarize_stages",
]


@cache
def short_filename(path: str) -> str:
    """A source file as py-spy names it: relative to the nearest directory above it that is
    not a package (has no ``__init__.py``), e.g. ``stream/worker/app.py``, ``selectors.py``.

    >>> short_filename(stream.worker.app.__file__)
    'stream/worker/app.py'
    """
    file = Path(path)
    root = file.parent
    while (root / "__init__.py").exists():
        root = root.parent
    return file.relative_to(root).as_posix()


#: The file of a mark of compiled code: no frame is in it.
COMPILED = "<compiled>"


@dataclass(frozen=True)
class Mark:
    """Frames of one piece of code: a function (its qualified name in its file), a class (any
    of its methods), a module (its file) or a package (any file under it)."""

    file: str  # py-spy's short file name; a package's ends with "/"
    qualname: str = ""  # a function's __qualname__, or a class's followed by "."

    @classmethod
    def of(cls, obj: Any) -> Mark:
        """The mark of a module, class or function; of compiled code (the compiled core), a
        mark that matches no frame: py-spy shows no frames of it, its time counts for its
        caller's."""
        obj = inspect.unwrap(getattr(obj, "__func__", obj))
        try:
            source = inspect.getsourcefile(obj)
        except TypeError:  # a compiled function
            source = None
        if source is None or not source.endswith(".py"):
            return cls(COMPILED)
        if isinstance(obj, types.ModuleType):
            if hasattr(obj, "__path__"):  # a package: every file under its directory
                return cls(short_filename(source).rpartition("/")[0] + "/")
            return cls(short_filename(source))
        suffix = "." if inspect.isclass(obj) else ""
        return cls(short_filename(source), obj.__qualname__ + suffix)

    def matches(self, name: str, file: str) -> bool:
        """Whether py-spy's frame ``name (file:line)`` is in this code."""
        if self.file == COMPILED:
            return False
        if self.file.endswith("/"):
            return file.startswith(self.file)
        if file != self.file:
            return False
        if not self.qualname:
            return True
        if self.qualname.endswith("."):
            return name.startswith(self.qualname)
        return name == self.qualname or name.startswith(self.qualname + ".<locals>.")

    def frame(self, line: int = 1) -> str:
        """A frame py-spy would print for this code (for tests)."""
        name = self.qualname + "method" if self.qualname.endswith(".") else self.qualname
        file = self.file + "module.py" if self.file.endswith("/") else self.file
        return f"{name or '<module>'} ({file}:{line})"


def _marks(*objects: Any) -> tuple[Mark, ...]:
    return tuple(Mark.of(obj) for obj in objects)


#: The worker's stages, by the code that runs them: a py-spy sample counts for the first stage
#: that claims a frame, walking its stack from the innermost frame out. The worker itself is
#: named by its package (stream/worker/), not by its functions, so that it can change shape
#: without moving samples: its own code is "our batching and the rest of the agent", what it
#: calls is in the stage of the callee.
STAGES: tuple[tuple[str, tuple[Mark, ...]], ...] = (
    ("decoding events", _marks(models.events.decode_message, stream.worker.decoding)),
    ("feature updates", _marks(models.features.CustomerProfile.apply)),
    (
        "scoring: clusters, personas, rules, facts",
        _marks(models.segments.assign, models.segments.changes_between, models.segments.remember),
    ),
    (
        "building and compressing the record",
        _marks(models.segments.SegmentAssignment.record, stream.store.encode_record),
    ),
    (
        "profile state to and from JSON",
        _marks(
            models.features.CustomerProfile.from_state,
            models.features.CustomerProfile.to_state,
            stream.worker.effects.encode_profile,
        ),
    ),
    ("Redis writes (client side)", _marks(stream.store.RedisSegmentStore)),
    (
        "changelog, changes and samples to Kafka",
        _marks(
            faust.transport.drivers.aiokafka.Producer,
            faust.transport.producer,
            aiokafka.producer,
        ),
    ),
    (
        "model training and drift (the trainer)",
        _marks(
            models.clustering.ClusterTrainer,
            models.drift.DriftMonitor,
            models.facts.PopulationQuantiles,
        ),
    ),
    (
        "changelog to the table (CustomerTable.write: records, RocksDB)",
        _marks(stream.worker.faust_adapt.CustomerTable.write),
    ),
    (
        "the step's own work: due times, changes, samples, live profiles (models.step)",
        _marks(models.step),
    ),
    ("our batching and the rest of the agent", _marks(stream.worker)),
)
#: Where a sample with none of our stages on its stack is, by its innermost frame's file.
LIBRARIES: tuple[tuple[str, tuple[Mark, ...]], ...] = (
    ("Faust and mode: streams, consumer, tables", _marks(faust, mode)),
    ("aiokafka and kafka-python: fetch, unpack, send", _marks(aiokafka, kafka)),
    ("asyncio event loop and sockets", _marks(asyncio, selectors, socket)),
    ("redis-py", _marks(redis)),
)
OTHER = "other (Python runtime, threads, logging, metrics)"


def _parse(frame: str) -> tuple[str, str]:
    """py-spy's ``name (file:line)``: the name and the file."""
    name, paren, rest = frame.rpartition(" (")
    if not paren:
        return frame, ""
    return name, rest.rstrip(")").rpartition(":")[0]


def _stacks(raw: str) -> Iterator[tuple[list[str], int]]:
    """py-spy's raw (collapsed) output: each stack, outermost frame first, and its samples."""
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            yield stack.split(";"), int(count)


def _shares(counts: Counter[str], top: int | None = None) -> list[tuple[str, float]]:
    total = sum(counts.values())
    return [(name, n / total) for name, n in counts.most_common(top)] if total else []


def _claim(table: tuple[tuple[str, tuple[Mark, ...]], ...], frame: str) -> str | None:
    name, file = _parse(frame)
    for stage, marks in table:
        if any(mark.matches(name, file) for mark in marks):
            return stage
    return None


def stage_of(frames: list[str]) -> str:
    """The stage of one sample (its frames, outermost first)."""
    for frame in reversed(frames):
        stage = _claim(STAGES, frame)
        if stage is not None:
            return stage
    return _claim(LIBRARIES, frames[-1]) or OTHER


def summarize_stages(raw: str) -> list[tuple[str, float]]:
    """Share of py-spy samples per stage of the worker (``STAGES``), else per library."""
    counts: Counter[str] = Counter()
    for frames, n in _stacks(raw):
        counts[stage_of(frames)] += n
    return _shares(counts)


def summarize_profile(raw: str, top: int = 15) -> list[tuple[str, float]]:
    """Self-time share per function from py-spy's raw (collapsed) stacks, largest first."""
    own: Counter[str] = Counter()
    for frames, n in _stacks(raw):
        own[frames[-1]] += n
    return _shares(own, top)


def py_spy() -> str:
    """py-spy beside this Python (the project's venv), else from PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else "py-spy"


def start_profile(pid: int, out: Path) -> subprocess.Popen[bytes] | None:
    """Start py-spy recording process ``pid`` into ``out`` (raw format); None without py-spy."""
    try:
        return subprocess.Popen(
            [
                py_spy(),
                "record",
                "--pid",
                str(pid),
                "--format",
                "raw",
                "--rate",
                "200",
                "--output",
                str(out),
                "--nonblocking",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    except OSError:
        return None


def finish_profile(profiler: subprocess.Popen[bytes], out: Path) -> str | None:
    """Stop py-spy (it writes its output on SIGINT); the raw profile, or None if it took none."""
    profiler.send_signal(signal.SIGINT)
    try:
        profiler.wait(timeout=30)
    except subprocess.TimeoutExpired:
        profiler.kill()
        profiler.wait()
    if not out.exists():
        return None
    raw = out.read_text(errors="replace")
    out.unlink()
    return raw
