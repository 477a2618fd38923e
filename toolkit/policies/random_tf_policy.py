"""RandomTFPolicy: uniform random actions within the action spec, in TensorFlow."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from toolkit import nest
from toolkit.distributions import utils as dist_utils
from toolkit.distributions.shifted_categorical import ShiftedCategorical
from toolkit.errors import SpecError, SpecMismatchError, UnsupportedError
from toolkit.policies.seeds import split_seed
from toolkit.policies.tf_policy import TFPolicy
from toolkit.specs import tensor_spec
from toolkit.specs.array_spec import FLOAT_SAMPLE_LIMIT
from toolkit.trajectories.policy_step import PolicyStep

tfd = tfp.distributions

__all__ = ["MAX_DISCRETE_VALUES", "RandomTFPolicy"]

#: Integer actions are drawn from a categorical: ranges beyond this are refused.
MAX_DISCRETE_VALUES = 1 << 16


class RandomTFPolicy(TFPolicy):
    """Samples actions uniformly from the action spec; ignores observations.

    Integer (and bool) leaves are uniform over their inclusive bounds, as a categorical
    over ``minimum .. maximum``; integer leaves without bounds are uniform over their
    dtype's whole range, as in TF-Agents (their ``distribution()`` is unsupported: no
    distribution covers the range); bounded float leaves are uniform within their bounds
    (narrowed to +-``FLOAT_SAMPLE_LIMIT`` like array specs); unbounded float leaves are
    standard normal. The policy state, if any, passes through; info is zeros.

    Args:
      time_step_spec: the TimeStep spec.
      action_spec: a nest of specs.
      policy_state_spec: a state spec to pass through (for wrappers of stateful policies).
      info_spec: an info spec, filled with zeros.
      observation_and_action_constraint_splitter: for a single discrete action with one
        element, ``observation -> (observation, mask)`` with ``mask[..., i]`` 1 for the
        allowed actions ``minimum + i``; actions are uniform among the allowed ones.
      emit_log_probability: add ``info.log_probability``.
      stationary_mask: for a single bounded integer action, one 0/1 entry per action
        ``minimum + i``: actions are uniform among the allowed ones (and those the
        splitter's mask allows, when both are given), as in TF-Agents.
      automatic_state_reset / validate_args: as TFPolicy.
      seed: seeds the policy's generator, so a seeded policy replays its actions.
      name: module name.
    """

    def __init__(
        self,
        time_step_spec: Any,
        action_spec: Any,
        policy_state_spec: Any = (),
        info_spec: Any = (),
        observation_and_action_constraint_splitter: Callable[[Any], Any] | None = None,
        emit_log_probability: bool = False,
        automatic_state_reset: bool = True,
        validate_args: bool = True,
        *,
        stationary_mask: Any = None,
        seed: int | None = None,
        name: str | None = None,
    ):
        super().__init__(
            time_step_spec,
            action_spec,
            policy_state_spec,
            info_spec,
            clip=False,  # samples are within the bounds by construction
            emit_log_probability=emit_log_probability,
            automatic_state_reset=automatic_state_reset,
            validate_args=validate_args,
            seed=seed,
            name=name,
        )
        self._splitter = observation_and_action_constraint_splitter
        self._leaf_params = [
            _leaf_sampling(path, spec)
            for path, spec in nest.flatten_with_paths(self.action_spec, "action_spec")
        ]
        if self._splitter is not None or stationary_mask is not None:
            leaves = nest.flatten(self.action_spec)
            if (
                len(leaves) != 1
                or not tensor_spec.is_integer_or_bool(leaves[0])
                or leaves[0].shape.num_elements() != 1
                or self._leaf_params[0]["kind"] != "categorical"
            ):
                raise SpecError(
                    "an action mask needs a single bounded integer action spec with one "
                    f"element, got {self.action_spec}"
                )
        if stationary_mask is not None:
            params = self._leaf_params[0]
            allowed = np.asarray(stationary_mask).astype(bool).reshape(-1)
            if allowed.shape != (params["n"],):
                raise SpecMismatchError(
                    "stationary_mask",
                    f"{params['n']} entries (one per action)",
                    f"{allowed.size}",
                )
            params["logits"] = np.where(allowed, params["logits"], -np.inf).astype(np.float32)

    def _distribution(self, time_step: Any, policy_state: Any) -> PolicyStep:
        batch = tf.shape(time_step.step_type)[:1]
        mask = None
        if self._splitter is not None:
            _, mask = self._splitter(time_step.observation)
        distributions = []
        for (path, spec), params in zip(
            nest.flatten_with_paths(self.action_spec, "action"), self._leaf_params, strict=True
        ):
            if params["kind"] == "full_range":
                raise UnsupportedError(
                    f"{path}: RandomTFPolicy has no distribution over an integer's whole "
                    f"range ({spec}); give the spec bounds"
                )
            distributions.append(_leaf_distribution(spec, params, batch, mask))
        action = nest.pack_sequence_as(self.action_spec, distributions)
        info = tensor_spec.zero_spec_nest(self._base_info_spec, batch)
        return PolicyStep(action, policy_state, info)

    def _action(self, time_step: Any, policy_state: Any, seed: tf.Tensor) -> PolicyStep:
        if all(p["kind"] != "full_range" for p in self._leaf_params):
            return super()._action(time_step, policy_state, seed)
        # Some leaves span an integer dtype's whole range: drawn directly, the others from
        # their distributions.
        batch = tf.shape(time_step.step_type)[:1]
        mask = None
        if self._splitter is not None:
            _, mask = self._splitter(time_step.observation)
        specs = nest.flatten(self.action_spec)
        seeds = split_seed(seed, len(specs))
        actions, log_probs = [], []
        for spec, params, leaf_seed in zip(specs, self._leaf_params, seeds, strict=True):
            if params["kind"] == "full_range":
                shape = tf.concat([batch, tf.constant(spec.shape.as_list(), tf.int32)], 0)
                action = tf.random.stateless_uniform(
                    shape, leaf_seed, minval=None, maxval=None, dtype=spec.dtype
                )
                span = float(spec.dtype.max) - float(spec.dtype.min) + 1.0
                log_prob = tf.fill(batch, -np.log(span) * spec.shape.num_elements())
            else:
                distribution = _leaf_distribution(spec, params, batch, mask)
                action = distribution.sample(seed=leaf_seed)
                log_prob = distribution.log_prob(action)
            actions.append(action)
            log_probs.append(tf.cast(log_prob, tf.float32))
        info = tensor_spec.zero_spec_nest(self._base_info_spec, batch)
        info = self._with_log_probability(info, nest.pack_sequence_as(self.action_spec, log_probs))
        return PolicyStep(nest.pack_sequence_as(self.action_spec, actions), policy_state, info)


def _leaf_sampling(path: str, spec: Any) -> dict[str, Any]:
    """Static sampling parameters of one action spec leaf."""
    shape = tuple(spec.shape.as_list())
    if tensor_spec.is_integer_or_bool(spec):
        if spec.dtype.is_bool:
            low, high = np.zeros(shape, np.int64), np.ones(shape, np.int64)
        else:
            if not tensor_spec.is_bounded(spec):
                return {"kind": "full_range"}
            low = np.broadcast_to(np.asarray(spec.minimum, np.int64), shape)
            high = np.broadcast_to(np.asarray(spec.maximum, np.int64), shape)
        shift = int(low.min()) if low.size else 0
        n = int(high.max()) - shift + 1 if high.size else 1
        if n > MAX_DISCRETE_VALUES:
            raise UnsupportedError(
                f"{path}: RandomTFPolicy draws integer actions from a categorical of at most "
                f"{MAX_DISCRETE_VALUES} values, got a range of {n} values"
            )
        # Elements with narrower ranges than the leaf's widest get -inf outside theirs.
        index = np.arange(n).reshape((1,) * len(shape) + (n,))
        inside = (index >= (low - shift)[..., None]) & (index <= (high - shift)[..., None])
        logits = np.where(inside, 0.0, -np.inf).astype(np.float32)
        return {"kind": "categorical", "logits": logits, "shift": shift, "n": n}
    if tensor_spec.is_bounded(spec):
        low = np.broadcast_to(np.asarray(spec.minimum, np.float64), shape)
        high = np.broadcast_to(np.asarray(spec.maximum, np.float64), shape)
        low_c = np.clip(low, -FLOAT_SAMPLE_LIMIT, FLOAT_SAMPLE_LIMIT)
        high_c = np.clip(high, -FLOAT_SAMPLE_LIMIT, FLOAT_SAMPLE_LIMIT)
        # A range wholly beyond the limit keeps its true bound (as array specs do).
        low_c = np.where(low_c > high_c, low, low_c)
        high_c = np.where(low_c > high_c, high, high_c)
        dtype = spec.dtype.as_numpy_dtype
        return {"kind": "uniform", "low": low_c.astype(dtype), "high": high_c.astype(dtype)}
    return {"kind": "normal"}


def _leaf_distribution(spec: Any, params: dict[str, Any], batch: tf.Tensor, mask: Any):
    rank = spec.shape.rank
    shape = tf.concat([batch, tf.constant(spec.shape.as_list(), tf.int32)], 0)
    if params["kind"] == "categorical":
        n = params["n"]
        logits = tf.broadcast_to(tf.constant(params["logits"]), tf.concat([shape, [n]], 0))
        if mask is not None:
            mask = tf.cast(mask, tf.bool)
            if mask.shape.rank is not None and mask.shape[-1] not in (None, n):
                raise SpecMismatchError(
                    "observation mask", f"{n} entries per batch entry", f"{mask.shape[-1]}"
                )
            mask = tf.reshape(mask, tf.shape(logits))
            logits = tf.where(mask, logits, tf.constant(-np.inf, logits.dtype))
        return dist_utils.independent(
            ShiftedCategorical(logits, shift=params["shift"], dtype=spec.dtype), rank
        )
    dtype = spec.dtype
    if params["kind"] == "uniform":
        low = tf.broadcast_to(tf.constant(params["low"], dtype), shape)
        high = tf.broadcast_to(tf.constant(params["high"], dtype), shape)
        return dist_utils.independent(tfd.Uniform(low, high), rank)
    return dist_utils.independent(tfd.Normal(tf.zeros(shape, dtype), tf.ones(shape, dtype)), rank)
