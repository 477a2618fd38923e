"""TFPolicy: the base of TensorFlow policies.

A TF policy is a ``tf.Module``. Its public ``action`` / ``distribution`` /
``distribution_params`` validate the inputs against the specs, bring them to one batch
dim, reset the state of entries whose step type is FIRST, call the private methods that
subclasses implement, check and clip the outputs, and restore the caller's batch dims.
Everything works eagerly and inside ``tf.function`` with a dynamic batch size.

Subclasses implement:

* ``_distribution(time_step, policy_state) -> PolicyStep(distributions, state, info)``,
  one TFP distribution per action leaf, with event shape = the leaf's spec shape;
* ``_action(time_step, policy_state, seed)`` where sampling is custom (the default
  samples ``_distribution``). It returns the full info, including
  ``info["log_probability"]`` when the policy emits log-probabilities;
* ``_distribution_params`` and ``export_description`` where the action is not a plain
  sample of ``_distribution`` (wrappers).

Inside those methods every tensor has exactly one batch dim, ``[B] + spec.shape``.

The distributions policies use are in ``toolkit.distributions`` and the RNG-seed helpers
in ``toolkit.policies.seeds``; their names are re-exported here, where they used to live.
Over 600 lines on purpose: what is left is the base class and the input checks, output
checks and batch-dim helpers that only it uses.
"""

from __future__ import annotations

import contextvars
import copy
from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from toolkit import action_masks, nest
from toolkit import distribution_families as families
from toolkit.distributions import utils as dist_utils
from toolkit.distributions.shifted_categorical import ShiftedCategorical
from toolkit.distributions.utils import as_action_distribution, params_from_distribution
from toolkit.errors import (
    ActionDtypeError,
    NoAllowedActionError,
    PolicyError,
    SpecError,
    SpecMismatchError,
    StructureError,
    UnsupportedError,
)
from toolkit.policies.seeds import split_seed, stateless_seed
from toolkit.specs import tensor_spec
from toolkit.specs.tensor_spec import discrete_range, same_kind, shape_text
from toolkit.trajectories.policy_step import PolicyInfo, PolicyStep, set_log_probability
from toolkit.trajectories.time_step import StepType, TimeStep

tfd = tfp.distributions

__all__ = [
    "LOG_PROBABILITY",
    "ShiftedCategorical",
    "TFPolicy",
    "as_action_distribution",
    "clip_to_spec",
    "discrete_range",
    "numpy_nest",
    "params_from_distribution",
    "split_seed",
    "stateless_seed",
    "strip_log_probability",
    "without_log_probability",
]

LOG_PROBABILITY = families.LOG_PROBABILITY

#: True while ``distribution_params`` runs: what exports trace has no action-mask check
#: (runtimes check the mask the bundle declares), not even in the public ``distribution()``
#: calls a wrapper policy makes to the policy it wraps.
_PARAMS_ONLY: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "toolkit_policy_params_only", default=False
)


# --- specs and values ------------------------------------------------------------------


def clip_to_spec(value: tf.Tensor, spec: Any) -> tf.Tensor:
    """Clips ``value`` to a bounded spec's bounds (unbounded and bool specs pass)."""
    if not tensor_spec.is_bounded(spec) or spec.dtype.is_bool:
        return value
    low = tf.constant(np.asarray(spec.minimum), value.dtype)
    high = tf.constant(np.asarray(spec.maximum), value.dtype)
    return tf.clip_by_value(value, low, high)


def leaves_like(spec: Any, value: Any) -> list[Any]:
    """The leaves of ``value`` in the order of ``spec``'s leaves (structures already match)."""
    if isinstance(spec, dict):
        return [leaf for key in sorted(spec) for leaf in leaves_like(spec[key], value[key])]
    if isinstance(spec, tuple) and hasattr(spec, "_fields"):
        return [
            leaf for f in spec._fields for leaf in leaves_like(getattr(spec, f), getattr(value, f))
        ]
    if isinstance(spec, (tuple, list)):
        return [leaf for s, v in zip(spec, value, strict=True) for leaf in leaves_like(s, v)]
    if spec is None:
        return []
    return [value]


