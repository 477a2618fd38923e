"""Action masks end to end: masked TF policies and their bundles on the onnx, litert and
tf backends never return a masked action (a property test over random masks), declare
their mask in the manifest, and refuse an entry whose mask allows no action.

One export per policy kind, shared by every test of this module (exports take seconds).
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import tensorflow as tf

import runtimes
from runtimes import derivations
from toolkit.action_masks import MaskSplitter
from toolkit.errors import BundleError, NoAllowedActionError
from toolkit.networks.actor_distribution_network import ActorDistributionNetwork
from toolkit.networks.q_network import QNetwork
from toolkit.policies import (
    actor_policy,
    epsilon_greedy_policy,
    greedy_policy,
    q_policy,
    random_tf_policy,
)
from toolkit.policies.py_tf_policy import PyTFPolicy
from toolkit.specs import array_spec, tensor_spec
from toolkit.trajectories import time_step as ts

hypothesis = pytest.importorskip("hypothesis")
st = pytest.importorskip("hypothesis.strategies")

pytestmark = pytest.mark.slow  # five exports, three formats each

N = 6  # actions 2..7: mask column i is action i + 2
LOW = 2
FEATURES = tensor_spec.TensorSpec((4,), tf.float32, name="observation/features")
OBS = {
    "features": FEATURES,
    "mask": tensor_spec.BoundedTensorSpec((N,), tf.int8, 0, 1, name="observation/mask"),
}
ACTIONS = tensor_spec.BoundedTensorSpec((), tf.int64, LOW, LOW + N - 1, name="action")
SPLITTER = MaskSplitter("features", "mask")
BACKENDS = ("onnx", "litert", "tf")
NO_ACTION = "expected at least one allowed action, got none"


def _weights(policy, seed):
    """Weights whose unmasked preferences are strong, so masks have something to undo."""
    rng = np.random.default_rng(seed)
    for variable in policy.variables():
        variable.assign(rng.normal(0.0, 2.0, variable.shape).astype(np.float32))
    return policy


def _q():
    network = QNetwork(FEATURES, ACTIONS, fc_layer_params=(8,))
    policy = q_policy.QPolicy(
        ts.time_step_spec(OBS),
        ACTIONS,
        network,
        observation_and_action_constraint_splitter=SPLITTER,
    )
    return _weights(policy, 1)


def _actor():
    network = ActorDistributionNetwork(FEATURES, ACTIONS, fc_layer_params=(8,))
    policy = actor_policy.ActorPolicy(
        ts.time_step_spec(OBS),
        ACTIONS,
        network,
        observation_and_action_constraint_splitter=SPLITTER,
    )
    return _weights(policy, 2)


#: kind -> (makes the TF policy, samples)
KINDS = {
    "greedy_q": (lambda: greedy_policy.GreedyPolicy(_q()), False),
    "q": (_q, True),
    "epsilon_greedy_q": (lambda: epsilon_greedy_policy.EpsilonGreedyPolicy(_q(), 0.5), True),
    "actor": (_actor, True),
    "random": (
        lambda: random_tf_policy.RandomTFPolicy(
            ts.time_step_spec(OBS), ACTIONS, observation_and_action_constraint_splitter=SPLITTER
        ),
        True,
    ),
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """kind -> (TF policy as a PyTFPolicy, {backend: runtime policy}, bundle path)."""
    from exporters.export import export_policy

    root = tmp_path_factory.mktemp("masked")
    out = {}
    for kind, (make, _) in KINDS.items():
        policy = make()
        path = export_policy(policy, root / kind, formats=("saved_model", "onnx", "litert"))
        loaded = {b: runtimes.load_policy(path, backend=b, seed=3) for b in BACKENDS}
        out[kind] = (PyTFPolicy(policy, seed=3), loaded, path)
    return out


def _time_step(mask, features):
    outer = mask.shape[:-1]
    return ts.TimeStep(
        np.ones(outer, np.int32),
        np.zeros(outer, np.float32),
        np.ones(outer, np.float32),
        {"features": features, "mask": mask},
    )


def _allowed(mask, action):
    """Whether each action is allowed by its row of the mask."""
    flat_mask = mask.reshape(-1, N)
    return flat_mask[np.arange(len(flat_mask)), np.reshape(action, -1) - LOW] == 1


@st.composite
def masked_batches(draw):
    """A time step of random masks (each entry allows at least one action), batched or not."""
    batch = draw(st.sampled_from([None, 1, 2, 7, 32]))
    outer = () if batch is None else (batch,)
    rows = draw(
        st.lists(
            st.lists(st.booleans(), min_size=N, max_size=N).filter(any),
            min_size=max(batch or 1, 1),
            max_size=max(batch or 1, 1),
        )
    )
    mask = np.asarray(rows, np.int8).reshape(outer + (N,))
    seed = draw(st.integers(0, 2**31 - 1))
    features = np.random.default_rng(seed).normal(0, 3, outer + (4,)).astype(np.float32)
    return _time_step(mask, features), seed


@hypothesis.settings(max_examples=60, deadline=None, derandomize=True)
@hypothesis.given(drawn=masked_batches())
def test_no_policy_kind_ever_returns_a_masked_action(exported, drawn):
    time_step, seed = drawn
    mask = time_step.observation["mask"]
    for kind, (tf_policy, loaded, _) in exported.items():
        for name, policy in [("tf policy", tf_policy), *loaded.items()]:
            action = policy.action(time_step, seed=seed).action
            assert np.shape(action) == mask.shape[:-1]
            assert np.all(_allowed(mask, action)), (kind, name, mask, action)


@pytest.mark.parametrize("kind", [k for k, (_, samples) in KINDS.items() if samples])
def test_sampled_kinds_still_draw_among_the_allowed_actions(exported, kind):
    """The mask narrows sampling to the allowed actions; it does not collapse it onto one."""
    mask = np.zeros((400, N), np.int8)
    mask[:, [0, 3, 5]] = 1
    features = np.zeros((400, 4), np.float32)  # one state: the same distribution per row
    tf_policy, loaded, _ = exported[kind]
    for policy in [tf_policy, *loaded.values()]:
        actions = policy.action(_time_step(mask, features), seed=0).action
        counts = np.bincount(actions - LOW, minlength=N)
        assert counts[[1, 2, 4]].sum() == 0
        if kind in ("random", "epsilon_greedy_q"):  # each allowed action has >= 1/6 here
            assert np.all(counts[[0, 3, 5]] > 0), counts


def test_bundles_declare_their_mask(exported):
    for _, loaded, path in exported.values():
        assert runtimes.load_policy(path).manifest["policy"]["action_mask"] == "observation/mask"
        assert all(p.action_mask_input == "observation/mask" for p in loaded.values())


@pytest.mark.parametrize("backend", BACKENDS)
def test_bundles_refuse_an_entry_without_an_allowed_action(exported, backend):
    features = np.zeros((6, 4), np.float32)
    mask = np.ones((6, N), np.int8)
    mask[4] = 0
    for _, loaded, _ in exported.values():
        policy = loaded[backend]
        with pytest.raises(NoAllowedActionError, match=rf"^observation/mask\[4\]: {NO_ACTION}$"):
            policy.action(_time_step(mask, features))
        grid = _time_step(mask.reshape(2, 3, N), features.reshape(2, 3, 4))
        with pytest.raises(NoAllowedActionError, match=re.escape("observation/mask[1, 1]: ")):
            policy.action(grid)
        with pytest.raises(NoAllowedActionError, match=f"^observation/mask: {NO_ACTION}$"):
            policy.action(_time_step(mask[4], features[4]))
        with pytest.raises(NoAllowedActionError, match=re.escape("observation/mask[4]")):
            policy.distribution(_time_step(mask, features))
        # The raw parameters are no action: they are given, as the TF policy's are.
        policy.distribution_params(_time_step(mask, features))
        # A row of zeros straddling two allowed rows is no blocked row.
        straddle = np.zeros((2, N), np.int8)
        straddle[0, 0] = straddle[1, N - 1] = 1
        actions = policy.action(_time_step(straddle, features[:2])).action
        np.testing.assert_array_equal(actions, [LOW, LOW + N - 1])


def test_a_splitter_that_computes_its_mask_exports_with_a_warning(tmp_path):
    from exporters.export import export_policy

    network = QNetwork(FEATURES, ACTIONS, fc_layer_params=(4,))
    policy = greedy_policy.GreedyPolicy(
        q_policy.QPolicy(
            ts.time_step_spec(OBS),
            ACTIONS,
            network,
            observation_and_action_constraint_splitter=lambda o: (o["features"], o["mask"] > 0),
        )
    )
    with pytest.warns(UserWarning, match="the bundle declares no action mask"):
        path = export_policy(policy, tmp_path / "computed", formats=("onnx",))
    loaded = runtimes.load_policy(path)
    assert "action_mask" not in loaded.manifest["policy"] and loaded.action_mask_input is None


def _specs(mask_spec, action_spec=None):
    observation = {"features": array_spec.ArraySpec((4,), np.float32), "mask": mask_spec}
    action_spec = action_spec or array_spec.BoundedArraySpec((), np.int64, LOW, LOW + N - 1)
    time_step_spec = ts.time_step_spec(observation)
    names = ["step_type", "reward", "discount", "observation/features", "observation/mask"]
    return time_step_spec, action_spec, names


@pytest.mark.parametrize(
    ("name", "mask_spec", "action_spec", "message"),
    [
        (
            "observation/nope",
            array_spec.ArraySpec((N,), np.int8),
            None,
            "expected one of the observation inputs",
        ),
        (
            "observation/mask",
            array_spec.ArraySpec((N,), np.float32),
            None,
            r"observation/mask: expected an int or bool mask of shape \(..., 6\)",
        ),
        (
            "observation/mask",
            array_spec.ArraySpec((N + 1,), np.int8),
            None,
            r"got int8 \(7,\)",
        ),
        (
            "observation/mask",
            array_spec.ArraySpec((N,), np.int8),
            array_spec.BoundedArraySpec((2,), np.float32, -1.0, 1.0),
            "expected a single discrete action of one element to mask",
        ),
    ],
)
def test_a_manifest_declaring_an_unusable_mask_is_refused(name, mask_spec, action_spec, message):
    time_step_spec, actions, names = _specs(mask_spec, action_spec)
    with pytest.raises(BundleError, match=f"^where: .*{message}"):
        derivations.MaskCheck.build(name, time_step_spec, actions, names, "where")
