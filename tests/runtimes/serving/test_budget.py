"""The request-memory budget across connections and ports (``--max-buffered-bytes``).

One server process (HTTP and gRPC ports) with a 1 MiB budget and bodies of 512 KiB at
most: slow clients hold the budget with bodies they trickle, a large request on either
port is refused at once (HTTP 503 with Retry-After, gRPC RESOURCE_EXHAUSTED) while small
ones from other clients are answered, and every way a held body ends (answered,
disconnected, reset, timed out) gives its bytes back: the reserved gauge in /metrics
returns to 0.
"""

from __future__ import annotations

import json
import random
import re
import socket
import struct

import httpx
import numpy as np
import pytest

from runtimes.serving.proto import kserve_v2_pb2 as pb
from tests.contract import cases_runtime as cr
from tests.runtimes.serving.server_process import ServerProcess, wait_until
from tests.runtimes.serving.test_grpc_transport import (
    DATA,
    END_STREAM,
    RST_STREAM,
    SERVICE,
    Client,
    frame,
    message,
)
from tests.runtimes.serving.test_http_transport import BODY, PREDICT, _Reader

KIB = 1 << 10
MAX_BODY = 512 * KIB  # the server's --max-body-bytes
BUDGET = 1024 * KIB  # its --max-buffered-bytes
HOLD = 400 * KIB  # what one slow client holds
LARGE = BUDGET * 7 // 8  # what bodies over 64 KiB may hold in all
SMALL = 64 * KIB  # the largest body that may take the rest
READ_S = 1.0  # its --read-timeout-seconds
INFER = f"{SERVICE}/ModelInfer"


@pytest.fixture(scope="module")
def server():
    args = ["--name", "m", "--grpc-port", "0", "--max-body-bytes", str(MAX_BODY)]
    args += ["--max-buffered-bytes", str(BUDGET), "--read-timeout-seconds", str(READ_S)]
    args += ["--max-batch", "40000"]
    with ServerProcess(str(cr.bundle("greedy_q")), *args) as process:
        host, port = process.url.removeprefix("http://").split(":")
        process.address = (host, int(port))
        process.wait_for_log(
            f"request bodies buffered at once: at most {BUDGET} bytes "
            rf"\(--max-buffered-bytes\), each at most {MAX_BODY} \(--max-body-bytes\)"
        )
        response = httpx.post(f"{process.url}/v1/models/m:predict", content=BODY, timeout=30)
        assert response.status_code == 200, response.text
        process.expected = response.json()
        yield process
        # every test gives back what it held
        assert _reserved(process.url) == 0


