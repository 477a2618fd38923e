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

Usage: ``python benchmarks/_grpc_load.py ADDRESS METHOD REQUEST_FILE --clients N --seconds S
[--mode sync|aio]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
from pathlib import Path

import grpc
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("address")
    parser.add_argument("method")
    parser.add_argument("request_file")
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--max-requests", type=int, default=200_000)
    parser.add_argument("--mode", choices=("sync", "aio"), default="sync")
    args = parser.parse_args()
    request = Path(args.request_file).read_bytes()
    if args.mode == "aio":
        print(json.dumps(asyncio.run(_run_aio(args, request))))
    else:
        print(json.dumps(_run_sync(args, request)))


if __name__ == "__main__":
    main()
