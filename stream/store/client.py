"""Readers of the serving store: ``SegmentClient`` (sync: CLI, read API, tools) and
``AsyncSegmentClient`` (one customer's record from asyncio code), on a single Redis or a Redis
Cluster alike (``stream.store.connect``). Every Redis error becomes ``StoreUnavailable``."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import Any, cast

import orjson
from redis.cluster import RedisCluster

from stream.store.aliases import read_record, read_record_sync
from stream.store.codec import counts, decode_record, sum_counts
from stream.store.connect import (
    AsyncClient,
    SyncClient,
    async_client,
    parse_redis_url,
    sync_client,
)
from stream.store.errors import REDIS_ERRORS, StoreUnavailable, unavailable_on_error
from stream.store.keys import Keys

__all__ = ["AsyncSegmentClient", "SegmentClient"]


class SegmentClient:
    """Read one customer's segment record: one round trip (an MGET of the record and the id's
    alias; a second for an id merged into another customer).

    >>> client = SegmentClient("redis://127.0.0.1:6379/0")  # doctest: +SKIP
    >>> client.get("c-42")["segment"]                       # doctest: +SKIP
    3
    """

    def __init__(self, url: str, prefix: str = "seg:", timeout: float = 1.0) -> None:
        self.url = url
        self.keys = Keys(prefix)
        self.cluster = parse_redis_url(url).cluster  # a URL it cannot use: RedisConfigError
        self._timeout = timeout
        self._client: SyncClient | None = None
        self._making = threading.Lock()

    @property
    def client(self) -> SyncClient:
        """The redis-py client, made on first use: a cluster client connects when it is made
        (a failure is ``StoreUnavailable``, and the next use tries again)."""
        if self._client is None:
            with self._making:  # the read API calls from several threads
                if self._client is None:
                    try:
                        self._client = sync_client(
                            self.url,
                            socket_timeout=self._timeout,
                            socket_connect_timeout=self._timeout,
                        )
                    except REDIS_ERRORS as exc:
                        raise StoreUnavailable.at(self.url, exc, "is not reachable") from exc
        return self._client

    def ping(self) -> None:
        try:
            self.client.ping()
        except REDIS_ERRORS as exc:
            raise StoreUnavailable.at(self.url, exc, "is not reachable") from exc

    @unavailable_on_error
    def get(self, customer_id: str) -> dict[str, Any] | None:
        """The customer's record; for an id merged into another customer, that customer's
        (``stream.store.aliases``)."""
        raw = read_record_sync(self.client, self.keys, customer_id)
        return None if raw is None else decode_record(raw)

    @unavailable_on_error
    def iter_records(self, batch: int = 1000) -> Iterator[dict[str, Any]]:
        """Every customer record (SCAN of every master of a cluster, then one MGET per batch
        of keys, per hash slot on a cluster). A customer written during the scan may be missed
        or (on a cluster whose slots move meanwhile) seen twice."""
        keys: list[bytes] = []
        for key in self.client.scan_iter(match=self.keys.records_pattern, count=batch):
            keys.append(key)
            if len(keys) >= batch:
                yield from self._fetch(keys)
                keys = []
        if keys:
            yield from self._fetch(keys)

    def _fetch(self, keys: Sequence[bytes]) -> Iterator[dict[str, Any]]:
        for raw in self._mget(keys):
            if raw is not None:  # forgotten since the SCAN
                yield decode_record(raw)

    def _mget(self, keys: Sequence[bytes | str]) -> list[bytes | None]:
        """Values of keys in any slots: MGET, or one MGET per slot on a cluster."""
        client = self.client
        if isinstance(client, RedisCluster):
            return cast(list[bytes | None], client.mget_nonatomic(list(keys)))
        return cast(list[bytes | None], client.mget(keys))

    def _sum(self, hashes: Sequence[str], positive: bool = True) -> dict[str, int]:
        """Every shard's counter hash, summed: one pipeline (one round trip per node)."""
        pipe = self.client.pipeline(transaction=False)
        for name in hashes:
            pipe.hgetall(name)
        return sum_counts(cast(list[dict[bytes, bytes]], pipe.execute()), positive)

    @unavailable_on_error
    def sizes(self) -> dict[str, int]:
        """Customers in each cluster."""
        return self._sum(self.keys.all_sizes)

    @unavailable_on_error
    def members(self) -> dict[str, int]:
        """Customers in each segment of any kind (``cluster:3``, ``rule:vip``, ``persona:...``)."""
        return self._sum(self.keys.all_members)

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
        return sum(self._sum(self.keys.all_sizes, positive=False).values())

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
        """Live workers' heartbeats, by worker id (found in the ``workers`` index)."""
        ids = sorted(cast(list[bytes], self.client.zrange(self.keys.workers, 0, -1)))
        values = self._mget([self.keys.worker(i.decode()) for i in ids]) if ids else []
        return [orjson.loads(v) for v in values if v]

    @unavailable_on_error
    def request_rebuild(self, app_id: str) -> int:
        """Ask every worker of the app to rewrite its partitions' records and counters from its
        state (``segmenter rebuild-store``); the new request number."""
        return int(self.client.incr(self.keys.rebuild_request(app_id)))

    @unavailable_on_error
    def partition_marks(
        self, app_id: str, partitions: Sequence[int]
    ) -> tuple[int, dict[int, dict[str, Any] | None]]:
        """The app's newest rebuild request (0: none) and each partition's marker (None:
        missing): ``request`` is the newest request its records were rebuilt for."""
        keys = [self.keys.rebuild_request(app_id)]
        keys += [self.keys.partition_mark(app_id, p) for p in partitions]
        values = self._mget(keys)
        request = int(values[0]) if values[0] else 0
        marks = {
            p: None if v is None else orjson.loads(v)
            for p, v in zip(partitions, values[1:], strict=True)
        }
        return request, marks

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


class AsyncSegmentClient:
    """The asyncio twin of :class:`SegmentClient`'s ``get``."""

    def __init__(self, url: str, prefix: str = "seg:", timeout: float = 1.0) -> None:
        self.url = url
        self.keys = Keys(prefix)
        self.client: AsyncClient = async_client(
            url, socket_timeout=timeout, socket_connect_timeout=timeout
        )

    @unavailable_on_error
    async def get(self, customer_id: str) -> dict[str, Any] | None:
        raw = await read_record(self.client, self.keys, customer_id)
        return None if raw is None else decode_record(raw)

    async def close(self) -> None:
        await self.client.aclose()
