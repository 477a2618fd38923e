"""The REST port's HTTP/1.1 transport (runtimes/serving/http_server.py) at the byte level,
over a real server process: keep-alive, HTTP/1.0, ``Connection: close``, pipelining,
chunked bodies, body limits, malformed requests, ``Expect: 100-continue``, HEAD, the idle
keep-alive close, SIGTERM with a request in flight, and a fuzz run of 200 connections."""

from __future__ import annotations

import contextlib
import json
import random
import re
import socket
import threading
import time

import httpx
import pytest

from tests.contract import cases_runtime as cr
from tests.runtimes.serving.server_process import ServerProcess, wait_until

BODY = json.dumps({"instances": [[0.1, 0.2, 0.3, 0.4]]}).encode()
LIMIT = 4096  # the server's --max-body-bytes here
PREDICT = b"POST /v1/models/m:predict HTTP/1.1\r\nHost: x\r\n"


def _request(body: bytes = BODY, head: bytes = PREDICT, extra: bytes = b"") -> bytes:
    return head + b"content-length: %d\r\n" % len(body) + extra + b"\r\n" + body


def _chunked(body: bytes, sizes: list[int]) -> bytes:
    out, at = [PREDICT + b"transfer-encoding: chunked\r\n\r\n"], 0
    for size in sizes:
        part = body[at : at + size]
        at += size
        if part:
            out.append(b"%x\r\n%s\r\n" % (len(part), part))
    return b"".join(out) + b"0\r\n\r\n"


