"""Train DQN with action masks on Taxi, export it, and play it on both TF-free backends.

    python examples/train_taxi_masked.py --seed 0 --output-dir runs/taxi_masked

Taxi gives ``info["action_mask"]`` with every observation: which of its six actions
(south, north, east, west, pickup, drop-off) change the state. The gymnasium adapter
puts it into the observation (``action_mask=True``: ``{"observation": state, "mask":
int8[6]}``), and DQN takes TF-Agents' ``observation_and_action_constraint_splitter``:
the Q network sees the state, the mask restricts the collect policy's epsilon-greedy
choice, the random warm-up and the target's argmax. The best evaluated greedy policy
is exported (``<output-dir>/bundle``: SavedModel, ONNX, LiteRT); each TF-free backend
(onnx, litert) then plays the same 100 fresh episodes, and every action is checked
against the mask the environment itself gave. The last line is ``mean return: X``,
the onnx backend's mean over those episodes.

Taxi-v3 is what TF-Agents' users know; gymnasium 1.3 renamed it Taxi-v4 with the same
default dynamics (v4 only fixed the optional ``is_rainy`` and ``fickle_passenger``),
and gymnasium 1.4 refuses v3: the example takes v4 where gymnasium has it.

The network: the state (0..499) through a 32-dim embedding (a learned table; ONNX
Gather, LiteRT GATHER) and one hidden layer of 64. Double DQN with 3-step returns on
16 environments, 32 gradient steps per iteration (one ``tf.function`` call costs about
the same for 8 or 32). A periodic evaluation (100 episodes) at ``--target-return`` is
good enough but maybe not the best a set of episodes allows (the optimal policy
averages 7.93 over Taxi's 300 starting states, a set of 100 varies by about 0.3):
training goes on until ``--patience`` evaluations in a row bring no better return,
and the best evaluated policy is kept.
``--quick`` trains a few seconds (the tests run it): it checks the pipeline, not the
score.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

START = time.perf_counter()

EVAL_EPISODES = 100  # per evaluation, periodic and final
FINAL_EVAL_SEED = 1_000_000  # seeds FINAL_EVAL_SEED + i: never used in training
PERIODIC_EVAL_SEED = 500_000
NUM_STATES = 500  # Taxi's Discrete(500) observation
EMBEDDING_DIM = 32
FC_LAYER_PARAMS = (64,)


def env_id() -> str:
    """Taxi-v4 where gymnasium has it (1.3+), else Taxi-v3: the same default dynamics."""
    import gymnasium

    return "Taxi-v4" if "Taxi-v4" in gymnasium.registry else "Taxi-v3"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=250_000, help="max environment steps")
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    parser.add_argument("--output-dir", default="runs/taxi_masked", help="checkpoints go here")
    parser.add_argument("--max-seconds", type=float, default=270.0, help="training time budget")
    parser.add_argument("--num-envs", type=int, default=16, help="environments stepped together")
    parser.add_argument("--train-steps", type=int, default=32, help="gradient steps per iteration")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--n-step", type=int, default=3, help="steps per return in the targets")
    parser.add_argument("--target-update-period", type=int, default=1000)
    parser.add_argument("--epsilon-steps", type=int, default=40_000, help="train steps to decay")
    parser.add_argument("--final-epsilon", type=float, default=0.05, help="epsilon after decay")
    parser.add_argument("--eval-interval", type=int, default=8_000, help="env steps between evals")
    parser.add_argument("--gamma", type=float, default=0.97, help="discount factor")
    parser.add_argument(
        "--target-return",
        type=float,
        default=7.0,
        help="good enough: then train on until --patience evaluations bring no better return",
    )
    parser.add_argument(
        "--patience", type=int, default=2, help="evaluations past the target without a better one"
    )
    parser.add_argument(
        "--episodes", type=int, default=EVAL_EPISODES, help="episodes of each evaluation"
    )
    parser.add_argument("--jit-compile", type=int, default=1, help="XLA-compile the train step")
    parser.add_argument("--quick", action="store_true", help="a few seconds of training (tests)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--verbose", action="store_true", help="show TensorFlow's C++ start-up and XLA logs"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.eval_interval, args.epsilon_steps = 1_500, 500, 200
        args.episodes, args.jit_compile = 10, 0
    return args


def q_network(observation_spec, action_spec):
    """The Q network over Taxi's state (the observation without its mask)."""
    import tf_keras

    from toolkit.networks.q_network import QNetwork

    return QNetwork(
        observation_spec,
        action_spec,
        preprocessing_layers=tf_keras.layers.Embedding(NUM_STATES, EMBEDDING_DIM),
        fc_layer_params=FC_LAYER_PARAMS,
    )


