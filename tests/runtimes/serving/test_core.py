"""The protocol-neutral core in-process: its catalogue and draining, the protocol table,
error kinds, the JSON parser of large bodies, and the policies' flat entry points."""

from __future__ import annotations

import asyncio
import importlib
import json
import re
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import runtimes
from runtimes.serving import jsonio, protocols
from runtimes.serving.batching import Batcher
from runtimes.serving.core import CoreOptions, VersionState, build_core
from runtimes.serving.models import ModelConfig
from tests.contract import cases_runtime as cr
from toolkit.errors import ErrorKind, ServingError, SpecMismatchError, UnsupportedError
from toolkit.trajectories.time_step import TimeStep

# --- the JSON of large bodies ---------------------------------------------------------------

_CASES = [
    "[1, 2]",
    "[[1,2],[3,4]]",
    ' { "a" : [ 1e5 , -2.5E-3 ,0.0] , "b" : [[ ]] } ',
    "[NaN, Infinity, -Infinity]",
    "[[1, NaN], [2, 3]]",
    '["[1,2]", "]"]',
    '{"instances": [[0.1, 0.2], [0.3, 0.4]], "signature_name": "x"}',
    '{"a": 1, "a": [2]}',
    '[true, false, null, "\\u00e9\\n"]',
    "3",
    "[]",
    "[ ]",
    # Refused by both parsers:
    "[1,]",
    "[1 2]",
    "[1.2.3]",
    "[- 1]",
    "[01]",
    "[+1]",
    "[1e]",
    "[1] x",
    "[[1, 2]",
    '{"a" 1}',
    "[" * 3000 + "]" * 3000,
    '{"a": 1} \n',
    '{"a": "\\ud800 \u00e9"}',
    # Refused by both parsers:
    '{"a": 1} x',
    '{"a": 1}{}',
]


def _random_json(rng: np.random.Generator, depth: int = 0):
    kind = int(rng.integers(0, 8 if depth < 5 else 4))
    if kind == 0:
        return float(rng.normal() * 10.0 ** int(rng.integers(-5, 30)))
    if kind == 1:
        return int(rng.integers(-(2**40), 2**40))
    if kind == 2:
        return [None, True, False, "a]", "[x,", float("nan"), float("-inf")][rng.integers(0, 7)]
    if kind == 3:  # a row of numbers, the usual case
        return rng.normal(size=int(rng.integers(0, 9))).round(int(rng.integers(0, 9))).tolist()
    if kind in (4, 5):
        return [_random_json(rng, depth + 1) for _ in range(int(rng.integers(0, 5)))]
    if kind == 6:  # a batch of rows
        shape = tuple(int(s) for s in rng.integers(1, 5, size=int(rng.integers(1, 4))))
        return rng.integers(-9, 9, size=shape).tolist()
    return {f"k{rng.integers(0, 4)}": _random_json(rng, depth + 1) for _ in range(3)}


def _parse(parse, raw: bytes):
    try:
        return json.dumps(parse(raw), allow_nan=True)  # NaN compares as its token
    except (ValueError, RecursionError, ServingError):
        return "refused"


def test_large_bodies_parse_in_slices_as_json_loads_parses_them():
    rng = np.random.default_rng(0)
    texts = list(_CASES)
    for _ in range(1500):
        separators = [(",", ":"), (", ", ": "), (" ,\n", " :\t")][rng.integers(0, 3)]
        texts.append(json.dumps(_random_json(rng), separators=separators))
    # A run of numbers longer than one slice goes element by element.
    texts.append(json.dumps({"inputs": list(range(jsonio.SLICE))}))
    refused = 0
    for text in texts:
        raw = text.encode()
        expected = _parse(json.loads, raw)
        refused += expected == "refused"
        assert _parse(lambda r: jsonio.loads(r, sliced=True), raw) == expected, text[:200]
        assert _parse(jsonio.loads, raw) == expected, text[:200]
    assert refused >= 13
    for encoding in ("utf-16-le", "utf-16-be", "utf-32-le", "utf-8-sig"):
        assert jsonio.loads('{"a": [1.5]}'.encode(encoding)) == {"a": [1.5]}


