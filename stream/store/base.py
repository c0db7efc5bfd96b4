"""What the worker needs of a serving store (the Redis one and the in-memory one both do it)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, Protocol

from models.step import RecordWrite

__all__ = ["PartitionMark", "SegmentStore"]


class PartitionMark(NamedTuple):
    """Move one partition marker (``Keys.partition_mark``) from ``expected`` to ``value``; a
    marker that holds anything else, or is missing, is left as it is."""

    app_id: str
    partition: int
    expected: bytes
    value: bytes


class SegmentStore(Protocol):
    """The serving store as the worker sees it; ``tests/integration/test_store_contract.py``
    runs one contract over every implementation."""

    async def ping(self) -> None:
        """Raise ``StoreUnavailable`` if the store cannot be reached."""

    async def write_many(
        self,
        writes: Sequence[RecordWrite],
        counters: Mapping[str, int] = {},
        marks: Sequence[PartitionMark] = (),
    ) -> int:
        """Apply record writes (a write older than the stored record, by (event_ts, applied),
        is ignored), moving size and membership counters with them, and, where the customer's
        segments changed, the flow totals, the examples and the customer's changes list; add
        ``counters`` to the status counters; then move the partition ``marks`` (each only from
        its expected value). Returns the writes accepted."""

    async def forget_many(self, customer_ids: Sequence[str]) -> int:
        """Erase these customers' records, their changes lists and their share of the counters
        and examples (each segment they were in counts an exit); returns how many had a
        record."""

    async def merge_many(self, aliases: Mapping[str, str]) -> int:
        """Merged ids (``models.identity``) to the customers they were merged into: each
        merged id's record erased as ``forget_many`` does, and a read of it answered with
        that customer's record from then on. Returns the records erased."""

    async def unalias_many(self, customer_ids: Sequence[str]) -> None:
        """Drop the aliases of these ids (erased ids that had been merged)."""

    async def get(self, customer_id: str) -> dict[str, Any] | None:
        """One customer's record (a merged id's: its customer's), or None."""

    async def partition_marks(
        self, app_id: str, partitions: Sequence[int]
    ) -> tuple[int, dict[int, bytes | None]]:
        """The app's newest rebuild request (0: none) and the marker of each partition
        (None: missing), read together."""

    async def put_partition_mark(
        self, app_id: str, partition: int, value: bytes, expected: bytes | None = None
    ) -> bool:
        """Set a partition marker: unconditionally (``expected`` None), else only if it holds
        ``expected``. True if set."""

    async def request_rebuild(self, app_id: str) -> int:
        """Ask every worker of the app to rebuild its partitions; the new request number."""

    async def model(self) -> dict[str, Any] | None:
        """The newest model snapshot, or None."""

    async def model_version(self) -> int:
        """The newest model snapshot's version (0: none yet)."""

    async def publish_model(self, snapshot: Mapping[str, Any]) -> None:
        """Store a model snapshot as the newest."""

    async def heartbeat(self, worker_id: str, info: Mapping[str, Any], ttl: int) -> None:
        """A worker's status, kept for ``ttl`` seconds."""

    async def size_snapshot(
        self, worker_id: str, watermark: int, bucket_ms: int, keep: int, period_s: float
    ) -> dict[str, Any] | None:
        """Snapshot every segment's size and its entry and exit totals (``entered_total``,
        ``exited_total``) into its event-time bucket; one worker per period gets the snapshot
        back to publish, the others None."""

    async def push_drift(self, alerts: Sequence[Mapping[str, Any]], keep: int) -> None:
        """Keep the newest drift alerts, at most ``keep``."""

    # Reads: what the contract test asserts on (and what an async reader may use).

    async def sizes(self) -> dict[str, int]:
        """Customers in each cluster (``-``: none yet), counts above 0 only."""

    async def members(self) -> dict[str, int]:
        """Customers in each segment of any kind (``cluster:3``, ``rule:vip``, ...), above 0."""

    async def stats(self) -> dict[str, int]:
        """The status counters ``write_many`` added up."""

    async def changes(self, customer_id: str, limit: int | None = None) -> list[dict[str, Any]]:
        """The customer's recent segment changes (``codec.decode_changes``), newest first,
        from their newest ``limit`` changing writes (None: every one the store keeps)."""

    async def examples(self, segment: str, limit: int = 10) -> list[str]:
        """Up to ``limit`` customers in the segment (a few kept per shard), shard 0 first."""

    async def workers(self) -> list[dict[str, Any]]:
        """The heartbeats not yet expired, by worker id."""

    async def drift(self, limit: int = 200) -> list[dict[str, Any]]:
        """The newest drift alerts, newest first."""

    async def history(self, limit: int = 500) -> list[dict[str, Any]]:
        """The size snapshots of the newest ``limit`` event-time buckets, oldest first."""

    async def close(self) -> None: ...
