"""Every kind of policy TF-Agents 0.19's own agents save imports, and acts as TF-Agents did.

The saves (tests/data/tf_agents_0_19/saves.tar.xz, made by make_saves.py beside it with
TF-Agents itself) hold what TF-Agents' own loader returned: actions of deterministic
policies (compared exactly for integers, within 1e-5 for floats), distribution
parameters of stochastic ones (within 1e-5), and 4000 actions sampled for one
observation (compared per action dim: mean and std within 4 standard errors).
Each case is imported once per module (import + verify costs about a second each).
"""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from exporters import tf_agents as tai
from tests import tf_agents_saved
from toolkit import bundle
from toolkit.errors import BundleError, ExportError
from toolkit.trajectories.time_step import TimeStep

# Each kind costs an import with its ONNX conversion (seconds): slow, as a module.
pytestmark = pytest.mark.slow


DETERMINISTIC = [
    "sac_greedy",
    "ppo_continuous_eval",
    "ppo_discrete_eval",
    "dqn_greedy",
    "c51_greedy",
    "ddpg_policy",
    "td3_policy",
]
# Collect policies whose deterministic core is the same agent's greedy save.
CORES = {"dqn_collect": "dqn_greedy", "td3_collect": "td3_policy", "ddpg_collect": "ddpg_policy"}
SAMPLED = [
    "sac_collect",
    "ppo_continuous_collect",
    "ppo_discrete_collect",
    "dqn_collect",
    "bandit_shifted",
    "random_continuous",
    "random_discrete",
    "dict_actor",
    "td3_collect",
    "ddpg_collect",
]
EXPECTED_KIND = {
    "sac_collect": ("distribution", None),
    "dqn_collect": ("action_core", "epsilon_greedy"),
    "td3_collect": ("action_core", "gaussian"),
    "ddpg_collect": ("action_core", "ou"),
    "random_continuous": ("random", "random"),
    "bandit_shifted": ("distribution", None),
    "c51_greedy": ("distribution", None),
}


@pytest.fixture(scope="module")
def saves() -> Path:
    """The saves of TF-Agents' agents, unpacked once per test process (tests copy what
    they change)."""
    return tf_agents_saved.saves()


def rec_of(saves: Path, case: str) -> dict[str, np.ndarray]:
    with np.load(saves / case / "expected.npz") as data:
        return {k: data[k] for k in data.files}


def info_of(saves: Path, case: str) -> dict:
    return json.loads((saves / case / "case.json").read_text())


@pytest.fixture(scope="module")
def bundles(saves, tmp_path_factory):
    """``(case, greedy) -> bundle path``, imported once."""
    root = tmp_path_factory.mktemp("kinds")

    @functools.cache
    def imported(case: str, greedy: bool) -> Path:
        out = root / f"{case}{'_greedy' if greedy else ''}"
        return tai.import_tf_agents(saves / case / "saved_policy", out, greedy=greedy)

    return lambda case, greedy=False: imported(case, greedy)


def time_step(rec: dict[str, np.ndarray], observation=None, step_type=None) -> TimeStep:
    observation = rec["observation"] if observation is None else observation
    n = len(observation)
    step_type = rec["step_type"] if step_type is None else step_type
    return TimeStep(
        step_type.astype(np.int32),
        np.zeros(n, np.float32),
        np.ones(n, np.float32),
        observation,
    )


def assert_acts_alike(action, expected, what):
    expected = np.asarray(expected)
    if expected.dtype.kind in "iu":
        np.testing.assert_array_equal(action, expected, err_msg=what)
    else:
        np.testing.assert_allclose(action, expected, rtol=0, atol=1e-5, err_msg=what)


def load(path, backend="onnx", seed=0):
    from runtimes import load_policy

    return load_policy(path, backend=backend, seed=seed)