def test_a_parse_error_is_named():
    with pytest.raises(ServingError, match=r"JSON Parse error: Expecting value") as info:
        jsonio.loads(b"[1,]", sliced=True)
    assert info.value.kind is ErrorKind.INVALID_ARGUMENT
    with pytest.raises(ServingError, match=r"JSON Parse error: Extra data: line 1 column 10"):
        jsonio.loads(b'{"a": 1} x')
    with pytest.raises(ServingError, match="JSON Parse error: The document is empty"):
        jsonio.loads(b"  ")


# --- the protocol table and error kinds ------------------------------------------------------


def test_the_protocol_table_builds_one_codec_per_protocol():
    core = build_core(CoreOptions([]))
    try:
        for protocol in protocols.PROTOCOLS:
            codec = importlib.import_module(protocol.module).make(core)
            assert codec.name == protocol.name
        http = protocols.codecs(core, "http")
        assert [c.name for c in http] == ["tfserving_rest", "kserve_v2_rest"]
        assert http[0].handles("/v1/models/m:predict") and not http[0].handles("/v2/models/m")
        assert http[1].handles("/v2/models/m/infer") and not http[1].handles("/v1/models/m")
        grpc = protocols.codecs(core, "grpc")
        assert [c.name for c in grpc] == ["kserve_v2_grpc", "tfserving_grpc"]
    finally:
        core.close()


def test_every_error_kind_has_a_tf_serving_status():
    from runtimes.serving import http

    assert set(http.HTTP_STATUS) == set(ErrorKind)
    assert http.HTTP_STATUS[ErrorKind.NOT_FOUND] == 404
    assert http.HTTP_STATUS[ErrorKind.INVALID_ARGUMENT] == 400


# --- the core --------------------------------------------------------------------------------


def test_the_core_answers_from_its_catalogue_and_drains():
    bundle = cr.bundle("greedy_q")
    core = build_core(CoreOptions([ModelConfig("m", bundle)]))
    loop = asyncio.new_event_loop()
    try:
        assert not core.ready()  # nothing loaded yet
        core.registry.poll()
        assert core.ready()
        assert core.status("m", None, None) == [VersionState(1, True)]
        loaded = core.resolve("m", None, None)
        signature = loaded.signatures["serving_default"]
        assert {n: t.describe_shape() for n, t in signature.inputs.items()} == {
            "observation": "[B, 4]"
        }
        observations = np.random.default_rng(1).normal(size=(3, 4))  # float64: converted
        outputs = loop.run_until_complete(core.run(signature, {"observation": observations}))
        policy = runtimes.load_policy(bundle, "onnx")
        mid = TimeStep(np.ones(3, np.int32), np.zeros(3, np.float32), np.ones(3, np.float32), None)
        step = policy.action(mid._replace(observation=observations.astype(np.float32)))
        assert list(outputs) == ["action"]
        np.testing.assert_array_equal(outputs["action"], step.action)
        with pytest.raises(ServingError, match=r"Latest\(nope\)") as info:
            core.resolve("nope", None, None)
        assert info.value.kind is ErrorKind.NOT_FOUND
        with pytest.raises(ServingError, match="Could not find version 9 of model m") as info:
            core.status("m", 9, None)
        assert info.value.kind is ErrorKind.NOT_FOUND
        core.start_draining()
        assert not core.ready()
    finally:
        loop.close()
        core.close()


@pytest.mark.parametrize("window_us", [None, 0])
def test_concurrent_requests_are_answered_each_with_its_own_rows(window_us):
    # Both transports await run on the loop: 8 requests at once, batched or not.
    bundle = cr.bundle("greedy_q")
    core = build_core(CoreOptions([ModelConfig("m", bundle)], batch_window_us=window_us))
    core.registry.poll()
    signature = core.resolve("m", None, None).signatures["serving_default"]
    rng = np.random.default_rng(2)
    observations = rng.normal(size=(8, 3, 4)).astype(np.float32)
    policy = runtimes.load_policy(bundle, "onnx")
    mid = TimeStep(np.ones(3, np.int32), np.zeros(3, np.float32), np.ones(3, np.float32), None)
    expected = [policy.action(mid._replace(observation=o)).action for o in observations]

    async def requests():
        return await asyncio.gather(
            *(core.run(signature, {"observation": o}) for o in observations)
        )

    try:
        got = asyncio.run(requests())
        for want, answer in zip(expected, got, strict=True):
            np.testing.assert_array_equal(answer["action"], want)
        with pytest.raises(ServingError, match=r"observation: expected shape \[B, 4\]"):
            asyncio.run(core.run(signature, {"observation": observations[0][:, :3]}))
    finally:
        core.close()