class _Reader:
    """HTTP/1.1 answers off a socket, one at a time (Content-Length bodies)."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buffer = b""

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        self.buffer += data
        return bool(data)

    def answer(self, head_only: bool = False) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buffer:
            if not self._fill():
                raise EOFError(self.buffer)
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
        length = 0 if head_only or status == 100 else int(headers["content-length"])
        while len(self.buffer) < length:
            if not self._fill():
                raise EOFError(self.buffer)
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return status, headers, body

    def closed(self, timeout: float = 10.0) -> bool:
        self.sock.settimeout(timeout)
        try:
            return self.buffer == b"" and self.sock.recv(1) == b""
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False


@pytest.fixture(scope="module")
def server():
    args = ["--name", "m", "--max-body-bytes", str(LIMIT), "--read-timeout-seconds", "2"]
    with ServerProcess(str(cr.bundle("greedy_q")), *args) as process:
        host, port = process.url.removeprefix("http://").split(":")
        process.address = (host, int(port))
        with httpx.Client(base_url=process.url, timeout=30) as client:
            response = client.post("/v1/models/m:predict", content=BODY)
        assert response.status_code == 200, response.text
        process.expected = response.json()
        yield process


def _connect(server) -> _Reader:
    sock = socket.create_connection(server.address, timeout=30)
    return _Reader(sock)


def test_keep_alive_http_1_0_and_connection_close(server):
    reader = _connect(server)
    for _ in range(3):  # one connection, kept alive
        reader.sock.sendall(_request())
        status, headers, body = reader.answer()
        assert (status, json.loads(body)) == (200, server.expected)
        assert "connection" not in headers
    reader.sock.sendall(_request(extra=b"Connection: close\r\n"))
    status, headers, body = reader.answer()
    assert (status, headers["connection"], json.loads(body)) == (200, "close", server.expected)
    assert reader.closed()

    reader = _connect(server)  # HTTP/1.0: closed after the answer
    reader.sock.sendall(_request(head=PREDICT.replace(b"HTTP/1.1", b"HTTP/1.0")))
    status, _, body = reader.answer()
    assert (status, json.loads(body)) == (200, server.expected)
    assert reader.closed()

    reader = _connect(server)  # HTTP/1.0 asking for keep-alive: kept
    head = PREDICT.replace(b"HTTP/1.1", b"HTTP/1.0") + b"Connection: keep-alive\r\n"
    for _ in range(2):
        reader.sock.sendall(_request(head=head))
        assert reader.answer()[0] == 200
    reader.sock.close()


def test_pipelined_requests_are_answered_in_order(server):
    """Predicts, a status, an unknown path and a body over the limit, in one send: answered
    in the order sent, the connection still serving after."""
    reader = _connect(server)
    requests = [
        _request(),
        b"GET /v1/models/m HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n",
        _request(b"[" + b"0," * LIMIT + b"0]"),
        _chunked(BODY, [3, 5, len(BODY)]),
        b"GET /v1/models/nope HTTP/1.1\r\nHost: x\r\n\r\n",
    ]
    reader.sock.sendall(b"".join(requests))
    answers = [reader.answer() for _ in requests]
    assert [a[0] for a in answers] == [200, 200, 404, 413, 200, 404]
    assert json.loads(answers[0][2]) == json.loads(answers[4][2]) == server.expected
    assert "model_version_status" in json.loads(answers[1][2])
    assert json.loads(answers[2][2]) == {"error": "Malformed request: GET /nowhere"}
    assert "expected at most 4096 bytes" in json.loads(answers[3][2])["error"]
    reader.sock.sendall(_request())
    assert reader.answer()[0] == 200
    reader.sock.close()


def test_bodies_over_the_limit_are_refused_and_the_connection_serves_on(server):
    reader = _connect(server)
    big = b"x" * (3 * LIMIT)
    reader.sock.sendall(_request(big))  # by its Content-Length
    status, _, body = reader.answer()
    assert status == 413
    assert json.loads(body)["error"] == (
        "request body: expected at most 4096 bytes (the server's --max-body-bytes), got 12288"
    )
    reader.sock.sendall(_chunked(big, [1000] * 13))  # found while reading a chunked one
    status, _, body = reader.answer()
    assert status == 413
    assert json.loads(body)["error"].endswith("got more")
    reader.sock.sendall(_request())  # the dropped bodies did not leak into this one
    status, _, body = reader.answer()
    assert (status, json.loads(body)) == (200, server.expected)
    reader.sock.close()


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nbad header line\r\n\r\n", 400),
        (b"POST /v1/models/m:predict HTTP/1.1\r\ncontent-length: x\r\n\r\n", 400),
        (b"GET /" + b"a" * (70 << 10) + b" HTTP/1.1\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\n" + b"x-a: b\r\n" * 101 + b"\r\n", 431),
    ],
)
def test_malformed_requests_get_400_and_the_connection_closes(server, request_bytes, status):
    reader = _connect(server)
    reader.sock.sendall(_request() + request_bytes)  # after a good one, answered first
    assert reader.answer()[0] == 200
    got, headers, body = reader.answer()
    assert (got, headers["connection"]) == (status, "close")
    assert "error" in json.loads(body)
    assert reader.closed()


def test_one_endless_header_sent_in_pieces_gets_431(server):
    """httptools buffers a header until it ends: a value that never ends is bounded by
    what the connection read while in the head, not only by the parser's callbacks."""
    reader = _connect(server)
    reader.sock.sendall(b"GET / HTTP/1.1\r\nx-long: ")
    with contextlib.suppress(ConnectionResetError, BrokenPipeError):
        for _ in range(40):  # 80 KiB, over the 64 KiB bound
            reader.sock.sendall(b"a" * 2048)
            time.sleep(0.005)
    status, headers, _ = reader.answer()
    assert (status, headers["connection"]) == (431, "close")


def test_expect_100_continue_and_head(server):
    reader = _connect(server)
    reader.sock.sendall(PREDICT + b"content-length: %d\r\nExpect: 100-continue\r\n\r\n" % len(BODY))
    status, _, _ = reader.answer()
    assert status == 100
    reader.sock.sendall(BODY)
    status, _, body = reader.answer()
    assert (status, json.loads(body)) == (200, server.expected)
    # over the limit: refused before the body comes, and closed (it will not come)
    reader.sock.sendall(PREDICT + b"content-length: 99999\r\nExpect: 100-continue\r\n\r\n")
    status, headers, _ = reader.answer()
    assert (status, headers["connection"]) == (413, "close")
    assert reader.closed()

    reader = _connect(server)
    reader.sock.sendall(b"HEAD /v1/models/m HTTP/1.1\r\nHost: x\r\n\r\n")
    status, headers, _ = reader.answer(head_only=True)
    assert int(headers["content-length"]) > 0
    reader.sock.sendall(b"GET /v1/models/m HTTP/1.1\r\nHost: x\r\n\r\n")
    status, headers, body = reader.answer()  # the HEAD answer had no body
    assert status == 200 and len(body) == int(headers["content-length"])
    reader.sock.close()


