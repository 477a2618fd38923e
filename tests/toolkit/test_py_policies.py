"""RandomPyPolicy and ScriptedPyPolicy specifics, and PyPolicy input validation."""

from __future__ import annotations

import numpy as np
import pytest

from toolkit.errors import (
    ScriptExhaustedError,
    SpecMismatchError,
    StructureError,
    UnsupportedError,
)
from toolkit.policies import random_py_policy, scripted_py_policy
from toolkit.specs.array_spec import ArraySpec, BoundedArraySpec
from toolkit.trajectories import time_step as ts

ACTION = BoundedArraySpec((2,), np.int32, -10, 10)
SEED_SCRIPT = [
    (1, np.array([5, 2], dtype=np.int32)),
    (0, np.array([0, 0], dtype=np.int32)),
    (2, np.array([1, 2], dtype=np.int32)),
    (1, np.array([3, 4], dtype=np.int32)),
]


class TestScripted:
    def test_the_tutorial_example_plays_the_script(self):
        policy = scripted_py_policy.ScriptedPyPolicy(None, ACTION, SEED_SCRIPT)
        state = policy.get_initial_state()
        actions = []
        for _ in range(4):
            step = policy.action(None, state)
            actions.append(step.action.tolist())
            state = step.state
        # The zero-repeat entry is skipped; [1, 2] plays twice.
        assert actions == [[5, 2], [1, 2], [1, 2], [3, 4]]
        restarted = policy.action(None, policy.get_initial_state())
        assert restarted.action.tolist() == [5, 2]

    def test_running_out_raises(self):
        policy = scripted_py_policy.ScriptedPyPolicy(None, ACTION, SEED_SCRIPT)
        state = policy.get_initial_state()
        for _ in range(4):
            state = policy.action(None, state).state
        with pytest.raises(
            ScriptExhaustedError, match="the action script ran out: it holds 4 actions in 4 entries"
        ):
            policy.action(None, state)

    def test_loop_starts_over(self):
        policy = scripted_py_policy.ScriptedPyPolicy(None, ACTION, SEED_SCRIPT, loop=True)
        state = policy.get_initial_state()
        actions = []
        for _ in range(6):
            step = policy.action(None, state)
            actions.append(step.action.tolist())
            state = step.state
        assert actions == [[5, 2], [1, 2], [1, 2], [3, 4], [5, 2], [1, 2]]

    def test_batched_state_advances_each_entry(self):
        spec = ts.time_step_spec(ArraySpec((1,), np.float32))
        policy = scripted_py_policy.ScriptedPyPolicy(spec, ACTION, SEED_SCRIPT)
        state = policy.get_initial_state(batch_size=2)
        state[1] = [2, 1]  # the second entry is further along
        step = policy.action(ts.restart(np.zeros((2, 1), np.float32), 2), state)
        assert step.action.tolist() == [[5, 2], [1, 2]]
        assert step.state.tolist() == [[0, 1], [2, 2]]

    def test_python_lists_are_converted_safely(self):
        policy = scripted_py_policy.ScriptedPyPolicy(None, ACTION, [(1, [1, 2])])
        assert policy.action_script[0][1].dtype == np.int32

    @pytest.mark.parametrize(
        ("script", "message"),
        [
            (
                [(1, np.array([1, 2, 3], np.int32))],
                r"action_script\[0\]: expected shape \(2,\), got \(3,\)",
            ),
            (
                [(1, np.array([1.5, 2.0]))],
                r"action_script\[0\]: expected dtype int32, got float64 "
                r"\(unsafe conversion refused\)",
            ),
            (
                [(1, np.array([1, 2], np.int32)), (2, np.array([0, 11], np.int32))],
                r"action_script\[1\]: expected values in \[-10, 10\], got 11 at index \(1,\)",
            ),
            (
                [(-1, np.array([1, 2], np.int32))],
                r"action_script\[0\]: expected num_repeats as a non-negative int, got -1",
            ),
            ([(1,)], r"action_script\[0\]: expected a \(num_repeats, action\) pair, got \(1,\)"),
        ],
    )
    def test_bad_scripts_fail_at_construction(self, script, message):
        with pytest.raises(SpecMismatchError, match=message):
            scripted_py_policy.ScriptedPyPolicy(None, ACTION, script)

    def test_nested_action_script_names_the_leaf(self):
        spec = {"arm": ACTION, "grip": BoundedArraySpec((), np.float32, 0.0, 1.0)}
        with pytest.raises(
            SpecMismatchError,
            match=r"action_script\[0\]/grip: expected values in \[0.0, 1.0\], got 2.0",
        ):
            scripted_py_policy.ScriptedPyPolicy(
                None, spec, [(1, {"arm": [0, 0], "grip": np.float32(2.0)})]
            )

    def test_update_adopts_the_other_script(self):
        policy = scripted_py_policy.ScriptedPyPolicy(None, ACTION, SEED_SCRIPT)
        other = scripted_py_policy.ScriptedPyPolicy(None, ACTION, [(1, [9, 9])])
        policy.update(other)
        assert policy.action(None, policy.get_initial_state()).action.tolist() == [9, 9]

    def test_missing_state_is_refused(self):
        policy = scripted_py_policy.ScriptedPyPolicy(None, ACTION, SEED_SCRIPT)
        with pytest.raises(
            StructureError, match=r"policy_state: expected a state like .* got no state"
        ):
            policy.action(None)


