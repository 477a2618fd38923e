"""``policy-toolkit serve`` over real HTTP: every signature, TF Serving's documented
examples, versions and labels, bad requests and metrics.

One server process (TensorFlow blocked) serves every model of this module on
127.0.0.1 at a free port; each comparison test has models of its own, so the order of
requests for one model is the test's and seeded sampling reproduces in-process.
"""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest

import runtimes
from runtimes.serving.publish import publish
from tests.contract import cases_runtime as cr
from tests.contract.case import sample_time_step
from tests.runtimes.serving import bundles
from tests.runtimes.serving.server_process import ServerProcess
from toolkit import nest
from toolkit.trajectories.time_step import StepType, TimeStep

KINDS = ["greedy_q", "rnn/actor_distribution", "actor/categorical_normal", "q/dict_obs"]
FORMATS = ["rows", "columns"]
SEED = 5


def _model(kind: str, fmt: str) -> str:
    return f"{kind.replace('/', '-')}-{fmt}"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("serving") / "versions"
    publish(cr.bundle("greedy_q"), base, 1)
    publish(bundles.greedy_q_v2(), base, 2)
    args = ["--seed", str(SEED), "--poll-seconds", "0", "--max-batch", "64"]
    args += ["--max-body-bytes", "65536"]
    for kind in KINDS:
        for fmt in FORMATS:
            args += ["--model", f"{_model(kind, fmt)}={cr.bundle(kind)}"]
    args += ["--model", f"versions={base}", "--versions", "versions=all"]
    args += ["--label", "versions:stable=1", "--label", "versions:canary=2"]
    args += ["--model", f"latest={base}"]
    with ServerProcess(*args) as process, httpx.Client(base_url=process.url) as client:
        process.client = client
        yield process


# --- helpers ------------------------------------------------------------------------------


def _flat(tree, prefix=""):
    return {k: np.asarray(v) for k, v in nest.flatten_with_paths(tree, prefix)}


def _request(signature: str, inputs: dict[str, np.ndarray], fmt: str) -> dict:
    body: dict = {"signature_name": signature}
    if fmt == "columns":
        body["inputs"] = {k: v.tolist() for k, v in inputs.items()}
    else:
        batch = len(next(iter(inputs.values())))
        body["instances"] = [{k: v[i].tolist() for k, v in inputs.items()} for i in range(batch)]
    return body


def _columns(answer: dict, fmt: str, names: list[str]) -> dict[str, np.ndarray]:
    """An answer (rows or columns, one output unnamed) -> {name: array}."""
    if fmt == "columns":
        out = answer["outputs"]
        return (
            {names[0]: np.asarray(out)}
            if len(names) == 1
            else {k: np.asarray(v) for k, v in out.items()}
        )
    rows = answer["predictions"]
    if len(names) == 1:
        return {names[0]: np.asarray(rows)}
    return {k: np.asarray([row[k] for row in rows]) for k in rows[0]}


def _predict(server, model: str, body: dict, path: str = "") -> httpx.Response:
    return server.client.post(f"/v1/models/{model}{path}:predict", content=json.dumps(body))


def _assert_outputs(got: dict[str, np.ndarray], expected: dict[str, np.ndarray], what: str):
    assert sorted(got) == sorted(expected), what
    for name, value in expected.items():
        value = np.asarray(value)
        np.testing.assert_allclose(
            got[name].astype(value.dtype), value, rtol=1e-6, atol=1e-6, err_msg=f"{what}: {name}"
        )


