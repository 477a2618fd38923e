"""The gRPC transport (runtimes/serving/grpc_server.py) at the HTTP/2 frame level.

One server process serves every test (a long batch window, so an infer call stays in
flight while a test resets it or lets its deadline pass); a raw HTTP/2 client over a
socket (frames by hand, header blocks by ``hpack``) speaks to it as grpc clients do,
and misbehaves where a test needs it to.
"""

from __future__ import annotations

import random
import re
import socket
import struct
import time

import httpx
import numpy as np
import pytest

from runtimes.serving.grpc_server import MAX_CONCURRENT_STREAMS, MAX_HEADER_LIST_SIZE
from runtimes.serving.proto import kserve_v2_pb2 as pb
from tests.contract import cases_runtime as cr
from tests.runtimes.serving.server_process import ServerProcess

hpack = pytest.importorskip("hpack")

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE = 0, 1, 3, 4, 6, 7, 8
END_STREAM, END_HEADERS = 0x1, 0x4
SERVICE = "/inference.GRPCInferenceService"
MAX_BODY = 1 << 20
BATCH_WINDOW_S = 1.5
#: the server's --max-connections (HTTP and gRPC ports each) and --read-timeout-seconds
MAX_CONNECTIONS = 24
READ_S = 1.0


@pytest.fixture(scope="module")
def server():
    args = ["--name", "m", "--grpc-port", "0", "--max-body-bytes", str(MAX_BODY)]
    args += ["--max-connections", str(MAX_CONNECTIONS), "--read-timeout-seconds", str(READ_S)]
    args += ["--batch-window-us", str(int(BATCH_WINDOW_S * 1e6)), "--max-batch", "20000"]
    with ServerProcess(str(cr.bundle("greedy_q")), *args) as process:
        yield process


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return (
        len(payload).to_bytes(3, "big") + bytes((kind, flags)) + stream.to_bytes(4, "big") + payload
    )


def message(data: bytes) -> bytes:
    return b"\x00" + len(data).to_bytes(4, "big") + data


class Client:
    """A raw HTTP/2 connection: frames out by hand, frames in as (kind, flags, stream,
    payload); header blocks encoded and decoded by hpack."""

    def __init__(self, address: str, settings: bytes = b""):
        host, port = address.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=5)
        self.encoder, self.decoder = hpack.Encoder(), hpack.Decoder()
        self.buffer = b""
        self.next_stream = 1
        self.sock.sendall(PREFACE + frame(SETTINGS, 0, 0, settings))

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def headers(self, path: str, extra: list | None = None, end: bool = False) -> int:
        stream, self.next_stream = self.next_stream, self.next_stream + 2
        headers = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", "localhost"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ] + (extra or [])
        flags = END_HEADERS | (END_STREAM if end else 0)
        self.send(frame(HEADERS, flags, stream, self.encoder.encode(headers)))
        return stream

    def frame(self) -> tuple[int, int, int, bytes] | None:
        """The next frame; None when the server closed the connection."""
        while len(self.buffer) < 9 or len(self.buffer) < 9 + int.from_bytes(self.buffer[:3], "big"):
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                return None
            if not chunk:
                return None
            self.buffer += chunk
        length = int.from_bytes(self.buffer[:3], "big")
        kind, flags = self.buffer[3], self.buffer[4]
        stream = int.from_bytes(self.buffer[5:9], "big") & 0x7FFFFFFF
        payload, self.buffer = self.buffer[9 : 9 + length], self.buffer[9 + length :]
        return kind, flags, stream, payload

    def answer(self, stream: int) -> tuple[list[dict], bytes, list]:
        """A stream's answer: its header blocks (decoded), its DATA bytes and the other
        frames seen meanwhile."""
        blocks, data, others = [], b"", []
        while True:
            got = self.frame()
            assert got is not None, "the server closed the connection"
            kind, flags, sid, payload = got
            if sid == stream and kind == HEADERS:
                blocks.append(dict(self.decoder.decode(payload)))
            elif sid == stream and kind == DATA:
                data += payload
            else:
                others.append(got)
                continue
            if flags & END_STREAM:
                return blocks, data, others

    def call(self, path: str, data: bytes, extra: list | None = None) -> tuple[list, bytes, list]:
        stream = self.headers(path, extra)
        self.send(frame(DATA, END_STREAM, stream, message(data)))
        return self.answer(stream)

    def close(self) -> None:
        self.sock.close()


