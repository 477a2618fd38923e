"""Import of policies saved by TF-Agents' ``PolicySaver`` into this project's bundles.

TF-Agents (frozen at TF 2.15) saves a policy as a SavedModel plus ``policy_specs.pbtxt``.
This module reads both under TF 2.21 without TF-Agents, and writes regular bundles:

* ``import_tf_agents(saved_dir, output_dir)``: a bundle (SavedModel signatures, ONNX
  graph, manifest) made by ``exporters.export_policy`` from a ``TFAgentsPolicy``
  (``exporters.tf_agents_policy``), the adapter that serves the saved functions as a
  TFPolicy. The runtime then serves it like any other bundle.
* ``import_tf_agents_checkpoint(saved_dir, checkpoint, output_dir)``: a
  ``PolicySaver.save_checkpoint`` output as a weights-only checkpoint
  (``exporters.save_checkpoint``) that a bundle imported from ``saved_dir`` takes
  through the runtime's ``update_from_checkpoint``.
* the readers both build on: ``read_policy_specs`` (TensorFlow's own structure coder,
  converted to this project's array specs), ``load_saved_policy`` (TFP imported first,
  so the saved distribution TypeSpecs resolve), ``read_checkpoint``.

What imports (``exporters.tf_agents_build`` decides): greedy and deterministic policies,
stateless or recurrent, any nest of observations and actions; stochastic policies whose
saved ``distribution`` is a TFP Deterministic, Categorical, Normal,
MultivariateNormalDiag or Uniform (each possibly Independent) or one of TF-Agents' own
(SquashToSpecNormal, ShiftedCategorical, MaskedCategorical: registered without
TF-Agents by ``exporters.tf_agents_types``): the bundle holds its parameters and the
runtime samples; collect policies that sample inside their saved action (TF-Agents'
EpsilonGreedyPolicy, GaussianPolicy, OUNoisePolicy), rebuilt as this project's
derivations over the deterministic core found in the saved graph
(``exporters.tf_agents_graph``); RandomTFPolicy saves, as the runtime's random
derivation. ``greedy=True`` imports only the deterministic action. What does not import:

* a stochastic policy of another kind (no usable distribution, no known exploration):
  the error names what was found and says to save the agent's greedy ``policy``;
* distributions of other libraries (TensorFlow cannot load a SavedModel naming a
  TypeSpec nobody registered);
* policies saved with ``input_fn_and_spec`` (the action takes an example, not a time
  step), and policies whose initial state is not zeros (runtimes start from zeros).
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from exporters import onnx_export
from toolkit import nest
from toolkit.errors import BundleError, ExportError, UnsupportedError
from toolkit.specs import tensor_spec
from toolkit.trajectories.time_step import TimeStep

__all__ = [
    "POLICY_SPECS_PBTXT",
    "RESERVED_METADATA",
    "TFAgentsSpecs",
    "check_initial_state",
    "field_names",
    "find_concrete",
    "import_tf_agents",
    "import_tf_agents_checkpoint",
    "load_saved_policy",
    "random_tf_ops",
    "read_checkpoint",
    "read_policy_specs",
    "saved_batch_size",
    "saved_metadata",
    "tf_op_types",
]

POLICY_SPECS_PBTXT = "policy_specs.pbtxt"

#: Metadata keys the import sets itself (a user's metadata may not use them).
RESERVED_METADATA = (
    "imported_from",
    "source",
    "tf_agents_batch_size",
    "tf_agents_exploration",
    "tf_agents_function",
    "tf_agents_greedy",
)

_TIME_STEP_FIELDS = ("step_type", "reward", "discount", "observation")
_TRAJECTORY_FIELDS = ("step_type", "observation", "action", "policy_info", "reward", "discount")
# What every PolicySaver output has (``distribution`` may be missing or only raise).
_SAVED_ATTRIBUTES = ("action", "get_initial_state")


# --- specs ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TFAgentsSpecs:
    """The specs of a TF-Agents saved policy, as this project's array specs.

    Attributes:
      time_step_spec: a ``TimeStep`` of array specs.
      action_spec: nest of (bounded) array specs.
      policy_state_spec: nest of array specs; ``()`` for stateless policies.
      info_spec: nest of array specs; ``()`` when the policy emits no info.
      raw: the decoded ``policy_specs.pbtxt`` as TensorFlow specs (TF-Agents' own
        structure, e.g. lists for LSTM states), used to call the saved functions.
    """

    time_step_spec: TimeStep
    action_spec: Any
    policy_state_spec: Any
    info_spec: Any
    raw: Any = dataclasses.field(repr=False, compare=False)


def _specs_file(saved_model_dir: Path) -> Path:
    if not saved_model_dir.is_dir():
        raise BundleError(
            f"{saved_model_dir}: expected a TF-Agents saved policy directory, got no such directory"
        )
    path = saved_model_dir / POLICY_SPECS_PBTXT
    if path.is_file():
        return path
    if (saved_model_dir / "saved_model.pb").is_file():
        raise BundleError(
            f"{saved_model_dir}: a SavedModel without {POLICY_SPECS_PBTXT} is not a TF-Agents "
            f"policy (PolicySaver writes {POLICY_SPECS_PBTXT} beside saved_model.pb)"
        )
    raise BundleError(
        f"{saved_model_dir}: expected a TF-Agents saved policy (saved_model.pb and "
        f"{POLICY_SPECS_PBTXT}), got a directory without either"
    )


def _decode_specs_file(path: Path) -> Any:
    from google.protobuf import text_format
    from tensorflow.core.protobuf import struct_pb2
    from tensorflow.python.saved_model import nested_structure_coder

    proto = struct_pb2.StructuredValue()
    try:
        text = path.read_text(encoding="utf-8")
        text_format.Parse(text, proto)
    except (UnicodeDecodeError, text_format.ParseError) as e:
        raise BundleError(f"{path}: not a readable StructuredValue text proto ({e})") from e
    try:
        return nested_structure_coder.decode_proto(proto)
    except Exception as e:  # TF raises several types for unknown or broken values
        raise BundleError(f"{path}: cannot decode the specs ({type(e).__name__}: {e})") from e


def field_names(value: Any) -> tuple[str, ...] | None:
    return tuple(value._fields) if isinstance(value, tuple) and hasattr(value, "_fields") else None


def read_policy_specs(saved_model_dir: str | os.PathLike) -> TFAgentsSpecs:
    """Reads ``policy_specs.pbtxt`` of a TF-Agents saved policy.

    Decodes it with TensorFlow's ``nested_structure_coder`` (as TF-Agents'
    ``tensor_spec.from_pbtxt_file`` does) and rebuilds the time step, action, policy
    state and info specs the way ``policy_saver.specs_from_collect_data_spec`` does.

    Raises:
      BundleError: for a missing directory, a directory without the specs file, a
        corrupted file, or specs that are not a TF-Agents policy's.
    """
    saved_model_dir = Path(saved_model_dir)
    path = _specs_file(saved_model_dir)
    decoded = _decode_specs_file(path)
    expected = "a dict with 'collect_data_spec' and 'policy_state_spec'"
    if not isinstance(decoded, dict) or not {"collect_data_spec", "policy_state_spec"} <= set(
        decoded
    ):
        got = f"keys {sorted(decoded)}" if isinstance(decoded, dict) else type(decoded).__name__
        raise BundleError(f"{path}: expected {expected}, got {got}")
    collect = decoded["collect_data_spec"]
    fields = field_names(collect)
    if fields is None or not set(_TRAJECTORY_FIELDS) <= set(fields):
        got = f"fields {list(fields)}" if fields else type(collect).__name__
        raise BundleError(
            f"{path}: collect_data_spec: expected a Trajectory with fields "
            f"{list(_TRAJECTORY_FIELDS)}, got {got}"
        )
    raw_time_step = TimeStep(*(getattr(collect, f) for f in _TIME_STEP_FIELDS))
    raw = {
        "time_step_spec": raw_time_step,
        "action_spec": collect.action,
        "policy_state_spec": decoded["policy_state_spec"],
        "info_spec": collect.policy_info,
    }
    for name, spec in raw.items():
        for leaf_path, leaf in nest.flatten_with_paths(spec, name):
            if not isinstance(leaf, tf.TensorSpec):
                raise BundleError(
                    f"{path}: {leaf_path}: expected a TensorSpec, got {type(leaf).__name__}"
                )
            if not leaf.shape.is_fully_defined():
                raise BundleError(
                    f"{path}: {leaf_path}: expected a fully defined shape, got {leaf.shape}"
                )
    arrays = {k: tensor_spec.to_array_spec(v) for k, v in raw.items()}
    return TFAgentsSpecs(
        time_step_spec=TimeStep(*arrays["time_step_spec"]),
        action_spec=arrays["action_spec"],
        policy_state_spec=arrays["policy_state_spec"],
        info_spec=arrays["info_spec"],
        raw=raw,
    )


# --- loading -------------------------------------------------------------------------


def load_saved_policy(saved_model_dir: str | os.PathLike) -> Any:
    """Loads a TF-Agents SavedModel under TF 2.21 (TFP imported first).

    The saved ``distribution`` structures name TFP TypeSpecs (e.g.
    ``tfp.distributions.Deterministic_ACTTypeSpec``); they resolve only once
    ``tensorflow_probability`` has been imported.

    Raises:
      BundleError: when TensorFlow cannot load it or it lacks PolicySaver's functions.
    """
    import tensorflow_probability  # noqa: F401  (registers TFP's TypeSpecs)

    from exporters import tf_agents_types

    tf_agents_types.register()  # TF-Agents' own distributions, without TF-Agents
    saved_model_dir = Path(saved_model_dir)
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
        if len(args) >= 2 and field_names(args[0]) == _TIME_STEP_FIELDS:
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
    policy must be in the checkpoint; extra ones are ignored.

    Raises:
      BundleError: no checkpoint there, or one that does not fit the policy.
    """
    path = Path(checkpoint_path)
    prefix = _checkpoint_prefix(path)
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


