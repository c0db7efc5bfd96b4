"""The serving store over dicts: the Redis store's contract (``SegmentStore``) in one process,
for unit tests and tools that need no Redis."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import orjson

from models.step import RecordWrite
from stream.store.base import PartitionMark
from stream.store.codec import segment_text

__all__ = ["InMemorySegmentStore"]


@dataclass(frozen=True, slots=True)
class _Stored:
    """What the Redis record's header line holds, and the record as JSON."""

    event_ts: int
    applied: int
    segment: str
    members: frozenset[str]
    record: bytes


class InMemorySegmentStore:
    """``SegmentStore`` over dicts, with the Redis store's rules: a write older than the stored
    record by (event_ts, applied) is ignored, an equal one rewrites it; the size and membership
    counters move only with accepted writes and forgets; one caller per period gets a size
    snapshot; heartbeats expire. Values go through JSON as they do in Redis, so a caller gets
    fresh copies.

    ``clock`` (seconds, monotonic) times heartbeats and the snapshot period. Unlike Redis, the
    store is one process's and keeps records without a TTL.

    >>> import asyncio
    >>> store = InMemorySegmentStore()
    >>> asyncio.run(store.write_many([RecordWrite("c-1", 5, 1, 3, {"segment": 3}, ("cluster:3",))]))
    1
    >>> asyncio.run(store.get("c-1")), asyncio.run(store.members())
    ({'segment': 3}, {'cluster:3': 1})
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._records: dict[str, _Stored] = {}
        self._sizes: dict[str, int] = {}
        self._members: dict[str, int] = {}
        self._stats: dict[str, int] = {}
        self._model: bytes | None = None
        self._model_version = 0
        self._workers: dict[str, tuple[float, bytes]] = {}  # id: (expires at, heartbeat)
        self._watermark = 0
        self._history: dict[int, bytes] = {}
        self._history_lock_until = float("-inf")
        self._drift: list[bytes] = []  # newest first
        self._marks: dict[tuple[str, int], bytes] = {}  # (app id, partition): marker
        self._requests: dict[str, int] = {}  # app id: newest rebuild request

    async def ping(self) -> None:
        return None

    async def write_many(
        self,
        writes: Sequence[RecordWrite],
        counters: Mapping[str, int] = {},
        marks: Sequence[PartitionMark] = (),
    ) -> int:
        accepted = 0
        for w in writes:
            old = self._records.get(w.customer_id)
            if old is not None and (w.event_ts, w.applied) < (old.event_ts, old.applied):
                continue
            new = _Stored(
                w.event_ts,
                w.applied,
                segment_text(w.segment),
                frozenset(w.members),
                orjson.dumps(w.record),
            )
            self._move(old, new)
            self._records[w.customer_id] = new
            accepted += 1
        for name, by in counters.items():
            self._stats[name] = self._stats.get(name, 0) + by
        for m in marks:
            await self.put_partition_mark(m.app_id, m.partition, m.value, m.expected)
        return accepted

    async def forget_many(self, customer_ids: Sequence[str]) -> int:
        forgotten = 0
        for customer_id in customer_ids:
            old = self._records.pop(customer_id, None)
            if old is not None:
                self._move(old, None)
                forgotten += 1
        return forgotten

    def _move(self, old: _Stored | None, new: _Stored | None) -> None:
        """Move the counters from ``old`` (None: no record) to ``new`` (None: forgotten)."""
        old_seg = None if old is None else old.segment
        new_seg = None if new is None else new.segment
        if old_seg != new_seg:
            if old_seg is not None:
                self._sizes[old_seg] = self._sizes.get(old_seg, 0) - 1
            if new_seg is not None:
                self._sizes[new_seg] = self._sizes.get(new_seg, 0) + 1
        before = frozenset[str]() if old is None else old.members
        after = frozenset[str]() if new is None else new.members
        for m in before - after:
            self._members[m] = self._members.get(m, 0) - 1
        for m in after - before:
            self._members[m] = self._members.get(m, 0) + 1

    async def get(self, customer_id: str) -> dict[str, Any] | None:
        found = self._records.get(customer_id)
        return None if found is None else _loads(found.record)

    async def partition_marks(
        self, app_id: str, partitions: Sequence[int]
    ) -> tuple[int, dict[int, bytes | None]]:
        found = {p: self._marks.get((app_id, p)) for p in partitions}
        return self._requests.get(app_id, 0), found

    async def put_partition_mark(
        self, app_id: str, partition: int, value: bytes, expected: bytes | None = None
    ) -> bool:
        if expected is not None and self._marks.get((app_id, partition)) != expected:
            return False
        self._marks[(app_id, partition)] = bytes(value)
        return True

    async def request_rebuild(self, app_id: str) -> int:
        self._requests[app_id] = self._requests.get(app_id, 0) + 1
        return self._requests[app_id]

    async def model(self) -> dict[str, Any] | None:
        return None if self._model is None else _loads(self._model)

    async def model_version(self) -> int:
        return self._model_version

    async def publish_model(self, snapshot: Mapping[str, Any]) -> None:
        version = int(snapshot["version"])
        self._model = orjson.dumps(snapshot)
        self._model_version = version

    async def heartbeat(self, worker_id: str, info: Mapping[str, Any], ttl: int) -> None:
        self._workers[worker_id] = (self._clock() + ttl, orjson.dumps(info))

    async def size_snapshot(
        self, worker_id: str, watermark: int, bucket_ms: int, keep: int, period_s: float
    ) -> dict[str, Any] | None:
        now = self._clock()
        if now < self._history_lock_until:
            return None
        self._history_lock_until = now + max(0.001, period_s * 0.9)  # as the Redis lock
        self._watermark = max(self._watermark, watermark)
        newest = self._watermark
        if newest <= 0:
            return None
        bucket = newest - newest % bucket_ms
        snapshot = {
            "bucket": bucket,
            "watermark": newest,
            "at": int(time.time() * 1000),
            "customers": sum(self._sizes.values()),
            "sizes": dict(sorted(_positive(self._members).items())),
        }
        self._history[bucket] = orjson.dumps(snapshot)
        for old in sorted(self._history)[: max(0, len(self._history) - keep)]:
            del self._history[old]
        return snapshot

    async def push_drift(self, alerts: Sequence[Mapping[str, Any]], keep: int) -> None:
        if not alerts:
            return
        self._drift[:0] = [orjson.dumps(a) for a in reversed(alerts)]  # as LPUSH
        del self._drift[keep:]

    # Reads

    async def sizes(self) -> dict[str, int]:
        return _positive(self._sizes)

    async def members(self) -> dict[str, int]:
        return _positive(self._members)

    async def stats(self) -> dict[str, int]:
        return dict(self._stats)

    async def workers(self) -> list[dict[str, Any]]:
        now = self._clock()
        self._workers = {w: beat for w, beat in self._workers.items() if beat[0] > now}
        return [_loads(self._workers[w][1]) for w in sorted(self._workers)]

    async def drift(self, limit: int = 200) -> list[dict[str, Any]]:
        return [_loads(a) for a in self._drift[:limit]]

    async def history(self, limit: int = 500) -> list[dict[str, Any]]:
        return [_loads(self._history[b]) for b in sorted(self._history)[-limit:]]

    async def close(self) -> None:
        return None


def _positive(counts: Mapping[str, int]) -> dict[str, int]:
    return {k: v for k, v in counts.items() if v > 0}


def _loads(raw: bytes) -> dict[str, Any]:
    return cast(dict[str, Any], orjson.loads(raw))
