"""Factories for the CLI tests: ``policy-toolkit export tests.cli_factories:<name>``."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from tests import run_cache

CARTPOLE_OBSERVATION = (4,)


def _cartpole_specs():
    from toolkit.environments.gym_adapter import GymEnvironment
    from toolkit.specs import tensor_spec

    with GymEnvironment("CartPole-v1") as env:
        return tensor_spec.from_spec(env.time_step_spec()), tensor_spec.from_spec(env.action_spec())


def _greedy_q(layers: tuple[int, ...], seed: int):
    from toolkit.networks.q_network import QNetwork
    from toolkit.policies.greedy_policy import GreedyPolicy
    from toolkit.policies.q_policy import QPolicy

    time_step_spec, action_spec = _cartpole_specs()
    network = QNetwork(time_step_spec.observation, action_spec, fc_layer_params=layers)
    policy = GreedyPolicy(QPolicy(time_step_spec, action_spec, q_network=network))
    rng = np.random.default_rng(seed)
    for variable in policy.variables():
        variable.assign(rng.normal(0.0, 0.5, variable.shape.as_list()).astype(np.float32))
    return policy


def small_cartpole(seed: int = 7):
    """A greedy Q policy for CartPole-v1 with one layer of 8 units and seeded weights."""
    return _greedy_q((8,), seed)


def cartpole_100_40(seed: int = 7):
    """Like the demo's network (100, 50), but with 40 units in the second layer."""
    return _greedy_q((100, 40), seed)


def not_a_policy():
    return [1, 2, 3]


def python_policy():
    """A Python policy: it has no graph, so it cannot be exported."""
    from toolkit.policies.random_py_policy import RandomPyPolicy
    from toolkit.specs import array_spec
    from toolkit.trajectories import time_step as ts

    spec = array_spec.BoundedArraySpec((), np.int64, 0, 1)
    return RandomPyPolicy(ts.time_step_spec(array_spec.ArraySpec((4,), np.float32)), spec)


def broken():
    raise RuntimeError("the factory needs a GPU")


NOT_CALLABLE = 42


@functools.cache
def cartpole_bundle() -> Path:
    """A bundle (both formats, train step 7) of ``small_cartpole()``, exported once per test
    run (by the first of ``make test``'s workers that asks, tests/run_cache.py: the CLI,
    quantize, install and extension files that read it land on both workers).

    Tests that change a bundle copy it first.
    """
    from exporters import export_policy

    return run_cache.shared(
        "cli-cartpole",
        lambda to: export_policy(small_cartpole(), to, train_step=7, metadata={"k": "v"}),
    )
