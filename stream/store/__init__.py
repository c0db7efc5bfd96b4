"""The serving store: per-customer records, segment counters, model and status.

- ``base``: ``SegmentStore``, what the worker needs of a store.
- ``keys``: every Redis key name (``Keys``) and the key layout.
- ``connect``: the redis-py clients for a ``SEGMENTER_REDIS_URL``, one Redis or a Redis Cluster.
- ``codec``: a record as Redis holds it (header line, zstd-compressed JSON).
- ``scripts``: the Lua scripts that write and forget atomically.
- ``redis_store``: ``RedisSegmentStore``, the worker's store in Redis; ``retry_forever``.
- ``memory``: ``InMemorySegmentStore``, the same contract over dicts.
- ``client``: the readers, ``SegmentClient`` and ``AsyncSegmentClient``.
- ``views``: the customer and segment views' reads (a record with its changes, examples).
- ``errors``: ``StoreUnavailable``, ``RedisConfigError``, ``REDIS_OUTAGE``.
"""

from typing import TYPE_CHECKING

from models.step import RecordWrite
from stream.store.base import SegmentStore
from stream.store.client import AsyncSegmentClient, SegmentClient
from stream.store.codec import decode_record, encode_record, record_value
from stream.store.connect import async_client, is_cluster, parse_redis_url, sync_client
from stream.store.errors import REDIS_OUTAGE, RedisConfigError, StoreUnavailable, is_outage
from stream.store.keys import COUNTER_SHARDS, Keys, record_key, shard_of
from stream.store.memory import InMemorySegmentStore
from stream.store.redis_store import RedisSegmentStore, retry_forever

__all__ = [
    "COUNTER_SHARDS",
    "REDIS_OUTAGE",
    "AsyncSegmentClient",
    "InMemorySegmentStore",
    "Keys",
    "RecordWrite",
    "RedisConfigError",
    "RedisSegmentStore",
    "SegmentClient",
    "SegmentStore",
    "StoreUnavailable",
    "async_client",
    "decode_record",
    "encode_record",
    "is_cluster",
    "parse_redis_url",
    "record_key",
    "record_value",
    "is_outage",
    "retry_forever",
    "shard_of",
    "sync_client",
]

if TYPE_CHECKING:  # mypy checks that both stores are a SegmentStore, signatures included

    def _both_are_stores(
        memory: InMemorySegmentStore, redis: RedisSegmentStore
    ) -> tuple[SegmentStore, SegmentStore]:
        return memory, redis
