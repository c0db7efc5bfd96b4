"""The profile table notes every key whose state changes while a backfill watches it
(``CustomerTable.watch``): the backfill's child scores a chunk's states, and what the table
changed meanwhile is scored again rather than overwritten with the child's stale outcome. Both
ways a state changes are checked on the real table class, in memory: a batch's write, and
changelog records applied in a recovery. The producer is a stand-in (no broker here: the
integration tests' live-definitions backfill runs it on Tansu)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import faust

from stream.worker.faust_adapt import CustomerTable, Touches


def _table() -> CustomerTable:
    app = faust.App("test-state-watch", broker="kafka://127.0.0.1:1", store="memory://")
    table = CustomerTable(app, name="profiles", default=None, end_markers=False)

    async def delivered(records: Any) -> list[tuple[Any, int]]:
        sent = list(records)
        future = asyncio.get_running_loop().create_future()
        future.set_result(SimpleNamespace(partition=0, offset=0))
        return [(future, len(sent))]

    table.batches.send = delivered  # type: ignore[method-assign]
    table.partition_of.update({"a": 0, "b": 0, "c": 0})
    return table


def test_a_write_is_noted_for_the_keys_it_changes_only():
    table = _table()

    async def run() -> tuple[Touches, int]:
        await table.write({"a": b"1"})  # before the watch: not noted
        touches = table.watch()
        read_at = touches.seq
        await table.write({"b": b"2", "c": None})
        return touches, read_at

    touches, read_at = asyncio.run(run())
    assert not touches.changed_since("a", read_at)
    assert touches.changed_since("b", read_at) and touches.changed_since("c", read_at)
    # A chunk read after that write sees it as old news.
    assert not touches.changed_since("b", touches.seq)
    table.unwatch(touches)
    asyncio.run(table.write({"a": b"3"}))
    assert not touches.changed_since("a", read_at)  # no longer watched


def test_changelog_records_applied_in_a_recovery_are_noted():
    table = _table()
    touches = table.watch()
    read_at = touches.seq

    def record(key: str, value: bytes) -> Any:
        message = SimpleNamespace(partition=0, key=key, value=value, offset=7, topic="t")
        return SimpleNamespace(key=key, value=value, message=message)

    table.apply_changelog_batch([record("a", b"9")])
    assert touches.changed_since("a", read_at) and not touches.changed_since("b", read_at)
    assert table.load("a") == b"9"