# --- every signature, both formats, against the same policy in this process ---------------


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("kind", KINDS)
def test_every_signature_answers_as_the_policy_in_process(server, kind, fmt):
    model = _model(kind, fmt)
    policy = runtimes.load_policy(cr.bundle(kind), "onnx", seed=SEED)
    rng = np.random.default_rng(0)
    time_step = sample_time_step(policy.time_step_spec, (3,), rng)
    state = policy.get_initial_state(3)
    if policy.is_stateful:  # a state that is not all zeros
        state = policy.action(time_step, state, seed=1).state

    def call(signature, inputs, names):
        response = _predict(server, model, _request(signature, inputs, fmt))
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/json"
        return _columns(response.json(), fmt, names)

    # action: the whole time step and state in.
    inputs = {**_flat(time_step), **_flat(state, "policy_state")}
    step = policy.action(time_step, state)
    expected = {**_flat(step.action, "action"), **_flat(step.info, "info")}
    if policy.is_stateful:
        expected.update(_flat(step.state, "next_state"))
    _assert_outputs(call("action", inputs, list(expected)), expected, f"{model} action")

    # serving_default: the observation (and step type and state): MID, reward 0, discount 1.
    observation = _flat(time_step.observation, "observation")
    inputs = dict(observation)
    mid = TimeStep(
        np.full(3, StepType.MID, np.int32),
        np.zeros(3, np.float32),
        np.ones(3, np.float32),
        time_step.observation,
    )
    if policy.is_stateful:
        inputs.update(_flat(state, "policy_state"))
    step = policy.action(mid, state)
    expected = _flat(step.action, "action")
    if policy.is_stateful:
        expected.update(_flat(step.state, "next_state"))
    _assert_outputs(call("serving_default", inputs, list(expected)), expected, f"{model} default")

    # distribution: the parameters, next state and the graph's info.
    inputs = {**_flat(time_step), **_flat(state, "policy_state")}
    params = policy.distribution_params(time_step, state)
    expected = {}
    for path, dist in nest.flatten_with_paths(params.action, "distribution"):
        for name in ("loc", "scale", "logits", "low", "high"):
            if hasattr(dist, name):
                expected[f"{path}/{name}"] = np.asarray(getattr(dist, name))
    if policy.is_stateful:
        expected.update(_flat(params.state, "next_state"))
    graph_info = {k: v for k, v in _flat(params.info, "info").items() if "log_probability" not in k}
    expected.update(graph_info)
    _assert_outputs(call("distribution", inputs, list(expected)), expected, f"{model} distribution")

    # get_initial_state: the batch size in, one row of state per entry out.
    size = {"batch_size": np.asarray(2)}
    body = {"signature_name": "get_initial_state"}
    body.update({"inputs": {"batch_size": 2}} if fmt == "columns" else {"instances": [2]})
    response = _predict(server, model, body)
    assert response.status_code == 200, response.text
    expected = _flat(policy.get_initial_state(2), "policy_state")
    if expected:
        _assert_outputs(_columns(response.json(), fmt, list(expected)), expected, "initial state")
    del size

    # get_train_step and get_metadata take nothing.
    for signature, value in (
        ("get_train_step", 7),
        ("get_metadata", json.dumps(policy.metadata, sort_keys=True)),
    ):
        body = {"signature_name": signature}
        if fmt == "rows":
            body["instances"] = [{}]
        answer = _predict(server, model, body).json()
        assert answer == ({"predictions": [value]} if fmt == "rows" else {"outputs": value})


# Beside the served kinds: a sampled epsilon-greedy (the deriver's draws, log
# probabilities in info) and a stateful mixture (state through the deriver).
FLAT_KINDS = [*KINDS, "epsilon_greedy_q", "mixture/stateful"]


@pytest.mark.parametrize("kind", FLAT_KINDS)
def test_flat_entry_points_act_as_the_nested_ones(kind):
    """What the server runs (flat named arrays, no nests) equals action() and
    distribution_params() on the same inputs, leaf for leaf, with the same seed."""
    policy = runtimes.load_policy(cr.bundle(kind), "onnx")
    time_step = sample_time_step(policy.time_step_spec, (3,), np.random.default_rng(2))
    state = policy.get_initial_state(3)
    if policy.is_stateful:
        state = policy.action(time_step, state, seed=1).state
    inputs = {**_flat(time_step), **_flat(state, "policy_state")}
    assert sorted(inputs) == sorted(policy.input_names)
    step = policy.action(time_step, state, seed=4)
    expected = {**_flat(step.action, "action"), **_flat(step.info, "info")}
    expected.update(_flat(step.state, "next_state"))
    got = policy.action_flat(inputs, seed=4)
    assert sorted(got) == sorted(expected)
    for name, value in expected.items():
        assert got[name].dtype == value.dtype, name
        np.testing.assert_array_equal(got[name], value, err_msg=name)
    params = policy.distribution_params(time_step, state)
    flat = policy.distribution_params_flat(inputs)
    for path, dist in nest.flatten_with_paths(params.action, "distribution"):
        for name in ("loc", "scale", "logits", "low", "high"):
            if hasattr(dist, name):
                np.testing.assert_array_equal(flat[f"{path}/{name}"], getattr(dist, name))
    for name, value in _flat(params.state, "next_state").items():
        np.testing.assert_array_equal(flat[name], value)