def assert_same_statistics(ours: np.ndarray, theirs: np.ndarray, what: str) -> None:
    """Mean and std per action dim within 4 standard errors of their difference."""
    ours = np.asarray(ours, np.float64).reshape(len(ours), -1)
    theirs = np.asarray(theirs, np.float64).reshape(len(theirs), -1)
    n, m = len(ours), len(theirs)
    for d in range(ours.shape[1]):
        a, b = ours[:, d], theirs[:, d]
        se_mean = np.sqrt(a.var() / n + b.var() / m)
        assert abs(a.mean() - b.mean()) <= 4 * se_mean + 1e-9, (
            f"{what} dim {d}: mean {a.mean():.4f} vs TF-Agents {b.mean():.4f} (se {se_mean:.4f})"
        )

        def var_of_std(x):  # delta method: Var(s) ~ (m4 - s^4) / (4 s^2 n)
            s2 = x.var()
            m4 = np.mean((x - x.mean()) ** 4)
            return (m4 - s2**2) / (4 * s2 * len(x)) if s2 > 0 else 0.0

        se_std = np.sqrt(var_of_std(a) + var_of_std(b))
        assert abs(a.std() - b.std()) <= 4 * se_std + 1e-9, (
            f"{what} dim {d}: std {a.std():.4f} vs TF-Agents {b.std():.4f} (se {se_std:.4f})"
        )


# --- deterministic -----------------------------------------------------------------


@pytest.mark.parametrize("case", DETERMINISTIC)
@pytest.mark.parametrize("backend", ["onnx", "tf"])
def test_deterministic_saves_act_exactly_as_tf_agents(case, backend, saves, bundles):
    rec = rec_of(saves, case)
    policy = load(bundles(case), backend)
    assert policy.train_step == 1000
    assert_acts_alike(policy.action(time_step(rec)).action, rec["action"], case)


@pytest.mark.parametrize("case", sorted(CORES))
def test_greedy_imports_the_core_of_a_collect_policy(case, saves, bundles):
    rec = rec_of(saves, CORES[case])  # the same agent's greedy save, same weights
    path = bundles(case, greedy=True)
    manifest = bundle.read_manifest(path)
    assert manifest["metadata"]["tf_agents_function"] == "action_core"
    assert "tf_agents_exploration" not in manifest["metadata"]
    action = load(path).action(time_step(rec)).action
    assert_acts_alike(action, rec["action"], case)


def test_greedy_imports_the_mode_of_a_stochastic_policy(saves, bundles):
    rec = rec_of(saves, "sac_collect")
    action = load(bundles("sac_collect", greedy=True)).action(time_step(rec)).action
    assert_acts_alike(action, rec["distribution/mode"], "sac_collect mode")


# --- stochastic: parameters and samples ------------------------------------------------


def test_squash_to_spec_normal_parameters(saves, bundles):
    rec = rec_of(saves, "sac_collect")
    policy = load(bundles("sac_collect"))
    dist = policy.distribution(time_step(rec)).action
    assert dist.family == "tanh_normal"
    assert_acts_alike(dist.loc, rec["distribution/input_mean"], "input_mean")
    assert_acts_alike(dist.scale, rec["distribution/input_stddev"], "input_stddev")
    assert_acts_alike(dist.mode(), rec["distribution/mode"], "mode")


def test_normal_and_categorical_parameters_of_ppo_and_dict_actions(saves, bundles):
    rec = rec_of(saves, "ppo_continuous_collect")
    dist = load(bundles("ppo_continuous_collect")).distribution(time_step(rec)).action
    assert_acts_alike(dist.loc, rec["distribution/loc"], "ppo loc")
    assert_acts_alike(dist.scale, rec["distribution/scale"], "ppo scale")
    rec = rec_of(saves, "ppo_discrete_collect")
    dist = load(bundles("ppo_discrete_collect")).distribution(time_step(rec)).action
    assert_acts_alike(dist.logits, rec["distribution/logits"], "ppo logits")
    rec = rec_of(saves, "dict_actor")
    dist = load(bundles("dict_actor")).distribution(time_step(rec)).action
    assert_acts_alike(dist["move"].loc, rec["distribution/move/loc"], "move loc")
    assert_acts_alike(dist["move"].scale, rec["distribution/move/scale"], "move scale")
    assert_acts_alike(dist["turn"].logits, rec["distribution/turn/logits"], "turn logits")