def test_flat_entry_points_name_bad_inputs():
    policy = runtimes.load_policy(cr.bundle("greedy_q"), "onnx")
    assert policy.input_names == ["step_type", "reward", "discount", "observation"]
    good = {
        "step_type": np.ones(2, np.int32),
        "reward": np.zeros(2, np.float32),
        "discount": np.ones(2, np.float32),
        "observation": np.full((2, 4), 0.5, np.float32),
    }
    expected = policy.action_flat(good)["action"]
    # Safe conversions, as action(): float64 observations, plain lists.
    converted = {**good, "observation": good["observation"].astype(np.float64).tolist()}
    np.testing.assert_array_equal(policy.action_flat(converted)["action"], expected)
    cases = [
        ({k: v for k, v in good.items() if k != "reward"}, "reward: expected an array"),
        ({**good, "x": np.ones(2)}, "x: expected one of the inputs"),
        ({**good, "observation": np.zeros((2, 3), np.float32)}, "observation: expected shape"),
        ({**good, "step_type": np.array([1, 3], np.int32)}, "step_type"),
        ({k: v[0] for k, v in good.items()}, "step_type: expected one batch dim, shape (B,)"),
        # A missing input after one that needs converting (it was a KeyError), a typo
        # in place of a name, an explicit None, and no mapping at all.
        (
            {"step_type": [1, 1], "reward": good["reward"], "discount": good["discount"]},
            "observation: expected an array",
        ),
        ({**{k: v for k, v in good.items() if k != "reward"}, "rewards": 0}, "rewards: expected"),
        ({**good, "observation": None}, "observation: expected an array"),
        ("step_type", "inputs: expected a mapping of input name -> array, got str"),
    ]
    for inputs, message in cases:
        with pytest.raises(SpecMismatchError, match=re.escape(message)):
            policy.action_flat(inputs)


def test_one_requests_bad_rows_fail_only_that_request_of_a_merged_batch():
    """A step type of 3 in one request fails that request, named at its own row, while
    the requests merged with it are answered (they all failed with its error before)."""
    policy = runtimes.load_policy(cr.bundle("greedy_q"), "onnx")

    def inputs(step_types: list[int]) -> dict[str, np.ndarray]:
        n = len(step_types)
        observation = np.linspace(-1, 1, n * 4, dtype=np.float32).reshape(n, 4)
        return {
            "step_type": np.array(step_types, np.int32),
            "reward": np.zeros(n, np.float32),
            "discount": np.ones(n, np.float32),
            "observation": observation,
        }

    batches = []
    with ThreadPoolExecutor(1) as executor:
        batcher = Batcher(policy.action_flat, 0.05, 64, executor, on_batch=batches.append)

        async def three_requests():
            return await asyncio.gather(
                batcher(inputs([1, 1]), 2),
                batcher(inputs([1, 3]), 2),
                batcher(inputs([0]), 1),
                return_exceptions=True,
            )

        good, bad, first = asyncio.run(three_requests())
    assert batches == [5]  # one merged call
    assert isinstance(bad, SpecMismatchError)
    assert (
        "step_type: expected a step type in {0: FIRST, 1: MID, 2: LAST}, got 3 at index (1,)"
        in (str(bad))
    )
    np.testing.assert_array_equal(good["action"], policy.action_flat(inputs([1, 1]))["action"])
    np.testing.assert_array_equal(first["action"], policy.action_flat(inputs([0]))["action"])


