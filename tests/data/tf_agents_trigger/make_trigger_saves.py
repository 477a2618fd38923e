"""Writes TF-Agents' PolicySavedModelTrigger output for the checkpoint-loop tests.

Run with a venv holding tf-agents 0.19.0, tensorflow-cpu 2.15.1,
tensorflow-probability 0.23.0 (this project does not depend on TF-Agents):

    /work/venvs/tfa/bin/python tests/data/tf_agents_trigger/make_trigger_saves.py

For each kind, a real agent is built (fresh weights: zero biases), its
``PolicySavedModelTrigger`` saves ``policies/policy``, ``greedy_policy`` and
``collect_policy`` once and ``policies/checkpoints/policy_checkpoint_<step>`` as a
learner does; the agent trains on random experience (real ``agent.train`` calls) and
the trigger saves at steps 150 and 300. ``expected.npz`` holds what
the live TF-Agents policies returned at each checkpoint on fixed observations
(``<step>/greedy_policy/action``, and the raw policy's distribution parameters
``<step>/policy/logits`` or ``loc`` and ``scale``), so the tests compare bundles updated
from the checkpoints with TF-Agents itself.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import tensorflow as tf
from tf_agents.agents.dqn import dqn_agent
from tf_agents.agents.reinforce import reinforce_agent
from tf_agents.networks import actor_distribution_network, q_network, q_rnn_network
from tf_agents.specs import tensor_spec
from tf_agents.train import triggers
from tf_agents.trajectories import time_step as ts

HERE = Path(__file__).parent
STEPS = (0, 150, 300)
BATCH = 6


def _specs(kind):
    if kind == "dqn_dict":
        observation = {
            "position": tensor_spec.TensorSpec((2,), tf.float32, "position"),
            "velocity": tensor_spec.TensorSpec((3,), tf.float32, "velocity"),
        }
    else:
        observation = tensor_spec.TensorSpec((4,), tf.float32, "observation")
    if kind == "reinforce":
        action = tensor_spec.BoundedTensorSpec((2,), tf.float32, -1.0, 1.0, "action")
    else:
        action = tensor_spec.BoundedTensorSpec((), tf.int64, 0, 2, "action")
    return ts.time_step_spec(observation), action


def _agent(kind):
    time_step_spec, action_spec = _specs(kind)
    optimizer = tf.keras.optimizers.Adam(1e-2)
    train_step = tf.Variable(0, dtype=tf.int64)
    if kind == "reinforce":
        actor = actor_distribution_network.ActorDistributionNetwork(
            time_step_spec.observation, action_spec, fc_layer_params=(8,)
        )
        agent = reinforce_agent.ReinforceAgent(
            time_step_spec, action_spec, actor, optimizer, train_step_counter=train_step
        )
    else:
        if kind == "dqn_rnn":
            net = q_rnn_network.QRnnNetwork(time_step_spec.observation, action_spec, lstm_size=(4,))
        elif kind == "dqn_dict":
            net = q_network.QNetwork(
                time_step_spec.observation,
                action_spec,
                preprocessing_layers={
                    "position": tf.keras.layers.Dense(3),
                    "velocity": tf.keras.layers.Dense(3),
                },
                preprocessing_combiner=tf.keras.layers.Concatenate(),
                fc_layer_params=(8,),
            )
        else:
            net = q_network.QNetwork(time_step_spec.observation, action_spec, fc_layer_params=(8,))
        agent = dqn_agent.DqnAgent(
            time_step_spec, action_spec, net, optimizer, train_step_counter=train_step
        )
    agent.initialize()
    return agent, train_step


def _experience(agent, rng, time=3):
    spec = agent.collect_data_spec
    outer = (8, time)

    def sample(s):
        if s.dtype.is_floating:
            low = getattr(s, "minimum", -1.0)
            high = getattr(s, "maximum", 1.0)
            return tf.constant(
                rng.uniform(low, high, outer + tuple(s.shape)).astype(s.dtype.as_numpy_dtype)
            )
        low, high = int(getattr(s, "minimum", 0)), int(getattr(s, "maximum", 1))
        return tf.constant(
            rng.integers(low, high + 1, outer + tuple(s.shape)).astype(s.dtype.as_numpy_dtype)
        )

    exp = tf.nest.map_structure(sample, spec)
    mid = np.ones(outer, np.int32)
    mid[:, 0] = 0
    mid[:, -1] = 2
    return exp._replace(
        step_type=tf.constant(mid),
        next_step_type=tf.constant(np.roll(mid, -1, axis=1)),
        discount=tf.ones(outer),
        policy_info=tf.nest.map_structure(lambda x: x, exp.policy_info),
    )


def _observations(kind, rng):
    time_step_spec, _ = _specs(kind)
    obs = tf.nest.map_structure(
        lambda s: rng.standard_normal((BATCH,) + tuple(s.shape)).astype(np.float32),
        time_step_spec.observation,
    )
    return obs


def _record(agent, kind, obs, step, out):
    # The trigger saves the raw policy as "policy" (a greedy agent.policy unwrapped).
    raw = getattr(agent.policy, "wrapped_policy", agent.policy)
    for name, policy in (("greedy_policy", None), ("policy", raw)):
        if name == "greedy_policy":
            from tf_agents.policies import greedy_policy

            policy = (
                agent.policy
                if isinstance(agent.policy, greedy_policy.GreedyPolicy)
                else greedy_policy.GreedyPolicy(agent.policy)
            )
        step_type = np.zeros(BATCH, np.int32)
        step_type[BATCH // 2 :] = 1
        time_step = ts.TimeStep(
            tf.constant(step_type),
            tf.zeros(BATCH),
            tf.ones(BATCH),
            tf.nest.map_structure(tf.constant, obs),
        )
        state = policy.get_initial_state(BATCH)
        result = policy.action(time_step, state) if name == "greedy_policy" else None
        if result is not None:
            out[f"{step}/{name}/action"] = result.action.numpy()
        if name == "policy":
            dist = policy.distribution(time_step, state).action
            if kind == "reinforce":
                out[f"{step}/{name}/loc"] = dist.mean().numpy()
                out[f"{step}/{name}/scale"] = dist.stddev().numpy()
            else:
                out[f"{step}/{name}/logits"] = dist.logits_parameter().numpy()


def make(kind: str) -> None:
    root = HERE / kind
    shutil.rmtree(root, ignore_errors=True)
    tf.random.set_seed(0)
    rng = np.random.default_rng(0)
    agent, train_step = _agent(kind)
    trigger = triggers.PolicySavedModelTrigger(
        str(root / "policies"), agent, train_step, interval=150, save_greedy_policy=True
    )
    obs = _observations(kind, rng)
    expected = {}
    for key, value in obs.items() if isinstance(obs, dict) else [("observation", obs)]:
        expected[key if key == "observation" else f"observation/{key}"] = value
    _record(agent, kind, obs, 0, expected)
    trigger(int(train_step.numpy()), force_trigger=True)
    train = tf.function(agent.train)
    while int(train_step.numpy()) < STEPS[-1]:
        train(_experience(agent, rng, 2 if kind in ("dqn", "dqn_dict") else 3))
        step = int(train_step.numpy())
        if step in STEPS:
            _record(agent, kind, obs, step, expected)
            trigger(int(train_step.numpy()), force_trigger=True)
    np.savez(root / "expected.npz", **expected)
    (root / "case.json").write_text(
        json.dumps({"kind": kind, "steps": list(STEPS), "batch": BATCH}, indent=1) + "\n"
    )


if __name__ == "__main__":
    for kind in sys.argv[1:] or ("dqn", "dqn_rnn", "dqn_dict", "reinforce"):
        make(kind)
        print("made", kind)