def _to_tensor(value: Any, spec: Any, path: str) -> tf.Tensor:
    """A tensor of the spec's dtype; tensors must have it, numpy values are conformed."""
    if tf.is_tensor(value) or isinstance(value, tf.Variable):
        tensor = tf.convert_to_tensor(value)
        if tensor.dtype != spec.dtype:
            raise SpecMismatchError(path, f"dtype {spec.dtype.name}", tensor.dtype.name)
        return tensor
    array, _ = tensor_spec.to_array_spec(spec).conform(value, path)
    return tf.convert_to_tensor(array)


def _convert_nest(values: Any, spec: Any, prefix: str, outer: tf.TensorShape | None) -> Any:
    """Validated tensors shaped ``outer + spec.shape``; returns ``(tensors, outer)``."""
    nest.assert_same_structure(values, spec, prefix)
    specs = nest.flatten_with_paths(spec, prefix)
    leaves = leaves_like(spec, values)
    out = []
    for (path, s), value in zip(specs, leaves, strict=True):
        tensor = _to_tensor(value, s, path)
        shape = tensor.shape
        inner = s.shape.rank
        if shape.rank is None or shape.rank < inner:
            raise SpecMismatchError(
                path,
                f"shape [batch dims] + {tuple(s.shape.as_list())}",
                shape_text(shape),
            )
        found_outer = shape[: shape.rank - inner]
        if outer is None:
            outer = found_outer
        expected = outer.concatenate(s.shape)
        if not expected.is_compatible_with(shape):
            raise SpecMismatchError(path, f"shape {shape_text(expected)}", shape_text(shape))
        out.append(tensor)
    return nest.pack_sequence_as(spec, out), outer


def _check_outputs(
    values: Any,
    spec: Any,
    prefix: str,
    who: str,
    exact_dtypes: bool = False,
    batch_size: tf.Tensor | None = None,
) -> Any:
    """Outputs of a policy's private methods, checked (and cast within a dtype kind, unless
    ``exact_dtypes``: actions must have their spec's dtype, as in TF-Agents).

    With ``batch_size``, an output without the batch dim (one shaped like its spec, e.g.
    a constant action) stands for every batch entry and is broadcast, as TF-Agents'
    policies may return such outputs.
    """
    nest.assert_same_structure(values, spec, prefix)
    specs = nest.flatten_with_paths(spec, prefix)
    tensors = [tf.convert_to_tensor(value) for value in leaves_like(spec, values)]
    out = []
    if exact_dtypes:  # every dtype before any shape, as TF-Agents checks them
        for (path, s), tensor in zip(specs, tensors, strict=True):
            if tensor.dtype != s.dtype:
                raise ActionDtypeError(
                    path,
                    f"dtype {s.dtype.name}",
                    tensor.dtype.name,
                    detail=f"{who} produced an action with a dtype that doesn't match its "
                    "action_spec",
                )
    for (path, s), tensor in zip(specs, tensors, strict=True):
        if tensor.dtype != s.dtype:
            if not same_kind(tensor.dtype, s.dtype):
                raise SpecMismatchError(
                    path, f"dtype {s.dtype.name}", tensor.dtype.name, detail=f"from {who}"
                )
            tensor = tf.cast(tensor, s.dtype)
        if batch_size is not None and _without_batch_dim(tensor.shape, s.shape):
            tensor = tf.broadcast_to(
                tensor, tf.concat([[batch_size], tf.constant(s.shape.as_list(), tf.int32)], 0)
            )
        shape = tensor.shape
        if shape.rank is not None and (
            shape.rank != s.shape.rank + 1 or not s.shape.is_compatible_with(shape[1:])
        ):
            raise SpecMismatchError(
                path,
                f"shape [B] + {tuple(s.shape.as_list())}",
                shape_text(shape),
                detail=f"from {who}",
            )
        out.append(tensor)
    return nest.pack_sequence_as(spec, out)


