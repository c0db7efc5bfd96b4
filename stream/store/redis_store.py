"""The worker's serving store in Redis or a Redis Cluster: one string per customer, written in
pipelined batches by atomic scripts (``stream.store.scripts``), under the keys of
``stream.store.keys``."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, cast

import orjson
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError
from redis.typing import EncodableT

from models.step import RecordWrite
from stream.store import scripts
from stream.store.aliases import read_record
from stream.store.base import PartitionMark
from stream.store.codec import (
    counts,
    decode_changes,
    decode_record,
    flow_totals,
    pick_examples,
    sum_counts,
    write_args,
)
from stream.store.connect import AsyncClient, async_client
from stream.store.errors import REDIS_ERRORS, REDIS_OUTAGE, StoreUnavailable, is_outage
from stream.store.keys import CHANGES_KEPT, EXAMPLES_KEPT, Keys, shard_of

log = logging.getLogger(__name__)

__all__ = ["REDIS_OUTAGE", "RedisSegmentStore", "retry_forever"]

_NOSCRIPT_ROUNDS = 5
#: A worker id leaves the ``workers`` index this long after its heartbeat expired (ms), by the
#: clock of the worker that prunes: an hour, so that workers' clocks apart by less never drop
#: each other's live entries; readers skip an id whose heartbeat has expired meanwhile.
WORKERS_FORGOTTEN_MS = 3_600_000

#: Moves a partition marker (``PartitionMark``): KEYS marker; ARGV expected, new value. Sets
#: it only if it holds the expected value (never creates a missing one). Returns 1 if set.
_MARK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

#: One shard's members and flows hashes, read together (KEYS members, flows): a write moves
#: both in one script, so read together they agree (a size is its entries minus its exits).
_SHARD_COUNTS = """
return {redis.call('HGETALL', KEYS[1]), redis.call('HGETALL', KEYS[2])}
"""

_Call = tuple[AsyncScript, Sequence[str], Sequence[EncodableT]]


def _noscript(result: object) -> bool:
    return isinstance(result, NoScriptError)


def _pairs(flat: Sequence[bytes]) -> dict[bytes, bytes]:
    """A hash as a script returns it (a flat field, value list) as a dict."""
    return dict(zip(flat[::2], flat[1::2], strict=True))


class _Reads:
    """The store's reads (the contract test's, and any async reader's)."""

    client: AsyncClient
    keys: Keys

    async def sizes(self) -> dict[str, int]:
        return await self._sum(self.keys.all_sizes)

    async def members(self) -> dict[str, int]:
        return await self._sum(self.keys.all_members)

    async def _sum(self, hashes: Sequence[str], positive: bool = True) -> dict[str, int]:
        """The counter hashes of every shard, summed (one pipeline)."""
        async with self.client.pipeline(transaction=False) as pipe:
            for name in hashes:
                pipe.hgetall(name)
            found = await pipe.execute()
        return sum_counts(found, positive)

    async def stats(self) -> dict[str, int]:
        return counts(await self.client.hgetall(self.keys.stats), positive=False)

    async def changes(self, customer_id: str, limit: int | None = None) -> list[dict[str, Any]]:
        key = self.keys.changes(shard_of(customer_id))
        raw = cast(bytes | None, await self.client.hget(key, customer_id))
        return decode_changes(customer_id, raw, limit)

    async def examples(self, segment: str, limit: int = 10) -> list[str]:
        async with self.client.pipeline(transaction=False) as pipe:
            for name in self.keys.all_examples:
                pipe.hget(name, segment)
            found = await pipe.execute()
        return pick_examples(found, limit)

    async def workers(self) -> list[dict[str, Any]]:
        """Live workers' heartbeats, by worker id (found in the ``workers`` index)."""
        ids = sorted(cast(list[bytes], await self.client.zrange(self.keys.workers, 0, -1)))
        if not ids:
            return []
        found = [self.keys.worker(i.decode()) for i in ids]
        if isinstance(self.client, AsyncRedisCluster):
            values = await self.client.mget_nonatomic(found)
        else:
            values = await self.client.mget(found)
        return [cast(dict[str, Any], orjson.loads(v)) for v in values if v]

    async def drift(self, limit: int = 200) -> list[dict[str, Any]]:
        raw = await self.client.lrange(self.keys.drift, 0, limit - 1)
        return [cast(dict[str, Any], orjson.loads(v)) for v in raw]

    async def history(self, limit: int = 500) -> list[dict[str, Any]]:
        buckets = cast(list[bytes], await self.client.zrange(self.keys.history_index, -limit, -1))
        if not buckets:
            return []
        values = await self.client.hmget(self.keys.history, buckets)
        return [cast(dict[str, Any], orjson.loads(v)) for v in values if v]


