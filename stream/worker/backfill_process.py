"""A definitions backfill scored in a child process: the worker's second core.

The worker is one Python process: its event loop applies live batches, writes Redis and
produces to the broker, and a backfill's scoring (decoding every stored state, evaluating it
under the new definitions, scoring whom that moves) shared that one core with all of it. While
the worker backfilled 100,000 customers in the bench, it used about 0.75 of a core and the
machine as a whole 1.5 of its 2: the step was waiting for the worker's own effects, and the
effects for the step.

So the step runs in a child forked from the worker when a backfill starts
(``ScoringProcess``): it inherits the step with every catalog it knows, and gets each chunk's
stored states (the table's bytes), their due times, the model and the watermark; it sends back
the outcome with the moved customers' states already encoded. The worker meanwhile applies the
previous chunk's effects and its live batches (``rescore_in_child``: ``IN_FLIGHT`` chunks sent
ahead).

**Nothing stale is applied.** A live batch may change a customer between the chunk's read and
its outcome's return. Under the segmenting lock, before a chunk's outcome is applied, each
customer is checked: whose state the table changed since the chunk was read (the table notes
every key it writes or recovers while the backfill watches it: ``CustomerTable.watch``, so the
state is not read a second time), whose due time is not the one the child was given (a live
event, a time-driven evaluation), or whose partition left the worker, is
left out of the outcome, and the customers still owned among them are evaluated again in the
worker's own process, from their state now. The child reads nothing but what it is sent, and
writes nothing: every effect is the worker's, in the order a batch's are.

Outcomes wait for partitions to settle (a rebalance) before they are applied, and are dropped
once newer definitions are in force (their own backfill covers everyone). A model the trainer
published meanwhile is not waited for: a chunk is scored with the model of its sending, as an
in-process chunk is with the model of its turn, and the next event or due time of each
customer scores them with the newest.

A child that cannot be started (no ``fork`` on this platform, or the fork fails), dies, or
takes longer than ``CHILD_TIMEOUT`` on a chunk (it is killed) leaves the rest of the backfill
to the worker's own process (``rescore_in_chunks``), with a warning. The child undoes the
signal handling it inherited, so a signal meant for the worker does not reach it and SIGTERM
stops it, and it exits by itself when the worker dies.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING

import orjson

from models.clustering import ModelSnapshot
from models.features import CustomerProfile
from models.schedule import DueSchedule
from models.step import SegmentStep, StepOutcome
from stream.worker.effects import encode_profile
from stream.worker.rebuild import locked_when_ready

if TYPE_CHECKING:
    from stream.worker.segmenting import Segmenting

log = logging.getLogger(__name__)

__all__ = ["ChildFailed", "ScoringProcess", "rescore_in_child", "score_chunk"]

#: A chunk: (customer id, stored state, due time) of each customer.
Items = list[tuple[str, bytes | None, int | None]]
#: A chunk's outcome, the moved customers' states encoded apart (``score_chunk``).
Scored = tuple[StepOutcome, dict[str, bytes]]

#: Seconds the oldest chunk may take in the child, from when it became the oldest (about 0.1 s
#: is usual), before the child is taken for hung, killed, and the rest scored in the worker.
CHILD_TIMEOUT = 120.0

#: Chunks sent to the child and not yet applied: it scores one while the worker applies another.
IN_FLIGHT = 3

#: The step the forked child scores with: the worker's, as it was when the child was forked.
_STEP: SegmentStep | None = None


class _Stored:
    """Profiles decoded from the states a chunk carries (a ``ProfileSource``)."""

    def __init__(self, states: dict[str, bytes | None]) -> None:
        self.states = states

    def get(self, customer_id: str) -> CustomerProfile | None:
        raw = self.states.get(customer_id)
        return CustomerProfile.from_state(orjson.loads(raw), owned=True) if raw else None


def score_chunk(
    step: SegmentStep,
    items: Items,
    model: ModelSnapshot | None,
    watermark: int,
    now_ms: int,
) -> tuple[StepOutcome, dict[str, bytes]]:
    """``SegmentStep.reevaluate`` of a chunk of stored states, and the moved customers' states
    encoded as the table holds them (the outcome's ``states`` then empty): what the child
    computes, here callable in-process too.

    >>> from models.segments import SegmentCatalog
    >>> from models.rules import RuleSegment
    >>> from models.step import SourceMessage
    >>> step = SegmentStep(SegmentCatalog())
    >>> msg = SourceMessage("purchases", "purchases/0", 0, b"c-1", orjson.dumps(
    ...     {"event_id": "e1", "customer_id": "c-1", "ts": 1795000000000, "amount": 20.0}))
    >>> out = step.run([msg], {}, None, 0, DueSchedule(), now_ms=0, clock=0.0)
    >>> stored = [("c-1", encode_profile(out.states["c-1"]), None)]
    >>> buyer = RuleSegment.compile("buyer", "value", "", {"orders_total": {"gte": 1}})
    >>> step.use_catalog(SegmentCatalog(rules=(buyer,), version=2))
    >>> moved, states = score_chunk(step, stored, None, out.watermark, 0)
    >>> moved.writes[0].record["rule_segments"], moved.states, list(states)
    (['buyer'], {}, ['c-1'])
    """
    schedule = DueSchedule()
    for customer_id, _, due in items:
        if due is not None:
            schedule.set(customer_id, due)
    source = _Stored({customer_id: raw for customer_id, raw, _ in items})
    out = step.reevaluate(
        [customer_id for customer_id, _, _ in items], source, model, watermark, schedule, now_ms
    )
    encoded = {c: state for c, p in out.states.items() if (state := encode_profile(p))}
    out.states = {}
    return out, encoded


def _init_child(step: SegmentStep, parent: int) -> None:
    """The child's start: the worker's step kept for its chunks; the signal handling it
    inherited (the worker's handlers, whose wakeup fd is the worker's event loop) undone, so
    SIGTERM and SIGKILL stop it and Ctrl-C reaches the worker alone; and it exits by itself if
    the worker (``parent``) dies, rather than wait for chunks that never come."""
    global _STEP
    _STEP = step
    signal.set_wakeup_fd(-1)
    for signum in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _score_in_child(
    items: Items, model: ModelSnapshot | None, watermark: int, now_ms: int
) -> Scored:
    assert _STEP is not None, "a scoring process's step is set when it starts"
    return score_chunk(_STEP, items, model, watermark, now_ms)


def _retrieved(future: asyncio.Future[Scored]) -> None:
    """A chunk's result nobody awaits any more (the backfill stopped) is not an error to log."""
    if not future.cancelled():
        future.exception()


class ScoringProcess:
    """A child process forked from the worker, scoring chunks with the worker's step as it was
    at the fork (its definitions, the catalogs they were edited from); the model and watermark
    come with each chunk. One per backfill."""

    def __init__(self, step: SegmentStep) -> None:
        # Forked at the first chunk; with fork, the step is inherited, not pickled.
        self._pool = ProcessPoolExecutor(
            1,
            mp_context=multiprocessing.get_context("fork"),
            initializer=_init_child,
            initargs=(step, os.getpid()),
        )
        self._failed = False

    @classmethod
    def start(cls, step: SegmentStep) -> ScoringProcess | None:
        """A scoring process, or None where processes cannot be forked."""
        if "fork" not in multiprocessing.get_all_start_methods():
            return None
        return cls(step)

    async def score(
        self, items: Items, model: ModelSnapshot | None, watermark: int, now_ms: int
    ) -> Scored:
        """The chunk's outcome; raises ``ChildFailed`` if the child could not be started or
        died (it is then killed). Cancelling the caller leaves the chunk to the pool's own
        shutdown (a cancel from here would race its management thread)."""
        if self._failed:
            raise ChildFailed("the scoring process failed on an earlier chunk")
        try:
            future = self._pool.submit(_score_in_child, items, model, watermark, now_ms)
        except (BrokenProcessPool, OSError, RuntimeError) as exc:
            self.close(kill=True)
            raise ChildFailed(repr(exc)) from exc
        wrapped = asyncio.wrap_future(future)
        wrapped.add_done_callback(_retrieved)
        try:
            return await asyncio.shield(wrapped)
        except (BrokenProcessPool, OSError) as exc:
            self.close(kill=True)
            raise ChildFailed(repr(exc)) from exc

    def close(self, kill: bool = False) -> None:
        """Stop the child: after its chunk, or at once (``kill``, after a failure or a chunk
        that took too long). Idempotent."""
        if kill:
            self._failed = True
        processes = list((getattr(self._pool, "_processes", None) or {}).values())
        self._pool.shutdown(wait=False, cancel_futures=True)
        if kill:
            for process in processes:
                process.kill()


class ChildFailed(Exception):
    """The backfill's scoring process could not start, died or hung."""


async def rescore_in_child(
    seg: Segmenting,
    child: ScoringProcess,
    ids: list[str],
    parts: set[int],
    chunk: int,
    ready: Callable[[], bool],
    progress: Callable[[int, StepOutcome], None],
    pace: Callable[[int], Awaitable[bool]],
    current: Callable[[], bool] = lambda: True,
) -> tuple[set[int], int]:
    """Every customer of ``ids`` (of partitions ``parts``) re-evaluated by ``child``, ``chunk``
    at a time, ``IN_FLIGHT`` chunks sent ahead; each outcome applied under the segmenting lock,
    stale customers left out and evaluated again in-process (see the module). ``pace(done)`` comes
    before each chunk is sent and may wait (a rate limit) or say stop (False); ``current()``,
    under the lock before each outcome is applied, false once the definitions it was scored
    under are no longer in force (the outcomes left are dropped: the next backfill covers
    everyone). Returns the partitions still owned and how many customers were done (the rest,
    if the child failed, is the caller's)."""
    partition_of = seg.table.partition_of
    touches = seg.table.watch()  # whose state changes after their chunk was read
    in_flight: deque[tuple[int, Items, int, asyncio.Task[Scored]]] = deque()
    sent = done = 0
    stopped = False

    async def top_up() -> None:
        """Chunks sent until ``IN_FLIGHT`` are: the child never waits for the worker."""
        nonlocal sent, stopped, parts
        while not stopped and sent < len(ids) and len(in_flight) < IN_FLIGHT:
            if not await pace(sent):
                stopped = True
                return
            async with locked_when_ready(seg, ready):
                parts &= seg.owned()
                if not parts:
                    stopped = True
                    return
                chosen = [c for c in ids[sent : sent + chunk] if partition_of.get(c) in parts]
                load, due_of = seg.table.load, seg.schedule.due_of
                items = [(c, load(c), due_of(c)) for c in chosen]
                model, watermark, read_at = seg.model, seg.watermark, touches.seq
            sent = min(len(ids), sent + chunk)
            task = asyncio.ensure_future(
                child.score(items, model, watermark, int(time.time() * 1000))
            )
            in_flight.append((sent, items, read_at, task))

    try:
        while True:
            await top_up()
            if not in_flight:
                return parts, done
            upto, items, read_at, task = in_flight.popleft()
            try:  # the oldest chunk's own time: the others wait behind it in the child
                outcome, encoded = await asyncio.wait_for(asyncio.shield(task), CHILD_TIMEOUT)
            except (ChildFailed, TimeoutError) as exc:
                child.close(kill=True)
                task.cancel()  # (its result, if any, is of a killed child)
                await asyncio.gather(task, return_exceptions=True)
                log.warning(
                    "the backfill's scoring process failed (%s): the worker scores the rest itself",
                    exc if isinstance(exc, ChildFailed) else f"a chunk over {CHILD_TIMEOUT} s",
                )
                return parts, done
            await top_up()  # the next chunk goes to the child before this one's effects
            async with locked_when_ready(seg, ready):  # applied once partitions settle
                if not current():  # newer definitions in force: this was scored under older
                    return parts, done
                parts &= seg.owned()
                fresh: set[str] = set()
                again: list[str] = []
                changed, due_of = touches.changed_since, seg.schedule.due_of
                for c, _, due in items:
                    if partition_of.get(c) not in parts:
                        continue
                    if not changed(c, read_at) and due_of(c) == due:
                        fresh.add(c)
                    else:
                        again.append(c)
                if len(fresh) < len(items):
                    outcome = outcome.only(fresh)
                    encoded = {c: state for c, state in encoded.items() if c in fresh}
                for customer_id, due in outcome.due.items():
                    seg.schedule.set(customer_id, due)
                await seg.apply(outcome, encoded)
                if again:
                    redone = seg.step.reevaluate(
                        again,
                        seg.profiles.passing(),
                        seg.model,
                        seg.watermark,
                        seg.schedule,
                        int(time.time() * 1000),
                    )
                    await seg.apply(redone)
                    outcome = StepOutcome(
                        outcome.watermark,
                        writes=outcome.writes + redone.writes,
                        changes=outcome.changes + redone.changes,
                    )
            done = upto
            progress(done, outcome)  # what the chunk wrote and changed, for the status
    finally:
        seg.table.unwatch(touches)
        for *_, left in in_flight:
            left.cancel()
        await asyncio.gather(*(left for *_, left in in_flight), return_exceptions=True)
