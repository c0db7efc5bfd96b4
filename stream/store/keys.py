"""Every Redis key the segmenter uses, built in one place.

Key layout (``P`` is ``SEGMENTER_REDIS_PREFIX``, default ``seg:``):

- ``P c:{customer_id}``: a header line ``<ts> <n> <seg> <segments>`` (event time of the newest
  applied event in epoch ms, events applied, cluster id or ``-``, every segment the customer is
  in as a JSON list such as ``["cluster:3","rule:vip"]``), a newline, then the record deflated
  with a preset dictionary (``record_value``, ``encode_record`` in ``stream.store.codec``).
- ``P sizes``: hash, cluster id to number of customers in it (kept by the same script).
- ``P members``: hash, segment of any kind (``cluster:3``, ``rule:vip``, ``persona:...``) to
  number of customers in it (kept by the same script).
- ``P history``: hash, event-time bucket (epoch ms) to a size snapshot (JSON);
  ``P history:index``: sorted set of those buckets, trimmed to ``SEGMENTER_STATS_HISTORY``;
  ``P history:lock``: held for most of a snapshot period by the worker that takes the snapshot.
- ``P watermark``: the newest event time any worker has applied.
- ``P drift``: list of the newest drift alerts (JSON, newest first), bounded.
- ``P model``: the newest model snapshot as JSON; ``P model:version`` its version.
- ``P stats``: hash of counters (``events``, ``messages``, ``dead_letters``, ``records``).
- ``P worker:{worker_id}``: a worker's heartbeat (JSON, expires after 10 s).

``tests/unit/test_store_keys.py`` pins every name byte for byte: a reader in another language
depends on them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Keys", "record_key"]

_GLOB = re.compile(r"([*?\[\]\\])")


@dataclass(frozen=True, slots=True)
class Keys:
    """The Redis keys of one deployment (one prefix).

    >>> keys = Keys("seg:")
    >>> keys.record("c-42"), keys.model_version, keys.worker("w1")
    ('seg:c:c-42', 'seg:model:version', 'seg:worker:w1')
    """

    prefix: str = "seg:"

    def record(self, customer_id: str) -> str:
        """One customer's record."""
        return f"{self.prefix}c:{customer_id}"

    def worker(self, worker_id: str) -> str:
        """One worker's heartbeat."""
        return f"{self.prefix}worker:{worker_id}"

    @property
    def sizes(self) -> str:
        return f"{self.prefix}sizes"

    @property
    def members(self) -> str:
        return f"{self.prefix}members"

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

    @property
    def records_pattern(self) -> str:
        """A SCAN pattern matching every record (glob characters in the prefix escaped).

        >>> Keys("t[1]:").records_pattern
        't\\\\[1\\\\]:c:*'
        """
        return f"{_escape(self.prefix)}c:*"

    @property
    def workers_pattern(self) -> str:
        """A SCAN pattern matching every worker's heartbeat."""
        return f"{_escape(self.prefix)}worker:*"


def record_key(prefix: str, customer_id: str) -> str:
    """The Redis key of one customer's record: ``Keys(prefix).record(customer_id)``.

    >>> record_key("seg:", "c-42")
    'seg:c:c-42'
    """
    return Keys(prefix).record(customer_id)


def _escape(text: str) -> str:
    return _GLOB.sub(r"\\\1", text)