def test_the_core_serves_any_backend_of_the_table_and_refuses_what_one_cannot_do():
    """A backend registered in runtimes.backends (one line) serves; --follow is refused
    for one without weight updates, and an unknown name lists the table's."""
    from runtimes import backends
    from runtimes.serving.core import check_backend

    backends.register(
        backends.Backend(
            "toy",
            "tests.extensions.toy_backend",
            "ToyPolicy",
            "onnx",
            "onnxruntime",
            "runtime",
            "ONNX",
            weight_updates=False,
            auto=False,
        )
    )
    core = None
    try:
        check_backend("toy", follow=False)
        with pytest.raises(
            UnsupportedError,
            match=re.escape(
                "--follow: the toy backend cannot take checkpoints; expected a backend with "
                "weight updates (onnx, tf)"
            ),
        ):
            check_backend("toy", follow=True)
        with pytest.raises(
            SpecMismatchError,
            # every row of the table, the registered toy last
            match=r"backend: expected one of \['auto', 'onnx', 'litert', .*'tf', 'toy'\], "
            r"got 'openvino'",
        ):
            check_backend("openvino", follow=False)
        bundle = cr.bundle("greedy_q")
        core = build_core(CoreOptions([ModelConfig("m", bundle)], backend="toy"))
        core.registry.poll()
        loaded = core.resolve("m", None, None)
        assert type(loaded.policy).__name__ == "ToyPolicy"
        observations = np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)
        outputs = asyncio.run(
            core.run(loaded.signatures["serving_default"], {"observation": observations})
        )
        onnx = runtimes.load_policy(bundle, "onnx")
        mid = TimeStep(np.ones(2, np.int32), np.zeros(2, np.float32), np.ones(2, np.float32), None)
        expected = onnx.action(mid._replace(observation=observations)).action
        np.testing.assert_array_equal(outputs["action"], expected)
    finally:
        if core is not None:
            core.close()
        backends.unregister("toy")


def test_a_planned_tf_serving_predict_answers_as_the_full_path():
    """TF Serving gRPC: a plain Predict (tensor_content) of a layout answered before is
    decoded and encoded by its plan; its bytes parse to the full path's answer."""
    from runtimes.serving import tfserving_grpc
    from runtimes.serving.proto import tfserving_pb2 as pb

    core = build_core(CoreOptions([ModelConfig("m", cr.bundle("greedy_q"))]))
    core.registry.poll()

    def request(obs: np.ndarray, content: bytes | None = None) -> pb.PredictRequest:
        message = pb.PredictRequest()
        message.model_spec.name = "m"
        tensor = message.inputs["observation"]
        tensor.dtype = pb.DT_FLOAT
        for n in obs.shape:
            tensor.tensor_shape.dim.add(size=n)
        tensor.tensor_content = obs.tobytes() if content is None else content
        return message

    observations = np.random.default_rng(4).normal(size=(3, 2, 4)).astype(np.float32)
    policy = runtimes.load_policy(cr.bundle("greedy_q"), "onnx")
    mid = TimeStep(np.ones(2, np.int32), np.zeros(2, np.float32), np.ones(2, np.float32), None)
    try:
        codec = tfserving_grpc.make(core)
        first, model = asyncio.run(codec.predict(request(observations[0])))
        assert model == "m" and isinstance(first, pb.PredictResponse)  # the full path
        for obs in observations[1:]:
            planned, _ = asyncio.run(codec.predict(request(obs)))
            assert isinstance(planned, bytes)  # the plan's answer
            full, _ = asyncio.run(
                tfserving_grpc.make(core).predict(request(obs))
            )  # a codec with no plan
            assert pb.PredictResponse.FromString(planned) == full
            want = policy.action(mid._replace(observation=obs)).action
            tensor = full.outputs["action"]
            assert tensor.dtype == pb.DT_INT32
            assert [d.size for d in tensor.tensor_shape.dim] == list(want.shape)
            action = np.frombuffer(tensor.tensor_content, "<i4").reshape(want.shape)
            np.testing.assert_array_equal(action, want)
        # The same layout 4 bytes short: the full path names it.
        short = observations[0].tobytes()[:-4]
        with pytest.raises(ServingError, match="observation: expected 32 bytes of tensor_content"):
            asyncio.run(codec.predict(request(observations[0], short)))
    finally:
        core.close()


