"""Readers of the serving store: ``SegmentClient`` (sync: CLI, read API, tools) and
``AsyncSegmentClient`` (one customer's record from asyncio code). Every Redis error becomes
``StoreUnavailable``."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, cast

import orjson
import redis
import redis.asyncio as aioredis

from stream.store.codec import counts, decode_record
from stream.store.errors import StoreUnavailable, unavailable_on_error
from stream.store.keys import Keys

__all__ = ["AsyncSegmentClient", "SegmentClient"]


class SegmentClient:
    """Read one customer's segment record: one round trip (GET).

    >>> client = SegmentClient("redis://127.0.0.1:6379/0")  # doctest: +SKIP
    >>> client.get("c-42")["segment"]                       # doctest: +SKIP
    3
    """

    def __init__(self, url: str, prefix: str = "seg:", timeout: float = 1.0) -> None:
        self.url = url
        self.keys = Keys(prefix)
        self.client = redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout
        )

    def ping(self) -> None:
        try:
            self.client.ping()
        except redis.RedisError as exc:
            raise StoreUnavailable.at(self.url, exc, "is not reachable") from exc

    @unavailable_on_error
    def get(self, customer_id: str) -> dict[str, Any] | None:
        raw = cast(bytes | None, self.client.get(self.keys.record(customer_id)))
        return None if raw is None else decode_record(raw)

    @unavailable_on_error
    def iter_records(self, batch: int = 1000) -> Iterator[dict[str, Any]]:
        """Every customer record (SCAN, then one MGET per batch of keys)."""
        keys: list[bytes] = []
        for key in self.client.scan_iter(match=self.keys.records_pattern, count=batch):
            keys.append(key)
            if len(keys) >= batch:
                yield from self._fetch(keys)
                keys = []
        if keys:
            yield from self._fetch(keys)

    def _fetch(self, keys: Sequence[bytes]) -> Iterator[dict[str, Any]]:
        values = cast(list[bytes | None], self.client.mget(keys))
        for raw in values:
            if raw is not None:  # forgotten since the SCAN
                yield decode_record(raw)

    @unavailable_on_error
    def sizes(self) -> dict[str, int]:
        """Customers in each cluster."""
        return counts(cast(dict[bytes, bytes], self.client.hgetall(self.keys.sizes)))

    @unavailable_on_error
    def members(self) -> dict[str, int]:
        """Customers in each segment of any kind (``cluster:3``, ``rule:vip``, ``persona:...``)."""
        return counts(cast(dict[bytes, bytes], self.client.hgetall(self.keys.members)))

    @unavailable_on_error
    def history(self, limit: int = 500) -> list[dict[str, Any]]:
        """Size snapshots, oldest first: at most the newest ``limit`` event-time buckets."""
        buckets = cast(list[bytes], self.client.zrange(self.keys.history_index, -limit, -1))
        if not buckets:
            return []
        values = cast(list[bytes | None], self.client.hmget(self.keys.history, buckets))
        return [orjson.loads(v) for v in values if v]

    @unavailable_on_error
    def drift(self, limit: int = 200) -> list[dict[str, Any]]:
        """The newest drift alerts, newest first."""
        values = cast(list[bytes], self.client.lrange(self.keys.drift, 0, limit - 1))
        return [orjson.loads(v) for v in values]

    @unavailable_on_error
    def customers(self) -> int:
        """Customers with a record (the sum of the segment-size counters, kept atomically)."""
        return sum(int(v) for v in cast(list[bytes], self.client.hvals(self.keys.sizes)))

    @unavailable_on_error
    def stats(self) -> dict[str, int]:
        raw = cast(dict[bytes, bytes], self.client.hgetall(self.keys.stats))
        return counts(raw, positive=False)

    @unavailable_on_error
    def model(self) -> dict[str, Any] | None:
        raw = cast(bytes | None, self.client.get(self.keys.model))
        return None if raw is None else cast(dict[str, Any], orjson.loads(raw))

    @unavailable_on_error
    def workers(self) -> list[dict[str, Any]]:
        """Live workers' heartbeats, by worker id."""
        found = sorted(set(self.client.scan_iter(match=self.keys.workers_pattern)))
        values = cast(list[bytes | None], self.client.mget(found)) if found else []
        return [orjson.loads(v) for v in values if v]

    def close(self) -> None:
        self.client.close()


class AsyncSegmentClient:
    """The asyncio twin of :class:`SegmentClient`'s ``get``."""

    def __init__(self, url: str, prefix: str = "seg:", timeout: float = 1.0) -> None:
        self.url = url
        self.keys = Keys(prefix)
        self.client = aioredis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout
        )

    @unavailable_on_error
    async def get(self, customer_id: str) -> dict[str, Any] | None:
        raw = cast(bytes | None, await self.client.get(self.keys.record(customer_id)))
        return None if raw is None else decode_record(raw)

    async def close(self) -> None:
        await self.client.aclose()
