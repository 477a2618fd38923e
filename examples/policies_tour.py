"""The TF-Agents policies tutorial's policy examples, in TF2 form.

Run: ``python examples/policies_tour.py``. Each section mirrors one example of
``policies_tutorial.md`` and prints what it printed.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp
import tf_keras

from toolkit.errors import SpecMismatchError
from toolkit.networks import network
from toolkit.policies import (
    actor_policy,
    epsilon_greedy_policy,
    greedy_policy,
    mixture_policy,
    ou_noise_policy,
    py_tf_policy,
    q_policy,
    random_py_policy,
    random_tf_policy,
    scripted_py_policy,
)
from toolkit.specs import array_spec, tensor_spec
from toolkit.trajectories import time_step as ts

tfd = tfp.distributions


def python_random_policy() -> None:
    """Python policies, example 1: RandomPyPolicy ignores the time step."""
    print("== Random Python policy ==")
    action_spec = array_spec.BoundedArraySpec((2,), np.int32, -10, 10)
    # The tutorial asks whether `my` can go; it can.
    policy = random_py_policy.RandomPyPolicy(time_step_spec=None, action_spec=action_spec)
    time_step = None
    print(policy.action(time_step))
    print(policy.action(time_step))


def python_scripted_policy() -> None:
    """Python policies, example 2: ScriptedPyPolicy plays back (num_repeats, action)."""
    print("== Scripted Python policy ==")
    action_spec = array_spec.BoundedArraySpec((2,), np.int32, -10, 10)
    action_script = [
        (1, np.array([5, 2], dtype=np.int32)),
        (0, np.array([0, 0], dtype=np.int32)),  # zero repeats: skipped
        (2, np.array([1, 2], dtype=np.int32)),
        (1, np.array([3, 4], dtype=np.int32)),
    ]
    policy = scripted_py_policy.ScriptedPyPolicy(
        time_step_spec=None, action_spec=action_spec, action_script=action_script
    )
    policy_state = policy.get_initial_state()
    time_step = None
    print("Executing scripted policy...")
    action_step = policy.action(time_step, policy_state)
    print(action_step)
    action_step = policy.action(time_step, action_step.state)
    print(action_step)
    action_step = policy.action(time_step, action_step.state)
    print(action_step)
    print("Resetting my_scripted_py_policy...")
    policy_state = policy.get_initial_state()
    action_step = policy.action(time_step, policy_state)
    print(action_step)


# --- TensorFlow policies ----------------------------------------------------------------
# TF2 runs eagerly: where the tutorial built a graph and called ``sess.run`` twice, we call
# ``action()`` twice. Network weights are seeded so that the printed numbers repeat.


def tf_random_policy() -> random_tf_policy.RandomTFPolicy:
    """TF policies, example 1: RandomTFPolicy (an unbatched time step, as in the tutorial)."""
    print("== Random TF policy ==")
    action_spec = tensor_spec.BoundedTensorSpec((2,), tf.float32, minimum=-1, maximum=3)
    observation_spec = tensor_spec.TensorSpec((2,), tf.float32)
    time_step_spec = ts.time_step_spec(observation_spec)
    my_random_tf_policy = random_tf_policy.RandomTFPolicy(
        action_spec=action_spec, time_step_spec=time_step_spec, seed=0
    )
    observation = tf.ones(time_step_spec.observation.shape)
    time_step = ts.restart(observation)
    # Generate an action, then a different one.
    print(my_random_tf_policy.action(time_step))
    print(my_random_tf_policy.action(time_step))
    return my_random_tf_policy


def _actor_setup():
    observation_spec = tensor_spec.TensorSpec((4,), tf.float32)
    time_step_spec = ts.time_step_spec(observation_spec)
    action_spec = tensor_spec.BoundedTensorSpec((3,), tf.float32, minimum=-1, maximum=1)
    batch_size = 2
    observations = tf.ones([2, *time_step_spec.observation.shape.as_list()])
    # The tutorial asked why restart() could not infer the batch size: it can, from the spec.
    time_step = ts.restart(observations, observation_spec=observation_spec)
    assert time_step.step_type.shape == (batch_size,)
    return time_step_spec, action_spec, time_step


def tf_actor_policy_with_action_network() -> None:
    """TF policies, example 2a: an actor policy over a network that returns actions."""
    print("== Actor policy with an action network ==")
    # slim.fully_connected is gone; a tf_keras layer made once holds the variables.
    dense = tf_keras.layers.Dense(
        3, activation="tanh", kernel_initializer=tf_keras.initializers.GlorotUniform(seed=1)
    )

    def action_net(time_steps, action_spec):
        actions = dense(time_steps.observation)
        actions = tf.reshape(actions, [-1, *action_spec.shape.as_list()])
        # tanh keeps actions in [-1, 1], the range of this action spec.
        return actions

    time_step_spec, action_spec, time_step = _actor_setup()
    my_actor_policy = actor_policy.ActorPolicy(
        time_step_spec=time_step_spec, action_spec=action_spec, actor_network=action_net
    )
    distribution_step = my_actor_policy.distribution(time_step)
    print("Action distribution:")
    print(distribution_step)
    print("Action:")
    print(my_actor_policy.action(time_step))
    print("Another action (same because it is deterministic):")
    print(my_actor_policy.action(time_step))


def tf_actor_policy_with_distribution_network() -> None:
    """TF policies, example 2b: an actor policy over a network that returns a Normal."""
    print("== Actor policy with an action distribution network ==")
    dense = tf_keras.layers.Dense(
        3, activation="tanh", kernel_initializer=tf_keras.initializers.GlorotUniform(seed=2)
    )

    def action_distribution_net(time_steps, action_spec):
        action_means = dense(time_steps.observation)
        action_means = tf.reshape(action_means, [-1, *action_spec.shape.as_list()])
        action_stds = tf.ones_like(action_means)
        return tfd.Normal(action_means, action_stds)

    time_step_spec, action_spec, time_step = _actor_setup()
    my_actor_policy = actor_policy.ActorPolicy(
        time_step_spec=time_step_spec,
        action_spec=action_spec,
        actor_network=action_distribution_net,
        seed=3,
    )
    distribution_step = my_actor_policy.distribution(time_step)
    print("Action distribution:")
    print(distribution_step)
    print("Action:")
    print(my_actor_policy.action(time_step))
    print("Another action (different, but sampled from the same distribution):")
    print(my_actor_policy.action(time_step))
    # Actions are clipped to the spec's [-1, 1] since ActorPolicy has clip=True.


class QNetwork(network.Network):
    """The tutorial's QNetwork: one dense layer with ``num_actions`` (default 2) outputs."""

    def __init__(self, observation_spec, action_spec, num_actions=2, name=None):
        super().__init__(input_tensor_spec=observation_spec, state_spec=(), name=name)
        self._dense = tf_keras.layers.Dense(
            num_actions, kernel_initializer=tf_keras.initializers.GlorotUniform(seed=4)
        )

    def call(self, inputs, step_type=None, network_state=()):
        inputs = tf.cast(inputs, tf.float32)
        return self._dense(inputs), network_state


