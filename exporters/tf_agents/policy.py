"""TFAgentsPolicy: a policy saved by TF-Agents' ``PolicySaver``, as a TFPolicy of this project.

The adapter wraps the loaded SavedModel (loaded by ``exporters.tf_agents.saved``) so that
``exporters.export_policy`` turns it into a regular bundle, like any native policy:

* specs come from ``policy_specs.pbtxt``; the variables are the saved model's own;
* ``_distribution`` calls the saved ``distribution`` function where the policy saved
  one of a supported family (deterministic, categorical, normal, uniform, possibly
  Independent), else the saved ``action`` where it is deterministic, as a Deterministic
  around it. A stochastic policy with neither is refused, naming why;
* the saved functions reset the state on FIRST themselves (TF-Agents traced its own
  reset into them), so the base class's reset is off;
* the action is a sample of the distribution, clipped to the action spec, as
  TF-Agents' ``action`` does (a deterministic leaf samples to its ``loc``). A categorical
  whose values pass the spec's bounds (TF-Agents' ActorPolicy over actions [1, 4]
  samples an index 0..3, which the clip turns into 1, 1, 2, 3) becomes the categorical
  of the clipped values, so sampling it is sampling TF-Agents' action;
* with ``greedy``, each leaf is the saved distribution's own mode, clipped to the spec:
  TF-Agents' ``GreedyPolicy`` (which the mode of the clipped categorical above is not);
* ``mask``: the observation leaf a collect policy's random branch masks its actions
  with (``exporters.tf_agents.graph``); it becomes this policy's
  ``observation_and_action_constraint_splitter``, which this project's
  EpsilonGreedyPolicy honours in its random branch, as TF-Agents' does.

TF-Agents' info, when it is a namedtuple (``PolicyInfo``), becomes a dict with the same
paths; its ``log_probability`` entry becomes this project's ``emit_log_probability``
(computed from the distribution, as for native policies).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from exporters.tf_agents import distributions as tfa_distributions
from exporters.tf_agents import graph as saved_graph
from exporters.tf_agents.saved import (
    check_initial_state,
    find_concrete,
    load_saved_policy,
    random_tf_ops,
    read_checkpoint,
    saved_batch_size,
    saved_metadata,
    tf_op_types,
)
from exporters.tf_agents.specs import field_names, read_policy_specs
from toolkit import distribution_families as families
from toolkit import nest
from toolkit.errors import UnsupportedError
from toolkit.policies import tf_policy
from toolkit.specs import tensor_spec
from toolkit.trajectories.policy_step import PolicyStep
from toolkit.trajectories.time_step import TimeStep

__all__ = ["TFAgentsPolicy"]

tfd = tfp.distributions

DISTRIBUTION = "distribution"
ACTION = "action"
#: The deterministic action inside a collect policy's saved action (its exploration cut off).
ACTION_CORE = "action_core"


def _info_specs(raw_info: Any) -> tuple[Any, bool]:
    """``(info spec without log_probability, emits log_probability)`` of TF-Agents' info.

    A top-level namedtuple becomes a dict (same paths), so the base class can add its
    own ``log_probability`` entry.
    """
    if nest.is_nested(raw_info) and hasattr(raw_info, "_fields"):
        raw_info = dict(raw_info._asdict())
    if isinstance(raw_info, dict) and tf_policy.LOG_PROBABILITY in raw_info:
        rest = {k: v for k, v in raw_info.items() if k != tf_policy.LOG_PROBABILITY}
        return (rest or ()), True
    return raw_info, False


class TFAgentsPolicy(tf_policy.TFPolicy):
    """A TF-Agents saved policy (``PolicySaver.save`` output) as a TFPolicy.

    Args:
      saved_model_dir: the saved policy directory (``saved_model.pb`` and
        ``policy_specs.pbtxt``).
      clip: clip sampled actions to bounded action specs (TF-Agents' default, which its
        saved ``action`` applies too).
      validate_args: check inputs against the specs.
      name: module name.
      core: the graph tensor of the deterministic action inside a collect policy's
        saved action (``exporters.tf_agents.graph.Exploration.core``): that is this
        policy's action.
      greedy: each action leaf is the saved distribution's mode (TF-Agents'
        GreedyPolicy).
      mask: the index among the observation's leaves of the action mask (1 where an
        action is allowed), for the exploration wrappers' random branches.

    Raises:
      BundleError: the directory is not a TF-Agents saved policy.
      UnsupportedError: a policy this adapter cannot serve, with the reason (a
        stochastic action without a usable saved distribution, a non-zero initial
        state, functions that take no time steps).
    """

    _TF_MODULE_IGNORED_PROPERTIES = tf_policy.TFPolicy._TF_MODULE_IGNORED_PROPERTIES | frozenset(
        ("_saved", "_specs", "_random_ops", "_inlined")
    )

    def __init__(
        self,
        saved_model_dir: str | os.PathLike,
        *,
        clip: bool = True,
        validate_args: bool = True,
        name: str | None = None,
        core: str | None = None,
        greedy: bool = False,
        mask: int | None = None,
    ):
        source = Path(saved_model_dir)
        specs = read_policy_specs(source)
        loaded = load_saved_policy(source)
        action_fn = find_concrete(loaded.action)
        if action_fn is None:
            raise UnsupportedError(
                f"{source}: action: expected a function of (time_step, policy_state), got a "
                "signature without time steps (saved with PolicySaver's input_fn_and_spec?)"
            )
        batch_size = saved_batch_size(action_fn)
        check_initial_state(loaded, specs, batch_size, source)
        info_spec, emit_log_probability = _info_specs(specs.raw["info_spec"])
        super().__init__(
            specs.raw["time_step_spec"],
            specs.raw["action_spec"],
            specs.raw["policy_state_spec"],
            info_spec,
            clip=clip,
            emit_log_probability=emit_log_probability,
            # TF-Agents traced its own reset on FIRST into the saved functions.
            automatic_state_reset=False,
            validate_args=validate_args,
            name=name or "TFAgentsPolicy",
        )
        # Not tracked as a child: the bundle's SavedModel must not carry TF-Agents'
        # functions and TFP type specs, only the variables they read (tracked below).
        object.__setattr__(self, "_saved", loaded)
        object.__setattr__(self, "_specs", specs)
        self._source = source
        self._batch_size = batch_size
        # PolicySaver saves no model_variables for a policy without variables.
        self.model_variables = tuple(getattr(loaded, "model_variables", ()))
        # A plain list (tf.Module would wrap it into a tracked ListWrapper).
        object.__setattr__(self, "_random_ops", random_tf_ops(tf_op_types(action_fn)))
        # Saved functions run inlined (captured constants folded in) where needed.
        object.__setattr__(self, "_inlined", {})
        self._core = core
        self._greedy = greedy
        self._mask = mask
        if mask is not None:
            # The base class's splitter hook, which the wrappers' random branches read
            # (a plain attribute: tf.Module would try to track the function).
            object.__setattr__(self, "_splitter", lambda obs: (obs, nest.flatten(obs)[mask]))
        if core is not None:
            self._function, self._skipped = ACTION_CORE, None
            self._inline(ACTION, [core])
        else:
            self._function, self._skipped = self._choose_function(loaded, source)

    # --- what was imported ----------------------------------------------------------

    @property
    def saved(self) -> Any:
        """The loaded TF-Agents SavedModel."""
        return self._saved

    @property
    def source(self) -> Path:
        """The TF-Agents saved policy directory."""
        return self._source

    @property
    def function(self) -> str:
        """The saved function the distribution comes from: ``distribution`` or ``action``."""
        return self._function

    @property
    def skipped(self) -> str | None:
        """Why the saved ``distribution`` is not used (then ``function == "action"``)."""
        return self._skipped

    @property
    def deterministic(self) -> bool:
        """True when the saved ``action`` holds no random op."""
        return not self._random_ops

    @property
    def batch_size(self) -> int | None:
        """The fixed batch size the policy was saved with, or None (any batch)."""
        return self._batch_size

    @property
    def saved_train_step(self) -> int:
        """The saved ``get_train_step()`` (-1 when PolicySaver was given none)."""
        return int(self._saved.get_train_step()) if hasattr(self._saved, "get_train_step") else -1

    @property
    def saved_metadata(self) -> dict[str, np.ndarray]:
        """PolicySaver's metadata (``get_metadata()``) as numpy values."""
        return saved_metadata(self._saved)

    def _choose_function(self, loaded: Any, source: Path) -> tuple[str, str | None]:
        """``distribution`` when it gives supported families, else a deterministic ``action``."""
        try:
            self._check_distribution(loaded)
        except UnsupportedError as e:
            reason = str(e)
        else:
            return DISTRIBUTION, None
        if self._random_ops:
            raise UnsupportedError(
                f"{source}: expected a deterministic action or a supported distribution to "
                f"import, got neither (action: the saved action samples (TF ops "
                f"{self._random_ops}) and an exported graph must not hold random ops; "
                f"distribution: {reason})"
            )
        return ACTION, reason

    def _check_distribution(self, loaded: Any) -> None:
        """Raises UnsupportedError unless the saved distribution can be exported."""
        function = getattr(loaded, "distribution", None)
        concrete = None if function is None else find_concrete(function)
        if concrete is None:
            raise UnsupportedError("the saved policy has no distribution function")
        fields = field_names(concrete.structured_outputs)
        if fields is None or "action" not in fields:
            # PolicySaver saves a function that only raises when it could not serialize
            # policy.distribution() (e.g. a TransformedDistribution); it returns ().
            raise UnsupportedError(
                "the saved policy's distribution function only raises: PolicySaver could "
                "not serialize policy.distribution() when the policy was saved"
            )
        # One call on zeros tells the families (and that their shapes fit the specs).
        batch = self._batch_size or 1
        time_step = tensor_spec.zero_spec_nest(self.time_step_spec, [batch])
        state = self.get_initial_state(batch)
        step = loaded.distribution(*self._saved_inputs(time_step, state))
        for (path, spec), dist in zip(
            nest.flatten_with_paths(self.action_spec, "distribution"),
            nest.flatten_up_to(self._specs.raw["action_spec"], step.action),
            strict=True,
        ):
            _leaf_params(self._leaf_distribution(dist, spec, path), spec, batch, path)

    # --- calling the saved functions ---------------------------------------------------

    def _saved_inputs(self, time_step: TimeStep, policy_state: Any) -> tuple[TimeStep, Any]:
        """The inputs in TF-Agents' structures (e.g. a list for LSTM states)."""
        raw = self._specs.raw
        leaves = nest.flatten(time_step)
        if self._batch_size is not None:
            # Restored functions match their inputs' static shapes: pin the saved batch.
            leaves = [
                tf.ensure_shape(t, [self._batch_size, *s.shape])
                for t, s in zip(leaves, nest.flatten(raw["time_step_spec"]), strict=True)
            ]
        time_step = TimeStep(*nest.pack_sequence_as(raw["time_step_spec"], leaves))
        state = nest.pack_sequence_as(raw["policy_state_spec"], nest.flatten(policy_state))
        return time_step, state

    def _inline(self, function: str, fetches: list[str] | None = None) -> None:
        """Runs the saved ``function`` inlined from now on (``fetches``: part of it)."""
        concrete = find_concrete(getattr(self._saved, function))
        graph = saved_graph.SavedGraph(concrete)
        variables = list(self.model_variables)

        def inlined(time_step, policy_state):
            args = nest.flatten(time_step) + nest.flatten(policy_state)
            outputs = saved_graph.inline_call(graph, args, variables, fetches)
            if fetches is not None:
                return outputs
            return tf.nest.pack_sequence_as(
                concrete.structured_outputs, outputs, expand_composites=True
            )

        # Inlined straight into a caller's trace (exports then see the variable reads);
        # called eagerly, through a function of its own.
        traced = tf.function(inlined, autograph=False)

        def call(time_step, policy_state):
            if tf.inside_function():
                return inlined(time_step, policy_state)
            return traced(time_step, policy_state)

        self._inlined[function] = call

    def _call(self, function: str, time_step: TimeStep, policy_state: Any) -> Any:
        """The saved function's PolicyStep: inlined when it captured constants or combines
        variables before the time step meets them.

        A restored function called inside a trace passes its captured constants (e.g.
        C51's support, made outside the traced function) as inputs of the new graph,
        which would become stray inputs of the exported one; and the conversion would
        fold variables combined among themselves (PPO's observation normaliser) into
        constants no checkpoint can update (``saved_graph.folded_reads``).
        """
        if function not in self._inlined:
            concrete = find_concrete(getattr(self._saved, function))
            graph = saved_graph.SavedGraph(concrete)
            if saved_graph.captured_constants(concrete) or saved_graph.folded_reads(graph):
                self._inline(function)
            else:
                self._inlined[function] = getattr(self._saved, function)
        return self._inlined[function](time_step, policy_state)

    def _our_info(self, info: Any) -> Any:
        """TF-Agents' info in this policy's base info structure (no log_probability)."""
        if not nest.flatten(self._base_info_spec):
            return ()
        if hasattr(info, "_fields"):
            info = dict(info._asdict())
        if isinstance(info, dict):
            info = {k: v for k, v in info.items() if k != tf_policy.LOG_PROBABILITY}
        return nest.pack_sequence_as(self._base_info_spec, nest.flatten(info))

    def _leaf_distribution(self, dist: Any, spec: Any, path: str) -> tfd.Distribution:
        """One saved leaf in this project's terms: its distribution, or with ``greedy``
        its own mode (TF-Agents' GreedyPolicy: ``mode()``, clipped by ``action``)."""
        if not self._greedy:
            return _action_distribution(dist, spec, path)
        _action_distribution(dist, spec, path)  # the same families are supported
        try:
            mode = dist.mode()
        except NotImplementedError:
            raise UnsupportedError(
                f"{path}: a {type(dist).__name__} has no mode: nothing greedy to import"
            ) from None
        return tf_policy.as_action_distribution(tf.cast(mode, spec.dtype), spec, path)

    def _distribution(self, time_step: TimeStep, policy_state: Any) -> PolicyStep:
        time_step, state = self._saved_inputs(time_step, policy_state)
        leaves = nest.flatten_with_paths(self.action_spec, "distribution")
        if self._function == ACTION_CORE:
            (core,) = self._inlined[ACTION](time_step, state)
            dists = [tf_policy.as_action_distribution(core, leaves[0][1], leaves[0][0])]
            next_state = nest.pack_sequence_as(self.policy_state_spec, nest.flatten(state))
            return PolicyStep(nest.pack_sequence_as(self.action_spec, dists), next_state, ())
        if self._function == DISTRIBUTION:
            step = self._call(DISTRIBUTION, time_step, state)
            saved = nest.flatten_up_to(self._specs.raw["action_spec"], step.action)
            dists = [
                self._leaf_distribution(d, s, p) for (p, s), d in zip(leaves, saved, strict=True)
            ]
        else:
            step = self._call(ACTION, time_step, state)
            actions = nest.flatten_up_to(self._specs.raw["action_spec"], step.action)
            dists = [
                tf_policy.as_action_distribution(a, s, p)
                for (p, s), a in zip(leaves, actions, strict=True)
            ]
        next_state = nest.pack_sequence_as(self.policy_state_spec, nest.flatten(step.state))
        return PolicyStep(
            nest.pack_sequence_as(self.action_spec, dists), next_state, self._our_info(step.info)
        )

    def _distribution_params(self, time_step: TimeStep, policy_state: Any):
        step = self._distribution_step(time_step, policy_state, checked=False)
        batch = tf.shape(time_step.step_type)[0]
        params = [
            _leaf_params(d, s, batch, path)
            for (path, s), d in zip(
                nest.flatten_with_paths(self.action_spec, "action"),
                nest.flatten(step.action),
                strict=True,
            )
        ]
        return nest.pack_sequence_as(self.action_spec, params), step.state, step.info

    # --- copies and checkpoints ----------------------------------------------------------

    def copy(self) -> TFAgentsPolicy:
        """An independent copy: the saved policy loaded again, with this one's values."""
        other = TFAgentsPolicy(
            self._source,
            clip=self.clip,
            validate_args=self.validate_args,
            name=self.name,
            core=self._core,
            greedy=self._greedy,
            mask=self._mask,
        )
        other.update(self)
        return other

    def restore_tf_agents_checkpoint(self, checkpoint_path: str | os.PathLike) -> int:
        """Reads a ``PolicySaver.save_checkpoint`` (or ``save``) output into this policy.

        The checkpoint is read into a fresh load first, so a checkpoint that does not
        fit leaves this policy as it was.

        Returns:
          The checkpoint's train step (-1 when PolicySaver was given none).

        Raises:
          BundleError: no checkpoint there, or one of another policy.
        """
        fresh = read_checkpoint(self._source, checkpoint_path)
        for target, value in zip(self.model_variables, fresh.model_variables, strict=True):
            target.assign(value)
        return int(fresh.get_train_step()) if hasattr(fresh, "get_train_step") else -1


