"""The worker's serving store in Redis: one string per customer, written in pipelined batches
by atomic scripts (``stream.store.scripts``), under the keys of ``stream.store.keys``."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, cast

import orjson
import redis
import redis.asyncio as aioredis

from models.step import RecordWrite
from stream.store import scripts
from stream.store.codec import counts, decode_record, record_value, segment_text
from stream.store.errors import REDIS_OUTAGE, StoreUnavailable
from stream.store.keys import Keys

log = logging.getLogger(__name__)

__all__ = ["REDIS_OUTAGE", "RedisSegmentStore", "retry_forever"]


class RedisSegmentStore:
    """The ``SegmentStore`` in Redis, used by the worker: one pipeline per batch.

    Redis errors other than ``ping``'s pass through (``REDIS_OUTAGE``), for ``retry_forever``
    or the worker's periodic jobs to handle.
    """

    def __init__(self, url: str, prefix: str = "seg:") -> None:
        self.url = url
        self.keys = Keys(prefix)
        self.client: aioredis.Redis = aioredis.Redis.from_url(url)
        self._write = self.client.register_script(scripts.WRITE)
        self._forget = self.client.register_script(scripts.FORGET)
        self._watermark = self.client.register_script(scripts.WATERMARK)

    async def ping(self) -> None:
        try:
            await self.client.ping()
        except redis.RedisError as exc:
            raise StoreUnavailable.at(self.url, exc, "is not reachable") from exc

    async def write_many(
        self, writes: Sequence[RecordWrite], counters: Mapping[str, int] = {}
    ) -> int:
        if not writes and not counters:
            return 0
        k = self.keys
        async with self.client.pipeline(transaction=False) as pipe:
            for w in writes:
                value, segments = record_value(w)
                await self._write(
                    keys=[k.record(w.customer_id), k.sizes, k.members],
                    args=[w.event_ts, w.applied, segment_text(w.segment), value, segments],
                    client=pipe,
                )
            for name, by in counters.items():
                pipe.hincrby(k.stats, name, by)
            results = await pipe.execute()
        return sum(1 for r in results[: len(writes)] if r == 1)

    async def forget_many(self, customer_ids: Sequence[str]) -> int:
        if not customer_ids:
            return 0
        k = self.keys
        async with self.client.pipeline(transaction=False) as pipe:
            for customer_id in customer_ids:
                await self._forget(
                    keys=[k.record(customer_id), k.sizes, k.members], args=[], client=pipe
                )
            results = await pipe.execute()
        return sum(1 for r in results if r == 1)

    async def get(self, customer_id: str) -> dict[str, Any] | None:
        raw = cast(bytes | None, await self.client.get(self.keys.record(customer_id)))
        return None if raw is None else decode_record(raw)

    async def model(self) -> dict[str, Any] | None:
        raw = await self.client.get(self.keys.model)
        return None if raw is None else cast(dict[str, Any], orjson.loads(raw))

    async def model_version(self) -> int:
        raw = await self.client.get(self.keys.model_version)
        return int(raw) if raw else 0

    async def publish_model(self, snapshot: Mapping[str, Any]) -> None:
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.set(self.keys.model, orjson.dumps(snapshot))
            pipe.set(self.keys.model_version, snapshot["version"])
            await pipe.execute()

    async def heartbeat(self, worker_id: str, info: Mapping[str, Any], ttl: int) -> None:
        await self.client.set(self.keys.worker(worker_id), orjson.dumps(info), ex=ttl)

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
        members = counts(await self.client.hgetall(k.members))
        clusters = await self.client.hvals(k.sizes)
        bucket = newest - newest % bucket_ms
        snapshot = {
            "bucket": bucket,
            "watermark": newest,
            "at": int(time.time() * 1000),
            "customers": sum(int(v) for v in clusters),
            "sizes": dict(sorted(members.items())),
        }
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(k.history, str(bucket), orjson.dumps(snapshot))
            pipe.zadd(k.history_index, {str(bucket): bucket})
            pipe.zrange(k.history_index, 0, -keep - 1)
            _, _, old = await pipe.execute()
        if old:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.hdel(k.history, *old)
                pipe.zrem(k.history_index, *old)
                await pipe.execute()
        return snapshot

    async def push_drift(self, alerts: Sequence[Mapping[str, Any]], keep: int) -> None:
        if not alerts:
            return
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.lpush(self.keys.drift, *(orjson.dumps(a) for a in alerts))
            pipe.ltrim(self.keys.drift, 0, keep - 1)
            await pipe.execute()

    # Reads (the contract test's, and any async reader's)

    async def sizes(self) -> dict[str, int]:
        return counts(await self.client.hgetall(self.keys.sizes))

    async def members(self) -> dict[str, int]:
        return counts(await self.client.hgetall(self.keys.members))

    async def stats(self) -> dict[str, int]:
        return counts(await self.client.hgetall(self.keys.stats), positive=False)

    async def workers(self) -> list[dict[str, Any]]:
        """Live workers' heartbeats, by worker id."""
        found = sorted({k async for k in self.client.scan_iter(match=self.keys.workers_pattern)})
        values = await self.client.mget(found) if found else []
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

    async def close(self) -> None:
        await self.client.aclose()


async def retry_forever(
    what: str,
    func: Callable[..., Awaitable[Any]],
    *args: Any,
    first_delay: float = 0.1,
    max_delay: float = 5.0,
) -> Any:
    """Await ``func(*args)`` until it succeeds, backing off: an outage stalls, never drops."""
    delay = first_delay
    started = time.monotonic()
    while True:
        try:
            return await func(*args)
        except REDIS_OUTAGE as exc:
            log.warning(
                "%s failed (%s); retrying in %.1fs (down %.0fs)",
                what,
                exc,
                delay,
                time.monotonic() - started,
            )
            await asyncio.sleep(delay)
            delay = min(max_delay, delay * 2)