def play(policy, env, seed: int):
    """One episode per environment (environment i reset with ``seed + i``).

    Returns ``(returns, forbidden)``: each episode's return, and how many actions the
    environment's own ``info["action_mask"]`` forbade when the policy chose them.
    """
    import numpy as np

    from toolkit.trajectories.time_step import StepType

    size = env.batch_size
    time_step = env.reset(seed=seed)
    returns = np.zeros(size)
    finished = np.zeros(size, bool)
    forbidden = 0
    while not finished.all():
        action = policy.action(time_step).action
        # The mask gymnasium gave with the observation the policy just saw.
        own_mask = np.asarray(env.last_info["action_mask"])
        acting = ~finished & (time_step.step_type != StepType.LAST)
        forbidden += int(np.sum(acting & (own_mask[np.arange(size), action] == 0)))
        time_step = env.step(action)
        returns += np.where(acting, time_step.reward, 0.0)
        finished |= acting & (time_step.step_type == StepType.LAST)
    return returns, forbidden


def main(argv=None) -> float:
    args = parse_args(argv)
    # TensorFlow is imported here, after argument parsing: --help stays instant. Its C++
    # start-up lines (CUDA probes, XLA) stay off the terminal unless --verbose.
    from toolkit.agents import tensorflow_logs

    tensorflow_logs.quiet_import(args.verbose)
    import tensorflow as tf
    import tf_keras

    from exporters.export import export_policy
    from runtimes import load_policy
    from toolkit.agents import common, dqn, reporting, training
    from toolkit.environments import gym_adapter
    from toolkit.replay_buffer import ExperienceWriter, ReplayBuffer, experience_spec

    training.configure_tensorflow(args.seed)
    taxi = env_id()
    env = gym_adapter.GymVectorEnvironment(taxi, args.num_envs, action_mask=True)
    eval_env = gym_adapter.GymVectorEnvironment(taxi, args.episodes, action_mask=True)
    splitter = env.observation_and_action_constraint_splitter()
    network_observation_spec, _ = splitter(env.observation_spec())
    train_step = tf.Variable(0, dtype=tf.int64, trainable=False, name="train_step")
    agent = dqn.DqnAgent(
        env.time_step_spec(),
        env.action_spec(),
        q_network(network_observation_spec, env.action_spec()),
        tf_keras.optimizers.Adam(args.learning_rate),
        epsilon_greedy=common.linear_decay(1.0, args.final_epsilon, args.epsilon_steps, train_step),
        target_update_period=args.target_update_period,
        gamma=args.gamma,
        double_dqn=True,
        gradient_clipping=10.0,
        observation_and_action_constraint_splitter=splitter,
        train_step_counter=train_step,
        jit_compile=bool(args.jit_compile),
    )
    replay_buffer = ReplayBuffer(
        experience_spec(env.time_step_spec(), env.action_spec()), 200_000, seed=args.seed
    )
    writer = ExperienceWriter(replay_buffer, n_step=args.n_step, gamma=args.gamma)

    training_start, training_cpu = time.perf_counter(), time.process_time()
    with reporting.ProgressBar(
        f"{taxi} masked DQN", args.steps, enabled=not args.no_progress
    ) as bar:
        result = training.train_off_policy(
            agent,
            env,
            replay_buffer,
            writer,
            args.output_dir,
            max_env_steps=args.steps,
            batch_size=args.batch_size,
            train_steps_per_iteration=args.train_steps,
            initial_collect_steps=min(2_000, args.steps // 2),
            eval_env=eval_env,
            eval_interval=args.eval_interval,
            eval_seed=PERIODIC_EVAL_SEED + 1000 * args.seed,
            target_return=args.target_return,
            patience=args.patience,
            checkpoint_interval=50_000,
            max_seconds=args.max_seconds,
            seed=args.seed,
            on_progress=bar,
        )
    training_seconds = time.perf_counter() - training_start
    # CPU seconds of every thread: under load the wall time stretches, this does not.
    print(f"training CPU time: {time.process_time() - training_cpu:.1f} s")

    def exported(best_step):
        """Exports the best policy; each TF-free backend plays the final episodes."""
        bundle = export_policy(
            agent.policy,
            Path(args.output_dir) / "bundle",
            formats=("saved_model", "onnx", "litert"),
            train_step=best_step,
            metadata={"env": taxi, "action_mask": "observation/mask"},
            overwrite=True,
        )
        evaluations = {}
        for backend in ("litert", "onnx"):  # onnx last: its return is the last line's
            policy = load_policy(bundle, backend=backend)
            returns, forbidden = play(policy, eval_env, FINAL_EVAL_SEED + 1000 * args.seed)
            print(
                f"{backend} backend: mean return {returns.mean():.2f} over {len(returns)} "
                f"episodes, actions the environment's mask forbids: {forbidden}"
            )
            evaluations[backend] = returns
        return _Evaluation(list(evaluations["onnx"]))

    return reporting.report_run(
        agent,
        args.output_dir,
        eval_env,
        result,
        training_seconds,
        final_eval_seed=FINAL_EVAL_SEED + 1000 * args.seed,
        started=START,
        exported=exported,
    )


class _Evaluation:
    """What ``report_run`` reads of the exported policy's episodes."""

    def __init__(self, returns):
        import numpy as np

        self.episode_returns = returns
        self.mean_return = float(np.mean(returns))


if __name__ == "__main__":
    main()