def test_shifted_categorical_keeps_its_shift(saves, bundles):
    rec = rec_of(saves, "bandit_shifted")
    assert int(rec["distribution/shift"]) == 1
    policy = load(bundles("bandit_shifted"))
    dist = policy.distribution(time_step(rec)).action
    assert dist.shift == 1
    assert_acts_alike(dist.logits, rec["distribution/logits"], "logits")
    actions = policy.action(time_step(rec)).action
    assert actions.dtype == np.int32 and set(np.unique(actions)) <= {1, 2, 3, 4}


def _sampled(policy, rec, n=4000, state=None):
    one = rec["samples/observation"]
    state = policy.get_initial_state(n) if state is None else state
    return policy.action(time_step(rec, np.repeat(one, n, 0), np.ones(n, np.int32)), state)


@pytest.mark.parametrize("case", SAMPLED)
def test_sampled_actions_match_tf_agents_statistics(case, saves, bundles):
    rec = rec_of(saves, case)
    manifest = bundle.read_manifest(bundles(case))
    if case in EXPECTED_KIND:
        function, exploration = EXPECTED_KIND[case]
        assert manifest["metadata"]["tf_agents_function"] == function
        assert manifest["metadata"].get("tf_agents_exploration") == exploration
    policy = load(bundles(case), seed=123)
    step = _sampled(policy, rec)
    if case == "dict_actor":
        for key in ("move", "turn"):
            theirs = rec[f"samples/action/{key}"]
            assert_same_statistics(step.action[key], theirs, f"{case}/{key}")
        return
    theirs = rec["samples/action"]
    if case == "ppo_continuous_collect":
        # PPO's collect policy does not clip; bundles return actions within the spec.
        assert np.any(theirs < 0.0)  # below the minimum 0 of dim 1
        theirs = np.clip(theirs, [-2.0, 0.0], [1.0, 3.0])
    assert_same_statistics(step.action, theirs, case)
    if case == "ddpg_collect":
        # The second step from the OU state: its spread shows the damping.
        second = _sampled(policy, rec, state=step.state)
        assert_same_statistics(second.action, rec["samples/action_step2"], f"{case} step 2")


def test_tf_agents_shares_one_noise_vector_per_call_and_the_import_does_not(saves, bundles):
    """The documented difference: TF-Agents' batch gets one noise draw for every row."""
    rec = rec_of(saves, "td3_collect")
    shared = rec["shared/action"]
    assert np.all(shared == shared[0])
    ours = _sampled(load(bundles("td3_collect")), rec, n=8).action
    assert len(np.unique(ours[:, 0])) == 8


def test_which_saved_actions_clip(saves):
    from exporters.tf_agents.graph import action_is_clipped
    from exporters.tf_agents.saved import find_concrete

    def clipped(case):
        loaded = tai.load_saved_policy(saves / case / "saved_policy")
        return action_is_clipped(find_concrete(loaded.action))

    assert not clipped("ppo_continuous_collect")
    assert clipped("sac_collect") and clipped("td3_collect")


def test_exploration_parameters_read_from_the_graph(bundles):
    descriptions = {
        case: bundle.read_manifest(bundles(case))["policy"]["action"]
        for case in ("dqn_collect", "td3_collect", "ddpg_collect")
    }
    # make_saves.py: epsilon_greedy=0.25, exploration_noise_std=0.2, ou 0.3 / 0.2.
    assert descriptions["dqn_collect"]["epsilon"] == pytest.approx(0.25)
    assert np.allclose(descriptions["td3_collect"]["scale"], 0.2)
    ou = descriptions["ddpg_collect"]
    assert np.allclose(ou["ou_stddev"], 0.3) and np.allclose(ou["ou_damping"], 0.2)


# --- checkpoints through update --------------------------------------------------------