def _without_batch_dim(shape: tf.TensorShape, spec_shape: tf.TensorShape) -> bool:
    """Whether an output of ``shape`` lacks the batch dim: it has at most the spec's rank
    and broadcasts to the spec's shape."""
    if shape.rank is None or spec_shape.rank is None or shape.rank > spec_shape.rank:
        return False
    if not shape.is_fully_defined() or not spec_shape.is_fully_defined():
        return False
    try:
        np.broadcast_shapes(tuple(shape.as_list()), tuple(spec_shape.as_list()))
    except ValueError:
        return False
    return True


def broadcast_rows(mask: tf.Tensor, rank: int) -> tf.Tensor:
    """A ``[B]`` mask reshaped to broadcast against a tensor of ``rank``."""
    return tf.reshape(mask, tf.concat([tf.shape(mask), tf.ones([rank - 1], tf.int32)], 0))


# --- the base class ---------------------------------------------------------------------


class TFPolicy(tf.Module):
    """Base class of TensorFlow policies.

    Args:
      time_step_spec: a TimeStep of tensor (or array) specs.
      action_spec: a nest of tensor (or array) specs.
      policy_state_spec: a nest of specs for the state fed back each step; ``()`` if none.
      info_spec: a nest of specs for side information.
      clip: clip actions to bounded action specs.
      emit_log_probability: add ``info["log_probability"]`` (one float32 per action leaf,
        the log-probability of the unclipped action); ``info_spec`` becomes a dict.
      automatic_state_reset: replace the state of entries whose step type is FIRST by
        the initial state before calling the subclass.
      validate_args: check inputs against the specs (structure, dtypes, shapes).
      seed: seeds the policy's own generator, used by ``action(seed=None)``.
      name: module name.
    """

    # The generator's state is no model variable: update() and variables() skip it.
    _TF_MODULE_IGNORED_PROPERTIES = tf.Module._TF_MODULE_IGNORED_PROPERTIES | frozenset(
        (
            "_rng",
            "_time_step_spec",
            "_action_spec",
            "_policy_state_spec",
            "_info_spec",
            "_base_info_spec",
        )
    )

    def __init__(
        self,
        time_step_spec: Any,
        action_spec: Any,
        policy_state_spec: Any = (),
        info_spec: Any = (),
        clip: bool = True,
        emit_log_probability: bool = False,
        automatic_state_reset: bool = True,
        validate_args: bool = True,
        *,
        seed: int | None = None,
        name: str | None = None,
    ):
        super().__init__(name=name or type(self).__name__)
        if not isinstance(time_step_spec, TimeStep):
            raise StructureError(
                "time_step_spec",
                "a TimeStep of specs (see time_step.time_step_spec())",
                type(time_step_spec).__name__,
            )
        if action_spec is None or not nest.flatten(action_spec):
            raise StructureError("action_spec", "a spec or a nest of specs", repr(action_spec))
        # object.__setattr__: spec nests stay plain (tf.Module would wrap dicts and lists).
        object.__setattr__(self, "_time_step_spec", tensor_spec.from_spec(time_step_spec))
        object.__setattr__(self, "_action_spec", tensor_spec.from_spec(action_spec))
        object.__setattr__(self, "_policy_state_spec", _specs_or_empty(policy_state_spec))
        base_info = _specs_or_empty(info_spec)
        object.__setattr__(self, "_base_info_spec", base_info)
        if emit_log_probability:
            base_info = _with_log_probability_spec(base_info, self._action_spec)
        object.__setattr__(self, "_info_spec", base_info)
        self._clip = bool(clip)
        self._emit_log_probability = bool(emit_log_probability)
        self._automatic_state_reset = bool(automatic_state_reset)
        self._validate_args = bool(validate_args)
        with tf.init_scope():
            self._rng = (
                tf.random.Generator.from_seed(seed)
                if seed is not None
                else tf.random.Generator.from_non_deterministic_state()
            )

    # --- specs and settings ----------------------------------------------------------

    @property
    def time_step_spec(self) -> TimeStep:
        return self._time_step_spec

    @property
    def action_spec(self) -> Any:
        return self._action_spec

    @property
    def policy_state_spec(self) -> Any:
        return self._policy_state_spec

    @property
    def info_spec(self) -> Any:
        return self._info_spec

    @property
    def clip(self) -> bool:
        return self._clip

    @property
    def emit_log_probability(self) -> bool:
        return self._emit_log_probability

    @property
    def automatic_state_reset(self) -> bool:
        return self._automatic_state_reset

    @property
    def validate_args(self) -> bool:
        return self._validate_args

    @property
    def is_stateful(self) -> bool:
        return bool(nest.flatten(self._policy_state_spec))

    @property
    def observation_and_action_constraint_splitter(self) -> Callable[[Any], Any] | None:
        return getattr(self, "_splitter", None)

    # --- public API -------------------------------------------------------------------

    def get_initial_state(self, batch_size: Any = None) -> Any:
        """The state to start an episode with: ``[batch_size] + spec.shape`` per leaf.

        Args:
          batch_size: an int, a scalar int tensor, or None for unbatched state.
        """
        return self._get_initial_state(batch_size)

    def action(self, time_step: Any, policy_state: Any = (), seed: Any = None) -> PolicyStep:
        """The PolicyStep(action, state, info) for a time step.

        Args:
          time_step: a TimeStep of tensors (or numpy arrays) matching ``time_step_spec``
            with any batch dims, e.g. ``[B]`` (the TF convention) or none.
          policy_state: the state from ``get_initial_state`` or the previous step.
          seed: None draws from the policy's own generator; an int (or a numpy
            Generator, or a [2] int tensor) makes the step reproducible.

        Returns:
          Actions (clipped to bounded specs when ``clip``), the next state and info,
          with the time step's batch dims.
        """
        raw_step_type = time_step.step_type if isinstance(time_step, TimeStep) else None
        time_step, policy_state, restore = self._prepare(time_step, policy_state)
        self._check_action_mask(time_step, raw_step_type)
        seed = self._draw_seed() if seed is None else stateless_seed(seed)
        step = self._action_step(time_step, policy_state, seed)
        return restore(step)

    def distribution(self, time_step: Any, policy_state: Any = ()) -> PolicyStep:
        """The PolicyStep whose ``action`` is a nest of TFP distributions (one per leaf).

        ``info["log_probability"]`` (when emitted) is zeros here: log-probabilities
        belong to sampled actions, which ``action()`` returns.
        """
        raw_step_type = time_step.step_type if isinstance(time_step, TimeStep) else None
        time_step, policy_state, restore = self._prepare(time_step, policy_state)
        self._check_action_mask(time_step, raw_step_type)
        step = self._distribution_step(time_step, policy_state)
        if self._emit_log_probability:
            batch = tf.shape(time_step.step_type)[:1]
            zeros = nest.map_structure(lambda _: tf.zeros(batch, tf.float32), self._action_spec)
            step = step._replace(info=_info_with(step.info, zeros))
        return restore(step, distributions=True)

    def distribution_params(self, time_step: Any, policy_state: Any = ()) -> tuple[Any, Any, Any]:
        """What an exported graph computes: ``(params, next_state, info)``, no random ops.

        ``params`` has the structure ``export_description()`` declares: for a plain
        policy a nest like ``action_spec`` of ``DistributionParams`` (family and
        parameter tensors with the time step's batch dims). ``next_state`` is the state
        after the step (random parts of it, like OU noise, are left to the runtime as the
        description says). ``info`` is the policy's own info without log-probabilities,
        which the runtime computes from the parameters.
        """
        time_step, policy_state, restore = self._prepare(time_step, policy_state)
        policy_state = self._reset_state(time_step, policy_state)
        token = _PARAMS_ONLY.set(True)
        try:
            params, state, info = self._distribution_params(time_step, policy_state)
        finally:
            _PARAMS_ONLY.reset(token)
        if self.is_stateful:
            state = _check_outputs(state, self._policy_state_spec, "state", type(self).__name__)
        step = restore(PolicyStep(params, state, info), params=True)
        return step.action, step.state, step.info

    def export_description(self) -> dict[str, Any]:
        """How a runtime derives the action from ``distribution_params`` (a JSON-able dict).

        The default: ``{"kind": "sample", "clip": ..., "emit_log_probability": ...}``,
        i.e. sample each leaf of the parameters. See ``toolkit.distribution_families``.
        """
        return {
            "kind": families.SAMPLE,
            "clip": self._clip,
            "emit_log_probability": self._emit_log_probability,
        }

    def variables(self) -> list[tf.Variable]:
        """The policy's model variables (networks, schedules), without its generator."""
        return list(tf.Module.variables.fget(self))

    def update(
        self,
        policy: TFPolicy,
        tau: float = 1.0,
        tau_non_trainable: float | None = None,
        sort_variables_by_name: bool = False,
    ) -> None:
        """Moves this policy's variables towards ``policy``'s: ``v = (1-tau) v + tau w``.

        ``tau=1`` copies, ``tau=0`` changes nothing; non-trainable float variables move by
        ``tau_non_trainable`` (default ``tau``); integer ones (counters) are copied.
        Variables are paired in ``variables()`` order, or by name with
        ``sort_variables_by_name``; both policies must have the same variable shapes.
        Works inside ``tf.function``, where ``tau`` may be a tensor.
        """
        if tau_non_trainable is None:
            tau_non_trainable = tau
        for name, value in (("tau", tau), ("tau_non_trainable", tau_non_trainable)):
            if not tf.is_tensor(value) and not 0.0 <= float(value) <= 1.0:
                raise SpecError(f"{name}: expected a value in [0, 1], got {value}")
        mine, theirs = list(self.variables()), list(policy.variables())
        if len(mine) != len(theirs):
            raise PolicyError(
                f"update(): expected a policy with {len(mine)} variables like "
                f"{type(self).__name__}, got {len(theirs)} from {type(policy).__name__}"
            )
        if sort_variables_by_name:
            mine = sorted(mine, key=lambda v: v.name)
            theirs = sorted(theirs, key=lambda v: v.name)
        for target, source in zip(mine, theirs, strict=True):
            if target.shape != source.shape or target.dtype != source.dtype:
                raise SpecMismatchError(
                    target.name,
                    f"a variable of shape {shape_text(target.shape)} {target.dtype.name}",
                    f"{shape_text(source.shape)} {source.dtype.name} ({source.name})",
                    detail="update() pairs variables in order",
                )
            rate = tau if target.trainable else tau_non_trainable
            # Counters (integers) are copied, not mixed.
            if not target.dtype.is_floating or (not tf.is_tensor(rate) and float(rate) == 1.0):
                target.assign(source)
            elif not tf.is_tensor(rate) and float(rate) == 0.0:
                continue
            else:
                rate = tf.cast(rate, target.dtype)
                target.assign((1.0 - rate) * target + rate * tf.cast(source, target.dtype))

    def copy(self) -> TFPolicy:
        """An independent copy: new variables with the same values, its own generator."""
        return copy.deepcopy(self)

    # --- for subclasses ----------------------------------------------------------------

    def _distribution(self, time_step: TimeStep, policy_state: Any) -> PolicyStep:
        raise UnsupportedError(f"{type(self).__name__} has no distribution()")

    def _action(self, time_step: TimeStep, policy_state: Any, seed: tf.Tensor) -> PolicyStep:
        step = self._distribution_step(time_step, policy_state, checked=False)
        distributions = nest.flatten(step.action)
        seeds = split_seed(seed, len(distributions))
        actions = [d.sample(seed=s) for d, s in zip(distributions, seeds, strict=True)]
        info = step.info
        if self._emit_log_probability:
            log_probs = [d.log_prob(a) for d, a in zip(distributions, actions, strict=True)]
            info = _info_with(info, nest.pack_sequence_as(self._action_spec, log_probs))
        action = nest.pack_sequence_as(self._action_spec, actions)
        return PolicyStep(action, step.state, info)

    def _distribution_params(self, time_step: TimeStep, policy_state: Any):
        step = self._distribution_step(time_step, policy_state, checked=False)
        batch = tf.shape(time_step.step_type)[0]
        params = [
            dist_utils.params_from_distribution(d, s, batch, path)
            for (path, s), d in zip(
                nest.flatten_with_paths(self._action_spec, "action"),
                nest.flatten(step.action),
                strict=True,
            )
        ]
        return nest.pack_sequence_as(self._action_spec, params), step.state, step.info

    def _get_initial_state(self, batch_size: Any) -> Any:
        if not self.is_stateful:
            return ()
        if batch_size is None:
            return tensor_spec.zero_spec_nest(self._policy_state_spec)
        outer = tf.reshape(batch_size, [1]) if tf.is_tensor(batch_size) else [int(batch_size)]
        return tensor_spec.zero_spec_nest(self._policy_state_spec, outer)

    # --- internals that wrappers call on the policies they wrap ---------------------------

    def _action_step(self, time_step: TimeStep, policy_state: Any, seed: tf.Tensor) -> PolicyStep:
        """Reset, ``_action``, then check, cast and clip: on prepared (batched) inputs."""
        policy_state = self._reset_state(time_step, policy_state)
        step = self._action(time_step, policy_state, seed)
        who = f"{type(self).__name__}._action"
        if not isinstance(step, PolicyStep):
            raise StructureError("policy step", "a PolicyStep", type(step).__name__)
        batch = tf.shape(time_step.step_type)[0]
        action = _check_outputs(
            step.action, self._action_spec, "action", who, exact_dtypes=True, batch_size=batch
        )
        if self._clip:
            action = nest.map_structure(clip_to_spec, action, self._action_spec)
        state = step.state
        if self.is_stateful:
            state = _check_outputs(state, self._policy_state_spec, "state", who)
        info = (
            _check_outputs(step.info, self._info_spec, "info", who, batch_size=batch)
            if nest.flatten(self._info_spec)
            else step.info
        )
        return PolicyStep(action, state, info)

    def _distribution_step(
        self, time_step: TimeStep, policy_state: Any, checked: bool = True
    ) -> PolicyStep:
        """Reset (unless already done) and ``_distribution``, with the output checked."""
        if checked:
            policy_state = self._reset_state(time_step, policy_state)
        step = self._distribution(time_step, policy_state)
        if not isinstance(step, PolicyStep):
            raise StructureError("policy step", "a PolicyStep", type(step).__name__)
        nest.assert_same_structure(step.action, self._action_spec, "distribution")
        distributions = []
        for (path, s), d in zip(
            nest.flatten_with_paths(self._action_spec, "distribution"),
            leaves_like(self._action_spec, step.action),
            strict=True,
        ):
            if not dist_utils.is_distribution(d):
                raise SpecMismatchError(path, "a TFP distribution", type(d).__name__)
            d = _broadcast_distribution(d, s, tf.shape(time_step.step_type)[0])
            if d.event_shape.rank == 0 and s.shape.rank:
                # As TF-Agents allows: scalar events over [B] + spec.shape, e.g. a Normal
                # of the spec's shape; one event of the spec's shape from here on.
                d = tfd.Independent(d, reinterpreted_batch_ndims=s.shape.rank)
            if d.event_shape.rank is not None and not d.event_shape.is_compatible_with(s.shape):
                raise SpecMismatchError(
                    path,
                    f"event shape {tuple(s.shape.as_list())}",
                    shape_text(d.event_shape),
                    detail=f"from {type(self).__name__}._distribution",
                )
            distributions.append(d)
        return step._replace(action=nest.pack_sequence_as(self._action_spec, distributions))

    def _reset_state(self, time_step: TimeStep, policy_state: Any) -> Any:
        """Replaces the state of FIRST entries by the initial state (per batch entry)."""
        if not self.is_stateful or not self._automatic_state_reset:
            return policy_state
        is_first = tf.equal(time_step.step_type, tf.constant(StepType.FIRST, tf.int32))
        initial = self.get_initial_state(tf.shape(time_step.step_type)[0])
        return nest.map_structure(
            lambda init, state: tf.where(broadcast_rows(is_first, state.shape.rank), init, state),
            nest.pack_sequence_as(self._policy_state_spec, nest.flatten(initial)),
            policy_state,
        )

    def _check_action_mask(self, time_step: TimeStep, raw_step_type: Any) -> None:
        """Refuses a batch entry whose action mask allows no action: there is none to take.

        Eagerly a NoAllowedActionError naming the entry; traced, an Assert op (raising
        InvalidArgumentError with the same text, the entry counted in the flattened
        batch). ``distribution_params`` (what exports trace) has no such op: runtimes
        check the mask the bundle declares themselves.
        """
        splitter = self.observation_and_action_constraint_splitter
        if splitter is None or _PARAMS_ONLY.get():
            return
        _, mask = splitter(time_step.observation)
        mask = tf.convert_to_tensor(mask)
        batch = tf.shape(time_step.step_type)[0]
        allowed = tf.reduce_any(tf.not_equal(mask, tf.zeros([], mask.dtype)), axis=-1)
        allowed = tf.reduce_all(tf.reshape(allowed, [batch, -1]), axis=-1)
        observation_spec = self._time_step_spec.observation
        if tf.executing_eagerly():
            outer = tuple(np.shape(raw_step_type)) if raw_step_type is not None else (None,)
            if None in outer or int(np.prod(outer)) != int(batch):
                outer = (int(batch),)
            action_masks.check_rows(
                allowed.numpy()[:, None],
                outer,
                lambda: action_masks.mask_label(splitter, observation_spec),
            )
            return
        label = action_masks.mask_label(splitter, observation_spec)
        row = tf.argmin(tf.cast(allowed, tf.int32), output_type=tf.int32)
        message = tf.strings.join(
            [f"{label}[", tf.strings.as_string(row), f"]: {NoAllowedActionError.problem}"]
        )
        tf.debugging.Assert(tf.reduce_all(allowed), [message], name="check_action_mask")

    def _draw_seed(self) -> tf.Tensor:
        return self._rng.uniform_full_int([2], tf.int32)

    def _with_log_probability(self, info: Any, log_probs: Any) -> Any:
        """``info`` plus ``log_probability`` when this policy emits it (for ``_action``)."""
        return _info_with(info, log_probs) if self._emit_log_probability else info

    # --- input preparation ------------------------------------------------------------------

    def _prepare(self, time_step: Any, policy_state: Any):
        """Validated inputs with exactly one batch dim, and a function restoring the caller's."""
        if time_step is None:
            raise StructureError("time_step", "a TimeStep (TF policies need one)", "None")
        if self._validate_args:
            time_step, outer = _convert_nest(time_step, self._time_step_spec, "", None)
        else:
            time_step = nest.map_structure(tf.convert_to_tensor, time_step)
            outer = time_step.step_type.shape
        if self.is_stateful:
            if policy_state is None or not nest.flatten(policy_state):
                raise StructureError(
                    "policy_state",
                    f"a state like {nest.structure_repr(self._policy_state_spec)} "
                    "(from get_initial_state(batch_size))",
                    "no state",
                )
            if self._validate_args:
                policy_state, _ = _convert_nest(
                    policy_state, self._policy_state_spec, "policy_state", outer
                )
            else:
                policy_state = nest.pack_sequence_as(
                    self._policy_state_spec,
                    [tf.convert_to_tensor(v) for v in nest.flatten(policy_state)],
                )
        else:
            policy_state = ()
        if outer.rank is None:
            raise SpecMismatchError("step_type", "a tensor of known rank", "unknown rank")
        return _batch_to_one_dim(time_step, policy_state, outer, self._time_step_spec)


