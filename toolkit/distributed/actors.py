"""What runs on Ray's workers: bundle policies over a TF-free runtime, never TensorFlow.

Actors receive the bundle as bytes (its manifest and the model file of their backend,
``toolkit.distributed.backends``, through the object store), so workers on other
machines need no shared disk, and new weights as plain numpy arrays keyed by ONNX
initializer name. They use only the runtime policies' public methods
(``apply_weights``, ``set_action_description``, ``action(seed=...)``). Nothing here
imports TensorFlow; a test checks ``sys.modules`` inside the actors.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from toolkit import nest
from toolkit.distributed.backends import Payload
from toolkit.errors import BundleError

__all__ = [
    "CollectorActor",
    "EvaluatorActor",
    "bundle_payload",
    "load_payload",
]


def bundle_payload(path: str | os.PathLike, backend: str = "onnx", trust: Any = None) -> Payload:
    """What actors of ``backend`` load from a bundle (see ``backends.payload``)."""
    from toolkit.distributed import backends

    return backends.payload(path, backend, takes_weights=False, trust=trust)


def load_payload(payload: Payload, seed: int | None) -> Any:
    """Loads a payload with its backend, from a private folder removed right after.

    The runtimes keep the model bytes they read, so nothing needs the folder later. No
    trust policy applies here, POLICY_TOOLKIT_TRUST_KEYS included: a payload is not a
    whole signed bundle, and its bytes were checked against the signature on the driver
    (``backends.payload``) before they were sent.
    """
    from runtimes import load_policy

    with tempfile.TemporaryDirectory(prefix="policy-toolkit-actor-") as tmp:
        folder = Path(tmp).resolve()
        for name, data in payload.files.items():
            target = (folder / name).resolve()
            if folder not in target.parents:
                raise BundleError(f"bundle payload: {name!r} points outside the bundle")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        return load_policy(
            folder, backend=payload.backend, seed=seed, validate_args=False, trust=False
        )


def block_generator(policy_seed: int | None, offset: int) -> np.random.Generator | None:
    """The generator of a block's draws: the block at ``offset`` (episodes from the first).

    A block's episodes then depend only on their seeds, whichever actor plays them and
    however often (a lost worker's block is played again). The first block's draws
    are a local run's (its policy seeded with ``policy_seed``); later blocks get their
    own streams. None (unseeded): the policy's own generator.
    """
    if policy_seed is None:
        return None
    if offset == 0:
        return np.random.default_rng(policy_seed)
    return np.random.default_rng((policy_seed, offset))


class _Seeded:
    """A policy whose draws come from one generator (``evaluate_policy`` passes none)."""

    def __init__(self, policy: Any, rng: np.random.Generator):
        self._policy = policy
        self._rng = rng

    def get_initial_state(self, batch_size: int | None = None) -> Any:
        return self._policy.get_initial_state(batch_size)

    def action(self, time_step: Any, policy_state: Any = (), seed: Any = None) -> Any:
        return self._policy.action(
            time_step, policy_state, seed=self._rng if seed is None else seed
        )


def imported_tensorflow() -> bool:
    return "tensorflow" in sys.modules


def where() -> dict[str, Any]:
    """Where this actor runs and whether TensorFlow was imported there."""
    import ray

    return {
        "pid": os.getpid(),
        "node_id": ray.get_runtime_context().get_node_id(),
        "tensorflow": imported_tensorflow(),
    }


class EvaluatorActor:
    """Plays seeded episodes with a bundle's policy (wrapped by ``ray.remote``)."""

    def __init__(self, payload: Payload, env: Any, seed: int | None):
        from toolkit.environments.episodes import EpisodePlayer

        self._policy = load_payload(payload, seed)
        self._player = EpisodePlayer(env)

    def evaluate(
        self, first_seed: int, count: int, rng: np.random.Generator | None = None
    ) -> tuple[list[float], list[int]]:
        """Episodes seeded ``first_seed .. first_seed + count - 1``: returns, lengths.

        ``rng`` (``block_generator``) makes the policy's draws those of this block alone.
        """
        policy = self._policy if rng is None else _Seeded(self._policy, rng)
        result = self._player.play(policy, first_seed, count)
        return result.episode_returns, result.episode_lengths

    def backend(self) -> str:
        """The runtime backend this actor plays with."""
        return self._policy.backend

    def ping(self) -> dict[str, Any]:
        """Where this actor runs and whether TensorFlow was imported there."""
        return where()


class _RowSink:
    """What ExperienceWriter writes into: the rows of one collect call."""

    def __init__(self):
        self.rows: list[Any] = []

    def add_batch(self, rows: Any) -> None:
        self.rows.append(rows)

    def take(self) -> Any:
        rows, self.rows = self.rows, []
        if not rows:
            return None
        return rows[0] if len(rows) == 1 else nest.map_structure(_concat, *rows)


def _concat(*values: Any) -> np.ndarray:
    return np.concatenate([np.asarray(v) for v in values], axis=0)


class CollectorActor:
    """Steps environments with a collect policy and hands back Experience rows.

    Args:
      payload: the collect policy's bundle (``bundle_payload``; a backend that takes
        weights from arrays).
      env: an environment id or a callable making one gymnasium environment.
      num_envs: environments stepped together (one policy call per step of all).
      n_step, gamma: the ExperienceWriter's n-step returns.
      seed: seeds the policy's generator and the first reset.
    """

    def __init__(
        self,
        payload: Payload,
        env: Any,
        num_envs: int,
        n_step: int,
        gamma: float,
        seed: int,
    ):
        from toolkit.environments import driver, episodes
        from toolkit.replay_buffer import ExperienceWriter

        self._policy = load_payload(payload, seed)
        self._env = episodes.make_env(env, num_envs)
        self._sink = _RowSink()
        self._driver = driver.Driver(
            self._env, self._policy, [ExperienceWriter(self._sink, n_step, gamma)], max_steps=1
        )
        self._time_step = self._env.reset(seed=seed)
        self._state = None
        self._weights_step: int | None = None
        self._description: Any = None

    def collect(
        self, weights: Any, train_step: int, description: dict[str, Any], steps: int
    ) -> dict[str, Any]:
        """Takes the learner's weights (if new), then steps every environment ``steps`` times.

        Returns:
          ``rows`` (Experience of arrays, or None), ``env_steps``, ``episode_returns``
          and ``train_step`` (of the weights that acted).
        """
        if train_step != self._weights_step:
            self._policy.apply_weights(weights, train_step)
            self._weights_step = train_step
        if description != self._description:
            self._policy.set_action_description(description)
            self._description = description
        self._driver.max_steps = steps * self._env.batch_size
        result = self._driver.run(self._time_step, self._state)
        self._time_step, self._state = result.time_step, result.policy_state
        return {
            "rows": self._sink.take(),
            "env_steps": result.num_steps,
            "episode_returns": list(result.episode_returns),
            "train_step": train_step,
        }

    def ping(self) -> dict[str, Any]:
        """Where this actor runs and whether TensorFlow was imported there."""
        return where()