def _q_setup():
    observation_spec = tensor_spec.TensorSpec((4,), tf.float32)
    time_step_spec = ts.time_step_spec(observation_spec)
    # Three actions -1, 0, 1 in a shape of (1,): TF-Agents refused both, we don't.
    action_spec = tensor_spec.BoundedTensorSpec((1,), tf.int32, minimum=-1, maximum=1)
    num_actions = int(action_spec.maximum - action_spec.minimum + 1)
    batch_size = 2
    observation = tf.ones([batch_size, *time_step_spec.observation.shape.as_list()])
    time_steps = ts.restart(observation, batch_size=batch_size)
    return time_step_spec, action_spec, num_actions, time_steps


def tf_q_policy() -> tuple[q_policy.QPolicy, ts.TimeStep]:
    """TF policies, example 3: a Q policy (a categorical with Q-values as logits)."""
    print("== Q policy ==")
    time_step_spec, action_spec, num_actions, time_steps = _q_setup()
    # The tutorial built its QNetwork with the default num_actions=2 for 3 actions: that
    # mismatch fails here, at construction, naming both numbers.
    try:
        q_policy.QPolicy(
            time_step_spec,
            action_spec,
            q_network=QNetwork(
                observation_spec=time_step_spec.observation, action_spec=action_spec
            ),
        )
    except SpecMismatchError as error:
        print(f"As in the tutorial (num_actions=2): {error}")
    my_q_network = QNetwork(
        observation_spec=time_step_spec.observation,
        action_spec=action_spec,
        num_actions=num_actions,
    )
    my_q_policy = q_policy.QPolicy(time_step_spec, action_spec, q_network=my_q_network, seed=5)
    distribution_step = my_q_policy.distribution(time_steps)
    print("Action distribution:")
    print(distribution_step)
    print("Action:")
    print(my_q_policy.action(time_steps))
    return my_q_policy, time_steps


