"""``stream.store.packing``: the same protocol bytes as redis-py's own packing, and its errors.

redis-py's asyncio ``Connection.pack_command`` is the oracle; no server is needed to pack. Each
property runs on a connection with redis-py's default encoding (commands of bytes, str and int
go through hiredis's packer) and on one that replaces encoding errors (every command left to
redis-py's own packer), so both paths are compared.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.exceptions import DataError

from stream.store.connect import async_client
from stream.store.packing import FastPacking, fast_packing

_ARG = st.one_of(
    st.binary(max_size=40),
    st.text(max_size=40),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.binary(min_size=5990, max_size=6100),  # around redis-py's 6,000-byte cutoff
    st.text(min_size=3000, max_size=3100),  # non-ASCII text passes the cutoff encoded
    st.binary(max_size=20).map(memoryview),
)
_SMALL_ARG = st.one_of(
    st.binary(max_size=40),
    st.text(max_size=40),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
)
_OPTIONS = pytest.mark.parametrize("options", [{}, {"encoding_errors": "replace"}])
_NAME = st.sampled_from(
    ["SET", "EVALSHA", "CONFIG GET", "CLIENT\tLIST", b"HINCRBY", b"CLIENT SETNAME", b"A\tB"]
)


def _packed(conn: Connection, *args: object) -> bytes:
    return b"".join(bytes(chunk) for chunk in conn.pack_command(*args))


@_OPTIONS
@settings(max_examples=60, suppress_health_check=[HealthCheck.data_too_large])
@given(name=_NAME, args=st.lists(_ARG, max_size=30))
def test_a_command_packs_to_the_bytes_redis_py_packs(
    options: dict[str, str], name: object, args: list[object]
) -> None:
    plain, fast = Connection(**options), fast_packing(Connection)(**options)
    assert _packed(fast, name, *args) == _packed(plain, name, *args)


@_OPTIONS
@settings(max_examples=60)
@given(commands=st.lists(st.lists(_SMALL_ARG, max_size=12), max_size=20))
def test_a_pipeline_packs_to_the_bytes_redis_py_packs(
    options: dict[str, str], commands: list[list[object]]
) -> None:
    plain, fast = Connection(**options), fast_packing(Connection)(**options)
    commands = [["EVALSHA", *args] for args in commands]
    expected = b"".join(bytes(c) for c in plain.pack_commands(commands))
    assert b"".join(bytes(c) for c in fast.pack_commands(commands)) == expected


def test_another_encoding_is_the_connections_own() -> None:
    plain = Connection(encoding="latin-1")
    fast = fast_packing(Connection)(encoding="latin-1")
    assert _packed(fast, "SET", "k", "é") == _packed(plain, "SET", "k", "é")
    assert _packed(fast, "SET", "k", "é").endswith(b"$1\r\n\xe9\r\n")


@pytest.mark.parametrize("bad", [True, None, object(), [1]])
def test_what_redis_py_refuses_is_refused_alike(bad: object) -> None:
    with pytest.raises(DataError):
        Connection().pack_command("SET", "k", bad)
    with pytest.raises(DataError):
        fast_packing(Connection)().pack_command("SET", "k", bad)


def test_the_workers_commands_go_to_hiredis_and_others_to_redis_py(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import stream.store.packing as packing

    calls = []
    real = packing.hiredis.pack_command
    monkeypatch.setattr(packing.hiredis, "pack_command", lambda a: calls.append(a) or real(a))
    conn = fast_packing(Connection)()
    conn.pack_command("EVALSHA", "ab", 2, "k1", "k2", 5, b"\x28\xb5", '["rule:a"]')
    assert len(calls) == 1
    conn.pack_command("SET", "k", 1.5)  # a float: packed by redis-py, with its repr
    conn.pack_command("SET", "k", memoryview(b"v"))
    assert len(calls) == 1


def test_a_large_value_left_to_redis_py_is_its_own_chunk_not_copied() -> None:
    value = b"x" * 10_000
    chunks = fast_packing(Connection)(encoding_errors="replace").pack_command("SET", "k", value)
    assert any(chunk is value for chunk in chunks)


def test_every_client_the_store_makes_packs_fast() -> None:
    for url in ("redis://127.0.0.1:1/0", "rediss://127.0.0.1:1/0", "unix:///tmp/none.sock"):
        cls = async_client(url).connection_pool.connection_class
        assert issubclass(cls, FastPacking)
    assert issubclass(
        async_client("rediss://127.0.0.1:1/0").connection_pool.connection_class, SSLConnection
    )
    assert issubclass(
        async_client("unix:///tmp/none.sock").connection_pool.connection_class,
        UnixDomainSocketConnection,
    )
    for url in ("redis+cluster://127.0.0.1:1,127.0.0.1:2", "rediss+cluster://127.0.0.1:1"):
        manager = async_client(url).nodes_manager
        assert issubclass(manager.connection_kwargs["connection_class"], FastPacking)
        assert manager.startup_nodes
        for node in manager.startup_nodes.values():
            assert issubclass(node.connection_class, FastPacking)
    assert issubclass(
        async_client("rediss+cluster://127.0.0.1:1").nodes_manager.connection_kwargs[
            "connection_class"
        ],
        SSLConnection,
    )
