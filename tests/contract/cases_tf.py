"""Contract cases: every TF policy, wrapped in PyTFPolicy (numpy in and out).

Networks get their weights from a seeded numpy Generator, so two ``make()`` calls build
identical policies (the contract compares fresh twins).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tf_keras

from tests.contract.case import PolicyCase
from toolkit.networks.actor_distribution_network import ActorDistributionNetwork
from toolkit.networks.actor_distribution_rnn_network import ActorDistributionRnnNetwork
from toolkit.networks.actor_network import ActorNetwork
from toolkit.networks.q_network import QNetwork
from toolkit.networks.q_rnn_network import QRnnNetwork
from toolkit.policies import (
    actor_policy,
    epsilon_greedy_policy,
    gaussian_policy,
    greedy_policy,
    mixture_policy,
    ou_noise_policy,
    py_tf_policy,
    q_policy,
    random_tf_policy,
)
from toolkit.specs import tensor_spec
from toolkit.trajectories import time_step as ts

_FLAT_OBS = tensor_spec.TensorSpec((4,), tf.float32, name="observation")
_DICT_OBS = {
    "position": tensor_spec.TensorSpec((2,), tf.float32, name="position"),
    "velocity": tensor_spec.BoundedTensorSpec((3,), tf.float64, -1.0, 1.0, name="velocity"),
}
# The TF-Agents policies tutorial's Q-policy spec: three actions -1, 0, 1 in a shape of (1,).
_SEED_DISCRETE = tensor_spec.BoundedTensorSpec((1,), tf.int32, minimum=-1, maximum=1, name="q")
_DISCRETE = tensor_spec.BoundedTensorSpec((), tf.int64, minimum=2, maximum=5, name="move")
_CONTINUOUS = tensor_spec.BoundedTensorSpec(
    (3,), tf.float32, minimum=-1.0, maximum=2.0, name="force"
)


def _set_weights(policy, seed: int):
    """Deterministic weights, so that twins built by make() act identically."""
    rng = np.random.default_rng(seed)
    for variable in policy.variables():
        values = rng.normal(0.0, 0.5, variable.shape.as_list())
        variable.assign(values.astype(variable.dtype.as_numpy_dtype))
    return policy


def _py(policy, seed: int = 0):
    return py_tf_policy.PyTFPolicy(policy, seed=seed)


def _q(observation_spec=_FLAT_OBS):
    spec = ts.time_step_spec(observation_spec)
    network = QNetwork(observation_spec, _SEED_DISCRETE, fc_layer_params=(8,))
    return _set_weights(q_policy.QPolicy(spec, _SEED_DISCRETE, q_network=network), 1)


def _actor():
    spec = ts.time_step_spec(_FLAT_OBS)
    network = ActorNetwork(_FLAT_OBS, _CONTINUOUS, fc_layer_params=(8,))
    return _set_weights(actor_policy.ActorPolicy(spec, _CONTINUOUS, actor_network=network), 2)


def random_discrete():
    spec = ts.time_step_spec(_DICT_OBS)
    return _py(random_tf_policy.RandomTFPolicy(spec, _DISCRETE, seed=3), seed=3)


def random_nested():
    action_spec = {
        "move": _DISCRETE,
        "force": (_CONTINUOUS, tensor_spec.BoundedTensorSpec((1,), tf.uint8, 0, 9, name="gear")),
        "free": tensor_spec.TensorSpec((2,), tf.float64, name="free"),
    }
    policy = random_tf_policy.RandomTFPolicy(
        ts.time_step_spec(_FLAT_OBS), action_spec, emit_log_probability=True
    )
    return _py(policy, seed=4)


_MASKED_OBS = {
    "features": tensor_spec.TensorSpec((2,), tf.float32, name="features"),
    "mask": tensor_spec.BoundedTensorSpec((4,), tf.int32, 0, 1, name="mask"),
}


def _split(observation):
    return observation["features"], observation["mask"]


def random_masked():
    policy = random_tf_policy.RandomTFPolicy(
        ts.time_step_spec(_MASKED_OBS),
        _DISCRETE,
        observation_and_action_constraint_splitter=_split,
    )
    return _py(policy, seed=5)


def masked_time_step(policy, outer_dims, rng):
    """A time step whose masks allow at least one action per entry."""
    from tests.contract.case import sample_time_step

    time_step = sample_time_step(policy.time_step_spec, outer_dims, rng)
    mask = time_step.observation["mask"].copy()
    mask[..., 0] = 1
    return time_step._replace(observation={**time_step.observation, "mask": mask})


def actor_action_network():
    return _py(_actor())


def _seed_action_net():
    """The tutorial's ``action_net(time_steps, action_spec)``, with a tf_keras layer."""
    dense = tf_keras.layers.Dense(_CONTINUOUS.shape.num_elements(), activation="tanh")

    def action_net(time_steps, action_spec):
        actions = dense(time_steps.observation)
        return tf.reshape(actions, [-1, *action_spec.shape.as_list()])

    dense.build((None, 4))
    dense.set_weights([np.full((4, 3), 0.1, np.float32), np.array([0.0, 0.5, -0.5], np.float32)])
    return action_net


def actor_function():
    spec = ts.time_step_spec(_FLAT_OBS)
    return _py(actor_policy.ActorPolicy(spec, _CONTINUOUS, actor_network=_seed_action_net()))


