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


def test_a_chunk_read_while_a_write_is_being_delivered_sees_that_write_as_newer():
    """A write notes its keys once the broker has its records, just before the local store
    changes: a chunk read during the delivery reads the old state, so the write is newer."""
    table = _table()
    table.data["a"] = b"old"

    async def run() -> tuple[Touches, int, bytes | None]:
        loop = asyncio.get_running_loop()
        delivery = loop.create_future()

        handed: list[int] = []

        async def slow(records: Any) -> list[tuple[Any, int]]:
            handed.append(len(list(records)))
            return [(delivery, handed[-1])]

        table.batches.send = slow  # type: ignore[method-assign]
        touches = table.watch()
        writing = asyncio.ensure_future(table.write({"a": b"new"}))
        deadline = loop.time() + 10
        while not handed and loop.time() < deadline:  # until the write waits for the broker
            await asyncio.sleep(0)
        assert handed and not writing.done()
        read_at, read = touches.seq, table.load("a")  # a chunk is read meanwhile
        delivery.set_result(SimpleNamespace(partition=0, offset=0))
        await writing
        return touches, read_at, read

    touches, read_at, read = asyncio.run(run())
    assert read == b"old" and table.load("a") == b"new"
    assert touches.changed_since("a", read_at)


def test_every_watch_notes_every_key():
    table = _table()
    first, second = table.watch(), table.watch()

    def record(key: str) -> Any:
        message = SimpleNamespace(partition=0, key=key, value=b"1", offset=1, topic="t")
        return SimpleNamespace(key=key, value=b"1", message=message)

    table.apply_changelog_batch([record("a"), record("b")])  # the keys come as an iterator
    assert all(w.changed_since(k, 0) for w in (first, second) for k in ("a", "b"))


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


def test_stored_ids_lists_what_stored_does_with_rocksdb(tmp_path, monkeypatch):
    """``stored_ids`` reads RocksDB's keys alone (orjson-decoded) and must list what
    ``stored`` lists: the active partitions' customers, without Faust's offset key or the
    end markers, and only the partitions asked for."""
    from faust.types import TP

    from stream.worker.app import ROCKSDB_OPTIONS
    from stream.worker.faust_adapt import END_MARKER_KEY

    app = faust.App(
        "test-stored-ids", broker="kafka://127.0.0.1:1", store="rocksdb://", datadir=tmp_path
    )
    table = CustomerTable(
        app, name="profiles", default=None, end_markers=True, options=dict(ROCKSDB_OPTIONS)
    )
    rocks = table.rocks
    assert rocks is not None
    values = {0: {"c-1": b"{}", "c-\u00e9": b"{}"}, 1: {"c-2": b"{}"}, 2: {"c-3": b"{}"}}
    for partition, states in values.items():
        db = rocks._db_for_partition(partition)
        for key, value in states.items():
            db.put(rocks._encode_key(key), value)
        db.put(rocks._encode_key(END_MARKER_KEY), b"{}")  # (a tombstone's key is deleted)
        rocks.set_persisted_offset(TP(table.changelog_topic.get_topic_name(), partition), 7)
    actives = {TP("t", 0), TP("t", 1)}  # partition 2 is on disk, not assigned
    monkeypatch.setattr(app.assignor, "assigned_actives", lambda: actives)
    assert sorted(table.stored_ids()) == sorted(k for k, _ in table.stored())
    assert sorted(table.stored_ids()) == ["c-1", "c-2", "c-\u00e9"]
    assert sorted(table.stored_ids({1, 2})) == ["c-2"]
    assert table.partition_of["c-\u00e9"] == 0 and table.partition_of["c-2"] == 1