CHECKPOINTED = [
    ("sac_collect", False),
    ("sac_greedy", False),
    ("ppo_continuous_collect", False),
    ("ppo_discrete_eval", False),
    ("dqn_greedy", False),
    ("dqn_collect", True),
    ("c51_greedy", False),
    ("ddpg_policy", False),
    ("td3_collect", True),
    ("bandit_shifted", False),
    ("dict_actor", False),
]


@pytest.mark.parametrize(("case", "greedy"), CHECKPOINTED)
def test_a_tf_agents_checkpoint_goes_through_update(case, greedy, saves, bundles, tmp_path):
    rec = rec_of(saves, CORES.get(case, case) if greedy else case)
    info = info_of(saves, case)
    converted = tai.import_tf_agents_checkpoint(
        saves / case / "saved_policy", saves / case / "checkpoint", tmp_path / "c", greedy=greedy
    )
    policy = load(bundles(case, greedy=greedy))
    policy.update_from_checkpoint(converted)
    assert policy.train_step == info["checkpoint_train_step"] == 2000
    ts = time_step(rec)
    if "checkpoint/action" in rec:
        assert_acts_alike(policy.action(ts).action, rec["checkpoint/action"], case)
        assert not np.allclose(rec["checkpoint/action"].astype(float), rec["action"])
    elif case == "sac_collect":
        dist = policy.distribution(ts).action
        assert_acts_alike(dist.loc, rec["checkpoint/distribution/input_mean"], case)
        assert_acts_alike(dist.scale, rec["checkpoint/distribution/input_stddev"], case)
    elif case == "ppo_continuous_collect":
        dist = policy.distribution(ts).action
        assert_acts_alike(dist.loc, rec["checkpoint/distribution/loc"], case)
        assert_acts_alike(dist.scale, rec["checkpoint/distribution/scale"], case)
    elif case == "bandit_shifted":
        dist = policy.distribution(ts).action
        assert_acts_alike(dist.logits, rec["checkpoint/distribution/logits"], case)
    elif case == "dict_actor":
        dist = policy.distribution(ts).action
        assert_acts_alike(dist["move"].loc, rec["checkpoint/distribution/move/loc"], case)
        assert_acts_alike(dist["turn"].logits, rec["checkpoint/distribution/turn/logits"], case)
    else:
        raise AssertionError(f"{case}: nothing recorded after the checkpoint")


def core_action(policy, ts):
    """The deterministic action inside a collect bundle (before its exploration)."""
    state = policy.get_initial_state(len(ts.step_type))  # OU noise lives in the state
    params = policy.distribution_params(ts, state).action
    if isinstance(params, dict) and "greedy" in params:
        params = params["greedy"]
    return params.loc


@pytest.mark.parametrize("backend", ["onnx", "tf"])
@pytest.mark.parametrize("case", sorted(CORES))
def test_a_collect_policy_takes_the_checkpoint_tf_agents_wrote_for_it(
    case, backend, saves, bundles
):
    """PolicySaver.save_checkpoint of a collect policy, read as it is: without TensorFlow on
    the onnx backend (the weights map), into the SavedModel on the tf one."""
    policy = load(bundles(case), backend)
    policy.update_from_checkpoint(saves / case / "checkpoint")
    assert policy.train_step == 2000
    rec = rec_of(saves, CORES[case])  # the greedy save: same weights, same checkpoint
    assert_acts_alike(core_action(policy, time_step(rec)), rec["checkpoint/action"], case)


def test_update_writes_a_collect_policys_tf_agents_checkpoint_into_the_bundle(
    saves, bundles, tmp_path
):
    from exporters.update import update_bundle

    target = shutil.copytree(bundles("dqn_collect"), tmp_path / "b")
    report = update_bundle(target, saves / "dqn_collect" / "checkpoint")
    assert report.source == "tf_agents_checkpoint" and report.train_step == 2000
    rec = rec_of(saves, "dqn_greedy")
    for backend in ("onnx", "tf"):
        action = core_action(load(target, backend), time_step(rec))
        assert_acts_alike(action, rec["checkpoint/action"], backend)
    assert bundle.read_manifest(target)["policy"]["action"]["epsilon"] == pytest.approx(0.25)


