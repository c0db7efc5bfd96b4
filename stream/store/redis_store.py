"""The serving store: one Redis string per customer, written in pipelined batches, read in one
trip.

Key layout (``P`` is ``SEGMENTER_REDIS_PREFIX``, default ``seg:``):

- ``P c:{customer_id}``: a header line ``<ts> <n> <seg> <segments>`` (event time of the newest
  applied event in epoch ms, events applied, cluster id or ``-``, every segment the customer is
  in as a JSON list such as ``["cluster:3","rule:vip"]``), a newline, then the record deflated
  with a preset dictionary (``record_value``, ``encode_record``). A record in the earlier layout,
  a hash (``v``, ``ts``, ``n``, ``seg``, ``m``), is read too and replaced by the next write.
- ``P sizes``: hash, cluster id to number of customers in it (kept by the same script).
- ``P members``: hash, segment of any kind (``cluster:3``, ``rule:vip``, ``persona:...``) to
  number of customers in it (kept by the same script).
- ``P history``: hash, event-time bucket (epoch ms) to a size snapshot (JSON);
  ``P history:index``: sorted set of those buckets, trimmed to ``SEGMENTER_STATS_HISTORY``.
- ``P watermark``: the newest event time any worker has applied.
- ``P drift``: list of the newest drift alerts (JSON, newest first), bounded.
- ``P model``: the newest model snapshot as JSON; ``P model:version`` its version.
- ``P stats``: hash of counters (``events``, ``messages``, ``dead_letters``, ``records``).
- ``P worker:{worker_id}``: a worker's heartbeat (JSON, expires after 10 s).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, cast

import orjson
import redis
import redis.asyncio as aioredis

log = logging.getLogger(__name__)

__all__ = [
    "REDIS_OUTAGE",
    "AsyncSegmentClient",
    "InMemorySegmentStore",
    "RecordWrite",
    "RedisSegmentStore",
    "SegmentClient",
    "SegmentStore",
    "StoreUnavailable",
    "decode_record",
    "encode_record",
    "record_key",
    "record_value",
]

# Why a script: the staleness check and the write must be one atomic step, or two workers
# (say, the old and new owner of a partition during a rebalance) could interleave and let an
# older state win. Ordering is by (event time, events applied), so a late or replayed event
# never overwrites newer state, and an equal one rewrites the same record harmlessly. The
# segment-size counters move only when a write is accepted, so they always match the records.
#
# Both scripts start by reading the stored record's header line (all nil when there is none).
_READ_CURRENT = """
local cts, cn, cseg, cm
local cur = redis.pcall('GET', KEYS[1])
if type(cur) == 'table' and cur.err then
  -- a record in the earlier layout (a hash): its header fields; SET replaces it, DEL removes it
  local h = redis.call('HMGET', KEYS[1], 'ts', 'n', 'seg', 'm')
  cts, cn, cseg, cm = tonumber(h[1]), tonumber(h[2]), h[3], h[4]
elseif cur then
  local a, b, c, d = string.match(cur, '^(%d+) (%d+) (%S+) ([^\\n]*)\\n')
  cts, cn, cseg, cm = tonumber(a), tonumber(b), c, d
end
"""
_WRITE_SCRIPT = (
    _READ_CURRENT
    + """
local ts, n = tonumber(ARGV[1]), tonumber(ARGV[2])
if cts and (ts < cts or (ts == cts and n < cn)) then return 0 end
if tonumber(ARGV[5]) > 0 then
  redis.call('SET', KEYS[1], ARGV[4], 'EX', ARGV[5])
else
  redis.call('SET', KEYS[1], ARGV[4])
end
if cseg ~= ARGV[3] then
  if cseg then redis.call('HINCRBY', KEYS[2], cseg, -1) end
  redis.call('HINCRBY', KEYS[2], ARGV[3], 1)
