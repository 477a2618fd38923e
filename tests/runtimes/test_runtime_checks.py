"""BundlePolicy keeps PyPolicy's contract: the public action validates and checks outputs.

The fast path (exactly-typed inputs) and the general path both end in the output
check; a graph that returned an action outside the spec is reported, not passed on.
The graph is replaced by a stand-in returning chosen outputs: only the checks are
under test.
"""

from __future__ import annotations

import numpy as np
import pytest

import runtimes
from runtimes.policy import BundlePolicy
from tests.contract import cases_runtime as cr
from tests.contract.case import sample_time_step
from toolkit.errors import SpecMismatchError
from toolkit.policies.py_policy import PyPolicy


def _exact_time_step(policy, outer):
    return sample_time_step(policy.time_step_spec, outer, np.random.default_rng(0))


def _graph_returns(policy, action):
    # A stand-in for the graph: what the real graph proves of its action (its own clip,
    # OnnxPolicy._prove_clips) does not hold of it.
    policy._graph_clips = [None] * len(policy._action_checks)
    real_run = policy._run

    def run(arrays, unbatched, fetch):
        outputs = real_run(arrays, unbatched, fetch)
        outputs[0] = np.asarray(action)
        return outputs

    policy._run = run


def test_bundle_policy_keeps_the_public_action_of_py_policy():
    assert "action" not in vars(BundlePolicy)
    assert BundlePolicy.action is PyPolicy.action


@pytest.mark.parametrize("outer", [(), (1,), (3,)])
def test_an_action_out_of_bounds_is_reported_on_the_fast_path(outer):
    policy = cr.load("greedy_q", "onnx")  # int32 actions of shape (1,) in [-1, 1]
    spec = policy.action_spec
    time_step = _exact_time_step(policy, outer)
    assert policy.action(time_step).action.shape == outer + spec.shape  # in bounds: passes
    batch = outer[0] if outer else 1
    _graph_returns(policy, np.full((batch, *spec.shape), 7, spec.dtype))
    with pytest.raises(SpecMismatchError, match=r"action: expected values in \[-1, 1\], got 7"):
        policy.action(time_step)


def test_a_wrong_dtype_or_shape_from_the_graph_is_reported():
    policy = cr.load("greedy_q", "onnx")
    time_step = _exact_time_step(policy, (2,))
    _graph_returns(policy, np.zeros((2, 1), np.float32))
    with pytest.raises(SpecMismatchError, match="action: expected dtype int32, got float32"):
        policy.action(time_step)
    _graph_returns(policy, np.zeros((3, 1), np.int32))
    with pytest.raises(SpecMismatchError, match=r"action: expected shape \(2, 1\), got \(3, 1\)"):
        policy.action(time_step)


def test_float_bounds_and_nan_on_both_sizes_of_the_bounds_check():
    policy = cr.load("actor/action_network", "onnx")
    spec = policy.action_spec
    for outer in ((1,), (40,)):  # a few elements are compared in Python, many in numpy
        time_step = _exact_time_step(policy, outer)
        inside = np.broadcast_to(spec.maximum, outer + spec.shape).astype(spec.dtype)
        _graph_returns(policy, inside)
        np.testing.assert_array_equal(policy.action(time_step).action, inside)
        nan = inside.copy()
        nan[..., 0] = np.nan  # NaN compares false both ways: the full check lets it pass
        _graph_returns(policy, nan)
        assert np.isnan(policy.action(time_step).action[..., 0]).all()
        beyond = inside.copy()
        beyond[-1, -1] = np.asarray(spec.maximum).max() + 1
        _graph_returns(policy, beyond)
        with pytest.raises(SpecMismatchError, match="action: expected values in"):
            policy.action(time_step)


def test_outputs_are_not_checked_without_validate_args():
    policy = runtimes.load_policy(cr.bundle("greedy_q"), validate_args=False)
    time_step = _exact_time_step(policy, (1,))
    _graph_returns(policy, np.full((1, 1), 7, policy.action_spec.dtype))
    assert policy.action(time_step).action.tolist() == [[7]]


def test_state_out_of_its_spec_is_reported():
    policy = cr.load("rnn/greedy_q", "onnx")
    time_step = _exact_time_step(policy, (2,))
    state = policy.get_initial_state(2)
    real_run = policy._run
    names = policy._fetch

    def run(arrays, unbatched, fetch):
        outputs = real_run(arrays, unbatched, fetch)
        index = next(i for i, n in enumerate(names) if n.startswith("next_state"))
        outputs[index] = outputs[index].astype(np.float64)
        return outputs

    policy._run = run
    with pytest.raises(SpecMismatchError, match="state.*expected dtype float32, got float64"):
        policy.action(time_step, state)
