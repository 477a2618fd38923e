"""The exported functions of a TF policy, with flat nest-path input and output names.

Inputs are named by nest path: ``step_type``, ``reward``, ``discount``,
``observation/<key>...`` and ``policy_state/<path>``; every one has a dynamic batch
dim. Outputs are named apart from inputs: ``distribution/<action path>/<param>``,
``action/<path>``, ``next_state/<path>``, ``info/<path>``. The graph names are the
nest paths, so the manifest maps each name to its path one to one.
"""

from __future__ import annotations

import json
import re
import types
from typing import Any

import tensorflow as tf

from toolkit import distribution_families as families
from toolkit import nest
from toolkit.errors import ExportError, UnsupportedError
from toolkit.policies import tf_policy as tf_policy_lib
from toolkit.specs import tensor_spec
from toolkit.trajectories.time_step import StepType, TimeStep

__all__ = ["ExportModule", "FlatSignature", "flat_specs", "module_for"]

# TensorFlow's rule for op and tensor names, which SavedModel and tf2onnx keep.
_NAME = re.compile(r"^[A-Za-z0-9.][A-Za-z0-9_.\-/]*$")


def _is_observation(name: str) -> bool:
    return name.split("/")[0] == "observation"


def flat_specs(spec: Any, prefix: str, batch: bool = True) -> dict[str, tf.TensorSpec]:
    """``{path: TensorSpec([None] + shape, name=path)}`` for a nest of specs.

    Raises:
      ExportError: when a path is not a valid graph name or two paths collide.
    """
    out: dict[str, tf.TensorSpec] = {}
    for path, s in nest.flatten_with_paths(tensor_spec.from_spec(spec), prefix):
        if not _NAME.match(path):
            raise ExportError(
                f"{path}: not a valid graph input name (use letters, digits and _ . - in "
                "spec names and dict keys)"
            )
        if path in out:
            raise ExportError(f"{path}: two specs flatten to the same name; rename one of them")
        shape = ([None] if batch else []) + s.shape.as_list()
        out[path] = tf.TensorSpec(shape, s.dtype, name=path)
    return out


class FlatSignature:
    """Input and output names, dtypes and shapes of one exported function."""

    def __init__(self, inputs: dict[str, tf.TensorSpec], outputs: dict[str, tf.TensorSpec]):
        self.inputs = inputs
        self.outputs = outputs

    def to_json(self) -> dict[str, Any]:
        def entries(specs: dict[str, tf.TensorSpec]) -> list[dict[str, Any]]:
            return [
                {"name": name, "dtype": s.dtype.name, "shape": s.shape.as_list()}
                for name, s in specs.items()
            ]

        return {"inputs": entries(self.inputs), "outputs": entries(self.outputs)}


def _check_no_collision(inputs: dict[str, Any], outputs: dict[str, Any]) -> None:
    for name in outputs:
        if name in inputs:
            raise ExportError(f"{name}: an output is named like an input; rename the spec")


