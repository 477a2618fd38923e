"""Versions under a base path: polling, switching, broken versions, policies, shutdown."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

import runtimes
from runtimes.serving.models import MAX_VERSION, VersionPolicy, list_versions, parse_version
from runtimes.serving.publish import publish
from tests.contract import cases_runtime as cr
from tests.runtimes.serving import bundles
from tests.runtimes.serving.server_process import ServerProcess, wait_until
from toolkit.errors import SpecMismatchError
from toolkit.trajectories.time_step import TimeStep

OBSERVATIONS = np.random.default_rng(7).normal(size=(4, 4)).astype(np.float32)


def _actions(bundle: Path) -> list:
    policy = runtimes.load_policy(bundle, "onnx")
    n = len(OBSERVATIONS)
    mid = TimeStep(np.ones(n, np.int32), np.zeros(n, np.float32), np.ones(n, np.float32), None)
    return policy.action(mid._replace(observation=OBSERVATIONS)).action.tolist()


def _predict(url: str, model: str = "m", path: str = "") -> httpx.Response:
    body = {"instances": OBSERVATIONS.tolist()}
    return httpx.post(f"{url}/v1/models/{model}{path}:predict", json=body, timeout=30)


def _served_versions(url: str, model: str = "m") -> list[str]:
    answer = httpx.get(f"{url}/v1/models/{model}").json()
    return [
        e["version"] for e in answer.get("model_version_status", []) if e["state"] == "AVAILABLE"
    ]


def test_version_policy_parse_and_select():
    available = [3, 1, 10, 2]
    assert VersionPolicy.parse("latest").select(available) == [10]
    assert VersionPolicy.parse("latest:2").select(available) == [10, 3]
    assert VersionPolicy.parse("all").select(available) == [10, 3, 2, 1]
    assert VersionPolicy.parse("specific:2,1,7").select(available) == [2, 1]
    for bad in ("latest:0", "newest", "specific:", "specific:a", "all:2"):
        with pytest.raises(SpecMismatchError, match="--versions: expected latest, latest:N"):
            VersionPolicy.parse(bad)


def test_only_numeric_folders_are_versions(tmp_path):
    for name in ("1", "20", ".3.tmp-abcd", "tmp", "4a", "007"):
        (tmp_path / name).mkdir()
    (tmp_path / "5").write_text("a file")
    assert sorted(list_versions(tmp_path)) == [1, 7, 20]


def test_versions_run_to_int64s_bound_as_publish_allows(tmp_path):
    """Folder names of up to 2**63 - 1 are versions (publish takes the same bound); other
    spellings of numbers are not."""
    for name in ("1000000000000000000", str(MAX_VERSION), str(MAX_VERSION + 1), "\u0663", "+4"):
        (tmp_path / name).mkdir()
    assert sorted(list_versions(tmp_path)) == [10**18, MAX_VERSION]
    assert parse_version("007") == 7 and parse_version(str(MAX_VERSION + 1)) is None
    assert publish(cr.bundle("greedy_q"), tmp_path / "base", MAX_VERSION).name == str(MAX_VERSION)


def test_new_versions_switch_in_and_broken_ones_are_logged(tmp_path):
    base = tmp_path / "base"
    v1, v2 = cr.bundle("greedy_q"), bundles.greedy_q_v2()
    publish(v1, base, 1)
    with ServerProcess(str(base), "--name", "m", "--poll-seconds", "0.1") as server:
        assert _served_versions(server.url) == ["1"]
        assert _predict(server.url).json()["predictions"] == _actions(v1)
        # A half-written version in a hidden folder is never looked at.
        hidden = base / ".2.tmp-0000"
        shutil.copytree(v2, hidden)
        time.sleep(0.5)
        assert _served_versions(server.url) == ["1"]
        shutil.rmtree(hidden)

        publish(v2, base, 2)
        wait_until(lambda: _served_versions(server.url) == ["2"])
        assert _predict(server.url).json()["predictions"] == _actions(v2)
        server.wait_for_log(r"model m: version 2 loaded from .*/2 \(train step 8\)")

        # A broken version (its graph changed after publishing) is logged; 2 keeps serving.
        staging = base / ".3.tmp-broken"
        shutil.copytree(base / "2", staging)
        (staging / "policy.onnx").write_bytes(b"not a graph")
        broken = staging.rename(base / "3")
        server.wait_for_log(
            r"model m: version 3 at .*/3 failed to load; the versions in service stay"
        )
        assert _served_versions(server.url) == ["2"]
        assert _predict(server.url).json()["predictions"] == _actions(v2)
        status = httpx.get(f"{server.url}/v1/models/m/versions/3").json()
        (entry,) = status["model_version_status"]
        assert (
            entry["state"] == "END" and "changed or truncated" in entry["status"]["error_message"]
        )
        metrics = httpx.get(f"{server.url}/metrics").text
        assert 'policy_serving_version_load_failures_total{model="m"} 1.0' in metrics

        # Fixed in place (a new folder by rename), it loads.
        shutil.rmtree(broken)
        publish(v1, base, 3)
        wait_until(lambda: _served_versions(server.url) == ["3"])
        assert _predict(server.url).json()["predictions"] == _actions(v1)
        # A removed version stops being served; the remaining highest takes over.
        shutil.rmtree(base / "3")
        wait_until(lambda: _served_versions(server.url) == ["2"])
        assert _predict(server.url, path="/versions/3").status_code == 404
    assert server.process.returncode == 0


def test_version_policies_and_labels_on_the_command_line(tmp_path):
    base = tmp_path / "base"
    for version in (1, 2, 3):
        publish(cr.bundle("greedy_q"), base, version)
    args = ["--model", f"a={base}", "--model", f"b={base}", "--model", f"c={base}"]
    args += ["--versions", "a=latest:2", "--versions", "b=specific:1,3", "--versions", "c=all"]
    args += ["--label", "b:old=1", "--label", "live=3", "--poll-seconds", "0"]
    with ServerProcess(*args) as server:
        assert _served_versions(server.url, "a") == ["2", "3"]
        assert _served_versions(server.url, "b") == ["1", "3"]
        assert _served_versions(server.url, "c") == ["1", "2", "3"]
        old = httpx.get(f"{server.url}/v1/models/b/labels/old").json()
        assert old["model_version_status"][0]["version"] == "1"
        for model in "abc":
            live = httpx.get(f"{server.url}/v1/models/{model}/labels/live").json()
            assert live["model_version_status"][0]["version"] == "3"
        assert httpx.get(f"{server.url}/v1/models/a/labels/old").status_code == 404


def test_a_single_bundle_that_cannot_load_is_an_error(tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(cr.bundle("greedy_q"), broken)
    (broken / "policy.onnx").write_bytes(b"x")
    with pytest.raises(RuntimeError, match="model broken: cannot serve .*changed or truncated"):
        ServerProcess(str(broken), timeout=60)
    with pytest.raises(RuntimeError, match="is neither a bundle nor a base path"):
        ServerProcess(str(tmp_path / "missing"), timeout=60)


def test_sigterm_finishes_requests_in_flight_and_exits_0(tmp_path):
    """A request waiting in a long batch window when SIGTERM comes is still answered."""
    bundle = cr.bundle("greedy_q")
    server = ServerProcess(str(bundle), "--name", "m", "--batch-window-us", "1500000")
    results = {}

    def slow_request():
        results["response"] = _predict(server.url)

    thread = threading.Thread(target=slow_request)
    thread.start()
    time.sleep(0.5)  # the request waits in the batcher
    started = time.monotonic()
    code = server.stop(timeout=10)
    elapsed = time.monotonic() - started
    thread.join(10)
    assert code == 0, server.log
    assert elapsed < 5.0, elapsed
    response = results["response"]
    assert response.status_code == 200
    assert response.json()["predictions"] == _actions(bundle)
    assert "stopped after 1 requests" in server.log
    with pytest.raises(httpx.ConnectError):
        _predict(server.url)


def test_sigterm_finishes_grpc_calls_in_flight_and_exits_0():
    """A gRPC call waiting in a long batch window (its gRPC thread leads the batch) and
    a REST request that joined it when SIGTERM comes are still answered; new calls are
    refused."""
    import grpc
    import tritonclient.grpc as tgrpc
    from tritonclient.utils import InferenceServerException

    bundle = cr.bundle("greedy_q")
    args = ["--name", "m", "--batch-window-us", "1500000", "--grpc-port", "0"]
    server = ServerProcess(str(bundle), *args)
    client = tgrpc.InferenceServerClient(server.grpc)
    item = tgrpc.InferInput("observation", list(OBSERVATIONS.shape), "FP32")
    item.set_data_from_numpy(OBSERVATIONS)
    results = {}

    def slow_call():
        results["result"] = client.infer("m", [item])

    def slow_request():
        results["response"] = _predict(server.url)

    thread = threading.Thread(target=slow_call)
    thread.start()
    time.sleep(0.3)  # the call leads the batch and waits its window
    rest = threading.Thread(target=slow_request)
    rest.start()
    time.sleep(0.3)  # the REST request joined it
    started = time.monotonic()
    code = server.stop(timeout=10)
    elapsed = time.monotonic() - started
    thread.join(10)
    rest.join(10)
    assert code == 0, server.log
    assert elapsed < 5.0, elapsed
    assert results["result"].as_numpy("action").tolist() == _actions(bundle)
    assert results["response"].json()["predictions"] == _actions(bundle)
    with pytest.raises(InferenceServerException) as e:
        client.infer("m", [item], client_timeout=5)
    assert e.value.status() == f"StatusCode.{grpc.StatusCode.UNAVAILABLE.name}"
    client.close()


def test_batching_merges_concurrent_requests_and_answers_each_its_rows(tmp_path):
    v1 = cr.bundle("greedy_q")
    rng = np.random.default_rng(8)
    observations = rng.normal(size=(16, 3, 4)).astype(np.float32)
    policy = runtimes.load_policy(v1, "onnx")
    mid = TimeStep(np.ones(3, np.int32), np.zeros(3, np.float32), np.ones(3, np.float32), None)
    expected = [policy.action(mid._replace(observation=o)).action.tolist() for o in observations]
    with ServerProcess(str(v1), "--name", "m", "--batch-window-us", "2000") as server:
        answers: dict[int, list] = {}

        def client(i: int) -> None:
            with httpx.Client(base_url=server.url) as c:
                for _ in range(20):
                    body = {"instances": observations[i].tolist()}
                    answer = c.post("/v1/models/m:predict", content=json.dumps(body)).json()
                    assert answer["predictions"] == expected[i]
                answers[i] = answer["predictions"]

        threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert sorted(answers) == list(range(16))
        metrics = httpx.get(f"{server.url}/metrics").text
    count = float(metrics.split('policy_serving_batch_rows_count{model="m"} ')[1].split()[0])
    rows = float(metrics.split('policy_serving_batch_rows_sum{model="m"} ')[1].split()[0])
    assert rows == 16 * 20 * 3
    assert count < 16 * 20, "no two requests were ever merged"


@pytest.mark.slow
def test_load_with_a_new_version_then_sigterm_loses_no_request(tmp_path):
    """8 keep-alive clients; a new version is published mid-way, then SIGTERM: every
    request the server took is answered correctly (by the old or the new version), the
    server's count matches the clients', and the rest are refused, never half-served."""
    clients, per_client = 8, 1500
    base = tmp_path / "base"
    v1, v2 = cr.bundle("greedy_q"), bundles.greedy_q_v2()
    publish(v1, base, 1)
    allowed = {"v1": _actions(v1), "v2": _actions(v2)}
    assert allowed["v1"] != allowed["v2"]
    body = json.dumps({"instances": OBSERVATIONS.tolist()})
    server = ServerProcess(str(base), "--name", "m", "--poll-seconds", "0.05")
    lock = threading.Lock()
    answered = {"v1": 0, "v2": 0}
    bad: list = []
    refused: list = []
    sigterm_at: list[float] = []

    def client() -> None:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            for _ in range(per_client):
                try:
                    response = c.post("/v1/models/m:predict", content=body)
                except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError) as e:
                    refused.append((time.monotonic(), type(e).__name__))
                    return
                version = next(
                    (
                        k
                        for k, v in allowed.items()
                        if response.status_code == 200 and response.json()["predictions"] == v
                    ),
                    None,
                )
                with lock:
                    if version is None:
                        bad.append((response.status_code, response.text[:200]))
                    else:
                        answered[version] += 1

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    total = clients * per_client
    wait_until(lambda: sum(answered.values()) >= total // 3, timeout=120)
    publish(v2, base, 2)
    wait_until(lambda: answered["v2"] > 0, timeout=60)
    wait_until(lambda: sum(answered.values()) >= 2 * total // 3, timeout=120)
    sigterm_at.append(time.monotonic())
    code = server.stop(timeout=10)
    stopped_in = time.monotonic() - sigterm_at[0]
    for t in threads:
        t.join(60)
    assert code == 0, server.log
    assert stopped_in < 5.0, stopped_in
    assert not bad, bad[:3]
    assert answered["v1"] > 0 and answered["v2"] > 0, answered
    assert all(when >= sigterm_at[0] for when, _ in refused), refused[:3]
    served = int(server.wait_for_log(r"stopped after (\d+) requests").group(1))
    assert served == answered["v1"] + answered["v2"], (served, answered)
    assert sum(answered.values()) < total  # the SIGTERM really came mid-way
