"""Every Redis key the segmenter uses, built in one place.

Key layout (``P`` is ``SEGMENTER_REDIS_PREFIX``, default ``seg:``; ``S`` is the customer's
counter shard, ``shard_of(customer_id)``: the CRC-32 of the UTF-8 customer id, zlib's, modulo
``COUNTER_SHARDS`` (64), in decimal):

- ``P c:{S}<customer_id>``: a header line ``<ts> <n> <seg> <segments>`` (event time of the
  newest applied event in epoch ms, events applied, cluster id or ``-``, every segment the
  customer is in as a JSON list such as ``["cluster:3","rule:vip"]``), a newline, then the
  record compressed with zstd and a trained dictionary (``record_value``, ``encode_record``
  in ``stream.store.codec``).
- ``P m:{S}<merged_id>``: the id of the customer an id was merged into (identity stitching,
  ``models.identity``; plain UTF-8). A merged id has no record of its own: a read of it
  answers that customer's record.
- ``P sizes:{S}``: hash, cluster id to number of customers of shard ``S`` in it (kept by the
  same script as the records); a cluster's size is the sum over the 64 shards.
- ``P members:{S}``: hash, segment of any kind (``cluster:3``, ``rule:vip``, ``persona:...``)
  to number of customers of shard ``S`` in it (same script); summed over the shards likewise.
- ``P changes:{S}``: hash, customer id of shard ``S`` to their recent segment changes: one line
  per accepted write that changed the customer's segments, newest first, at most
  ``SEGMENTER_CUSTOMER_CHANGES_KEPT`` (``CHANGES_KEPT``, 5) lines, each ``<evaluated_at>
  <events applied> <JSON list of "-segment" exits then "+segment" entries>`` (same script,
  same hash slot as the record; deleted with it by ``segmenter forget``). A field of a shared
  hash, not a key per customer: about 110 B less per customer.
- ``P flows:{S}``: hash, ``in:<segment>`` and ``out:<segment>`` to the customers of shard ``S``
  who ever entered and left the segment (same script; an erasure counts as an exit). Summed
  over the shards into every size snapshot (``entered_total``, ``exited_total``): entries and
  exits per event-time bucket are the differences between two buckets' snapshots.
- ``P examples:{S}``: hash, segment to a JSON list of at most ``EXAMPLES_KEPT`` (3) customers
  of shard ``S`` in it (same script: a customer who leaves the segment or is forgotten leaves
  the list); a segment's examples are read from the 64 shards.
- ``P history``: hash, event-time bucket (epoch ms) to a size snapshot (JSON);
  ``P history:index``: sorted set of those buckets, trimmed to ``SEGMENTER_STATS_HISTORY``;
  ``P history:lock``: held for most of a snapshot period by the worker that takes the snapshot.
- ``P watermark``: the newest event time any worker has applied.
- ``P drift``: list of the newest drift alerts (JSON, newest first), bounded.
- ``P model``: the newest model snapshot as JSON; ``P model:version`` its version.
- ``P stats``: hash of counters (``events``, ``messages``, ``dead_letters``, ``records``).
- ``P worker:<worker_id>``: a worker's heartbeat (JSON, expires after 10 s).
- ``P workers``: sorted set of worker ids, each scored with the epoch ms its heartbeat expires
  at (written with the heartbeat; a worker drops ids expired over an hour ago). Readers find
  the heartbeats here, not by scanning the keyspace: a SCAN reads every key, so it took longer
  the more customers there were.
- ``P partition:<app_id>:<p>``: the marker of partition ``p`` of the app's feature table
  (JSON: ``request``, ``worker_id``, ``epoch``, ``seq``, ``at``), written by the worker that
  owns the partition when it takes it over, after it rebuilt the partition's records, and
  advanced with each of its writes (only from the value it last wrote, so a marker Redis lost
  or rolled back stays lost). Missing, older than the worker's own, or with ``request`` below
  ``P rebuild:<app_id>``: the worker rewrites the partition's records and counters from its
  state (``stream.worker.rebuild``).
- ``P rebuild:<app_id>``: the newest rebuild request (a counter ``segmenter rebuild-store``
  increments).

Why ``{S}``: braces mark a Redis Cluster hash tag, so a customer's record, changes and the
counter hashes the write script moves with it are in one hash slot, as a script's keys must be on a
cluster; the same layout serves a single Redis. Every other key is read and written alone. The
prefix may not contain braces (it would become the hash tag).

``tests/unit/test_store_keys.py`` pins every name byte for byte: a reader in another language
depends on them.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

from stream.store.errors import RedisConfigError

__all__ = ["CHANGES_KEPT", "COUNTER_SHARDS", "EXAMPLES_KEPT", "Keys", "record_key", "shard_of"]

#: How many ``sizes`` and ``members`` hashes the counters are split into (fixed: it is part of
#: every record key).
COUNTER_SHARDS = 64
#: Lines of a customer's recent changes (``Keys.changes``) kept, newest first, by default
#: (``SEGMENTER_CUSTOMER_CHANGES_KEPT``): each costs Redis about 45 B per customer.
CHANGES_KEPT = 5
#: Example members kept per segment per shard (``Keys.examples``).
EXAMPLES_KEPT = 3

_GLOB = re.compile(r"([*?\[\]\\])")


def shard_of(customer_id: str) -> int:
    """A customer's counter shard: zlib's CRC-32 of the UTF-8 id, modulo ``COUNTER_SHARDS``.

    >>> shard_of("c-42"), shard_of("cust-5bc8fb-000823")
    (53, 8)
    """
    return zlib.crc32(customer_id.encode()) % COUNTER_SHARDS


@dataclass(frozen=True, slots=True)
class Keys:
    """The Redis keys of one deployment (one prefix).

    >>> keys = Keys("seg:")
    >>> keys.record("c-42"), keys.sizes(53), keys.model_version, keys.worker("w1")
    ('seg:c:{53}c-42', 'seg:sizes:{53}', 'seg:model:version', 'seg:worker:w1')
    """

    prefix: str = "seg:"

    def __post_init__(self) -> None:
        if "{" in self.prefix or "}" in self.prefix:
            raise RedisConfigError(
                f"Redis key prefix {self.prefix!r}: braces are not allowed (they would make "
                "the prefix a Redis Cluster hash tag, and put every key in one slot)"
            )

    def record(self, customer_id: str) -> str:
        """One customer's record."""
        return f"{self.prefix}c:{{{shard_of(customer_id)}}}{customer_id}"

    def alias(self, customer_id: str) -> str:
        """A merged id's alias: the customer it was merged into (same slot as its record)."""
        return f"{self.prefix}m:{{{shard_of(customer_id)}}}{customer_id}"

    def sizes(self, shard: int) -> str:
        """One shard's cluster-size counters."""
        return f"{self.prefix}sizes:{{{shard}}}"

    def members(self, shard: int) -> str:
        """One shard's segment-membership counters."""
        return f"{self.prefix}members:{{{shard}}}"

    def changes(self, shard: int) -> str:
        """One shard's customers' recent segment changes (a hash: customer id to lines)."""
        return f"{self.prefix}changes:{{{shard}}}"

    def flows(self, shard: int) -> str:
        """One shard's entry and exit totals per segment."""
        return f"{self.prefix}flows:{{{shard}}}"

    def examples(self, shard: int) -> str:
        """One shard's example members per segment."""
        return f"{self.prefix}examples:{{{shard}}}"

    def shard_keys(self, shard: int) -> tuple[str, str, str, str, str]:
        """A counter shard's hashes, as the write script takes them first: sizes, members,
        changes, flows, examples (one hash slot, with the shard's records).

        >>> Keys("p:").shard_keys(53)
        ('p:sizes:{53}', 'p:members:{53}', 'p:changes:{53}', 'p:flows:{53}', 'p:examples:{53}')
        """
        return (
            self.sizes(shard),
            self.members(shard),
            self.changes(shard),
            self.flows(shard),
            self.examples(shard),
        )

    def script_keys(self, customer_id: str) -> tuple[str, str, str, str, str, str]:
        """The keys the write and forget scripts take for a customer: record, sizes, members,
        changes, flows, examples (one hash slot).

        >>> Keys("p:").script_keys("c-42")  # doctest: +NORMALIZE_WHITESPACE
        ('p:c:{53}c-42', 'p:sizes:{53}', 'p:members:{53}', 'p:changes:{53}', 'p:flows:{53}',
         'p:examples:{53}')
        """
        return (self.record(customer_id), *self.shard_keys(shard_of(customer_id)))

    @property
    def all_sizes(self) -> tuple[str, ...]:
        """Every shard's ``sizes`` hash, shard 0 first (a reader sums them)."""
        return tuple(self.sizes(s) for s in range(COUNTER_SHARDS))

    @property
    def all_members(self) -> tuple[str, ...]:
        """Every shard's ``members`` hash, shard 0 first (a reader sums them)."""
        return tuple(self.members(s) for s in range(COUNTER_SHARDS))

    @property
    def all_flows(self) -> tuple[str, ...]:
        """Every shard's ``flows`` hash, shard 0 first (a reader sums them)."""
        return tuple(self.flows(s) for s in range(COUNTER_SHARDS))

    @property
    def all_examples(self) -> tuple[str, ...]:
        """Every shard's ``examples`` hash, shard 0 first."""
        return tuple(self.examples(s) for s in range(COUNTER_SHARDS))

    def worker(self, worker_id: str) -> str:
        """One worker's heartbeat."""
        return f"{self.prefix}worker:{worker_id}"

    @property
    def workers(self) -> str:
        """The index of the workers' heartbeats (sorted set: id, expiry in epoch ms)."""
        return f"{self.prefix}workers"

    @property
    def history(self) -> str:
        return f"{self.prefix}history"

    @property
    def history_index(self) -> str:
        return f"{self.prefix}history:index"

    @property
    def history_lock(self) -> str:
        return f"{self.prefix}history:lock"

    @property
    def watermark(self) -> str:
        return f"{self.prefix}watermark"

    @property
    def drift(self) -> str:
        return f"{self.prefix}drift"

    @property
    def model(self) -> str:
        return f"{self.prefix}model"

    @property
    def model_version(self) -> str:
        return f"{self.prefix}model:version"

    @property
    def stats(self) -> str:
        return f"{self.prefix}stats"

    def partition_mark(self, app_id: str, partition: int) -> str:
        """The marker of one partition of an app's feature table.

        >>> Keys().partition_mark("segmenter", 3)
        'seg:partition:segmenter:3'
        """
        return f"{self.prefix}partition:{app_id}:{partition}"

    def rebuild_request(self, app_id: str) -> str:
        """The app's newest rebuild request (a counter)."""
        return f"{self.prefix}rebuild:{app_id}"

    @property
    def records_pattern(self) -> str:
        """A SCAN pattern matching every record (glob characters in the prefix escaped).

        >>> Keys("t[1]:").records_pattern
        't\\\\[1\\\\]:c:*'
        """
        return f"{_escape(self.prefix)}c:*"


def record_key(prefix: str, customer_id: str) -> str:
    """The Redis key of one customer's record: ``Keys(prefix).record(customer_id)``.

    >>> record_key("seg:", "c-42")
    'seg:c:{53}c-42'
    """
    return Keys(prefix).record(customer_id)


def _escape(text: str) -> str:
    return _GLOB.sub(r"\\\1", text)
