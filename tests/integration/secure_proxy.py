"""A TLS and SASL/PLAIN front for the Tansu broker, for the security tests.

Tansu 0.6.0 cannot serve TLS (its `--cert` and `--key` flags exclude each other, and the
acceptor is never used), and its SCRAM users can only be created by an already authenticated
client, which its in-memory storage never has. So this proxy plays the secured listener of a
managed Kafka: it terminates TLS with a certificate from the test's own CA and runs the
broker side of the SASL handshake (Kafka protocol SaslHandshake v0-1, SaslAuthenticate v0-2,
mechanism PLAIN) before relaying the connection, byte for byte, to the plaintext broker
(which advertises the proxy's address). Every request before authentication other than
ApiVersions closes the connection, as a broker does.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import struct
import threading
from dataclasses import dataclass, field

from stream.tools.embedded import free_port

API_VERSIONS, SASL_HANDSHAKE, SASL_AUTHENTICATE = 18, 17, 36
UNSUPPORTED_SASL_MECHANISM, SASL_AUTHENTICATION_FAILED = 33, 58


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    (size,) = struct.unpack(">i", await reader.readexactly(4))
    return await reader.readexactly(size)


async def _send_frame(writer: asyncio.StreamWriter, payload: bytes) -> None:
    writer.write(struct.pack(">i", len(payload)) + payload)
    await writer.drain()


def _uvarint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
        shift += 7


def _put_uvarint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


@dataclass
class SecureProxy:
    """Listens on 127.0.0.1:port with TLS (if ``tls`` is given) and SASL/PLAIN (if ``users``).

    Runs its own asyncio loop in a thread (asyncio's streams do TLS in both directions at once,
    which a blocking SSL socket shared by two threads may not).
    """

    upstream_port: int
    tls: ssl.SSLContext | None = None
    users: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    authenticated: int = 0
    refused: int = 0
    _loop: asyncio.AbstractEventLoop | None = None
    _server: asyncio.Server | None = None

    def start(self) -> None:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop

            async def serve() -> None:
                self._server = await asyncio.start_server(
                    self._serve, "127.0.0.1", self.port, ssl=self.tls
                )
                ready.set()

            loop.run_until_complete(serve())
            loop.run_forever()

        threading.Thread(target=run, daemon=True).start()
        if not ready.wait(10):
            raise RuntimeError("the proxy did not start")

    def stop(self) -> None:
        loop, server = self._loop, self._server
        if loop is None or server is None:
            return

        async def close() -> None:
            server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return
        try:
            if self.users and not await self._authenticate(reader, writer, up_reader, up_writer):
                self.refused += 1
                raise ConnectionError("not authenticated")
            await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))
        except (OSError, ConnectionError, asyncio.IncompleteReadError, struct.error, IndexError):
            pass
        finally:
            for w in (writer, up_writer):
                with contextlib.suppress(Exception):
                    w.close()

    async def _authenticate(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
    ) -> bool:
        """The broker's side of the SASL exchange; True once the client proved a password."""
        raw_token_next = False
        while True:
            frame = await _read_frame(reader)
            if raw_token_next:  # SaslHandshake v0: the token comes bare, and so does the answer
                ok = self._check_plain(frame)
                if ok:
                    await _send_frame(writer, b"")
                return ok
            api_key, version, correlation = struct.unpack(">hhi", frame[:8])
            (client_id_len,) = struct.unpack(">h", frame[8:10])
            at = 10 + max(client_id_len, 0)
            if api_key == API_VERSIONS:  # allowed before authentication: the broker answers
                await _send_frame(up_writer, frame)
                await _send_frame(writer, await _read_frame(up_reader))
            elif api_key == SASL_HANDSHAKE:
                (n,) = struct.unpack(">h", frame[at : at + 2])
                mechanism = frame[at + 2 : at + 2 + n].decode(errors="replace")
                error = 0 if mechanism == "PLAIN" else UNSUPPORTED_SASL_MECHANISM
                body = struct.pack(">ihi", correlation, error, 1) + struct.pack(">h", 5) + b"PLAIN"
                await _send_frame(writer, body)
                if error:
                    return False
                raw_token_next = version == 0
            elif api_key == SASL_AUTHENTICATE:
                if version >= 2:  # flexible: tagged fields after the header, compact bytes
                    _, at = _uvarint(frame, at)  # (no tagged fields expected)
                    n, at = _uvarint(frame, at)
                    token = frame[at : at + n - 1]
                else:
                    (n,) = struct.unpack(">i", frame[at : at + 4])
                    token = frame[at + 4 : at + 4 + n]
                ok = self._check_plain(token)
                error = 0 if ok else SASL_AUTHENTICATION_FAILED
                message = None if ok else b"Authentication failed: invalid credentials"
                if version >= 2:
                    body = struct.pack(">i", correlation) + b"\x00" + struct.pack(">h", error)
                    body += _put_uvarint(0 if message is None else len(message) + 1)
                    body += message or b""
                    body += _put_uvarint(1)  # empty auth bytes
                    body += struct.pack(">q", 0) + b"\x00"
                else:
                    body = struct.pack(">ih", correlation, error)
                    if message is None:
                        body += struct.pack(">h", -1)
                    else:
                        body += struct.pack(">h", len(message)) + message
                    body += struct.pack(">i", 0)
                    if version >= 1:
                        body += struct.pack(">q", 0)
                await _send_frame(writer, body)
                return ok
            else:
                return False  # anything else before authentication: the broker hangs up

    def _check_plain(self, token: bytes) -> bool:
        parts = token.split(b"\x00")
        ok = len(parts) == 3 and self.users.get(parts[1].decode(errors="replace")) == (
            parts[2].decode(errors="replace")
        )
        if ok:
            self.authenticated += 1
        return ok

    @staticmethod
    async def _pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        finally:
            with contextlib.suppress(Exception):
                dst.close()