# --- bundles -------------------------------------------------------------------------


def _json_value(value: np.ndarray) -> Any:
    """A metadata value as JSON: numbers, strings (bytes decoded) and lists of them."""
    if value.dtype.kind in "SO":
        return nest.map_structure(
            lambda v: v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v),
            value.tolist(),
        )
    return value.tolist()


def import_tf_agents(
    saved_model_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    formats: Sequence[str] = ("saved_model", "onnx"),
    overwrite: bool = False,
    metadata: dict[str, Any] | None = None,
    *,
    opset: int = onnx_export.DEFAULT_OPSET,
    greedy: bool = False,
) -> Path:
    """Imports a TF-Agents saved policy into a regular bundle of this project.

    The bundle is what ``exporters.export_policy`` writes for a ``TFAgentsPolicy``:
    specs from ``policy_specs.pbtxt``, the distribution parameters (or the deterministic
    action) as the ONNX graph and SavedModel signatures, the train step from the saved
    ``get_train_step`` (none when PolicySaver was given none), and as metadata the saved
    ``get_metadata`` values, then the user's, then ``imported_from: "tf_agents"``,
    ``source`` (the absolute saved policy path), ``tf_agents_function`` (the saved
    function the graph computes: ``distribution`` or ``action``) and, for a policy saved
    with a fixed batch size (whose graphs serve that batch size only),
    ``tf_agents_batch_size``. Falling back to the action and a fixed batch size are also
    said in a UserWarning.

    Args:
      saved_model_dir: a ``PolicySaver.save`` output.
      output_dir: the bundle to write (atomically).
      formats: some of ``("saved_model", "onnx")``.
      overwrite: replace an existing bundle.
      metadata: JSON-able user metadata (keys other than ``RESERVED_METADATA``).
      opset: the ONNX opset.
      greedy: import only the deterministic action: a collect policy's core without
        its exploration, a stochastic policy's mode (see ``exporters.tf_agents_build``).

    Returns:
      The bundle's path.

    Raises:
      BundleError: the directory is not a TF-Agents saved policy.
      ExportError: the policy cannot be imported (the reason named), or bad arguments.
    """
    # Imported here: the adapter builds on this module's readers.
    from exporters.export import export_policy
    from exporters.tf_agents_build import build_policy

    reserved = sorted(set(metadata or {}) & set(RESERVED_METADATA))
    if reserved:
        raise ExportError(
            f"metadata: expected keys other than {list(RESERVED_METADATA)} (the import sets "
            f"them), got {reserved}"
        )
    try:
        built = build_policy(saved_model_dir, greedy=greedy)
    except UnsupportedError as e:
        raise ExportError(f"cannot import: {e}") from e
    policy = built.adapter
    merged = {
        **(metadata or {}),
        "imported_from": "tf_agents",
        "source": str(Path(saved_model_dir).absolute()),
        "tf_agents_function": built.function,
    }
    if built.exploration is not None:
        merged["tf_agents_exploration"] = built.exploration
    if greedy:
        merged["tf_agents_greedy"] = True
    if policy is None:  # a random policy: nothing of the saved graph is kept
        loaded = load_saved_policy(saved_model_dir)
        saved_values = saved_metadata(loaded)
        train_step = int(loaded.get_train_step()) if hasattr(loaded, "get_train_step") else -1
    else:
        if policy.skipped is not None:
            warnings.warn(
                f"{policy.source}: importing the deterministic action instead of the saved "
                f"distribution ({policy.skipped})",
                UserWarning,
                stacklevel=2,
            )
        if policy.batch_size is not None:
            # TF-Agents traced the functions for this batch size only; so are the graphs.
            warnings.warn(
                f"{policy.source}: saved with PolicySaver(batch_size={policy.batch_size}): "
                f"the bundle serves batches of exactly {policy.batch_size} time steps",
                UserWarning,
                stacklevel=2,
            )
            merged["tf_agents_batch_size"] = policy.batch_size
        saved_values = policy.saved_metadata
        train_step = policy.saved_train_step
    saved = {key: _json_value(value) for key, value in saved_values.items()}
    merged = {**saved, **merged}
    return export_policy(
        built.policy,
        output_dir,
        formats=formats,
        train_step=None if train_step == -1 else train_step,
        metadata=merged,
        overwrite=overwrite,
        opset=opset,
    )


