"""One setting for a single Redis and a Redis Cluster: the URL says which, and every reader and
writer gets its client here.

- ``redis://[[user]:password@]host:port[/db]``, ``rediss://`` (TLS) or ``unix://``: one Redis.
- ``redis+cluster://[[user]:password@]host:port[,host:port...][/0]`` or ``rediss+cluster://``
  (TLS): a Redis Cluster; the nodes listed are seeds (one reachable is enough, the client
  discovers the rest and follows failovers). A cluster has only database 0.

Query parameters are redis-py's connection options in both forms, e.g.
``?ssl_ca_certs=/path/ca.pem``. The clients are redis-py's: ``redis.Redis`` or
``redis.cluster.RedisCluster`` (sync), and their asyncio twins.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeAlias
from urllib.parse import urlsplit

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode as AsyncClusterNode
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialWithJitterBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.connection import parse_url
from redis.retry import Retry

from stream.store.errors import RedisConfigError, safe_url
from stream.store.packing import use_fast_packing

__all__ = [
    "AsyncClient",
    "RedisAddress",
    "SyncClient",
    "async_client",
    "is_cluster",
    "parse_redis_url",
    "sync_client",
]

SyncClient: TypeAlias = "redis.Redis | RedisCluster"
AsyncClient: TypeAlias = "aioredis.Redis | AsyncRedisCluster"

_CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
_SINGLE_SCHEMES = {"redis", "rediss", "unix"}


@dataclass(frozen=True, slots=True)
class RedisAddress:
    """A parsed ``SEGMENTER_REDIS_URL``: ``url`` is a redis-py URL (the server's, or the first
    seed node's), ``seeds`` every seed node of a cluster (empty for one Redis)."""

    url: str
    seeds: tuple[tuple[str, int], ...] = ()

    @property
    def cluster(self) -> bool:
        return bool(self.seeds)


def parse_redis_url(url: str) -> RedisAddress:
    """Check a Redis URL and say what it points at; ``RedisConfigError`` names the problem
    (never the password).

    >>> parse_redis_url("redis://127.0.0.1:6379/0")
    RedisAddress(url='redis://127.0.0.1:6379/0', seeds=())
    >>> a = parse_redis_url("rediss+cluster://:pw@10.0.0.1:7000,10.0.0.2/0?ssl_ca_certs=/ca.pem")
    >>> a.url, a.seeds
    ('rediss://:pw@10.0.0.1:7000/0?ssl_ca_certs=/ca.pem', (('10.0.0.1', 7000), ('10.0.0.2', 6379)))
    >>> parse_redis_url("redis+cluster://:pw@h:7000/2")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    stream.store.errors.RedisConfigError: Redis URL redis+cluster://***@h:7000/2: a Redis ...
    """
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in _SINGLE_SCHEMES:
        _check(url, url)
        return RedisAddress(url)
    base = _CLUSTER_SCHEMES.get(scheme)
    if base is None:
        raise _bad(
            url,
            "the scheme must be redis://, rediss:// (TLS), unix://, redis+cluster:// or "
            "rediss+cluster:// (a Redis Cluster, TLS)",
        )
    parts = urlsplit(url)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    seeds = tuple(_host_port(url, h.strip()) for h in hosts.split(","))
    if parts.path not in ("", "/", "/0"):
        raise _bad(url, "a Redis Cluster has only database 0")
    host, port = seeds[0]
    netloc = f"{userinfo}@" if userinfo else ""
    netloc += f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    first = f"{base}://{netloc}{parts.path}" + (f"?{parts.query}" if parts.query else "")
    _check(url, first)
    return RedisAddress(first, seeds)


def is_cluster(url: str) -> bool:
    """Whether a Redis URL names a Redis Cluster (its scheme ends in ``+cluster``).

    >>> is_cluster("redis+cluster://h:7000"), is_cluster("rediss://h:6380/0")
    (True, False)
    """
    return url.split("://", 1)[0].lower() in _CLUSTER_SCHEMES


def sync_client(url: str, **options: Any) -> SyncClient:
    """A synchronous client for ``url``; ``options`` are redis-py's (``socket_timeout``, ...).

    A cluster client connects here (redis-py reads the cluster's slots when it is made), so it
    can raise a connection error; a single Redis's connects on its first command.
    """
    address = parse_redis_url(url)
    if not address.cluster:
        return redis.Redis.from_url(url, **options)
    seeds = [ClusterNode(host, port) for host, port in address.seeds[1:]]  # type: ignore[no-untyped-call]
    return RedisCluster.from_url(address.url, startup_nodes=seeds, **_cluster(options, Retry))


def async_client(url: str, **options: Any) -> AsyncClient:
    """The asyncio client for ``url`` (it connects on its first command); its connections pack
    commands with hiredis (``stream.store.packing``: the worker's writes are large pipelines)."""
    address = parse_redis_url(url)
    client: AsyncClient
    if not address.cluster:
        client = aioredis.Redis.from_url(url, **options)
    else:
        seeds = [AsyncClusterNode(host, port) for host, port in address.seeds[1:]]
        client = AsyncRedisCluster.from_url(
            address.url, startup_nodes=seeds, **_cluster(options, AsyncRetry)
        )
    use_fast_packing(client)
    return client


def _cluster(options: dict[str, Any], retry: type[Retry] | type[AsyncRetry]) -> dict[str, Any]:
    """A cluster client's options: unless given, 3 retries (redis-py's default is 10) of a
    command that met a connection error or CLUSTERDOWN, as a single Redis client makes, so a
    reader fails within seconds; redirections (MOVED, ASK) are followed regardless. The
    worker's writes retry for as long as it takes on top (``retry_forever``)."""
    backoff = ExponentialWithJitterBackoff(base=0.05, cap=1.0)
    return {"retry": retry(backoff, retries=3), **options}


def _host_port(url: str, text: str) -> tuple[str, int]:
    try:
        parsed = urlsplit(f"//{text}")
        host, port = parsed.hostname, parsed.port
    except ValueError as exc:
        raise _bad(url, f"bad node {text!r} ({exc})") from None
    if not host:
        raise _bad(url, f"bad node {text!r}: host:port, several separated by commas")
    return host, port or 6379


def _check(url: str, single: str) -> None:
    """What redis-py itself would refuse, at start-up rather than at the first command."""
    try:
        parse_url(single)  # type: ignore[no-untyped-call]
    except ValueError as exc:
        raise _bad(url, str(exc)) from None


def _bad(url: str, why: str) -> RedisConfigError:
    return RedisConfigError(f"Redis URL {safe_url(url)}: {why}")
