"""A light gRPC load generator for serve_bench.py, run as its own process.

``CLIENTS`` concurrent callers to 127.0.0.1, each sending one unary request at a time
(the next as soon as the answer is in), for ``--seconds`` after ``--warmup`` seconds
(or until ``--max-requests``). The request is prebuilt, serialized bytes (from
``REQUEST_FILE``) sent with identity serializers, so the client spends no time on
protobuf. Prints one JSON line like _serve_load.py's.

The client is the users' kind: ``tritonclient.grpc`` and TF Serving's
``PredictionServiceStub`` are blocking calls on a sync ``grpc.insecure_channel``. With
``--mode sync`` (the default) each caller is a thread making blocking calls on a channel
of its own; ``--mode aio`` runs the callers as tasks on one ``grpc.aio`` channel.

``--mode raw`` (one caller) is the kind of client _serve_load.py is for REST: HTTP/2 on
raw asyncio streams, the request's frames prebuilt (headers by HPACK's static and
dynamic tables after the first call, as HTTP/2 clients send them; only the stream id
changes), one write a call, frames read until the call's END_STREAM. grpcio's client
hands each call between its own threads (~6 futex calls a call, measured), which the
REST generator does not: this mode measures a gRPC server the way the REST rows
measure a REST server. A call counts as failed when its stream ends without a message
(gRPC's errors are trailers only).

Usage: ``python benchmarks/_grpc_load.py ADDRESS METHOD REQUEST_FILE --clients N --seconds S
[--mode sync|aio|raw]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
from pathlib import Path

import grpc
import hpack
from _serve_load import summary  # this folder is the script's: on sys.path


def _identity(b: bytes) -> bytes:
    return b


class _Tally:
    """What the callers share: latencies after the warm-up, counts, the request budget."""

    def __init__(self, budget: int):
        self.latencies: list[float] = []
        self.errors = 0
        self.total = 0
        self.budget = budget
        self.lock = threading.Lock()


def _run_sync(args, request: bytes) -> dict:
    tally = _Tally(args.max_requests)
    channels = [grpc.insecure_channel(args.address) for _ in range(args.clients)]
    calls = [
        c.unary_unary(args.method, request_serializer=_identity, response_deserializer=_identity)
        for c in channels
    ]
    for call in calls:
        call(request, timeout=30)  # connected and warm
    now = time.perf_counter()
    warm_at, stop_at = now + args.warmup, now + args.warmup + args.seconds

    def client(call) -> None:
        mine: list[float] = []
        errors = total = 0
        while True:
            started = time.perf_counter()
            if started >= stop_at:
                break
            with tally.lock:
                if tally.budget <= 0:
                    break
                tally.budget -= 1
            failed = False
            try:
                call(request, timeout=30)
            except grpc.RpcError:
                failed = True
            done = time.perf_counter()
            total += 1
            if started >= warm_at:
                mine.append(done - started)
                errors += failed
        with tally.lock:
            tally.latencies += mine
            tally.errors += errors
            tally.total += total

    if args.clients == 1:
        client(calls[0])
    else:
        threads = [threading.Thread(target=client, args=(c,)) for c in calls]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    for c in channels:
        c.close()
    return summary(tally.latencies, stop_at, warm_at, args.clients, tally.total, tally.errors)


async def _run_aio(args, request: bytes) -> dict:
    tally = _Tally(args.max_requests)
    async with grpc.aio.insecure_channel(args.address) as channel:
        call = channel.unary_unary(
            args.method, request_serializer=_identity, response_deserializer=_identity
        )
        await call(request, timeout=30)  # connected and warm
        now = time.perf_counter()
        warm_at, stop_at = now + args.warmup, now + args.warmup + args.seconds

        async def client() -> None:
            while True:
                started = time.perf_counter()
                if started >= stop_at or tally.budget <= 0:
                    return
                tally.budget -= 1
                failed = False
                try:
                    await call(request, timeout=30)
                except grpc.aio.AioRpcError:
                    failed = True
                done = time.perf_counter()
                tally.total += 1
                if started >= warm_at:
                    tally.latencies.append(done - started)
                    tally.errors += failed

        await asyncio.gather(*(client() for _ in range(args.clients)))
    return summary(tally.latencies, stop_at, warm_at, args.clients, tally.total, tally.errors)


def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return (
        len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload
    )


async def _run_raw(args, request: bytes) -> dict:
    if args.clients != 1:
        raise SystemExit("--mode raw: one client only")
    host, port = args.address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    # HPACK by hpack's encoder, as HTTP/2 clients send it (grpcio's too): the first call's
    # block adds the headers to the dynamic table, every later call's names them by index
    # (the same bytes each time: only the stream id changes).
    encoder = hpack.Encoder()
    headers = [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", args.method),
        (":authority", args.address),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]
    first_block = encoder.encode(headers)
    block = encoder.encode(headers)
    message = b"\x00" + len(request).to_bytes(4, "big") + request
    # The connection's receive window opened wide: answers are never held back by it.
    writer.write(
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
        + _frame(4, 0, 0, b"")
        + _frame(8, 0, 0, ((1 << 31) - 1 - 65535).to_bytes(4, "big"))
    )
    stream = [-1]
    pending = bytearray()  # bytes read past the last whole frame

    async def call() -> bool:
        stream[0] += 2
        sid = stream[0]
        head = first_block if sid == 1 else block
        writer.write(_frame(1, 4, sid, head) + _frame(0, 1, sid, message))
        got_message = False
        while True:
            # Whole frames first (a read may have brought more than the last answer), then
            # whatever the socket holds in one read (an answer's three frames, usually), as
            # _serve_load.py reads an HTTP answer.
            at = 0
            while len(pending) - at >= 9:
                length = int.from_bytes(pending[at : at + 3], "big")
                end = at + 9 + length
                if end > len(pending):
                    break
                kind, flags = pending[at + 3], pending[at + 4]
                on = int.from_bytes(pending[at + 5 : at + 9], "big") & 0x7FFFFFFF
                if kind == 4 and not flags & 1:  # the server's settings: acknowledged
                    writer.write(_frame(4, 1, 0, b""))
                elif kind == 6 and not flags & 1:  # a ping: answered
                    writer.write(_frame(6, 1, 0, bytes(pending[at + 9 : end])))
                elif kind == 7:
                    raise ConnectionError("GOAWAY from the server")
                elif on == sid and kind == 3:  # RST_STREAM: the call failed
                    del pending[:end]
                    return False
                elif on == sid and kind in (0, 1):
                    got_message |= kind == 0 and length > 5
                    if flags & 1:
                        del pending[:end]
                        return got_message
                at = end
            del pending[:at]
            data = await reader.read(1 << 16)
            if not data:
                raise ConnectionError("the server closed the connection")
            pending.extend(data)

    tally = _Tally(args.max_requests)
    await call()  # connected and warm
    now = time.perf_counter()
    warm_at, stop_at = now + args.warmup, now + args.warmup + args.seconds
    while True:
        started = time.perf_counter()
        if started >= stop_at or tally.budget <= 0:
            break
        tally.budget -= 1
        ok = await call()
        done = time.perf_counter()
        tally.total += 1
        if started >= warm_at:
            tally.latencies.append(done - started)
            tally.errors += not ok
    writer.close()
    return summary(tally.latencies, stop_at, warm_at, args.clients, tally.total, tally.errors)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("address")
    parser.add_argument("method")
    parser.add_argument("request_file")
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--max-requests", type=int, default=200_000)
    parser.add_argument("--mode", choices=("sync", "aio", "raw"), default="sync")
    args = parser.parse_args()
    request = Path(args.request_file).read_bytes()
    if args.mode == "aio":
        print(json.dumps(asyncio.run(_run_aio(args, request))))
    elif args.mode == "raw":
        print(json.dumps(asyncio.run(_run_raw(args, request))))
    else:
        print(json.dumps(_run_sync(args, request)))


if __name__ == "__main__":
    main()
