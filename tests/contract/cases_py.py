"""Contract cases: the TF-free Python policies."""

from __future__ import annotations

import numpy as np

from tests.contract.case import PolicyCase
from toolkit.policies import random_py_policy, scripted_py_policy
from toolkit.specs import array_spec
from toolkit.trajectories import time_step as ts

_OBS = {
    "position": array_spec.ArraySpec((2,), np.float32, name="position"),
    "velocity": array_spec.BoundedArraySpec((3,), np.float64, -1.0, 1.0, name="velocity"),
}
_DISCRETE = array_spec.BoundedArraySpec((), np.int64, minimum=-1, maximum=1, name="move")
_CONTINUOUS = array_spec.BoundedArraySpec((2,), np.float32, -2.0, 3.0, name="force")


def _random_discrete():
    return random_py_policy.RandomPyPolicy(ts.time_step_spec(_OBS), _DISCRETE, seed=3)


def _random_nested():
    action_spec = {
        "move": _DISCRETE,
        "force": (_CONTINUOUS, array_spec.BoundedArraySpec((1,), np.uint8, 0, 9)),
    }
    return random_py_policy.RandomPyPolicy(ts.time_step_spec(_OBS), action_spec, seed=4)


def _random_no_spec():
    return random_py_policy.RandomPyPolicy(None, _CONTINUOUS, seed=5)


def _scripted():
    script = [
        (2, np.array([1, -1], np.int32)),
        (0, np.array([0, 0], np.int32)),
        (3, np.array([4, 2], np.int32)),
    ]
    spec = array_spec.BoundedArraySpec((2,), np.int32, -5, 5, name="script")
    return scripted_py_policy.ScriptedPyPolicy(ts.time_step_spec(_OBS), spec, script, loop=True)


CASES = [
    PolicyCase("random_py/discrete", _random_discrete, deterministic=False),
    PolicyCase("random_py/nested", _random_nested, deterministic=False),
    PolicyCase("random_py/no_time_step_spec", _random_no_spec, deterministic=False, batched=False),
    PolicyCase("scripted_py", _scripted, deterministic=True),
]
