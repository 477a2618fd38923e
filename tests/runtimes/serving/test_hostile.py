"""The server under hostile input and a hostile disk (issue 22): large bodies, half-open
connections, base paths that go away or turn unreadable, versions that vanish, version
numbers at the int64 bound, backends that cannot run. Each over a real server process."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

import runtimes
from runtimes.serving.models import MAX_VERSION
from runtimes.serving.publish import publish
from tests.contract import cases_runtime as cr
from tests.runtimes.serving import bundles
from tests.runtimes.serving.server_process import ServerProcess, run_serve, wait_until
from toolkit.trajectories.time_step import TimeStep

OBSERVATIONS = np.random.default_rng(21).normal(size=(4, 4)).astype(np.float32)
BODY = json.dumps({"instances": OBSERVATIONS.tolist()})


def _actions(bundle: Path, backend: str = "onnx") -> list:
    policy = runtimes.load_policy(bundle, backend)
    n = len(OBSERVATIONS)
    mid = TimeStep(np.ones(n, np.int32), np.zeros(n, np.float32), np.ones(n, np.float32), None)
    return policy.action(mid._replace(observation=OBSERVATIONS)).action.tolist()


def _predictions(client: httpx.Client, model: str = "m") -> list:
    response = client.post(f"/v1/models/{model}:predict", content=BODY)
    assert response.status_code == 200, response.text
    return response.json()["predictions"]


def _served(url: str, model: str = "m") -> list[str]:
    answer = httpx.get(f"{url}/v1/models/{model}", timeout=30).json()
    return [
        e["version"] for e in answer.get("model_version_status", []) if e["state"] == "AVAILABLE"
    ]


def _metric(url: str, sample: str) -> float:
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_large_body_does_not_hold_other_clients():
    """4 MiB bodies are parsed off the event loop's thread: a client of small requests is
    answered all along (before, each of its requests waited for a whole large body)."""
    big = json.dumps({"instances": [[0.123456789, -1.5, 2.25, 3.0]] * 128000}).encode()
    assert 3.5 * 2**20 < len(big) <= 4 * 2**20  # the default --max-body-bytes
    small = json.dumps({"instances": [[0.1, 0.2, 0.3, 0.4]]}).encode()
    with ServerProcess(str(cr.bundle("greedy_q")), "--name", "m") as server:
        stop = threading.Event()
        small_requests: list[tuple[float, float]] = []

        def small_client() -> None:
            with httpx.Client(base_url=server.url, timeout=60) as client:
                while not stop.is_set():
                    started = time.perf_counter()
                    response = client.post("/v1/models/m:predict", content=small)
                    small_requests.append((started, time.perf_counter() - started))
                    assert response.status_code == 200, response.text

        thread = threading.Thread(target=small_client)
        thread.start()
        large: list[tuple[float, float]] = []
        try:
            wait_until(lambda: len(small_requests) > 20)
            with httpx.Client(base_url=server.url, timeout=120) as client:
                for _ in range(3):
                    started = time.perf_counter()
                    response = client.post("/v1/models/m:predict", content=big)
                    large.append((started, time.perf_counter() - started))
                    assert response.status_code == 400
                    assert "instances: expected at most 1024" in response.json()["error"]
        finally:
            stop.set()
            thread.join(60)
    during = sorted(
        seconds
        for started, seconds in small_requests
        if any(begin <= started <= begin + took for begin, took in large)
    )
    large_mean = sum(took for _, took in large) / len(large)
    # Ratios of times measured in one run, so the machine's load scales both sides.
    assert len(during) >= 10, (len(during), large)
    assert during[len(during) // 2] < 0.1 * large_mean, (during, large)
    assert during[-1] < 0.6 * large_mean, (during[-1], large)


def test_half_open_connections_are_timed_out_and_bounded():
    """Connections that never complete a request are closed after --read-timeout-seconds
    (a slow sender too), and those over --max-connections at once; then it serves."""
    args = ["--name", "m", "--read-timeout-seconds", "1", "--max-connections", "20"]
    with ServerProcess(str(cr.bundle("greedy_q")), *args) as server:
        host, port = server.url.removeprefix("http://").split(":")
        head = b"POST /v1/models/m:predict HTTP/1.1\r\nHost: x\r\nX-Slow: "
        slow = socket.create_connection((host, int(port)), timeout=10)
        slow.sendall(head)
        sockets = []
        for i in range(30):
            sock = socket.create_connection((host, int(port)), timeout=10)
            if i % 2:  # half a request's head
                sock.sendall(head)
            sockets.append(sock)

        def closed(sock: socket.socket) -> bool:
            sock.setblocking(False)
            try:
                return sock.recv(1) == b""
            except BlockingIOError:
                return False
            except OSError:  # reset
                return True

        def slow_sender_closed() -> bool:
            try:
                slow.send(b"a")  # one byte of a header at a time, never a whole head
            except OSError:
                return True
            return closed(slow)

        try:
            wait_until(lambda: sum(closed(s) for s in sockets) >= 10, timeout=10)
            wait_until(lambda: all(closed(s) for s in sockets), timeout=20)
            wait_until(slow_sender_closed, timeout=20)
        finally:
            for sock in [*sockets, slow]:
                sock.close()
        with httpx.Client(base_url=server.url) as client:
            assert _predictions(client) == _actions(cr.bundle("greedy_q"))
        assert _metric(server.url, 'policy_serving_connections_closed_total{reason="limit"}') >= 10
        timed_out = _metric(
            server.url, 'policy_serving_connections_closed_total{reason="read_timeout"}'
        )
        assert timed_out >= 19
    assert server.process.returncode == 0


def test_a_base_path_that_goes_away_or_turns_unreadable_keeps_its_versions(tmp_path):
    """Moved away for a second and back, then mode 000 for a second: every request is
    answered by the version in service; each state is logged in one line, once."""
    base = tmp_path / "base"
    publish(cr.bundle("greedy_q"), base, 1)
    expected = _actions(cr.bundle("greedy_q"))
    args = ["--name", "m", "--poll-seconds", "0.05"]
    with (
        ServerProcess(str(base), *args, permissions=True) as server,
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        answers: list[tuple[int, bool]] = []
        stop = threading.Event()

        def requests() -> None:
            while not stop.is_set():
                response = client.post("/v1/models/m:predict", content=BODY)
                right = response.json().get("predictions") == expected
                answers.append((response.status_code, right))

        thread = threading.Thread(target=requests)
        thread.start()
        try:
            away = tmp_path / "away"
            base.rename(away)
            server.wait_for_log(r"cannot read .*base \(No such file or directory\)")
            time.sleep(1.0)
            away.rename(base)
            server.wait_for_log(r"base can be read again")
            base.chmod(0)
            server.wait_for_log(r"cannot read .*base \(Permission denied\)")
            time.sleep(1.0)
            base.chmod(0o755)
            wait_until(lambda: server.log.count("can be read again") == 2)
        finally:
            stop.set()
            thread.join(60)
        assert len(answers) > 20 and set(answers) == {(200, True)}, sorted(set(answers))
        assert _served(server.url) == ["1"]
        # Versions published after it came back are loaded as ever.
        publish(bundles.greedy_q_v2(), base, 2)
        wait_until(lambda: _served(server.url) == ["2"])
    log = server.log
    assert log.count("cannot read") == 2, log
    assert "versions [1] stay in service" in log
    assert "Traceback" not in log, log


def test_a_version_on_disk_stands_in_when_the_served_one_goes_and_the_newest_is_broken(tmp_path):
    """Versions 1, 10**18 (served) and 2**63 - 1 (broken): deleting 10**18 puts 1 in
    service, not a 404 for good. Version numbers run to int64's bound, as publish's."""
    base = tmp_path / "base"
    v1, v2 = cr.bundle("greedy_q"), bundles.greedy_q_v2()
    publish(v1, base, 1)
    publish(v2, base, 10**18)  # 19 digits: never loaded before
    args = ["--name", "m", "--poll-seconds", "0.1"]
    with (
        ServerProcess(str(base), *args) as server,
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        assert _served(server.url) == [str(10**18)]
        assert _predictions(client) == _actions(v2)
        staging = base / ".broken"
        shutil.copytree(v1, staging)
        (staging / "policy.onnx").write_bytes(b"not a graph")
        staging.rename(base / str(MAX_VERSION))
        server.wait_for_log(rf"version {MAX_VERSION} at .* failed to load; the versions in service")
        assert _served(server.url) == [str(10**18)]
        shutil.rmtree(base / str(10**18))
        wait_until(lambda: _served(server.url) == ["1"])
        assert _predictions(client) == _actions(v1)
        server.wait_for_log(rf"version 1 serves in place of versions \[{MAX_VERSION}\]")
        # The broken version shows as such; a name beyond int64 is no version at all.
        status = client.get(f"/v1/models/m/versions/{MAX_VERSION}").json()
        assert status["model_version_status"][0]["state"] == "END"
        (base / str(MAX_VERSION + 1)).mkdir()
        time.sleep(0.5)
        assert _served(server.url) == ["1"]


def test_backends_the_server_cannot_run_are_refused_before_serving(tmp_path):
    bundle = str(cr.bundle("greedy_q"))
    # TensorFlow is blocked in the server process, as on a serving machine without it.
    result = run_serve(bundle, "--backend", "tf")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: --backend tf: the tf backend needs TensorFlow, which is not installed "
        "(pip install 'policy-toolkit[all]'); --backend onnx serves without it"
    ]
    result = run_serve(bundle, "--backend", "litert", "--follow", str(tmp_path))
    assert result.returncode == 2, result.stderr
    assert "--follow: the litert backend cannot take checkpoints" in result.stderr
    result = run_serve(bundle, "--backend", "openvino")
    assert result.returncode == 2
    # The choices are the backend table's, whatever their order.
    listed = re.search(r"--backend: expected one of \[(.*)\], got 'openvino'", result.stderr)
    assert listed is not None, result.stderr
    assert set(listed.group(1).replace("'", "").split(", ")) == {
        "auto",
        "onnx",
        "litert",
        "tf",
        "micro",
        "c",
    }


def test_the_litert_backend_serves():
    bundle = cr.bundle("actor/categorical_normal")
    body = {"signature_name": "action", "inputs": {"observation": OBSERVATIONS.tolist()}}
    args = ["--name", "m", "--backend", "litert", "--seed", "3"]
    with ServerProcess(str(bundle), *args) as server:
        answer = httpx.post(f"{server.url}/v1/models/m:predict", json=body, timeout=30)
        assert answer.status_code == 200, answer.text
        outputs = answer.json()["outputs"]
    policy = runtimes.load_policy(bundle, "litert", seed=3)
    n = len(OBSERVATIONS)
    mid = TimeStep(np.ones(n, np.int32), np.zeros(n, np.float32), np.ones(n, np.float32), None)
    step = policy.action(mid._replace(observation=OBSERVATIONS))
    np.testing.assert_allclose(outputs["action/force"], step.action["force"], rtol=1e-6)
    assert outputs["action/move"] == step.action["move"].tolist()


@pytest.fixture(autouse=True)
def _restore_permissions(tmp_path):
    """Leaves tmp_path removable whatever a test changed."""
    yield
    for path in [tmp_path, *tmp_path.rglob("*")]:
        if path.is_dir() and not path.is_symlink():
            os.chmod(path, 0o755)