def live(address: str) -> bool:
    client = Client(address)
    try:
        blocks, data, _ = client.call(f"{SERVICE}/ServerLive", b"")
        return blocks[-1]["grpc-status"] == "0" and pb.ServerLiveResponse.FromString(data[5:]).live
    finally:
        client.close()


def test_settings_ping_and_a_call(server):
    """The server's SETTINGS bound its streams, header list and window; a PING is
    acknowledged with its payload (grpc-core's BDP pings); a call answers headers, the
    message and trailers with grpc-status 0."""
    client = Client(server.grpc)
    kind, _, stream, payload = client.frame()
    assert (kind, stream) == (SETTINGS, 0)
    settings = dict(struct.iter_unpack(">HI", payload))
    assert settings[0x3] == MAX_CONCURRENT_STREAMS
    assert settings[0x6] == MAX_HEADER_LIST_SIZE
    assert settings[0x4] == MAX_BODY + 5  # a whole message fits a stream's window
    client.send(frame(PING, 0, 0, b"12345678"))
    seen = []
    while (PING, 1, 0, b"12345678") not in seen:
        seen.append(client.frame())
    blocks, data, _ = client.call(f"{SERVICE}/ServerMetadata", b"")
    assert blocks[0][":status"] == "200" and blocks[0]["content-type"] == "application/grpc"
    assert blocks[-1]["grpc-status"] == "0"
    assert pb.ServerMetadataResponse.FromString(data[5:]).name == "policy-toolkit"
    client.close()


def test_an_answer_waits_for_the_peers_window(server):
    """With a stream window of 8 bytes, the server sends 8 bytes of the answer and
    waits; a WINDOW_UPDATE lets the rest and the trailers through."""
    client = Client(server.grpc, struct.pack(">HI", 0x4, 8))
    stream = client.headers(f"{SERVICE}/ServerMetadata")
    client.send(frame(DATA, END_STREAM, stream, message(b"")))
    got, frames = b"", []
    deadline = time.monotonic() + 5
    client.sock.settimeout(0.5)
    while time.monotonic() < deadline:
        try:
            item = client.frame()
        except TimeoutError:
            break
        frames.append(item)
        if item[0] == DATA and item[2] == stream:
            got += item[3]
    assert len(got) == 8
    assert not any(f[2] == stream and f[1] & END_STREAM for f in frames)
    client.sock.settimeout(5)
    client.send(frame(WINDOW_UPDATE, 0, stream, struct.pack(">I", 1 << 20)))
    blocks, data, _ = client.answer(stream)
    assert blocks[-1]["grpc-status"] == "0"
    response = pb.ServerMetadataResponse.FromString((got + data)[5:])
    assert response.name == "policy-toolkit"
    client.close()


def test_a_batch_whose_answer_exceeds_64_kib_through_tritonclient(server):
    """20,000 rows: the answer is larger than a peer's default window (64 KiB), so it
    is sent as the real client grants window; it equals the in-process actions."""
    import tritonclient.grpc as tgrpc

    import runtimes
    from toolkit.trajectories.time_step import TimeStep

    rows = 20000
    observations = np.random.default_rng(3).normal(size=(rows, 4)).astype(np.float32)
    item = tgrpc.InferInput("observation", [rows, 4], "FP32")
    item.set_data_from_numpy(observations)
    client = tgrpc.InferenceServerClient(server.grpc)
    try:
        got = client.infer("m", [item]).as_numpy("action")
    finally:
        client.close()
    assert got.nbytes > 64 << 10
    policy = runtimes.load_policy(cr.bundle("greedy_q"), "onnx")
    n = rows
    step = TimeStep(np.ones(n, np.int32), np.zeros(n, np.float32), np.ones(n, np.float32), None)
    np.testing.assert_array_equal(
        got, policy.action(step._replace(observation=observations)).action
    )