def _garbage(rng: random.Random) -> bytes:
    return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 600)))


def test_fuzz_200_connections_while_a_good_client_is_answered(server):
    """200 connections send random bytes, valid requests split at random points, and
    garbage after valid requests; a good client on its own connection is answered right
    all along; meanwhile a connection whose body does not come in time is closed (a
    read timeout), and one idle after its request after ~5 s (not counted)."""
    rng = random.Random(28)
    stop = threading.Event()
    good: list[float] = []
    failures: list[str] = []

    def good_client() -> None:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            while not stop.is_set():
                response = client.post("/v1/models/m:predict", content=BODY)
                if response.status_code != 200 or response.json() != server.expected:
                    failures.append(response.text)
                good.append(time.monotonic())

    idle = _connect(server)
    idle.sock.sendall(_request())
    assert idle.answer()[0] == 200
    idle_since = time.monotonic()
    slow = _connect(server)  # a whole head, then a body that never ends in time
    slow.sock.sendall(_request()[:-10])
    thread = threading.Thread(target=good_client)
    thread.start()
    answered = 0
    try:
        wait_until(lambda: len(good) > 5)
        for i in range(200):
            sock = socket.create_connection(server.address, timeout=10)
            kind = i % 3
            if kind == 0:
                data = _garbage(rng)
            else:
                data = _request() if rng.random() < 0.5 else _chunked(BODY, [7, 11, 40])
                if kind == 2:
                    data += _garbage(rng)
            try:
                cuts = sorted(rng.sample(range(1, len(data)), min(3, len(data) - 1)))
                for begin, end in zip([0, *cuts], [*cuts, len(data)], strict=True):
                    sock.sendall(data[begin:end])
                if kind:  # a valid request first: answered whatever follows
                    status, _, body = _Reader(sock).answer()
                    assert (status, json.loads(body)) == (200, server.expected)
                    answered += 1
            except (ConnectionResetError, BrokenPipeError):
                assert kind == 0  # only garbage from the first byte may be cut off
            finally:
                sock.close()
        count = len(good)
        wait_until(lambda: len(good) > count + 5)
    finally:
        stop.set()
        thread.join(60)
    assert not failures, failures[:3]
    assert answered == 133
    assert slow.closed(timeout=15)  # --read-timeout-seconds 2 for the head and the body
    assert idle.closed(timeout=15)
    assert time.monotonic() - idle_since >= 4.5
    metrics = httpx.get(f"{server.url}/metrics", timeout=30).text
    timed_out = re.search(r'connections_closed_total\{reason="read_timeout"\} (\S+)', metrics)
    assert timed_out and float(timed_out.group(1)) >= 1
    assert re.search(r'policy_serving_requests_total\{.*protocol="tfserving_rest"', metrics)


def test_sigterm_lets_a_request_in_flight_finish_and_refuses_new_connections():
    """A request waiting in the batcher's window when SIGTERM comes is answered; new
    connections are refused meanwhile; the server exits 0 (and --access-log logged it)."""
    args = ["--name", "m", "--batch-window-us", "1500000", "--max-batch", "64", "--access-log"]
    with ServerProcess(str(cr.bundle("greedy_q")), *args) as server:
        host, port = server.url.removeprefix("http://").split(":")
        sock = socket.create_connection((host, int(port)), timeout=30)
        sock.sendall(_request())
        time.sleep(0.5)  # in the 1.5 s window
        server.process.send_signal(15)
        time.sleep(0.3)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((host, int(port)), timeout=5)
        status, headers, body = _Reader(sock).answer()
        assert status == 200, body
        assert headers["connection"] == "close"
        assert len(json.loads(body)["predictions"]) == 1
        assert server.process.wait(30) == 0, server.log
        server.wait_for_log(r'127\.0\.0\.1 - "POST /v1/models/m:predict" 200')
        server.wait_for_log("stopped after 1 requests")
