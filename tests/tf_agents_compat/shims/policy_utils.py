"""Stands for ``tf_agents.policies.utils`` (bandit policy utilities) in TF-Agents' rewritten
tests (our code). The epsilon-greedy tests' setUp builds a bandit policy-type spec that only
their deselected bandit tests use; it is given here so the others run. Anything else is a
bandit utility this project does not mirror."""

from __future__ import annotations

import tensorflow as tf

from toolkit.specs import tensor_spec

#: TF-Agents' BanditPolicyType values run from UNKNOWN = 0 to FALCON = 4.
_BANDIT_POLICY_TYPES = (0, 4)


def create_bandit_policy_type_tensor_spec(shape):
    """A bounded int32 spec over the bandit policy types."""
    return tensor_spec.BoundedTensorSpec(shape, tf.int32, *_BANDIT_POLICY_TYPES)


def __getattr__(name: str):
    raise AttributeError(
        f"{name}: a bandit utility this project does not mirror "
        "(tests/tf_agents_compat/scope.py deselects the tests that use it)"
    )