@pytest.mark.parametrize(
    ("extra", "data", "status", "text"),
    [
        ([("grpc-encoding", "gzip")], message(b""), "12", "grpc-encoding gzip: not supported"),
        ([], b"\x01" + (0).to_bytes(4, "big"), "13", "a compressed message"),
        ([], b"\x00\x00\x00\x00\x09abc", "13", "a request message cut short"),
        ([], message(b"\xff\xff\xff"), "13", "the request message does not parse"),
    ],
)
def test_grpc_refusals_are_trailers_only(server, extra, data, status, text):
    client = Client(server.grpc)
    stream = client.headers(f"{SERVICE}/ServerLive", extra)
    client.send(frame(DATA, END_STREAM, stream, data))
    blocks, body, _ = client.answer(stream)
    assert body == b"" and len(blocks) == 1
    assert blocks[0]["grpc-status"] == status
    assert text in blocks[0]["grpc-message"]
    assert live(server.grpc)  # the same server goes on
    client.close()


def test_content_type_other_than_grpc_is_415(server):
    client = Client(server.grpc)
    stream = client.next_stream
    client.next_stream += 2
    headers = [(":method", "POST"), (":scheme", "http"), (":path", f"{SERVICE}/ServerLive")]
    headers += [(":authority", "x"), ("content-type", "application/json")]
    client.send(frame(HEADERS, END_HEADERS | END_STREAM, stream, client.encoder.encode(headers)))
    blocks, _, _ = client.answer(stream)
    assert blocks[0][":status"] == "415" and "grpc-status" not in blocks[0]
    client.close()


def test_unknown_method_is_unimplemented_with_a_percent_encoded_message(server):
    client = Client(server.grpc)
    blocks, _, _ = client.call("/inference.GRPCInferenceService/Nopé", b"")
    assert blocks[0]["grpc-status"] == "12"
    assert (
        blocks[0]["grpc-message"] == "Method not found: /inference.GRPCInferenceService/Nop%C3%A9"
    )
    client.close()


