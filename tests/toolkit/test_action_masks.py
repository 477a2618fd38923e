"""Action masks in training: the splitter value, the gymnasium adapter's mask, DQN's and
PPO's masked losses against numpy references, masked policy checkpoints, and every TF
and Python policy refusing an entry whose mask allows no action."""

from __future__ import annotations

import json

import gymnasium
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from toolkit import action_masks
from toolkit.action_masks import MaskSplitter
from toolkit.agents import checkpoints, dqn, ppo
from toolkit.environments import gym_adapter
from toolkit.errors import (
    ArgumentError,
    ArgumentTypeError,
    NoAllowedActionError,
    SpecError,
    SpecMismatchError,
    UnsupportedError,
)
from toolkit.networks.actor_distribution_network import ActorDistributionNetwork
from toolkit.networks.q_network import QNetwork
from toolkit.networks.value_network import ValueNetwork
from toolkit.policies import (
    epsilon_greedy_policy,
    greedy_policy,
    q_policy,
    random_py_policy,
    random_tf_policy,
)
from toolkit.policies.py_tf_policy import PyTFPolicy
from toolkit.replay_buffer import Experience
from toolkit.specs.array_spec import ArraySpec, BoundedArraySpec
from toolkit.trajectories import time_step as ts

FEATURES = ArraySpec((3,), np.float32, "observation/features")
MASK = BoundedArraySpec((3,), np.int8, 0, 1, "observation/mask")
OBS = {"features": FEATURES, "mask": MASK}
# Actions -1, 0, 1: mask column i is action i - 1.
ACTIONS = BoundedArraySpec((), np.int64, -1, 1, "action")
SPLITTER = MaskSplitter("features", "mask")
NO_ACTION = "expected at least one allowed action, got none"


def _taxi_id() -> str:
    return "Taxi-v4" if "Taxi-v4" in gymnasium.registry else "Taxi-v3"


def _masks(rng, shape, n=3):
    """Random 0/1 masks with at least one allowed action per row."""
    mask = (rng.random(shape + (n,)) < 0.5).astype(np.int8)
    rows = mask.reshape(-1, n)
    rows[np.arange(len(rows)), rng.integers(0, n, len(rows))] = 1
    return mask


def _time_step(mask, rng=None):
    rng = rng or np.random.default_rng(0)
    outer = mask.shape[:-1]
    features = rng.standard_normal(outer + (3,)).astype(np.float32)
    return ts.TimeStep(
        np.ones(outer, np.int32),
        np.zeros(outer, np.float32),
        np.ones(outer, np.float32),
        {"features": features, "mask": mask},
    )


# --- the splitter and the check --------------------------------------------------------------


def test_mask_splitter_splits_nests_and_round_trips_through_json():
    splitter = MaskSplitter("features", "mask")
    assert splitter({"features": 1, "mask": 2, "other": 3}) == (1, 2)
    assert splitter(OBS) == (FEATURES, MASK)  # specs too, as agents call it
    data = json.loads(json.dumps(splitter.to_json()))
    assert MaskSplitter.from_json(data) == splitter
    assert hash(MaskSplitter.from_json(data)) == hash(splitter)
    assert MaskSplitter() != splitter and MaskSplitter() == MaskSplitter("observation", "mask")
    with pytest.raises(ArgumentError, match="expected two different keys, got 'mask' twice"):
        MaskSplitter("mask", "mask")
    with pytest.raises(ArgumentTypeError, match="mask_key: expected a non-empty str, got 3"):
        MaskSplitter("features", 3)
    with pytest.raises(SpecError, match="^splitter: expected"):
        MaskSplitter.from_json({"kind": "mask_splitter", "observation": "a"})


def test_mask_path_names_the_observation_leaf_a_splitter_returns():
    assert action_masks.mask_path(SPLITTER, OBS) == "observation/mask"
    assert action_masks.mask_path(lambda o: (o["features"], o["mask"]), OBS) == "observation/mask"
    nested = {"a": {"m": MASK}, "f": FEATURES}
    assert action_masks.mask_path(lambda o: (o["f"], o["a"]["m"]), nested) == "observation/a/m"
    # A splitter that computes its mask (here: from the features) names no leaf.
    assert action_masks.mask_path(lambda o: (o["features"], o["features"] > 0), OBS) is None
    assert action_masks.mask_label(lambda o: (o, None), OBS) == action_masks.FALLBACK_LABEL
    assert action_masks.mask_path(None, OBS) is None


