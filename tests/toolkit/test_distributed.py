"""Rollouts and collection on a real two-node Ray cluster on this machine (loopback only).

One cluster (``ray.cluster_utils.Cluster``: a head and a worker node of one CPU each,
bound to 127.0.0.1, Ray's files and auth token in a temporary folder) serves every
test here; it is shut down at the end and no Ray process is left behind.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import tempfile
import time

import numpy as np
import pytest

from tests.subprocess_utils import run_python

# Ray is imported in the fixture, after RAY_ENV is set: it reads it at import time.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="needs ray"),
]

ENV_ID = "CartPole-v1"
RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # keep 127.0.0.1 as it is
}


def _ray_pids(folder: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", folder], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


@pytest.fixture(scope="module")
def cluster():
    # Short path: Ray's unix sockets live under it (paths are limited to 107 bytes).
    folder = tempfile.mkdtemp(prefix="ptk-ray-")
    saved = {k: os.environ.get(k) for k in [*RAY_ENV, "HOME", "RAY_TMPDIR"]}
    os.environ.update(RAY_ENV, HOME=folder, RAY_TMPDIR=folder)
    import ray

    from toolkit.distributed import cluster as cluster_lib

    assert not cluster_lib.is_loopback("10.0.0.1:6379")
    assert ray._private.ray_constants.ENABLE_RAY_CLUSTER is False, "ray was imported too early"
    from ray.cluster_utils import Cluster

    nodes = None
    try:
        node = {"num_cpus": 1, "node_ip_address": "127.0.0.1"}
        nodes = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
        nodes.add_node(**node)
        ray.init(
            address=nodes.address,
            _node_ip_address="127.0.0.1",
            configure_logging=False,
            log_to_driver=False,
        )
        nodes.wait_for_nodes()
        ray.test_address = nodes.address
        yield ray
    finally:
        ray.shutdown()
        if nodes is not None:
            nodes.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        deadline = time.monotonic() + 30
        while _ray_pids(folder) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = _ray_pids(folder)
        shutil.rmtree(folder, ignore_errors=True)
        assert not left, f"Ray processes left behind: {left}"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from examples import cartpole_factory
    from exporters.export import export_policy

    return export_policy(
        cartpole_factory.policy(), tmp_path_factory.mktemp("dist") / "cartpole", formats=("onnx",)
    )


def _local(bundle, episodes, seed):
    from runtimes import load_policy
    from toolkit.cli import rollout

    policy = load_policy(bundle, backend="onnx", seed=seed)
    env = rollout.make_env(ENV_ID, min(episodes, rollout.MAX_PARALLEL_ENVS))
    return rollout.rollout(policy, env, episodes, seed, env_id=ENV_ID)


def test_evaluation_equals_local_episode_for_episode_even_after_a_kill(cluster, bundle):
    from toolkit.distributed import evaluation

    ray = cluster
    seen = {}

    def inspect(actors):
        seen["where"] = ray.get([a.ping.remote() for a in actors])
        seen["actors"] = actors

    def kill_once(_):
        if "killed" not in seen:
            # Both actors die (one of them mid-task); Ray restarts them and redoes the work.
            seen["killed"] = [a.ping.remote() for a in seen["actors"]]
            for actor in seen["actors"]:
                ray.kill(actor, no_restart=False)

    episodes, seed = 100, 7
    local = _local(bundle, episodes, seed)
    result = evaluation.evaluate(
        bundle, ENV_ID, episodes, seed, workers=2, on_actors=inspect, on_episodes=kill_once
    )
    assert result.returns == local.returns
    assert result.lengths == local.lengths
    assert len(result.returns) == episodes
    where = seen["where"]
    assert len({w["node_id"] for w in where}) == 2, "actors are spread over both nodes"
    assert not any(w["tensorflow"] for w in where), "the workers imported TensorFlow"

    again = evaluation.evaluate(bundle, ENV_ID, 40, seed, workers=2, chunk=8)
    assert again.returns == local.returns[:40]


def test_cli_run_with_workers_gives_the_local_returns(cluster, bundle):
    import json

    from typer.testing import CliRunner

    from toolkit.cli import app

    runner = CliRunner()
    args = ["run", str(bundle), "--env", ENV_ID, "-n", "40", "--seed", "3", "--json"]
    local = runner.invoke(app, args)
    distributed = runner.invoke(app, [*args, "--workers", "2", "--ray", cluster.test_address])
    assert local.exit_code == 0, local.output
    assert distributed.exit_code == 0, distributed.output
    a, b = json.loads(local.stdout), json.loads(distributed.stdout)
    assert b["workers"] == 2
    assert a["returns"] == b["returns"] and a["lengths"] == b["lengths"]


def test_distributed_dqn_improves_over_random_and_survives_a_killed_actor(cluster, tmp_path):
    import tensorflow as tf
    import tf_keras

    from toolkit.agents import common, dqn
    from toolkit.distributed import training as distributed_training
    from toolkit.distributed.collection import ACTOR_NAME_PREFIX
    from toolkit.environments import driver, gym_adapter
    from toolkit.networks.q_network import QNetwork
    from toolkit.policies.random_py_policy import RandomPyPolicy
    from toolkit.replay_buffer import ExperienceWriter, ReplayBuffer, experience_spec

    ray = cluster
    tf.random.set_seed(0)
    env = gym_adapter.GymVectorEnvironment(ENV_ID, 16)
    eval_env = gym_adapter.GymVectorEnvironment(ENV_ID, 10)
    step = tf.Variable(0, dtype=tf.int64)
    agent = dqn.DqnAgent(
        env.time_step_spec(),
        env.action_spec(),
        QNetwork(env.observation_spec(), env.action_spec(), fc_layer_params=(100, 50)),
        tf_keras.optimizers.Adam(2e-3),
        epsilon_greedy=common.linear_decay(1.0, 0.05, 4000, step),
        target_update_period=200,
        gamma=0.98,
        double_dqn=True,
        gradient_clipping=10.0,
        train_step_counter=step,
    )
    buffer = ReplayBuffer(experience_spec(env.time_step_spec(), env.action_spec()), 20_000, seed=0)
    writer = ExperienceWriter(buffer, n_step=3, gamma=0.98)
    lags, killed = [], []

    def on_progress(progress):
        if progress.policy_lag is not None:
            lags.append(progress.policy_lag)
        if not killed and progress.env_steps > 2000:
            names = [n["name"] for n in ray.util.list_named_actors(all_namespaces=True)]
            victims = [n for n in names if n.startswith(ACTOR_NAME_PREFIX)]
            killed.append(victims[0])
            ray.kill(ray.get_actor(victims[0]), no_restart=False)

    kwargs = dict(
        max_env_steps=5000,
        batch_size=64,
        train_steps_per_iteration=16,
        initial_collect_steps=1000,
        eval_env=eval_env,
        eval_interval=1000,
        checkpoint_interval=2000,
        seed=0,
        actors=2,
        envs_per_actor=4,
        weights_interval=16,
    )
    result = distributed_training.train_off_policy(
        agent, env, buffer, writer, tmp_path, on_progress=on_progress, **kwargs
    )
    assert killed, "no actor was killed"
    assert result.env_steps >= 5000 and result.stop_reason == "steps"
    assert lags and max(lags) >= 0
    random = driver.evaluate_policy(
        eval_env, RandomPyPolicy(env.time_step_spec(), env.action_spec(), seed=0), seed=10_000
    )
    assert result.best_return is not None
    assert result.best_return > 2 * random.mean_return, (result.best_return, random.mean_return)
    # The learner's checkpoints make the run resumable, with actors again.
    kwargs["max_env_steps"] = 5500
    resumed = distributed_training.train_off_policy(agent, env, buffer, writer, tmp_path, **kwargs)
    assert resumed.resumed_from == result.train_step
    assert resumed.env_steps >= 5500


def test_cli_and_plain_runs_do_not_import_ray(bundle):
    done = run_python(
        f"""
        import sys
        from typer.testing import CliRunner
        from toolkit.cli import app
        runner = CliRunner()
        assert runner.invoke(app, ["run", "--help"]).exit_code == 0
        result = runner.invoke(app, ["run", {str(bundle)!r}, "--env", "CartPole-v1", "-n", "2"])
        assert result.exit_code == 0, result.output
        import toolkit.distributed
        assert "ray" not in sys.modules
        print("ok")
        """
    )
    assert done.stdout.strip().endswith("ok"), done.stderr[-2000:]


def test_weights_map_gives_actors_the_learners_weights(tmp_path):
    """A bundle exported from probe weights takes trained weights through the map."""
    import tensorflow as tf

    from examples import cartpole_factory
    from toolkit.distributed import actors, weights
    from toolkit.trajectories import time_step as ts

    policy = cartpole_factory.policy()
    rng = np.random.default_rng(0)
    mapping = weights.export_for_actors(policy, tmp_path / "bundle")
    for variable in policy.variables():  # "training": new values everywhere, biases too
        variable.assign(rng.normal(size=variable.shape).astype(np.float32))
    runtime = actors.load_payload(actors.bundle_payload(tmp_path / "bundle"), seed=0)
    actors.set_weights(runtime, mapping.initializers(), 7)
    observation = rng.normal(size=(64, 4)).astype(np.float32)
    step = ts.restart(observation, batch_size=64)
    q_tf = policy.wrapped_policy._q_network(tf.constant(observation))[0].numpy()
    got = runtime.action(step).action
    np.testing.assert_array_equal(got, np.argmax(q_tf, axis=-1))
    assert runtime.train_step == 7
