"""The runtime policies' public methods other packages use (the Ray actors of
toolkit.distributed): ``apply_weights`` and ``set_action_description``.

Bundles come from tests.contract.cases_runtime (exported once per process). The
expected actions of new weights come from the bundle's graph edited with the ``onnx``
package and run by onnxruntime directly, not through the method under test.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

import runtimes
from tests.contract import cases_runtime as cr
from tests.contract.case import sample_time_step
from toolkit.errors import PolicyError, SpecMismatchError, UnsupportedError


def _weights(policy):
    """``{initializer name: its weights-map entry}`` for the weights of a bundle's graph."""
    info = policy.manifest["onnx"]
    pairs = zip(info["initializers"], info["weights"]["initializers"], strict=True)
    return {name: entry for name, entry in pairs if entry is not None}


def _new_values(policy, seed):
    rng = np.random.default_rng(seed)
    return {
        name: rng.normal(0.0, 0.5, entry["shape"]).astype(entry["dtype"])
        for name, entry in _weights(policy).items()
    }


def _edited_graph_actions(policy, values, time_step):
    """The action output of the bundle's graph with ``values`` written into it."""
    import onnx
    import onnx.numpy_helper
    import onnxruntime as ort

    model = onnx.load(str(policy.bundle_dir / policy.manifest["onnx"]["file"]))
    for init in model.graph.initializer:
        if init.name in values:
            init.CopyFrom(onnx.numpy_helper.from_array(values[init.name], init.name))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = dict(zip(("step_type", "reward", "discount", "observation"), time_step, strict=True))
    (action,) = session.run(["action"], feed)
    return action


def test_apply_weights_runs_the_graph_with_the_new_weights():
    policy = runtimes.load_policy(cr.bundle("greedy_q"), "onnx")
    time_step = sample_time_step(policy.time_step_spec, (64,), np.random.default_rng(0))
    before = policy.action(time_step).action
    values = _new_values(policy, seed=1)
    expected = _edited_graph_actions(policy, values, time_step)
    assert not np.array_equal(expected, before), "the new weights must change some actions"

    policy.apply_weights(values, train_step=12)
    np.testing.assert_array_equal(policy.action(time_step).action, expected)
    assert policy.train_step == 12
    policy.apply_weights(values)  # no step: unknown
    assert policy.train_step is None


def test_apply_weights_refuses_what_is_not_a_weight_of_the_graph_and_changes_nothing():
    policy = runtimes.load_policy(cr.bundle("greedy_q"), "onnx")
    time_step = sample_time_step(policy.time_step_spec, (16,), np.random.default_rng(2))
    before = policy.action(time_step).action
    values = _new_values(policy, seed=3)
    name, value = next(iter(values.items()))
    wrong = value.reshape(-1)[:-1]
    with pytest.raises(SpecMismatchError, match=rf"apply_weights/{name}: expected shape"):
        policy.apply_weights({**values, name: wrong}, train_step=1)
    with pytest.raises(SpecMismatchError, match=r"got shape .* float64"):
        policy.apply_weights({**values, name: value.astype(np.float64)})
    with pytest.raises(
        SpecMismatchError,
        match=rf"apply_weights: expected every weight of this graph \({len(values)}\), got "
        rf"{len(values) - 1}, without \['{name}'\]",
    ):
        policy.apply_weights({n: v for n, v in values.items() if n != name})
    with pytest.raises(
        SpecMismatchError, match="apply_weights/nope: expected a weight of this graph, got no"
    ):
        policy.apply_weights({"nope": value})
    constants = [n for n, e in zip(*_pairs(policy), strict=True) if e is None]
    if constants:
        with pytest.raises(SpecMismatchError, match="got a constant of that name"):
            policy.apply_weights({constants[0]: np.zeros(1, np.float32)})
    with pytest.raises(SpecMismatchError, match="train_step: expected an int or None, got True"):
        policy.apply_weights(values, train_step=True)
    np.testing.assert_array_equal(policy.action(time_step).action, before)
    assert policy.train_step == 7


def _pairs(policy):
    info = policy.manifest["onnx"]
    return info["initializers"], info["weights"]["initializers"]


def test_litert_policies_say_they_cannot_take_weights_from_arrays():
    policy = runtimes.load_policy(cr.bundle("greedy_q"), "litert")
    with pytest.raises(UnsupportedError, match="the litert backend cannot take weights"):
        policy.apply_weights({})


def _greedy_actions(policy, time_step):
    return policy.distribution_params(time_step).action["greedy"].mode()


def test_set_action_description_takes_a_new_epsilon():
    policy = runtimes.load_policy(cr.bundle("epsilon_greedy_q"), "onnx", seed=0)
    time_step = sample_time_step(policy.time_step_spec, (600,), np.random.default_rng(4))
    greedy = _greedy_actions(policy, time_step)
    description = policy.action_description

    policy.set_action_description({**description, "epsilon": 0.0})
    np.testing.assert_array_equal(policy.action(time_step).action, greedy)
    assert policy.action_description["epsilon"] == 0.0

    policy.set_action_description({**description, "epsilon": 1.0})
    agree = np.mean(np.all(policy.action(time_step).action == greedy, axis=-1))
    # Three actions drawn uniformly: about a third agree with the greedy one.
    assert 0.2 < agree < 0.5, agree


def test_set_action_description_refuses_another_kind_or_a_bad_field_and_changes_nothing():
    policy = runtimes.load_policy(cr.bundle("epsilon_greedy_q"), "onnx", seed=0)
    description = policy.action_description
    with pytest.raises(
        PolicyError, match="expected a 'epsilon_greedy' description .* got 'sample'"
    ):
        policy.set_action_description(description["greedy"])
    with pytest.raises(PolicyError, match=r"epsilon in \[0, 1\], got 1.5"):
        policy.set_action_description({**description, "epsilon": 1.5})
    broken = copy.deepcopy(description)
    del broken["random"]
    with pytest.raises(PolicyError, match="missing field 'random'"):
        policy.set_action_description(broken)
    emit = not description.get("emit_log_probability", False)
    with pytest.raises(PolicyError, match=f"got 'epsilon_greedy' .emit_log_probability {emit}"):
        policy.set_action_description({**description, "emit_log_probability": emit})
    assert policy.action_description == description
