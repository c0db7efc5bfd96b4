"""A definitions backfill scored in a forked child (stream/worker/backfill_process.py): the same
outcome as in the worker's own process, and nothing stale applied when a live batch changes a
customer while their chunk is in the child. The child is a real forked process; the worker
around it is a stand-in holding the table in a dict (no broker, no Redis: those are the
integration tests' live-definitions backfill, which takes this path by default)."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from typing import Any

import orjson

from models.rules import RuleSegment
from models.schedule import DueSchedule
from models.segments import SegmentCatalog
from models.step import SegmentStep, SourceMessage, StepOutcome
from stream.worker.backfill_process import ScoringProcess, rescore_in_child, score_chunk
from stream.worker.effects import encode_profile
from stream.worker.faust_adapt import Touches

TS = 1795000000000


def _purchase(customer: str, i: int, amount: float) -> SourceMessage:
    value = {"event_id": f"e{i}", "customer_id": customer, "ts": TS + i * 1000, "amount": amount}
    return SourceMessage("purchases", "purchases/0", i, customer.encode(), orjson.dumps(value))


def _customers(n: int) -> tuple[SegmentStep, dict[str, bytes], int]:
    step = SegmentStep(SegmentCatalog())
    messages = [_purchase(f"c-{i}", i, 10.0 + 30 * i) for i in range(n)]
    out = step.run(messages, {}, None, 0, DueSchedule(), now_ms=0, clock=0.0)
    states = {c: encode_profile(p) for c, p in out.states.items()}
    big = RuleSegment.compile("big", "value", "", {"revenue_total": {"gte": 100}})
    step.use_catalog(SegmentCatalog(rules=(big,), version=2))
    return step, states, out.watermark  # type: ignore[return-value]


def _moved(outcome: StepOutcome) -> dict[str, list[str]]:
    return {w.customer_id: w.record["rule_segments"] for w in outcome.writes}


def test_the_child_scores_as_the_worker_would():
    step, states, watermark = _customers(12)
    items = [(c, raw, None) for c, raw in sorted(states.items())]
    child = ScoringProcess.start(step)
    assert child is not None

    async def scored() -> Any:
        try:
            return await child.score(items, None, watermark, 0)
        finally:
            child.close()

    theirs, their_states = asyncio.run(scored())
    ours, our_states = score_chunk(step, items, None, watermark, 0)
    assert _moved(theirs) == _moved(ours) and len(_moved(ours)) == 9  # 100 and more: c-3 on
    assert [(c.customer_id, c.segment, c.change) for c in theirs.changes] == [
        (c.customer_id, c.segment, c.change) for c in ours.changes
    ]
    assert their_states.keys() == our_states.keys() == _moved(ours).keys()
    assert theirs.due == ours.due


class _Table:
    """The table's part ``rescore_in_child`` uses: load, and the watch of changed states
    (``put`` is a live batch's write; the real table's is tested in test_state_watch.py)."""

    def __init__(self, states: dict[str, bytes]) -> None:
        self.states = dict(states)
        self.partition_of = {c: 0 for c in states}
        self.watches: list[Touches] = []

    def load(self, customer_id: str) -> bytes | None:
        return self.states.get(customer_id)

    def put(self, customer_id: str, state: bytes) -> None:
        for touches in self.watches:
            touches.note([customer_id])
        self.states[customer_id] = state

    def watch(self) -> Touches:
        self.watches.append(Touches())
        return self.watches[-1]

    def unwatch(self, touches: Touches) -> None:
        self.watches.remove(touches)


class _Profiles:
    def __init__(self, table: _Table) -> None:
        self.table = table

    def passing(self) -> Any:
        from models.features import CustomerProfile

        table = self.table

        class _Source:
            def get(self, c: str) -> Any:
                raw = table.load(c)
                return CustomerProfile.from_state(orjson.loads(raw), owned=True) if raw else None

        return _Source()


class _Segmenting:
    """What ``rescore_in_child`` uses of ``Segmenting``; ``apply`` records the outcomes."""

    def __init__(self, step: SegmentStep, states: dict[str, bytes], watermark: int) -> None:
        self.step = step
        self.table = _Table(states)
        self.profiles = _Profiles(self.table)
        self.lock = asyncio.Lock()
        self.schedule = DueSchedule()
        self.model = None
        self.watermark = watermark
        self.applied: list[tuple[StepOutcome, dict[str, bytes]]] = []

    def owned(self) -> set[int]:
        return {0}

    async def apply(self, outcome: StepOutcome, encoded: dict[str, bytes] | None = None) -> None:
        self.applied.append((outcome, dict(encoded or {})))


def test_a_customer_changed_while_their_chunk_is_in_the_child_is_scored_again_from_now():
    step, states, watermark = _customers(12)
    seg = _Segmenting(step, states, watermark)
    ids = sorted(states)
    # c-2 (70 spent) buys for 50 more while the child scores the chunk: the child's outcome
    # says "not big", which is stale; the worker scores c-2 again from the state now.
    # (Applied under the definitions before the edit, as a batch before the switch would have.)
    before = SegmentStep(SegmentCatalog())
    more = before.run(
        [_purchase("c-2", 50, 50.0)],
        {"c-2": _Profiles(seg.table).passing().get("c-2")},
        None,
        watermark,
        DueSchedule(),
        now_ms=0,
        clock=0.0,
    )
    child = ScoringProcess.start(step)
    assert child is not None

    class _Interleaved:
        async def score(self, *args: Any) -> Any:
            result = await child.score(*args)  # type: ignore[union-attr]
            seg.table.put("c-2", encode_profile(more.states["c-2"]))  # a live batch
            return result

    done: list[int] = []

    async def pace(_: int) -> bool:
        return True

    async def run() -> Any:
        try:
            return await rescore_in_child(
                seg,
                _Interleaved(),
                ids,
                {0},
                5,
                lambda: True,  # type: ignore[arg-type]
                lambda d, _: done.append(d),
                pace,
            )
        finally:
            child.close()

    parts, finished = asyncio.run(run())
    assert parts == {0} and finished == len(ids) and done[-1] == len(ids)
    written = [w.customer_id for out, _ in seg.applied for w in out.writes]
    assert sorted(written) == sorted(set(written))  # each customer once
    moved = {w.customer_id: w for out, _ in seg.applied for w in out.writes}
    assert "c-2" in moved and moved["c-2"].record["rule_segments"] == ["big"]
    # The child's (stale) outcome for c-2 was left out: no state of it from the child; the
    # others' states are the child's.
    assert all("c-2" not in encoded for _, encoded in seg.applied)
    from_child = {c for _, encoded in seg.applied for c in encoded}
    assert from_child == {f"c-{i}" for i in range(3, 12)}
    assert set(moved) == {f"c-{i}" for i in range(2, 12)}
    assert seg.table.watches == []  # the backfill's watch ended with it


def _run_in_child(seg: _Segmenting, ids: list[str], child: Any, current: Any) -> Any:
    async def pace(_: int) -> bool:
        return True

    async def run() -> Any:
        try:
            return await rescore_in_child(
                seg, child, ids, {0}, 5, lambda: True, lambda d, _: None, pace, current
            )
        finally:
            child.close()

    return asyncio.run(run())


def test_a_child_that_cannot_be_forked_leaves_the_backfill_to_the_worker(monkeypatch):
    step, states, watermark = _customers(12)
    seg = _Segmenting(step, states, watermark)

    def no_fork() -> int:
        raise OSError(12, "Cannot allocate memory")

    monkeypatch.setattr(os, "fork", no_fork)
    child = ScoringProcess.start(step)
    assert child is not None
    parts, done = _run_in_child(seg, sorted(states), child, lambda: True)
    assert parts == {0} and done == 0 and seg.applied == []  # the caller scores them all


def test_outcomes_scored_under_definitions_no_longer_in_force_are_not_applied():
    step, states, watermark = _customers(12)
    seg = _Segmenting(step, states, watermark)
    child = ScoringProcess.start(step)
    assert child is not None
    in_force = [True]

    class _Switched:
        async def score(self, *args: Any) -> Any:
            result = await child.score(*args)  # type: ignore[union-attr]
            in_force[0] = False  # newer definitions switched in meanwhile
            return result

        def close(self) -> None:
            child.close()  # type: ignore[union-attr]

    parts, done = _run_in_child(seg, sorted(states), _Switched(), lambda: in_force[0])
    assert done == 0 and seg.applied == []


def test_a_hung_child_is_killed_and_the_backfill_left_to_the_worker(monkeypatch):
    """A chunk over ``CHILD_TIMEOUT`` (here a child that sleeps): the child is killed, the
    worker gets the rest, and no task is left with an error nobody retrieved."""
    import time

    from stream.worker import backfill_process

    step, states, watermark = _customers(12)
    seg = _Segmenting(step, states, watermark)
    monkeypatch.setattr(backfill_process, "CHILD_TIMEOUT", 1.0)
    monkeypatch.setattr(backfill_process, "score_chunk", lambda *a: time.sleep(30))  # in the child
    child = ScoringProcess.start(step)
    assert child is not None
    unretrieved: list[Any] = []

    async def pace(_: int) -> bool:
        return True

    async def run() -> Any:
        asyncio.get_running_loop().set_exception_handler(lambda _, ctx: unretrieved.append(ctx))
        started = time.monotonic()
        result = await rescore_in_child(
            seg, child, sorted(states), {0}, 5, lambda: True, lambda d, _: None, pace
        )
        return result, time.monotonic() - started

    (parts, done), took = asyncio.run(run())
    assert parts == {0} and done == 0 and seg.applied == [] and took < 10
    assert unretrieved == []
    assert child._failed
    # Killed: gone (or a zombie, not yet reaped by the pool's thread) within the deadline. By
    # pid, not is_alive(): the pool's own thread may reap it first, and is_alive() then stays
    # true.
    pids = [p.pid for p in multiprocessing.active_children() if p.pid]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_running(pid) for pid in pids):
        time.sleep(0.05)
    assert not any(_running(pid) for pid in pids)


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:  # gone, perhaps while being read
        return False


def test_a_chunk_waits_for_a_rebalance_that_began_while_a_batch_held_the_lock():
    """The in-process backfill (``rescore_in_chunks``, what the worker falls back to) takes a
    chunk's lock through ``locked_when_ready``, as the child's does: partitions were settled
    when it began waiting for the lock, and started moving before it got it."""
    from types import SimpleNamespace

    from stream.worker.rebuild import rescore_in_chunks

    settled = [True]
    scored: list[bool] = []
    answers: list[bool] = []  # what each readiness check answered

    def ready() -> bool:
        answers.append(settled[0])
        return settled[0]

    async def until(condition: Any) -> None:  # polled, with a deadline
        deadline = asyncio.get_running_loop().time() + 10
        while not condition() and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0)

    async def apply(outcome: StepOutcome) -> None:
        pass

    def score(ids: list[str]) -> StepOutcome:
        scored.append(settled[0])
        return StepOutcome(0)

    async def run() -> None:
        seg = SimpleNamespace(
            lock=asyncio.Lock(),
            table=SimpleNamespace(partition_of={"c-1": 0}),
            owned=lambda: {0},
            apply=apply,
        )
        await seg.lock.acquire()  # a live batch holds the lock
        task = asyncio.ensure_future(
            rescore_in_chunks(
                seg,  # type: ignore[arg-type]
                ["c-1"],
                {0},
                10,
                ready,
                lambda d, _: None,
                score,
            )
        )
        await until(lambda: answers)  # the chunk saw settled partitions; it waits for the lock
        settled[0] = False  # a rebalance begins
        seg.lock.release()
        # It takes the lock, sees partitions moving, lets the lock go and waits again.
        await until(lambda: answers.count(False) >= 2 or scored)
        assert scored == [] and not seg.lock.locked()  # not while partitions move; lock let go
        settled[0] = True
        assert await asyncio.wait_for(task, 10) == {0}
        assert not seg.lock.locked()

    asyncio.run(run())
    assert scored == [True]