def _metric(url: str, pattern: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    return sum(float(v) for v in re.findall(pattern, text))


def _reserved(url: str) -> float:
    return _metric(url, r"\npolicy_serving_buffered_request_bytes (\S+)")


def _refusals(url: str, port: str) -> float:
    return _metric(url, rf'policy_serving_buffer_refusals_total\{{port="{port}"\}} (\S+)')


def _reserved_becomes(url: str, value: int) -> None:
    wait_until(lambda: _reserved(url) == value, timeout=10)


def _padded(size: int, path: bytes = PREDICT) -> tuple[bytes, bytes]:
    """A predict request of ``size`` body bytes (BODY led by JSON whitespace): its head
    and its body."""
    head = path + b"content-length: %d\r\n\r\n" % size
    return head, b" " * (size - len(BODY)) + BODY


def _connect(server) -> _Reader:
    return _Reader(socket.create_connection(server.address, timeout=30))


def _refused_text(size: int, left: int, what: str = "request body") -> str:
    """The refusal of a body over 64 KiB."""
    return (
        f"{what}: {size} bytes cannot be buffered now: expected at most {left} more of "
        f"the server's --max-buffered-bytes ({BUDGET}, {BUDGET - LARGE} of which are kept "
        "for bodies of 64 KiB at most), which other requests hold; retry later"
    )


def test_http_bodies_reserve_before_they_are_buffered_and_release_on_every_end(server):
    """Two clients trickling 400 KiB bodies hold 800 KiB: a 512 KiB request is refused at
    once (503, Retry-After, the budget named, TF Serving's and KServe v2's error body)
    and its connection serves on; a small request is answered; one holder finishing and
    the other disconnecting mid-body give the budget back, and a 512 KiB request is then
    answered. A third holder left to the read timeout gives its bytes back too."""
    refused_before = _refusals(server.url, "http")
    holders = [_connect(server) for _ in range(2)]
    head, body = _padded(HOLD)
    for holder in holders:
        holder.sock.sendall(head + body[: 10 * KIB])
    _reserved_becomes(server.url, 2 * HOLD)

    large_head, large_body = _padded(MAX_BODY)
    refused = _connect(server)
    refused.sock.sendall(large_head)  # refused on its head alone
    status, headers, answer = refused.answer()
    assert (status, headers["retry-after"]) == (503, "1")
    assert json.loads(answer) == {"error": _refused_text(MAX_BODY, LARGE - 2 * HOLD)}
    refused.sock.sendall(large_body + PREDICT + b"content-length: %d\r\n\r\n" % len(BODY) + BODY)
    status, _, answer = refused.answer()  # the body was dropped; the connection serves on
    assert (status, json.loads(answer)) == (200, server.expected)
    refused.sock.close()
    v2 = _connect(server)  # KServe v2's error body: the same shape
    v2.sock.sendall(b"POST /v2/models/m/infer HTTP/1.1\r\ncontent-length: %d\r\n\r\n" % MAX_BODY)
    status, headers, answer = v2.answer()
    assert (status, headers["retry-after"]) == (503, "1")
    assert json.loads(answer) == {"error": _refused_text(MAX_BODY, LARGE - 2 * HOLD)}
    v2.sock.close()
    assert _refusals(server.url, "http") == refused_before + 2

    small = httpx.post(f"{server.url}/v1/models/m:predict", content=BODY, timeout=30)
    assert (small.status_code, small.json()) == (200, server.expected)
    assert _reserved(server.url) == 2 * HOLD

    holders[0].sock.sendall(body[10 * KIB :])  # finishes: answered, released
    status, _, answer = holders[0].answer()
    assert (status, json.loads(answer)) == (200, server.expected)
    holders[1].sock.close()  # disconnects mid-body: released
    _reserved_becomes(server.url, 0)
    holders[0].sock.sendall(large_head + large_body)  # the budget is back
    status, _, answer = holders[0].answer()
    assert (status, json.loads(answer)) == (200, server.expected)
    holders[0].sock.close()

    slow = _connect(server)  # the read timeout closes it and releases its body
    slow.sock.sendall(large_head + large_body[:KIB])
    _reserved_becomes(server.url, MAX_BODY)
    assert slow.closed(READ_S + 5)
    _reserved_becomes(server.url, 0)
    slow.sock.close()


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def test_a_chunked_body_reserves_as_it_grows(server):
    """With 800 KiB held, a chunked body's first 50 KiB fit (a body of 64 KiB at most may
    take the last eighth), its next 50 KiB do not (past 64 KiB it may not): 503, what it
    had reserved is given back, and its connection serves on."""
    holders = [_connect(server) for _ in range(2)]
    head, body = _padded(HOLD)
    for holder in holders:
        holder.sock.sendall(head + body[:KIB])
    _reserved_becomes(server.url, 2 * HOLD)
    chunked = _connect(server)
    chunked.sock.sendall(PREDICT + b"transfer-encoding: chunked\r\n\r\n")
    chunked.sock.sendall(_chunk(b" " * (50 * KIB)))
    _reserved_becomes(server.url, 2 * HOLD + 50 * KIB)
    chunked.sock.sendall(_chunk(b" " * (50 * KIB)))  # does not fit
    status, headers, answer = chunked.answer()
    assert (status, headers["retry-after"]) == (503, "1")
    error = json.loads(answer)["error"]
    # the chunk may come in pieces: the one refused, and what was left, vary
    pattern = re.escape(_refused_text(0, 0)).replace("0", r"\d+", 2)
    assert re.fullmatch(pattern, error), error
    _reserved_becomes(server.url, 2 * HOLD)
    chunked.sock.sendall(_chunk(BODY) + b"0\r\n\r\n")  # the rest is dropped
    chunked.sock.sendall(PREDICT + b"content-length: %d\r\n\r\n" % len(BODY) + BODY)
    status, _, answer = chunked.answer()
    assert (status, json.loads(answer)) == (200, server.expected)
    for reader in (chunked, *holders):
        reader.sock.close()
    _reserved_becomes(server.url, 0)


def test_small_requests_are_answered_while_large_ones_hold_all_they_may(server):
    """Bodies over 64 KiB may hold seven eighths of the budget: a 448 KiB HTTP body and a
    448 KiB gRPC message take it, a 65 KiB body is refused on either port, and 64 KiB
    bodies of other clients are answered (the last eighth is theirs)."""
    http = _connect(server)
    head, body = _padded(LARGE // 2)
    http.sock.sendall(head + body[:KIB])
    grpc = Client(server.grpc)
    stream = grpc.headers(INFER)
    grpc.send(frame(DATA, 0, stream, _prefix(LARGE // 2 - 5)))
    _reserved_becomes(server.url, LARGE)

    refused = _connect(server)
    refused.sock.sendall(_padded(SMALL + 1)[0])
    status, _, answer = refused.answer()
    assert (status, json.loads(answer)) == (503, {"error": _refused_text(SMALL + 1, 0)})
    other = Client(server.grpc)
    stream = other.headers(INFER)
    other.send(frame(DATA, 0, stream, _prefix(SMALL + 1)))
    blocks, _, _ = other.answer(stream)
    assert blocks[0]["grpc-message"] == _refused_text(SMALL + 1, 0, "request message")

    head, body = _padded(SMALL)
    refused.sock.sendall(b" " * (SMALL + 1) + head + body)  # the refused body, dropped
    status, _, answer = refused.answer()
    assert (status, json.loads(answer)) == (200, server.expected)
    blocks, data, _ = other.call(INFER, _infer().SerializeToString())
    assert blocks[-1]["grpc-status"] == "0"
    assert pb.ModelInferResponse.FromString(data[5:]).outputs[0].name == "action"
    for each in (refused.sock, http.sock, other, grpc):
        each.close()
    _reserved_becomes(server.url, 0)


def _infer(rows: int = 1) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="observation", datatype="FP32", shape=[rows, 4])
    observations = np.random.default_rng(rows).normal(size=(rows, 4)).astype(np.float32)
    request.raw_input_contents.append(observations.tobytes())
    return request


def _prefix(size: int) -> bytes:
    return b"\x00" + size.to_bytes(4, "big")


def test_grpc_messages_reserve_by_their_prefix_and_both_ports_share_the_budget(server):
    """Two streams of one connection trickling 400 KiB messages hold 800 KiB: a 400 KiB
    message on another connection is refused by its prefix (RESOURCE_EXHAUSTED, the
    budget named) while that connection's other calls are answered, and a large HTTP
    body is refused too (one budget); RST_STREAM releases one stream's message, closing
    the connection the other's, and a large message is then answered."""
    import grpc

    refused_before = _refusals(server.url, "grpc")
    holder = Client(server.grpc)
    held = []
    for _ in range(2):
        stream = holder.headers(INFER)
        holder.send(frame(DATA, 0, stream, _prefix(HOLD) + b"\x00" * KIB))
        held.append(stream)
    _reserved_becomes(server.url, 2 * (HOLD + 5))

    other = Client(server.grpc)
    stream = other.headers(INFER)
    other.send(frame(DATA, 0, stream, _prefix(HOLD)))
    blocks, _, _ = other.answer(stream)
    left = LARGE - 2 * (HOLD + 5)
    assert blocks[0]["grpc-status"] == "8"
    assert blocks[0]["grpc-message"] == _refused_text(HOLD, left, "request message")
    other.send(frame(DATA, END_STREAM, stream, b"\x00" * KIB))  # dropped
    blocks, data, _ = other.call(INFER, _infer().SerializeToString())
    assert blocks[-1]["grpc-status"] == "0"
    assert pb.ModelInferResponse.FromString(data[5:]).outputs[0].name == "action"
    blocks, _, _ = other.call(f"{SERVICE}/ServerLive", b"")
    assert blocks[-1]["grpc-status"] == "0"
    assert _refusals(server.url, "grpc") == refused_before + 1
    # one budget for both ports: HTTP's 512 KiB body does not fit either
    http = _connect(server)
    http.sock.sendall(_padded(MAX_BODY)[0])
    status, _, answer = http.answer()
    assert (status, json.loads(answer)) == (503, {"error": _refused_text(MAX_BODY, left)})
    http.sock.close()

    holder.send(frame(RST_STREAM, 0, held[0], struct.pack(">I", 0x8)))
    _reserved_becomes(server.url, HOLD + 5)
    blocks, _, _ = holder.call(f"{SERVICE}/ServerLive", b"")  # the connection goes on
    assert blocks[-1]["grpc-status"] == "0"
    holder.close()  # disconnects mid-message
    _reserved_becomes(server.url, 0)

    rows = HOLD // 16  # a 400 KiB message
    with grpc.insecure_channel(server.grpc) as channel:
        infer = channel.unary_unary(
            INFER,
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        answer = infer(_infer(rows), timeout=30)
    assert answer.outputs[0].shape[0] == rows
    other.close()


def test_random_open_trickle_abort_sequences_leave_nothing_reserved(server):
    """30 clients on both ports declare random sizes, trickle part of them and then
    finish, abort, reset or stall until the read timeout; some are refused on the way.
    Once every one has ended, nothing is reserved, and the server answers."""
    rng = random.Random(28)
    open_sockets = []
    for case in range(30):
        size = rng.randint(1, MAX_BODY)
        sent = rng.randint(0, size - 1)
        end = rng.choice(["finish", "abort", "stall", "reset"])
        if case % 2:  # HTTP
            reader = _connect(server)
            reader.sock.sendall(PREDICT + b"content-length: %d\r\n\r\n" % size + b"x" * sent)
            if end == "finish":
                reader.sock.sendall(b"x" * (size - sent))
            if end == "abort":
                reader.sock.close()
            else:
                open_sockets.append(reader.sock)
        else:  # gRPC
            client = Client(server.grpc)
            stream = client.headers(INFER)
            data = message(b"\x00" * size)[: 5 + sent]
            for at in range(0, len(data), 16 * KIB):
                client.send(frame(DATA, 0, stream, data[at : at + 16 * KIB]))
            if end == "finish":
                rest = message(b"\x00" * size)[5 + sent :]
                for at in range(0, len(rest), 16 * KIB):
                    client.send(frame(DATA, 0, stream, rest[at : at + 16 * KIB]))
                client.send(frame(DATA, END_STREAM, stream))
            elif end == "reset":
                client.send(frame(RST_STREAM, 0, stream, struct.pack(">I", 0x8)))
            if end == "abort":
                client.close()
            else:
                open_sockets.append(client.sock)
    _reserved_becomes(server.url, 0)  # the stalled ones within the read timeout
    small = httpx.post(f"{server.url}/v1/models/m:predict", content=BODY, timeout=30)
    assert (small.status_code, small.json()) == (200, server.expected)
    for sock in open_sockets:
        sock.close()
