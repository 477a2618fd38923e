"""A light HTTP load generator for serve_bench.py, run as its own process.

``CLIENTS`` keep-alive connections to 127.0.0.1, each sending one request at a time
(the next as soon as the answer is read), for ``--seconds`` after ``--warmup`` seconds
(or until ``--max-requests``). Raw asyncio streams and a prebuilt request keep the
client's own CPU cost per request to tens of microseconds, so on a small machine it
leaves the server most of the CPU. Prints one JSON line: the latencies' percentiles,
requests per second, and the count of non-200 answers.

Usage: ``python benchmarks/_serve_load.py URL PATH BODY_FILE --clients N --seconds S``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from urllib.parse import urlsplit


async def _client(host, port, request, stop_at, warm_at, latencies, errors, budget, total):
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while True:
            started = time.perf_counter()
            if started >= stop_at or budget[0] <= 0:
                return
            budget[0] -= 1
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            status = int(head[9:12])
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            done = time.perf_counter()
            total[0] += 1
            if started >= warm_at:
                latencies.append(done - started)
                if status != 200:
                    errors[0] += 1
    finally:
        writer.close()


async def _main(args) -> dict:
    url = urlsplit(args.url)
    body = Path(args.body_file).read_bytes()
    request = (
        f"POST {args.path} HTTP/1.1\r\nHost: {url.hostname}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    latencies: list[float] = []
    errors = [0]
    budget = [args.max_requests]
    total = [0]
    now = time.perf_counter()
    warm_at, stop_at = now + args.warmup, now + args.warmup + args.seconds
    await asyncio.gather(
        *(
            _client(
                url.hostname, url.port, request, stop_at, warm_at, latencies, errors, budget, total
            )
            for _ in range(args.clients)
        )
    )
    return summary(latencies, stop_at, warm_at, args.clients, total[0], errors[0])


def summary(
    latencies: list[float], stop_at: float, warm_at: float, clients: int, total: int, errors: int
) -> dict:
    """The JSON line both load generators print: percentiles of the timed latencies (after
    the warm-up) and their rate over the timed window."""
    elapsed = min(time.perf_counter(), stop_at) - warm_at
    latencies = sorted(latencies)
    n = len(latencies)

    def pct(q: float) -> float:
        return latencies[min(n - 1, int(q * n))] * 1e3 if n else float("nan")

    return {
        "clients": clients,
        "requests": n,
        "all_requests": total,
        "errors": errors,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "rps": n / elapsed if elapsed > 0 else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("path")
    parser.add_argument("body_file")
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--max-requests", type=int, default=2_000_000)
    args = parser.parse_args()
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    print(json.dumps(runner(_main(args))), flush=True)


if __name__ == "__main__":
    main()
