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
from toolkit.bundle import readers
from toolkit.bundle.layout import Layout, Signature, WeightsMap
from toolkit.errors import BundleError, CheckpointError, PolicyError, UnsupportedError

__all__ = ["SavedModelPolicy", "assign_variables", "variable_at"]


def _tensorflow() -> Any:
    try:
        import tensorflow as tf
    except ImportError as e:
        from runtimes.backends import installed

        # Only backends that are installed are advised (the table says which).
        free = [b.name for b in installed() if b.tf_free]
        other = f"; or use a TF-free backend: {', '.join(free)}" if free else ""
        raise UnsupportedError(
            f"the tf backend needs TensorFlow (pip install 'policy-toolkit[all]'){other}"
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
      layout: the bundle's layout (toolkit.bundle.read_layout).
      bundle_dir: the bundle folder.
      seed: seeds the policy's Generator, used by ``action(seed=None)``.
      validate_args: check (and safely convert) inputs against the specs.
      check_finite: refuse observations with NaN or infinite values.
    """

    backend = "tf"

    def __init__(
        self,
        layout: Layout,
        bundle_dir: str | os.PathLike,
        *,
        seed: int | None = None,
        validate_args: bool = True,
        check_finite: bool = False,
    ):
        super().__init__(
            layout,
            bundle_dir,
            seed=seed,
            validate_args=validate_args,
            check_finite=check_finite,
        )
        if not layout.has("saved_model"):
            raise BundleError(f"{self._bundle_dir}: the bundle was exported without a SavedModel")
        rel = layout.format("saved_model").path
        # TensorFlow reads the folder by path: it must hold only hashed regular files.
        path = readers.check_saved_model(self._bundle_dir, layout)
        self._tf = _tensorflow()
        self._model = _Model(path)
        _check_signature(self._model.function, layout.signatures["distribution"], rel)
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

    def update_from_checkpoint(self, path: Any, *, step: int | None = None) -> None:
        """Takes the weights of a checkpoint into the policy.

        Takes what the onnx backend takes (runtimes.checkpoints): a weights-only
        checkpoint, a training run's ``policy_checkpoints/``, TF-Agents'
        ``policies/checkpoints/`` or one of their checkpoints; a folder gives its latest,
        or the one of ``step``. TF checkpoints are read through the bundle's weights map
        into a fresh load of the SavedModel, swapped in whole: calls already running
        finish on the old weights.

        Raises:
          BundleError: for a missing or changed checkpoint, or one that does not fit
            this bundle's policy (nothing is changed then).
        """
        from toolkit import checkpoint_weights
        from toolkit.checkpoint_weights import Checkpoint

        found = path if isinstance(path, Checkpoint) else checkpoint_weights.select(path, step)
        weights_map = self.layout.weights
        if weights_map is None:
            if found.kind != "weights_only":
                raise BundleError(
                    f"{found.path}: the bundle has no weights map (exported before "
                    "policy-toolkit could follow TF checkpoints); export it again, or update "
                    "it with `policy-toolkit update`"
                )
            self._restore_weights_only(found.path)
            return
        if found.kind == "weights_only":
            info = bundle.read_checkpoint(found.path)
            prefix = found.path / str(info.get("tf_checkpoint", bundle.TF_CHECKPOINT_PREFIX))
            train_step = info.get("train_step")
        else:
            prefix, train_step = found.path, None
        try:
            values, read_step = checkpoint_weights.read_tf_checkpoint(
                self.layout, prefix, str(found.path)
            )
        except CheckpointError:
            if found.kind == "weights_only":
                check_fingerprint(found.path, info, self.layout.graph_fingerprint)
            raise
        if train_step is None:
            train_step = read_step if read_step is not None else found.step
        model = _Model(self._model.path)
        assign_variables(model.loaded.policy, weights_map, values, str(self._bundle_dir))
        model.loaded.train_step.assign(-1 if train_step is None else int(train_step))
        old = self._model
        with old.lock:
            old.users -= 1
        self._model = model
        self._train_step = None if train_step is None or train_step < 0 else int(train_step)

    def _restore_weights_only(self, root: Path) -> None:
        """A weights-only checkpoint's ``tf/ckpt`` restored in place (bundles without a
        weights map)."""
        tf = self._tf
        info = bundle.read_checkpoint(root)
        fingerprint = self.layout.graph_fingerprint
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


def variable_at(policy: Any, paths: Any) -> Any:
    """The ``tf.Variable`` at one of ``paths`` (object paths from the policy), or None."""
    tf = _tensorflow()
    for path in paths:
        node = policy
        for name in path:
            node = tf.train.TrackableView(node).children(node).get(name)
            if node is None:
                break
        if isinstance(node, tf.Variable):
            return node
    return None


def assign_variables(policy: Any, weights_map: WeightsMap, values: list[Any], where: str) -> None:
    """Assigns a TF checkpoint's values (``checkpoint_weights.read_tf_checkpoint``) to the
    loaded SavedModel policy's variables, found by the weights map's object paths.

    Raises:
      BundleError: a variable the SavedModel's policy lacks.
    """
    for spec, value in zip(weights_map.variables, values, strict=True):
        variable = variable_at(policy, spec.paths)
        if variable is None:
            shown = "/".join(spec.paths[0]) if spec.paths else spec.name
            raise BundleError(f"{where}: the SavedModel's policy has no variable at {shown}")
        variable.assign(value)


def _check_signature(function: Any, signature: Signature, where: str) -> None:
    """Refuses a ``distribution`` signature whose inputs or outputs differ from the manifest's."""
    inputs = {s.name: s for s in function.structured_input_signature[1].values()}
    outputs = dict(function.structured_outputs)
    for which, specs in (("inputs", inputs), ("outputs", outputs)):
        graph = {
            name: (spec.dtype.name, spec.shape.as_list() if spec.shape.rank is not None else None)
            for name, spec in specs.items()
        }
        signature.check_graph(
            which, graph, where, owner="the SavedModel's distribution", item="SavedModel"
        )
