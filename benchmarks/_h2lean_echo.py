"""A bare gRPC echo on asyncio with a lean HTTP/2 frame layer of our own + ``hpack``.

Step 1 of brief h2grpc, the second candidate beside benchmarks/_h2_echo.py (the ``h2``
library): frames parsed by hand on the hot path (DATA, HEADERS), header blocks decoded
by ``hpack``, the answer's header blocks constant bytes (literals, never indexed: no
encoder state). Just enough HTTP/2 for grpc clients' unary calls: SETTINGS, PING,
WINDOW_UPDATE both ways, RST_STREAM, GOAWAY. Prints ``gRPC listening on
127.0.0.1:PORT`` and serves until SIGTERM.

Usage: ``python benchmarks/_h2lean_echo.py``
"""

from __future__ import annotations

import asyncio
import signal
import struct
import sys

import hpack

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_HEAD = struct.Struct(">I B I")  # 3-byte length + type read as 4 bytes, flags, stream
DATA, HEADERS, PRIORITY, RST, SETTINGS, PUSH, PING, GOAWAY, WINDOW, CONT = range(10)
END_STREAM, ACK, END_HEADERS, PADDED, PRIO = 0x1, 0x1, 0x4, 0x8, 0x20


def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))[1:]
        + bytes((kind, flags))
        + stream.to_bytes(4, "big")
        + payload
    )


def _literal(name: bytes, value: bytes) -> bytes:  # literal without indexing, new name
    return b"\x00" + bytes((len(name),)) + name + bytes((len(value),)) + value


_RESPONSE_HEAD = b"\x88" + _literal(b"content-type", b"application/grpc")
_OK_TRAILERS = _literal(b"grpc-status", b"0")
_SERVER_SETTINGS = _frame(
    SETTINGS, 0, 0, struct.pack(">HIHIHI", 3, 100, 4, 1 << 20, 6, 16384)
) + _frame(WINDOW, 0, 0, struct.pack(">I", (1 << 24)))
_SETTINGS_ACK = _frame(SETTINGS, ACK, 0, b"")


class LeanEcho(asyncio.Protocol):
    def __init__(self):
        self.buffer = b""
        self.preface = False
        self.decoder = hpack.Decoder()
        self.streams: dict[int, list[bytes]] = {}
        self.transport = None
        self.unacked = 0

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.write(_SERVER_SETTINGS)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data if self.buffer else data
        if not self.preface:
            if len(buffer) < 24:
                self.buffer = buffer
                return
            if buffer[:24] != PREFACE:
                self.transport.close()
                return
            self.preface = True
            buffer = buffer[24:]
        out = []
        pos, end = 0, len(buffer)
        unpack = _HEAD.unpack_from
        streams = self.streams
        while end - pos >= 9:
            word, flags, stream = unpack(buffer, pos)
            length, kind = word >> 8, word & 0xFF
            stream &= 0x7FFFFFFF
            if end - pos - 9 < length:
                break
            payload = buffer[pos + 9 : pos + 9 + length]
            pos += 9 + length
            if kind == DATA:
                if flags & PADDED:
                    payload = payload[1 : len(payload) - payload[0]]
                body = streams.get(stream)
                if body is not None:
                    body.append(payload)
                self.unacked += length
                if flags & END_STREAM and body is not None:
                    del streams[stream]
                    message = b"".join(body)
                    sid = stream.to_bytes(4, "big")
                    out.append(
                        struct.pack(">I", len(_RESPONSE_HEAD))[1:]
                        + bytes((HEADERS, END_HEADERS))
                        + sid
                        + _RESPONSE_HEAD
                        + struct.pack(">I", len(message))[1:]
                        + bytes((DATA, 0))
                        + sid
                        + message
                        + struct.pack(">I", len(_OK_TRAILERS))[1:]
                        + bytes((HEADERS, END_HEADERS | END_STREAM))
                        + sid
                        + _OK_TRAILERS
                    )
            elif kind == HEADERS:
                if flags & PADDED:
                    payload = payload[1 : len(payload) - payload[0]]
                if flags & PRIO:
                    payload = payload[5:]
                self.decoder.decode(payload, raw=True)  # keeps the dynamic table in step
                streams[stream] = []
            elif kind == SETTINGS:
                if not flags & ACK:
                    out.append(_SETTINGS_ACK)
            elif kind == PING:
                if not flags & ACK:
                    out.append(_frame(PING, ACK, 0, payload))
            elif kind == RST:
                streams.pop(stream, None)
            elif kind == GOAWAY:
                self.transport.close()
                return
        self.buffer = buffer[pos:]
        if self.unacked > 1 << 22:  # a connection-level window top-up, now and then
            out.append(_frame(WINDOW, 0, 0, struct.pack(">I", self.unacked)))
            self.unacked = 0
        if out:
            self.transport.write(b"".join(out))


async def _serve() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(LeanEcho, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    print(f"gRPC listening on 127.0.0.1:{port}", file=sys.stderr, flush=True)
    await stop.wait()
    server.close()


def main() -> None:
    try:
        import uvloop

        uvloop.run(_serve())
    except ImportError:
        asyncio.run(_serve())


if __name__ == "__main__":
    main()
