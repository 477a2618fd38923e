"""What runs on Ray's workers: bundle policies over onnxruntime, never TensorFlow.

Actors receive the bundle as bytes (its manifest and ONNX graph, through the object
store), so workers on other machines need no shared disk, and new weights as plain
numpy arrays keyed by ONNX initializer name. Nothing here imports TensorFlow; a test
checks ``sys.modules`` inside the actors.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from toolkit import nest
from toolkit.errors import BundleError

__all__ = [
    "CollectorActor",
    "EvaluatorActor",
    "bundle_payload",
]


def bundle_payload(path: str | os.PathLike) -> dict[str, bytes]:
    """The files the onnx backend reads (manifest and graph), as ``{name: bytes}``."""
    from toolkit import bundle

    root = Path(path)
    if root.is_file():
        root = root.parent
    manifest = bundle.read_manifest(root, check_files=False)
    onnx_info = manifest.get("onnx")
    if "onnx" not in manifest.get("formats", []) or not isinstance(onnx_info, dict):
        raise BundleError(
            f"{root}: distributed actors run the onnx backend; the bundle was exported "
            f"without ONNX (formats {manifest.get('formats', [])})"
        )
    names = [bundle.MANIFEST, onnx_info["file"]]
    return {name: (root / name).read_bytes() for name in names}


def load_payload(files: dict[str, bytes], seed: int | None) -> Any:
    """Writes the payload to a private folder and loads it with the onnx backend."""
    from runtimes import load_policy

    folder = Path(tempfile.mkdtemp(prefix="policy-toolkit-actor-"))
    for name, data in files.items():
        target = (folder / name).resolve()
        if folder.resolve() not in target.parents:
            raise BundleError(f"bundle payload: {name!r} points outside the bundle")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return load_policy(folder, backend="onnx", seed=seed, validate_args=False)


def set_weights(policy: Any, weights: dict[str, np.ndarray], train_step: int) -> None:
    """Swaps ``weights`` ({initializer name: array}) into an onnx-backend policy."""
    # The onnx backend rebuilds its session with initializer overrides, exactly as
    # update_from_checkpoint does with a weights-only checkpoint's arrays.
    policy._set_session(policy._new_session(weights))
    policy._train_step = int(train_step)


def set_action_description(policy: Any, description: dict[str, Any]) -> None:
    """Swaps in a new action description (e.g. the decayed epsilon of a collect policy)."""
    from runtimes import derivations

    policy._description = description
    policy._deriver = derivations.DerivationBuilder(
        policy.action_spec, policy.policy_state_spec
    ).build(description, policy._params_tree, "distribution", () if policy.is_stateful else None)


def imported_tensorflow() -> bool:
    return "tensorflow" in sys.modules


class EvaluatorActor:
    """Plays seeded episodes with a bundle's policy (wrapped by ``ray.remote``)."""

    def __init__(self, files: dict[str, bytes], env: Any, seed: int | None):
        from toolkit.environments.episodes import EpisodePlayer

        self._policy = load_payload(files, seed)
        self._player = EpisodePlayer(env)

    def evaluate(self, first_seed: int, count: int) -> tuple[list[float], list[int]]:
        """Episodes seeded ``first_seed .. first_seed + count - 1``: returns, lengths."""
        result = self._player.play(self._policy, first_seed, count)
        return result.episode_returns, result.episode_lengths

    def ping(self) -> dict[str, Any]:
        """Where this actor runs and whether TensorFlow was imported there."""
        import ray

        return {
            "pid": os.getpid(),
            "node_id": ray.get_runtime_context().get_node_id(),
            "tensorflow": imported_tensorflow(),
        }


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
      files: the collect policy's bundle (``bundle_payload``).
      env: an environment id or a callable making one gymnasium environment.
      num_envs: environments stepped together (one policy call per step of all).
      n_step, gamma: the ExperienceWriter's n-step returns.
      seed: seeds the policy's generator and the first reset.
    """

    def __init__(
        self,
        files: dict[str, bytes],
        env: Any,
        num_envs: int,
        n_step: int,
        gamma: float,
        seed: int,
    ):
        from toolkit.environments import driver, episodes
        from toolkit.replay_buffer import ExperienceWriter

        self._policy = load_payload(files, seed)
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
            set_weights(self._policy, weights, train_step)
            self._weights_step = train_step
        if description != self._description:
            set_action_description(self._policy, description)
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
        import ray

        return {
            "pid": os.getpid(),
            "node_id": ray.get_runtime_context().get_node_id(),
            "tensorflow": imported_tensorflow(),
        }
