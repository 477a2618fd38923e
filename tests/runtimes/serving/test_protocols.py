"""KServe v2 (REST and gRPC) and TF Serving's gRPC API, driven by their real clients.

One server process (TensorFlow blocked; ``--grpc-port 0``) serves every model of this
module. Clients: ``tritonclient.http`` (binary tensors on, as by default, and JSON),
``tritonclient.grpc``, TF Serving's own ``PredictionService``/``ModelService`` stubs
(tensorflow-serving-api: they import TensorFlow, which this test process has) and a
plain grpcio call for the health probe. Each comparison has models of its own, so the
order of requests for one model is the test's and seeded sampling reproduces in-process.
"""

from __future__ import annotations

import threading
import types

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from tritonclient.utils import InferenceServerException

import runtimes
from runtimes.serving.publish import publish
from tests.contract import cases_runtime as cr
from tests.contract.case import sample_time_step
from tests.runtimes.serving import bundles
from tests.runtimes.serving.server_process import ServerProcess
from toolkit import nest
from toolkit.specs import array_spec
from toolkit.trajectories.time_step import StepType, TimeStep

SEED = 11
KINDS = ["greedy_q", "actor/categorical_normal", "rnn/actor_distribution"]
CLIENTS = ["v2_rest_binary", "v2_rest_json", "v2_grpc", "tfs_grpc"]
SEQUENCE_KIND = "rnn/greedy_q"
MAX_SEQUENCES = 9


def _model(kind: str, client: str) -> str:
    return f"{kind.replace('/', '-')}-{client}"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("protocols") / "versions"
    publish(cr.bundle("greedy_q"), base, 1)
    publish(bundles.greedy_q_v2(), base, 2)
    args = ["--model", f"versions={base}", "--versions", "versions=all"]
    args += ["--label", "versions:stable=1", "--label", "versions:canary=2"]
    args += ["--seed", str(SEED), "--poll-seconds", "0", "--max-batch", "64"]
    args += ["--max-body-bytes", "65536", "--grpc-port", "0"]
    args += ["--max-sequences", str(MAX_SEQUENCES)]
    # Request batching on: every protocol's requests go through it (one client waiting
    # for each answer gets the same actions as without; 8 threads' sequences merge).
    args += ["--batch-window-us", "0"]
    for kind in KINDS:
        for client in CLIENTS:
            args += ["--model", f"{_model(kind, client)}={cr.bundle(kind)}"]
    for kind in KINDS:
        args += ["--model", f"{_model(kind, 'plain')}={cr.bundle(kind)}"]
    args += ["--model", f"seq={cr.bundle(SEQUENCE_KIND)}"]
    args += ["--model", f"greedy={cr.bundle('greedy_q')}"]
    args += ["--model", f"rnn={cr.bundle('rnn/actor_distribution')}"]
    with ServerProcess(*args) as process:
        assert process.grpc, process.log
        process.http = thttp.InferenceServerClient(process.url.removeprefix("http://"))
        process.grpc_client = tgrpc.InferenceServerClient(process.grpc)
        process.channel = grpc.insecure_channel(process.grpc)
        yield process
        process.channel.close()
        # SIGTERM drains every protocol and exits 0.
        assert process.stop() == 0, process.log
        assert "stopped after" in process.log


# --- the four clients, one call each ------------------------------------------------------


def _v2_inputs(module, inputs: dict[str, np.ndarray], binary: bool | None = None) -> list:
    out = []
    for name, value in inputs.items():
        value = np.asarray(value)
        item = module.InferInput(name, list(value.shape), _datatype(value.dtype))
        if binary is None:
            item.set_data_from_numpy(value)
        else:
            item.set_data_from_numpy(value, binary_data=binary)
        out.append(item)
    return out


def _datatype(dtype) -> str:
    from tritonclient.utils import np_to_triton_dtype

    return np_to_triton_dtype(np.dtype(dtype))


