"""Seeded evaluation episodes spread over Ray actors (TF-free workers).

Episode i always resets with ``seed + i``, and episodes are played in the same batches
as a local ``policy-toolkit run`` (``chunk`` environments stepping together, blocks
starting at multiples of ``chunk``), so the per-episode returns equal the local run's
whatever the number of workers. A sampling policy's draws come from a generator per
block (``actors.block_generator``): the same whichever actor plays the block.

Workers are lost and replaced here, not by Ray: an actor whose process or node dies
fails its block, which goes back to the queue for the next ready actor, and a new
actor is started in its place (it takes blocks once it answers). Ray's own actor
restarts would retry the block on the restarted actor only, which never starts when
its node is gone and the others have no free CPU: the evaluation then waited forever.
A block whose workers die ``MAX_BLOCK_ATTEMPTS`` times, or no worker ready for
``start_timeout`` seconds, ends the evaluation with a ``ClusterError``.

A task whose node is gone is taken as lost even when Ray has not failed it: waits
with tasks running wake every ``LIVENESS_POLL_S`` seconds and check their actors'
nodes in the cluster's table. A removed node's task was seen to stay pending after Ray
had marked the node dead (2 cores under load), and the evaluation then never returned.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from typing import Any

from toolkit.environments import episodes as episodes_lib
from toolkit.errors import ArgumentError, ClusterError, ToolkitError

__all__ = ["DistributedResult", "evaluate", "start_evaluators"]

#: the local run's batch
DEFAULT_CHUNK = episodes_lib.MAX_PARALLEL_ENVS
#: How long the evaluation waits with no worker ready (all lost, or none placed yet).
START_TIMEOUT_S = 120.0
#: Tries of one block before its workers' deaths are taken as the block's fault.
MAX_BLOCK_ATTEMPTS = 3
#: How often a wait with tasks running checks that their actors' nodes are alive.
LIVENESS_POLL_S = 5.0


@dataclasses.dataclass(frozen=True)
class DistributedResult:
    """Per-episode returns and lengths (in episode order), the wall time, and how.

    Attributes:
      backend: the runtime backend the workers played with.
      lost_workers: actors that died during the run (their blocks were played again).
    """

    returns: list[float]
    lengths: list[int]
    seconds: float
    workers: int
    backend: str = "onnx"
    lost_workers: int = 0


def start_evaluators(ray: Any, payload: Any, env: Any, workers: int, seed: int | None) -> list:
    """``workers`` evaluator actors, spread over the cluster's nodes.

    They are not restarted by Ray (``evaluate`` replaces lost ones itself).
    """
    from toolkit.distributed.actors import EvaluatorActor

    remote = ray.remote(num_cpus=1, max_restarts=0, max_task_retries=0)(EvaluatorActor)
    return [
        remote.options(scheduling_strategy="SPREAD").remote(payload, env, seed)
        for _ in range(workers)
    ]


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else "no reason given"


def _init_failure(error: Any) -> ClusterError:
    # An exception in an actor's constructor: the last line of Ray's message is the
    # original "module.Error: message" (a missing runtime, an unknown environment).
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return ClusterError(f"a Ray worker could not load the policy: {lines[-1] if lines else error}")


class _Pool:
    """The evaluator actors: ready ones, starting ones, and replacements for lost ones."""

    def __init__(self, ray: Any, payload_ref: Any, env: Any, seed: int | None, workers: int):
        self.ray = ray
        self.ready: list[Any] = []
        self.starting: dict[Any, Any] = {}  # ping ref -> actor
        self.everyone: list[Any] = []
        self.node_of: dict[Any, str] = {}  # ready actor -> its node's id
        self.lost = 0
        self._max_lost = MAX_BLOCK_ATTEMPTS * workers
        self._start = lambda count: start_evaluators(ray, payload_ref, env, count, seed)
        for actor in self._start(workers):
            self._watch(actor)

    def _watch(self, actor: Any) -> None:
        self.everyone.append(actor)
        self.starting[actor.ping.remote()] = actor

    def replace(self, actor: Any, error: Exception) -> None:
        """Counts ``actor`` lost and starts another in its place."""
        self.lost += 1
        self.ray.kill(actor)
        if self.lost > self._max_lost:
            raise ClusterError(
                f"{self.lost} Ray workers lost (at most {self._max_lost} are replaced; "
                f"last: {_first_line(str(error))})"
            )
        self._watch(self._start(1)[0])

    def started(self, ref: Any) -> None:
        """An actor answered its first ping (or died trying)."""
        actor = self.starting.pop(ref)
        try:
            where = self.ray.get(ref)
        except self.ray.exceptions.RayActorError as e:
            if e.actor_init_failed:
                raise _init_failure(e) from None
            self.replace(actor, e)
            return
        self.node_of[actor] = where["node_id"]
        self.ready.append(actor)

    def on_dead_nodes(self, actors: list[Any]) -> set[Any]:
        """Those of ``actors`` whose node the cluster no longer lists as alive."""
        try:
            nodes = self.ray.nodes()
        except Exception as e:  # the head is gone: no worker can answer either
            raise ClusterError(f"the Ray cluster's node table cannot be read ({e})") from None
        alive = {node["NodeID"] for node in nodes if node.get("Alive")}
        return {actor for actor in actors if self.node_of[actor] not in alive}

    def close(self) -> None:
        for actor in self.everyone:
            self.ray.kill(actor)


def _play(
    ray: Any,
    pool: _Pool,
    blocks: list[tuple[int, int]],
    seed: int,
    policy_seed: int | None,
    on_episodes: Callable[[int], Any] | None,
    start_timeout: float,
) -> dict[int, tuple[list[float], list[int]]]:
    """Plays every block on the pool's ready actors; returns results by block start."""
    from toolkit.distributed.actors import block_generator

    results: dict[int, tuple[list[float], list[int]]] = {}
    queue = list(blocks)
    running: dict[Any, tuple[tuple[int, int], Any]] = {}  # task ref -> (block, actor)
    attempts = dict.fromkeys(blocks, 0)

    def lost(block: tuple[int, int], actor: Any, error: Exception) -> None:
        """The block goes back to the queue's head; its actor is replaced."""
        attempts[block] += 1
        if attempts[block] >= MAX_BLOCK_ATTEMPTS:
            raise ClusterError(
                f"episodes with seeds {seed + block[0]}..{seed + sum(block) - 1}: "
                f"{attempts[block]} Ray workers died playing them "
                f"(last: {_first_line(str(error))})"
            ) from None
        queue.insert(0, block)
        pool.replace(actor, error)

    idle_since = time.monotonic()
    while queue or running:
        while queue and pool.ready:
            actor = pool.ready.pop(0)
            block = queue.pop(0)
            rng = block_generator(policy_seed, block[0])
            running[actor.evaluate.remote(seed + block[0], block[1], rng)] = (block, actor)
        if running:
            idle_since = time.monotonic()
            timeout = None
        else:  # blocks wait and no actor is ready: some are starting (or cannot)
            timeout = start_timeout - (time.monotonic() - idle_since)
            if timeout <= 0 or not pool.starting:
                raise ClusterError(
                    f"no Ray worker was ready for {start_timeout:g} s ({pool.lost} lost, "
                    f"{len(pool.starting)} starting; the cluster may have no free CPU for them)"
                )
        wait = LIVENESS_POLL_S if timeout is None else min(timeout, LIVENESS_POLL_S)
        done, _ = ray.wait([*running, *pool.starting], num_returns=1, timeout=wait)
        if not done and running:  # nothing for a while: are the running actors' nodes there?
            dead = pool.on_dead_nodes([actor for _, actor in running.values()])
            for ref in [ref for ref, (_, actor) in running.items() if actor in dead]:
                block, actor = running.pop(ref)
                lost(block, actor, ClusterError("its node left the cluster"))
        for ref in done:
            if ref in pool.starting:
                pool.started(ref)
                continue
            block, actor = running.pop(ref)
            try:
                results[block[0]] = ray.get(ref)
            except ray.exceptions.RayActorError as e:
                lost(block, actor, e)
                continue
            except ray.exceptions.RayTaskError as e:
                # An error of the episodes themselves (a policy or environment error):
                # playing them again would raise it again.
                if isinstance(e.cause, ToolkitError):
                    raise e.cause from None
                raise
            pool.ready.append(actor)
            if on_episodes is not None:
                on_episodes(len(results[block[0]][0]))
    return results


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
    backend: str = "auto",
    on_episodes: Callable[[int], Any] | None = None,
    on_actors: Callable[[list], Any] | None = None,
    quiet: bool = True,
    start_timeout: float = START_TIMEOUT_S,
    trust: Any = None,
) -> DistributedResult:
    """Plays ``episodes`` episodes of a bundle's policy on ``workers`` Ray actors.

    Args:
      bundle: the bundle folder (it needs the backend's export).
      env: a gymnasium id, or a picklable callable making one gymnasium environment.
      episodes: how many episodes; episode i resets with ``seed + i``.
      seed: the first episode's reset seed.
      workers: Ray actors (one CPU each).
      address: "local" (a loopback cluster for this call) or a cluster address; an
        already initialised Ray is used as it is.
      chunk: episodes per task, stepping together; the default matches the local run.
      policy_seed: seeds the policy's draws (sampling policies), per block.
      backend: what the workers run: "onnx", "litert", or "auto" (onnx when the bundle
        has it, else litert); see ``toolkit.distributed.backends``.
      on_episodes: called with the number of episodes each finished task adds.
      on_actors: called with the first actor handles once they are started (tests kill one).
      quiet: keep Ray's own output off the terminal (``cluster.connect``).
      start_timeout: seconds to wait with no worker ready before giving up.
      trust: the trust policy the bundle must pass, checked here before Ray starts (as
        ``runtimes.load_policy``'s; None: POLICY_TOOLKIT_TRUST_KEYS's keys if set).

    Returns:
      A ``DistributedResult`` with the episodes in seed order.

    Raises:
      ClusterError: the cluster cannot be reached, no worker gets ready within
        ``start_timeout``, workers keep dying on one block, or a worker cannot load
        the policy.
      BundleError, UnsupportedError: a bundle without the backend's format, or "tf".
    """
    from toolkit.distributed import actors, cluster

    for name, value in (("episodes", episodes), ("workers", workers), ("chunk", chunk)):
        if isinstance(value, bool) or int(value) < 1:
            raise ArgumentError(f"{name}: expected a positive int, got {value!r}")
    payload = actors.bundle_payload(bundle, backend, trust)
    cpus = max(int(workers), os.cpu_count() or 1)  # a local cluster fits every actor
    with cluster.connect(address, num_cpus=cpus, quiet=quiet) as ray:
        started = time.perf_counter()
        pool = _Pool(ray, ray.put(payload), env, policy_seed, int(workers))
        try:
            if on_actors is not None:
                on_actors(list(pool.everyone))
            blocks = episodes_lib.chunks(episodes, chunk)
            results = _play(ray, pool, blocks, seed, policy_seed, on_episodes, start_timeout)
        finally:
            pool.close()
        seconds = time.perf_counter() - started
    returns: list[float] = []
    lengths: list[int] = []
    for start, _ in blocks:
        returns += results[start][0]
        lengths += results[start][1]
    return DistributedResult(returns, lengths, seconds, int(workers), payload.backend, pool.lost)
