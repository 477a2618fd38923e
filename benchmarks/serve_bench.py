"""Policy server benchmark: batch-1 predict over keep-alive HTTP, beside in-process action().

Two greedy Q policies: ``small``, a 64x64 MLP over CartPole's 4 observations (the
demo's size, where HTTP dominates), and ``large``, a 1024x1024 MLP over 256
observations (where the network dominates and batching pays). For each, in one run:

* in-process ``action()`` at batch 1 (p50, p99, calls/s), the floor;
* ``policy-toolkit serve`` (TF-free, onnx backend) answering ``{"instances": [obs]}``
  with 1, 8 and 32 concurrent keep-alive clients, batching off; and with request
  batching on (``--batch-window-us 0``: merge what arrived while the last batch ran)
  with 1 and 32 clients. Beside the latencies, the server's CPU time per request (from
  /proc): it depends far less on what else the machine runs than wall-clock times do;
* one client beside another posting 4 MiB bodies back to back (``small``): large
  bodies are parsed off the event loop's thread, so the one client's tail stays short
  (issue 22: each large body used to hold every other client 0.6-2.6 s).

The load comes from benchmarks/_serve_load.py in a separate process (raw asyncio
sockets, tens of microseconds of client CPU per request), each run bounded in time.
Targets on 2 cores: p50 <= 1 ms with one client, p99 <= 5 ms with 8 clients (small),
batching on gives 32 clients >= 2x the requests/s of batching off (large), and p99 <=
50 ms for one client beside 4 MiB bodies (small). The load average is printed: the
machine may be shared.

With ``--protocols`` it measures the protocols instead, in one run on the ``small``
policy.onnx, batch-1 requests with 1 and 8 clients: our server over TF Serving REST,
KServe v2 REST (JSON), KServe v2 gRPC and TF Serving gRPC, and, with
``--mlserver-python PATH`` (the python of a separate virtualenv with ``mlserver`` and
``onnxruntime``: its dependencies stay out of ours), Seldon MLServer serving the same
policy.onnx with an onnxruntime runtime (benchmarks/_mlserver_onnx.py) over v2 REST
and v2 gRPC. gRPC load comes from benchmarks/_grpc_load.py with prebuilt request bytes
(v2: raw tensor bytes, as ``tritonclient.grpc`` sends them). One client makes blocking
calls on a sync channel, because the users' clients do (``tritonclient.grpc`` and TF
Serving's ``PredictionServiceStub`` are blocking stubs on ``grpc.insecure_channel``);
8 clients are tasks on one ``grpc.aio`` channel, which (measured here) loads both
servers at least as hard from one client process as 8 blocking threads. The same
load runs against a bare gRPC echo server (benchmarks/_grpc_echo.py: grpcio's server,
which our gRPC port ran on before its own transport; no policy): the "floor" row, what
grpcio and the client cost on this
machine before any server does any work. One client of another kind runs against our
v2 and TF Serving gRPC and MLServer's v2 gRPC too, the "light client" rows
(``_grpc_load.py --mode raw``: prebuilt HTTP/2 frames on raw asyncio streams, the kind
of client the REST rows use). Targets (issue 28): our p50 at 1 client at most a third
of MLServer's, our throughput at 8 clients at least 3x MLServer's (per protocol), and
our gRPC p50 not above our REST p50, judged with clients of one kind (the light ones:
grpcio's blocking client hands each call between its own threads, which costs more
than any server's work here; its ratio is shown beside).

With ``--echoes`` it measures the gRPC transports bare, beside our server: a gRPC echo
(no decoding, no policy) on grpcio's server (benchmarks/_grpc_echo.py), on asyncio + the
``h2`` library (benchmarks/_h2_echo.py) and on our own transport
(benchmarks/_grpc_echo_ours.py), and our server's TF Serving REST, v2 REST and v2 gRPC,
1 and 8 clients, ``--rounds`` interleaved rounds, each row with the server's CPU time
per request. ``--protocols`` has our transport's echo as a row too.

With ``--http-echoes`` it does the same for the REST transport: a bare HTTP echo (a
fixed small JSON answer, no policy) on uvicorn + httptools + a minimal ASGI app, as our
server configured uvicorn before it had a transport of its own
(benchmarks/_http_echo_uvicorn.py), and on an asyncio.Protocol
of our own driving httptools' parser and answering inline
(benchmarks/_http_echo_ours.py), beside our server's TF Serving REST and v2 REST.

With ``--trees DIR [DIR...]`` it compares source trees (worktrees of other commits):
gRPC with request batching on (``--batch-window-us 0``), 8 clients, v2 and TF Serving
gRPC, each tree's server in turn for ``--rounds`` interleaved rounds, with the
server's CPU time per request (``--tree-clients 1 8``: 1 client too;
``--tree-protocols "v2 REST" "TF Serving REST"``: the REST port instead;
``--tree-no-batching``: batching off, as ``--protocols`` runs).

Usage: ``python benchmarks/serve_bench.py [--json] [--seconds S] [--protocols
[--mlserver-python PATH]] [--echoes [--rounds N]] [--http-echoes [--rounds N]]
[--trees DIR... [--rounds N] [--tree-clients N...] [--tree-protocols P...]
[--tree-no-batching]]``
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

P50_TARGET_MS = 1.0
P99_TARGET_MS = 5.0
BATCHING_TARGET = 2.0
LARGE_BODY_P99_TARGET_MS = 50.0
POLICIES = {"small": (4, (64, 64)), "large": (256, (1024, 1024))}


def export_bundles(directory: Path) -> dict[str, Path]:
    import numpy as np
    import tensorflow as tf

    from exporters.export import export_policy
    from toolkit.networks.q_network import QNetwork
    from toolkit.policies import greedy_policy, q_policy
    from toolkit.specs import tensor_spec
    from toolkit.trajectories import time_step as ts

    out = {}
    for name, (size, layers) in POLICIES.items():
        observation = tensor_spec.TensorSpec((size,), tf.float32, name="observation")
        action = tensor_spec.BoundedTensorSpec((), tf.int64, 0, 1, name="action")
        network = QNetwork(observation, action, fc_layer_params=layers)
        policy = q_policy.QPolicy(ts.time_step_spec(observation), action, q_network=network)
        rng = np.random.default_rng(0)
        for variable in policy.variables():
            variable.assign(rng.normal(0, 0.05, variable.shape).astype(np.float32))
        out[name] = export_policy(greedy_policy.GreedyPolicy(policy), directory / name)
    return out


def in_process(bundle: Path, seconds: float) -> dict[str, Any]:
    import numpy as np

    import runtimes
    from toolkit.trajectories.time_step import TimeStep

    policy = runtimes.load_policy(bundle, "onnx")
    size = policy.time_step_spec.observation.shape[0]
    step = TimeStep(
        np.ones(1, np.int32),
        np.zeros(1, np.float32),
        np.ones(1, np.float32),
        np.full((1, size), 0.1, np.float32),
    )
    for _ in range(200):
        policy.action(step)
    times = []
    stop = time.perf_counter() + seconds
    while time.perf_counter() < stop:
        started = time.perf_counter()
        policy.action(step)
        times.append(time.perf_counter() - started)
    times.sort()
    n = len(times)
    return {
        "clients": 1,
        "p50_ms": times[n // 2] * 1e3,
        "p99_ms": times[int(0.99 * n)] * 1e3,
        "rps": n / sum(times),
    }


#: command prefixes of the servers and of the load generators: empty (the scheduler
#: places them), or with ``--pin`` every server on CPU 0 and every client on CPU 1
#: (``taskset``), the same for each server measured
SERVER_CPUS: list[str] = []
CLIENT_CPUS: list[str] = []


class Server:
    """``policy-toolkit serve`` in its own process on 127.0.0.1 at a free port (and its
    gRPC address in ``grpc`` with ``--grpc-port 0``)."""

    def __init__(self, bundle: Path, *args: str, root: Path = ROOT):
        self.grpc = None
        command = [sys.executable, "-m", "toolkit", "serve", str(bundle), "--name", "p"]
        command += ["--port", "0", "--log-level", "warning", *args]
        env = dict(os.environ, PYTHONPATH=str(root))  # root: the source tree that serves
        self.process = subprocess.Popen(
            SERVER_CPUS + command, cwd=root, env=env, stderr=subprocess.PIPE, text=True
        )
        deadline = time.monotonic() + 120
        self.url = None
        while time.monotonic() < deadline:
            line = self.process.stderr.readline()
            if not line:
                break
            grpc_match = re.search(r"gRPC listening on (\S+)", line)
            if grpc_match:
                self.grpc = grpc_match.group(1)
                continue
            match = re.search(r"listening on (http://\S+)", line)
            if match:
                self.url = match.group(1)
                break
        if self.url is None:
            self.process.kill()
            raise RuntimeError("the server did not start")

    def cpu_seconds(self) -> float:
        """User + system CPU time the server process has used (Linux /proc)."""
        try:
            fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return float("nan")
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        _terminate(self.process, 10)


def _terminate(process: subprocess.Popen, seconds: float) -> None:
    """SIGTERM (the servers drain and exit), then SIGKILL after ``seconds``."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(seconds)
    except subprocess.TimeoutExpired:
        process.kill()


