"""Live segment definitions: follow the definitions topic, switch at a batch boundary, backfill.

``segmenter segments apply FILE`` (and ``personas apply``) publishes a versioned file to the
definitions topic (``stream.definitions``). Every worker reads that topic whole (no consumer
group): at start-up it scores with the newest published set, else with the settings' files;
then a timer (``SEGMENTER_DEFINITIONS_REFRESH_INTERVAL``) reads what was published since.

**Switch.** A newer set is compiled off the lock (a set that does not compile here was
validated by ``apply``, so this worker is of another version: it logs the error and keeps its
definitions), then swapped into the step under the segmenting lock, between two batches: every
batch is scored wholly under one version.

**Backfill.** Then every customer of the owned partitions goes through the step again
(``SegmentStep.reevaluate``, in ``rescore_in_chunks``: chunks of about ``BACKFILL_SLICE``
seconds under the lock (the step and its effects), live batches between them), at most
``SEGMENTER_BACKFILL_RATE`` customers a second, evaluated at the watermark. Each profile keeps
the fingerprint of the definitions it was last evaluated under; a customer last evaluated
under a set this worker knows, where only rules changed since, and not due for a time-driven
evaluation, is evaluated on the rules added, edited and removed alone (the facts they read),
so a backfill of one edited rule costs about a profile's decoding per customer. Anyone else
(a set this worker never scored with, personas or policies changed, due) gets their rule
segments, lifecycle stage and persona evaluated. A customer whom the new set moves gets their
record written under the new version, their state saved and their entries and exits
published (reason "... under new segment definitions"); anyone else keeps their record (and
the version it was written under) and state, and only gets their due time set again for the
new rules' thresholds: a backfill writes what it changes, not every record. Customers not
reached yet are scored with the new set all the same when an event or a due time of theirs
comes first. A newer set during a backfill ends it and starts another. Partitions this worker
takes over later are backfilled too (the previous owner may not have finished them), as is
everything at start-up under a published set (a worker may have stopped mid-backfill).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

from models.segments import SegmentCatalog
from models.step import StepOutcome
from stream.catalog import CatalogError
from stream.definitions import (
    DefinitionsReader,
    PublishedDefinitions,
    definitions_version,
    newest,
)
from stream.store import is_outage
from stream.worker.backfill_process import ScoringProcess, rescore_in_child
from stream.worker.rebuild import rescore_in_chunks

if TYPE_CHECKING:
    from stream.worker.segmenting import Segmenting

log = logging.getLogger(__name__)

__all__ = ["LiveDefinitions"]


#: Customers re-evaluated in the first chunk under the segmenting lock; later chunks are sized
#: to take about ``BACKFILL_SLICE`` seconds with their effects, so a live batch waits for at
#: most about one. Each chunk's effects cost a few round trips to Redis and the broker, so
#: chunks of a fixed hundred customers spent most of a backfill waiting on them (114 s for
#: 100,000 customers in the bench, against about 12 s of step time).
BACKFILL_CHUNK = 100
BACKFILL_SLICE = 0.1
#: Customers a chunk carries to the backfill's child process (``rescore_in_child``): about
#: 0.1 s of its scoring; ``backfill_process.IN_FLIGHT`` are sent ahead. Fewer under a rate
#: limit below ``CHILD_CHUNK / RATE_SLICE`` a second (``child_chunk``).
CHILD_CHUNK = 2_000
#: Seconds of the rate limit one chunk to the child may take up at most: the limit holds
#: over a fraction of a second, not only over the whole backfill.
RATE_SLICE = 0.1


def child_chunk(rate: float) -> int:
    """Customers per chunk to the child under ``SEGMENTER_BACKFILL_RATE`` ``rate`` (0: none).

    >>> child_chunk(0), child_chunk(20_000), child_chunk(300), child_chunk(1)
    (2000, 2000, 30, 1)
    """
    if rate <= 0:
        return CHILD_CHUNK
    return max(1, min(CHILD_CHUNK, int(rate * RATE_SLICE)))


#: Builds the catalog of a set in force (the settings' files for a kind not published).
Compile = Callable[[dict[str, PublishedDefinitions]], SegmentCatalog]


class LiveDefinitions:
    """The definitions in force on this worker, and their backfill (see the module)."""

    def __init__(
        self,
        segmenting: Segmenting,
        reader: DefinitionsReader,
        in_force: dict[str, PublishedDefinitions],
        compile_catalog: Compile,
        rate: float,
        ready: Callable[[], bool] = lambda: True,
        chunk: int | None = None,
        slice_seconds: float = BACKFILL_SLICE,
        processes: bool = False,
        spawn: Callable[[Coroutine[Any, Any, None]], Awaitable[None]] | None = None,
        crash: Callable[[BaseException], Awaitable[None]] | None = None,
    ) -> None:
        self.segmenting = segmenting
        self.reader = reader
        self.in_force = in_force
        self.compile_catalog = compile_catalog
        self.rate = rate
        self.ready = ready
        self.chunk = chunk or BACKFILL_CHUNK
        self.slice = slice_seconds
        self.processes = processes  # score in a child process (stream.worker.backfill_process)
        self.spawn = spawn or asyncio.ensure_future
        self.crash = crash
        self.version = definitions_version(in_force)
        self.refused: set[int] = set()  # versions that did not compile here
        #: Owned partitions whose customers were all re-evaluated under ``version`` (None: the
        #: settings' files, version 0, which nobody needs).
        self.covered: set[int] | None = set() if self.version else None
        self.running = False
        self.backfill: dict[str, Any] = {}

    def status(self) -> dict[str, Any]:
        """What the heartbeat reports (``definitions``)."""
        owned = self.segmenting.owned_partitions()
        return {
            "version": self.version,
            "complete": self.covered is None or (not self.running and owned <= self.covered),
            "segments": self._describe("segments"),
            "personas": self._describe("personas"),
            "backfill": self.backfill,
        }

    def _describe(self, kind: str) -> dict[str, Any] | None:
        d = self.in_force.get(kind)
        if d is None:
            return None
        # The text too: readers (segmenter segments, the dashboard) show what is in force.
        return {"version": d.version, "sha256": d.sha256, "source": d.source, "text": d.text}

    async def refresh(self) -> None:
        """The timer: switch to newly published definitions, backfill what needs it."""
        found = await asyncio.to_thread(self.reader.read_new)
        wanted = newest((d for d in found if d.version not in self.refused), self.in_force)
        if definitions_version(wanted) > self.version:
            try:
                for d in wanted.values():
                    d.check()
                catalog = self.compile_catalog(wanted)
            except CatalogError as exc:
                self.refused.update(d.version for d in wanted.values())
                log.error(
                    "published definitions version %d do not compile on this worker (another "
                    "version of segmenter published them?); keeping version %d: %s",
                    definitions_version(wanted),
                    self.version,
                    exc,
                )
            else:
                await self._switch(wanted, catalog)
        await self._start_backfill()

    async def _switch(
        self, wanted: dict[str, PublishedDefinitions], catalog: SegmentCatalog
    ) -> None:
        seg = self.segmenting
        async with seg.lock:  # between two batches
            seg.step.use_catalog(catalog)
            self.in_force, self.version, self.covered = wanted, catalog.version, set()
        log.info(
            "definitions version %d in force (%s)",
            self.version,
            ", ".join(f"{k} v{d.version} {d.sha256} from {d.source}" for k, d in wanted.items()),
        )

    async def _start_backfill(self) -> None:
        if self.running or self.covered is None or not self.ready():
            return
        owned = self.segmenting.owned_partitions()
        self.covered &= owned
        todo = owned - self.covered
        if todo:
            self.running = True
            self.spawn(self._run(todo, self.version))

    async def _run(self, parts: set[int], version: int) -> None:
        try:
            await self.run_backfill(parts, version)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if is_outage(exc):
                log.warning(
                    "backfill interrupted: Redis is not available (%s); it starts again", exc
                )
                return
            log.exception("the definitions backfill failed; stopping the worker")
            if self.crash is not None:
                await self.crash(exc)
        finally:
            self.running = False

    async def run_backfill(self, parts: set[int], version: int) -> None:
        """Re-evaluate every customer of these partitions under definitions ``version``
        (``SegmentStep.reevaluate``)."""
        seg = self.segmenting
        ids = seg.table.stored_ids(parts)
        events, events_before = seg.effects.counters, seg.effects.counters.get("events", 0)
        started = time.monotonic()
        status: dict[str, Any] = {
            "version": version,
            "running": True,
            "partitions": sorted(parts),
            "done": 0,
            "total": len(ids),
            "changes": 0,
            "written": 0,
            "live_events": 0,
            "started_at": int(time.time() * 1000),
            "finished_at": None,
            "seconds": None,
        }
        self.backfill = status
        log.info("backfill of definitions version %d: %d customers", version, len(ids))

        async def pace(done: int) -> bool:
            if self.version != version:
                return False  # newer definitions: their own backfill follows
            if self.rate > 0:
                await asyncio.sleep(max(0.0, started + done / self.rate - time.monotonic()))
            return True

        def progress(done: int, outcome: StepOutcome) -> None:
            status["done"] = done
            status["changes"] += len(outcome.changes)
            status["written"] += len(outcome.writes)
            status["live_events"] = events.get("events", 0) - events_before

        profiles = seg.profiles.passing()  # read once each: not kept live

        def score(chunk_ids: list[str]) -> StepOutcome:
            return seg.step.reevaluate(
                chunk_ids,
                profiles,
                seg.model,
                seg.watermark,
                seg.schedule,
                int(time.time() * 1000),
            )

        def ready() -> bool:  # and every due time known: who is due is evaluated in full
            return self.ready() and seg.scheduled

        done = 0
        child = ScoringProcess.start(seg.step) if self.processes else None
        status["scored_in"] = "a child process" if child is not None else "the worker"
        if child is not None:
            try:
                parts, done = await rescore_in_child(
                    seg,
                    child,
                    ids,
                    parts,
                    child_chunk(self.rate),
                    ready,
                    progress,
                    pace,
                    lambda: self.version == version,
                )
            finally:
                child.close()
        if done < len(ids) and self.version == version and parts:

            async def pace_rest(i: int) -> bool:
                return await pace(done + i)

            def progress_rest(i: int, outcome: StepOutcome) -> None:
                progress(done + i, outcome)

            parts = await rescore_in_chunks(
                seg,
                ids[done:],
                parts,
                self.chunk,
                ready,
                progress_rest,
                score,
                pace_rest,
                self.slice,
            )
        status["running"] = False
        if self.version != version or self.covered is None:
            status["stopped"] = f"definitions version {self.version} came meanwhile"
            return
        self.covered |= parts
        seconds = time.monotonic() - started
        status.update(finished_at=int(time.time() * 1000), seconds=round(seconds, 3))
        log.info(
            "backfill of definitions version %d done: %d customers in %.1fs, %d changes, "
            "%d live events applied meanwhile; scored in %s",
            version,
            status["done"],
            seconds,
            status["changes"],
            status["live_events"],
            status["scored_in"],
        )
