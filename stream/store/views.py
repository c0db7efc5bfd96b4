"""Reads for the customer and segment views (``GET /api/customers/{id}``,
``GET /api/segments/{name}``), over a ``SegmentClient``'s connection: one customer's record
with their recent segment changes, and a segment's example members.

Both come from what the write script keeps (``stream.store.scripts``): the customer's changes
list sits in the record's hash slot, so the record and its changes are one round trip to one
node; a segment's examples are one field of each of the 64 ``examples`` hashes, one pipeline.
"""

from __future__ import annotations

from typing import Any, cast

from stream.store.client import SegmentClient
from stream.store.codec import decode_changes, decode_record, pick_examples
from stream.store.errors import unavailable_on_error
from stream.store.keys import CHANGES_KEPT, shard_of

__all__ = ["customer_with_changes", "segment_examples"]


@unavailable_on_error
def customer_with_changes(
    client: SegmentClient, customer_id: str, limit: int = CHANGES_KEPT
) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """The customer's record (None: unknown) and recent segment changes, newest first. An id
    merged into another customer (``stream.store.aliases``) reads that customer's: its record
    then names the other id."""
    raw, into, lines = _record_alias_changes(client, customer_id)
    if raw is None and into is not None:
        customer_id = into.decode()
        raw, _, lines = _record_alias_changes(client, customer_id)
    if raw is None:
        return None, []
    return decode_record(raw), decode_changes(customer_id, lines, limit)


def _record_alias_changes(
    client: SegmentClient, customer_id: str
) -> tuple[bytes | None, bytes | None, bytes | None]:
    """The id's record, alias and changes: one pipeline to the one node of its hash slot."""
    keys = client.keys
    pipe = client.client.pipeline(transaction=False)
    pipe.get(keys.record(customer_id))
    pipe.get(keys.alias(customer_id))
    pipe.hget(keys.changes(shard_of(customer_id)), customer_id)
    return cast(tuple[bytes | None, bytes | None, bytes | None], tuple(pipe.execute()))


@unavailable_on_error
def segment_examples(client: SegmentClient, segment: str, limit: int = 10) -> list[str]:
    """Up to ``limit`` customers in the segment (``cluster:3``, ``rule:vip``, ...)."""
    pipe = client.client.pipeline(transaction=False)
    for name in client.keys.all_examples:
        pipe.hget(name, segment)
    return pick_examples(cast(list[bytes | None], pipe.execute()), limit)