def import_tf_agents_checkpoint(
    saved_model_dir: str | os.PathLike,
    checkpoint_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    overwrite: bool = False,
    opset: int = onnx_export.DEFAULT_OPSET,
    greedy: bool = False,
) -> Path:
    """A TF-Agents policy checkpoint as a weights-only checkpoint of the imported bundle.

    Restores ``checkpoint_path`` (a ``PolicySaver.save_checkpoint`` or ``save`` output)
    into a ``TFAgentsPolicy`` of ``saved_model_dir`` and writes it with
    ``exporters.save_checkpoint``: a bundle imported from ``saved_model_dir`` (with the
    same opset and ``greedy``) then takes it through ``update_from_checkpoint``, with
    either backend.

    Returns:
      The checkpoint folder's path.

    Raises:
      BundleError: no checkpoint there, or one of another policy.
      ExportError: the policy cannot be imported, or the output exists.
    """
    # Imported here: the adapter builds on this module's readers.
    from exporters.checkpoint import save_checkpoint
    from exporters.tf_agents_build import build_policy

    try:
        built = build_policy(saved_model_dir, greedy=greedy)
    except UnsupportedError as e:
        raise ExportError(f"cannot import: {e}") from e
    if built.adapter is None:
        raise ExportError(
            f"cannot import: {saved_model_dir}: a random policy has no weights to update"
        )
    train_step = built.adapter.restore_tf_agents_checkpoint(checkpoint_path)
    return save_checkpoint(built.policy, output_dir, train_step, overwrite=overwrite, opset=opset)