def actor_distribution_normal():
    spec = ts.time_step_spec(_DICT_OBS)
    network = ActorDistributionNetwork(_DICT_OBS, _CONTINUOUS, fc_layer_params=(8,))
    policy = actor_policy.ActorPolicy(spec, _CONTINUOUS, actor_network=network)
    return _py(_set_weights(policy, 6), seed=6)


def actor_distribution_categorical():
    spec = ts.time_step_spec(_FLAT_OBS)
    action_spec = {"move": _DISCRETE, "force": _CONTINUOUS}
    network = ActorDistributionNetwork(_FLAT_OBS, action_spec, fc_layer_params=(8,))
    policy = actor_policy.ActorPolicy(
        spec, action_spec, actor_network=network, emit_log_probability=True
    )
    return _py(_set_weights(policy, 7), seed=7)


def q():
    return _py(_q(), seed=8)


def q_dict_observation():
    return _py(_q(_DICT_OBS), seed=9)


def greedy_q():
    return _py(greedy_policy.GreedyPolicy(_q()))


def epsilon_greedy_q():
    return _py(epsilon_greedy_policy.EpsilonGreedyPolicy(_q(), epsilon=0.3), seed=10)


def mixture():
    spec = ts.time_step_spec(_FLAT_OBS)
    policies = [
        greedy_policy.GreedyPolicy(_q()),
        random_tf_policy.RandomTFPolicy(spec, _SEED_DISCRETE),
    ]
    return _py(mixture_policy.MixturePolicy(policies, [0.5, 0.5]), seed=11)


def gaussian_actor():
    return _py(gaussian_policy.GaussianPolicy(_actor(), scale=0.3), seed=12)


def ou_noise_actor():
    return _py(ou_noise_policy.OUNoisePolicy(_actor(), ou_stddev=0.2, ou_damping=0.15), seed=13)


def q_rnn():
    spec = ts.time_step_spec(_DICT_OBS)
    network = QRnnNetwork(
        _DICT_OBS,
        _SEED_DISCRETE,
        input_fc_layer_params=(8,),
        lstm_size=(5,),
        output_fc_layer_params=(6,),
    )
    policy = q_policy.QPolicy(spec, _SEED_DISCRETE, q_network=network)
    return _set_weights(policy, 14)


def greedy_q_rnn():
    return _py(greedy_policy.GreedyPolicy(q_rnn()))


def actor_distribution_rnn():
    spec = ts.time_step_spec(_FLAT_OBS)
    network = ActorDistributionRnnNetwork(
        _FLAT_OBS,
        _CONTINUOUS,
        input_fc_layer_params=(8,),
        lstm_size=(5,),
        output_fc_layer_params=None,
    )
    policy = actor_policy.ActorPolicy(spec, _CONTINUOUS, actor_network=network)
    return _py(_set_weights(policy, 15), seed=15)


def ou_noise_rnn_greedy():
    """OU noise over a stateful policy: the state nests both."""
    spec = ts.time_step_spec(_FLAT_OBS)
    network = ActorDistributionRnnNetwork(
        _FLAT_OBS,
        _CONTINUOUS,
        input_fc_layer_params=(8,),
        lstm_size=(5,),
        output_fc_layer_params=None,
    )
    greedy = greedy_policy.GreedyPolicy(
        _set_weights(actor_policy.ActorPolicy(spec, _CONTINUOUS, actor_network=network), 16)
    )
    return _py(ou_noise_policy.OUNoisePolicy(greedy, ou_stddev=0.1, ou_damping=0.3), seed=16)


CASES = [
    PolicyCase("tf/random/discrete_dict_obs", random_discrete, deterministic=False),
    PolicyCase("tf/random/nested_actions", random_nested, deterministic=False),
    PolicyCase("tf/random/masked", random_masked, deterministic=False, time_step=masked_time_step),
    PolicyCase("tf/actor/action_network", actor_action_network, deterministic=True),
    PolicyCase("tf/actor/tutorial_function", actor_function, deterministic=True),
    PolicyCase("tf/actor/normal_dict_obs", actor_distribution_normal, deterministic=False),
    PolicyCase("tf/actor/categorical_nested", actor_distribution_categorical, deterministic=False),
    PolicyCase("tf/q", q, deterministic=False),
    PolicyCase("tf/q/dict_obs", q_dict_observation, deterministic=False),
    PolicyCase("tf/greedy_q", greedy_q, deterministic=True),
    PolicyCase("tf/epsilon_greedy_q", epsilon_greedy_q, deterministic=False),
    PolicyCase("tf/mixture", mixture, deterministic=False),
    PolicyCase("tf/gaussian_actor", gaussian_actor, deterministic=False),
    PolicyCase("tf/ou_noise_actor", ou_noise_actor, deterministic=False),
    PolicyCase("tf/q_rnn", lambda: _py(q_rnn(), seed=14), deterministic=False),
    PolicyCase("tf/greedy_q_rnn", greedy_q_rnn, deterministic=True),
    PolicyCase("tf/actor_distribution_rnn", actor_distribution_rnn, deterministic=False),
    PolicyCase("tf/ou_noise_rnn_greedy", ou_noise_rnn_greedy, deterministic=False),
]
