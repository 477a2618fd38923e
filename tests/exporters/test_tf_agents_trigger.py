"""TF-Agents' training layout (PolicySavedModelTrigger): import, then follow its checkpoints.

The saves in tests/data/tf_agents_trigger were made by real TF-Agents 0.19 agents (see
make_trigger_saves.py there): saved policies from fresh weights (zero biases), then
``policies/checkpoints/policy_checkpoint_<step>`` after 150 and 300 train steps, and
what the live TF-Agents policies returned at each step.
"""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import runtimes
from exporters.tf_agents.layout import import_tf_agents_layout, resolve_layout
from exporters.update import update_bundle
from tests.checkpoint_checks import assert_reader_matches_tf
from tests.subprocess_utils import run_python
from toolkit import nest
from toolkit.errors import BundleError, CheckpointError
from toolkit.trajectories.time_step import TimeStep

DATA = Path(__file__).resolve().parent.parent / "data" / "tf_agents_trigger"
KINDS = ("dqn", "dqn_rnn", "dqn_dict", "reinforce")


def _expected(kind: str) -> dict[str, np.ndarray]:
    with np.load(DATA / kind / "expected.npz") as data:
        return {k: data[k] for k in data.files}


def _time_step(policy, expected):
    observation = (
        expected["observation"]
        if "observation" in expected
        else {k.split("/", 1)[1]: v for k, v in expected.items() if k.startswith("observation/")}
    )
    batch = nest.flatten(observation)[0].shape[0]
    step_type = np.zeros(batch, np.int32)
    step_type[batch // 2 :] = 1
    return TimeStep(step_type, np.zeros(batch, np.float32), np.ones(batch, np.float32), observation)


def _greedy_actions(bundle: Path, backend: str, expected) -> np.ndarray:
    policy = runtimes.load_policy(bundle, backend, seed=0)
    time_step = _time_step(policy, expected)
    state = policy.get_initial_state(time_step.step_type.shape[0])
    return np.asarray(policy.action(time_step, state).action), policy.train_step


def _raw_params(bundle: Path, backend: str, expected) -> list[np.ndarray]:
    policy = runtimes.load_policy(bundle, backend, seed=0)
    time_step = _time_step(policy, expected)
    state = policy.get_initial_state(time_step.step_type.shape[0])
    (dist,) = nest.flatten(policy.distribution_params(time_step, state).action)
    parameters = dist.parameters()
    names = ("loc", "scale") if "loc" in parameters else ("logits",)
    return [np.asarray(parameters[name]) for name in names]


def _want_params(expected, kind: str, step: int) -> list[np.ndarray]:
    names = ("loc", "scale") if kind == "reinforce" else ("logits",)
    return [expected[f"{step}/policy/{name}"] for name in names]


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """``imported(kind, saved)``: the kind's greedy or raw policy imported from its fresh
    save, on first use (``make test-fast`` needs one of the eight; tests copy what they
    change)."""
    root = tmp_path_factory.mktemp("trigger")

    @functools.cache
    def imported(kind: str, saved: str) -> Path:
        return import_tf_agents_layout(DATA / kind, root / f"{kind}-{saved}", policy=saved)

    return imported


def test_trigger_checkpoints_read_bit_for_bit():
    for kind in KINDS:
        for checkpoint in sorted((DATA / kind / "policies" / "checkpoints").iterdir()):
            assert_reader_matches_tf(checkpoint / "variables" / "variables")


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_fresh_import_takes_every_later_checkpoint(imported, kind, tmp_path):
    """Imports of saves made from zero biases take the trained checkpoints, and then act
    as TF-Agents' live policies did at those steps, on both backends."""
    expected = _expected(kind)
    greedy = shutil.copytree(imported(kind, "greedy_policy"), tmp_path / "greedy")
    raw = shutil.copytree(imported(kind, "policy"), tmp_path / "raw")
    checkpoints = DATA / kind / "policies" / "checkpoints"
    for step in (0, 150, 300):
        if step:
            for bundle in (greedy, raw):
                report = update_bundle(bundle, checkpoints, step=step)
                assert report.source == "tf_agents_checkpoint" and report.train_step == step
        for backend in ("onnx", "tf"):
            actions, train_step = _greedy_actions(greedy, backend, expected)
            assert train_step == step
            want = expected[f"{step}/greedy_policy/action"]
            np.testing.assert_allclose(actions, want, atol=1e-5, err_msg=f"{backend} {step}")
            for got, want in zip(
                _raw_params(raw, backend, expected), _want_params(expected, kind, step), strict=True
            ):
                np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=backend)
    # Training changed the policy: the comparisons above could fail.
    before, after = _want_params(expected, kind, 0)[0], _want_params(expected, kind, 300)[0]
    assert np.abs(before - after).max() > 1e-2