class LargeBodies:
    """Posts a 4 MiB predict body (refused: more rows than --max-batch) back to back
    from a thread of this process while the block runs; ``count`` of them answered."""

    def __init__(self, url: str):
        from urllib.parse import urlsplit

        self.address = urlsplit(url)
        rows = [[0.123456789, -1.5, 2.25, 3.0]] * 128000
        self.body = json.dumps({"instances": rows}).encode()
        self.count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._post, daemon=True)

    def _post(self) -> None:
        import http.client

        connection = http.client.HTTPConnection(self.address.hostname, self.address.port)
        try:
            while not self._stop.is_set():
                connection.request("POST", "/v1/models/p:predict", body=self.body)
                connection.getresponse().read()
                self.count += 1
        finally:
            connection.close()

    def __enter__(self) -> LargeBodies:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(120)


def load(
    url: str, body_file: Path, clients: int, seconds: float, path: str = "/v1/models/p:predict"
) -> dict[str, Any]:
    done = subprocess.run(
        CLIENT_CPUS
        + [
            sys.executable,
            str(HERE / "_serve_load.py"),
            url,
            path,
            str(body_file),
            "--clients",
            str(clients),
            "--seconds",
            str(seconds),
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 120,
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr)
    return json.loads(done.stdout)


def run(seconds: float) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        bundles = export_bundles(Path(tmp))
        for name, bundle in bundles.items():
            size = POLICIES[name][0]
            body = Path(tmp) / f"{name}.json"
            body.write_text(json.dumps({"instances": [[0.1] * size]}))
            rows.append({"policy": name, "mode": "in-process action()", **in_process(bundle, 2.0)})
            for mode, args, client_counts in (
                ("serve, batching off", (), (1, 8, 32)),
                ("serve, batching on", ("--batch-window-us", "0"), (1, 32)),
            ):
                server = Server(bundle, *args)
                try:
                    for clients in client_counts:
                        before = server.cpu_seconds()
                        row = load(server.url, body, clients, seconds)
                        spent = server.cpu_seconds() - before  # warm-up requests included
                        row["server_cpu_us"] = spent / max(row["all_requests"], 1) * 1e6
                        rows.append({"policy": name, "mode": mode, **row})
                    if name == "small" and not args:
                        with LargeBodies(server.url) as large:
                            row = load(server.url, body, 1, seconds)
                        row["large_bodies"] = large.count
                        rows.append({"policy": name, "mode": "serve, beside 4 MiB bodies", **row})
                finally:
                    server.stop()
    return rows


# --- the protocols, and MLServer beside them -------------------------------------------------

KSERVE_INFER = "/inference.GRPCInferenceService/ModelInfer"
TFS_PREDICT = "/tensorflow.serving.PredictionService/Predict"


def grpc_load(
    address: str,
    method: str,
    request_file: Path,
    clients: int,
    seconds: float,
    light: bool = False,
) -> dict[str, Any]:
    """A gRPC load run: one client makes blocking calls (the users' clients do);
    more are tasks on one grpc.aio channel (the module docstring says why). ``light``:
    one client on raw asyncio streams with prebuilt frames (``_grpc_load.py --mode raw``),
    the REST generator's kind."""
    mode = "raw" if light else "sync" if clients == 1 else "aio"
    done = subprocess.run(
        CLIENT_CPUS
        + [sys.executable, str(HERE / "_grpc_load.py"), address, method, str(request_file)]
        + ["--clients", str(clients), "--seconds", str(seconds), "--mode", mode],
        capture_output=True,
        text=True,
        timeout=seconds + 120,
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr)
    return json.loads(done.stdout)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class EchoServer:
    """A bare transport: benchmarks/_grpc_echo.py (grpcio's server, no policy) or
    another echo ``script`` (gRPC: its address in ``grpc``; HTTP: ``url``)."""

    def __init__(self, script: str = "_grpc_echo.py"):
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.process = subprocess.Popen(
            SERVER_CPUS + [sys.executable, str(HERE / script)],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        line = self.process.stderr.readline()
        match = re.search(r"listening on (\S+)", line)
        if match is None:
            self.process.kill()
            raise RuntimeError(f"the echo server did not start: {line}")
        self.grpc = match.group(1)
        self.url = match.group(1) if match.group(1).startswith("http://") else None

    cpu_seconds = Server.cpu_seconds

    def stop(self) -> None:
        _terminate(self.process, 10)


class MLServer:
    """Seldon MLServer (in its own virtualenv) serving policy.onnx on 127.0.0.1."""

    def __init__(self, python: str, onnx: Path, folder: Path):
        self.http_port, self.grpc_port = _free_port(), _free_port()
        model = folder / "p"
        model.mkdir(parents=True)
        settings = {
            "host": "127.0.0.1",
            "http_port": self.http_port,
            "grpc_port": self.grpc_port,
            "metrics_port": _free_port(),
            "debug": False,
            # Inference in the server process: MLServer 1.7.1's worker processes fail to
            # start with uvloop 0.22+ ("no current event loop"), and skipping the hop
            # to a worker is its fastest set-up for a model this small anyway.
            "parallel_workers": 0,
        }
        (folder / "settings.json").write_text(json.dumps(settings))
        model_settings = {
            "name": "p",
            "implementation": "_mlserver_onnx.OnnxPolicy",
            "parameters": {"uri": str(onnx)},
        }
        (model / "model-settings.json").write_text(json.dumps(model_settings))
        mlserver = str(Path(python).parent / "mlserver")
        env = dict(os.environ, PYTHONPATH=str(HERE))
        self.process = subprocess.Popen(
            SERVER_CPUS + [mlserver, "start", str(folder)],
            cwd=folder,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.grpc = f"127.0.0.1:{self.grpc_port}"
        deadline = time.monotonic() + 180
        import urllib.request

        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/v2/models/p/ready", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError("MLServer did not start")

    def stop(self) -> None:
        _terminate(self.process, 20)


def _protocol_requests(tmp: Path) -> dict[str, Path]:
    import numpy as np

    from runtimes.serving.proto import kserve_v2_pb2, tfserving_pb2

    obs = [0.1] * POLICIES["small"][0]
    files = {}
    tfs_rest = tmp / "tfs.json"
    tfs_rest.write_text(json.dumps({"instances": [obs]}))
    files["tfs_rest"] = tfs_rest
    v2_rest = tmp / "v2.json"
    v2_rest.write_text(
        json.dumps(
            {
                "inputs": [
                    {"name": "observation", "shape": [1, len(obs)], "datatype": "FP32", "data": obs}
                ]
            }
        )
    )
    files["v2_rest"] = v2_rest
    # As tritonclient.grpc sends it (InferInput.set_data_from_numpy): raw bytes.
    request = kserve_v2_pb2.ModelInferRequest(model_name="p")
    request.inputs.add(name="observation", datatype="FP32", shape=[1, len(obs)])
    request.raw_input_contents.append(np.asarray([obs], np.float32).tobytes())
    files["v2_grpc"] = tmp / "v2.pb"
    files["v2_grpc"].write_bytes(request.SerializeToString())
    predict = tfserving_pb2.PredictRequest()
    predict.model_spec.name = "p"
    tensor = predict.inputs["observation"]
    tensor.dtype = tfserving_pb2.DT_FLOAT
    tensor.tensor_shape.dim.add(size=1)
    tensor.tensor_shape.dim.add(size=len(obs))
    tensor.tensor_content = np.asarray([obs], np.float32).tobytes()
    files["tfs_grpc"] = tmp / "tfs.pb"
    files["tfs_grpc"].write_bytes(predict.SerializeToString())
    return files


def _our_protocols(
    server: Server, files: dict[str, Path], seconds: float
) -> dict[str, Callable[[int], dict[str, Any]]]:
    """Protocol -> a load run of ``clients`` clients against our server, one request file
    each (``_protocol_requests``)."""
    v2_infer = "/v2/models/p/infer"
    return {
        "TF Serving REST": lambda c: load(server.url, files["tfs_rest"], c, seconds),
        "v2 REST": lambda c: load(server.url, files["v2_rest"], c, seconds, v2_infer),
        "v2 gRPC": lambda c: grpc_load(server.grpc, KSERVE_INFER, files["v2_grpc"], c, seconds),
        "TF Serving gRPC": lambda c: grpc_load(
            server.grpc, TFS_PREDICT, files["tfs_grpc"], c, seconds
        ),
    }


def run_protocols(seconds: float, mlserver_python: str | None) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        bundle = export_bundles(tmp)["small"]
        files = _protocol_requests(tmp)
        server = Server(bundle, "--grpc-port", "0")
        try:
            for clients in (1, 8):
                for protocol, runner in _our_protocols(server, files, seconds).items():
                    rows.append({"policy": "small", "mode": f"ours, {protocol}", **runner(clients)})
            for protocol, method, file in (
                ("v2 gRPC", KSERVE_INFER, "v2_grpc"),
                ("TF Serving gRPC", TFS_PREDICT, "tfs_grpc"),
            ):
                row = grpc_load(server.grpc, method, files[file], 1, seconds, light=True)
                rows.append({"policy": "small", "mode": f"ours, {protocol}, {LIGHT}", **row})
        finally:
            server.stop()
        for mode in ("floor: bare gRPC echo", "bare gRPC echo, our transport"):
            echo = EchoServer(ECHOES[mode])
            try:
                for clients in (1, 8):
                    row = grpc_load(echo.grpc, KSERVE_INFER, files["v2_grpc"], clients, seconds)
                    rows.append({"policy": "small", "mode": mode, **row})
            finally:
                echo.stop()
        if mlserver_python:
            other = MLServer(mlserver_python, bundle / "policy.onnx", tmp / "mlserver")
            try:
                for clients in (1, 8):
                    row = load(other.url, files["v2_rest"], clients, seconds, "/v2/models/p/infer")
                    rows.append({"policy": "small", "mode": "MLServer, v2 REST", **row})
                    row = grpc_load(other.grpc, KSERVE_INFER, files["v2_grpc"], clients, seconds)
                    rows.append({"policy": "small", "mode": "MLServer, v2 gRPC", **row})
                row = grpc_load(other.grpc, KSERVE_INFER, files["v2_grpc"], 1, seconds, light=True)
                rows.append({"policy": "small", "mode": f"MLServer, v2 gRPC, {LIGHT}", **row})
            finally:
                other.stop()
    return rows


ECHOES = {
    "floor: bare gRPC echo": "_grpc_echo.py",
    "bare gRPC echo, h2 library": "_h2_echo.py",
    "bare gRPC echo, our transport": "_grpc_echo_ours.py",
}


def _measured(process: Any, runner: Callable[[int], dict[str, Any]], clients: int) -> dict:
    """A load run's row, with the serving process's CPU time per request."""
    before = process.cpu_seconds()
    row = runner(clients)
    spent = process.cpu_seconds() - before  # warm-up requests included
    row["server_cpu_us"] = spent / max(row["all_requests"], 1) * 1e6
    return row


def _beside_echoes(
    scripts: dict[str, str],
    protocols: tuple[str, ...],
    echo_load: Callable[..., dict[str, Any]],
    seconds: float,
    rounds: int,
    *server_args: str,
) -> list[dict[str, Any]]:
    """Each echo server of ``scripts`` (mode -> script) under ``echo_load(echo, files,
    clients, seconds)``, beside our server's ``protocols``, 1 and 8 clients, ``rounds``
    interleaved rounds, each row with the server's CPU time per request."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        bundle = export_bundles(tmp)["small"]
        files = _protocol_requests(tmp)
        server = Server(bundle, *server_args)
        echoes = {mode: EchoServer(script) for mode, script in scripts.items()}
        ours = _our_protocols(server, files, seconds)
        runners = [(f"ours, {protocol}", server, ours[protocol]) for protocol in protocols]
        for mode, echo in echoes.items():
            runners.append((mode, echo, lambda c, echo=echo: echo_load(echo, files, c, seconds)))
        try:
            for round_ in range(rounds):
                for clients in (1, 8):
                    for mode, process, runner in runners:
                        row = _measured(process, runner, clients)
                        rows.append({"policy": "small", "mode": mode, "round": round_, **row})
        finally:
            server.stop()
            for echo in echoes.values():
                echo.stop()
    return rows


def run_echoes(seconds: float, rounds: int) -> list[dict[str, Any]]:
    """The gRPC transports alone, beside our REST: each echo server of ``ECHOES`` and our
    server's TF Serving REST, v2 REST and v2 gRPC, 1 and 8 clients, ``rounds``
    interleaved rounds (ratios within one run hold up on a loaded machine), each row with
    the server's CPU time per request."""
    return _beside_echoes(
        ECHOES,
        ("TF Serving REST", "v2 REST", "v2 gRPC"),
        lambda echo, files, c, s: grpc_load(echo.grpc, KSERVE_INFER, files["v2_grpc"], c, s),
        seconds,
        rounds,
        "--grpc-port",
        "0",
    )


HTTP_ECHOES = {
    "bare HTTP echo, uvicorn + ASGI": "_http_echo_uvicorn.py",
    "bare HTTP echo, our httptools protocol": "_http_echo_ours.py",
}


def run_http_echoes(seconds: float, rounds: int) -> list[dict[str, Any]]:
    """The REST transports alone, beside our REST: each HTTP echo of ``HTTP_ECHOES``
    (a fixed small JSON answer, no policy) and our server's TF Serving REST and v2
    REST, 1 and 8 clients, ``rounds`` interleaved rounds, each row with the server's
    CPU time per request."""
    return _beside_echoes(
        HTTP_ECHOES,
        ("TF Serving REST", "v2 REST"),
        lambda echo, files, c, s: load(echo.url, files["v2_rest"], c, s, "/v2/models/p/infer"),
        seconds,
        rounds,
    )


TREE_PROTOCOLS = ("v2 gRPC", "TF Serving gRPC")


def run_trees(
    trees: list[Path],
    seconds: float,
    rounds: int,
    client_counts: tuple[int, ...] = (8,),
    protocols: tuple[str, ...] = TREE_PROTOCOLS,
    batching: bool = True,
) -> list[dict[str, Any]]:
    """Each protocol of ``protocols`` (``_our_protocols``: v2 gRPC and TF Serving gRPC by
    default; v2 REST, TF Serving REST) at each count of ``client_counts`` (1: a
    blocking client, as in ``--protocols``), batching on (``--batch-window-us 0``)
    unless ``batching`` is false, served by each source tree (e.g. throwaway worktrees
    of other commits) in turn, ``rounds`` times interleaved: ratios between trees taken
    in one run hold up on a loaded machine where absolute figures do not. Each row has
    the server's CPU time per request and its round."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        bundle = export_bundles(tmp)["small"]
        files = _protocol_requests(tmp)
        args = ("--grpc-port", "0") + (("--batch-window-us", "0") if batching else ())
        servers = [Server(bundle, *args, root=tree) for tree in trees]
        suffix = ", batching" if batching else ""
        try:
            for round_ in range(rounds):
                for tree, server in zip(trees, servers, strict=True):
                    runners = _our_protocols(server, files, seconds)
                    for clients, protocol in itertools.product(client_counts, protocols):
                        row = _measured(server, runners[protocol], clients)
                        mode = f"{tree.name}, {protocol}{suffix}"
                        rows.append({"policy": "small", "mode": mode, "round": round_, **row})
        finally:
            for server in servers:
                server.stop()
    return rows


#: The 1-client gRPC rows of a light client (``grpc_load(light=True)``).
LIGHT = "light client"


def protocol_verdicts(rows: list[dict[str, Any]]) -> list[tuple[str, float, str, bool]]:
    out = []
    rest = _find(rows, "small", "ours, v2 REST", 1)["p50_ms"]
    grpc_p50 = _find(rows, "small", "ours, v2 gRPC", 1)["p50_ms"]
    light = _find(rows, "small", f"ours, v2 gRPC, {LIGHT}", 1)["p50_ms"]
    # The protocols compared on one server with clients of one kind: the REST rows come
    # from a light client (raw asyncio streams, a prebuilt request), so gRPC's is judged
    # on the light gRPC client; grpcio's blocking client (its own threads hand each call
    # over) is shown beside it.
    out.append(
        (f"our v2 gRPC p50 / v2 REST p50, 1 {LIGHT} each (<= 1)", light / rest, "x", light <= rest)
    )
    out.append(
        (
            "our v2 gRPC p50 (grpcio's blocking client) / v2 REST p50 (info)",
            grpc_p50 / rest,
            "x",
            True,
        )
    )
    floor = _find(rows, "small", "floor: bare gRPC echo", 1)["p50_ms"]
    ours = _find(rows, "small", "bare gRPC echo, our transport", 1)["p50_ms"]
    for label, ratio in (
        ("our transport's bare echo p50 / grpcio's bare echo p50, 1 client (info)", ours / floor),
        ("bare gRPC echo p50 / our v2 REST p50, 1 client (info)", floor / rest),
        ("our v2 gRPC p50 / bare gRPC echo p50, 1 client (info)", grpc_p50 / floor),
    ):
        out.append((label, ratio, "x", True))
    for protocol in ("v2 REST", "v2 gRPC"):
        try:
            theirs1 = _find(rows, "small", f"MLServer, {protocol}", 1)
            theirs8 = _find(rows, "small", f"MLServer, {protocol}", 8)
        except StopIteration:
            continue
        ours1 = _find(rows, "small", f"ours, {protocol}", 1)
        ours8 = _find(rows, "small", f"ours, {protocol}", 8)
        if protocol == "v2 gRPC":
            ratio = floor / theirs1["p50_ms"]
            out.append(("bare gRPC echo p50 / MLServer's v2 gRPC p50 (info)", ratio, "x", True))
        ratio = ours1["p50_ms"] / theirs1["p50_ms"]
        out.append(
            (f"{protocol}: our p50 / MLServer's, 1 client (<= 0.333)", ratio, "x", ratio <= 1 / 3)
        )
        ratio = ours8["rps"] / theirs8["rps"]
        out.append(
            (f"{protocol}: our req/s / MLServer's, 8 clients (>= 3)", ratio, "x", ratio >= 3)
        )
        if protocol == "v2 gRPC":
            theirs = _find(rows, "small", f"MLServer, v2 gRPC, {LIGHT}", 1)["p50_ms"]
            ratio = light / theirs
            out.append((f"v2 gRPC: our p50 / MLServer's, 1 {LIGHT} (info)", ratio, "x", True))
    return out


def _find(rows, policy, mode, clients):
    return next(
        r for r in rows if r["policy"] == policy and r["mode"] == mode and r["clients"] == clients
    )


def verdicts(rows: list[dict[str, Any]]) -> list[tuple[str, float, str, bool]]:
    off, on = "serve, batching off", "serve, batching on"
    p50 = _find(rows, "small", off, 1)["p50_ms"]
    p99 = _find(rows, "small", off, 8)["p99_ms"]
    beside = _find(rows, "small", "serve, beside 4 MiB bodies", 1)["p99_ms"]
    out = [
        (f"p50, 1 client, small (<= {P50_TARGET_MS} ms)", p50, "ms", p50 <= P50_TARGET_MS),
        (f"p99, 8 clients, small (<= {P99_TARGET_MS} ms)", p99, "ms", p99 <= P99_TARGET_MS),
        (
            f"p99, 1 client beside 4 MiB bodies, small (<= {LARGE_BODY_P99_TARGET_MS} ms)",
            beside,
            "ms",
            beside <= LARGE_BODY_P99_TARGET_MS,
        ),
    ]
    for policy in POLICIES:
        ratio = _find(rows, policy, on, 32)["rps"] / _find(rows, policy, off, 32)["rps"]
        target = policy == "large"
        label = f"batching on/off req/s, 32 clients, {policy}" + (
            f" (>= {BATCHING_TARGET}x)" if target else " (no target: HTTP dominates)"
        )
        out.append((label, ratio, "x", ratio >= BATCHING_TARGET or not target))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per load run")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    parser.add_argument(
        "--protocols", action="store_true", help="compare the protocols (and MLServer)"
    )
    parser.add_argument(
        "--mlserver-python", help="python of a virtualenv with mlserver and onnxruntime"
    )
    parser.add_argument(
        "--trees",
        nargs="+",
        type=Path,
        help="compare source trees: gRPC with batching on, 8 clients, interleaved rounds",
    )
    parser.add_argument(
        "--tree-protocols",
        nargs="+",
        default=list(TREE_PROTOCOLS),
        choices=["v2 REST", "TF Serving REST", "v2 gRPC", "TF Serving gRPC"],
        help="protocols of --trees",
    )
    parser.add_argument(
        "--tree-no-batching", action="store_true", help="--trees without --batch-window-us"
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds of --trees")
    parser.add_argument(
        "--tree-clients", type=int, nargs="+", default=[8], help="client counts of --trees"
    )
    parser.add_argument(
        "--echoes", action="store_true", help="the bare gRPC transports beside our REST"
    )
    parser.add_argument(
        "--http-echoes", action="store_true", help="the bare HTTP transports beside our REST"
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="servers on CPU 0, load generators on CPU 1 (taskset; the same for every server)",
    )
    args = parser.parse_args()
    if args.pin:
        SERVER_CPUS[:] = ["taskset", "-c", "0"]
        CLIENT_CPUS[:] = ["taskset", "-c", "1"]
    load_before = os.getloadavg()[0]
    if args.echoes:
        rows = run_echoes(args.seconds, args.rounds)
        checks = []
    elif args.http_echoes:
        rows = run_http_echoes(args.seconds, args.rounds)
        checks = []
    elif args.trees:
        trees = [t.resolve() for t in args.trees]
        rows = run_trees(
            trees,
            args.seconds,
            args.rounds,
            tuple(args.tree_clients),
            tuple(args.tree_protocols),
            not args.tree_no_batching,
        )
        checks = []
    elif args.protocols:
        rows = run_protocols(args.seconds, args.mlserver_python)
        checks = protocol_verdicts(rows)
    else:
        rows = run(args.seconds)
        checks = verdicts(rows)
    if args.json:
        print(json.dumps({"rows": rows, "checks": checks}, indent=2))
        return 0
    print(f"load average before: {load_before:.2f}, after: {os.getloadavg()[0]:.2f}")
    width = max(27, *(len(r["mode"]) for r in rows))
    print(
        f"{'policy':7} {'mode':{width}} {'clients':>7} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>9} "
        f"{'server CPU us/req':>18}"
    )
    for r in rows:
        cpu = f"{r['server_cpu_us']:>18.0f}" if "server_cpu_us" in r else f"{'':>18}"
        print(
            f"{r['policy']:7} {r['mode']:{width}} {r['clients']:>7} {r['p50_ms']:>8.3f} "
            f"{r['p99_ms']:>8.3f} {r['rps']:>9.0f} {cpu}"
            + (f"  ({r['errors']} errors)" if r.get("errors") else "")
            + (f"  ({r['large_bodies']} large bodies meanwhile)" if "large_bodies" in r else "")
        )
    failed = False
    for label, value, unit, ok in checks:
        print(f"{'ok  ' if ok else 'MISS'} {label}: {value:.3f} {unit}")
        failed |= not ok
    # Shared machines make timings noisy: a miss is reported, not an error exit.
    return 0


if __name__ == "__main__":
    sys.exit(main())