def _broadcast_distribution(distribution: Any, spec: Any, batch_size: tf.Tensor) -> Any:
    """A distribution without the batch dim (its batch and event shapes together shaped
    like the spec, e.g. a fixed one), broadcast over the batch as TF-Agents allows."""
    event, batch = distribution.event_shape, distribution.batch_shape
    if event.rank is None or batch.rank is None:
        return distribution
    if not _without_batch_dim(batch.concatenate(event), spec.shape):
        return distribution
    outer = spec.shape[: spec.shape.rank - event.rank] if event.rank <= spec.shape.rank else None
    if outer is None:
        return distribution
    shape = tf.concat([[batch_size], tf.constant(outer.as_list(), tf.int32)], 0)
    return tfd.BatchBroadcast(distribution, with_shape=shape)


def _specs_or_empty(spec: Any) -> Any:
    if spec is None or not nest.flatten(spec):
        return ()
    return tensor_spec.from_spec(spec)


def _with_log_probability_spec(info_spec: Any, action_spec: Any) -> Any:
    """The info spec of a policy that emits log-probabilities, as TF-Agents makes it: a
    ``PolicyInfo`` when the policy has no info of its own, else the dict or namedtuple
    with its ``log_probability`` entry set."""
    log_prob = nest.map_structure(
        lambda _: tf.TensorSpec((), tf.float32, name=LOG_PROBABILITY), action_spec
    )
    if not nest.flatten(info_spec):
        return PolicyInfo(log_probability=log_prob)
    if not isinstance(info_spec, dict) and LOG_PROBABILITY not in getattr(info_spec, "_fields", ()):
        raise StructureError(
            "info_spec",
            "a dict or a namedtuple with a log_probability field (to hold the "
            "log-probabilities), or ()",
            nest.structure_repr(info_spec),
        )
    return set_log_probability(info_spec, log_prob)


