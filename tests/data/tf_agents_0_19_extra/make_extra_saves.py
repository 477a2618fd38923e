"""Makes the TF-Agents 0.19 saves of tests/data/tf_agents_0_19_extra (not run by tests).

Run it with the venv of ../tf_agents_0_19/make_saves.py (TF-Agents 0.19.0, TF 2.15.1,
TFP 0.23.0, gym 0.23.0, numpy 1.26.4, Python 3.11):

    /work/venvs/tfa/bin/python tests/data/tf_agents_0_19_extra/make_extra_saves.py [OUT_DIR]

then ``tar -cJf saves.tar.xz -C OUT_DIR .`` beside this script. Each case is a
``PolicySaver(policy, batch_size=None, train_step=...)`` output (``saved_policy/``,
train step 1000) with what TF-Agents' own loader (``SavedModelPyTFEagerPolicy``)
returned in ``expected.npz`` and a ``case.json``:

* ``actor_from_1`` / ``actor_from_1_greedy``: ``ActorPolicy`` over an
  ``ActorDistributionNetwork`` whose action spec is () int32 in [1, 4], and
  ``GreedyPolicy`` of it. TF-Agents' categorical projection ignores the minimum: the
  saved distribution is a plain Categorical over indices 0..3, and the action clips the
  sampled index into [1, 4] (TFPolicy's clip), so 0 and 1 both give 1 and 4 never
  comes. Recorded: the logits and actions on 32 observations, 4000 sampled actions for
  one observation (``samples/``), the greedy actions.
* ``dqn_masked_collect`` / ``dqn_masked_greedy``: ``DqnAgent`` with an
  ``observation_and_action_constraint_splitter`` over the observation
  ``{"observation": (4,) float32, "mask": (3,) int32}``, epsilon 0.5, and its greedy
  policy. Recorded: actions on 32 observations with random masks (each row allows at
  least one action), 4000 sampled actions for one observation whose mask forbids the
  greedy action (``samples/``).

The weights are perturbed before saving (as if trained; fresh networks give near-equal
logits), with the same seeds for the collect and greedy saves of one agent.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf
from tf_agents.agents.dqn import dqn_agent
from tf_agents.networks import actor_distribution_network, q_network
from tf_agents.policies import actor_policy, greedy_policy, policy_saver, py_tf_eager_policy
from tf_agents.specs import tensor_spec
from tf_agents.trajectories import time_step as ts

BATCH = 32
SAMPLES = 4000
TRAIN_STEP = 1000


def _perturb(policy, scale: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for v in policy.variables():
        if v.dtype.is_floating and v.trainable:
            v.assign(v + rng.normal(0.0, scale, v.shape).astype(v.dtype.as_numpy_dtype))


def _time_step(observation, n: int, step_type=None) -> ts.TimeStep:
    step_type = np.ones(n, np.int32) if step_type is None else step_type
    return ts.TimeStep(
        step_type=step_type.astype(np.int32),
        reward=np.zeros(n, np.float32),
        discount=np.ones(n, np.float32),
        observation=observation,
    )


def _load(folder: Path):
    return py_tf_eager_policy.SavedModelPyTFEagerPolicy(
        str(folder / "saved_policy"), load_specs_from_pbtxt=True, batch_time_steps=False
    )


def _save(policy, folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    train_step = tf.Variable(TRAIN_STEP, dtype=tf.int64)
    policy_saver.PolicySaver(policy, batch_size=None, train_step=train_step).save(
        str(folder / "saved_policy")
    )


def _write(folder: Path, rec: dict, info: dict) -> None:
    np.savez_compressed(folder / "expected.npz", **rec)
    (folder / "case.json").write_text(json.dumps(info, indent=1) + "\n")
    print(f"{folder.name}: {sorted(rec)}")


def actor_from_1(out: Path) -> None:
    obs = tensor_spec.TensorSpec((3,), tf.float32, "observation")
    act = tensor_spec.BoundedTensorSpec((), tf.int32, minimum=1, maximum=4, name="action")
    net = actor_distribution_network.ActorDistributionNetwork(obs, act, fc_layer_params=(8,))
    policy = actor_policy.ActorPolicy(ts.time_step_spec(obs), act, net)
    _perturb(policy, scale=0.8, seed=3)
    cases = {"actor_from_1": policy, "actor_from_1_greedy": greedy_policy.GreedyPolicy(policy)}
    observation = np.random.default_rng(1).standard_normal((BATCH, 3)).astype(np.float32)
    one = np.random.default_rng(2).standard_normal((1, 3)).astype(np.float32)
    for case, saved in cases.items():
        _save(saved, out / case)
        loaded = _load(out / case)
        tf.random.set_seed(11)
        rec = {
            "observation": observation,
            "step_type": np.ones(BATCH, np.int32),
            "action": np.asarray(loaded.action(_time_step(observation, BATCH)).action),
        }
        time_step = tf.nest.map_structure(tf.convert_to_tensor, _time_step(observation, BATCH))
        dist = loaded._policy.distribution(time_step, ()).action
        if case == "actor_from_1":
            rec["distribution/logits"] = dist.logits_parameter().numpy()
            rec["distribution/class"] = np.asarray(type(dist).__name__)
            many = _time_step(np.repeat(one, SAMPLES, 0), SAMPLES)
            rec["samples/observation"] = one
            rec["samples/action"] = np.asarray(loaded.action(many).action)
            one_step = tf.nest.map_structure(tf.convert_to_tensor, _time_step(one, 1))
            rec["samples/logits"] = (
                loaded._policy.distribution(one_step, ()).action.logits_parameter().numpy()
            )
        _write(
            out / case,
            rec,
            {"case": case, "policy_class": type(saved).__name__, "action_spec": "int32 [1, 4]"},
        )


def _masks(rng, n: int) -> np.ndarray:
    masks = rng.integers(0, 2, (n, 3)).astype(np.int32)
    masks[masks.sum(1) == 0, rng.integers(0, 3)] = 1  # every row allows an action
    return masks


def dqn_masked(out: Path) -> None:
    obs = {
        "observation": tensor_spec.TensorSpec((4,), tf.float32, "observation"),
        "mask": tensor_spec.TensorSpec((3,), tf.int32, "mask"),
    }
    act = tensor_spec.BoundedTensorSpec((), tf.int64, minimum=0, maximum=2, name="action")

    def splitter(observation):
        return observation["observation"], observation["mask"]

    agent = dqn_agent.DqnAgent(
        ts.time_step_spec(obs),
        act,
        q_network=q_network.QNetwork(obs["observation"], act, fc_layer_params=(8,)),
        optimizer=tf.keras.optimizers.Adam(1e-3),
        observation_and_action_constraint_splitter=splitter,
        epsilon_greedy=0.5,
    )
    agent.initialize()
    _perturb(agent.policy, scale=0.5, seed=5)
    cases = {"dqn_masked_collect": agent.collect_policy, "dqn_masked_greedy": agent.policy}
    rng = np.random.default_rng(1)
    observation = {
        "observation": rng.standard_normal((BATCH, 4)).astype(np.float32),
        "mask": _masks(rng, BATCH),
    }
    greedy = None
    for case, saved in cases.items():
        _save(saved, out / case)
        loaded = _load(out / case)
        tf.random.set_seed(11)
        action = np.asarray(loaded.action(_time_step(observation, BATCH)).action)
        rec = {
            "observation/observation": observation["observation"],
            "observation/mask": observation["mask"],
            "step_type": np.ones(BATCH, np.int32),
            "action": action,
        }
        if case == "dqn_masked_greedy":
            greedy = action
        _write(out / case, rec, {"case": case, "policy_class": type(saved).__name__})
    # One observation whose mask forbids its greedy action and allows the other two.
    loaded = _load(out / "dqn_masked_greedy")
    one = {"observation": observation["observation"][:1], "mask": np.ones((1, 3), np.int32)}
    free = int(np.asarray(loaded.action(_time_step(one, 1)).action)[0])
    one["mask"][0, free] = 0
    collect = _load(out / "dqn_masked_collect")
    tf.random.set_seed(12)
    many = {k: np.repeat(v, SAMPLES, 0) for k, v in one.items()}
    samples = np.asarray(collect.action(_time_step(many, SAMPLES)).action)
    rec = dict(np.load(out / "dqn_masked_collect" / "expected.npz"))
    rec.update(
        {
            "samples/observation/observation": one["observation"],
            "samples/observation/mask": one["mask"],
            "samples/action": samples,
            "greedy_action": greedy,
        }
    )
    info = json.loads((out / "dqn_masked_collect" / "case.json").read_text())
    _write(out / "dqn_masked_collect", rec, {**info, "epsilon": 0.5, "forbidden": free})


def main(out: Path) -> None:
    tf.random.set_seed(0)
    np.random.seed(0)
    actor_from_1(out)
    dqn_masked(out)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "out")
