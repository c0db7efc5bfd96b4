"""The serving store: per-customer records, segment counters, model and status in Redis."""

from stream.store.redis_store import (
    REDIS_OUTAGE,
    AsyncSegmentClient,
    InMemorySegmentStore,
    RecordWrite,
    RedisSegmentStore,
    SegmentClient,
    SegmentStore,
    StoreUnavailable,
    decode_record,
    encode_record,
    record_key,
    record_value,
    retry_forever,
)

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
    "retry_forever",
]
