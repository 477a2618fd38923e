"""Loading a TF-Agents SavedModel (once screened) and reading its saved functions.

* ``load_saved_policy``: ``exporters.tf_agents.screen`` checks the files and ops first;
  then TFP is imported and TF-Agents' own distribution types registered
  (``exporters.tf_agents.distributions``), so the saved distribution TypeSpecs resolve,
  and TensorFlow loads it;
* the saved functions: ``find_concrete`` (the concrete function taking time steps),
  ``saved_batch_size``, ``tf_op_types`` / ``random_tf_ops``, ``check_initial_state``,
  ``saved_metadata``;
* ``read_checkpoint``: a fresh load with the variables of a ``PolicySaver`` checkpoint,
  read by TensorFlow (the import's TF path; runtimes read them without TensorFlow
  through the bundle's weights map).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from exporters import onnx_export
from exporters.tf_agents import distributions, screen
from exporters.tf_agents.specs import TIME_STEP_FIELDS, TFAgentsSpecs, field_names
from toolkit import nest
from toolkit.errors import BundleError, UnsupportedError

__all__ = [
    "check_initial_state",
    "find_concrete",
    "load_saved_policy",
    "random_tf_ops",
    "read_checkpoint",
    "saved_batch_size",
    "saved_metadata",
    "tf_op_types",
]

# What every PolicySaver output has (``distribution`` may be missing or only raise).
_SAVED_ATTRIBUTES = ("action", "get_initial_state")


def load_saved_policy(saved_model_dir: str | os.PathLike) -> Any:
    """Loads a TF-Agents SavedModel under TF 2.21, once ``screen.check_saved_model`` passed.

    The saved ``distribution`` structures name TFP TypeSpecs (e.g.
    ``tfp.distributions.Deterministic_ACTTypeSpec``); they resolve only once
    ``tensorflow_probability`` has been imported.

    Raises:
      BundleError: a SavedModel the screen refuses (files, sizes, ops), one TensorFlow
        cannot load, or one without PolicySaver's functions.
    """
    saved_model_dir = Path(saved_model_dir)
    screen.check_saved_model(saved_model_dir)
    import tensorflow_probability  # noqa: F401  (registers TFP's TypeSpecs)

    distributions.register()  # TF-Agents' own distributions, without TF-Agents
    try:
        loaded = tf.saved_model.load(str(saved_model_dir))
    except Exception as e:  # OSError, ValueError, errors.OpError and more
        hint = ""
        # TF 2.21 says "... has not been registered"; older ones "No TypeSpec has been
        # registered with name ...".
        if "has not been registered" in str(e) or "No TypeSpec has been registered" in str(e):
            hint = (
                "; it names a type of a library other than TensorFlow and TFP (this import "
                "reads TF-Agents' SquashToSpecNormal, ShiftedCategorical and "
                "MaskedCategorical itself): save the policy's deterministic or "
                "TFP-distribution form instead (e.g. the agent's greedy `policy`)"
            )
        raise BundleError(
            f"{saved_model_dir}: TensorFlow cannot load the SavedModel ({type(e).__name__}: "
            f"{onnx_export.first_line(e)}){hint}"
        ) from e
    missing = [n for n in _SAVED_ATTRIBUTES if not hasattr(loaded, n)]
    if missing:
        raise BundleError(
            f"{saved_model_dir}: expected what TF-Agents' PolicySaver saves "
            f"({', '.join(_SAVED_ATTRIBUTES)}), got a SavedModel without {missing}"
        )
    return loaded


# --- the saved functions -------------------------------------------------------------


def find_concrete(function: Any) -> Any | None:
    """The concrete function of a restored ``action``/``distribution`` taking time steps."""
    for concrete in getattr(function, "concrete_functions", ()):
        args, _ = concrete.structured_input_signature
        if len(args) >= 2 and field_names(args[0]) == TIME_STEP_FIELDS:
            return concrete
    return None


def saved_batch_size(concrete: Any) -> int | None:
    """The batch size a function was saved with (``PolicySaver(batch_size=...)``), or None."""
    step_type = concrete.structured_input_signature[0][0].step_type
    return step_type.shape[0] if step_type.shape.rank else None


def tf_op_types(concrete: Any) -> tuple[str, ...]:
    """The TensorFlow op types of a concrete function, nested functions included."""
    graph_def = concrete.graph.as_graph_def()
    ops = {node.op for node in graph_def.node}
    for function in graph_def.library.function:
        ops.update(node.op for node in function.node_def)
    return tuple(sorted(ops))


def random_tf_ops(ops: Iterable[str]) -> list[str]:
    """The sampling ops among TensorFlow op types."""
    # Stateful (RandomStandardNormal, Multinomial), stateless (StatelessRandom*) and
    # generator-based (RngReadAndSkip) sampling ops all carry one of these words.
    words = ("Random", "Multinomial", "TruncatedNormal", "Rng")
    return sorted(op for op in ops if any(w in op for w in words))


def check_initial_state(loaded: Any, specs: TFAgentsSpecs, batch_size, source: Path) -> None:
    """Exported graphs take the state as input; runtimes start from zeros, as TF-Agents does.

    Raises:
      UnsupportedError: when the saved ``get_initial_state`` gives non-zero values.
    """
    if not nest.flatten(specs.policy_state_spec):
        return
    n = batch_size or 2
    state = loaded.get_initial_state(n) if batch_size is None else loaded.get_initial_state()
    for path, value in nest.flatten_with_paths(state, "policy_state"):
        if np.any(np.asarray(value) != 0):
            raise UnsupportedError(
                f"{source}: {path}: expected a zero initial state (runtimes start from "
                "zeros), got non-zero values from get_initial_state"
            )


def saved_metadata(loaded: Any) -> dict[str, np.ndarray]:
    """PolicySaver's metadata variables (``get_metadata()``) as numpy values."""
    if not hasattr(loaded, "get_metadata"):
        return {}
    values = loaded.get_metadata()
    return {str(k): np.asarray(v) for k, v in dict(values).items()}