def _resource_exhausted(url: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    pattern = (
        r'policy_serving_requests_total\{api="infer",code="RESOURCE_EXHAUSTED",'
        r'model="[^"]*",protocol="kserve_v2_grpc"\} (\S+)'
    )
    found = re.findall(pattern, text)
    return sum(float(v) for v in found)


def test_a_message_over_the_limit_is_refused_by_its_prefix_and_counted(server):
    """The length prefix alone (no message bytes sent) gets RESOURCE_EXHAUSTED at once,
    counted in /metrics under the protocol."""
    before = _resource_exhausted(server.url)
    client = Client(server.grpc)
    stream = client.headers(f"{SERVICE}/ModelInfer")
    client.send(frame(DATA, 0, stream, b"\x00" + (MAX_BODY + 1).to_bytes(4, "big")))
    blocks, _, _ = client.answer(stream)
    assert blocks[0]["grpc-status"] == "8"
    assert f"expected at most {MAX_BODY} bytes" in blocks[0]["grpc-message"]
    assert _resource_exhausted(server.url) == before + 1
    client.close()


def _infer_request() -> bytes:
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="observation", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.append(np.ones((1, 4), np.float32).tobytes())
    return request.SerializeToString()


def test_grpc_timeout_is_honoured(server):
    """A call waiting in the 1.5 s batch window with grpc-timeout 200m is answered
    DEADLINE_EXCEEDED after about 0.2 s."""
    client = Client(server.grpc)
    started = time.monotonic()
    blocks, _, _ = client.call(
        f"{SERVICE}/ModelInfer", _infer_request(), [("grpc-timeout", "200m")]
    )
    elapsed = time.monotonic() - started
    assert blocks[-1]["grpc-status"] == "4"
    assert elapsed < BATCH_WINDOW_S - 0.3, elapsed
    client.close()


def test_rst_stream_cancels_a_call_and_the_connection_goes_on(server):
    client = Client(server.grpc)
    stream = client.headers(f"{SERVICE}/ModelInfer")
    client.send(frame(DATA, END_STREAM, stream, message(_infer_request())))
    client.send(frame(RST_STREAM, 0, stream, struct.pack(">I", 0x8)))
    blocks, _, others = client.call(f"{SERVICE}/ServerLive", b"")
    assert blocks[-1]["grpc-status"] == "0"
    assert not any(f[2] == stream for f in others)  # nothing answered on the reset stream
    client.close()


def test_a_protocol_error_closes_that_connection_only(server):
    other = Client(server.grpc)
    bad = Client(server.grpc)
    bad.send(frame(DATA, 0, 0, b"x"))  # DATA on stream 0
    frames = []
    while (got := bad.frame()) is not None:
        frames.append(got)
    assert any(f[0] == GOAWAY and struct.unpack(">II", f[3][:8])[1] == 0x1 for f in frames)
    blocks, _, _ = other.call(f"{SERVICE}/ServerLive", b"")
    assert blocks[-1]["grpc-status"] == "0"
    other.close()
    bad.close()


@pytest.mark.parametrize("again", ["data", "trailers"])
def test_a_frame_after_the_end_of_a_waiting_call_closes_the_connection(server, again):
    """A call waiting in the batch window has had its END_STREAM: a second request body
    (or trailers) on it must not run it twice; the connection closes (STREAM_CLOSED)."""
    client = Client(server.grpc)
    stream = client.headers(f"{SERVICE}/ModelInfer")
    client.send(frame(DATA, END_STREAM, stream, message(_infer_request())))
    if again == "data":
        client.send(frame(DATA, END_STREAM, stream, message(_infer_request())))
    else:
        client.send(frame(HEADERS, END_HEADERS | END_STREAM, stream, client.encoder.encode([])))
    frames = []
    while (got := client.frame()) is not None:
        frames.append(got)
    goaway = [f for f in frames if f[0] == GOAWAY]
    assert goaway and struct.unpack(">II", goaway[0][3][:8])[1] == 0x5, frames
    assert live(server.grpc)
    client.close()


def test_an_oversized_header_block_closes_the_connection(server):
    client = Client(server.grpc)
    client.headers(f"{SERVICE}/ServerLive", [("x-big", "a" * (MAX_HEADER_LIST_SIZE + 10))])
    while client.frame() is not None:
        pass
    assert live(server.grpc)
    client.close()


def test_fuzzed_frames_get_an_answer_or_a_closed_connection(server):
    """200 connections of random and mutated frames after a valid preface (bounded in
    count and time): each is answered or closed, and the server keeps serving."""
    rng = random.Random(28)
    valid = [
        frame(SETTINGS, 0, 0, struct.pack(">HI", 0x4, 65535)),
        frame(PING, 0, 0, b"abcdefgh"),
        frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 1000)),
        frame(
            HEADERS, END_HEADERS, 1, hpack.Encoder().encode([(":path", f"{SERVICE}/ServerLive")])
        ),
        frame(DATA, END_STREAM, 1, message(b"")),
        frame(RST_STREAM, 0, 1, b"\x00\x00\x00\x08"),
    ]
    deadline = time.monotonic() + 20
    for case in range(200):
        if time.monotonic() > deadline:
            break
        frames = [bytearray(rng.choice(valid)) for _ in range(rng.randint(1, 6))]
        for item in frames:
            for _ in range(rng.randint(0, 3)):
                item[rng.randrange(len(item))] = rng.randrange(256)
        blob = b"".join(frames)
        if rng.random() < 0.3:
            blob += bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
        host, port = server.grpc.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=2) as sock:
            sock.sendall(PREFACE + blob)
            sock.shutdown(socket.SHUT_WR)
            try:
                while sock.recv(65536):
                    pass
            except (TimeoutError, ConnectionResetError):
                pass
        if case % 50 == 49:
            assert live(server.grpc)
    assert live(server.grpc)


