"""The store's errors: Redis away is ``StoreUnavailable``, naming the server without its
password; a Redis URL or key prefix the store cannot use is ``RedisConfigError``."""

from __future__ import annotations

import functools
import inspect
import traceback
from collections.abc import Callable
from typing import Any, TypeVar, cast

import redis
from redis.exceptions import (
    AskError,
    ClusterError,
    ReadOnlyError,
    RedisClusterException,
    TryAgainError,
)

from stream.errors import SegmenterError

__all__ = [
    "REDIS_ERRORS",
    "REDIS_OUTAGE",
    "is_outage",
    "RedisConfigError",
    "StoreUnavailable",
    "safe_url",
    "unavailable_on_error",
]

#: What Redis being away looks like to a client: retried or skipped, never fatal to a worker.
#: Besides connections and timeouts, what a Redis Cluster answers while a master fails over or
#: slots move: CLUSTERDOWN and MASTERDOWN (``ClusterError``), TRYAGAIN, MOVED and ASK that the
#: client's own redirections did not settle (``AskError`` covers ``MovedError``), READONLY
#: (a node that was a master is now a replica), and redis-py's cluster exceptions (a slot not
#: covered, no startup node reachable: ``RedisClusterException``, not a ``RedisError``).
REDIS_OUTAGE: tuple[type[BaseException], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    OSError,
    ClusterError,
    TryAgainError,
    AskError,
    ReadOnlyError,
    RedisClusterException,
)

#: Where a connection's transport error comes from: redis-py's asyncio connection, or the
#: asyncio transport under it.
_TRANSPORT_FILES = (
    "redis/asyncio/connection.py",
    "asyncio/streams.py",
    "asyncio/selector_events.py",
    "asyncio/sslproto.py",
)


def is_outage(exc: BaseException) -> bool:
    """Whether an error is Redis being away: one of ``REDIS_OUTAGE``, or what redis-py's
    asyncio connection raises instead of ``ConnectionError`` when its connection is closed
    under a write (an ``AttributeError`` or ``TypeError`` of the transport, raised in redis-py's
    connection or the asyncio transport it writes to: redis/redis-py#4287; seen here in a Redis
    Cluster failover, ``'NoneType' object has no attribute 'writelines'``, which stopped a
    worker). The same error from anywhere else is a bug, not an outage.

    >>> is_outage(redis.ConnectionError("refused")), is_outage(AttributeError("ours"))
    (True, False)
    """
    if isinstance(exc, REDIS_OUTAGE):
        return True
    if not isinstance(exc, AttributeError | TypeError):
        return False
    files = [
        frame.f_code.co_filename.replace("\\", "/")
        for frame, _ in traceback.walk_tb(exc.__traceback__)
    ]
    return (
        bool(files)
        and files[-1].endswith(_TRANSPORT_FILES)
        and any(f.endswith(_TRANSPORT_FILES[0]) for f in files)
    )


#: Every error a Redis client raises: redis-py's cluster client raises some that are not a
#: ``RedisError``.
REDIS_ERRORS: tuple[type[BaseException], ...] = (redis.RedisError, RedisClusterException)


class RedisConfigError(SegmenterError, ValueError):
    """A Redis URL or key prefix the store cannot use; the message says why."""


class StoreUnavailable(SegmenterError):
    """Redis could not be reached; the message says where and why."""

    @classmethod
    def at(cls, url: str, exc: BaseException, what: str = "") -> StoreUnavailable:
        """``Redis at <url without password>[ what]: <exc>``.

        >>> StoreUnavailable.at("redis://:pw@h:1/0", OSError("refused"), "is not reachable")
        StoreUnavailable('Redis at redis://***@h:1/0 is not reachable: refused')
        """
        return cls(f"Redis at {safe_url(url)}{' ' + what if what else ''}: {exc}")


def safe_url(url: str) -> str:
    """A URL without its password, for messages and logs.

    >>> safe_url("redis://:pw@host:6379/0")
    'redis://***@host:6379/0'
    """
    if "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    return f"{scheme}://***@{rest.split('@', 1)[1]}"


_Method = TypeVar("_Method", bound=Callable[..., Any])


def unavailable_on_error(method: _Method) -> _Method:
    """Turn any Redis error of a client method into ``StoreUnavailable`` naming the server
    (``self.url``); a generator method is covered while it is iterated, a coroutine method
    while it is awaited."""
    if inspect.isgeneratorfunction(method):

        @functools.wraps(method)
        def generator(self: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                yield from method(self, *args, **kwargs)
            except REDIS_ERRORS as exc:
                raise StoreUnavailable.at(self.url, exc) from exc

        return cast(_Method, generator)

    if inspect.iscoroutinefunction(method):

        @functools.wraps(method)
        async def coroutine(self: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                return await method(self, *args, **kwargs)
            except REDIS_ERRORS as exc:
                raise StoreUnavailable.at(self.url, exc) from exc

        return cast(_Method, coroutine)

    @functools.wraps(method)
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except REDIS_ERRORS as exc:
            raise StoreUnavailable.at(self.url, exc) from exc

    return cast(_Method, call)
