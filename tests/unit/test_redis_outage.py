"""What counts as Redis being away (``stream.store.errors.is_outage``): redis-py's asyncio
connection can raise a transport's ``AttributeError`` instead of ``ConnectionError`` when its
connection is closed under a write (redis/redis-py#4287); in a Redis Cluster failover test that
stopped a worker. The same error from our own code is a bug and must still stop it."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio.connection import Connection

from stream.store import is_outage, retry_forever


async def _write_on_a_closed_connection() -> None:
    connection = Connection()  # never connected: no writer, as after a disconnect mid-write
    await connection._send_packed_command([b"PING\r\n"])


def test_a_write_on_a_connection_closed_under_it_is_an_outage_and_retried() -> None:
    with pytest.raises(AttributeError) as caught:
        asyncio.run(_write_on_a_closed_connection())
    assert is_outage(caught.value)

    calls = []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) == 1:
            await _write_on_a_closed_connection()
        return "written"

    assert asyncio.run(retry_forever("Redis write", flaky, first_delay=0.01)) == "written"
    assert len(calls) == 2


def test_the_same_error_from_our_own_code_is_not_an_outage() -> None:
    async def ours() -> None:
        raise AttributeError("'NoneType' object has no attribute 'writelines'")

    with pytest.raises(AttributeError) as caught:
        asyncio.run(ours())
    assert not is_outage(caught.value)
    with pytest.raises(AttributeError):
        asyncio.run(retry_forever("Redis write", ours, first_delay=0.01))
    assert not is_outage(TypeError("not callable"))