def test_onnx_runtime_follows_the_checkpoints_without_update(imported):
    expected = _expected("dqn")
    policy = runtimes.load_policy(imported("dqn", "greedy_policy"), "onnx")
    checkpoints = DATA / "dqn" / "policies" / "checkpoints"
    policy.update_from_checkpoint(checkpoints)
    assert policy.train_step == 300
    time_step = _time_step(policy, expected)
    np.testing.assert_array_equal(
        policy.action(time_step).action, expected["300/greedy_policy/action"]
    )
    policy.update_from_checkpoint(checkpoints / "policy_checkpoint_0000000150")
    assert policy.train_step == 150
    np.testing.assert_array_equal(
        policy.action(time_step).action, expected["150/greedy_policy/action"]
    )


@pytest.mark.slow
def test_every_kind_follows_its_checkpoints_without_tensorflow(imported):
    """Each kind's greedy import (the bundles above) follows policies/checkpoints/ in a
    process where TensorFlow cannot be imported, then acts as TF-Agents did at step 300."""
    bundles = {kind: str(imported(kind, "greedy_policy")) for kind in KINDS}
    result = run_python(
        f"""
        import sys, time
        import numpy as np
        import runtimes
        from toolkit.trajectories.time_step import TimeStep

        for kind, bundle in {bundles!r}.items():
            root = {str(DATA)!r} + "/" + kind
            data = np.load(root + "/expected.npz")
            if "observation" in data.files:
                observation = data["observation"]
            else:
                observation = {{k.split("/", 1)[1]: data[k] for k in data.files
                               if k.startswith("observation/")}}
            n = len(data["0/greedy_policy/action"])
            step_type = np.zeros(n, np.int32)
            step_type[n // 2:] = 1
            ts = TimeStep(step_type, np.zeros(n, np.float32), np.ones(n, np.float32), observation)
            policy = runtimes.load_policy(bundle, "onnx")
            with policy.follow(root + "/policies/checkpoints", interval=0.05):
                deadline = time.monotonic() + 30
                while policy.train_step != 300 and time.monotonic() < deadline:
                    time.sleep(0.05)
            assert policy.train_step == 300, (kind, policy.train_step)
            state = policy.get_initial_state(n)
            np.testing.assert_allclose(
                policy.action(ts, state).action, data["300/greedy_policy/action"], atol=1e-5
            )
            print("followed", kind)
        assert "tensorflow" not in sys.modules
        """,
        without_tensorflow=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("followed") == len(KINDS)


@pytest.mark.slow
def test_import_with_checkpoint_latest_and_the_raw_policy(tmp_path):
    expected = _expected("reinforce")
    bundle = import_tf_agents_layout(
        DATA / "reinforce" / "policies", tmp_path / "b", policy="policy", checkpoint="latest"
    )
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["train_step"] == 300
    loc, scale = _raw_params(bundle, "onnx", expected)
    np.testing.assert_allclose(loc, expected["300/policy/loc"], atol=1e-5)
    np.testing.assert_allclose(scale, expected["300/policy/scale"], atol=1e-5)


def test_layout_errors_name_the_paths_and_choices(tmp_path):
    with pytest.raises(BundleError, match=r"expected one of \['policy', 'greedy_policy'"):
        resolve_layout(DATA / "dqn", "best_policy")
    partial = tmp_path / "policies"
    shutil.copytree(DATA / "dqn" / "policies" / "policy", partial / "policy")
    with pytest.raises(BundleError, match=r"no saved 'greedy_policy'; this trigger output holds"):
        resolve_layout(tmp_path)
    with pytest.raises(BundleError, match=r"found neither"):
        resolve_layout(DATA)
    layout = resolve_layout(DATA / "dqn" / "policies" / "collect_policy")
    assert layout.checkpoints == DATA / "dqn" / "policies" / "checkpoints"
    with pytest.raises(
        CheckpointError, match=r"no checkpoint of train step 7; there are \[150, 300\]"
    ):
        import_tf_agents_layout(DATA / "dqn", tmp_path / "out", checkpoint=7)
    assert not (tmp_path / "out").exists()