class ExportModule(tf.Module):
    """A TF policy with the functions a bundle exports.

    Attributes:
      policy: the wrapped policy (its variables are saved with the SavedModel).
      train_step: an int64 variable, so checkpoints can update it.
    """

    def __init__(self, policy: Any, train_step: int | None, metadata: dict[str, Any]):
        super().__init__(name="policy_export")
        if not isinstance(policy, tf_policy_lib.TFPolicy):
            raise ExportError(
                f"{type(policy).__name__}: expected a TFPolicy (toolkit.policies.tf_policy); "
                "Python policies have no graph to export"
            )
        self.policy = policy
        self.train_step = tf.Variable(
            -1 if train_step is None else int(train_step), dtype=tf.int64, trainable=False
        )
        # Draws the seeds of the SavedModel's sampling `action` signature; saved with it.
        self.sampler = tf.random.Generator.from_non_deterministic_state()
        time_step_inputs = flat_specs(policy.time_step_spec, "")
        state_inputs = flat_specs(policy.policy_state_spec, "policy_state")
        # A plain namespace: SavedModel tracks dict attributes, and these are no state.
        self.info = types.SimpleNamespace(
            time_step_inputs=time_step_inputs,
            state_inputs=state_inputs,
            inputs={**time_step_inputs, **state_inputs},
            description=policy.export_description(),
            metadata_json=json.dumps(metadata, sort_keys=True),
            params_structure=None,
            functions={},
        )

    # --- unflattening --------------------------------------------------------------

    def _time_step_and_state(self, inputs: dict[str, tf.Tensor]) -> tuple[TimeStep, Any]:
        spec = self.policy.time_step_spec
        leaves = [inputs[path] for path in self.info.time_step_inputs]
        time_step = nest.pack_sequence_as(spec, leaves)
        state_leaves = [inputs[path] for path in self.info.state_inputs]
        state = nest.pack_sequence_as(self.policy.policy_state_spec, state_leaves)
        return time_step, state

    # --- the functions ---------------------------------------------------------------

    def distribution_outputs(self, inputs: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        """Parameters, the deterministic action (where there is one), next state, info."""
        time_step, state = self._time_step_and_state(inputs)
        params, next_state, info = self.policy.distribution_params(time_step, state)
        self.info.params_structure = params
        outputs: dict[str, tf.Tensor] = {}
        for path, value in families.flatten_params(params, "distribution"):
            outputs[path] = tf.identity(value, name=path.replace("/", "_"))
        action = self.deterministic_action(params)
        if action is not None:
            for path, value in nest.flatten_with_paths(action, "action"):
                outputs[path] = value
        for path, value in nest.flatten_with_paths(next_state, "next_state"):
            outputs[path] = value
        for path, value in nest.flatten_with_paths(info, "info"):
            outputs[path] = value
        _check_no_collision(self.info.inputs, outputs)
        return outputs

    def deterministic_action(self, params: Any) -> Any:
        """The action when every leaf of a plain policy is deterministic, else None."""
        if self.info.description.get("kind") != families.SAMPLE:
            return None
        leaves = nest.flatten(params)
        if not leaves or any(p.family != families.DETERMINISTIC for p in leaves):
            return None
        clip = self.info.description.get("clip", False)
        return nest.map_structure(
            lambda p, s: (
                tf_policy_lib.clip_to_spec(p.params["loc"], s) if clip else p.params["loc"]
            ),
            params,
            tensor_spec.from_spec(self.policy.action_spec),
        )

    def action_outputs(self, inputs: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        """The policy's own action (sampled in TF where stochastic), next state and info."""
        time_step, state = self._time_step_and_state(inputs)
        seed = self.sampler.make_seeds(1)[:, 0]
        step = self.policy.action(time_step, state, seed=seed)
        outputs = {}
        for path, value in nest.flatten_with_paths(step.action, "action"):
            outputs[path] = value
        for path, value in nest.flatten_with_paths(step.state, "next_state"):
            outputs[path] = value
        for path, value in nest.flatten_with_paths(step.info, "info"):
            outputs[path] = value
        return outputs

    def serving_inputs(self) -> dict[str, tf.TensorSpec]:
        """``serving_default``'s inputs: the observation, plus the step type and the
        state for stateful policies (a recurrent policy needs FIRST to reset)."""
        inputs = {n: s for n, s in self.info.time_step_inputs.items() if _is_observation(n)}
        if self.info.state_inputs:
            inputs["step_type"] = self.info.time_step_inputs["step_type"]
            inputs.update(self.info.state_inputs)
        return inputs

    def serving_outputs(self, inputs: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        """The policy's action (and next state) for an observation: the time step's
        other fields default to step type MID, reward 0 and discount 1, as
        ``policy-toolkit serve`` fills them in."""
        observation = next(v for n, v in inputs.items() if _is_observation(n))
        batch = tf.shape(observation)[:1]
        full = dict(inputs)
        for name, spec in self.info.time_step_inputs.items():
            if name in full:
                continue
            shape = tf.concat([batch, tf.constant(spec.shape[1:].as_list(), tf.int32)], 0)
            if name == "step_type":
                full[name] = tf.fill(shape, tf.constant(int(StepType.MID), spec.dtype))
            elif name == "discount":
                full[name] = tf.ones(shape, spec.dtype)
            else:  # reward
                full[name] = tf.zeros(shape, spec.dtype)
        outputs = self.action_outputs(full)
        return {k: v for k, v in outputs.items() if k.split("/")[0] in ("action", "next_state")}

    def initial_state_outputs(self, batch_size: tf.Tensor) -> dict[str, tf.Tensor]:
        state = self.policy.get_initial_state(batch_size)
        return dict(nest.flatten_with_paths(state, "policy_state"))

    # --- concrete functions -------------------------------------------------------------

    def build_functions(self) -> dict[str, Any]:
        """Traces every exported function; returns ``{signature name: tf.function}``."""
        inputs = dict(self.info.inputs)

        @tf.function(input_signature=[inputs], autograph=False)
        def distribution(flat):
            return self.distribution_outputs(flat)

        @tf.function(input_signature=[inputs], autograph=False)
        def action(flat):
            return self.action_outputs(flat)

        @tf.function(input_signature=[self.serving_inputs()], autograph=False)
        def serving_default(flat):
            return self.serving_outputs(flat)

        @tf.function(
            input_signature=[tf.TensorSpec([], tf.int32, name="batch_size")], autograph=False
        )
        def get_initial_state(batch_size):
            return self.initial_state_outputs(batch_size)

        @tf.function(input_signature=[])
        def get_train_step():
            return {"train_step": self.train_step.read_value()}

        metadata_json = self.info.metadata_json

        @tf.function(input_signature=[])
        def get_metadata():
            return {"metadata_json": tf.constant(metadata_json)}

        self.info.functions = {
            "action": action,
            "distribution": distribution,
            "get_initial_state": get_initial_state,
            "get_train_step": get_train_step,
            "get_metadata": get_metadata,
            # TF Serving's default: a request without signature_name gets the action.
            "serving_default": serving_default,
        }
        return self.info.functions

    def signature_io(self, name: str) -> FlatSignature:
        """Names, dtypes and shapes of one traced function's inputs and outputs."""
        function = self.info.functions[name]
        concrete = function.get_concrete_function()
        inputs = {s.name: s for s in nest.flatten(concrete.structured_input_signature)}
        outputs = {
            key: tf.TensorSpec(t.shape, t.dtype, key)
            for key, t in concrete.structured_outputs.items()
        }
        return FlatSignature(inputs, outputs)


def module_for(policy: Any, train_step: int | None, metadata: dict[str, Any]) -> ExportModule:
    """The traced export module of a TF policy (export, weights-only checkpoints, parity).

    Raises:
      ExportError: not a TFPolicy, or a policy part that does not export.
    """
    if not isinstance(policy, tf_policy_lib.TFPolicy):
        raise ExportError(
            f"{type(policy).__name__}: expected a TFPolicy (toolkit.policies.tf_policy); "
            "Python policies have no graph to export"
        )
    try:
        module = ExportModule(policy, train_step, metadata)
        module.build_functions()
        # Tracing the distribution function checks that every part of the policy exports.
        module.info.functions["distribution"].get_concrete_function()
    except (UnsupportedError, NotImplementedError) as e:
        raise ExportError(f"{type(policy).__name__}: cannot be exported: {e}") from e
    kind = module.info.description.get("kind")
    if kind not in families.KINDS:
        raise ExportError(
            f"{type(policy).__name__}: cannot be exported: its action derivation {kind!r} is "
            f"not one of {list(families.KINDS)}"
        )
    return module
