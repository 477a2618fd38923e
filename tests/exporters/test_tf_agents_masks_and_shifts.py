"""TF-Agents saves whose actions start at 1, and masked DQN policies, act as TF-Agents did.

The saves (tests/data/tf_agents_0_19_extra, made by make_extra_saves.py there with
TF-Agents 0.19 itself) record what TF-Agents' loader returned:

* ``actor_from_1``: an ActorPolicy over actions [1, 4]. TF-Agents' categorical
  projection ignores the minimum: it samples an index 0..3 and the action clips it into
  [1, 4], so 0 and 1 both give 1 and 4 never comes. The bundle holds that distribution
  over the spec's values (its greedy form TF-Agents' clipped argmax).
* ``dqn_masked_collect``: epsilon-greedy over a masked Q policy; TF-Agents' random branch
  draws only allowed actions, and so must the bundle's, on every backend.
"""

from __future__ import annotations

import functools
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from exporters import tf_agents
from toolkit import bundle
from toolkit.cli import app
from toolkit.trajectories.time_step import TimeStep

ARCHIVE = Path(__file__).resolve().parent.parent / "data" / "tf_agents_0_19_extra" / "saves.tar.xz"
BACKENDS = ["onnx", "tf"]


@pytest.fixture(scope="module")
def saves(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("extra_saves")
    with tarfile.open(ARCHIVE) as archive:
        archive.extractall(root, filter="data")
    return root


@pytest.fixture(scope="module")
def bundles(saves, tmp_path_factory):
    root = tmp_path_factory.mktemp("extra_bundles")

    @functools.cache
    def imported(case: str, greedy: bool = False) -> Path:
        out = root / f"{case}{'-greedy' if greedy else ''}"
        return tf_agents.import_tf_agents(saves / case / "saved_policy", out, greedy=greedy)

    return imported


def rec_of(saves: Path, case: str) -> dict[str, np.ndarray]:
    with np.load(saves / case / "expected.npz") as data:
        return {k: data[k] for k in data.files}


def load(path: Path, backend: str, seed: int = 0):
    from runtimes import load_policy

    return load_policy(path, backend=backend, seed=seed)


def time_step(observation, n: int) -> TimeStep:
    return TimeStep(
        np.ones(n, np.int32), np.zeros(n, np.float32), np.ones(n, np.float32), observation
    )


def assert_same_frequencies(ours: np.ndarray, theirs: np.ndarray, values, what: str) -> None:
    """Each value's frequency within 4 standard errors of TF-Agents'."""
    for value in values:
        p, q = np.mean(ours == value), np.mean(theirs == value)
        se = np.sqrt(p * (1 - p) / len(ours) + q * (1 - q) / len(theirs))
        assert abs(p - q) <= 4 * se + 1e-9, f"{what}: P({value}) {p:.4f} vs TF-Agents {q:.4f}"


# --- an ActorPolicy over actions starting at 1 ---------------------------------------------


def _tf_agents_probabilities(logits: np.ndarray) -> np.ndarray:
    """TF-Agents' action probabilities over [1, 4]: index 0..3, clipped into [1, 4]."""
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.stack([p[..., 0] + p[..., 1], p[..., 2], p[..., 3], np.zeros_like(p[..., 0])], -1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_actor_over_actions_from_1_samples_as_tf_agents(backend, saves, bundles):
    rec = rec_of(saves, "actor_from_1")
    assert str(rec["distribution/class"]) == "Categorical"  # not shifted: TF-Agents' own
    policy = load(bundles("actor_from_1"), backend, seed=7)
    dist = policy.distribution(time_step(rec["observation"], 32)).action
    np.testing.assert_allclose(
        dist.probs(), _tf_agents_probabilities(rec["distribution/logits"]), atol=1e-5
    )
    one = rec["samples/observation"]
    ours = policy.action(time_step(np.repeat(one, 4000, 0), 4000)).action
    theirs = rec["samples/action"]
    assert set(np.unique(theirs)) == {1, 2, 3}
    assert ours.dtype == np.int32 and set(np.unique(ours)) <= {1, 2, 3}
    assert_same_frequencies(ours, theirs, (1, 2, 3, 4), f"actor_from_1 {backend}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_greedy_import_is_tf_agents_clipped_argmax(backend, saves, bundles):
    greedy = rec_of(saves, "actor_from_1_greedy")
    rec = rec_of(saves, "actor_from_1")
    observation = rec["observation"]
    expected = greedy["action"]
    # The mode of the clipped distribution differs from TF-Agents' greedy somewhere.
    folded = _tf_agents_probabilities(rec["distribution/logits"]).argmax(-1) + 1
    assert np.any(folded != expected)
    for path in (bundles("actor_from_1", greedy=True), bundles("actor_from_1_greedy")):
        action = load(path, backend).action(time_step(observation, 32)).action
        np.testing.assert_array_equal(action, expected, err_msg=str(path))


def test_the_cli_imports_and_verifies_it(saves, tmp_path):
    out = tmp_path / "actor"
    result = CliRunner().invoke(
        app, ["import-tf-agents", str(saves / "actor_from_1" / "saved_policy"), str(out)]
    )
    assert result.exit_code == 0, result.output
    assert f"verify {out}: OK" in result.stdout
    description = bundle.read_manifest(out)["distribution"]
    assert description["family"] == "categorical" and description["shift"] == 1


# --- masked DQN ------------------------------------------------------------------------------


def _masked_rows(rec: dict, prefix: str = "") -> dict[str, np.ndarray]:
    return {k: rec[f"{prefix}observation/{k}"] for k in ("observation", "mask")}


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_masked_collect_policy_explores_only_allowed_actions(backend, saves, bundles):
    rec = rec_of(saves, "dqn_masked_collect")
    info = json.loads((saves / "dqn_masked_collect" / "case.json").read_text())
    manifest = bundle.read_manifest(bundles("dqn_masked_collect"))
    assert manifest["metadata"]["tf_agents_exploration"] == "epsilon_greedy"
    assert manifest["policy"]["action"]["epsilon"] == pytest.approx(0.5)
    policy = load(bundles("dqn_masked_collect"), backend, seed=3)
    one = _masked_rows(rec, "samples/")
    many = {k: np.repeat(v, 4000, 0) for k, v in one.items()}
    ours = policy.action(time_step(many, 4000)).action
    forbidden = info["forbidden"]
    assert one["mask"][0, forbidden] == 0
    assert not np.any(ours == forbidden)  # TF-Agents' random branch never draws it either
    assert not np.any(rec["samples/action"] == forbidden)
    assert_same_frequencies(ours, rec["samples/action"], (0, 1, 2), f"masked {backend}")
    rows = _masked_rows(rec)
    for seed in range(20):
        action = (
            load(bundles("dqn_masked_collect"), backend, seed=seed)
            .action(time_step(rows, 32))
            .action
        )
        assert np.all(rows["mask"][np.arange(32), action] == 1), seed


@pytest.mark.parametrize("backend", BACKENDS)
def test_masked_greedy_policies_act_as_tf_agents(backend, saves, bundles):
    rec = rec_of(saves, "dqn_masked_greedy")
    rows = _masked_rows(rec)
    for path in (bundles("dqn_masked_greedy"), bundles("dqn_masked_collect", greedy=True)):
        action = load(path, backend).action(time_step(rows, 32)).action
        np.testing.assert_array_equal(action, rec["action"], err_msg=str(path))