def test_a_recurrent_policy_carries_its_state_across_requests(server):
    """The client sends policy_state/... and gets next_state/...: five steps of one episode."""
    kind = "rnn/actor_distribution"
    model = _model(kind, "rows")
    policy = runtimes.load_policy(cr.bundle(kind), "onnx")
    rng = np.random.default_rng(3)
    spec = policy.time_step_spec.observation
    state_names = [f"policy_state/0/{i}" for i in range(2)]
    remote = {n: np.zeros((1, 5), np.float32) for n in state_names}
    local = policy.get_initial_state(1)
    for t in range(5):
        observation = rng.normal(size=(1, *spec.shape)).astype(np.float32)
        step_type = StepType.FIRST if t == 0 else StepType.MID
        body = {
            "signature_name": "distribution",
            "inputs": {
                "observation": observation.tolist(),
                "step_type": [int(step_type)],
                **{n: v.tolist() for n, v in remote.items()},
            },
        }
        answer = _predict(server, model, body).json()["outputs"]
        time_step = TimeStep(
            np.asarray([step_type], np.int32),
            np.zeros(1, np.float32),
            np.ones(1, np.float32),
            observation,
        )
        params = policy.distribution_params(time_step, local)
        np.testing.assert_allclose(answer["distribution/loc"], params.action.loc, atol=1e-6)
        local = params.state
        remote = {
            f"policy_state/{k.removeprefix('next_state/')}": np.asarray(v, np.float32)
            for k, v in answer.items()
            if k.startswith("next_state/")
        }
        np.testing.assert_allclose(remote["policy_state/0/0"], local[0][0], atol=1e-6)


def test_seeded_sampling_repeats_for_the_same_requests(tmp_path):
    """--seed: a fresh server answering the same requests in the same order samples the
    same actions (and another seed does not)."""
    bundle = cr.bundle("actor/categorical_normal")
    body = {"instances": [[0.1, -0.2, 0.3, 0.5]] * 4}

    def actions(seed):
        with ServerProcess(str(bundle), "--name", "p", "--seed", str(seed)) as process:
            return [
                httpx.post(f"{process.url}/v1/models/p:predict", json=body).json() for _ in range(3)
            ]

    first = actions(11)
    assert first == actions(11)
    assert first != actions(12)


# --- TF Serving's documented request/response examples ---------------------------------------


def test_model_status_as_documented(server):
    entry = {"state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
    response = server.client.get("/v1/models/versions")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "model_version_status": [{"version": "1", **entry}, {"version": "2", **entry}]
    }
    for path, version in (("/versions/1", "1"), ("/labels/stable", "1"), ("/labels/canary", "2")):
        response = server.client.get(f"/v1/models/versions{path}")
        assert response.json() == {"model_version_status": [{"version": version, **entry}]}
    # The default policy serves the latest version only.
    latest = server.client.get("/v1/models/latest").json()
    assert latest == {"model_version_status": [{"version": "2", **entry}]}


def test_model_metadata_as_documented(server):
    answer = server.client.get("/v1/models/versions/metadata").json()
    assert answer["model_spec"] == {"name": "versions", "signature_name": "", "version": "2"}
    signatures = answer["metadata"]["signature_def"]["signature_def"]
    assert sorted(signatures) == [
        "action",
        "distribution",
        "get_initial_state",
        "get_metadata",
        "get_train_step",
        "serving_default",
    ]
    default = signatures["serving_default"]
    assert default["method_name"] == "tensorflow/serving/predict"
    assert default["inputs"]["observation"]["dtype"] == "DT_FLOAT"
    assert default["inputs"]["observation"]["tensor_shape"] == {
        "dim": [{"size": "-1", "name": ""}, {"size": "4", "name": ""}],
        "unknown_rank": False,
    }
    assert default["outputs"]["action"]["dtype"] == "DT_INT32"
    assert sorted(signatures["action"]["inputs"]) == [
        "discount",
        "observation",
        "reward",
        "step_type",
    ]
    old = server.client.get("/v1/models/versions/versions/1/metadata").json()
    assert old["model_spec"]["version"] == "1"
    labelled = server.client.get("/v1/models/versions/labels/canary/metadata").json()
    assert labelled["model_spec"]["version"] == "2"