PPO = ["ppo_continuous_collect", "ppo_continuous_eval", "ppo_discrete_collect", "ppo_discrete_eval"]


def _params_of(policy, ts) -> dict[str, np.ndarray]:
    dist = policy.distribution(ts).action
    return {k: np.asarray(v) for k, v in vars(dist).items() if k in ("loc", "scale", "logits")}


@pytest.mark.parametrize("case", PPO)
def test_ppo_bundles_map_the_observation_normaliser_and_take_their_checkpoints(
    case, saves, bundles
):
    """The normaliser's statistics stay variables of the ONNX graph (not constants folded
    from them), so every PPO bundle has a weights map and takes TF-Agents' checkpoint
    without TensorFlow (onnx) and into its SavedModel (tf)."""
    weights = bundle.read_manifest(bundles(case))["onnx"]["weights"]
    names = {v["name"] for v in weights["variables"]}
    assert {"avg_0:0", "count_0:0", "m2_0:0"} <= names
    rec = rec_of(saves, case)
    for backend in ("onnx", "tf"):
        policy = load(bundles(case), backend)
        policy.update_from_checkpoint(saves / case / "checkpoint")
        assert policy.train_step == 2000
        ts = time_step(rec)
        if "checkpoint/action" in rec:
            assert_acts_alike(policy.action(ts).action, rec["checkpoint/action"], backend)
        else:
            for name, value in _params_of(policy, ts).items():
                assert_acts_alike(value, rec[f"checkpoint/distribution/{name}"], name)


@pytest.fixture(scope="module")
def normaliser_checkpoints(saves, tmp_path_factory):
    """``case -> (checkpoint, what TF-Agents' saved functions give with it)``: PolicySaver's
    checkpoint layout, written after the observation normaliser saw other data."""
    import tensorflow as tf

    root = tmp_path_factory.mktemp("normaliser")
    out = {}
    for case in ("ppo_continuous_eval", "ppo_discrete_collect"):
        loaded = tai.load_saved_policy(saves / case / "saved_policy")
        stats = {
            "avg_0:0": [0.5, -1.0, 0.25, 2.0],
            "count_0:0": [50.0] * 4,
            "m2_0:0": [50.0 * v for v in (0.25, 4.0, 1.0, 9.0)],
        }
        for variable in loaded.model_variables:
            if variable.name in stats:
                variable.assign(np.asarray(stats[variable.name], np.float32))
        loaded.train_step.assign(77)
        checkpoint = root / case
        tf.train.Checkpoint(
            policy=loaded, model_variables=loaded.model_variables, train_step=loaded.train_step
        ).write(str(checkpoint / "variables" / "variables"))
        rec = rec_of(saves, case)
        ts = TimeStep(*(tf.constant(x) for x in time_step(rec)))
        if case.endswith("_eval"):
            want = {"action": loaded.action(ts, ()).action.numpy()}
        else:
            want = {"logits": loaded.distribution(ts, ()).action.logits_parameter().numpy()}
        out[case] = (checkpoint, want)
    return out


@pytest.mark.parametrize("backend", ["onnx", "tf"])
@pytest.mark.parametrize("case", ["ppo_continuous_eval", "ppo_discrete_collect"])
def test_ppo_bundles_follow_the_normaliser_statistics_of_a_checkpoint(
    case, backend, saves, bundles, normaliser_checkpoints
):
    checkpoint, want = normaliser_checkpoints[case]
    rec = rec_of(saves, case)
    policy = load(bundles(case), backend)
    ts = time_step(rec)
    before = policy.action(ts).action if "action" in want else _params_of(policy, ts)["logits"]
    policy.update_from_checkpoint(checkpoint)
    assert policy.train_step == 77
    if "action" in want:
        assert_acts_alike(policy.action(ts).action, want["action"], case)
        assert not np.allclose(before, want["action"], atol=1e-3)  # the statistics matter
    else:
        assert_acts_alike(_params_of(policy, ts)["logits"], want["logits"], case)
        assert not np.allclose(before, want["logits"], atol=1e-3)