@pytest.mark.parametrize(
    ("outer", "blocked", "where"),
    [((), (), "m"), ((5,), (3,), "m[3]"), ((2, 3), (1, 2), "m[1, 2]")],
)
def test_check_rows_names_the_first_entry_without_an_action(outer, blocked, where):
    mask = np.ones(outer + (4,), np.int8)
    action_masks.check_rows(mask, outer, "m")  # every entry allows something: passes
    mask[blocked] = 0
    with pytest.raises(NoAllowedActionError, match=rf"^{__import__('re').escape(where)}: "):
        action_masks.check_rows(mask, outer, "m")
    # Several elements per action (a mask of shape (1, n)): one element without an action.
    mask = np.ones(outer + (1, 4), np.int8)
    mask[blocked] = 0
    with pytest.raises(NoAllowedActionError, match=NO_ACTION):
        action_masks.check_rows(mask, outer, lambda: "lazy")


# --- the gymnasium adapter ----------------------------------------------------------------------


def test_the_adapter_puts_taxis_own_mask_into_observations():
    env = gym_adapter.GymEnvironment(_taxi_id(), action_mask=True)
    spec = env.observation_spec()
    assert spec["mask"] == BoundedArraySpec((6,), np.int8, 0, 1, "observation/mask")
    assert spec["observation"] == BoundedArraySpec((), np.int64, 0, 499, "observation/observation")
    assert env.observation_and_action_constraint_splitter() == MaskSplitter("observation", "mask")
    taxi = env.gym_env.unwrapped
    time_step = env.reset(seed=3)
    for step in range(30):
        observation = time_step.observation
        # The mask is the one Taxi computes for the state it is in.
        np.testing.assert_array_equal(observation["mask"], taxi.action_mask(int(taxi.s)))
        assert int(observation["observation"]) == int(taxi.s)
        allowed = np.flatnonzero(observation["mask"])
        time_step = env.step(np.int64(allowed[step % len(allowed)]))  # numpy actions step too
    assert (
        gym_adapter.GymEnvironment(_taxi_id()).observation_and_action_constraint_splitter() is None
    )


def test_the_vector_adapter_gives_each_environment_its_mask():
    env = gym_adapter.GymVectorEnvironment(_taxi_id(), 3, action_mask=True)
    time_step = env.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(25):
        masks = time_step.observation["mask"]
        assert masks.shape == (3, 6) and masks.dtype == np.int8
        for i, sub in enumerate(env.gym_env.envs):
            np.testing.assert_array_equal(masks[i], sub.unwrapped.action_mask(int(sub.unwrapped.s)))
        actions = np.array([rng.choice(np.flatnonzero(m)) for m in masks])
        time_step = env.step(actions)


def test_the_adapter_names_what_is_wrong_with_a_mask():
    with pytest.raises(UnsupportedError, match="action_mask: masks a Discrete action space"):
        gym_adapter.GymEnvironment("Pendulum-v1", action_mask=True)
    with pytest.raises(ArgumentTypeError, match="action_mask: expected a bool or an info key"):
        gym_adapter.GymEnvironment(_taxi_id(), action_mask=3)
    env = gym_adapter.GymEnvironment(_taxi_id(), action_mask="legal_moves")
    with pytest.raises(
        SpecMismatchError,
        match=r"^info\['legal_moves'\]: expected an action mask of shape \(6,\) \(action_mask "
        r"asks for it\), got none$",
    ):
        env.reset(seed=0)


# --- DQN ------------------------------------------------------------------------------------


def _dqn(**kwargs):
    tf.random.set_seed(0)
    network = QNetwork(FEATURES, ACTIONS, fc_layer_params=(8,))
    return dqn.DqnAgent(
        ts.time_step_spec(OBS),
        ACTIONS,
        network,
        tf_keras.optimizers.SGD(0.1),
        gamma=0.9,
        observation_and_action_constraint_splitter=SPLITTER,
        **kwargs,
    )


def _masked_experience(batch, rng):
    def observation():
        return {
            "features": rng.standard_normal((batch, 3)).astype(np.float32),
            "mask": _masks(rng, (batch,)),
        }

    return Experience(
        observation=observation(),
        action=rng.integers(-1, 2, size=batch).astype(np.int64),
        reward=rng.standard_normal(batch).astype(np.float32),
        discount=rng.choice([0.0, 1.0], size=batch).astype(np.float32),
        next_observation=observation(),
    )