def _info_with(info: Any, log_probs: Any) -> Any:
    if not isinstance(info, dict) and not nest.flatten(info):
        return PolicyInfo(log_probability=log_probs)
    return set_log_probability(info, log_probs)


def without_log_probability(info_spec: Any) -> Any:
    """An info spec without its ``log_probability`` entry (for wrappers)."""
    if isinstance(info_spec, PolicyInfo):
        return ()
    if isinstance(info_spec, dict) and LOG_PROBABILITY in info_spec:
        rest = {k: v for k, v in info_spec.items() if k != LOG_PROBABILITY}
        return rest or ()
    return info_spec


# --- batch dims -------------------------------------------------------------------------


def _batch_to_one_dim(time_step: Any, policy_state: Any, outer: tf.TensorShape, spec: Any):
    """Brings every input to one batch dim; returns the inputs and a restore function."""
    rank = outer.rank
    if rank == 1:
        return time_step, policy_state, _restore_identity
    if rank == 0:
        expand = lambda t: tf.expand_dims(t, 0)  # noqa: E731
        return (
            nest.map_structure(expand, time_step),
            nest.map_structure(expand, policy_state),
            _restore_unbatched,
        )
    outer_shape = tf.shape(time_step.step_type)

    def flat(t: tf.Tensor) -> tf.Tensor:
        return tf.reshape(t, tf.concat([[-1], tf.shape(t)[rank:]], 0))

    def restore(step: PolicyStep, distributions: bool = False, params: bool = False):
        def unflat(t: tf.Tensor) -> tf.Tensor:
            return tf.reshape(t, tf.concat([outer_shape, tf.shape(t)[1:]], 0))

        return _map_step(
            step, unflat, lambda d: tfd.BatchReshape(d, outer_shape), distributions, params
        )

    return nest.map_structure(flat, time_step), nest.map_structure(flat, policy_state), restore


