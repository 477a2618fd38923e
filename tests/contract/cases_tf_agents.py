"""Contract cases: TF-Agents saved policies (tests/data reference saves) through TFAgentsPolicy.

Each case loads its SavedModel once; ``make()`` wraps that one adapter in a fresh
PyTFPolicy (the contract never changes variables, so twins may share it; ``copy()``
loads the SavedModel again).
"""

from __future__ import annotations

import functools

import pytest

from tests.contract.case import PolicyCase
from tests.tf_agents_saved import saved_policy


@functools.cache
def _adapter(case: str):
    from exporters.tf_agents.policy import TFAgentsPolicy

    return TFAgentsPolicy(saved_policy(case))


def _make(case: str, seed: int):
    from toolkit.policies import py_tf_policy

    return lambda: py_tf_policy.PyTFPolicy(_adapter(case), seed=seed)


# Slow: each fresh PyTFPolicy traces the restored TF-Agents functions again (~25 s in all).
_MARKS = (pytest.mark.slow,)

CASES = [
    PolicyCase("tf_agents/q_greedy", _make("q_greedy", 0), deterministic=True, marks=_MARKS),
    PolicyCase(
        "tf_agents/actor_normal_stochastic",
        _make("actor_normal_stochastic", 1),
        deterministic=False,
        marks=_MARKS,
    ),
    PolicyCase("tf_agents/nested_obs", _make("nested_obs", 2), deterministic=True, marks=_MARKS),
    PolicyCase("tf_agents/q_rnn", _make("q_rnn", 3), deterministic=True, marks=_MARKS),
]
