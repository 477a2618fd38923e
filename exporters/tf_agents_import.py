"""Import of policies saved by TF-Agents' ``PolicySaver``: specs, TF functions, ONNX graphs.

TF-Agents (frozen at TF 2.15) saves a policy as a SavedModel plus ``policy_specs.pbtxt``.
This module reads both under TF 2.21 without TF-Agents:

* ``read_policy_specs(dir)``: the specs, decoded with TensorFlow's own structure coder
  and converted to this project's array specs and ``TimeStep``.
* ``convert_tf_agents_policy(dir)``: loads the SavedModel (TFP imported first, so the
  saved distribution TypeSpecs resolve), wraps its ``action`` and ``distribution``
  functions into flat-input, dict-output functions named by nest path, and converts
  them with tf2onnx into checked ONNX graphs without random ops.
* ``update_from_checkpoint(imported, path)``: reads a ``PolicySaver.save_checkpoint``
  output into the loaded SavedModel and converts again; ``initializer_updates`` gives
  the new initializer values for the graph converted before.

Which function becomes which model:

* ``action`` when its graph has no random op (greedy Q, deterministic actors, greedy
  actor-distribution policies): outputs ``action``, ``next_state/<path>``, ``info/<path>``.
* ``distribution`` when the saved policy has one of a supported family (deterministic,
  categorical, normal, uniform): outputs ``distribution/<action path>/<param>`` (e.g.
  ``distribution/loc``), ``next_state/<path>``, ``info/<path>``. The runtime samples
  from these parameters with its own generator.

Inputs of both: ``step_type``, ``reward``, ``discount``, ``observation`` (or
``observation/<key>``), ``policy_state/<path>``, each with a leading batch dim (dynamic
unless the policy was saved with a fixed batch size). Resets on FIRST happen inside the
saved functions, hence inside the graphs.

What imports: greedy and deterministic policies (their ``action``), and stochastic ones
whose saved ``distribution`` is a TFP Deterministic, Categorical, Normal, Independent of
those, MultivariateNormalDiag or Uniform; stateless or recurrent; any nest of
observations and actions. What does not: a stochastic policy whose distribution
PolicySaver could not save (its ``distribution`` only raises and its action samples:
nothing deterministic to export), other distribution families, distributions whose
class lives in TF-Agents itself (TensorFlow cannot load a SavedModel naming a TypeSpec
nobody registered, and this import does not depend on TF-Agents), policies saved with
``input_fn_and_spec`` (the action takes an example, not a time step), and policies
whose initial state is not zeros.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from exporters import onnx_export
from toolkit import nest
from toolkit.errors import BundleError, ExportError, UnsupportedError
from toolkit.specs import tensor_spec
from toolkit.specs.array_spec import ArraySpec
from toolkit.trajectories.time_step import TimeStep

__all__ = [
    "DEFAULT_OPSET",
    "POLICY_SPECS_PBTXT",
    "GraphIO",
    "ImportedModel",
    "ImportedPolicy",
    "TFAgentsSpecs",
    "convert_function",
    "convert_tf_agents_policy",
    "initializer_updates",
    "load_saved_policy",
    "read_policy_specs",
    "update_from_checkpoint",
]

POLICY_SPECS_PBTXT = "policy_specs.pbtxt"
DEFAULT_OPSET = onnx_export.DEFAULT_OPSET

_TIME_STEP_FIELDS = ("step_type", "reward", "discount", "observation")
_TRAJECTORY_FIELDS = ("step_type", "observation", "action", "policy_info", "reward", "discount")

# ONNX ops that draw random numbers; tf2onnx gives them a fixed seed, so every
# device would draw the same "random" values: never acceptable in an exported graph.


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


def _field_names(value: Any) -> tuple[str, ...] | None:
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
    fields = _field_names(collect)
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

    saved_model_dir = Path(saved_model_dir)
    try:
        loaded = tf.saved_model.load(str(saved_model_dir))
    except Exception as e:  # OSError, ValueError, errors.OpError and more
        hint = ""
        if "No TypeSpec has been registered" in str(e):
            hint = (
                "; it names a type of a library that is not imported (TF-Agents' own "
                "distributions?): only TensorFlow's and TFP's types can be loaded"
            )
        raise BundleError(
            f"{saved_model_dir}: TensorFlow cannot load the SavedModel ({type(e).__name__}: "
            f"{onnx_export.first_line(e)}){hint}"
        ) from e
    missing = [n for n in ("action", "get_initial_state") if not hasattr(loaded, n)]
    if missing:
        raise BundleError(
            f"{saved_model_dir}: expected the functions of TF-Agents' PolicySaver "
            f"(action, distribution, get_initial_state), got a SavedModel without {missing}"
        )
    return loaded


# --- graph I/O -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GraphIO:
    """One input or output of an exported graph.

    Attributes:
      name: the graph's name for it (``observation/position``, ``next_state/0``).
      group: ``time_step`` or ``policy_state`` (inputs); ``action``, ``state``,
        ``info`` or ``distribution`` (outputs; ``state`` is PolicyStep.state).
      path: nest path inside its group ("" for a single leaf).
      spec: array spec of one batch entry.
      param: the distribution parameter (``loc``, ``scale``, ``logits``) or None.
    """

    name: str
    group: str
    path: str
    spec: Any
    param: str | None = None

    @property
    def nest_path(self) -> str:
        """``group/path[/param]``: ``time_step/observation/position``, ``state/0``,
        ``distribution/loc`` (the paths ``distribution_families.flatten_params`` uses)."""
        return nest.join_path(self.group, self.path, self.param or "")


@dataclasses.dataclass(frozen=True)
class ImportedModel:
    """One saved function converted to ONNX.

    Attributes:
      function: the saved function it comes from (``action`` or ``distribution``).
      model: the checked ``onnx.ModelProto``.
      inputs: graph inputs in order.
      outputs: graph outputs in order.
      concrete_function: the flat-input TF function converted (same names), for a
        SavedModel re-export; it reads the loaded SavedModel's variables.
      tf_ops: the TensorFlow op types in that function, nested functions included.
    """

    function: str
    model: Any = dataclasses.field(repr=False)
    inputs: tuple[GraphIO, ...]
    outputs: tuple[GraphIO, ...]
    concrete_function: Any = dataclasses.field(repr=False, compare=False)
    tf_ops: tuple[str, ...] = ()

    @property
    def input_map(self) -> dict[str, str]:
        """Graph input name -> nest path (``time_step/...`` or ``policy_state/...``)."""
        return {io.name: io.nest_path for io in self.inputs}

    @property
    def output_map(self) -> dict[str, str]:
        """Graph output name -> nest path in the PolicyStep (``action``, ``state/0``, ...)."""
        return {io.name: io.nest_path for io in self.outputs}


@dataclasses.dataclass(frozen=True)
class ImportedPolicy:
    """A TF-Agents saved policy, read and converted; a plain data object.

    Attributes:
      source: the saved policy directory.
      specs: its specs (``TFAgentsSpecs``).
      models: ``{"action": ImportedModel, "distribution": ImportedModel}``, holding
        those that could be exported without random ops.
      skipped: ``{function: reason}`` for functions not exported.
      deterministic: True when the saved policy's action is a function of its inputs.
      distribution: a nest like the action spec of ``{"family", "params",
        "event_ndims", "dtype", "shift"}`` dicts (the families of
        ``toolkit.distribution_families``), or None without a distribution model.
      opset: the ONNX opset of every model.
      batch_size: the fixed batch size the policy was saved with, or None (dynamic).
      train_step: the saved train step (-1 when PolicySaver was given none).
      metadata: PolicySaver's metadata variables as numpy values.
      saved_model: the loaded SavedModel; the concrete functions read its variables.
    """

    source: Path
    specs: TFAgentsSpecs
    models: dict[str, ImportedModel]
    skipped: dict[str, str]
    deterministic: bool
    distribution: Any
    opset: int
    batch_size: int | None
    train_step: int
    metadata: dict[str, np.ndarray]
    saved_model: Any = dataclasses.field(repr=False, compare=False)


def _input_ios(specs: TFAgentsSpecs) -> list[GraphIO]:
    ios = []
    for path, spec in nest.flatten_with_paths(specs.time_step_spec):
        ios.append(GraphIO(path, "time_step", path, spec))
    for path, spec in nest.flatten_with_paths(specs.policy_state_spec):
        ios.append(GraphIO(nest.join_path("policy_state", path), "policy_state", path, spec))
    return ios


def _batched_tensor_spec(io: GraphIO, batch_size: int | None) -> tf.TensorSpec:
    return tf.TensorSpec((batch_size, *io.spec.shape), tf.as_dtype(io.spec.dtype), name=io.name)


# --- the saved functions -------------------------------------------------------------


def _find_concrete(function: Any) -> Any | None:
    """The concrete function of a restored ``action``/``distribution`` taking time steps."""
    for concrete in getattr(function, "concrete_functions", ()):
        args, _ = concrete.structured_input_signature
        if len(args) >= 2 and _field_names(args[0]) == _TIME_STEP_FIELDS:
            return concrete
    return None


def _saved_batch_size(concrete: Any) -> int | None:
    step_type = concrete.structured_input_signature[0][0].step_type
    return step_type.shape[0] if step_type.shape.rank else None


def _tf_op_types(concrete: Any) -> tuple[str, ...]:
    graph_def = concrete.graph.as_graph_def()
    ops = {node.op for node in graph_def.node}
    for function in graph_def.library.function:
        ops.update(node.op for node in function.node_def)
    return tuple(sorted(ops))


def _random_tf_ops(ops: Iterable[str]) -> list[str]:
    # Stateful (RandomStandardNormal, Multinomial), stateless (StatelessRandom*) and
    # generator-based (RngReadAndSkip) sampling ops all carry one of these words.
    words = ("Random", "Multinomial", "TruncatedNormal", "Rng")
    return sorted(op for op in ops if any(w in op for w in words))


def _pack_inputs(flat: Sequence[Any], inputs: list[GraphIO], raw: dict[str, Any]):
    n_time_step = sum(1 for io in inputs if io.group == "time_step")
    time_step = nest.pack_sequence_as(raw["time_step_spec"], flat[:n_time_step])
    state = nest.pack_sequence_as(raw["policy_state_spec"], flat[n_time_step:])
    return TimeStep(*time_step), state


def _state_and_info(step: Any, outputs: dict[str, Any], ios: list[GraphIO], specs: TFAgentsSpecs):
    for path, value in nest.flatten_with_paths(step.state):
        name = nest.join_path("next_state", path)
        outputs[name] = tf.identity(value)
        ios.append(GraphIO(name, "state", path, _leaf_spec(specs.policy_state_spec, path)))
    for path, value in nest.flatten_with_paths(step.info):
        name = nest.join_path("info", path)
        outputs[name] = tf.identity(value)
        ios.append(GraphIO(name, "info", path, _leaf_spec(specs.info_spec, path)))


def _leaf_spec(spec_nest: Any, path: str) -> Any:
    for leaf_path, spec in nest.flatten_with_paths(spec_nest):
        if leaf_path == path:
            return spec
    raise ExportError(f"{path or 'value'}: expected a leaf of the saved specs, got none there")


def _wrap_action(loaded: Any, specs: TFAgentsSpecs, inputs: list[GraphIO], batch_size):
    output_ios: list[GraphIO] = []

    # No autograph: nothing here branches on tensors, and autograph would wrap our
    # UnsupportedError into a StagingError.
    @tf.function(
        input_signature=[_batched_tensor_spec(io, batch_size) for io in inputs], autograph=False
    )
    def action(*flat):
        time_step, state = _pack_inputs(flat, inputs, specs.raw)
        step = loaded.action(time_step, state)
        output_ios.clear()
        outputs = {}
        for path, value in nest.flatten_with_paths(step.action):
            name = nest.join_path("action", path)
            outputs[name] = tf.identity(value)
            output_ios.append(GraphIO(name, "action", path, _leaf_spec(specs.action_spec, path)))
        _state_and_info(step, outputs, output_ios, specs)
        return outputs

    action.get_concrete_function()  # traces, filling output_ios
    return action, output_ios


def _wrap_distribution(loaded: Any, specs: TFAgentsSpecs, inputs: list[GraphIO], batch_size):
    function = getattr(loaded, "distribution", None)
    concrete = None if function is None else _find_concrete(function)
    if concrete is None:
        raise UnsupportedError("the saved policy has no distribution function")
    fields = _field_names(concrete.structured_outputs)
    if fields is None or "action" not in fields:
        # PolicySaver saves a function that only raises when it could not serialize
        # policy.distribution() (e.g. a TransformedDistribution); it returns ().
        raise UnsupportedError(
            "the saved policy's distribution function only raises: PolicySaver could "
            "not serialize policy.distribution() when the policy was saved"
        )
    output_ios: list[GraphIO] = []
    families: list[Any] = []

    # No autograph: nothing here branches on tensors, and autograph would wrap our
    # UnsupportedError into a StagingError.
    @tf.function(
        input_signature=[_batched_tensor_spec(io, batch_size) for io in inputs], autograph=False
    )
    def distribution(*flat):
        time_step, state = _pack_inputs(flat, inputs, specs.raw)
        step = loaded.distribution(time_step, state)
        output_ios.clear()
        families.clear()
        outputs = {}
        dists = nest.flatten_up_to(specs.raw["action_spec"], step.action)
        leaves = nest.flatten_with_paths(specs.action_spec)
        for (path, spec), dist in zip(leaves, dists, strict=True):
            family, params, facts = _distribution_params(dist, spec, path)
            for param, value in params.items():
                name = nest.join_path("distribution", path, param)
                outputs[name] = tf.identity(value)
                param_spec = ArraySpec(value.shape[1:], value.dtype.as_numpy_dtype, name=name)
                output_ios.append(GraphIO(name, "distribution", path, param_spec, param))
            families.append({"family": family, "params": list(params), **facts})
        _state_and_info(step, outputs, output_ios, specs)
        return outputs

    distribution.get_concrete_function()  # traces, filling output_ios and families
    return distribution, output_ios, nest.pack_sequence_as(specs.action_spec, families)


def _distribution_params(dist: Any, spec: Any, path: str):
    """``(family, {param: tensor}, static facts)`` of one TFP distribution."""
    import tensorflow_probability as tfp

    tfd = tfp.distributions
    where = nest.join_path("distribution", path) or "distribution"
    event_ndims = len(spec.shape)
    facts = {"event_ndims": event_ndims, "dtype": np.dtype(spec.dtype).name}
    if isinstance(dist, tfd.Deterministic):
        loc = tf.convert_to_tensor(dist.loc)
        return "deterministic", {"loc": loc}, facts
    if isinstance(dist, tfd.Categorical):
        logits = dist.logits if dist.logits is not None else tf.math.log(dist.probs)
        # The saved distribution samples category indices; TF-Agents uses them as
        # actions unshifted, so the shift is 0 whatever the spec's minimum.
        return "categorical", {"logits": tf.convert_to_tensor(logits)}, {**facts, "shift": 0}
    if isinstance(dist, tfd.MultivariateNormalDiag):
        loc = tf.convert_to_tensor(dist.parameters["loc"])
        scale_diag = dist.parameters.get("scale_diag")
        scale = tf.ones_like(loc) if scale_diag is None else tf.convert_to_tensor(scale_diag)
        return "normal", {"loc": loc, "scale": tf.broadcast_to(scale, tf.shape(loc))}, facts
    if isinstance(dist, tfd.Normal):
        loc = tf.convert_to_tensor(dist.loc)
        scale = tf.broadcast_to(tf.convert_to_tensor(dist.scale), tf.shape(loc))
        return "normal", {"loc": loc, "scale": scale}, facts
    if isinstance(dist, tfd.Uniform):
        low = tf.convert_to_tensor(dist.low)
        high = tf.broadcast_to(tf.convert_to_tensor(dist.high), tf.shape(low))
        return "uniform", {"low": low, "high": high}, facts
    if isinstance(dist, tfd.Independent):
        return _distribution_params(dist.distribution, spec, path)
    raise UnsupportedError(
        f"{where}: expected a Deterministic, Categorical, Normal, MultivariateNormalDiag or "
        f"Uniform distribution, got {type(dist).__name__}"
    )


# --- conversion ----------------------------------------------------------------------


def convert_function(function: Any, opset: int = DEFAULT_OPSET, what: str = "function"):
    """Converts a flat-input ``tf.function`` (with an input signature) to a checked ONNX model.

    See ``exporters.onnx_export.convert``: tf2onnx errors, non-ONNX ops and random ops
    fail the conversion with an ExportError naming them.
    """
    return onnx_export.convert(function, opset=opset, what=what)


def _convert_all(
    loaded: Any, specs: TFAgentsSpecs, source: Path, functions: Sequence[str] | None, opset: int
) -> ImportedPolicy:
    action_concrete = _find_concrete(loaded.action)
    if action_concrete is None:
        raise UnsupportedError(
            f"{source}: action: expected a function of (time_step, policy_state), got a "
            "signature without time steps (saved with PolicySaver's input_fn_and_spec?)"
        )
    batch_size = _saved_batch_size(action_concrete)
    _check_initial_state(loaded, specs, batch_size, source)
    inputs = _input_ios(specs)
    wanted = _check_functions(functions)

    models: dict[str, ImportedModel] = {}
    skipped: dict[str, str] = {}
    distribution = None

    action_fn, action_outputs = _wrap_action(loaded, specs, inputs, batch_size)
    action_ops = _tf_op_types(action_fn.get_concrete_function())
    random_ops = _random_tf_ops(action_ops)
    deterministic = not random_ops
    if "action" in wanted:
        if random_ops:
            skipped["action"] = (
                f"the saved action samples (TF ops {random_ops}); an exported graph must "
                "not hold random ops, so only the distribution parameters are exported"
            )
        else:
            model = convert_function(action_fn, opset, what=f"{source}: action")
            models["action"] = ImportedModel(
                "action",
                model,
                tuple(inputs),
                tuple(action_outputs),
                action_fn.get_concrete_function(),
                action_ops,
            )
    if "distribution" in wanted:
        try:
            dist_fn, dist_outputs, distribution = _wrap_distribution(
                loaded, specs, inputs, batch_size
            )
        except UnsupportedError as e:
            skipped["distribution"] = str(e)
        else:
            dist_ops = _tf_op_types(dist_fn.get_concrete_function())
            model = convert_function(dist_fn, opset, what=f"{source}: distribution")
            models["distribution"] = ImportedModel(
                "distribution",
                model,
                tuple(inputs),
                tuple(dist_outputs),
                dist_fn.get_concrete_function(),
                dist_ops,
            )
    if not models:
        reasons = "; ".join(f"{name}: {why}" for name, why in skipped.items())
        raise ExportError(
            f"{source}: expected a deterministic action or a supported distribution to "
            f"export, got neither ({reasons})"
        )
    train_step = loaded.get_train_step() if hasattr(loaded, "get_train_step") else -1
    return ImportedPolicy(
        source=source,
        specs=specs,
        models=models,
        skipped=skipped,
        deterministic=deterministic,
        distribution=distribution,
        opset=opset,
        batch_size=batch_size,
        train_step=int(train_step),
        metadata=_metadata(loaded),
        saved_model=loaded,
    )


def _check_functions(functions: Sequence[str] | None) -> tuple[str, ...]:
    wanted = ("action", "distribution") if functions is None else tuple(functions)
    unknown = sorted(set(wanted) - {"action", "distribution"})
    if unknown or not wanted:
        raise ValueError(f"functions: expected 'action' and/or 'distribution', got {unknown}")
    return wanted


def _check_opset(opset: int) -> int:
    from tf2onnx import constants

    # The project exports opset 17 or newer; tf2onnx cannot target an opset it does not know.
    highest = max(constants.OPSET_TO_IR_VERSION)
    if not isinstance(opset, int) or not 17 <= opset <= highest:
        raise ExportError(f"opset: expected an int in [17, {highest}], got {opset!r}")
    return opset


def _check_initial_state(loaded: Any, specs: TFAgentsSpecs, batch_size, source: Path) -> None:
    """Exported graphs take the state as input; runtimes start from zeros, as TF-Agents does."""
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


def _metadata(loaded: Any) -> dict[str, np.ndarray]:
    if not hasattr(loaded, "get_metadata"):
        return {}
    values = loaded.get_metadata()
    return {str(k): np.asarray(v) for k, v in dict(values).items()}


def convert_tf_agents_policy(
    saved_model_dir: str | os.PathLike,
    *,
    functions: Sequence[str] | None = None,
    opset: int = DEFAULT_OPSET,
) -> ImportedPolicy:
    """Reads a TF-Agents saved policy and converts its functions to ONNX.

    Args:
      saved_model_dir: a ``PolicySaver.save`` output directory.
      functions: which saved functions to export (``"action"``, ``"distribution"``);
        None exports every one that can be exported without random ops.
      opset: the ONNX opset (17 or 18, the range tf2onnx 1.17 and onnxruntime share).

    Returns:
      An ``ImportedPolicy`` (specs, models, I/O maps, distribution families).

    Raises:
      BundleError: the directory is not a TF-Agents saved policy.
      ExportError: nothing could be exported, or tf2onnx failed.
      UnsupportedError: the policy was saved with a layout this import cannot use.
    """
    source = Path(saved_model_dir)
    _check_functions(functions)
    _check_opset(opset)
    specs = read_policy_specs(source)
    loaded = load_saved_policy(source)
    return _convert_all(loaded, specs, source, functions, opset)


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


def update_from_checkpoint(
    imported: ImportedPolicy, checkpoint_path: str | os.PathLike
) -> ImportedPolicy:
    """A new import of the same policy with the variables of a checkpoint.

    Reads ``<path>/variables/variables`` as TF-Agents' ``SavedModelPyTFEagerPolicy.
    update_from_checkpoint`` does: a ``PolicySaver.save_checkpoint`` output holds the
    policy under the key ``policy``; a ``PolicySaver.save`` output (whose variables
    belong to the SavedModel's root) is read too. Every variable of the policy must
    be in the checkpoint; extra ones are ignored.

    The checkpoint is read into a fresh load of ``imported.source``, so ``imported``
    (its TF functions and ONNX models) is left as it was even when reading fails
    half-way. ``initializer_updates(old, new)`` turns the returned models into new
    initializer values for the old ones.

    Raises:
      BundleError: no checkpoint there, or one that does not fit the policy.
    """
    path = Path(checkpoint_path)
    prefix = _checkpoint_prefix(path)
    loaded = load_saved_policy(imported.source)
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
    return _convert_all(
        loaded, imported.specs, imported.source, tuple(imported.models), imported.opset
    )


def _node_signature(node: Any) -> tuple:
    attributes = tuple(
        (a.name, a.SerializeToString()) for a in sorted(node.attribute, key=lambda a: a.name)
    )
    return node.op_type, node.domain, len(node.input), len(node.output), attributes


def initializer_updates(old_model: Any, new_model: Any) -> dict[str, np.ndarray]:
    """New initializer values for ``old_model``, taken from a re-conversion ``new_model``.

    tf2onnx names the nodes it adds with a process-wide counter, so two conversions of
    one function differ in names; they are matched here by position, and every node
    must have the same op, attributes and wiring. Initializers of ``old_model`` are
    returned under their own names, with ``new_model``'s values.

    Raises:
      ExportError: when the graphs differ in more than initializer values (tf2onnx
        merges equal constants, so new values can change the structure): then replace
        the whole model.
    """
    from onnx import numpy_helper

    old_graph, new_graph = old_model.graph, new_model.graph

    def fail(why: str) -> ExportError:
        return ExportError(
            f"initializer_updates: expected graphs that differ only in "
            f"initializer values, got {why}; replace the whole model"
        )

    if len(old_graph.node) != len(new_graph.node):
        raise fail(f"{len(old_graph.node)} and {len(new_graph.node)} nodes")
    if len(old_graph.initializer) != len(new_graph.initializer):
        raise fail(f"{len(old_graph.initializer)} and {len(new_graph.initializer)} initializers")
    names: dict[str, str] = {}  # new value name -> old value name
    for old, new in zip(old_graph.input, new_graph.input, strict=True):
        names[new.name] = old.name
    new_inits = {init.name: init for init in new_graph.initializer}
    old_inits = {init.name: init for init in old_graph.initializer}
    for old_node, new_node in zip(old_graph.node, new_graph.node, strict=True):
        if _node_signature(old_node) != _node_signature(new_node):
            raise fail(
                f"node {old_node.name!r} ({old_node.op_type}) against "
                f"{new_node.name!r} ({new_node.op_type})"
            )
        for old_in, new_in in zip(old_node.input, new_node.input, strict=True):
            if names.setdefault(new_in, old_in) != old_in:
                raise fail(f"different wiring at node {old_node.name!r}")
        for old_out, new_out in zip(old_node.output, new_node.output, strict=True):
            names[new_out] = old_out
    updates = {}
    for new_name, init in new_inits.items():
        old_name = names.get(new_name)
        old_init = old_inits.get(old_name) if old_name else None
        if old_init is None:
            raise fail(f"initializer {new_name!r} with no counterpart")
        old_value = numpy_helper.to_array(old_init)
        new_value = numpy_helper.to_array(init)
        if old_value.shape != new_value.shape or old_value.dtype != new_value.dtype:
            raise fail(
                f"initializer {old_name!r} of shape {old_value.shape} against {new_value.shape}"
            )
        updates[old_name] = new_value
    for old, new in zip(old_graph.output, new_graph.output, strict=True):
        if names.get(new.name, new.name) != old.name:
            raise fail(f"outputs {old.name!r} and {new.name!r}")
    return updates
