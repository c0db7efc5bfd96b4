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
connection encoding text as UTF-8 (redis-py's default), is packed by hiredis's
``pack_command`` (C); any other, or one hiredis refuses, in one join per command in Python:
the command name split as redis-py splits it, ``bytes``, ``str`` and ``int`` encoded directly
(``str`` with the connection's own encoding), anything else (floats, memoryviews, and the
types redis-py refuses, such as ``bool``) through redis-py's encoder, so its errors are the
same; there an argument larger than the cutoff still goes as a chunk of its own, not copied
(hiredis copies every argument into one packed string, as redis-py's sync client does). Per
customer written (the write script's pipeline, 64 calls of about 8 customers): redis-py 16.4
µs, the join 7.6, hiredis 2.4 (one process, alternating, median of 30).
"""

from __future__ import annotations

import functools
from typing import Any

import hiredis
from redis.asyncio.connection import AbstractConnection

__all__ = ["FastPacking", "fast_packing", "use_fast_packing"]

_CUTOFF = 6000  # redis-py's own buffer cutoff
_PLAIN = frozenset({bytes, str, int})  # the types hiredis packs as redis-py does
_UTF8 = frozenset({"utf-8", "utf8", "UTF-8", "UTF8"})


class FastPacking:
    """A mixin for a redis-py asyncio connection class: ``pack_command`` in one join.

    >>> from redis.asyncio.connection import Connection
    >>> conn = fast_packing(Connection)()
    >>> conn.pack_command("EVALSHA", "ab", 1, "k", b"v", "é")
    [b'*6\\r\\n$7\\r\\nEVALSHA\\r\\n$2\\r\\nab\\r\\n$1\\r\\n1\\r\\n$1\\r\\nk\\r\\n$1\\r\\nv\\r\\n$2\\r\\n\\xc3\\xa9\\r\\n']
    """

    encoder: Any

    def pack_command(self, *args: Any) -> list[bytes]:
        # The command name as redis-py splits it ('CONFIG GET' is two arguments).
        assert not isinstance(args[0], float)
        if isinstance(args[0], str):
            args = tuple(args[0].encode().split()) + args[1:]
        elif b" " in args[0]:
            args = tuple(args[0].split()) + args[1:]
        encoder = self.encoder
        encoding, errors = encoder.encoding, encoder.encoding_errors
        if encoding in _UTF8 and errors == "strict" and all(type(a) in _PLAIN for a in args):
            try:
                return [hiredis.pack_command(args)]
            except Exception:  # noqa: BLE001, S110 - packed below, with redis-py's own error
                pass
        output: list[bytes] = []
        parts: list[bytes] = [b"*%d\r\n" % len(args)]
        for arg in args:
            kind = type(arg)
            if kind is bytes:
                data = arg
            elif kind is str:
                data = arg.encode(encoding, errors)
            elif kind is int:
                data = b"%d" % arg
            else:  # float, memoryview, subclasses, and what redis-py refuses (bool, None)
                data = encoder.encode(arg)
            size = len(data)
            if size > _CUTOFF or isinstance(data, memoryview):
                parts.append(b"$%d\r\n" % size)
                output.append(b"".join(parts))
                output.append(data)
                parts = [b"\r\n"]
            else:
                parts.append(b"$%d\r\n%b\r\n" % (size, data))
        output.append(b"".join(parts))
        return output


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