class TestRandom:
    def test_tutorial_example_without_time_step_spec(self):
        policy = random_py_policy.RandomPyPolicy(time_step_spec=None, action_spec=ACTION)
        step = policy.action(None)
        assert step.action.shape == (2,) and step.action.dtype == np.int32
        assert np.all(np.abs(step.action) <= 10)

    def test_all_values_drawn_uniformly(self):
        spec = BoundedArraySpec((), np.int32, -1, 1)
        policy = random_py_policy.RandomPyPolicy(None, spec, seed=0, outer_dims=(3000,))
        counts = np.bincount(policy.action(None).action + 1, minlength=3)
        # Each action has probability 1/3: 1000 expected, sd ~26.
        assert np.all(np.abs(counts - 1000) < 100), counts

    def test_action_mask(self):
        obs_spec = {"obs": ArraySpec((2,), np.float32), "mask": ArraySpec((4,), np.int32)}
        spec = BoundedArraySpec((), np.int64, 0, 3)
        policy = random_py_policy.RandomPyPolicy(
            ts.time_step_spec(obs_spec),
            spec,
            seed=1,
            observation_and_action_constraint_splitter=lambda o: (o["obs"], o["mask"]),
        )
        mask = np.array([[0, 1, 0, 1]] * 500, np.int32)
        step = policy.action(ts.restart({"obs": np.zeros((500, 2)), "mask": mask}, 500))
        assert set(np.unique(step.action).tolist()) == {1, 3}

    def test_batch_follows_the_time_step(self):
        spec = ts.time_step_spec(ArraySpec((3,), np.float32))
        policy = random_py_policy.RandomPyPolicy(spec, ACTION, seed=2)
        step = policy.action(ts.restart(np.zeros((7, 3), np.float32), 7))
        assert step.action.shape == (7, 2)

    def test_float64_observations_into_a_float32_spec(self):
        spec = ts.time_step_spec(ArraySpec((3,), np.float32))
        policy = random_py_policy.RandomPyPolicy(spec, ACTION)
        policy.action(ts.restart(np.zeros(3, np.float64)))

    def test_wrong_observation_is_refused_by_name(self):
        obs = {"velocity": ArraySpec((3,), np.float32), "position": ArraySpec((2,), np.float32)}
        policy = random_py_policy.RandomPyPolicy(ts.time_step_spec(obs), ACTION)
        bad = ts.restart({"velocity": np.zeros(4, np.float32), "position": np.zeros(2, np.float32)})
        with pytest.raises(
            SpecMismatchError, match=r"^observation/velocity: expected shape \(3,\), got \(4,\)$"
        ):
            policy.action(bad)
        bad = ts.restart({"velocity": np.zeros(3, np.int32), "position": np.zeros(2, np.complex64)})
        with pytest.raises(
            SpecMismatchError, match="observation/position: expected dtype float32, got complex64"
        ):
            policy.action(bad)
        with pytest.raises(
            StructureError,
            match=r"observation: expected keys \['position', 'velocity'\], "
            r"got missing \['position'\]",
        ):
            policy.action(ts.restart({"velocity": np.zeros(3, np.float32)}))

    def test_validation_can_be_switched_off(self):
        spec = ts.time_step_spec(ArraySpec((3,), np.float32))
        policy = random_py_policy.RandomPyPolicy(spec, ACTION, validate_args=False)
        policy.action(ts.restart(np.zeros(5, np.float32)))  # wrong shape, unchecked

    def test_no_distribution_for_python_policies(self):
        policy = random_py_policy.RandomPyPolicy(None, ACTION)
        with pytest.raises(UnsupportedError, match="RandomPyPolicy has no distribution"):
            policy.distribution(None)

    def test_update_needs_equal_specs(self):
        policy = random_py_policy.RandomPyPolicy(None, ACTION)
        other = random_py_policy.RandomPyPolicy(None, ACTION.replace(maximum=3))
        with pytest.raises(
            SpecMismatchError, match=r"action_spec: expected .* \(update\(\) needs equal specs\)"
        ):
            policy.update(other)
