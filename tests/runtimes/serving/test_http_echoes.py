"""The bare HTTP echoes of serve_bench.py --http-echoes (benchmarks/_http_echo_*.py) start
and answer keep-alive requests, a chunked one too: a figure they give is of a working
transport (the uvicorn one with the protocol class the REST port had on uvicorn)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

BENCHMARKS = Path(__file__).resolve().parents[3] / "benchmarks"


@pytest.mark.parametrize("script", ["_http_echo_uvicorn.py", "_http_echo_ours.py"])
def test_the_bare_http_echo_answers_keep_alive_requests(script):
    process = subprocess.Popen(
        [sys.executable, str(BENCHMARKS / script)],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    try:
        line = process.stderr.readline()
        assert "listening on http://127.0.0.1:" in line, line + process.stderr.read()
        url = line.rsplit(" ", 1)[1].strip()
        with httpx.Client(base_url=url, timeout=30) as client:
            for _ in range(2):  # one connection, kept alive
                answer = client.post("/v2/models/p/infer", content=b'{"inputs": []}')
                assert answer.status_code == 200 and answer.json() == {"predictions": [0]}
            chunked = client.post("/x", content=iter([b'{"a"', b": 1}"]))
            assert chunked.status_code == 200 and chunked.json() == {"predictions": [0]}
    finally:
        process.terminate()
        process.wait(10)
