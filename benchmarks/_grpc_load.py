"""A light gRPC load generator for serve_bench.py, run as its own process.

``CLIENTS`` concurrent callers on one ``grpc.aio`` channel to 127.0.0.1, each sending
one unary request at a time (the next as soon as the answer is in), for ``--seconds``
after ``--warmup`` seconds (or until ``--max-requests``). The request is prebuilt,
serialized bytes (from ``REQUEST_FILE``) sent with identity serializers, so the client
spends no time on protobuf. Prints one JSON line like _serve_load.py's.

Usage: ``python benchmarks/_grpc_load.py ADDRESS METHOD REQUEST_FILE --clients N --seconds S``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import grpc
from _serve_load import summary  # this folder is the script's: on sys.path


async def _main(args) -> dict:
    request = Path(args.request_file).read_bytes()
    latencies: list[float] = []
    errors = [0]
    budget = [args.max_requests]
    total = [0]
    async with grpc.aio.insecure_channel(args.address) as channel:
        call = channel.unary_unary(
            args.method, request_serializer=lambda b: b, response_deserializer=lambda b: b
        )
        await call(request, timeout=30)  # connected and warm
        now = time.perf_counter()
        warm_at, stop_at = now + args.warmup, now + args.warmup + args.seconds

        async def client() -> None:
            while True:
                started = time.perf_counter()
                if started >= stop_at or budget[0] <= 0:
                    return
                budget[0] -= 1
                failed = False
                try:
                    await call(request, timeout=30)
                except grpc.aio.AioRpcError:
                    failed = True
                done = time.perf_counter()
                total[0] += 1
                if started >= warm_at:
                    latencies.append(done - started)
                    errors[0] += failed

        await asyncio.gather(*(client() for _ in range(args.clients)))
    return summary(latencies, stop_at, warm_at, args.clients, total[0], errors[0])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("address")
    parser.add_argument("method")
    parser.add_argument("request_file")
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--max-requests", type=int, default=200_000)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(_main(args))))


if __name__ == "__main__":
    main()
