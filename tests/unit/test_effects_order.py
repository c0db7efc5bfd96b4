"""The order in which a batch's effects reach the outside (``stream.worker.effects``): store,
then topics, then the changelog, each only once the one before it is done, while the states
are encoded during the store write (no broker or Redis here: the store, the producer and the
table are stand-ins that record what reaches them; the integration tests run the real ones)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from models.features import CustomerProfile
from models.segments import SegmentChange
from models.step import StepOutcome
from stream.store import InMemorySegmentStore
from stream.worker import effects as effects_module
from stream.worker.effects import Effects
from stream.worker.faust_adapt import Record
from stream.worker.metrics import WorkerMetrics


class _GatedStore(InMemorySegmentStore):
    """A store whose batch write waits until the test opens the gate."""

    def __init__(self, log: list[str], gate: asyncio.Event) -> None:
        super().__init__()
        self.log, self.gate = log, gate

    async def write_many(self, *args: Any, **kwargs: Any) -> int:
        self.log.append("store: started")
        await self.gate.wait()
        self.log.append("store: done")
        return await super().write_many(*args, **kwargs)


class _Table:
    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.partition_of: dict[str, int] = {}
        self.written: dict[str, bytes | None] = {}

    async def write(self, values: Mapping[str, bytes | None]) -> None:
        self.log.append("table")
        self.written.update(values)


def _effects(log: list[str], gate: asyncio.Event) -> tuple[Effects, _Table]:
    async def send_many(records: list[Record]) -> list[tuple[asyncio.Future[None], int]]:
        log.append("topics: " + ",".join(sorted({r[0] for r in records})))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return [(done, len(records))]

    table = _Table(log)
    topics = {"changes": "segment-changes", "samples": "segment-samples"}
    store = _GatedStore(log, gate)
    return Effects(store, table, send_many, topics, "w", WorkerMetrics()), table  # type: ignore[arg-type]


def _outcome() -> StepOutcome:
    change = SegmentChange("c", "rule:vip", "entered", False, True, 5, "r", 1)
    return StepOutcome(watermark=5, changes=[change], states={"c": CustomerProfile("c")})


def test_topics_and_changelog_wait_for_the_store_write_while_states_are_encoded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    log: list[str] = []
    encode = effects_module.encode_profile

    def logged_encode(profile: CustomerProfile | None) -> bytes | None:
        log.append("encode")
        return encode(profile)

    monkeypatch.setattr(effects_module, "encode_profile", logged_encode)

    async def run() -> tuple[list[str], list[str], _Table]:
        gate = asyncio.Event()
        effects, table = _effects(log, gate)
        applying = asyncio.create_task(effects.apply(_outcome()))
        for _ in range(20):  # every step the apply can take while the store write waits
            await asyncio.sleep(0)
        while_waiting = list(log)
        gate.set()
        await applying
        return while_waiting, list(log), table

    while_waiting, done, table = asyncio.run(run())
    # During the store write: the states encoded, nothing handed to a topic or the table.
    assert while_waiting == ["store: started", "encode"]
    assert done == [
        "store: started",
        "encode",
        "store: done",
        "topics: segment-changes,segment-samples",
        "table",
    ]
    assert table.written["c"] is not None


def test_a_failed_store_write_hands_nothing_on(monkeypatch: pytest.MonkeyPatch) -> None:
    class _Broken(Exception):
        pass

    async def run() -> list[str]:
        log: list[str] = []
        gate = asyncio.Event()
        effects, _ = _effects(log, gate)

        async def broken(*args: Sequence[Any]) -> int:
            log.append("store: failed")
            raise _Broken

        monkeypatch.setattr(effects.store, "write_many", broken)
        with pytest.raises(_Broken):
            await effects.apply(_outcome())
        return log

    assert asyncio.run(run()) == ["store: failed"]


def test_a_failure_while_encoding_leaves_no_store_write_running(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A bug in the encoding (or a cancellation there) stops the store write that waits on
    Redis, and leaves no task behind: nothing after the store has happened, and the batch is
    read again."""

    def broken(profile: CustomerProfile | None) -> bytes | None:
        raise ValueError("no")

    monkeypatch.setattr(effects_module, "encode_profile", broken)

    async def run() -> tuple[list[str], list[asyncio.Task[object]]]:
        log: list[str] = []
        gate = asyncio.Event()  # never opened: the store write waits on Redis throughout
        effects, _ = _effects(log, gate)
        with pytest.raises(ValueError):  # not a TimeoutError: the write did not hold it
            await asyncio.wait_for(effects.apply(_outcome()), 10)
        pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        return log, pending

    log, pending = asyncio.run(run())
    assert log == ["store: started"] and pending == []
