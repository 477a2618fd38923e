"""Makes the TF-Agents 0.19 saved policies of tests/data/tf_agents_0_19 (not run by tests).

Run it with a separate venv holding TF-Agents (the project must not depend on it):

    python3.11 -m venv /tmp/tfa
    /tmp/tfa/bin/pip install tf-agents==0.19.0 tensorflow-cpu==2.15.1 \
        tensorflow-probability==0.23.0 gym==0.23.0 numpy==1.26.4
    /tmp/tfa/bin/python tests/data/tf_agents_0_19/make_saves.py [OUT_DIR] [CASE ...]
    /tmp/tfa/bin/python tests/data/tf_agents_0_19/make_saves.py --reference \
        [OUT_DIR] [CASE ...]

then pack each set as the archive beside this file (see README.md). The first makes
saves.tar.xz's cases; ``--reference`` makes reference.tar.xz's (``make_reference``
below: four policies built from TF-Agents' policy classes, and SAC's collect policy and
C51's greedy policy saved from fresh networks).

Each case is made with TF-Agents' own agents and small networks, saved by
``PolicySaver(policy, batch_size=None, train_step=...)`` at train step 1000, and what
TF-Agents' own loader (``SavedModelPyTFEagerPolicy(path, load_specs_from_pbtxt=True,
batch_time_steps=False)``) returned is recorded in ``expected.npz`` (same layout as
reference.tar.xz):

* ``observation``, ``step_type`` (32 steps: FIRST then MID), ``action``;
* ``distribution/<param>``: the saved distribution's parameters on those inputs, when
  the policy saved one (``loc``/``scale`` of normals, ``logits`` (and ``shift``) of
  categoricals, ``input_mean``/``input_stddev``/``mode`` of SquashToSpecNormal);
* ``samples/observation`` (one observation) and ``samples/action``: 4000 actions the
  loader sampled for it. Policies whose noise is drawn per call and shared by the
  batch (GaussianPolicy, OUNoisePolicy) are sampled with 4000 calls of batch 1; the
  OU process variable is set to zero before each call (``samples/action``), and
  ``samples/action_step2`` is the second call after that (its spread shows the
  damping). ``shared/action``: one call of batch 8 on the same observation (all rows
  get the same noise: TF-Agents' odd behaviour, recorded for the docs);
* the weights are perturbed before the save (as if trained: fresh networks have zero
  biases and near-tied Q-values), and again before the checkpoint;
* ``checkpoint/...``: the same after ``update_from_checkpoint`` of a
  ``PolicySaver.save_checkpoint`` output written after the weights were perturbed
  (train step 2000).

Collect and greedy saves of one agent share the weights and the checkpoint
perturbation, so a collect policy's deterministic core acts like the greedy save.
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
import tensorflow_probability as tfp
from tf_agents.agents.categorical_dqn import categorical_dqn_agent
from tf_agents.agents.ddpg import actor_network as ddpg_actor
from tf_agents.agents.ddpg import critic_network, ddpg_agent
from tf_agents.agents.dqn import dqn_agent
from tf_agents.agents.ppo import ppo_agent
from tf_agents.agents.sac import sac_agent, tanh_normal_projection_network
from tf_agents.agents.td3 import td3_agent
from tf_agents.bandits.policies import boltzmann_reward_prediction_policy
from tf_agents.networks import (
    actor_distribution_network,
    categorical_q_network,
    q_network,
    q_rnn_network,
    value_network,
)
from tf_agents.policies import (
    actor_policy,
    greedy_policy,
    policy_saver,
    py_tf_eager_policy,
    q_policy,
    random_tf_policy,
)
from tf_agents.specs import tensor_spec
from tf_agents.trajectories import time_step as ts

tfd = tfp.distributions
BATCH = 32
SAMPLES = 4000
TRAIN_STEP = 1000
CHECKPOINT_STEP = 2000


def _optimizer():
    return tf.keras.optimizers.Adam(1e-3)


def _specs(obs_dim: int, action_spec):
    obs = tensor_spec.TensorSpec((obs_dim,), tf.float32, "observation")
    return ts.time_step_spec(obs), obs, action_spec


CONTINUOUS = tensor_spec.BoundedTensorSpec(
    (2,), tf.float32, minimum=[-2.0, 0.0], maximum=[1.0, 3.0], name="action"
)
UNIT = tensor_spec.BoundedTensorSpec((2,), tf.float32, minimum=-1.0, maximum=1.0, name="action")
DISCRETE = tensor_spec.BoundedTensorSpec((), tf.int64, minimum=0, maximum=2, name="action")


def make_agents():
    """name -> (policies {case: policy}, networks whose weights the checkpoint perturbs)."""
    out = {}

    time_step_spec, obs, act = _specs(5, CONTINUOUS)
    actor = actor_distribution_network.ActorDistributionNetwork(
        obs,
        act,
        fc_layer_params=(8,),
        continuous_projection_net=tanh_normal_projection_network.TanhNormalProjectionNetwork,
    )
    critic = critic_network.CriticNetwork((obs, act), joint_fc_layer_params=(8,))
    sac = sac_agent.SacAgent(
        time_step_spec,
        act,
        actor_network=actor,
        critic_network=critic,
        actor_optimizer=_optimizer(),
        critic_optimizer=_optimizer(),
        alpha_optimizer=_optimizer(),
    )
    sac.initialize()
    # SAC's `policy` is its collect policy (stochastic); evaluation uses GreedyPolicy.
    out["sac"] = {
        "sac_collect": sac.collect_policy,
        "sac_greedy": greedy_policy.GreedyPolicy(sac.policy),
    }

    for kind, act in (("continuous", CONTINUOUS), ("discrete", DISCRETE)):
        time_step_spec, obs, act = _specs(4, act)
        ppo = ppo_agent.PPOAgent(
            time_step_spec,
            act,
            optimizer=_optimizer(),
            actor_net=actor_distribution_network.ActorDistributionNetwork(
                obs, act, fc_layer_params=(8,)
            ),
            value_net=value_network.ValueNetwork(obs, fc_layer_params=(8,)),
        )
        ppo.initialize()
        out[f"ppo_{kind}"] = {
            f"ppo_{kind}_collect": ppo.collect_policy,
            f"ppo_{kind}_eval": ppo.policy,
        }

    time_step_spec, obs, act = _specs(4, DISCRETE)
    dqn = dqn_agent.DqnAgent(
        time_step_spec,
        act,
        q_network=q_network.QNetwork(obs, act, fc_layer_params=(8,)),
        optimizer=_optimizer(),
        epsilon_greedy=0.25,
    )
    dqn.initialize()
    out["dqn"] = {"dqn_collect": dqn.collect_policy, "dqn_greedy": dqn.policy}

    c51 = categorical_dqn_agent.CategoricalDqnAgent(
        time_step_spec,
        act,
        categorical_q_network=categorical_q_network.CategoricalQNetwork(
            obs, act, num_atoms=51, fc_layer_params=(8,)
        ),
        optimizer=_optimizer(),
        min_q_value=-10.0,
        max_q_value=10.0,
    )
    c51.initialize()
    out["c51"] = {"c51_greedy": c51.policy}

    time_step_spec, obs, act = _specs(3, UNIT)
    ddpg = ddpg_agent.DdpgAgent(
        time_step_spec,
        act,
        actor_network=ddpg_actor.ActorNetwork(obs, act, fc_layer_params=(8,)),
        critic_network=critic_network.CriticNetwork((obs, act), joint_fc_layer_params=(8,)),
        actor_optimizer=_optimizer(),
        critic_optimizer=_optimizer(),
        ou_stddev=0.3,
        ou_damping=0.2,
    )
    ddpg.initialize()
    out["ddpg"] = {"ddpg_collect": ddpg.collect_policy, "ddpg_policy": ddpg.policy}

    td3 = td3_agent.Td3Agent(
        time_step_spec,
        act,
        actor_network=ddpg_actor.ActorNetwork(obs, act, fc_layer_params=(8,)),
        critic_network=critic_network.CriticNetwork((obs, act), joint_fc_layer_params=(8,)),
        actor_optimizer=_optimizer(),
        critic_optimizer=_optimizer(),
        exploration_noise_std=0.2,
    )
    td3.initialize()
    out["td3"] = {"td3_collect": td3.collect_policy, "td3_policy": td3.policy}

    # A bandit policy over actions 1..4: its distribution is TF-Agents' ShiftedCategorical.
    act = tensor_spec.BoundedTensorSpec((), tf.int32, minimum=1, maximum=4, name="action")
    time_step_spec, obs, act = _specs(3, act)
    reward_net = q_network.QNetwork(
        obs,
        tensor_spec.BoundedTensorSpec((), tf.int32, 0, 3),
        fc_layer_params=(8,),
    )
    bandit = boltzmann_reward_prediction_policy.BoltzmannRewardPredictionPolicy(
        time_step_spec, act, reward_net, temperature=0.5
    )
    out["bandit"] = {"bandit_shifted": bandit}

    out["random"] = {
        "random_continuous": random_tf_policy.RandomTFPolicy(_specs(3, CONTINUOUS)[0], CONTINUOUS),
        "random_discrete": random_tf_policy.RandomTFPolicy(_specs(3, DISCRETE)[0], DISCRETE),
    }

    act = {
        "move": tensor_spec.BoundedTensorSpec((2,), tf.float32, -1.0, 1.0, name="move"),
        "turn": tensor_spec.BoundedTensorSpec((), tf.int32, 0, 2, name="turn"),
    }
    time_step_spec, obs, act = _specs(4, act)
    net = actor_distribution_network.ActorDistributionNetwork(obs, act, fc_layer_params=(8,))
    dict_policy = actor_policy.ActorPolicy(time_step_spec, act, net)
    out["dict"] = {"dict_actor": dict_policy}
    return out


# --- recording ------------------------------------------------------------------------


def _time_step(observation: np.ndarray, step_type: np.ndarray) -> ts.TimeStep:
    n = len(step_type)
    return ts.TimeStep(
        step_type=step_type.astype(np.int32),
        reward=np.zeros(n, np.float32),
        discount=np.ones(n, np.float32),
        observation=observation,
    )


def _observations(spec, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, *spec.shape)).astype(spec.dtype.as_numpy_dtype)


def _flat(prefix: str, value) -> dict[str, np.ndarray]:
    if isinstance(value, dict):
        out = {}
        for k in sorted(value):
            out.update(_flat(f"{prefix}/{k}", value[k]))
        return out
    return {prefix: np.asarray(value)}


def _distribution_params(dist) -> dict[str, np.ndarray]:
    """The recorded parameters of one saved distribution (TF-Agents' own semantics)."""
    name = type(dist).__name__
    if isinstance(dist, tfd.Independent):
        dist = dist.distribution
        name = type(dist).__name__
    if "SquashToSpecNormal" in name:
        inner = dist.input_distribution
        return {
            "input_mean": inner.mean().numpy(),
            "input_stddev": inner.stddev().numpy(),
            "mode": dist.mode().numpy(),
        }
    if "Categorical" in name:
        out = {"logits": dist.logits_parameter().numpy()}
        if hasattr(dist, "shift"):
            out["shift"] = np.asarray(dist.shift)
        return out
    if "Deterministic" in name:
        return {"loc": dist.loc.numpy()}
    if "Normal" in name:
        return {"loc": dist.mean().numpy(), "scale": dist.stddev().numpy()}
    raise ValueError(f"no recording for {name}")


def _record_distribution(loaded, time_step, action_spec) -> dict[str, np.ndarray]:
    step = loaded.distribution(tf.nest.map_structure(tf.convert_to_tensor, time_step), ())
    if not tf.nest.is_nested(step.action) and not hasattr(step.action, "dtype"):
        raise ValueError("distribution only raises")
    out = {}
    if isinstance(action_spec, dict):
        for key in sorted(action_spec):
            for k, v in _distribution_params(step.action[key]).items():
                out[f"distribution/{key}/{k}"] = v
    else:
        for k, v in _distribution_params(step.action).items():
            out[f"distribution/{k}"] = v
    return out


def _ou_variables(py_policy) -> list:
    """The OU process variables (OUNoisePolicy keeps them among its variables)."""
    return [v for v in py_policy.variables() if "ornstein_uhlenbeck" in v.name]


def record(py_policy, case: str, obs_spec, action_spec, sampling: str) -> dict[str, np.ndarray]:
    observation = _observations(obs_spec, BATCH, seed=1)
    step_type = np.array([0] * (BATCH // 2) + [1] * (BATCH - BATCH // 2), np.int32)
    time_step = _time_step(observation, step_type)
    out = {"observation": observation, "step_type": step_type}
    out.update(_flat("action", py_policy.action(time_step).action))
    try:
        out.update(_record_distribution(py_policy._policy, time_step, action_spec))
    except Exception as e:  # PolicySaver saved a distribution that only raises
        print(f"  {case}: no distribution recorded ({type(e).__name__})")
    if sampling == "none":
        return out
    one = _observations(obs_spec, 1, seed=2)
    out["samples/observation"] = one
    if sampling == "batch":
        many = _time_step(np.repeat(one, SAMPLES, 0), np.ones(SAMPLES, np.int32))
        out.update(_flat("samples/action", py_policy.action(many).action))
        return out
    # Noise drawn once per call, shared by the batch: 4000 calls of batch 1.
    single = _time_step(one, np.ones(1, np.int32))
    ou = _ou_variables(py_policy) if sampling == "ou" else []
    first, second = [], []
    for _ in range(SAMPLES):
        for v in ou:
            v.assign(tf.zeros_like(v))
        first.append(py_policy.action(single).action[0])
        if ou:
            second.append(py_policy.action(single).action[0])
    out["samples/action"] = np.stack(first)
    if ou:
        out["samples/action_step2"] = np.stack(second)
    shared = _time_step(np.repeat(one, 8, 0), np.ones(8, np.int32))
    out["shared/action"] = np.asarray(py_policy.action(shared).action)
    return out


SAMPLING = {
    "sac_collect": "batch",
    "ppo_continuous_collect": "batch",
    "ppo_discrete_collect": "batch",
    "dqn_collect": "batch",
    "bandit_shifted": "batch",
    "random_continuous": "batch",
    "random_discrete": "batch",
    "dict_actor": "batch",
    "td3_collect": "calls",
    "ddpg_collect": "ou",
}


def _perturb(policy, scale: float = 0.1, seed: int = 7) -> None:
    rng = np.random.default_rng(seed)
    for v in policy.variables():
        if v.dtype.is_floating and v.trainable:
            v.assign(v + rng.normal(0.0, scale, v.shape).astype(v.dtype.as_numpy_dtype))


def _observation_spec(policy):
    return policy.time_step_spec.observation


def main(out_dir: Path, only: list[str]) -> None:
    tf.random.set_seed(0)
    np.random.seed(0)
    agents = make_agents()
    for agent, policies in agents.items():
        cases = {c: p for c, p in policies.items() if not only or c in only}
        if not cases:
            continue
        train_step = tf.Variable(TRAIN_STEP, dtype=tf.int64)
        # As if trained: fresh networks have zero biases and near-equal Q-values (ties);
        # the fresh case is the reference folder's (sac_collect, c51_greedy).
        _perturb(next(iter(cases.values())), scale=0.3, seed=3)
        savers = {}
        for case, policy in cases.items():
            folder = out_dir / case
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            savers[case] = policy_saver.PolicySaver(policy, batch_size=None, train_step=train_step)
            savers[case].save(str(folder / "saved_policy"))
        records = {}
        for case, policy in cases.items():
            loaded = py_tf_eager_policy.SavedModelPyTFEagerPolicy(
                str(out_dir / case / "saved_policy"),
                load_specs_from_pbtxt=True,
                batch_time_steps=False,
            )
            tf.random.set_seed(11)
            records[case] = record(
                loaded,
                case,
                _observation_spec(policy),
                policy.action_spec,
                SAMPLING.get(case, "none"),
            )
        # One perturbation per agent (the policies share the networks).
        first = next(iter(cases.values()))
        has_variables = bool(first.variables())
        if has_variables:
            _perturb(first)
        train_step.assign(CHECKPOINT_STEP)
        for case, policy in cases.items():
            info = {
                "case": case,
                "agent": agent,
                "policy_class": type(policy).__name__,
                "deterministic": SAMPLING.get(case, "none") == "none",
                "sampling": SAMPLING.get(case, "none"),
                "batch": BATCH,
                "sample_n": SAMPLES if case in SAMPLING else 0,
                "train_step": TRAIN_STEP,
                "trained_at_save": False,
                "weights_perturbed_at_save": has_variables,
                "checkpoint_train_step": CHECKPOINT_STEP if has_variables else None,
            }
            rec = records[case]
            if has_variables:
                savers[case].save_checkpoint(str(out_dir / case / "checkpoint"))
                loaded = py_tf_eager_policy.SavedModelPyTFEagerPolicy(
                    str(out_dir / case / "saved_policy"),
                    load_specs_from_pbtxt=True,
                    batch_time_steps=False,
                )
                loaded.update_from_checkpoint(str(out_dir / case / "checkpoint"))
                info["checkpoint_loaded_train_step"] = int(loaded.get_train_step())
                time_step = _time_step(rec["observation"], rec["step_type"])
                if info["deterministic"]:
                    rec.update(_flat("checkpoint/action", loaded.action(time_step).action))
                try:
                    dist = _record_distribution(loaded._policy, time_step, policy.action_spec)
                except Exception:
                    dist = {}
                rec.update({f"checkpoint/{k}": v for k, v in dist.items()})
            np.savez_compressed(out_dir / case / "expected.npz", **rec)
            (out_dir / case / "case.json").write_text(json.dumps(info, indent=1) + "\n")
            print(f"{case}: {sorted(rec)}")


# --- reference.tar.xz ---------------------------------------------------------------------


def _reference_policies():
    """case -> (policy to save, live policy whose distribution is recorded, batch, steps)."""
    out = {}
    obs = tensor_spec.TensorSpec((4,), tf.float32, "observation")
    act = tensor_spec.BoundedTensorSpec((), tf.int64, minimum=0, maximum=1, name="action")
    q = q_policy.QPolicy(
        ts.time_step_spec(obs), act, q_network.QNetwork(obs, act, fc_layer_params=(64, 64))
    )
    out["q_greedy"] = (greedy_policy.GreedyPolicy(q), q, BATCH, 0)

    obs = tensor_spec.TensorSpec((8,), tf.float32, "observation")
    act = tensor_spec.BoundedTensorSpec((2,), tf.float32, -1.0, 1.0, name="action")
    actor = actor_policy.ActorPolicy(
        ts.time_step_spec(obs),
        act,
        actor_distribution_network.ActorDistributionNetwork(obs, act, fc_layer_params=(32,)),
    )
    out["actor_normal_stochastic"] = (actor, actor, BATCH, 0)

    obs = {
        "position": tensor_spec.TensorSpec((2,), tf.float32, "position"),
        "velocity": tensor_spec.TensorSpec((3,), tf.float32, "velocity"),
    }
    act = tensor_spec.BoundedTensorSpec((), tf.int64, minimum=0, maximum=3, name="action")
    net = q_network.QNetwork(
        obs,
        act,
        preprocessing_layers={
            "position": tf.keras.layers.Dense(8),
            "velocity": tf.keras.layers.Dense(8),
        },
        preprocessing_combiner=tf.keras.layers.Concatenate(axis=-1),
        fc_layer_params=(16,),
    )
    nested = q_policy.QPolicy(ts.time_step_spec(obs), act, net)
    out["nested_obs"] = (greedy_policy.GreedyPolicy(nested), None, BATCH, 0)

    obs = tensor_spec.TensorSpec((4,), tf.float32, "observation")
    act = tensor_spec.BoundedTensorSpec((), tf.int64, minimum=0, maximum=2, name="action")
    net = q_rnn_network.QRnnNetwork(
        obs, act, input_fc_layer_params=(16,), lstm_size=(8,), output_fc_layer_params=(16,)
    )
    rnn = q_policy.QPolicy(ts.time_step_spec(obs), act, net)
    out["q_rnn"] = (greedy_policy.GreedyPolicy(rnn), None, 4, 10)
    return out


def _reference_agents():
    """case -> policy of an agent, saved from fresh networks (zero biases)."""
    out = {}
    time_step_spec, obs, act = _specs(
        5, tensor_spec.BoundedTensorSpec((2,), tf.float32, -2.0, 2.0, name="action")
    )
    sac = sac_agent.SacAgent(
        time_step_spec,
        act,
        actor_network=actor_distribution_network.ActorDistributionNetwork(
            obs,
            act,
            fc_layer_params=(32, 32),
            continuous_projection_net=tanh_normal_projection_network.TanhNormalProjectionNetwork,
        ),
        critic_network=critic_network.CriticNetwork((obs, act), joint_fc_layer_params=(32,)),
        actor_optimizer=_optimizer(),
        critic_optimizer=_optimizer(),
        alpha_optimizer=_optimizer(),
    )
    sac.initialize()
    out["sac_collect"] = sac.collect_policy
    time_step_spec, obs, act = _specs(4, DISCRETE)
    c51 = categorical_dqn_agent.CategoricalDqnAgent(
        time_step_spec,
        act,
        categorical_q_network=categorical_q_network.CategoricalQNetwork(
            obs, act, num_atoms=51, fc_layer_params=(32,)
        ),
        optimizer=_optimizer(),
        min_q_value=-10.0,
        max_q_value=10.0,
    )
    c51.initialize()
    out["c51_greedy"] = c51.policy
    return out


def _load(path: Path):
    return py_tf_eager_policy.SavedModelPyTFEagerPolicy(
        str(path), load_specs_from_pbtxt=True, batch_time_steps=False
    )


def _observation_batch(spec, n: int, seed: int):
    if isinstance(spec, dict):
        return {k: _observations(spec[k], n, seed + i) for i, k in enumerate(sorted(spec))}
    return _observations(spec, n, seed)


def _record_policy_class(case, policy, live, batch: int, steps: int, folder: Path) -> dict:
    loaded = _load(folder / "saved_policy")
    obs_spec = policy.time_step_spec.observation
    if steps:  # a recurrent policy: its state fed back, FIRST at the start and half-way
        rec, state = {}, loaded.get_initial_state(batch)
        for t in range(steps):
            step_type = np.full(batch, 0 if t in (0, steps // 2) else 1, np.int32)
            observation = _observation_batch(obs_spec, batch, seed=100 + t)
            step = loaded.action(_time_step(observation, step_type), state)
            state = step.state
            rec.update(_flat(f"t{t}/observation", observation))
            rec[f"t{t}/step_type"] = step_type
            rec[f"t{t}/action"] = np.asarray(step.action)
        return rec
    step_type = np.ones(batch, np.int32)
    observation = _observation_batch(obs_spec, batch, seed=1)
    time_step = _time_step(observation, step_type)
    rec = {"step_type": step_type, **_flat("observation", observation)}
    rec["action"] = np.asarray(loaded.action(time_step).action)
    if live is not None:  # the live policy's distribution (the greedy one's Q-values)
        dist = live.distribution(tf.nest.map_structure(tf.convert_to_tensor, time_step)).action
        if hasattr(dist, "logits") and dist.logits is not None:
            rec["distribution/logits"] = dist.logits.numpy()
        else:
            rec["distribution/mean"] = dist.mean().numpy()
            rec["distribution/stddev"] = dist.stddev().numpy()
    return rec


def make_reference(out_dir: Path, only: list[str]) -> None:
    """The cases of reference.tar.xz (see README.md)."""
    tf.random.set_seed(0)
    np.random.seed(0)
    kinds = {
        "q_greedy": "greedy(q)",
        "actor_normal_stochastic": "actor(normal)",
        "nested_obs": "greedy(q)",
        "q_rnn": "greedy(q(lstm))",
    }
    for case, (policy, live, batch, steps) in _reference_policies().items():
        if only and case not in only:
            continue
        folder = out_dir / case
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        # No train_step: PolicySaver then records -1, as a bare policy's save does.
        policy_saver.PolicySaver(policy, batch_size=None).save(str(folder / "saved_policy"))
        rec = _record_policy_class(case, policy, live, batch, steps, folder)
        info = {
            "kind": kinds[case],
            "deterministic": case != "actor_normal_stochastic",
            "case": case,
            "rnn_steps": steps,
            "batch": batch,
        }
        np.savez_compressed(folder / "expected.npz", **rec)
        (folder / "case.json").write_text(json.dumps(info, indent=1) + "\n")
        print(f"{case}: {sorted(rec)}")
    for case, policy in _reference_agents().items():
        if only and case not in only:
            continue
        folder = out_dir / case
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        train_step = tf.Variable(TRAIN_STEP, dtype=tf.int64)
        saver = policy_saver.PolicySaver(policy, batch_size=None, train_step=train_step)
        saver.save(str(folder / "saved_policy"))  # fresh networks: zero biases
        step_type = np.array([0, 1, 1, 2] * (BATCH // 4), np.int32)
        observation = _observations(policy.time_step_spec.observation, BATCH, seed=1)
        time_step = _time_step(observation, step_type)
        loaded = _load(folder / "saved_policy")
        tf.random.set_seed(11)
        rec = {"step_type": step_type, "observation": observation}
        rec["action"] = np.asarray(loaded.action(time_step).action)
        rec.update(_record_distribution(loaded._policy, time_step, policy.action_spec))
        sampled = case == "sac_collect"
        if sampled:
            one = _observations(policy.time_step_spec.observation, 1, seed=2)
            many = _time_step(np.repeat(one, SAMPLES, 0), np.ones(SAMPLES, np.int32))
            rec["samples/observation"] = one
            rec["samples/action"] = np.asarray(loaded.action(many).action)
        _perturb(policy)
        train_step.assign(CHECKPOINT_STEP)
        saver.save_checkpoint(str(folder / "checkpoint"))
        loaded = _load(folder / "saved_policy")
        loaded.update_from_checkpoint(str(folder / "checkpoint"))
        rec["checkpoint/action"] = np.asarray(loaded.action(time_step).action)
        dist = _record_distribution(loaded._policy, time_step, policy.action_spec)
        rec.update({f"checkpoint/{k}": v for k, v in dist.items()})
        info = {
            "kind": f"{case.split('_')[0]}.{'collect_policy' if sampled else 'policy'}",
            "case": case,
            "deterministic": not sampled,
            "batch": BATCH,
            "rnn_steps": 0,
            "sample_n": SAMPLES if sampled else 0,
            "trained_at_save": False,
            "train_step": TRAIN_STEP,
            "checkpoint_train_step": CHECKPOINT_STEP,
            "checkpoint_loaded_train_step": int(loaded.get_train_step()),
        }
        np.savez_compressed(folder / "expected.npz", **rec)
        (folder / "case.json").write_text(json.dumps(info, indent=1) + "\n")
        print(f"{case}: {sorted(rec)}")


if __name__ == "__main__":
    here = Path(__file__).resolve().parent
    args = sys.argv[1:]
    reference = bool(args) and args[0] == "--reference"
    args = args[1:] if reference else args
    target = Path(args[0]) if args else here
    (make_reference if reference else main)(target, args[1:])