end
if cm ~= ARGV[6] then
  local old, new = {}, {}
  if cm then for _, m in ipairs(cjson.decode(cm)) do old[m] = true end end
  for _, m in ipairs(cjson.decode(ARGV[6])) do new[m] = true end
  for m in pairs(old) do if not new[m] then redis.call('HINCRBY', KEYS[3], m, -1) end end
  for m in pairs(new) do if not old[m] then redis.call('HINCRBY', KEYS[3], m, 1) end end
end
return 1
"""
)

# Erases one customer's record and takes them out of the size counters, in one atomic step.
_FORGET_SCRIPT = (
    _READ_CURRENT
    + """
if not cseg then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HINCRBY', KEYS[2], cseg, -1)
if cm then
  for _, m in ipairs(cjson.decode(cm)) do redis.call('HINCRBY', KEYS[3], m, -1) end
end
return 1
"""
)

# Keeps the newest event time any worker applied, so size snapshots of several workers share
# one event-time clock.
_WATERMARK_SCRIPT = """
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
local mine = tonumber(ARGV[1])
if mine > cur then redis.call('SET', KEYS[1], ARGV[1]); return mine end
return cur
"""


#: What Redis being away looks like to a client: retried or skipped, never fatal to a worker.
REDIS_OUTAGE = (redis.ConnectionError, redis.TimeoutError, OSError)


class StoreUnavailable(RuntimeError):
    """Redis could not be reached; the message says where and why."""


_Method = TypeVar("_Method", bound=Callable[..., Any])


def _unavailable_on_error(method: _Method) -> _Method:
    """Turn any Redis error of a client method into ``StoreUnavailable`` naming the server
    (without its password); a generator method is covered while it is iterated."""
    if inspect.isgeneratorfunction(method):

        @functools.wraps(method)
        def generator(self: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                yield from method(self, *args, **kwargs)
            except redis.RedisError as exc:
                raise StoreUnavailable(f"Redis at {_safe(self.url)}: {exc}") from exc

        return cast(_Method, generator)

    @functools.wraps(method)
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except redis.RedisError as exc:
            raise StoreUnavailable(f"Redis at {_safe(self.url)}: {exc}") from exc

    return cast(_Method, call)


#: A typical record: the preset dictionary records are deflated with. Frozen: a record written
#: with it must stay readable, so a new dictionary needs a new prefix (``z2:``), never an edit.
_ZDICT_V1 = orjson.dumps(
    {
        "customer_id": "cust-000000-000000",
        "segment": 3,
        "segment_label": "high value, frequent, mobile",
        "confidence": 0.8123,
        "persona": "Loyal Larry",
        "persona_confidence": 0.7321,
        "persona_reasons": [
            "avg_order_value near 120.00 (persona) vs 118.52",
            "conversion near 0.90 (persona) vs 0.50",
            "cart_abandonment near 0.07 (persona) vs 0.00",
        ],
        "rule_segments": [
            "cart_abandoner",
            "dach",
            "europe",
            "high_income",
            "lifecycle_active",
            "mobile_first",
            "repeat_buyer",
            "tech_shopper",
            "vip",
            "young_adult",
        ],
        "lifecycle": "active",
        "model_version": 12,
        "event_ts": 1795000000000,
        "evaluated_at": 1795000000000,
        "updated_at": 1795000000000,
        "events_applied": 120,
        "features": {
            "orders_total": 2,
            "revenue_total": 1234.56,
            "first_seen_ts": 1786360000000,
            "last_seen_ts": 1795000000000,
            "last_purchase_ts": 1795000000000,
            "recency_days": 1.2345,
            "frequency_decayed": 0.8765,
            "monetary_decayed": 123.45,
            "avg_order_value": 123.45,
            "avg_viewed_price": 67.89,
            "sessions": 4,
            "page_views": 12,
            "product_views": 8,
            "searches": 2,
            "cart_adds": 1,
            "cart_abandonment": 0.25,
            "views_per_session": 3.5,
            "clicks": 20,
            "top_categories": ["electronics", "fashion", "home", "grocery", "books"],
            "top_spend_categories": ["electronics", "fashion"],
            "primary_device": "mobile",
            "country": "DE",
            "channel": "search",
            "mobile_share": 0.5,
            "desktop_share": 0.5,
            "tablet_share": 0.0,
            "evening_share": 0.5,
            "morning_share": 0.25,
            "afternoon_share": 0.25,
            "search_share": 0.1,
            "discount_share": 0.1,
            "conversion": 0.5,
        },
        "facts": {
            "lifecycle": "active",
            "rfm_score": "511",
            "value_tier": "bronze",
            "customer_value_estimate": 1234.56,
            "region": "Western Europe",
            "age_band": "45-54",
            "top_category": "electronics",
            "days_since_last_purchase": 12.5,
        },
        "traits": {"age": 45, "income_band": "high", "country": "DE", "company_size": "1-10"},
        "worker_id": "worker-000000",
    }
)
_RECORD_PREFIX = b"z1:"
_PACKER = zlib.compressobj(6, zlib.DEFLATED, -12, 4, zlib.Z_DEFAULT_STRATEGY, _ZDICT_V1)


def encode_record(record: Mapping[str, Any]) -> bytes:
    """A record as Redis holds it: JSON, deflated with a preset dictionary (a typical record).

    About 16 µs, and a quarter of the bytes of a typical record (README, "Output contracts").
    ``decode_record`` reverses it.

    >>> decode_record(encode_record({"customer_id": "c-1", "segment": 3}))
    {'customer_id': 'c-1', 'segment': 3}
    >>> decode_record(b'{"segment": 2}')  # plain JSON (an older record) still reads
    {'segment': 2}
    """
    packer = _PACKER.copy()  # primed with the dictionary once: copying is cheaper
    return _RECORD_PREFIX + packer.compress(orjson.dumps(record)) + packer.flush()


def record_value(write: RecordWrite) -> tuple[bytes, bytes]:
    """What Redis holds for a write, and its segments as JSON (the write script's ARGV).

    One line of plain text, ``<event_ts> <events applied> <cluster id or -> <segments JSON>``,
    then the record as ``encode_record`` gives it. The first line is what the write script
    compares and counts, and what a reader that needs only the segments reads.

    >>> value, m = record_value(RecordWrite("c-1", 1795000000000, 7, 3, {"segment": 3},
    ...                                     ("rule:vip", "cluster:3")))
    >>> value.split(b"\\n", 1)[0]
    b'1795000000000 7 3 ["cluster:3","rule:vip"]'
    >>> decode_record(value)
    {'segment': 3}
    """
    members = orjson.dumps(sorted(write.members))
    head = f"{write.event_ts} {write.applied} {_seg(write.segment)} ".encode()
    return head + members + b"\n" + encode_record(write.record), members


def decode_record(raw: bytes | str) -> dict[str, Any]:
    """The record from what Redis holds (see ``record_value`` and ``encode_record``)."""
    if isinstance(raw, bytes) and raw[:1].isdigit():
        raw = raw.split(b"\n", 1)[1]
    if isinstance(raw, bytes) and raw.startswith(_RECORD_PREFIX):
        raw = zlib.decompressobj(-12, _ZDICT_V1).decompress(raw[len(_RECORD_PREFIX) :])
    return cast(dict[str, Any], orjson.loads(raw))


def record_key(prefix: str, customer_id: str) -> str:
    """The Redis key of one customer's record.

    >>> record_key("seg:", "c-42")
    'seg:c:c-42'
    """
    return f"{prefix}c:{customer_id}"


@dataclass(frozen=True, slots=True)
class RecordWrite:
    customer_id: str
    event_ts: int
    applied: int
    segment: int | None
    record: Mapping[str, Any]
    members: Sequence[str] = ()  # every segment of any kind the customer is in


class SegmentStore(Protocol):
    async def write_many(self, writes: Sequence[RecordWrite]) -> int: ...
    async def get(self, customer_id: str) -> dict[str, Any] | None: ...


class InMemorySegmentStore:
    """The same contract over a dict, for unit tests and tools that need no Redis."""

    def __init__(self) -> None:
        self.records: dict[str, tuple[int, int, dict[str, Any]]] = {}
        self.sizes: dict[str, int] = {}
        self.members: dict[str, int] = {}
        self._members_of: dict[str, set[str]] = {}

    async def write_many(self, writes: Sequence[RecordWrite]) -> int:
        accepted = 0
        for w in writes:
            old = self.records.get(w.customer_id)
            if old and (w.event_ts, w.applied) < (old[0], old[1]):
                continue
            seg = _seg(w.segment)
            old_seg = _seg(old[2].get("segment")) if old else None
            if old_seg != seg:
                if old_seg is not None:
                    self.sizes[old_seg] -= 1
                self.sizes[seg] = self.sizes.get(seg, 0) + 1
            old_members = self._members_of.get(w.customer_id, set())
            new_members = set(w.members)
            for m in old_members - new_members:
                self.members[m] -= 1
            for m in new_members - old_members:
                self.members[m] = self.members.get(m, 0) + 1
            self._members_of[w.customer_id] = new_members
            self.records[w.customer_id] = (w.event_ts, w.applied, dict(w.record))
            accepted += 1
        return accepted

    async def get(self, customer_id: str) -> dict[str, Any] | None:
        found = self.records.get(customer_id)
        return None if found is None else found[2]


def _seg(segment: object) -> str:
    return "-" if segment is None else str(segment)


class RedisSegmentStore:
    """Asyncio Redis store used by the worker: one pipeline per batch."""

    def __init__(self, url: str, prefix: str = "seg:", ttl_seconds: int = 0) -> None:
        self.url = url
        self.prefix = prefix
        self.ttl_seconds = ttl_seconds
        self.client: aioredis.Redis = aioredis.Redis.from_url(url)
        self._script = self.client.register_script(_WRITE_SCRIPT)
        self._watermark = self.client.register_script(_WATERMARK_SCRIPT)
        self._forget = self.client.register_script(_FORGET_SCRIPT)

    async def ping(self) -> None:
        try:
            await self.client.ping()
        except redis.RedisError as exc:
            raise StoreUnavailable(f"Redis at {_safe(self.url)} is not reachable: {exc}") from exc

    async def write_many(
        self, writes: Sequence[RecordWrite], counters: Mapping[str, int] = {}
    ) -> int:
        if not writes and not counters:
            return 0
        sizes, members = f"{self.prefix}sizes", f"{self.prefix}members"
        ttl = str(self.ttl_seconds)
        async with self.client.pipeline(transaction=False) as pipe:
            for w in writes:
                value, segments = record_value(w)
                await self._script(
                    keys=[record_key(self.prefix, w.customer_id), sizes, members],
                    args=[w.event_ts, w.applied, _seg(w.segment), value, ttl, segments],
                    client=pipe,
                )
            for name, by in counters.items():
                pipe.hincrby(f"{self.prefix}stats", name, by)
            results = await pipe.execute()
        return sum(1 for r in results[: len(writes)] if r == 1)

    async def get(self, customer_id: str) -> dict[str, Any] | None:
        raw = await _aread(self.client, record_key(self.prefix, customer_id))
        return None if raw is None else decode_record(raw)

    async def get_json(self, key: str) -> Any:
        raw = await self.client.get(f"{self.prefix}{key}")
        return None if raw is None else orjson.loads(raw)

    async def set_json(self, key: str, value: Any, ttl: int | None = None) -> None:
        await self.client.set(f"{self.prefix}{key}", orjson.dumps(value), ex=ttl)

    async def publish_model(self, snapshot: Mapping[str, Any]) -> None:
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.set(f"{self.prefix}model", orjson.dumps(snapshot))
            pipe.set(f"{self.prefix}model:version", snapshot["version"])
            await pipe.execute()

    async def model_version(self) -> int:
        raw = await self.client.get(f"{self.prefix}model:version")
        return int(raw) if raw else 0

    async def forget_many(self, customer_ids: Sequence[str]) -> int:
        """Erase these customers' records and their share of the size counters."""
        if not customer_ids:
            return 0
        keys = [f"{self.prefix}sizes", f"{self.prefix}members"]
        async with self.client.pipeline(transaction=False) as pipe:
            for customer_id in customer_ids:
                await self._forget(
                    keys=[record_key(self.prefix, customer_id), *keys], args=[], client=pipe
                )
            results = await pipe.execute()
        return sum(1 for r in results if r == 1)

    async def size_snapshot(
        self, worker_id: str, watermark: int, bucket_ms: int, keep: int, period_s: float
    ) -> dict[str, Any] | None:
        """Record the sizes of every segment in this event-time bucket, once per period.

        Every worker calls this on a timer; the first in each period (a short-lived Redis
        lock) writes the snapshot and gets it back to publish, the others get None. A later
        snapshot in the same bucket replaces the earlier one, so a bucket holds its last sizes.
        """
        lock = f"{self.prefix}history:lock"
        if not await self.client.set(lock, worker_id, nx=True, px=max(1, int(period_s * 900))):
            return None
        newest = int(await self._watermark(keys=[f"{self.prefix}watermark"], args=[watermark]))
        if newest <= 0:
            return None
        members = await self.client.hgetall(f"{self.prefix}members")
        sizes = {_text(k): int(v) for k, v in members.items() if int(v) > 0}
        clusters = await self.client.hvals(f"{self.prefix}sizes")
        bucket = newest - newest % bucket_ms
        snapshot = {
            "bucket": bucket,
            "watermark": newest,
            "at": int(time.time() * 1000),
            "customers": sum(int(v) for v in clusters),
            "sizes": dict(sorted(sizes.items())),
        }
        index = f"{self.prefix}history:index"
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(f"{self.prefix}history", str(bucket), orjson.dumps(snapshot))
            pipe.zadd(index, {str(bucket): bucket})
            pipe.zrange(index, 0, -keep - 1)
            _, _, old = await pipe.execute()
        if old:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.hdel(f"{self.prefix}history", *old)
                pipe.zrem(index, *old)
                await pipe.execute()
        return snapshot

    async def push_drift(self, alerts: Sequence[Mapping[str, Any]], keep: int) -> None:
        if not alerts:
            return
        key = f"{self.prefix}drift"
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.lpush(key, *(orjson.dumps(a) for a in alerts))
            pipe.ltrim(key, 0, keep - 1)
            await pipe.execute()

    async def close(self) -> None:
        await self.client.aclose()


class SegmentClient:
    """Read one customer's segment record: one round trip (GET).

    >>> client = SegmentClient("redis://127.0.0.1:6379/0")  # doctest: +SKIP
    >>> client.get("c-42")["segment"]                       # doctest: +SKIP
    3
    """

    def __init__(self, url: str, prefix: str = "seg:", timeout: float = 1.0) -> None:
        self.prefix = prefix
        self.url = url
        self.client = redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout
        )

    @_unavailable_on_error
    def get(self, customer_id: str) -> dict[str, Any] | None:
        raw = _read(self.client, record_key(self.prefix, customer_id))
        return None if raw is None else decode_record(raw)

    def ping(self) -> None:
        try:
            self.client.ping()
        except redis.RedisError as exc:
            raise StoreUnavailable(f"Redis at {_safe(self.url)} is not reachable: {exc}") from exc

    @_unavailable_on_error
    def iter_records(self, batch: int = 1000) -> Iterator[dict[str, Any]]:
        """Every customer record (SCAN, then one pipelined GET per batch of keys)."""
        keys: list[bytes] = []
        for key in self.client.scan_iter(match=f"{self.prefix}c:*", count=batch):
            keys.append(key)
            if len(keys) >= batch:
                yield from self._fetch(keys)
                keys = []
        if keys:
            yield from self._fetch(keys)

    def _fetch(self, keys: Sequence[bytes]) -> Iterator[dict[str, Any]]:
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.get(key)
        for key, raw in zip(keys, pipe.execute(raise_on_error=False), strict=True):
            if isinstance(raw, redis.ResponseError):  # a record in the earlier layout
                raw = _read(self.client, key)
            if raw is not None:
                yield decode_record(raw)

    @_unavailable_on_error
    def sizes(self) -> dict[str, int]:
        raw = self.client.hgetall(f"{self.prefix}sizes")
        return {_text(k): int(v) for k, v in raw.items() if int(v) > 0}

    @_unavailable_on_error
    def members(self) -> dict[str, int]:
        """Customers in each segment of any kind (``cluster:3``, ``rule:vip``, ``persona:...``)."""
        raw = self.client.hgetall(f"{self.prefix}members")
        return {_text(k): int(v) for k, v in raw.items() if int(v) > 0}

    @_unavailable_on_error
    def history(self, limit: int = 500) -> list[dict[str, Any]]:
        """Size snapshots, oldest first: at most the newest ``limit`` event-time buckets."""
        buckets: list[bytes] = self.client.zrange(f"{self.prefix}history:index", -limit, -1)  # type: ignore[assignment]
        if not buckets:
            return []
        values = self.client.hmget(f"{self.prefix}history", buckets)
        return [orjson.loads(v) for v in values if v]

    @_unavailable_on_error
    def drift(self, limit: int = 200) -> list[dict[str, Any]]:
        """The newest drift alerts, newest first."""
        return [orjson.loads(v) for v in self.client.lrange(f"{self.prefix}drift", 0, limit - 1)]

    @_unavailable_on_error
    def customers(self) -> int:
        """Customers with a record (the sum of the segment-size counters, kept atomically)."""
        raw = self.client.hvals(f"{self.prefix}sizes")
        return sum(int(v) for v in raw)

    @_unavailable_on_error
    def stats(self) -> dict[str, int]:
        raw = self.client.hgetall(f"{self.prefix}stats")
        return {_text(k): int(v) for k, v in raw.items()}

    @_unavailable_on_error
    def model(self) -> dict[str, Any] | None:
        raw = self.client.get(f"{self.prefix}model")
        return None if raw is None else orjson.loads(raw)

    @_unavailable_on_error
    def workers(self) -> list[dict[str, Any]]:
        keys = list(self.client.scan_iter(match=f"{self.prefix}worker:*"))
        values = self.client.mget(keys) if keys else []
        return [orjson.loads(v) for v in values if v]

    def close(self) -> None:
        self.client.close()


