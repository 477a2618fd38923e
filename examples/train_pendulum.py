"""Train a DDPG policy on Pendulum-v1, keep the best one, and score it on fresh episodes.

    python examples/train_pendulum.py --seed 0 --output-dir runs/pendulum

Writes ``<output-dir>/checkpoints`` (the whole training state: run again with the same
directory to resume) and ``<output-dir>/policy_checkpoints`` (the best deterministic
actor policy, for export). The last line of output is ``mean return: <number>``: the
policy's mean return over 20 fresh episodes whose seeds training never used.
"""

from __future__ import annotations

import argparse
import time

START = time.perf_counter()

FINAL_EVAL_EPISODES = 20
FINAL_EVAL_SEED = 1_000_000  # seeds FINAL_EVAL_SEED + i: never used in training
PERIODIC_EVAL_SEED = 500_000


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--steps", type=int, default=20_000, help="max environment steps (resumed ones count)"
    )
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    parser.add_argument("--output-dir", default="runs/pendulum", help="checkpoints go here")
    parser.add_argument("--max-seconds", type=float, default=300.0, help="training time budget")
    parser.add_argument("--num-envs", type=int, default=4, help="environments stepped together")
    parser.add_argument("--train-steps", type=int, default=4, help="gradient steps per iteration")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--actor-learning-rate", type=float, default=1e-3)
    parser.add_argument("--critic-learning-rate", type=float, default=1e-3)
    parser.add_argument("--ou-stddev", type=float, default=0.3)
    parser.add_argument("--hidden", type=int, default=128, help="units of each hidden layer")
    parser.add_argument("--eval-interval", type=int, default=1000, help="env steps between evals")
    parser.add_argument("--target-return", type=float, default=-170.0, help="stop when reached")
    parser.add_argument("--jit-compile", type=int, default=1, help="XLA-compile the train step")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--verbose", action="store_true", help="show TensorFlow's C++ start-up and XLA logs"
    )
    return parser.parse_args(argv)


def main(argv=None) -> float:
    args = parse_args(argv)
    # TensorFlow is imported here, after argument parsing: --help stays instant. Its C++
    # start-up lines (CUDA probes, XLA) stay off the terminal unless --verbose.
    from toolkit.agents import tensorflow_logs

    tensorflow_logs.quiet_import(args.verbose)
    import tf_keras

    from toolkit.agents import ddpg, reporting, training
    from toolkit.environments import gym_adapter
    from toolkit.networks.actor_network import ActorNetwork
    from toolkit.networks.critic_network import CriticNetwork
    from toolkit.replay_buffer import ExperienceWriter, ReplayBuffer, experience_spec

    training.configure_tensorflow(args.seed)

    env = gym_adapter.GymVectorEnvironment("Pendulum-v1", args.num_envs)
    eval_env = gym_adapter.GymVectorEnvironment("Pendulum-v1", FINAL_EVAL_EPISODES)
    observation_spec, action_spec = env.observation_spec(), env.action_spec()
    actor = ActorNetwork(observation_spec, action_spec, fc_layer_params=(args.hidden, args.hidden))
    critic = CriticNetwork(
        (observation_spec, action_spec),
        observation_fc_layer_params=(args.hidden,),
        joint_fc_layer_params=(args.hidden,),
    )
    gamma = 0.99
    agent = ddpg.DdpgAgent(
        env.time_step_spec(),
        action_spec,
        actor,
        critic,
        tf_keras.optimizers.Adam(args.actor_learning_rate),
        tf_keras.optimizers.Adam(args.critic_learning_rate),
        ou_stddev=args.ou_stddev,
        ou_damping=0.15,
        target_update_tau=0.005,
        gamma=gamma,
        jit_compile=bool(args.jit_compile),
    )
    replay_buffer = ReplayBuffer(
        experience_spec(env.time_step_spec(), action_spec), 100_000, seed=args.seed
    )
    writer = ExperienceWriter(replay_buffer, n_step=1, gamma=gamma)

    training_start = time.perf_counter()
    with reporting.ProgressBar("Pendulum-v1 DDPG", args.steps, enabled=not args.no_progress) as bar:
        result = training.train_off_policy(
            agent,
            env,
            replay_buffer,
            writer,
            args.output_dir,
            max_env_steps=args.steps,
            batch_size=args.batch_size,
            train_steps_per_iteration=args.train_steps,
            initial_collect_steps=min(1000, args.steps),
            eval_env=eval_env,
            eval_interval=args.eval_interval,
            eval_seed=PERIODIC_EVAL_SEED + 1000 * args.seed,
            target_return=args.target_return,
            checkpoint_interval=10_000,
            max_seconds=args.max_seconds,
            seed=args.seed,
            on_progress=bar,
        )
    training_seconds = time.perf_counter() - training_start
    return reporting.report_run(
        agent,
        args.output_dir,
        eval_env,
        result,
        training_seconds,
        final_eval_seed=FINAL_EVAL_SEED + 1000 * args.seed,
        started=START,
    )


if __name__ == "__main__":
    main()