def _seed_q_policy() -> tuple[q_policy.QPolicy, ts.TimeStep]:
    """The Q policy of example 3 (the same seeded weights), without printing."""
    time_step_spec, action_spec, num_actions, time_steps = _q_setup()
    q_network = QNetwork(time_step_spec.observation, action_spec, num_actions=num_actions)
    return q_policy.QPolicy(time_step_spec, action_spec, q_network=q_network, seed=5), time_steps


def tf_greedy_policy() -> None:
    """Policy wrappers: GreedyPolicy acts with the mode of the wrapped distribution."""
    my_q_policy, time_steps = _seed_q_policy()
    print("== Greedy policy ==")
    my_greedy_policy = greedy_policy.GreedyPolicy(my_q_policy)
    distribution_step = my_greedy_policy.distribution(time_steps)
    print("action distribution:")
    print(distribution_step)
    print("action:")
    print(my_greedy_policy.action(time_steps))


def tf_noise_policy() -> None:
    """Policy wrappers: Ornstein-Uhlenbeck noise on a deterministic actor (stateful)."""
    print("== Noise policy (OUNoisePolicy) ==")
    time_step_spec, action_spec, time_step = _actor_setup()
    dense = tf_keras.layers.Dense(
        3, activation="tanh", kernel_initializer=tf_keras.initializers.GlorotUniform(seed=6)
    )
    actor = actor_policy.ActorPolicy(
        time_step_spec, action_spec, actor_network=lambda t: dense(t.observation)
    )
    noisy = ou_noise_policy.OUNoisePolicy(actor, ou_stddev=0.2, ou_damping=0.15, seed=7)
    print("clean action:")
    print(actor.action(time_step).action)
    # The noise lives in the policy state, per batch entry, and restarts on FIRST steps.
    state = noisy.get_initial_state(batch_size=2)
    mid = time_step._replace(step_type=tf.fill([2], ts.StepType.MID))
    for _ in range(3):
        step = noisy.action(mid, state)
        print("noisy action:")
        print(step.action)
        state = step.state


def tf_epsilon_greedy_policy() -> None:
    """Policy wrappers: EpsilonGreedyPolicy, sometimes a random action."""
    print("== Epsilon-greedy policy ==")
    my_q_policy, _ = _seed_q_policy()
    policy = epsilon_greedy_policy.EpsilonGreedyPolicy(my_q_policy, epsilon=0.3, seed=8)
    time_steps = ts.restart(tf.ones([1000, 4]), batch_size=1000)
    greedy = greedy_policy.GreedyPolicy(my_q_policy).action(time_steps).action
    actions = policy.action(time_steps).action
    share = float(tf.reduce_mean(tf.cast(tf.equal(actions, greedy), tf.float32)))
    print(f"greedy action: {int(greedy[0, 0])}")
    print(f"share of greedy actions over 1000 entries: {share:.3f} (expected 0.7 + 0.3/3 = 0.8)")


def tf_mixture_policy() -> None:
    """Policy wrappers: MixturePolicy picks one of several policies per batch entry."""
    print("== Mixture policy ==")
    my_q_policy, time_steps = _seed_q_policy()
    random = random_tf_policy.RandomTFPolicy(my_q_policy.time_step_spec, my_q_policy.action_spec)
    greedy = greedy_policy.GreedyPolicy(my_q_policy)
    policy = mixture_policy.MixturePolicy([greedy, random], weights=[0.9, 0.1], seed=9)
    print("action:")
    print(policy.action(time_steps))


def tf_py_tf_policy() -> None:
    """Wrapping a TFPolicy as a Python policy: numpy in, numpy out, tf.function inside."""
    print("== PyTFPolicy ==")
    action_spec = tensor_spec.BoundedTensorSpec((2,), tf.float32, minimum=-1, maximum=3)
    time_step_spec = ts.time_step_spec(tensor_spec.TensorSpec((2,), tf.float32))
    my_random_tf_policy = random_tf_policy.RandomTFPolicy(time_step_spec, action_spec)
    # No session: the policy compiles its own tf.function.
    my_py_tf_policy = py_tf_policy.PyTFPolicy(my_random_tf_policy, seed=10)
    observation = np.array([3, 4])
    time_step = ts.restart(observation)
    action_step = my_py_tf_policy.action(time_step)
    print("action:")
    print(action_step)


SECTIONS = [
    python_random_policy,
    python_scripted_policy,
    tf_random_policy,
    tf_actor_policy_with_action_network,
    tf_actor_policy_with_distribution_network,
    tf_q_policy,
    tf_greedy_policy,
    tf_noise_policy,
    tf_epsilon_greedy_policy,
    tf_mixture_policy,
    tf_py_tf_policy,
]


def main() -> None:
    for section in SECTIONS:
        section()
        print()


if __name__ == "__main__":
    main()