def _leaf_params(dist: Any, spec: Any, batch: Any, path: str) -> families.DistributionParams:
    """The export parameters of one action leaf's distribution (TF-Agents' families too)."""
    base = dist.distribution if isinstance(dist, tfd.Independent) else dist
    if tfa_distributions.tf_agents_class(base) != tfa_distributions.SQUASH_TO_SPEC_NORMAL:
        return tf_policy.params_from_distribution(dist, spec, batch, path)
    shape = tf.concat([tf.reshape(tf.cast(batch, tf.int32), [1]), spec.shape.as_list()], 0)

    def full(value: Any) -> tf.Tensor:
        return tf.broadcast_to(tf.cast(value, spec.dtype), shape)

    inner = base.input_distribution
    saved_spec = base._spec  # TF-Agents' class keeps the spec it squashes to here
    return families.DistributionParams(
        families.TANH_NORMAL,
        {
            "loc": full(inner.mean()),
            "scale": full(inner.stddev()),
            "low": full(np.asarray(saved_spec.minimum, np.float32)),
            "high": full(np.asarray(saved_spec.maximum, np.float32)),
        },
        spec.shape.rank,
        families.dtype_name(spec.dtype),
    )


def _within_bounds(logits: tf.Tensor, shift: int, spec: Any, path: str) -> tuple[tf.Tensor, int]:
    """``(logits, shift)`` of the categorical of the actions TF-Agents returns.

    TF-Agents samples a value ``index + shift`` and its action clips it into the spec's
    bounds. Where the values pass the bounds, the probability of each value outside
    goes to the bound it is clipped to, and values inside that no index reaches get
    none (log 0 = -inf): a categorical over ``minimum .. maximum``.
    """
    n = logits.shape[-1]
    if not hasattr(spec, "minimum") or n is None:
        return logits, shift
    low, high = np.unique(np.asarray(spec.minimum)), np.unique(np.asarray(spec.maximum))
    if low.size != 1 or high.size != 1:
        raise UnsupportedError(
            f"{path}: expected one minimum and one maximum for a categorical action, got "
            f"{spec.minimum} .. {spec.maximum}"
        )
    low, high = int(low[0]), int(high[0])
    if low <= shift and shift + n - 1 <= high:
        return logits, shift
    clipped = np.clip(np.arange(n) + shift, low, high) - low
    onto = np.zeros((n, high - low + 1), np.float32)
    onto[np.arange(n), clipped] = 1.0  # index -> the action it is clipped to
    probs = tf.nn.softmax(tf.cast(logits, tf.float32)) @ tf.constant(onto)
    return tf.math.log(probs), low


