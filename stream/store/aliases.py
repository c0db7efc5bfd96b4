"""A customer's record as a reader asks for it: by any id of theirs.

An id merged into another customer (identity stitching, ``models.identity``) has no record;
its alias key names the customer it went to (``Keys.alias``). A read fetches the record and the
alias in one round trip (one MGET: both keys share the id's hash slot), and, for a merged id
only, the customer's record in a second: at most one hop, because the customer at the end of a
chain of merges rewrites the alias of every id merged into it.
"""

from __future__ import annotations

from typing import cast

from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster

from stream.store.connect import AsyncClient, SyncClient
from stream.store.keys import Keys

__all__ = ["read_record", "read_record_sync"]


def read_record_sync(client: SyncClient, keys: Keys, customer_id: str) -> bytes | None:
    """The raw record of ``customer_id``, or of the customer it was merged into; None if
    neither."""
    pair = [keys.record(customer_id), keys.alias(customer_id)]
    found = client.mget_nonatomic(pair) if isinstance(client, RedisCluster) else client.mget(pair)
    raw, into = cast(list[bytes | None], found)
    if raw is None and into is not None:
        raw = cast(bytes | None, client.get(keys.record(into.decode())))
    return raw


async def read_record(client: AsyncClient, keys: Keys, customer_id: str) -> bytes | None:
    """The asyncio twin of ``read_record_sync``."""
    pair = [keys.record(customer_id), keys.alias(customer_id)]
    if isinstance(client, AsyncRedisCluster):
        found = await client.mget_nonatomic(pair)
    else:
        found = await client.mget(pair)
    raw, into = cast(list[bytes | None], found)
    if raw is None and into is not None:
        raw = cast(bytes | None, await client.get(keys.record(into.decode())))
    return raw