class AsyncSegmentClient:
    """The asyncio twin of :class:`SegmentClient`'s ``get``."""

    def __init__(self, url: str, prefix: str = "seg:", timeout: float = 1.0) -> None:
        self.prefix = prefix
        self.url = url
        self.client = aioredis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout
        )

    async def get(self, customer_id: str) -> dict[str, Any] | None:
        try:
            raw = await _aread(self.client, record_key(self.prefix, customer_id))
        except redis.RedisError as exc:
            raise StoreUnavailable(f"Redis at {_safe(self.url)}: {exc}") from exc
        return None if raw is None else decode_record(raw)

    async def close(self) -> None:
        await self.client.aclose()


def _read(client: redis.Redis, key: str | bytes) -> bytes | None:
    """One record's bytes: a string since ``record_value``; a hash (``v``) before it."""
    try:
        return cast(bytes | None, client.get(key))
    except redis.ResponseError as exc:
        if "WRONGTYPE" not in str(exc):
            raise
        return cast(bytes | None, client.hget(key, "v"))


async def _aread(client: aioredis.Redis, key: str) -> bytes | None:
    """``_read`` for the asyncio client."""
    try:
        return cast(bytes | None, await client.get(key))
    except redis.ResponseError as exc:
        if "WRONGTYPE" not in str(exc):
            raise
        return cast(bytes | None, await client.hget(key, "v"))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _safe(url: str) -> str:
    """A URL without its password, for messages and logs."""
    if "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    return f"{scheme}://***@{rest.split('@', 1)[1]}"


async def retry_forever(
    what: str, func: Any, *args: Any, first_delay: float = 0.1, max_delay: float = 5.0
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
