"""Train a PPO policy on CartPole-v1, export it, and score it sampling on the onnx backend.

    python examples/train_cartpole_ppo.py --seed 0 --output-dir runs/cartpole_ppo

Writes ``<output-dir>/checkpoints`` (the whole training state: run again with the same
directory to resume), ``<output-dir>/policy_checkpoints`` (the best stochastic policy,
a Categorical over the two actions) and ``<output-dir>/bundle`` (that policy exported).
The TF policy is scored over 20 fresh episodes whose seeds training never used, then
the bundle plays the same episodes on the onnx backend (no TensorFlow in the loop),
sampling its actions with the runtime's own generator. The last line of output is
``mean return: <number>``: the exported policy's mean return.

Each iteration collects ``--rollout-length`` steps of ``--num-envs`` environments and
runs all of PPO's epochs and minibatches inside one ``tf.function`` call; training
stops once a periodic evaluation (20 episodes, sampling) reaches ``--target-return``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

START = time.perf_counter()

FINAL_EVAL_EPISODES = 20
FINAL_EVAL_SEED = 1_000_000  # seeds FINAL_EVAL_SEED + i: never used in training
PERIODIC_EVAL_SEED = 500_000


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--steps", type=int, default=300_000, help="max environment steps (resumed ones count)"
    )
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    parser.add_argument("--output-dir", default="runs/cartpole_ppo", help="checkpoints go here")
    parser.add_argument("--max-seconds", type=float, default=120.0, help="training time budget")
    parser.add_argument("--num-envs", type=int, default=8, help="environments stepped together")
    parser.add_argument("--rollout-length", type=int, default=128, help="steps per env per update")
    parser.add_argument("--epochs", type=int, default=10, help="passes over each rollout")
    parser.add_argument("--minibatch-size", type=int, default=256)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--entropy-coef", type=float, default=0.0)
    parser.add_argument("--gamma", type=float, default=0.99, help="discount factor")
    parser.add_argument("--lambda", dest="lambda_", type=float, default=0.95, help="GAE lambda")
    parser.add_argument("--hidden", type=int, default=64, help="units of each hidden layer")
    parser.add_argument(
        "--shared-value",
        action="store_true",
        help="the value head shares the actor's hidden layers (default: its own)",
    )
    parser.add_argument("--eval-interval", type=int, default=8192, help="env steps between evals")
    parser.add_argument("--target-return", type=float, default=490.0, help="stop when reached")
    parser.add_argument("--jit-compile", type=int, default=1, help="XLA-compile the train step")
    parser.add_argument("--no-export", action="store_true", help="score the TF policy only")
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
    import tensorflow as tf
    import tf_keras

    from toolkit.agents import ppo, reporting, training
    from toolkit.environments import gym_adapter
    from toolkit.networks.actor_distribution_network import ActorDistributionNetwork
    from toolkit.networks.value_network import ValueNetwork

    training.configure_tensorflow(args.seed)

    env = gym_adapter.GymVectorEnvironment("CartPole-v1", args.num_envs)
    eval_env = gym_adapter.GymVectorEnvironment("CartPole-v1", FINAL_EVAL_EPISODES)
    observation_spec, action_spec = env.observation_spec(), env.action_spec()
    hidden = (args.hidden, args.hidden)
    actor = ActorDistributionNetwork(
        observation_spec, action_spec, fc_layer_params=hidden, activation_fn=tf.nn.tanh
    )
    if args.shared_value:
        value = ValueNetwork.sharing(actor)
    else:
        value = ValueNetwork(observation_spec, fc_layer_params=hidden, activation_fn=tf.nn.tanh)
    agent = ppo.PpoAgent(
        env.time_step_spec(),
        action_spec,
        actor,
        value,
        tf_keras.optimizers.Adam(args.learning_rate),
        num_epochs=args.epochs,
        minibatch_size=args.minibatch_size,
        gamma=args.gamma,
        lambda_=args.lambda_,
        entropy_coef=args.entropy_coef,
        seed=args.seed,
        jit_compile=bool(args.jit_compile),
    )

    training_start = time.perf_counter()
    with reporting.ProgressBar("CartPole-v1 PPO", args.steps, enabled=not args.no_progress) as bar:
        result = training.train_on_policy(
            agent,
            env,
            args.output_dir,
            max_env_steps=args.steps,
            rollout_length=args.rollout_length,
            eval_env=eval_env,
            eval_interval=args.eval_interval,
            eval_seed=PERIODIC_EVAL_SEED + 1000 * args.seed,
            max_episode_return=500.0,  # CartPole-v1: 500 steps of reward 1
            target_return=args.target_return,
            checkpoint_interval=50_000,
            max_seconds=args.max_seconds,
            seed=args.seed,
            on_progress=bar,
        )
    training_seconds = time.perf_counter() - training_start
    final_eval_seed = FINAL_EVAL_SEED + 1000 * args.seed

    def exported(train_step):
        # The bundle plays the final episodes on onnxruntime, sampling in numpy.
        from exporters.play import export_and_play

        return export_and_play(
            agent.policy,
            Path(args.output_dir) / "bundle",
            eval_env,
            seed=final_eval_seed,
            train_step=train_step,
        )

    return reporting.report_run(
        agent,
        args.output_dir,
        eval_env,
        result,
        training_seconds,
        final_eval_seed=final_eval_seed,
        started=START,
        exported=None if args.no_export else exported,
    )


if __name__ == "__main__":
    main()