@pytest.mark.parametrize("kind", ["greedy_q", "actor/action_network"])
def test_a_planned_v2_rest_infer_answers_as_the_full_path(kind):
    """KServe v2 REST: a plain JSON infer of a layout answered before goes through its
    plan; its answers are the full path's byte for byte (int and float32 outputs, with
    and without an id), and bad data of the same layout still gets the full path's error."""
    from runtimes.serving import kserve_v2_rest
    from runtimes.serving.http import HttpRequest

    core = build_core(CoreOptions([ModelConfig("m", cr.bundle(kind))]))
    core.registry.poll()

    def body(data, **more) -> bytes:
        tensor = {"name": "observation", "shape": [2, 4], "datatype": "FP32", "data": data}
        return json.dumps({"inputs": [tensor], **more}).encode()

    def answer(codec, raw: bytes):
        request = HttpRequest("POST", "/v2/models/m/infer", [], raw)
        return asyncio.run(codec.handle(request))

    rng = np.random.default_rng(5)
    try:
        codec = kserve_v2_rest.make(core)
        first = rng.normal(size=(2, 4)).round(3).tolist()
        assert answer(codec, body(first)).status == 200
        assert len(codec._plans) == 1  # learned
        decoded = []  # requests the plan did not take (decoded in full)
        full_decode = codec.decode
        codec.decode = lambda *args: decoded.append(1) or full_decode(*args)
        bodies = [body(rng.normal(size=(2, 4)).tolist()) for _ in range(3)]
        bodies += [
            body(rng.normal(size=8).tolist(), id="abc"),  # flat data, an id
            body([[1, 2, 3, 4], [5, 6, 7, 8]]),  # whole numbers for floats
            body([[True] * 4] * 2),  # booleans: refused
            body([["a"] * 4] * 2),  # text: refused
            body([[0.5] * 4, [0.5] * 3]),  # ragged
            body([0.5] * 7),  # a value short
            body([[0.5] * 4] * 2, id=[1, {"x": "é"}]),  # an id of any JSON
        ]
        for raw in bodies:
            planned = answer(codec, raw)
            full = answer(kserve_v2_rest.make(core), raw)  # a codec with no plan
            assert (planned.status, planned.body) == (full.status, full.body)
        assert [answer(codec, raw).status for raw in bodies[5:9]] == [400] * 4
        assert len(decoded) == 8  # the 4 bad bodies, twice
        obs = np.asarray(json.loads(bodies[0])["inputs"][0]["data"], np.float32)
        out = json.loads(answer(codec, bodies[0]).body)["outputs"][0]
        policy = runtimes.load_policy(cr.bundle(kind), "onnx")
        mid = TimeStep(np.ones(2, np.int32), np.zeros(2, np.float32), np.ones(2, np.float32), None)
        want = policy.action(mid._replace(observation=obs)).action
        assert out["shape"] == list(want.shape)
        np.testing.assert_array_equal(np.asarray(out["data"], want.dtype).reshape(want.shape), want)
    finally:
        core.close()


def test_request_metrics_count_answers_into_prometheus_buckets():
    """The request counts and latency histogram (plain numbers read at scrape time)
    print as prometheus-client's counters and histograms would: a latency on a bucket's
    bound counts in that bucket, errors only under their own codes."""
    from prometheus_client import generate_latest

    from runtimes.serving.metrics import ServerMetrics

    metrics = ServerMetrics(["m"])
    for seconds in (0.00005, 0.0001, 0.0003, 3.0):
        metrics.observe("kserve_v2_rest", "m", "infer", 200, seconds, False)
    metrics.observe("kserve_v2_grpc", "m", "infer", "NOT_FOUND", 0.001, True)
    samples = {}
    for line in generate_latest(metrics.registry).decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    rest = 'api="infer",model="m",protocol="kserve_v2_rest"'
    assert samples[f'policy_serving_requests_total{{api="infer",code="200",{rest[12:]}}}'] == 4
    errors = [n for n in samples if n.startswith("policy_serving_request_errors_total")]
    assert errors == [
        'policy_serving_request_errors_total{api="infer",code="NOT_FOUND",model="m",'
        'protocol="kserve_v2_grpc"}'
    ]
    bucket = "policy_serving_request_latency_seconds_bucket"
    got = {
        le: samples[f'{bucket}{{api="infer",le="{le}",model="m",protocol="kserve_v2_rest"}}']
        for le in ("0.0001", "0.00025", "0.0005", "2.5", "+Inf")
    }
    assert got == {"0.0001": 2, "0.00025": 2, "0.0005": 3, "2.5": 3, "+Inf": 4}
    assert samples[f"policy_serving_request_latency_seconds_count{{{rest}}}"] == 4
    assert samples[f"policy_serving_request_latency_seconds_sum{{{rest}}}"] == pytest.approx(
        3.00045
    )
