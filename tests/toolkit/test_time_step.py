"""Time steps: constructors, batch inference, specs."""

from __future__ import annotations

import numpy as np
import pytest

from toolkit.specs.array_spec import ArraySpec, BoundedArraySpec
from toolkit.trajectories import PolicyStep, StepType, TimeStep
from toolkit.trajectories import time_step as ts

OBS = ArraySpec((4,), np.float32)


def test_restart_unbatched_without_spec():
    step = ts.restart(np.ones(4, np.float32))
    assert step.step_type == StepType.FIRST and step.step_type.dtype == np.int32
    assert step.reward.shape == () and step.reward.dtype == np.float32
    assert step.discount == 1.0 and step.discount.dtype == np.float32
    assert step.is_first() and not step.is_last()


def test_restart_infers_the_batch_from_the_observation_spec():
    step = ts.restart(np.ones((5, 4), np.float32), observation_spec=OBS)
    assert step.step_type.shape == (5,) and step.reward.shape == (5,)
    nested = {"a": ArraySpec((2, 2), np.float32), "b": ArraySpec((), np.int64)}
    step = ts.restart({"a": np.zeros((3, 7, 2, 2)), "b": np.zeros((3, 7))}, observation_spec=nested)
    assert step.step_type.shape == (3, 7)


def test_restart_takes_an_explicit_batch_size():
    step = ts.restart(np.ones((2, 4)), batch_size=2)
    np.testing.assert_array_equal(step.step_type, [StepType.FIRST] * 2)


def test_restart_with_a_reward_spec():
    step = ts.restart(np.ones((2, 4)), 2, reward_spec=ArraySpec((3,), np.float32))
    assert step.reward.shape == (2, 3)


def test_transition_termination_truncation():
    obs = np.ones((3, 4), np.float32)
    mid = ts.transition(obs, reward=np.array([1.0, 2.0, 3.0]), discount=0.9)
    assert mid.step_type.tolist() == [StepType.MID] * 3
    assert mid.reward.dtype == np.float32 and mid.discount.tolist() == pytest.approx([0.9] * 3)
    end = ts.termination(obs, reward=np.zeros(3))
    assert end.is_last().all() and end.discount.tolist() == [0.0] * 3
    cut = ts.truncation(obs, reward=np.zeros(3))
    assert cut.is_last().all() and cut.discount.tolist() == [1.0] * 3
    single = ts.transition(np.ones(4), reward=1.0)
    assert single.step_type.shape == () and single.discount == 1.0


def test_time_step_spec():
    spec = ts.time_step_spec(OBS)
    assert spec.observation == OBS
    assert spec.step_type == ArraySpec((), np.int32)
    assert spec.discount == BoundedArraySpec((), np.float32, 0.0, 1.0)
    assert ts.time_step_spec(None) is None


def test_step_types_and_policy_step_defaults():
    assert [int(s) for s in StepType] == [0, 1, 2]
    assert PolicyStep(action=1) == PolicyStep(1, (), ())
    assert TimeStep._fields == ("step_type", "reward", "discount", "observation")