@pytest.mark.parametrize("double_dqn", [False, True])
def test_dqn_targets_take_the_best_allowed_next_action(double_dqn):
    agent = _dqn(double_dqn=double_dqn)
    for v in agent.target_q_network.variables:
        v.assign(v * 0.5 + 0.1)
    batch = _masked_experience(32, np.random.default_rng(1))
    q = agent.q_network(batch.observation["features"])[0].numpy()
    next_target = agent.target_q_network(batch.next_observation["features"])[0].numpy()
    chooser = next_target
    if double_dqn:
        chooser = agent.q_network(batch.next_observation["features"])[0].numpy()
    # numpy's argmax over the allowed actions only.
    best = np.argmax(np.where(batch.next_observation["mask"] == 1, chooser, -np.inf), axis=1)
    next_value = next_target[np.arange(32), best]
    target = batch.reward + 0.9 * batch.discount * next_value
    chosen = q[np.arange(32), batch.action + 1]
    error = target - chosen
    expected = np.where(np.abs(error) <= 1.0, 0.5 * error**2, np.abs(error) - 0.5).mean()
    # The masks matter on this batch: the unmasked max differs somewhere.
    assert not np.allclose(next_value, next_target.max(axis=1))
    np.testing.assert_allclose(agent.train(batch).loss.numpy(), expected, rtol=1e-5)


def test_dqn_policies_and_warmup_never_take_a_masked_action():
    agent = _dqn(epsilon_greedy=1.0)  # the collect policy explores on every entry
    rng = np.random.default_rng(2)
    mask = _masks(rng, (500,))
    time_step = _time_step(mask, rng)
    collect = PyTFPolicy(agent.collect_policy, seed=0).action(time_step).action
    greedy = PyTFPolicy(agent.policy).action(time_step).action
    for actions in (collect, greedy):
        assert np.all(mask[np.arange(500), actions + 1] == 1)
    assert len(np.unique(collect)) == 3  # exploring, not stuck on one action
    assert agent.observation_and_action_constraint_splitter is SPLITTER


# --- PPO ------------------------------------------------------------------------------------


def _ppo(**kwargs):
    tf.random.set_seed(0)
    actor = ActorDistributionNetwork(FEATURES, ACTIONS, fc_layer_params=(8,))
    value = ValueNetwork(FEATURES, fc_layer_params=(8,))
    return ppo.PpoAgent(
        ts.time_step_spec(OBS),
        ACTIONS,
        actor,
        value,
        tf_keras.optimizers.Adam(1e-3),
        num_epochs=2,
        minibatch_size=16,
        entropy_coef=0.01,
        observation_and_action_constraint_splitter=SPLITTER,
        seed=0,
        **kwargs,
    )


def test_ppo_masks_the_logits_of_its_losses_and_policies():
    agent = _ppo()
    rng = np.random.default_rng(3)
    mask = _masks(rng, (64,))
    observation = {"features": rng.standard_normal((64, 3)).astype(np.float32), "mask": mask}
    logits = agent.actor_network(observation["features"])[0].logits.numpy()
    masked = np.where(mask == 1, logits, -np.inf)
    log_softmax = masked - np.log(
        np.exp(masked - masked.max(1, keepdims=True)).sum(1, keepdims=True)
    )
    log_softmax -= masked.max(1, keepdims=True)
    actions = rng.integers(0, 3, 64)
    allowed = mask[np.arange(64), actions] == 1
    log_prob = agent._log_prob(agent._distribution(observation), actions - 1).numpy()
    np.testing.assert_allclose(
        log_prob[allowed], log_softmax[np.arange(64), actions][allowed], rtol=1e-5
    )
    assert np.all(log_prob[~allowed] < -1e30)  # a masked action has no probability
    samples = PyTFPolicy(agent.collect_policy, seed=1).action(_time_step(mask, rng)).action
    assert np.all(mask[np.arange(64), samples + 1] == 1)


def test_a_masked_ppo_update_stays_finite():
    agent = _ppo()
    rng = np.random.default_rng(4)
    T, N = 8, 4

    def observation():
        return {
            "features": rng.standard_normal((T, N, 3)).astype(np.float32),
            "mask": _masks(rng, (T, N)),
        }

    obs = observation()
    policy = PyTFPolicy(agent.collect_policy, seed=2)
    actions = policy.action(
        ts.TimeStep(
            np.ones((T, N), np.int32),
            np.zeros((T, N), np.float32),
            np.ones((T, N), np.float32),
            obs,
        )
    ).action
    rollout = ppo.Rollout(
        obs,
        actions,
        rng.standard_normal((T, N)).astype(np.float32),
        np.ones((T, N), np.float32),
        observation(),
        np.ones((T, N), np.float32),
        np.zeros((T, N), np.float32),
    )
    info = agent.train(rollout)
    assert np.isfinite(info.loss.numpy()) and np.isfinite(info.extra["entropy"].numpy())
    assert all(np.all(np.isfinite(v.numpy())) for v in agent.actor_network.variables)