def _call(server, client, model, inputs, signature="serving_default", params=None, names=None):
    """One request through ``client``; the outputs by name."""
    params = dict(params or {})
    if signature != "serving_default":
        params["signature_name"] = signature
    if client.startswith("v2_"):
        sequence = {k: params.pop(k) for k in list(params) if k.startswith("sequence_")}
        kwargs = {
            "parameters": params or None,
            "sequence_id": sequence.get("sequence_id", 0),
            "sequence_start": sequence.get("sequence_start", False),
            "sequence_end": sequence.get("sequence_end", False),
        }
        if client == "v2_grpc":
            result = server.grpc_client.infer(model, _v2_inputs(tgrpc, inputs), **kwargs)
        else:
            binary = client == "v2_rest_binary"
            outputs = None
            if not binary:
                outputs = [thttp.InferRequestedOutput(n, binary_data=False) for n in names]
            result = server.http.infer(
                model, _v2_inputs(thttp, inputs, binary), outputs=outputs, **kwargs
            )
        response = result.get_response()
        if not isinstance(response, dict):
            response = {"outputs": [{"name": o.name} for o in response.outputs]}
        return {o["name"]: result.as_numpy(o["name"]) for o in response["outputs"]}
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(np.asarray(value)))
    stub = prediction_service_pb2_grpc.PredictionServiceStub(server.channel)
    response = stub.Predict(request, timeout=30)
    return {k: tf.make_ndarray(v) for k, v in response.outputs.items()}


def _flat(tree, prefix=""):
    return {k: np.asarray(v) for k, v in nest.flatten_with_paths(tree, prefix)}


def _assert_outputs(got, expected, what):
    assert sorted(got) == sorted(expected), what
    for name, value in expected.items():
        np.testing.assert_allclose(
            np.asarray(got[name]).astype(value.dtype),
            value,
            rtol=1e-6,
            atol=1e-6,
            err_msg=f"{what}: {name}",
        )


# --- actions equal the in-process policy's, per request, on every protocol ---------------


@pytest.mark.parametrize("kind", KINDS)
def test_plain_v2_grpc_requests_equal_the_policy_in_process(server, kind):
    # tritonclient's plain requests (raw tensors, no parameters) of one layout take the
    # server's planned path from the second on; each answer must still be the policy's,
    # its id the request's, and the data's size checked on every request.
    model = _model(kind, "plain")
    policy = runtimes.load_policy(cr.bundle(kind), "onnx", seed=SEED)
    recurrent = bool(_flat(policy.policy_state_spec))
    rng = np.random.default_rng(5)
    state = policy.get_initial_state(2)
    for step in range(4):
        time_step = sample_time_step(policy.time_step_spec, (2,), rng)
        # serving_default's defaults: reward 0, discount 1, step type MID unless sent
        time_step = time_step._replace(
            reward=np.zeros_like(time_step.reward), discount=np.ones_like(time_step.discount)
        )
        if not recurrent:
            time_step = time_step._replace(step_type=np.full_like(time_step.step_type, 1))
        inputs = _flat(time_step.observation, "observation")
        if recurrent:
            inputs.update(step_type=np.asarray(time_step.step_type))
            inputs.update(_flat(state, "policy_state"))
        expected = policy.action(time_step, state)
        result = server.grpc_client.infer(model, _v2_inputs(tgrpc, inputs), request_id=f"r{step}")
        assert result.get_response().id == f"r{step}"
        want = {**_flat(expected.action, "action"), **_flat(expected.state, "next_state")}
        got = {name: result.as_numpy(name) for name in want}
        _assert_outputs(got, want, f"{model} step {step}")
        state = expected.state
    # The same layout with 4 bytes short: refused, naming the input; then served again.
    request = tgrpc.service_pb2.ModelInferRequest(model_name=model)
    for name, value in inputs.items():
        value = np.ascontiguousarray(value)
        request.inputs.add(name=name, datatype=_datatype(value.dtype), shape=value.shape)
        request.raw_input_contents.append(value.tobytes())
    first = request.inputs[0].name
    request.raw_input_contents[0] = request.raw_input_contents[0][:-4]
    stub = tgrpc.service_pb2_grpc.GRPCInferenceServiceStub(server.channel)
    with pytest.raises(grpc.RpcError) as e:
        stub.ModelInfer(request)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details().startswith(f"{first}: expected "), e.value.details()
    assert "bytes" in e.value.details()
    request.raw_input_contents[0] = np.ascontiguousarray(inputs[first]).tobytes()
    assert stub.ModelInfer(request).raw_output_contents


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("kind", KINDS)
def test_actions_equal_the_policy_in_process(server, kind, client):
    model = _model(kind, client)
    policy = runtimes.load_policy(cr.bundle(kind), "onnx", seed=SEED)
    rng = np.random.default_rng(3)
    state = policy.get_initial_state(2)
    for step in range(3):
        time_step = sample_time_step(policy.time_step_spec, (2,), rng)
        inputs = {**_flat(time_step), **_flat(state, "policy_state")}
        expected = policy.action(time_step, state)
        names = sorted(_flat(expected.action, "action")) + sorted(
            _flat(expected.state, "next_state")
        )
        names += sorted(_flat(expected.info, "info"))
        got = _call(server, client, model, inputs, "action", names=names)
        want = {
            **_flat(expected.action, "action"),
            **_flat(expected.state, "next_state"),
            **_flat(expected.info, "info"),
        }
        _assert_outputs(got, want, f"{model} step {step}")
        state = expected.state


