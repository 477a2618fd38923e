"""The tf backend: a bundle's SavedModel run by TensorFlow (imported lazily).

Runs the SavedModel's ``distribution`` signature (the same function as the ONNX graph)
and derives actions with the same numpy code as the onnx backend (runtimes.policy), so
the two backends act alike. ``update_from_checkpoint`` restores a checkpoint's ``tf/ckpt``
into the loaded policy: this is the "PyTFCheckpointPolicy" use of the TF-Agents policies
tutorial, loading checkpointed policies in production Python.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from runtimes.policy import BundlePolicy, check_fingerprint
from toolkit import bundle
from toolkit.errors import BundleError, PolicyError, UnsupportedError

__all__ = ["SavedModelPolicy"]


def _tensorflow() -> Any:
    try:
        import tensorflow as tf
    except ImportError as e:
        raise UnsupportedError(
            "the tf backend needs TensorFlow (pip install 'policy-toolkit[all]'); "
            "use backend='onnx' where TensorFlow is not installed"
        ) from e
    return tf


class _Model:
    """A loaded SavedModel and how many policies use it (copies share it until one
    changes its weights)."""

    def __init__(self, path: Path):
        tf = _tensorflow()
        try:
            self.loaded = tf.saved_model.load(str(path))
        except Exception as e:  # TF raises many kinds for a broken SavedModel
            raise BundleError(f"{path}: TensorFlow could not load the SavedModel: {e}") from e
        self.path = path
        self.users = 1
        self.lock = threading.Lock()
        signatures = self.loaded.signatures
        if "distribution" not in signatures:
            raise BundleError(f"{path}: the SavedModel has no 'distribution' signature")
        self.function = signatures["distribution"]
        # Signature keywords are sanitized ("policy_state_0"); spec names keep the paths.
        specs = self.function.structured_input_signature[1]
        self.keywords = {spec.name: keyword for keyword, spec in specs.items()}

    def variables(self) -> list[Any]:
        tf = _tensorflow()
        policy_vars = [
            v
            for v in tf.train.TrackableView(self.loaded.policy).descendants()
            if isinstance(v, tf.Variable)
        ]
        return [*policy_vars, self.loaded.train_step]


class SavedModelPolicy(BundlePolicy):
    """A bundle's policy over its SavedModel. Made by ``runtimes.load_policy(..., "tf")``.

    Args:
      manifest: the bundle's manifest (read with toolkit.bundle.read_manifest).
      bundle_dir: the bundle folder.
      seed: seeds the policy's Generator, used by ``action(seed=None)``.
      validate_args: check (and safely convert) inputs against the specs.
      check_finite: refuse observations with NaN or infinite values.
    """

    backend = "tf"

    def __init__(
        self,
        manifest: dict[str, Any],
        bundle_dir: str | os.PathLike,
        *,
        seed: int | None = None,
        validate_args: bool = True,
        check_finite: bool = False,
    ):
        super().__init__(
            manifest,
            bundle_dir,
            seed=seed,
            validate_args=validate_args,
            check_finite=check_finite,
        )
        info = manifest.get("saved_model")
        if not isinstance(info, dict) or "dir" not in info:
            raise BundleError(f"{self._bundle_dir}: the bundle was exported without a SavedModel")
        rel = info["dir"]
        # TensorFlow reads the folder by path: it must hold only hashed regular files.
        path = bundle.check_saved_model(self._bundle_dir, manifest)
        self._tf = _tensorflow()
        self._model = _Model(path)
        _check_signature(self._model.function, manifest["signatures"]["distribution"], rel)
        missing = sorted(set(self._input_names) - set(self._model.keywords))
        if missing:
            raise BundleError(f"{self._bundle_dir}: the SavedModel lacks the inputs {missing}")

    @property
    def loaded(self) -> Any:
        """The object ``tf.saved_model.load`` returned (``.policy``, ``.train_step``...)."""
        return self._model.loaded

    def _run(self, arrays: list[Any], unbatched: bool, fetch: list[str]) -> list[Any]:
        tf = self._tf
        model = self._model
        keywords = model.keywords
        if unbatched:
            arrays = [np.asarray(a)[None] for a in arrays]
        try:
            outputs = model.function(
                **{
                    keywords[name]: tf.constant(value)
                    for name, value in zip(self._input_names, arrays, strict=True)
                }
            )
        except (tf.errors.OpError, TypeError, ValueError) as e:
            raise PolicyError(f"TensorFlow could not run the policy: {e}") from e
        return [outputs[name].numpy() for name in fetch]

    def _after_copy(self) -> None:
        with self._model.lock:
            self._model.users += 1

    def _own_model(self) -> _Model:
        """This policy's own SavedModel, reloaded if copies share it (before changing it)."""
        model = self._model
        with model.lock:
            shared = model.users > 1
            if shared:
                model.users -= 1
        if shared:
            own = _Model(model.path)
            for target, source in zip(own.variables(), model.variables(), strict=True):
                target.assign(source)
            self._model = own
        return self._model

    def update_from_checkpoint(self, path: str | os.PathLike) -> None:
        """Restores a checkpoint's ``tf/ckpt`` (exporters.save_checkpoint) into the policy.

        Raises:
          BundleError: for a missing or changed checkpoint, or one that does not fit
            this bundle's policy (nothing is changed then).
        """
        tf = self._tf
        root = Path(path)
        info = bundle.read_checkpoint(root)
        fingerprint = self._manifest.get("onnx", {}).get("graph_fingerprint")
        if fingerprint:
            check_fingerprint(root, info, fingerprint)
        model = self._own_model()
        variables = model.variables()
        before = [v.numpy() for v in variables]
        checkpoint = tf.train.Checkpoint(
            policy=model.loaded.policy, train_step=model.loaded.train_step
        )
        try:
            status = checkpoint.read(str(root / bundle.TF_CHECKPOINT_PREFIX))
            status.assert_existing_objects_matched()
        except (AssertionError, ValueError, tf.errors.OpError) as e:
            for variable, value in zip(variables, before, strict=True):
                variable.assign(value)
            raise BundleError(
                f"{root}: the TF checkpoint does not fit this bundle's policy: {e}"
            ) from e
        step = int(model.loaded.train_step.numpy())
        self._train_step = None if step < 0 else step

    def _take_weights(self, policy: BundlePolicy) -> None:
        if not isinstance(policy, SavedModelPolicy):
            raise PolicyError(f"update(): expected a tf-backend policy, got {policy!r}")
        model = self._own_model()
        mine, theirs = model.variables(), policy._model.variables()
        if len(mine) != len(theirs) or any(
            a.shape != b.shape or a.dtype != b.dtype for a, b in zip(mine, theirs, strict=True)
        ):
            raise PolicyError(
                "update(): expected a policy with the same variables, got "
                f"{len(theirs)} variables against {len(mine)}"
            )
        for target, source in zip(mine, theirs, strict=True):
            target.assign(source)


def _check_signature(function: Any, signature: dict[str, Any], where: str) -> None:
    """Refuses a ``distribution`` signature whose inputs or outputs differ from the manifest's."""
    inputs = {s.name: s for s in function.structured_input_signature[1].values()}
    outputs = dict(function.structured_outputs)
    for which, graph in (("inputs", inputs), ("outputs", outputs)):
        entries = {e["name"]: e for e in signature[which]}
        if set(graph) != set(entries):
            missing = sorted(set(entries) - set(graph))
            extra = sorted(set(graph) - set(entries))
            raise BundleError(
                f"{where}: the SavedModel's distribution {which} differ from the manifest's "
                f"signatures.distribution.{which}: missing {missing[:6]}, unexpected {extra[:6]}"
            )
        for name, entry in entries.items():
            spec = graph[name]
            dtype = spec.dtype.name
            shape = spec.shape.as_list() if spec.shape.rank is not None else None
            if dtype != entry["dtype"] or shape != entry["shape"]:
                raise BundleError(
                    f"{where}: SavedModel {which[:-1]} {name!r} is {dtype} {shape}, but the "
                    f"manifest says {entry['dtype']} {entry['shape']}"
                )
