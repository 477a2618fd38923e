"""``policy-toolkit serve`` with masked bundles over real HTTP (TensorFlow blocked): the
mask is an input (``observation/mask``), no answer is a masked action, and a row that
allows no action is a 400 naming it."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
import tensorflow as tf

import runtimes
from tests.runtimes.serving.server_process import ServerProcess
from toolkit.action_masks import MaskSplitter
from toolkit.networks.q_network import QNetwork
from toolkit.policies import epsilon_greedy_policy, greedy_policy, q_policy
from toolkit.specs import tensor_spec
from toolkit.trajectories import time_step as ts

N = 5
OBS = {
    "features": tensor_spec.TensorSpec((3,), tf.float32, name="observation/features"),
    "mask": tensor_spec.BoundedTensorSpec((N,), tf.int8, 0, 1, name="observation/mask"),
}
ACTIONS = tensor_spec.BoundedTensorSpec((), tf.int64, 0, N - 1, name="action")
NO_ACTION = "expected at least one allowed action, got none"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from exporters.export import export_policy

    network = QNetwork(OBS["features"], ACTIONS, fc_layer_params=(8,))
    q = q_policy.QPolicy(
        ts.time_step_spec(OBS),
        ACTIONS,
        network,
        observation_and_action_constraint_splitter=MaskSplitter("features", "mask"),
    )
    rng = np.random.default_rng(0)
    for variable in q.variables():
        variable.assign(rng.normal(0, 2.0, variable.shape).astype(np.float32))
    root = tmp_path_factory.mktemp("masked-serving")
    paths = {
        "greedy": export_policy(greedy_policy.GreedyPolicy(q), root / "greedy", formats=("onnx",)),
        "explore": export_policy(
            epsilon_greedy_policy.EpsilonGreedyPolicy(q, 0.5), root / "explore", formats=("onnx",)
        ),
    }
    args = ["--seed", "0", "--poll-seconds", "0"]
    for name, path in paths.items():
        args += ["--model", f"{name}={path}"]
    with ServerProcess(*args) as process, httpx.Client(base_url=process.url) as client:
        process.client = client
        process.paths = paths
        yield process


def _masks(rng, rows):
    mask = (rng.random((rows, N)) < 0.4).astype(np.int8)
    mask[np.arange(rows), rng.integers(0, N, rows)] = 1
    return mask


def _predict(server, model, body):
    return server.client.post(f"/v1/models/{model}:predict", content=json.dumps(body))


@pytest.mark.parametrize("model", ["greedy", "explore"])
def test_served_answers_never_take_a_masked_action(server, model):
    rng = np.random.default_rng(1)
    features = rng.normal(0, 2, (64, 3)).round(3).astype(np.float32)
    mask = _masks(rng, 64)
    rows = {
        "instances": [
            {"observation/features": f.tolist(), "observation/mask": m.tolist()}
            for f, m in zip(features, mask, strict=True)
        ]
    }
    columns = {
        "inputs": {"observation/features": features.tolist(), "observation/mask": mask.tolist()}
    }
    answers = []
    for body, key in ((rows, "predictions"), (columns, "outputs")):
        response = _predict(server, model, body)
        assert response.status_code == 200, response.text
        actions = np.asarray(response.json()[key])
        assert actions.shape == (64,)
        assert np.all(mask[np.arange(64), actions] == 1)
        answers.append(actions)
    if model == "greedy":  # deterministic: what the policy gives in this process
        policy = runtimes.load_policy(server.paths[model], "onnx")
        time_step = ts.TimeStep(
            np.ones(64, np.int32),
            np.zeros(64, np.float32),
            np.ones(64, np.float32),
            {"features": features, "mask": mask},
        )
        expected = policy.action(time_step).action
        for actions in answers:
            np.testing.assert_array_equal(actions, expected)


@pytest.mark.parametrize("model", ["greedy", "explore"])
def test_a_row_allowing_no_action_is_refused_by_name(server, model):
    mask = np.ones((5, N), np.int8)
    mask[3] = 0
    body = {
        "inputs": {
            "observation/features": np.zeros((5, 3)).tolist(),
            "observation/mask": mask.tolist(),
        }
    }
    response = _predict(server, model, body)
    assert response.status_code == 400
    assert response.json() == {"error": f"observation/mask[3]: {NO_ACTION}"}
    # The mask is an input the request must carry: without it nothing is assumed allowed.
    response = _predict(server, model, {"instances": [{"observation/features": [0.0, 0.0, 0.0]}]})
    assert response.status_code == 400
    assert "observation/mask" in response.json()["error"]