def test_v2_health_and_metadata_over_rest_and_grpc(server):
    for client in (server.http, server.grpc_client):
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("greedy") and not client.is_model_ready("nope")
        assert not client.is_model_ready("greedy", "7")
    meta = server.http.get_server_metadata()
    assert meta["name"] == "policy-toolkit" and "binary_tensor_data" in meta["extensions"]
    policy = runtimes.load_policy(cr.bundle("greedy_q"), "onnx")
    model = server.http.get_model_metadata("greedy")
    assert model["versions"] == ["1"]
    obs_shape = [-1, *policy.time_step_spec.observation.shape]
    assert model["inputs"] == [{"name": "observation", "datatype": "FP32", "shape": obs_shape}]
    grpc_meta = server.grpc_client.get_model_metadata("greedy", as_json=True)
    assert grpc_meta["inputs"][0]["name"] == "observation"
    assert [int(d) for d in grpc_meta["inputs"][0]["shape"]] == obs_shape
    # A plain grpcio probe (what a Kubernetes gRPC probe script does), no client library.
    live = server.channel.unary_unary(
        "/inference.GRPCInferenceService/ServerLive",
        request_serializer=lambda _: b"",
        response_deserializer=lambda raw: raw,
    )
    assert live(None, timeout=10) == b"\x08\x01"  # ServerLiveResponse(live=true)