class RedisSegmentStore(_Reads):
    """The ``SegmentStore`` in Redis, used by the worker: one pipeline per batch.

    ``url`` is a single Redis or a Redis Cluster (``stream.store.connect``); the same keys and
    scripts serve both. Redis errors other than ``ping``'s pass through (``REDIS_OUTAGE``), for
    ``retry_forever`` or the worker's periodic jobs to handle.
    """

    def __init__(self, url: str, prefix: str = "seg:", changes_kept: int = CHANGES_KEPT) -> None:
        self.url = url
        self.keys = Keys(prefix)
        self.changes_kept = changes_kept  # lines of each customer's recent changes; 0: none
        self.client: AsyncClient = async_client(url)
        self.cluster = isinstance(self.client, AsyncRedisCluster)
        self._write = self.client.register_script(scripts.WRITE)
        self._forget = self.client.register_script(scripts.FORGET)
        self._watermark = self.client.register_script(scripts.WATERMARK)
        self._mark = self.client.register_script(_MARK)
        self._shard_counts = self.client.register_script(_SHARD_COUNTS)

    async def ping(self) -> None:
        try:
            await self.client.ping()
        except REDIS_ERRORS as exc:
            raise StoreUnavailable.at(self.url, exc, "is not reachable") from exc

    async def write_many(
        self,
        writes: Sequence[RecordWrite],
        counters: Mapping[str, int] = {},
        marks: Sequence[PartitionMark] = (),
    ) -> int:
        if not writes and not counters and not marks:
            return 0
        # One call per counter shard, its customers' writes in the batch's order (a customer's
        # writes stay in order: they share a shard).
        by_shard: dict[int, list[RecordWrite]] = {}
        for w in writes:
            by_shard.setdefault(shard_of(w.customer_id), []).append(w)
        calls: list[_Call] = []
        for shard, shard_writes in by_shard.items():
            keys = [*self.keys.shard_keys(shard)]
            args: list[EncodableT] = [self.changes_kept, EXAMPLES_KEPT]
            for w in shard_writes:
                keys.append(self.keys.record(w.customer_id))
                args.extend(write_args(w))
            calls.append((self._write, keys, args))
        for m in marks:
            key = self.keys.partition_mark(m.app_id, m.partition)
            calls.append((self._mark, (key,), (m.expected, m.value)))
        results = await self._run_script(calls, counters)
        return sum(sum(1 for r in written if r == 1) for written in results[: len(by_shard)])

    async def forget_many(self, customer_ids: Sequence[str]) -> int:
        if not customer_ids:
            return 0
        calls: list[_Call] = [(self._forget, self.keys.script_keys(c), (c,)) for c in customer_ids]
        results = await self._run_script(calls, {})
        return sum(1 for r in results if r == 1)

    async def _run_script(self, calls: Sequence[_Call], counters: Mapping[str, int]) -> list[Any]:
        """Run each call's script (script, keys, args) in one pipeline, in order, and add
        ``counters`` to the status counters; the scripts' results.

        By EVALSHA: a server that does not know a script (a fresh one, or a replica just
        promoted: script caches are not replicated) answers NOSCRIPT; the scripts are then
        loaded (on every master of a cluster) and exactly the calls refused run again, in
        their order, so nothing is applied twice. Any other error is raised.
        """
        # EVALSHA by execute_command: redis-py's cluster pipeline blocks its ``evalsha`` method
        # (for the NOSCRIPT answers handled here), not the command, which it routes by its keys.
        async with self.client.pipeline(transaction=False) as pipe:
            for script, keys, args in calls:
                pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
            for name, by in counters.items():
                pipe.hincrby(self.keys.stats, name, by)
            results = list(await pipe.execute(raise_on_error=False))
        for _ in range(_NOSCRIPT_ROUNDS):  # another failover may come between load and run
            refused = [i for i, r in enumerate(results[: len(calls)]) if _noscript(r)]
            if not refused:
                break
            for source in {calls[i][0].script for i in refused}:
                await self.client.script_load(source)
            async with self.client.pipeline(transaction=False) as pipe:
                for i in refused:
                    script, keys, args = calls[i]
                    pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
                again = await pipe.execute(raise_on_error=False)
            for i, result in zip(refused, again, strict=True):
                results[i] = result
        for result in results:
            if isinstance(result, Exception):
                raise result
        return results[: len(calls)]

    async def get(self, customer_id: str) -> dict[str, Any] | None:
        raw = await read_record(self.client, self.keys, customer_id)
        return None if raw is None else decode_record(raw)

    async def merge_many(self, aliases: Mapping[str, str]) -> int:
        """Merged ids (``models.identity``): each one's record erased as ``forget_many``
        does, then its alias set to the customer it was merged into. Returns the records
        erased."""
        if not aliases:
            return 0
        erased = await self.forget_many(list(aliases))
        pipe = self.client.pipeline(transaction=False)
        for merged_id, into in aliases.items():
            pipe.set(self.keys.alias(merged_id), into)
        await pipe.execute()
        return erased

    async def unalias_many(self, customer_ids: Sequence[str]) -> None:
        """Drop the aliases of these ids (erased: ``segmenter forget``)."""
        if customer_ids:
            pipe = self.client.pipeline(transaction=False)
            for customer_id in customer_ids:
                pipe.delete(self.keys.alias(customer_id))
            await pipe.execute()

    async def partition_marks(
        self, app_id: str, partitions: Sequence[int]
    ) -> tuple[int, dict[int, bytes | None]]:
        keys = [self.keys.rebuild_request(app_id)]
        keys += [self.keys.partition_mark(app_id, p) for p in partitions]
        if isinstance(self.client, AsyncRedisCluster):
            values = await self.client.mget_nonatomic(keys)
        else:
            values = await self.client.mget(keys)
        request = int(values[0]) if values[0] else 0
        return request, dict(zip(partitions, values[1:], strict=True))

    async def put_partition_mark(
        self, app_id: str, partition: int, value: bytes, expected: bytes | None = None
    ) -> bool:
        key = self.keys.partition_mark(app_id, partition)
        if expected is None:
            return bool(await self.client.set(key, value))
        calls: list[_Call] = [(self._mark, (key,), (expected, value))]
        return bool((await self._run_script(calls, {}))[0] == 1)

    async def request_rebuild(self, app_id: str) -> int:
        return int(await self.client.incr(self.keys.rebuild_request(app_id)))

    async def model(self) -> dict[str, Any] | None:
        raw = await self.client.get(self.keys.model)
        return None if raw is None else cast(dict[str, Any], orjson.loads(raw))

    async def model_version(self) -> int:
        raw = await self.client.get(self.keys.model_version)
        return int(raw) if raw else 0

    async def publish_model(self, snapshot: Mapping[str, Any]) -> None:
        # The snapshot first, then its version (the two keys may be on different cluster
        # nodes): a reader that sees a version finds that snapshot or a newer one.
        await self.client.set(self.keys.model, orjson.dumps(snapshot))
        await self.client.set(self.keys.model_version, snapshot["version"])

    async def heartbeat(self, worker_id: str, info: Mapping[str, Any], ttl: int) -> None:
        # The heartbeat, then its entry in the index readers list workers from (two slots on
        # a cluster: a reader may find an id whose heartbeat expired, and skips it).
        now = int(time.time() * 1000)
        index = self.keys.workers
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.set(self.keys.worker(worker_id), orjson.dumps(info), ex=ttl)
            pipe.zadd(index, {worker_id: now + ttl * 1000})
            pipe.zremrangebyscore(index, "-inf", now - WORKERS_FORGOTTEN_MS)
            await pipe.execute()

    async def size_snapshot(
        self, worker_id: str, watermark: int, bucket_ms: int, keep: int, period_s: float
    ) -> dict[str, Any] | None:
        """Record the sizes of every segment in this event-time bucket, once per period.

        Every worker calls this on a timer; the first in each period (a short-lived Redis
        lock) writes the snapshot and gets it back to publish, the others get None. A later
        snapshot in the same bucket replaces the earlier one, so a bucket holds its last sizes.
        """
        k = self.keys
        lock_ms = max(1, int(period_s * 900))
        if not await self.client.set(k.history_lock, worker_id, nx=True, px=lock_ms):
            return None
        newest = int(await self._watermark(keys=[k.watermark], args=[watermark]))
        if newest <= 0:
            return None
        calls: list[_Call] = [
            (self._shard_counts, pair, ()) for pair in zip(k.all_members, k.all_flows, strict=True)
        ]
        shards = await self._run_script(calls, {})
        members = sum_counts(_pairs(shard[0]) for shard in shards)
        entered, exited = flow_totals(sum_counts(_pairs(shard[1]) for shard in shards))
        clusters = await self._sum(k.all_sizes, positive=False)
        bucket = newest - newest % bucket_ms
        snapshot = {
            "bucket": bucket,
            "watermark": newest,
            "at": int(time.time() * 1000),
            "customers": sum(clusters.values()),
            "sizes": dict(sorted(members.items())),
            "entered_total": entered,
            "exited_total": exited,
        }
        # One key at a time, in an order that leaves readers (index first, then the hash) a
        # consistent view: the snapshot before its index entry, the index entry before it goes.
        await self.client.hset(k.history, str(bucket), orjson.dumps(snapshot))
        await self.client.zadd(k.history_index, {str(bucket): bucket})
        old = cast(list[bytes], await self.client.zrange(k.history_index, 0, -keep - 1))
        if old:
            await self.client.zrem(k.history_index, *old)
            await self.client.hdel(k.history, *old)
        return snapshot

    async def push_drift(self, alerts: Sequence[Mapping[str, Any]], keep: int) -> None:
        if not alerts:
            return
        async with self.client.pipeline(transaction=True) as pipe:  # one key: one slot
            pipe.lpush(self.keys.drift, *(orjson.dumps(a) for a in alerts))
            pipe.ltrim(self.keys.drift, 0, keep - 1)
            await pipe.execute()

    async def close(self) -> None:
        await self.client.aclose()


async def retry_forever(
    what: str,
    func: Callable[..., Awaitable[Any]],
    *args: Any,
    first_delay: float = 0.1,
    max_delay: float = 5.0,
) -> Any:
    """Await ``func(*args)`` until it succeeds, backing off: an outage stalls, never drops.

    An outage is what ``is_outage`` says: any of ``REDIS_OUTAGE`` (Redis away, and what a
    Redis Cluster answers while a master fails over: CLUSTERDOWN, TRYAGAIN, MOVED, READONLY, a
    slot not covered), or a connection closed under a write.
    """
    delay = first_delay
    started = time.monotonic()
    while True:
        try:
            return await func(*args)
        except Exception as exc:
            if not is_outage(exc):
                raise
            log.warning(
                "%s failed (%s); retrying in %.1fs (down %.0fs)",
                what,
                exc,
                delay,
                time.monotonic() - started,
            )
            await asyncio.sleep(delay)
            delay = min(max_delay, delay * 2)