def _restore_identity(step: PolicyStep, distributions: bool = False, params: bool = False):
    del distributions, params
    return step


def _restore_unbatched(step: PolicyStep, distributions: bool = False, params: bool = False):
    return _map_step(step, lambda t: t[0], lambda d: d[0], distributions, params)


def _map_step(step, tensor_fn, distribution_fn, distributions: bool, params: bool) -> PolicyStep:
    if distributions:
        action = nest.map_structure(distribution_fn, step.action)
    elif params:
        action = families.map_params(tensor_fn, step.action)
    else:
        action = nest.map_structure(tensor_fn, step.action)
    return PolicyStep(
        action, nest.map_structure(tensor_fn, step.state), nest.map_structure(tensor_fn, step.info)
    )


def numpy_nest(value: Any) -> Any:
    """Numpy arrays for a nest of tensors."""
    return nest.map_structure(lambda t: t.numpy() if hasattr(t, "numpy") else np.asarray(t), value)


def strip_log_probability(info: Any) -> Any:
    """Info values without a ``log_probability`` entry (wrappers emit their own)."""
    if isinstance(info, PolicyInfo):
        return ()
    if isinstance(info, dict) and LOG_PROBABILITY in info:
        rest = {k: v for k, v in info.items() if k != LOG_PROBABILITY}
        return rest or ()
    return info
