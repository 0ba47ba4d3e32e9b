"""A TLS-terminating gRPC proxy in front of a plaintext dev server, for the tests.

It terminates TLS (optionally requiring a client certificate signed by its CA), forwards the
HTTP/2 bytes to the dev server's gRPC port, and reads every request's headers on the way
(HPACK-decoded), so a test sees the API key and gRPC metadata a client really sent. With
`api_key` set it is the frontend that checks keys, as Temporal Cloud does: a connection whose
first request carries another key is answered `UNAUTHENTICATED` and never forwarded.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import struct
from dataclasses import dataclass, field
from pathlib import Path

import hpack

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
HEADERS, SETTINGS, CONTINUATION = 0x1, 0x4, 0x9
END_STREAM, END_HEADERS, PADDED, PRIORITY = 0x1, 0x4, 0x8, 0x20


def server_context(cert: Path, key: Path, client_ca: Path | None) -> ssl.SSLContext:
    """Server TLS; with `client_ca`, a client certificate signed by it is required."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["h2"])
    if client_ca is not None:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(client_ca)
    return ctx


def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + \
        struct.pack(">I", stream & 0x7FFFFFFF) + payload


class _Frames:
    """Splits the client's byte stream into frames and decodes its header blocks."""

    def __init__(self) -> None:
        self.buf = b""
        self.preface = False
        self.decoder = hpack.Decoder()
        self.decoder.max_allowed_table_size = 65536
        self.block = b""
        self.block_stream = 0

    def feed(self, data: bytes) -> list[tuple[int, dict[str, str]]]:
        """Complete header blocks (stream id, headers) in the data so far."""
        self.buf += data
        out: list[tuple[int, dict[str, str]]] = []
        if not self.preface:
            if len(self.buf) < len(PREFACE):
                return out
            assert self.buf.startswith(PREFACE), "not HTTP/2"
            self.buf, self.preface = self.buf[len(PREFACE):], True
        while len(self.buf) >= 9:
            length = int.from_bytes(self.buf[:3], "big")
            if len(self.buf) < 9 + length:
                break
            kind, flags = self.buf[3], self.buf[4]
            stream = int.from_bytes(self.buf[5:9], "big") & 0x7FFFFFFF
            payload, self.buf = self.buf[9:9 + length], self.buf[9 + length:]
            if kind == HEADERS:
                if flags & PADDED:
                    pad = payload[0]
                    payload = payload[1:len(payload) - pad]
                if flags & PRIORITY:
                    payload = payload[5:]
                self.block, self.block_stream = payload, stream
            elif kind == CONTINUATION:
                self.block += payload
            else:
                continue
            if flags & END_HEADERS:
                headers = {k.lower(): v for k, v in self.decoder.decode(self.block)}
                out.append((self.block_stream, headers))
        return out


@dataclass
class GrpcProxy:
    upstream: str  # host:port of the plaintext dev server
    context: ssl.SSLContext | None
    api_key: str | None = None
    requests: list[dict[str, str]] = field(default_factory=list)
    rejected: int = 0
    connections: int = 0
    port: int = 0
    _server: asyncio.Server | None = None

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0,
                                                  ssl=self.context)
        self.port = self._server.sockets[0].getsockname()[1]
        return f"localhost:{self.port}"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)

    def header_values(self, name: str) -> set[str]:
        return {r[name] for r in self.requests if name in r}

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        frames = _Frames()
        held = b""
        try:
            first: tuple[int, dict[str, str]] | None = None
            while first is None:  # hold everything until the first request's headers
                data = await reader.read(65536)
                if not data:
                    return
                held += data
                blocks = frames.feed(data)
                self.requests += [h for _, h in blocks]
                first = blocks[0] if blocks else None
            if self.api_key is not None and \
                    first[1].get("authorization") != f"Bearer {self.api_key}":
                self.rejected += 1
                await self._refuse(writer, first[0])
                return
            host, _, port = self.upstream.rpartition(":")
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
            up_writer.write(held)
            await asyncio.gather(self._pipe(reader, up_writer, frames),
                                 self._pipe(up_reader, writer, None))
        except (ConnectionError, ssl.SSLError, OSError, asyncio.IncompleteReadError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                    frames: _Frames | None) -> None:
        try:
            while data := await src.read(65536):
                if frames is not None:
                    self.requests += [h for _, h in frames.feed(data)]
                dst.write(data)
                await dst.drain()
        except (ConnectionError, ssl.SSLError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                dst.close()

    async def _refuse(self, writer: asyncio.StreamWriter, stream: int) -> None:
        """What a key-checking frontend answers: a trailers-only gRPC response."""
        block = hpack.Encoder().encode([(":status", "200"), ("content-type", "application/grpc"),
                                        ("grpc-status", "16"),
                                        ("grpc-message", "invalid API key")])
        writer.write(_frame(SETTINGS, 0, 0, b"") + _frame(SETTINGS, 0x1, 0, b"")
                     + _frame(HEADERS, END_HEADERS | END_STREAM, stream, block))
        await writer.drain()