def test_a_ppo_bundle_takes_a_normaliser_checkpoint_where_tensorflow_cannot_load(
    saves, bundles, normaliser_checkpoints, tmp_path
):
    from tests.subprocess_utils import run_python

    case = "ppo_discrete_collect"
    checkpoint, want = normaliser_checkpoints[case]
    rec = rec_of(saves, case)
    np.savez(tmp_path / "data.npz", observation=rec["observation"], logits=want["logits"])
    result = run_python(
        f"""
        import numpy as np
        import runtimes
        from toolkit.trajectories.time_step import TimeStep

        data = np.load({str(tmp_path / "data.npz")!r})
        policy = runtimes.load_policy({str(bundles(case))!r}, "onnx")
        policy.update_from_checkpoint({str(checkpoint)!r})
        n = len(data["observation"])
        ts = TimeStep(np.ones(n, np.int32), np.zeros(n, np.float32), np.ones(n, np.float32),
                      data["observation"])
        logits = policy.distribution(ts).action.logits
        np.testing.assert_allclose(logits, data["logits"], rtol=0, atol=1e-5)
        print("ok", policy.train_step)
        """,
        without_tensorflow=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok 77"


@pytest.mark.parametrize("case", ["c51_greedy", "sac_collect"])
def test_a_checkpoint_of_a_policy_saved_before_training(case, tmp_path):
    """The reference saves were made from fresh networks (zero biases): the trigger
    workflow, where the bundle is exported before training and checkpoints come later."""
    source = tf_agents_saved.reference() / case
    path = tai.import_tf_agents(source / "saved_policy", tmp_path / "b")
    converted = tai.import_tf_agents_checkpoint(
        source / "saved_policy", source / "checkpoint", tmp_path / "c"
    )
    rec = rec_of(tf_agents_saved.reference(), case)
    policy = load(path)
    # Takes the trained weights although the bundle was exported from zero biases.
    policy.update_from_checkpoint(converted)
    ts = time_step(rec)
    if case == "c51_greedy":
        assert_acts_alike(policy.action(ts).action, rec["checkpoint/action"], case)
    else:
        dist = policy.distribution(ts).action
        assert_acts_alike(dist.loc, rec["checkpoint/distribution/input_mean"], case)
        assert_acts_alike(dist.scale, rec["checkpoint/distribution/input_stddev"], case)
        assert_acts_alike(dist.mode(), rec["checkpoint/distribution/mode"], case)


# --- errors ------------------------------------------------------------------------


def test_random_policies_have_no_greedy_form(saves, tmp_path):
    with pytest.raises(ExportError, match="RandomTFPolicy .* has no deterministic action"):
        tai.import_tf_agents(
            saves / "random_discrete" / "saved_policy", tmp_path / "b", greedy=True
        )
    assert not (tmp_path / "b").exists()


def test_an_unregistered_type_gets_the_hint_for_tf_2_21(saves, tmp_path):
    """TF 2.21 says "has not been registered" (older ones "No TypeSpec has been ...")."""
    copy = tmp_path / "renamed"
    shutil.copytree(saves / "bandit_shifted" / "saved_policy", copy)
    pb = copy / "saved_model.pb"
    # Same length, so the protobuf stays valid: a type nobody registered.
    pb.write_bytes(
        pb.read_bytes().replace(
            b"ShiftedCategorical_ACTTypeSpec", b"ShiftedCategoricaX_ACTTypeSpec"
        )
    )
    with pytest.raises((BundleError, ExportError)) as info:
        tai.import_tf_agents(copy, tmp_path / "b")
    text = str(info.value)
    assert "ShiftedCategoricaX_ACTTypeSpec" in text and "has not been registered" in text
    assert "a library other than TensorFlow and TFP" in text
    assert "greedy `policy`" in text
    assert not (tmp_path / "b").exists()