def test_v2_rest_request_id_and_named_outputs(server):
    obs = np.zeros((1, 4), np.float32)
    result = server.http.infer(
        "greedy",
        _v2_inputs(thttp, {"observation": obs}),
        request_id="req-7",
        outputs=[thttp.InferRequestedOutput("action")],
    )
    response = result.get_response()
    assert response["id"] == "req-7" and response["model_version"] == "1"
    assert [o["name"] for o in response["outputs"]] == ["action"]
    # A plain JSON request, nested data, as curl would send it.
    body = {
        "inputs": [
            {"name": "observation", "shape": [1, 4], "datatype": "FP32", "data": [[0, 0, 0, 0]]}
        ]
    }
    answer = httpx.post(f"{server.url}/v2/models/greedy/infer", json=body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"][0]["data"] == result.as_numpy("action").ravel().tolist()


def test_tf_serving_grpc_metadata_and_status(server):
    from tensorflow_serving.apis import (
        get_model_metadata_pb2,
        get_model_status_pb2,
        model_service_pb2_grpc,
        prediction_service_pb2_grpc,
    )

    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = "greedy"
    request.metadata_field.append("signature_def")
    stub = prediction_service_pb2_grpc.PredictionServiceStub(server.channel)
    response = stub.GetModelMetadata(request, timeout=30)
    assert response.model_spec.version.value == 1
    signatures = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signatures)
    default = signatures.signature_def["serving_default"]
    assert default.inputs["observation"].dtype == 1  # DT_FLOAT
    assert [d.size for d in default.inputs["observation"].tensor_shape.dim] == [-1, 4]
    assert set(signatures.signature_def) >= {"action", "distribution", "get_initial_state"}
    status_request = get_model_status_pb2.GetModelStatusRequest()
    status_request.model_spec.name = "greedy"
    status = model_service_pb2_grpc.ModelServiceStub(server.channel).GetModelStatus(
        status_request, timeout=30
    )
    [version] = status.model_version_status
    assert version.version == 1 and version.state == 30  # AVAILABLE
    status_request.model_spec.version.value = 5
    with pytest.raises(grpc.RpcError) as e:
        model_service_pb2_grpc.ModelServiceStub(server.channel).GetModelStatus(status_request)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert "Could not find version 5 of model greedy" in e.value.details()


# --- server-held sequences ----------------------------------------------------------------


def _observations(policy, steps: int, seed: int) -> list:
    """An episode's observations (any nest), one per step, each with a batch dim of 1."""
    spec = policy.time_step_spec.observation
    batch = array_spec.sample_spec_nest(spec, np.random.default_rng(seed), (steps, 1))
    leaves = nest.flatten(batch)
    return [nest.pack_sequence_as(spec, [leaf[t] for leaf in leaves]) for t in range(steps)]


def _episode(policy, observations):
    """The actions of one episode run in-process (state carried, FIRST at the start)."""
    state = policy.get_initial_state(1)
    actions = []
    for t, obs in enumerate(observations):
        step = TimeStep(
            np.array([StepType.FIRST if t == 0 else StepType.MID], np.int32),
            np.zeros(1, np.float32),
            np.ones(1, np.float32),
            obs,
        )
        out = policy.action(step, state)
        actions.append(_flat(out.action, "action"))
        state = out.state
    return actions


@pytest.mark.parametrize("client", ["v2_grpc", "v2_rest_binary"])
def test_sequences_from_8_threads_equal_the_episodes_in_process(server, client):
    policy = runtimes.load_policy(cr.bundle(SEQUENCE_KIND), "onnx")
    steps, threads = 6, 8
    episodes = [_observations(policy, steps, 100 + i) for i in range(threads)]
    expected = [_episode(policy, e) for e in episodes]
    got: list[list] = [[] for _ in range(threads)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads)

    def run(i: int) -> None:
        # One client per thread: tritonclient's clients are not to be shared by threads.
        own = types.SimpleNamespace(
            http=thttp.InferenceServerClient(server.url.removeprefix("http://")),
            grpc_client=tgrpc.InferenceServerClient(server.grpc),
        )
        try:
            barrier.wait(30)
            for t in range(steps):
                params = {"sequence_id": 1000 + i + (0 if client == "v2_grpc" else 100)}
                params["sequence_start"] = t == 0
                params["sequence_end"] = t == steps - 1
                out = _call(
                    own,
                    client,
                    "seq",
                    _flat(episodes[i][t], "observation"),
                    params=params,
                    names=["action"],
                )
                got[i].append({k: v for k, v in out.items() if k.startswith("action")})
        except BaseException as e:  # reported below
            errors.append(e)

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    assert not errors, errors
    for i in range(threads):
        for t in range(steps):
            _assert_outputs(got[i][t], expected[i][t], f"sequence {i} step {t}")
    # Every sequence ended: an ended id is unknown again.
    with pytest.raises(InferenceServerException, match="unknown sequence"):
        _call(
            server,
            client,
            "seq",
            _flat(episodes[0][0], "observation"),
            params={"sequence_id": 1000 if client == "v2_grpc" else 1100},
            names=["action"],
        )