def _action_distribution(dist: Any, spec: tf.TensorSpec, path: str) -> tfd.Distribution:
    """One saved distribution with event shape ``spec.shape``, in TF-Agents' semantics."""
    base = dist.distribution if isinstance(dist, tfd.Independent) else dist
    kind = tfa_distributions.tf_agents_class(base)
    if kind == tfa_distributions.SQUASH_TO_SPEC_NORMAL:
        return tf_policy.as_action_distribution(dist, spec, path)
    if isinstance(base, tfd.Categorical):
        # TF-Agents uses a TFP Categorical's indices as actions, unshifted; its own
        # ShiftedCategorical adds its shift (MaskedCategorical's logits are masked).
        shift = int(base.shift) if kind == tfa_distributions.SHIFTED_CATEGORICAL else 0
        logits = base.logits if base.logits is not None else tf.math.log(base.probs)
        logits, shift = _within_bounds(logits, shift, spec, path)
        shifted = tf_policy.ShiftedCategorical(logits, shift=shift, dtype=spec.dtype)
        if spec.shape.rank:
            return tfd.Independent(shifted, reinterpreted_batch_ndims=spec.shape.rank)
        return shifted
    supported = (tfd.Deterministic, tfd.Normal, tfd.MultivariateNormalDiag, tfd.Uniform)
    if not isinstance(base, supported):
        raise UnsupportedError(
            f"{path}: expected a Deterministic, Categorical, Normal, MultivariateNormalDiag or "
            f"Uniform distribution, got {type(base).__name__}"
        )
    return tf_policy.as_action_distribution(dist, spec, path)
