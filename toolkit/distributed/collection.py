"""Experience from Ray actors for the in-graph learner (``train_off_policy(actors=K)``).

The learner exports its collect policy once (ONNX only, ``weights.export_for_actors``)
and starts K ``CollectorActor``s that load it with the onnx backend. Each actor always
has one ``collect`` call in flight: it takes the weights named in the call (swapping
them in when they are newer than its own), steps its environments, and returns n-step
Experience rows; the learner puts them in its replay buffer. Every
``weights_interval`` train steps the learner puts its current weights (numpy arrays
keyed by ONNX initializer name) and the collect policy's action description (the
decayed epsilon) into the object store once; later calls carry that reference, and
actors apply them with the runtime's public ``apply_weights`` and
``set_action_description``; no actor ever needs TensorFlow. The policy lag is the
learner's train step minus the train step of the weights that acted.

An actor that dies (its process or its node) is replaced here, not restarted by Ray
(whose restart never happens when the node is gone and no other CPU is free): the
new actor, seeded as the old one, gets the next call. No experience from any actor
for ``STALL_TIMEOUT_S`` seconds ends the run with a ``ClusterError``.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from typing import Any

from toolkit.errors import ArgumentError, ClusterError

__all__ = ["ACTOR_NAME_PREFIX", "STALL_TIMEOUT_S", "DistributedCollector"]

ACTOR_NAME_PREFIX = "policy-toolkit-collector-"
#: How long the learner waits for experience when no actor sends any.
STALL_TIMEOUT_S = 120.0
#: Replacements allowed per actor over a run (a crashing environment is not retried forever).
MAX_LOST_PER_ACTOR = 10


class DistributedCollector:
    """K collector actors feeding a replay buffer.

    Args:
      ray: the connected ``ray`` module (``toolkit.distributed.cluster.connect``).
      agent: the learner's agent (its ``collect_policy`` is exported once).
      env: an environment id or a picklable callable making one gymnasium env.
      actors: how many actors.
      envs_per_actor: environments each actor steps together.
      steps_per_call: steps of all its environments per ``collect`` call.
      n_step, gamma: the n-step returns of the rows (as the learner's writer).
      seed: actor i seeds its policy and environments with ``seed * 1000 + i``.
      weights_interval: train steps between weight broadcasts.
    """

    def __init__(
        self,
        ray: Any,
        agent: Any,
        env: Any,
        actors: int,
        *,
        envs_per_actor: int = 4,
        steps_per_call: int = 8,
        n_step: int = 1,
        gamma: float = 0.99,
        seed: int | None = 0,
        weights_interval: int = 100,
    ):
        from toolkit.distributed import actors as actors_lib
        from toolkit.distributed import backends
        from toolkit.distributed import weights as weights_lib

        if int(actors) < 1:
            raise ArgumentError(f"actors: expected a positive int, got {actors}")
        self._ray = ray
        self._agent = agent
        self._weights_interval = int(weights_interval)
        self._steps_per_call = int(steps_per_call)
        with tempfile.TemporaryDirectory(prefix="policy-toolkit-collect-") as tmp:
            bundle = os.path.join(tmp, "collect_policy")
            self._map = weights_lib.export_for_actors(agent.collect_policy, bundle)
            # The learner's own export, made just now: no signature to check.
            payload = backends.payload(bundle, "auto", takes_weights=True, trust=False)
        remote = ray.remote(num_cpus=1, max_restarts=0, max_task_retries=0)(
            actors_lib.CollectorActor
        )
        base = 0 if seed is None else int(seed) * 1000
        # Kept for the actors' lifetime: a replacement is built from it again.
        self._payload_ref = payload_ref = ray.put(payload)
        # Named so that operators (and tests) can find them: ray.util.list_named_actors().
        prefix = f"{ACTOR_NAME_PREFIX}{uuid.uuid4().hex[:8]}-"
        self._generation = 0

        def start(i: int) -> Any:
            self._generation += 1  # a lost actor's name may not be free yet
            return remote.options(
                scheduling_strategy="SPREAD", name=f"{prefix}{i}.{self._generation}"
            ).remote(payload_ref, env, int(envs_per_actor), int(n_step), float(gamma), base + i)

        self._start = start
        self.actors = [start(i) for i in range(int(actors))]
        self.lost_actors = 0
        self._weights_step = -1
        self._pending: dict[Any, Any] = {}
        self.policy_lag: int | None = None

    def start(self) -> None:
        """Sends the current weights (restored ones on a resumed run) and starts collecting."""
        self._broadcast()
        for actor in self.actors:
            if actor not in self._pending.values():
                self._submit(actor)

    def _train_step(self) -> int:
        return int(self._agent.train_step_counter.numpy())

    def _broadcast(self) -> None:
        step = self._train_step()
        description = self._agent.collect_policy.export_description()
        self._weights = (self._ray.put(self._map.initializers()), step, description)
        self._weights_step = step

    def maybe_broadcast(self) -> None:
        """Puts new weights in the object store every ``weights_interval`` train steps."""
        if self._train_step() - self._weights_step >= self._weights_interval:
            self._broadcast()

    def _submit(self, actor: Any) -> None:
        ref, step, description = self._weights
        self._pending[actor.collect.remote(ref, step, description, self._steps_per_call)] = actor

    def collect(self, replay_buffer: Any, min_steps: int) -> tuple[int, list[float]]:
        """Adds the rows of finished calls to ``replay_buffer``; waits for ``min_steps``.

        Returns:
          The environment steps and the returns of the episodes that ended.
        """
        ray = self._ray
        steps, returns = 0, []
        while True:
            # Block until min_steps arrived, then take whatever else is ready.
            timeout = STALL_TIMEOUT_S if steps < min_steps else 0
            done, _ = ray.wait(list(self._pending), num_returns=1, timeout=timeout)
            if not done:
                if steps < min_steps:
                    raise ClusterError(
                        f"no experience from any of {len(self.actors)} Ray actors for "
                        f"{STALL_TIMEOUT_S:g} s ({self.lost_actors} lost)"
                    )
                break
            for ref in done:
                actor = self._pending.pop(ref)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayActorError as e:
                    if e.actor_init_failed:
                        raise ClusterError(
                            f"a Ray collector could not start: {_last_line(str(e))}"
                        ) from None
                    self._submit(self._replace(actor))
                    continue
                self._submit(actor)
                if result["rows"] is not None:
                    replay_buffer.add_batch(result["rows"])
                steps += int(result["env_steps"])
                returns += result["episode_returns"]
                self.policy_lag = self._train_step() - int(result["train_step"])
        return steps, returns

    def _replace(self, actor: Any) -> Any:
        """A new actor in the place of a lost one (seeded as it was)."""
        self.lost_actors += 1
        if self.lost_actors > MAX_LOST_PER_ACTOR * len(self.actors):
            raise ClusterError(
                f"{self.lost_actors} Ray collectors lost (at most "
                f"{MAX_LOST_PER_ACTOR * len(self.actors)} are replaced)"
            )
        self._ray.kill(actor)
        index = self.actors.index(actor)
        self.actors[index] = self._start(index)
        return self.actors[index]

    def close(self) -> None:
        for actor in self.actors:
            self._ray.kill(actor)
        self._pending.clear()


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no reason given"