# --- bad input: the protocol's error, and the server keeps serving ------------------------


BAD = {
    "wrong shape": (
        {"observation": np.zeros((1, 5), np.float32)},
        {},
        "greedy",
        "observation: expected shape [B, 4], got [1, 5]",
        400,
        "INVALID_ARGUMENT",
    ),
    "wrong dtype": (
        {"observation": np.zeros((1, 4), np.float64)},
        {},
        "greedy",
        "expecting FP32",
        400,
        "INVALID_ARGUMENT",
    ),
    "unknown input": (
        {"obs": np.zeros((1, 4), np.float32)},
        {},
        "greedy",
        "unexpected inference input 'obs'",
        400,
        "INVALID_ARGUMENT",
    ),
    "unknown model": (
        {"observation": np.zeros((1, 4), np.float32)},
        {},
        "nope",
        "nope",
        404,
        "NOT_FOUND",
    ),
    "oversized": (
        {"observation": np.zeros((64, 400), np.float32)},
        {},
        "greedy",
        "",
        413,
        "RESOURCE_EXHAUSTED",
    ),
    "unknown sequence": (
        {"observation": np.zeros((1, 4), np.float32)},
        {"sequence_id": 77},
        "rnn",
        "unknown sequence",
        404,
        "NOT_FOUND",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
@pytest.mark.parametrize("client", ["v2_rest_binary", "v2_grpc"])
def test_bad_requests_get_the_protocols_error(server, client, case):
    inputs, params, model, text, status, code = BAD[case]
    with pytest.raises(InferenceServerException) as e:
        _call(server, client, model, inputs, params=params, names=["action"])
    if client == "v2_grpc":
        assert e.value.status() == f"StatusCode.{code}", e.value
    else:
        assert e.value.status() == str(status), e.value
    assert text in e.value.message()
    ok = _call(
        server, client, "greedy", {"observation": np.zeros((1, 4), np.float32)}, names=["action"]
    )
    assert ok["action"].shape[0] == 1


def test_tf_serving_grpc_bad_requests(server):
    cases = [
        (
            {"observation": np.zeros((1, 5), np.float32)},
            "greedy",
            "expected shape [B, 4]",
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            {"observation": np.zeros((1, 4), np.float64)},
            "greedy",
            "expected DT_FLOAT, got DT_DOUBLE",
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            {"obs": np.zeros((1, 4), np.float32)},
            "greedy",
            "obs: not an input",
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            {"observation": np.zeros((1, 4), np.float32)},
            "nope",
            "Servable not found",
            grpc.StatusCode.NOT_FOUND,
        ),
        (
            {"observation": np.zeros((64, 400), np.float32)},
            "greedy",
            "",
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        ),
    ]
    for inputs, model, text, code in cases:
        with pytest.raises(grpc.RpcError) as e:
            _call(server, "tfs_grpc", model, inputs)
        assert e.value.code() == code, e.value
        assert text in e.value.details()
    assert _call(server, "tfs_grpc", "greedy", {"observation": np.zeros((1, 4), np.float32)})


def test_max_sequences_refused_clearly(server):
    obs = {"observation": np.zeros((1, 4), np.float32)}
    for i in range(MAX_SEQUENCES):
        _call(
            server,
            "v2_grpc",
            "rnn",
            obs,
            params={"sequence_id": 5000 + i, "sequence_start": True},
            names=["action"],
        )
    with pytest.raises(InferenceServerException) as e:
        _call(
            server,
            "v2_grpc",
            "rnn",
            obs,
            params={"sequence_id": 6000, "sequence_start": True},
            names=["action"],
        )
    assert e.value.status() == "StatusCode.UNAVAILABLE"
    assert "--max-sequences" in e.value.message()
    for i in range(MAX_SEQUENCES):  # end them: the store is free again
        _call(
            server,
            "v2_grpc",
            "rnn",
            obs,
            params={"sequence_id": 5000 + i, "sequence_end": True},
            names=["action"],
        )
    _call(
        server,
        "v2_grpc",
        "rnn",
        obs,
        params={"sequence_id": 6000, "sequence_start": True, "sequence_end": True},
        names=["action"],
    )


def test_metrics_are_labelled_by_protocol(server):
    _call(
        server, "v2_grpc", "greedy", {"observation": np.zeros((1, 4), np.float32)}, names=["action"]
    )
    _call(
        server,
        "v2_rest_binary",
        "greedy",
        {"observation": np.zeros((1, 4), np.float32)},
        names=["action"],
    )
    _call(server, "tfs_grpc", "greedy", {"observation": np.zeros((1, 4), np.float32)})
    lines = httpx.get(f"{server.url}/metrics").text.splitlines()
    for protocol, api in [
        ("kserve_v2_grpc", "infer"),
        ("kserve_v2_rest", "infer"),
        ("tfserving_grpc", "predict"),
    ]:
        counted = [
            line
            for line in lines
            if line.startswith("policy_serving_requests_total{")
            and f'protocol="{protocol}"' in line
            and f'api="{api}"' in line
            and 'model="greedy"' in line
        ]
        assert counted and float(counted[0].rsplit(" ", 1)[1]) >= 1, (protocol, lines[:5])


def test_versions_and_labels_on_every_protocol(server):
    obs = np.random.default_rng(4).normal(size=(2, 4)).astype(np.float32)
    expected = {}
    for version, bundle in ((1, cr.bundle("greedy_q")), (2, bundles.greedy_q_v2())):
        policy = runtimes.load_policy(bundle, "onnx")
        step = TimeStep(np.ones(2, np.int32), np.zeros(2, np.float32), np.ones(2, np.float32), obs)
        expected[version] = np.asarray(policy.action(step).action)
    assert not np.array_equal(expected[1], expected[2])  # the versions are told apart
    inputs = _v2_inputs(thttp, {"observation": obs})
    for version in (1, 2):
        got = server.http.infer("versions", inputs, model_version=str(version))
        np.testing.assert_array_equal(got.as_numpy("action"), expected[version])
        got = server.grpc_client.infer(
            "versions", _v2_inputs(tgrpc, {"observation": obs}), model_version=str(version)
        )
        np.testing.assert_array_equal(got.as_numpy("action"), expected[version])
    latest = server.http.infer("versions", inputs)
    assert latest.get_response()["model_version"] == "2"
    assert server.http.get_model_metadata("versions")["versions"] == ["1", "2"]
    with pytest.raises(InferenceServerException) as e:
        server.http.infer("versions", inputs, model_version="3")
    assert e.value.status() == "404" and "Specific(versions, 3)" in e.value.message()
    with pytest.raises(InferenceServerException) as e:
        server.grpc_client.infer(
            "versions", _v2_inputs(tgrpc, {"observation": obs}), model_version="3"
        )
    assert e.value.status() == "StatusCode.NOT_FOUND"
    # TF Serving's gRPC: version and version_label in the ModelSpec.
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    stub = prediction_service_pb2_grpc.PredictionServiceStub(server.channel)
    for label, version in (("stable", 1), ("canary", 2)):
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "versions"
        request.model_spec.version_label = label
        request.inputs["observation"].CopyFrom(tf.make_tensor_proto(obs))
        response = stub.Predict(request, timeout=30)
        assert response.model_spec.version.value == version
        np.testing.assert_array_equal(
            tf.make_ndarray(response.outputs["action"]), expected[version]
        )
    request.model_spec.version.value = 1
    response = stub.Predict(request, timeout=30)
    np.testing.assert_array_equal(tf.make_ndarray(response.outputs["action"]), expected[1])
    request.model_spec.version_label = "nope"
    with pytest.raises(grpc.RpcError) as e:
        stub.Predict(request, timeout=30)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
