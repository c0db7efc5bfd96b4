"""A cheaper way for redis-py's asyncio connections to pack commands.

redis-py's asyncio ``pack_command`` (redis-py 8) appends each argument to a growing buffer with
a new ``bytes.join`` per argument, copying the buffer again every time up to its 6,000-byte
cutoff, and encodes every argument through the generic ``Encoder.encode``. The worker's Redis
write is one pipeline a batch of thousands of arguments (a write script's keys and seven
arguments per customer), and on the step's own writes (500 customers a batch, one event per
message) that packing was about 15 of the 60 µs of client CPU per customer written, more than
the server's 12 µs (``docs/decisions/0001-worker-input-past-faust-streams.md``). Installing
hiredis alone does not change it: redis-py's asyncio connection packs in Python either way
(its sync connection uses hiredis's packer; the asyncio one does not).

``fast_packing`` gives a connection class the same protocol bytes, cheaper: a command whose
arguments are all ``bytes``, ``str`` and ``int`` (every command the worker sends), on a
connection encoding text as UTF-8 strictly (redis-py's default), is packed by hiredis's
``pack_command`` (C); any other (floats, memoryviews, another encoding), or one hiredis
refuses, by redis-py's own ``pack_command``, so its bytes and its errors are redis-py's. Per
customer written (the write script's pipeline, 64 calls of about 8 customers): redis-py 16.4
µs, hiredis 2.4 (one process, alternating, median of 30).
"""

from __future__ import annotations

import functools
from typing import Any

import hiredis
from redis.asyncio.connection import AbstractConnection

__all__ = ["FastPacking", "fast_packing", "use_fast_packing"]

_PLAIN = frozenset({bytes, str, int})  # the types hiredis packs as redis-py does
_UTF8 = frozenset({"utf-8", "utf8", "UTF-8", "UTF8"})


class FastPacking:
    """A mixin for a redis-py asyncio connection class: ``pack_command`` by hiredis where it
    packs as redis-py does, else redis-py's own.

    >>> from redis.asyncio.connection import Connection
    >>> conn = fast_packing(Connection)()
    >>> conn.pack_command("EVALSHA", "ab", 1, "k", b"v", "é")
    [b'*6\\r\\n$7\\r\\nEVALSHA\\r\\n$2\\r\\nab\\r\\n$1\\r\\n1\\r\\n$1\\r\\nk\\r\\n$1\\r\\nv\\r\\n$2\\r\\n\\xc3\\xa9\\r\\n']
    """

    encoder: Any

    def pack_command(self, *args: Any) -> list[bytes]:
        encoder = self.encoder
        if (
            encoder.encoding in _UTF8
            and encoder.encoding_errors == "strict"
            and all(type(a) in _PLAIN for a in args)
        ):
            # The command name as redis-py splits it ('CONFIG GET' is two arguments).
            name = args[0]
            if type(name) is str:
                words = tuple(name.encode().split())
            else:
                words = tuple(name.split()) if b" " in name else (name,)
            try:
                return [hiredis.pack_command(words + args[1:])]
            except Exception:  # noqa: BLE001, S110 - redis-py packs it, with its own error
                pass
        packed: list[bytes] = super().pack_command(*args)  # type: ignore[misc]
        return packed


@functools.cache
def fast_packing(cls: type[AbstractConnection]) -> type[AbstractConnection]:
    """``cls`` with ``FastPacking``'s ``pack_command`` (one subclass per class)."""
    if issubclass(cls, FastPacking):
        return cls
    return type(f"Fast{cls.__name__}", (FastPacking, cls), {})


def use_fast_packing(client: Any) -> None:
    """Make the connections ``client`` opens from now on pack with ``FastPacking``: a
    ``redis.asyncio.Redis`` (its pool's connection class) or a ``redis.asyncio.RedisCluster``
    (the class its nodes manager gives every node it finds, and its seed nodes'). Connections
    are opened on first use, so call it before the first command. A client of another shape
    (a redis-py that moved these attributes) is left as it is: it packs as redis-py does."""
    pool = getattr(client, "connection_pool", None)
    if pool is not None and isinstance(getattr(pool, "connection_class", None), type):
        pool.connection_class = fast_packing(pool.connection_class)
        return
    manager = getattr(client, "nodes_manager", None)
    options = getattr(manager, "connection_kwargs", None)
    if not isinstance(options, dict) or not isinstance(options.get("connection_class"), type):
        return
    options["connection_class"] = fast_packing(options["connection_class"])
    for node in getattr(manager, "startup_nodes", {}).values():
        if isinstance(getattr(node, "connection_class", None), type):
            node.connection_class = fast_packing(node.connection_class)