def test_predict_as_documented(server):
    """The half_plus_three example's shapes: row in, predictions out; columnar in, outputs."""
    v1 = runtimes.load_policy(cr.bundle("greedy_q"), "onnx")
    v2 = runtimes.load_policy(bundles.greedy_q_v2(), "onnx")
    observations = np.random.default_rng(4).normal(size=(5, 4)).astype(np.float32)
    rows = {"instances": observations.tolist()}
    mid = TimeStep(np.ones(5, np.int32), np.zeros(5, np.float32), np.ones(5, np.float32), None)

    def act(policy):
        return policy.action(mid._replace(observation=observations)).action.tolist()

    assert act(v1) != act(v2), "the two versions must act differently for this test"
    response = _predict(server, "versions", rows)
    assert response.json() == {"predictions": act(v2)}
    assert _predict(server, "versions", rows, "/versions/1").json() == {"predictions": act(v1)}
    assert _predict(server, "versions", rows, "/labels/stable").json() == {"predictions": act(v1)}
    columns = {"signature_name": "serving_default", "inputs": observations.tolist()}
    assert _predict(server, "versions", columns, "/versions/2").json() == {"outputs": act(v2)}
    # TF Serving's documented 404, word for word.
    response = server.client.post(
        "/v1/models/half:predict", content=json.dumps({"instances": [1.0, 5.0]})
    )
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"error": "Servable not found for request: Latest(half)"}


# --- bad requests ----------------------------------------------------------------------------

_OBS = [[0.1, 0.2, 0.3, 0.4]]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "message"),
    [
        ("GET", "/v1/models/versions:predict", None, 400, "Malformed request: GET"),
        ("GET", "/v1/models", None, 400, "Missing model name in request."),
        ("POST", "/v1/models/versions/versions/HELLO:predict", "{}", 400, "Malformed request"),
        ("POST", "/v1/models/versions/version/1:predict", "{}", 400, "Malformed request"),
        (
            "POST",
            f"/v1/models/versions/versions/{2**64 - 1}:predict",
            "{}",
            400,
            "Failed to convert version",
        ),
        ("POST", "/v1/models/versions:predict", "", 400, "JSON Parse error: The document is empty"),
        ("POST", "/v1/models/versions:predict", "instances = [1, 2]", 400, "JSON Parse error"),
        ("POST", "/v1/models/versions:predict", "[1, 2]", 400, "Is not object"),
        ("POST", "/v1/models/versions:predict", '{"x": 1}', 400, "Missing 'inputs' or 'instances'"),
        (
            "POST",
            "/v1/models/versions:predict",
            json.dumps({"instances": _OBS, "inputs": _OBS}),
            400,
            "expecting only one of 'inputs' or 'instances'",
        ),
        ("POST", "/v1/models/versions:predict", '{"instances": 3}', 400, "to be an list/array"),
        ("POST", "/v1/models/versions:predict", '{"instances": []}', 400, "No values in"),
        (
            "POST",
            "/v1/models/versions:predict",
            json.dumps({"instances": [[1.0, 2.0]]}),
            400,
            "observation: expected shape [B, 4], got [1, 2]",
        ),
        (
            "POST",
            "/v1/models/versions:predict",
            json.dumps({"instances": [["a", "b", "c", "d"]]}),
            400,
            "observation: expected float32 values, got strings",
        ),
        (
            "POST",
            "/v1/models/versions:predict",
            json.dumps({"instances": [[1, 2, 3, 4], [1, 2]]}),
            400,
            "observation: expected a nested list of numbers of shape [B, 4], got a ragged",
        ),
        (
            "POST",
            "/v1/models/versions:predict",
            json.dumps({"signature_name": "nope", "instances": _OBS}),
            400,
            'Serving signature name: "nope" not found in signature def',
        ),
        (
            "POST",
            "/v1/models/versions:predict",
            json.dumps({"signature_name": "action", "inputs": {"step_type": [1]}}),
            400,
            "Missing named input: observation",
        ),
        (
            "POST",
            "/v1/models/versions:predict",
            json.dumps({"signature_name": "action", "inputs": {"observation": _OBS, "x": [1]}}),
            400,
            "x: not an input of signature 'action'",
        ),
        (
            "POST",
            "/v1/models/versions:predict",
            json.dumps(
                {"signature_name": "action", "inputs": {"observation": _OBS, "step_type": [1.5]}}
            ),
            400,
            "step_type: expected int32 values, got decimals",
        ),
        (
            "POST",
            "/v1/models/versions:predict",
            json.dumps(
                {"signature_name": "action", "inputs": {"observation": _OBS, "step_type": [1, 1]}}
            ),
            400,
            "step_type: expected a batch of 1 (as observation), got 2",
        ),
        (
            "POST",
            "/v1/models/versions:predict",
            json.dumps({"signature_name": "action", "instances": [{"observation": _OBS[0]}, {}]}),
            400,
            "Failed to process element: 1 of 'instances' list",
        ),
        (
            "POST",
            "/v1/models/versions:predict",
            json.dumps({"instances": _OBS * 65}),
            400,
            "instances: expected at most 64 (the server's --max-batch), got 65",
        ),
        (
            "POST",
            "/v1/models/versions:predict",
            json.dumps({"signature_name": "get_initial_state", "inputs": {"batch_size": 65}}),
            400,
            "batch_size: expected 0 to 64",
        ),
        ("POST", "/v1/models/versions/versions/9:predict", "{}", 404, "Specific(versions, 9)"),
        ("POST", "/v1/models/versions/labels/beta:predict", "{}", 404, "Unrecognized servable"),
        ("GET", "/v1/models/versions/versions/9", None, 404, "Could not find version 9"),
        ("GET", "/v1/models/nope/metadata", None, 404, "Servable not found"),
        ("POST", "/v1/models/versions:regress", "{}", 501, "regress: not supported"),
        ("GET", "/elsewhere", None, 404, "Malformed request: GET /elsewhere"),
    ],
)
def test_bad_requests_are_answered_with_errors(server, method, path, body, status, message):
    response = server.client.request(method, path, content=body)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert set(response.json()) == {"error"}
    assert message in response.json()["error"]