def _closed_for(url: str, reason: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    found = re.findall(
        rf'policy_serving_connections_closed_total\{{reason="{reason}"\}} (\S+)', text
    )
    return sum(float(v) for v in found)


def _handshaken(address: str, count: int) -> list[Client]:
    clients = [Client(address) for _ in range(count)]
    for client in clients:  # each has its SETTINGS: the server holds it open
        got = client.frame()
        assert got is not None and got[0] == SETTINGS
    return clients


def _closed(client: Client, seconds: float = 5.0) -> list:
    """The frames until the server closes the connection (fails after ``seconds``)."""
    client.sock.settimeout(seconds)
    frames = []
    while (got := client.frame()) is not None:
        frames.append(got)
    return frames


def test_at_the_connection_limit_a_new_one_takes_the_longest_idle_ones_place(server):
    """Idle connections cannot lock the port: at --max-connections the oldest one without
    a call in progress gets GOAWAY and closes, and the new one is served."""
    before = _closed_for(server.url, "limit")
    held = _handshaken(server.grpc, MAX_CONNECTIONS)
    try:
        newcomer = Client(server.grpc)
        blocks, _, _ = newcomer.call(f"{SERVICE}/ServerLive", b"")
        assert blocks[-1]["grpc-status"] == "0"
        frames = _closed(held[0])
        assert any(f[0] == GOAWAY for f in frames), frames
        assert _closed_for(server.url, "limit") >= before + 1
        newcomer.close()
    finally:
        for client in held:
            client.close()


def test_stalled_calls_time_out_and_a_full_server_serves_again(server):
    """Connections whose calls never send their message hold the port only for the read
    timeout: while every slot is busy a new connection is closed at once; then each
    stalled one is closed (counted read_timeout) and the server serves again."""
    before = _closed_for(server.url, "read_timeout")
    held = _handshaken(server.grpc, MAX_CONNECTIONS)
    try:
        for client in held:  # headers, no END_STREAM, no message: a call in progress
            client.headers(f"{SERVICE}/ModelInfer")
        time.sleep(0.2)
        refused = Client(server.grpc)
        assert _closed(refused, 1.0) == []  # closed before SETTINGS
        refused.close()
        for client in held:
            assert any(f[0] == GOAWAY for f in _closed(client, READ_S + 4)), "not closed"
    finally:
        for client in held:
            client.close()
    assert _closed_for(server.url, "read_timeout") >= before + MAX_CONNECTIONS
    assert live(server.grpc)


def test_a_connection_without_a_preface_is_closed_after_the_read_timeout(server):
    before = _closed_for(server.url, "read_timeout")
    host, port = server.grpc.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=READ_S + 4)
    try:
        started = time.monotonic()
        data = b""
        while chunk := sock.recv(65536):  # SETTINGS, then GOAWAY and the close
            data += chunk
        assert time.monotonic() - started >= READ_S * 0.9
    finally:
        sock.close()
    assert _closed_for(server.url, "read_timeout") == before + 1
    assert live(server.grpc)