def test_ppo_refuses_a_mask_over_continuous_actions():
    continuous = BoundedArraySpec((1,), np.float32, -1.0, 1.0, "action")
    actor = ActorDistributionNetwork(FEATURES, continuous, fc_layer_params=(4,))
    with pytest.raises(SpecError, match="PpoAgent: an action mask needs a discrete action spec"):
        ppo.PpoAgent(
            ts.time_step_spec(OBS),
            continuous,
            actor,
            ValueNetwork(FEATURES, fc_layer_params=(4,)),
            tf_keras.optimizers.Adam(1e-3),
            observation_and_action_constraint_splitter=SPLITTER,
        )


# --- policy checkpoints -----------------------------------------------------------------------


def test_a_policy_checkpoint_rebuilds_the_masked_policy(tmp_path):
    agent = _dqn()
    for v in agent.q_network.variables:
        v.assign(v + 0.3)
    checkpoints.PolicyCheckpointer(tmp_path, agent).save()
    loaded = checkpoints.load_policy(tmp_path)
    assert loaded.config["splitter"] == SPLITTER.to_json()
    assert loaded.policy.observation_and_action_constraint_splitter == SPLITTER
    time_step = _time_step(_masks(np.random.default_rng(5), (100,)))
    np.testing.assert_array_equal(
        PyTFPolicy(loaded.policy).action(time_step).action,
        PyTFPolicy(agent.policy).action(time_step).action,
    )


def test_a_splitter_without_json_form_is_refused_when_loaded(tmp_path):
    tf.random.set_seed(0)
    agent = dqn.DqnAgent(
        ts.time_step_spec(OBS),
        ACTIONS,
        QNetwork(FEATURES, ACTIONS, fc_layer_params=(4,)),
        tf_keras.optimizers.SGD(0.1),
        observation_and_action_constraint_splitter=lambda o: (o["features"], o["mask"]),
    )
    checkpoints.PolicyCheckpointer(tmp_path, agent).save()  # training saves it anyway
    with pytest.raises(UnsupportedError, match="splitter is a function with no JSON form"):
        checkpoints.load_policy(tmp_path)


# --- no allowed action ------------------------------------------------------------------------


def _q_policy():
    network = QNetwork(FEATURES, ACTIONS, fc_layer_params=(4,))
    return q_policy.QPolicy(
        ts.time_step_spec(OBS),
        ACTIONS,
        network,
        observation_and_action_constraint_splitter=SPLITTER,
    )


def _blocked(outer, row):
    mask = np.ones(outer + (3,), np.int8)
    mask[row] = 0
    return _time_step(mask)


@pytest.mark.parametrize("kind", ["q", "greedy", "epsilon_greedy", "random"])
def test_tf_policies_refuse_an_entry_without_an_allowed_action(kind):
    q = _q_policy()
    policy = {
        "q": q,
        "greedy": greedy_policy.GreedyPolicy(q),
        "epsilon_greedy": epsilon_greedy_policy.EpsilonGreedyPolicy(q, 0.5),
        "random": random_tf_policy.RandomTFPolicy(
            ts.time_step_spec(OBS), ACTIONS, observation_and_action_constraint_splitter=SPLITTER
        ),
    }[kind]
    message = f"^observation/mask\\[3\\]: {NO_ACTION}$"
    with pytest.raises(NoAllowedActionError, match=message):  # eagerly
        policy.action(_blocked((5,), 3))
    with pytest.raises(NoAllowedActionError, match=f"^observation/mask\\[1, 0\\]: {NO_ACTION}$"):
        policy.action(_blocked((2, 2), (1, 0)))
    with pytest.raises(NoAllowedActionError, match=f"^observation/mask: {NO_ACTION}$"):
        policy.action(_blocked((), ()))
    with pytest.raises(NoAllowedActionError, match=message):  # numpy in and out
        PyTFPolicy(policy).action(_blocked((5,), 3))
    with pytest.raises(NoAllowedActionError, match=message):
        policy.distribution(_blocked((5,), 3))
    traced = tf.function(lambda t: policy.action(t).action, autograph=False)
    with pytest.raises(
        tf.errors.InvalidArgumentError, match=f"observation/mask\\[3\\]: {NO_ACTION}"
    ):
        traced(_blocked((5,), 3))
    assert traced(_time_step(np.ones((5, 3), np.int8))).shape == (5,)  # allowed rows pass


def test_the_random_python_policy_refuses_it_too():
    policy = random_py_policy.RandomPyPolicy(
        ts.time_step_spec(OBS), ACTIONS, seed=0, observation_and_action_constraint_splitter=SPLITTER
    )
    with pytest.raises(NoAllowedActionError, match=f"^observation/mask\\[2\\]: {NO_ACTION}$"):
        policy.action(_blocked((4,), 2))
