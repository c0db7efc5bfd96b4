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
from stream.store.codec import decode_changes, flow_totals, pick_examples, segment_text
from stream.store.keys import CHANGES_KEPT, COUNTER_SHARDS, EXAMPLES_KEPT, shard_of

__all__ = ["InMemorySegmentStore"]


@dataclass(frozen=True, slots=True)
class _Stored:
    """What the Redis record's header line holds, and the record as JSON."""

    event_ts: int
    applied: int
    segment: str
    members: frozenset[str]
    record: bytes


class _Counts:
    """What the write script keeps beside the records: size and membership counters, flow
    totals, examples per (shard, segment), each customer's changes (lines, newest first)."""

    def __init__(self) -> None:
        self.sizes: dict[str, int] = {}
        self.members: dict[str, int] = {}
        self.flows: dict[str, int] = {}  # in:<segment> / out:<segment>: totals
        self.examples: dict[tuple[int, str], list[str]] = {}  # (shard, segment): ids
        self.changes: dict[str, bytes] = {}  # customer: lines, newest first

    def move(
        self, customer_id: str, old: _Stored | None, new: _Stored | None, head: str = ""
    ) -> None:
        """Move the counters from ``old`` (None: no record) to ``new`` (None: forgotten), and
        with them the flows, the examples and (with ``head``) the customer's changes list."""
        old_seg = None if old is None else old.segment
        new_seg = None if new is None else new.segment
        if old_seg != new_seg:
            if old_seg is not None:
                self.sizes[old_seg] = self.sizes.get(old_seg, 0) - 1
            if new_seg is not None:
                self.sizes[new_seg] = self.sizes.get(new_seg, 0) + 1
        before = frozenset[str]() if old is None else old.members
        after = frozenset[str]() if new is None else new.members
        gone, came = sorted(before - after), sorted(after - before)
        shard = shard_of(customer_id)
        for m in gone:
            self.members[m] = self.members.get(m, 0) - 1
            self.flows[f"out:{m}"] = self.flows.get(f"out:{m}", 0) + 1
            kept = [c for c in self.examples.get((shard, m), []) if c != customer_id]
            self.examples[(shard, m)] = kept
        for m in came:
            self.members[m] = self.members.get(m, 0) + 1
            self.flows[f"in:{m}"] = self.flows.get(f"in:{m}", 0) + 1
            kept = self.examples.setdefault((shard, m), [])
            if len(kept) < EXAMPLES_KEPT:
                kept.append(customer_id)
        if head and (gone or came):
            moves = [f"-{m}" for m in gone] + [f"+{m}" for m in came]
            lines = [f"{head} ".encode() + orjson.dumps(moves)]
            lines += self.changes.get(customer_id, b"").split(b"\n")[: CHANGES_KEPT - 1]
            self.changes[customer_id] = b"\n".join(line for line in lines if line)


class InMemorySegmentStore:
    """``SegmentStore`` over dicts, with the Redis store's rules: a write older than the stored
    record by (event_ts, applied) is ignored, an equal one rewrites it; the size and membership
    counters, flow totals, examples and changes lists move only with accepted writes and
    forgets; one caller per period gets a size
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
        self._aliases: dict[str, str] = {}  # merged id: the customer it was merged into
        self._counts = _Counts()
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
            at = int(w.record.get("evaluated_at") or w.event_ts)
            self._counts.move(w.customer_id, old, new, f"{at} {w.applied}")
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
                self._counts.move(customer_id, old, None)
                self._counts.changes.pop(customer_id, None)
                forgotten += 1
        return forgotten

    async def get(self, customer_id: str) -> dict[str, Any] | None:
        found = self._records.get(customer_id)
        if found is None and customer_id in self._aliases:
            found = self._records.get(self._aliases[customer_id])
        return None if found is None else _loads(found.record)

    async def merge_many(self, aliases: Mapping[str, str]) -> int:
        erased = await self.forget_many(list(aliases))
        self._aliases.update(aliases)
        return erased

    async def unalias_many(self, customer_ids: Sequence[str]) -> None:
        for customer_id in customer_ids:
            self._aliases.pop(customer_id, None)

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
            "customers": sum(self._counts.sizes.values()),
            "sizes": dict(sorted(_positive(self._counts.members).items())),
        }
        snapshot["entered_total"], snapshot["exited_total"] = flow_totals(self._counts.flows)
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
        return _positive(self._counts.sizes)

    async def members(self) -> dict[str, int]:
        return _positive(self._counts.members)

    async def stats(self) -> dict[str, int]:
        return dict(self._stats)

    async def changes(self, customer_id: str, limit: int | None = None) -> list[dict[str, Any]]:
        return decode_changes(customer_id, self._counts.changes.get(customer_id), limit)

    async def examples(self, segment: str, limit: int = 10) -> list[str]:
        found = [self._counts.examples.get((s, segment)) for s in range(COUNTER_SHARDS)]
        return pick_examples((orjson.dumps(ids) if ids else None for ids in found), limit)

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