def test_large_typed_requests_are_decoded_off_the_loop_and_answered(server):
    """20,000 rows as typed values (v2 fp32_contents, TF Serving float_val: over 64 KiB,
    so decoded in the decoding thread) answer the in-process actions."""
    import grpc

    import runtimes
    from runtimes.serving.proto import tfserving_pb2 as tfs
    from toolkit.trajectories.time_step import TimeStep

    rows = 20000
    observations = np.random.default_rng(5).normal(size=(rows, 4)).astype(np.float32)
    policy = runtimes.load_policy(cr.bundle("greedy_q"), "onnx")
    step = TimeStep(
        np.ones(rows, np.int32), np.zeros(rows, np.float32), np.ones(rows, np.float32), None
    )
    want = policy.action(step._replace(observation=observations)).action
    v2 = pb.ModelInferRequest(model_name="m")
    item = v2.inputs.add(name="observation", datatype="FP32", shape=[rows, 4])
    item.contents.fp32_contents.extend(observations.ravel().tolist())
    predict = tfs.PredictRequest()
    predict.model_spec.name = "m"
    tensor = predict.inputs["observation"]
    tensor.dtype = tfs.DT_FLOAT
    tensor.tensor_shape.dim.add(size=rows)
    tensor.tensor_shape.dim.add(size=4)
    tensor.float_val.extend(observations.ravel().tolist())
    assert v2.ByteSize() > 64 << 10 and predict.ByteSize() > 64 << 10
    with grpc.insecure_channel(server.grpc) as channel:
        infer = channel.unary_unary(
            f"{SERVICE}/ModelInfer",
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        answer = infer(v2, timeout=30)
        got = np.frombuffer(answer.raw_output_contents[0], want.dtype.newbyteorder("<"))
        got = got.reshape(tuple(answer.outputs[0].shape))
        np.testing.assert_array_equal(got, want)
        call = channel.unary_unary(
            "/tensorflow.serving.PredictionService/Predict",
            request_serializer=tfs.PredictRequest.SerializeToString,
            response_deserializer=tfs.PredictResponse.FromString,
        )
        output = call(predict, timeout=30).outputs["action"]
        got = np.frombuffer(output.tensor_content, want.dtype.newbyteorder("<"))
        got = got.reshape([d.size for d in output.tensor_shape.dim])
        np.testing.assert_array_equal(got, want)


def test_the_benchmarks_bare_echo_runs_on_the_transport():
    """benchmarks/_grpc_echo_ours.py (serve_bench's floor row for this transport) starts
    and echoes a request: the transport's needs of a core are what it provides."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[3] / "benchmarks" / "_grpc_echo_ours.py"
    process = subprocess.Popen(
        [sys.executable, str(script)], stderr=subprocess.PIPE, text=True, stdout=subprocess.DEVNULL
    )
    try:
        line = process.stderr.readline()
        assert "gRPC listening on 127.0.0.1:" in line, line + process.stderr.read()
        client = Client(line.rsplit(" ", 1)[1].strip())
        request = _infer_request()
        blocks, data, _ = client.call(f"{SERVICE}/ModelInfer", request)
        assert blocks[-1]["grpc-status"] == "0" and data == message(request)
        client.close()
    finally:
        process.terminate()
        process.wait(10)


@pytest.mark.parametrize("echo", ["_grpc_echo_ours.py", "_grpc_echo.py"])
def test_the_benchmarks_light_grpc_client_is_answered_by_both_transports(tmp_path, echo):
    """benchmarks/_grpc_load.py --mode raw (serve_bench's light gRPC client: prebuilt
    HTTP/2 frames on raw asyncio streams) gets every call answered with a message by our
    transport's echo and by grpcio's (the C core's settings, pings and windows)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    benchmarks = Path(__file__).resolve().parents[3] / "benchmarks"
    process = subprocess.Popen(
        [sys.executable, str(benchmarks / echo)],
        stderr=subprocess.PIPE,
        text=True,
        stdout=subprocess.DEVNULL,
    )
    try:
        line = process.stderr.readline()
        assert "gRPC listening on 127.0.0.1:" in line, line
        address = line.rsplit(" ", 1)[1].strip()
        request = tmp_path / "request.pb"
        request.write_bytes(_infer_request())
        done = subprocess.run(
            [sys.executable, str(benchmarks / "_grpc_load.py"), address, f"{SERVICE}/ModelInfer"]
            + [str(request), "--mode", "raw", "--seconds", "0.3", "--warmup", "0.1"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        row = json.loads(done.stdout)
        # More calls than the server's first window and a BDP ping or two would allow
        # if the client did not keep the connection going.
        assert row["errors"] == 0 and row["requests"] > 50, row
        if echo == "_grpc_echo.py":  # grpcio answers an unknown method with trailers only
            done = subprocess.run(
                [sys.executable, str(benchmarks / "_grpc_load.py"), address, "/x.Y/Z"]
                + [str(request), "--mode", "raw", "--seconds", "0.2", "--warmup", "0.1"],
                capture_output=True,
                text=True,
                timeout=60,
            )
            row = json.loads(done.stdout)
            assert row["requests"] > 0 and row["errors"] == row["requests"], row
    finally:
        process.terminate()
        process.wait(10)