def test_recurrent_bad_state_is_named(server):
    body = {
        "inputs": {"observation": _OBS, "policy_state/0/0": [[0.0] * 5]},
    }
    response = _predict(server, _model("rnn/actor_distribution", "columns"), body)
    assert response.status_code == 400
    assert "policy_state: expected all of" in response.json()["error"]
    assert "missing ['policy_state/0/1']" in response.json()["error"]


def test_a_body_over_the_limit_is_refused_with_413(server):
    big = json.dumps({"instances": [[0.123456789] * 4] * 3000})  # about 100 KB
    assert len(big) > 65536
    response = server.client.post("/v1/models/versions:predict", content=big)
    assert response.status_code == 413
    assert "request body: expected at most 65536 bytes" in response.json()["error"]

    def chunks():  # no Content-Length: the limit holds while reading
        for i in range(0, len(big), 8192):
            yield big[i : i + 8192].encode()

    response = server.client.post("/v1/models/versions:predict", content=chunks())
    assert response.status_code == 413
    # The connection still serves.
    assert server.client.get("/v1/models/versions").status_code == 200


def test_metrics_in_prometheus_text_format(server):
    server.client.get("/v1/models/versions")
    _predict(server, "versions", {"instances": _OBS})
    _predict(server, "nope", {"instances": _OBS})
    response = server.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    # Requests are counted by protocol too (labels print sorted).
    rest = 'protocol="tfserving_rest"'
    ok = f'policy_serving_requests_total{{api="predict",code="200",model="versions",{rest}}}'
    assert samples[ok] >= 1
    missing = (
        f'policy_serving_request_errors_total{{api="predict",code="404",model="_unknown",{rest}}}'
    )
    assert samples[missing] >= 1
    assert samples['policy_serving_model_versions{model="versions"}'] == 2
    assert samples['policy_serving_model_train_step{model="versions",version="1"}'] == 7
    assert samples['policy_serving_model_train_step{model="versions",version="2"}'] == 8
    count = f'policy_serving_request_latency_seconds_count{{api="predict",model="versions",{rest}}}'
    assert samples[count] >= 1
    bucket = (
        "policy_serving_request_latency_seconds_bucket"
        f'{{api="predict",le="+Inf",model="versions",{rest}}}'
    )
    assert samples[bucket] == samples[count]


def test_connection_close_and_chunked_bodies_are_answered(server):
    body = json.dumps({"instances": _OBS}).encode()
    closing = httpx.post(
        f"{server.url}/v1/models/versions:predict",
        content=body,
        headers={"Connection": "close"},
    )
    assert closing.status_code == 200
    assert closing.headers["connection"] == "close"

    def chunks():
        yield body[:7]
        yield body[7:]

    chunked = server.client.post("/v1/models/versions:predict", content=chunks())
    assert chunked.status_code == 200
    assert chunked.json() == closing.json()
