"""``train_off_policy`` with experience collected by Ray actors (``actors=K``).

The learner is ``toolkit.agents.training.train_off_policy``, unchanged: evaluation,
checkpoints and resuming work as they do locally; this wrapper connects to Ray,
exports the collect policy for the actors (``collection.DistributedCollector``) and
hands the loop the collector. It lives above the exporters (the probe export), so the
agents never import it.
"""

from __future__ import annotations

import os
from typing import Any

from toolkit.errors import ArgumentError

__all__ = ["train_off_policy"]


def train_off_policy(
    agent: Any,
    env: Any,
    replay_buffer: Any,
    writer: Any,
    output_dir: str | os.PathLike,
    *,
    actors: int,
    ray_address: str = "local",
    actor_env: Any = None,
    envs_per_actor: int = 4,
    steps_per_call: int = 8,
    weights_interval: int = 100,
    seed: int | None = None,
    **kwargs: Any,
) -> Any:
    """Trains like ``toolkit.agents.training.train_off_policy``, collecting on Ray actors.

    Args:
      agent, env, replay_buffer, writer, output_dir, seed, kwargs: as for
        ``toolkit.agents.training.train_off_policy``; ``env`` plays only the random
        warm-up, and sets the pace: one train call per ``env.batch_size`` steps.
      actors: collector actors; each runs ``agent.collect_policy`` exported to ONNX on
        the TF-free runtime and sends n-step rows (the writer's ``n_step``, ``gamma``).
      ray_address: "local" (a loopback cluster for this run) or a cluster address; an
        already initialised Ray is used as it is.
      actor_env: what actors make: an environment id or a picklable callable making
        one gymnasium environment (default: the id of ``env``'s environments).
      envs_per_actor: environments each actor steps together.
      steps_per_call: steps of all its environments per actor call (rows come back
        in batches of about ``envs_per_actor * steps_per_call``).
      weights_interval: train steps between weight broadcasts to the actors.

    Returns:
      The ``TrainResult``.
    """
    from toolkit.agents import training
    from toolkit.distributed import cluster
    from toolkit.distributed.collection import DistributedCollector

    if isinstance(actors, bool) or int(actors) < 1:
        raise ArgumentError(f"actors: expected a positive int, got {actors!r}")
    cpus = max(int(actors) + 1, os.cpu_count() or 1)  # a local cluster fits every actor
    with cluster.connect(ray_address, num_cpus=cpus) as ray:
        collector = DistributedCollector(
            ray,
            agent,
            actor_env if actor_env is not None else _env_id(env),
            int(actors),
            envs_per_actor=envs_per_actor,
            steps_per_call=steps_per_call,
            n_step=getattr(writer, "n_step", 1),
            gamma=getattr(writer, "gamma", 0.99),
            seed=seed,
            weights_interval=weights_interval,
        )
        try:
            return training.train_off_policy(
                agent, env, replay_buffer, writer, output_dir, seed=seed, collector=collector,
                **kwargs,
            )  # fmt: skip
        finally:
            collector.close()


def _env_id(env: Any) -> str:
    """The gymnasium id of a GymVectorEnvironment's environments (for actors to make)."""
    try:
        return env.gym_env.envs[0].spec.id
    except (AttributeError, IndexError) as e:
        raise ArgumentError(
            "actor_env: expected an environment id or factory for the actors; the "
            f"training environment {type(env).__name__} names none"
        ) from e
