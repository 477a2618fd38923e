"""The export factory of the CartPole demo: the greedy DQN policy that training builds.

    policy-toolkit export examples.cartpole_factory:policy out/cartpole \\
        --checkpoint runs/cartpole/policy_checkpoints

``policy()`` builds the same network as ``examples/train_cartpole.py`` (a QNetwork with
layers of 100 and 50 units over CartPole-v1's specs) with fresh weights; ``export
--checkpoint`` then restores the trained weights into it. A factory is how any policy
gets exported: a module-level callable, taking no arguments, that returns a TF policy.
"""

from __future__ import annotations

from typing import Any

ENV_ID = "CartPole-v1"
FC_LAYER_PARAMS = (100, 50)  # as in examples/train_cartpole.py


def policy() -> Any:
    """A greedy Q policy for CartPole-v1, untrained (the checkpoint brings the weights)."""
    from toolkit.environments.gym_adapter import GymEnvironment
    from toolkit.networks.q_network import QNetwork
    from toolkit.policies.greedy_policy import GreedyPolicy
    from toolkit.policies.q_policy import QPolicy
    from toolkit.specs import tensor_spec

    with GymEnvironment(ENV_ID) as env:
        time_step_spec = tensor_spec.from_spec(env.time_step_spec())
        action_spec = tensor_spec.from_spec(env.action_spec())
    network = QNetwork(time_step_spec.observation, action_spec, fc_layer_params=FC_LAYER_PARAMS)
    return GreedyPolicy(QPolicy(time_step_spec, action_spec, q_network=network))