# --- checkpoints ---------------------------------------------------------------------


def _checkpoint_prefix(path: Path) -> str:
    """``<dir>/variables/variables`` for a PolicySaver output, else ``path`` as a prefix."""
    candidates = [path / "variables" / "variables", path]
    for prefix in candidates:
        if Path(str(prefix) + ".index").is_file():
            return str(prefix)
    raise BundleError(
        f"{path}: expected a TF-Agents policy checkpoint (variables/variables.index), got none"
    )


def read_checkpoint(saved_model_dir: str | os.PathLike, checkpoint_path: str | os.PathLike) -> Any:
    """A fresh load of a saved policy with the variables of a checkpoint.

    Reads ``<path>/variables/variables`` as TF-Agents' ``SavedModelPyTFEagerPolicy.
    update_from_checkpoint`` does: a ``PolicySaver.save_checkpoint`` output holds the
    saved policy under the key ``policy``; a ``PolicySaver.save`` output (whose
    variables belong to the SavedModel's root) is read too. Every variable of the
    policy must be in the checkpoint; extra ones are ignored. The checkpoint's declared
    sizes are bounded (``screen.check_variables``) before TensorFlow reads it.

    Raises:
      BundleError: no checkpoint there, or one that does not fit the policy.
    """
    path = Path(checkpoint_path)
    prefix = _checkpoint_prefix(path)
    screen.check_variables(prefix)
    loaded = load_saved_policy(saved_model_dir)
    try:
        keys = {name for name, _ in tf.train.list_variables(prefix)}
        under_policy = any(key.startswith("policy/") for key in keys)
        checkpoint = (
            tf.train.Checkpoint(policy=loaded) if under_policy else tf.train.Checkpoint(loaded)
        )
        status = checkpoint.read(prefix)
        status.expect_partial()
        status.assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.OpError) as e:
        raise BundleError(
            f"{path}: expected a checkpoint of this policy's variables, got one that does not "
            f"match ({onnx_export.first_line(e)})"
        ) from e
    return loaded
