"""The bench's peer: a Quix Streams app doing the minimal job (``bench_peer_quix.py``) on the
throughput phase's topic, in a virtualenv of its own.

Quix Streams pins confluent-kafka and pydantic versions of its own, so it never goes into the
project's virtualenv: ``peer_python`` makes ``.venv-peer/quix3`` at the repository root on first
use (``python -m venv``, then ``pip install "quixstreams==3.*" redis``) and reuses it after.
If it cannot be made (no network, pip fails), or the peer does not finish, the report shows the
peer as not measured, with the reason, and the bench goes on.
"""

from __future__ import annotations

import fcntl
import math
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import orjson

from stream.settings import Settings
from stream.tools.bench_context import BenchContext
from stream.tools.process import spawn

__all__ = [
    "PEER",
    "PEER_REQUIREMENTS",
    "Peer",
    "PeerRun",
    "measure_peer",
    "peer_python",
    "peer_venv_dir",
    "run_peer",
]

PEER = "Quix Streams peer (state + RedisSink)"
PEER_REQUIREMENTS = ("quixstreams==3.*", "redis")
SCRIPT = Path(__file__).with_name("bench_peer_quix.py")
#: How long the peer may take to reach its target once started (join included).
PEER_TIMEOUT = 900.0
PIP_TIMEOUT = 900.0


@dataclass(frozen=True)
class Peer:
    """The peer's interpreter, or why there is none."""

    python: Path | None
    reason: str = ""


_made: dict[Path, Peer] = {}  # one attempt per bench process and cache dir


def peer_venv_dir() -> Path:
    """``SEGMENTER_BENCH_PEER_VENV``, else ``.venv-peer/quix3`` at the repository root."""
    chosen = os.environ.get("SEGMENTER_BENCH_PEER_VENV")
    if chosen:
        return Path(chosen)
    return Path(__file__).resolve().parents[2] / ".venv-peer" / "quix3"


def peer_python(say: Callable[[str], None], venv: Path | None = None) -> Peer:
    """The peer virtualenv's python, made on first use (a lock keeps two benches from making
    it at once); the outcome is kept for the rest of the process."""
    venv = venv or peer_venv_dir()
    if venv not in _made:
        venv.parent.mkdir(parents=True, exist_ok=True)
        with open(venv.parent / f"{venv.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            _made[venv] = _make_venv(venv, say)
    return _made[venv]


def _make_venv(venv: Path, say: Callable[[str], None]) -> Peer:
    python = venv / "bin" / "python"
    if python.exists() and _imports(python):
        return Peer(python)
    log = venv.parent / f"{venv.name}-pip.log"
    started = time.monotonic()
    say(f"  making the Quix peer's virtualenv {venv} (pip install {' '.join(PEER_REQUIREMENTS)})")
    shutil.rmtree(venv, ignore_errors=True)
    steps = {
        "python -m venv": [sys.executable, "-m", "venv", str(venv)],
        "pip install": [
            str(python),
            *("-m", "pip", "install", "--disable-pip-version-check", *PEER_REQUIREMENTS),
        ],
    }
    with open(log, "w") as out:
        for name, step in steps.items():
            try:
                done = subprocess.run(
                    step, stdout=out, stderr=subprocess.STDOUT, timeout=PIP_TIMEOUT, check=False
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                shutil.rmtree(venv, ignore_errors=True)
                return Peer(
                    None, f"its virtualenv could not be made: `{name}`: {type(exc).__name__}"
                )
            if done.returncode != 0:
                shutil.rmtree(venv, ignore_errors=True)
                return Peer(
                    None,
                    f"its virtualenv could not be made: `{name}` exited with "
                    f"{done.returncode} (see {log})",
                )
    if not _imports(python):
        shutil.rmtree(venv, ignore_errors=True)
        return Peer(None, f"quixstreams does not import in its new virtualenv (see {log})")
    say(f"  made in {time.monotonic() - started:.0f} s")
    return Peer(python)


def _imports(python: Path) -> bool:
    try:
        done = subprocess.run(
            [str(python), "-I", "-c", "import quixstreams, redis"],
            capture_output=True,
            timeout=120,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


@dataclass(frozen=True)
class PeerRun:
    """The peer's events per second on one topic (NaN when not measured, with the reason)."""

    rate: float
    reason: str = ""
    version: str = ""

    @property
    def measured(self) -> bool:
        return not math.isnan(self.rate)


def run_peer(
    ctx: BenchContext, peer: Peer, settings: Settings, topics: list[str], events: int, tag: str
) -> PeerRun:
    """The peer on ``topics``, read from the beginning in a consumer group of its own, timed from
    its first message to the Redis write of its ``events``-th event's result."""
    if peer.python is None:
        return PeerRun(math.nan, peer.reason)
    run = uuid.uuid4().hex[:6]
    result = ctx.workdir / f"peer-{tag}-{run}.json"
    log = ctx.workdir / f"peer-{tag}.log"
    where = f"see {log.name} among the bench's logs, kept with SEGMENTER_KEEP_LOGS=1"
    args = [
        str(peer.python),
        "-I",
        str(SCRIPT),
        "--bootstrap",
        ",".join(settings.bootstrap_servers),
    ]
    for topic in topics:
        args += ["--topic", topic]
    args += ["--redis-url", settings.redis_url.get_secret_value()]
    args += ["--prefix", f"{settings.redis_prefix}quix:", "--group", f"{settings.app_id}-quix"]
    args += ["--events", str(events), "--result", str(result)]
    args += ["--state-dir", str(ctx.workdir / f"peer-{tag}-{run}-state")]
    proc = spawn(args, log, append=True)
    ctx.adopt(proc)
    try:
        code = proc.wait(timeout=PEER_TIMEOUT)
    except subprocess.TimeoutExpired:
        return PeerRun(
            math.nan, f"it did not reach {events:,} events in {PEER_TIMEOUT:.0f} s; {where}"
        )
    finally:
        ctx.stop([proc])
    if code != 0 or not result.exists():
        return PeerRun(math.nan, f"it exited with {code} before {events:,} events; {where}")
    data = orjson.loads(result.read_bytes())
    span = float(data["last"]) - float(data["first"])
    return PeerRun(float(data["events"]) / max(span, 1e-6), version=str(data.get("version", "")))


def measure_peer(
    ctx: BenchContext, settings: Settings, topics: list[str], events: int, tag: str
) -> PeerRun:
    """The peer's run (its virtualenv made first if need be); whatever goes wrong is the
    reason it was not measured, never the phase's failure."""
    try:
        return run_peer(ctx, peer_python(ctx.say), settings, topics, events, tag)
    except Exception as exc:  # noqa: BLE001 - a peer not measured is reported, the bench goes on
        return PeerRun(math.nan, f"it could not be run ({type(exc).__name__}: {exc})")
