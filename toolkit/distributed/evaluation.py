"""Seeded evaluation episodes spread over Ray actors (TF-free workers).

Episode i always resets with ``seed + i``, and episodes are played in the same batches
as a local ``policy-toolkit run`` (``chunk`` environments stepping together, blocks
starting at multiples of ``chunk``), so the per-episode returns equal the local run's
whatever the number of workers. Each actor loads the bundle with the onnx backend from
bytes sent through the object store. Actors are restarted when they die and their
unfinished blocks are played again (Ray retries the task), which changes nothing in
the results: a block's episodes depend only on their seeds.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from typing import Any

from toolkit.environments import episodes as episodes_lib
from toolkit.errors import ArgumentError

__all__ = ["DistributedResult", "evaluate", "start_evaluators"]

#: the local run's batch
DEFAULT_CHUNK = episodes_lib.MAX_PARALLEL_ENVS


@dataclasses.dataclass(frozen=True)
class DistributedResult:
    """Per-episode returns and lengths (in episode order) and the wall time."""

    returns: list[float]
    lengths: list[int]
    seconds: float
    workers: int


def start_evaluators(ray: Any, files: Any, env: Any, workers: int, seed: int | None) -> list:
    """``workers`` evaluator actors, spread over the cluster's nodes, restarted if they die."""
    from toolkit.distributed.actors import EvaluatorActor

    remote = ray.remote(num_cpus=1, max_restarts=-1, max_task_retries=-1)(EvaluatorActor)
    return [
        remote.options(scheduling_strategy="SPREAD").remote(files, env, seed)
        for _ in range(workers)
    ]


def evaluate(
    bundle: str | os.PathLike,
    env: Any,
    episodes: int,
    seed: int = 0,
    workers: int = 2,
    *,
    address: str = "local",
    chunk: int = DEFAULT_CHUNK,
    policy_seed: int | None = None,
    on_episodes: Callable[[int], Any] | None = None,
    on_actors: Callable[[list], Any] | None = None,
) -> DistributedResult:
    """Plays ``episodes`` episodes of a bundle's policy on ``workers`` Ray actors.

    Args:
      bundle: the bundle folder (it needs the ONNX export).
      env: a gymnasium id, or a picklable callable making one gymnasium environment.
      episodes: how many episodes; episode i resets with ``seed + i``.
      seed: the first episode's reset seed.
      workers: Ray actors (one CPU each).
      address: "local" (a loopback cluster for this call) or a cluster address; an
        already initialised Ray is used as it is.
      chunk: episodes per task, stepping together; the default matches the local run.
      policy_seed: seeds each actor's policy generator (stochastic policies).
      on_episodes: called with the number of episodes each finished task adds.
      on_actors: called with the actor handles once they are started (tests kill one).

    Returns:
      A ``DistributedResult`` with the episodes in seed order.
    """
    from toolkit.distributed import actors, cluster

    for name, value in (("episodes", episodes), ("workers", workers), ("chunk", chunk)):
        if isinstance(value, bool) or int(value) < 1:
            raise ArgumentError(f"{name}: expected a positive int, got {value!r}")
    files = actors.bundle_payload(bundle)
    cpus = max(int(workers), os.cpu_count() or 1)  # a local cluster fits every actor
    with cluster.connect(address, num_cpus=cpus) as ray:
        started = time.perf_counter()
        files_ref = ray.put(files)
        evaluators = start_evaluators(ray, files_ref, env, int(workers), policy_seed)
        if on_actors is not None:
            on_actors(evaluators)
        blocks = episodes_lib.chunks(episodes, chunk)
        results: dict[int, tuple[list[float], list[int]]] = {}
        pending: dict[Any, int] = {}
        queue = list(blocks)
        idle = list(evaluators)
        busy: dict[Any, Any] = {}
        try:
            while queue or pending:
                while queue and idle:
                    actor = idle.pop(0)
                    start, count = queue.pop(0)
                    ref = actor.evaluate.remote(seed + start, count)
                    pending[ref], busy[ref] = start, actor
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    start = pending.pop(ref)
                    idle.append(busy.pop(ref))
                    results[start] = ray.get(ref)
                    if on_episodes is not None:
                        on_episodes(len(results[start][0]))
        finally:
            for actor in evaluators:
                ray.kill(actor)
        seconds = time.perf_counter() - started
    returns: list[float] = []
    lengths: list[int] = []
    for start, _ in blocks:
        returns += results[start][0]
        lengths += results[start][1]
    return DistributedResult(returns, lengths, seconds, int(workers))
