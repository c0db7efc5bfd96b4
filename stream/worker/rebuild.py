"""Redis is a cache of the workers' state: notice when it lost data, and write it back.

Redis can lose data: an operator's FLUSHALL, a restart without persistence, a failover to a
replica that lagged. The profiles are safe in the table's changelog, so every record and
counter can be rewritten from them; this module finds out when that is needed and does it.

**Markers.** Each partition of the feature table has a marker in Redis
(``Keys.partition_mark``: JSON ``request``, ``worker_id``, ``epoch``, ``seq``, ``at``). The
worker that owns the partition takes the marker over when it takes the partition, writes it
after it rebuilt the partition, and advances it (``seq``) with every store write of the
partition's customers, in the same pipeline after the records, and only from the value it
last wrote (a compare-and-set: a missing marker is never created that way). A timer
(``SEGMENTER_STORE_CHECK_INTERVAL``) reads the owned partitions' markers:

- missing: Redis lost it, and with it whatever else (FLUSHALL, a restart without
  persistence, a failover to a replica that never had it); also the first start of a
  deployment, or of a version without markers;
- not the value this worker last wrote there (nobody else moves a marker a worker holds):
  Redis went back in time (a failover to a replica that lagged, a restart from an older
  append-only file or snapshot);
- ``request`` below the app's newest rebuild request (``segmenter rebuild-store``);

and then the partition is rebuilt. Another worker's marker (the partition's previous owner,
or this worker before a restart) is taken over as it is.

**Rebuild.** Every customer of those partitions in the table goes through the step
(``SegmentStep.rescore(..., rewrite=True)``) in chunks of ``REBUILD_CHUNK``, each under the
segmenting lock, so live batches run between the chunks and keep their freshness; each chunk's
outcome goes through ``Effects`` like a batch's. The records are evaluated at the watermark as
at a due time: a customer whose segments that evaluation does not move (everyone, unless the
model moved on since they were last scored) is only rewritten, with no change published and no
state saved. The write script orders by (event_ts, applied), so a live event's record is
never overwritten by an older one, and an equal one rewrites harmlessly. The counters come out
exact because the script moves them with every accepted write: a customer with no record
(lost) is added, one whose record survived is moved only by what changed. After the last chunk
the partition's marker is written with the request the rebuild answered.

Also on the check: when Redis has no model (or an older one) than the one this worker serves,
the worker puts its own back, so readers and a starting worker find one before the trainer
publishes its next.

What a marker cannot see: a loss on a Redis Cluster master that does not hold the marker
(the marker is one key on one master), and a rollback of Redis while no worker held the
partition (the next owner takes over whatever marker it finds). ``segmenter rebuild-store``
covers both.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson

from models.features import CustomerProfile
from models.step import StepOutcome
from stream.store import SegmentStore, is_outage
from stream.store.base import PartitionMark

if TYPE_CHECKING:
    from stream.worker.segmenting import Segmenting

log = logging.getLogger(__name__)

__all__ = [
    "REBUILD_CHUNK",
    "Mark",
    "PartitionMarks",
    "StoreRebuild",
    "locked_when_ready",
    "rescore_in_chunks",
]

#: Customers rewritten per chunk, under the segmenting lock (a live batch waits at most one).
REBUILD_CHUNK = 500

#: The most customers of one chunk sized by a time budget (``rescore_in_chunks``).
MAX_CHUNK = 20_000

#: Seconds between progress lines in the log during a rebuild.
_PROGRESS_EVERY = 5.0


class Mark(NamedTuple):
    """One partition marker's content.

    >>> m = Mark(2, "w1", "ab12", 7, 1795000000000)
    >>> Mark.decode(m.encode()) == m, m.encode()
    (True, b'{"request":2,"worker_id":"w1","epoch":"ab12","seq":7,"at":1795000000000}')
    >>> Mark.decode(b"not json") is None
    True
    """

    request: int  # the newest rebuild request the partition's records were rebuilt for
    worker_id: str
    epoch: str  # one worker process
    seq: int  # this process's writes, counted
    at: int  # wall clock, ms, for people

    def encode(self) -> bytes:
        return orjson.dumps(self._asdict())

    @classmethod
    def decode(cls, raw: bytes | None) -> Mark | None:
        """The marker, or None if missing or unreadable (both mean: rebuild)."""
        if raw is None:
            return None
        try:
            d = orjson.loads(raw)
            return cls(
                int(d["request"]),
                str(d["worker_id"]),
                str(d["epoch"]),
                int(d["seq"]),
                int(d.get("at", 0)),
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None


class PartitionMarks:
    """The markers this worker process holds (one per partition it owns and has verified),
    and the next value of each; ``Effects`` advances them with every store write."""

    def __init__(self, app_id: str, worker_id: str) -> None:
        self.app_id = app_id
        self.worker_id = worker_id
        self.epoch = secrets.token_hex(6)
        self.seq = 0
        self.held: dict[int, Mark] = {}

    def new(self, request: int) -> Mark:
        self.seq += 1
        return Mark(request, self.worker_id, self.epoch, self.seq, int(time.time() * 1000))

    def advance(self, partitions: Iterable[int]) -> list[PartitionMark]:
        """Moves of the held markers of these partitions to their next value (assumed done:
        if Redis lost the marker meanwhile, it no longer matches and the next check sees it)."""
        out = []
        for p in partitions:
            held = self.held.get(p)
            if held is None:
                continue
            mark = self.new(held.request)
            out.append(PartitionMark(self.app_id, p, held.encode(), mark.encode()))
            self.held[p] = mark
        return out

    def keep_only(self, partitions: set[int]) -> None:
        for p in [p for p in self.held if p not in partitions]:
            del self.held[p]


@asynccontextmanager
async def locked_when_ready(seg: Segmenting, ready: Callable[[], bool]) -> AsyncIterator[None]:
    """The segmenting lock, taken once partitions have settled and held only while they stay
    settled (a rebalance may begin while a batch holds the lock: then wait again)."""
    while True:
        while not ready():
            await asyncio.sleep(0.2)
        await seg.lock.acquire()
        if ready():
            break
        seg.lock.release()
    try:
        yield
    finally:
        seg.lock.release()


async def rescore_in_chunks(
    seg: Segmenting,
    ids: list[str],
    parts: set[int],
    chunk: int,
    ready: Callable[[], bool],
    progress: Callable[[int, StepOutcome], None],
    score: Callable[[list[str]], StepOutcome] | None = None,
    pace: Callable[[int], Awaitable[bool]] | None = None,
    budget: float = 0.0,
) -> set[int]:
    """Every customer of ``ids`` (of partitions ``parts``) through the step again, ``chunk`` at
    a time, each under the segmenting lock, so live batches run between the chunks and keep
    their freshness; each chunk's outcome goes through ``Effects`` like a batch's. ``score``
    runs the step on a chunk (called under the lock); by default every record is rewritten
    (``SegmentStep.rescore(..., rewrite=True)``).

    Waits while ``ready()`` is false (partitions moving); customers of partitions that moved
    to another worker meanwhile are left out. ``progress(done, outcome)`` follows each chunk;
    ``pace(done)`` comes before each and may wait (a rate limit) or say stop (False).
    With a ``budget`` (seconds), a chunk is sized to take about that long under the lock (the
    step and its effects), after the first (of ``chunk``): few chunks mean few round trips of
    their effects, and a live batch waits at most about one. Returns the partitions still
    owned at the end.
    """
    partition_of = seg.table.partition_of

    def rewrite(chunk_ids: list[str]) -> StepOutcome:
        return seg.step.rescore(
            chunk_ids,
            seg.profiles,
            seg.model,
            seg.watermark,
            seg.schedule,
            int(time.time() * 1000),
            rewrite=True,
        )

    i, size = 0, chunk
    while i < len(ids):
        if pace is not None and not await pace(i):
            break
        async with locked_when_ready(seg, ready):  # once partitions have settled
            parts &= seg.owned()
            if not parts:
                break
            started = time.perf_counter()
            outcome = (score or rewrite)(
                [c for c in ids[i : i + size] if partition_of.get(c) in parts]
            )
            await seg.apply(outcome)
            spent = time.perf_counter() - started  # the step and the effects, under the lock
        i += size
        progress(min(len(ids), i), outcome)
        if budget > 0 and spent > 0:
            size = max(chunk, min(MAX_CHUNK, int(size * budget / spent)))
    return parts


class StoreRebuild:
    """Checks the owned partitions' markers and rebuilds what Redis lost, in the background.

    ``ready()`` is false while the worker's partitions are moving (a rebalance, the table's
    recovery): nothing is checked, and a rebuild under way waits. ``spawn`` runs the rebuild
    as a background task (the app's, so it stops with the worker); ``crash`` is called if
    the rebuild fails with anything but a Redis outage (a bug, as in the segmenting loop).
    """

    def __init__(
        self,
        segmenting: Segmenting,
        store: SegmentStore,
        marks: PartitionMarks,
        ready: Callable[[], bool] = lambda: True,
        table_partitions: int = 0,
        chunk: int = REBUILD_CHUNK,
        spawn: Callable[[Coroutine[Any, Any, None]], Awaitable[None]] | None = None,
        crash: Callable[[BaseException], Awaitable[None]] | None = None,
    ) -> None:
        self.segmenting = segmenting
        self.store = store
        self.marks = marks
        self.app_id = marks.app_id
        self.ready = ready
        self.table_partitions = table_partitions
        self.chunk = chunk
        self.spawn = spawn or asyncio.ensure_future
        self.crash = crash
        self.task: Awaitable[None] | None = None
        self.running = False
        self.request = 0  # the app's newest rebuild request, as last read
        self.partitions: list[int] = []  # being rebuilt, or last rebuilt
        self.reason = ""
        self.done = 0
        self.total = 0
        self.rebuilt = 0  # customers rewritten by every rebuild of this process
        self.live_events = 0  # events live batches applied while the last rebuild ran
        self.finished_at: int | None = None
        self.waiting: str | None = None

    def status(self) -> dict[str, Any]:
        """What the heartbeat reports (``rebuild``)."""
        return {
            "running": self.running,
            "partitions": self.partitions,
            "reason": self.reason,
            "done": self.done,
            "total": self.total,
            "rebuilt": self.rebuilt,
            "live_events": self.live_events,
            "finished_at": self.finished_at,
            "waiting": self.waiting,
            "request": self.request,
            "table_partitions": self.table_partitions,
        }

    async def check(self) -> None:
        """The timer: put the model back if Redis lost it; start a rebuild of every owned
        partition whose marker says Redis lost data or a rebuild was requested."""
        await self._model_back()
        if self.running or not self.ready():
            return
        seg = self.segmenting
        stale: dict[int, str] = {}
        async with seg.lock:  # no batch in flight: the markers are as this worker left them
            owned = seg.owned()
            self.marks.keep_only(owned)
            if not owned:
                return
            request, found = await self.store.partition_marks(self.app_id, sorted(owned))
            self.request = request
            for p in sorted(owned):
                raw = found.get(p)
                mark = Mark.decode(raw)
                held = self.marks.held.get(p)
                if raw is None and held is None and p in seg.fresh_partitions:
                    # Taken over empty (a new deployment, a new partition): nothing was lost,
                    # whatever traffic came since; the marker starts here.
                    new = self.marks.new(request)
                    if await self.store.put_partition_mark(self.app_id, p, new.encode(), None):
                        self.marks.held[p] = new
                        seg.fresh_partitions.discard(p)
                    continue
                if mark is None:
                    stale[p] = "no marker" if raw is None else "an unreadable marker"
                elif held is not None and mark != held:
                    # Nobody else moves a marker this worker holds: Redis went back in time.
                    stale[p] = f"Redis is behind this worker (marker {mark.seq}, not {held.seq})"
                elif mark.request < request:
                    stale[p] = f"rebuild request {request}"
                elif held is None:
                    # Another worker's marker (the partition's previous owner, or this worker
                    # before a restart): this worker's from now on, as it is.
                    new = self.marks.new(mark.request)
                    if await self.store.put_partition_mark(self.app_id, p, new.encode(), raw):
                        self.marks.held[p] = new
                    continue
                else:
                    continue
                self.marks.held.pop(p, None)
        if stale:
            self.running = True
            self.task = self.spawn(self._run(stale, request))

    async def _run(self, stale: dict[int, str], request: int) -> None:
        try:
            await self.rebuild(stale, request)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if is_outage(exc):
                log.warning(
                    "store rebuild interrupted: Redis is not available (%s); it starts "
                    "again on a check once Redis is back",
                    exc,
                )
                return
            log.exception("the store rebuild failed; stopping the worker")
            if self.crash is not None:
                await self.crash(exc)
        finally:
            self.running = False

    async def rebuild(self, stale: dict[int, str], request: int) -> None:
        """Rewrite every record and counter of these partitions from the table, in chunks
        between live batches; then mark them rebuilt for ``request``."""
        seg = self.segmenting
        parts = set(stale)
        if seg.model is None and self._assigned(parts):
            # Scoring without the model would take these customers out of their clusters.
            if self.waiting is None:
                log.warning(
                    "store rebuild of partitions %s waits for a model (Redis has none "
                    "and this worker has not loaded one)",
                    sorted(parts),
                )
            self.waiting = "model"
            return
        self.waiting = None
        ids = seg.table.stored_ids(parts)
        reasons = sorted(set(stale.values()))
        self.partitions, self.reason = sorted(parts), "; ".join(reasons)
        self.done, self.total, self.finished_at = 0, len(ids), None
        events = seg.effects.counters
        events_before, self.live_events = events.get("events", 0), 0
        started = last_log = time.monotonic()
        if ids:
            log.warning(
                "store rebuild: partitions %s (%s): rewriting %d customers' records and "
                "counters from the table",
                self.partitions,
                self.reason,
                len(ids),
            )

        def progress(done: int, outcome: StepOutcome) -> None:
            nonlocal last_log
            self.done = done
            self.rebuilt += len(outcome.writes)
            self.live_events = events.get("events", 0) - events_before
            if time.monotonic() - last_log >= _PROGRESS_EVERY:
                last_log = time.monotonic()
                log.info("store rebuild: %d of %d customers", self.done, self.total)

        parts = await rescore_in_chunks(seg, ids, parts, self.chunk, self.ready, progress)
        async with seg.lock:
            parts &= seg.owned()
            for p in sorted(parts):
                mark = self.marks.new(request)
                await self.store.put_partition_mark(self.app_id, p, mark.encode())
                self.marks.held[p] = mark
            self.live_events = events.get("events", 0) - events_before
        self.finished_at = int(time.time() * 1000)
        lost = sorted(set(stale) - parts)
        if ids:
            log.warning(
                "store rebuild done: %d customers of partitions %s in %.1fs, %d live events "
                "applied meanwhile%s",
                self.done,
                sorted(parts),
                time.monotonic() - started,
                self.live_events,
                f" (partitions {lost} moved to another worker meanwhile)" if lost else "",
            )
        else:
            log.info("partition markers written for partitions %s (no customers)", sorted(parts))

    def _assigned(self, parts: set[int]) -> bool:
        """Whether any customer of these partitions has a cluster."""
        partition_of = self.segmenting.table.partition_of
        for customer_id, raw in self.segmenting.table.stored():
            if (
                partition_of.get(customer_id) in parts
                and CustomerProfile.from_state(orjson.loads(raw), owned=True).segment is not None
            ):
                return True
        return False

    async def _model_back(self) -> None:
        model = self.segmenting.model
        if model is None:
            return
        stored = await self.store.model_version()
        if stored >= model.version:
            return
        await self.store.publish_model(model.to_dict())
        log.warning(
            "Redis had %s; put back model version %d, the one this worker serves",
            f"model version {stored}" if stored else "no model",
            model.version,
        )
