"""ShiftedCategorical: a TFP categorical over ``shift .. shift + n - 1`` (TF-Agents' name)."""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

tfd = tfp.distributions

__all__ = ["ShiftedCategorical"]


class ShiftedCategorical(tfd.Distribution):
    """A categorical whose values are ``shift .. shift + n - 1`` in a given dtype.

    TFP's Categorical yields ``0 .. n - 1``; action specs may start anywhere (the TF-Agents
    policies tutorial's ``minimum=-1, maximum=1``). ``sample``/``mode`` add ``shift``;
    ``log_prob`` subtracts it and gives ``-inf`` outside the range. ``shift`` is static (a
    Python int), so it is a constant of exported graphs and manifests.

    Args (in TF-Agents' order):
      logits: ``[..., n]`` unnormalized log-probabilities; or
      probs: ``[..., n]`` probabilities instead (as ``tfd.Categorical(probs=)``).
      dtype: the dtype of samples (an integer or bool dtype).
      shift: the value of category 0.
    """

    def __init__(
        self,
        logits: Any = None,
        probs: Any = None,
        dtype: Any = tf.int32,
        validate_args: bool = False,
        allow_nan_stats: bool = True,
        shift: int = 0,
        name: str = "ShiftedCategorical",
    ):
        parameters = dict(locals())
        if (logits is None) == (probs is None):
            raise ValueError(
                "ShiftedCategorical: expected exactly one of logits and probs, got "
                + ("both" if logits is not None else "neither")
            )
        with tf.name_scope(name) as name:
            # As given: a Categorical of probs computes exactly what TF-Agents' does.
            self._probs = (
                None
                if probs is None
                else tf.convert_to_tensor(probs, dtype_hint=tf.float32, name="probs")
            )
            self._logits = (
                None
                if logits is None
                else tf.convert_to_tensor(logits, dtype_hint=tf.float32, name="logits")
            )
            self._shift = int(shift)
            super().__init__(
                dtype=tf.as_dtype(dtype),
                reparameterization_type=tfd.NOT_REPARAMETERIZED,
                validate_args=validate_args,
                allow_nan_stats=allow_nan_stats,
                parameters=parameters,
                name=name,
            )

    @classmethod
    def _parameter_properties(cls, dtype, num_classes=None):
        del dtype, num_classes
        return {
            "logits": tfp.util.ParameterProperties(event_ndims=1),
            "probs": tfp.util.ParameterProperties(event_ndims=1),
        }

    @property
    def logits(self) -> tf.Tensor | None:
        """The logits it was given (None when it was given probs)."""
        return self._logits

    @property
    def probs(self) -> tf.Tensor | None:
        """The probabilities it was given (None when it was given logits)."""
        return self._probs

    def _given(self) -> tf.Tensor:
        return self._logits if self._logits is not None else self._probs

    @property
    def shift(self) -> int:
        return self._shift

    @property
    def num_categories(self) -> Any:
        static = self._given().shape[-1]
        return static if static is not None else tf.shape(self._given())[-1]

    def logits_parameter(self, name: str | None = None) -> tf.Tensor:
        return self._categorical().logits_parameter(name=name or "logits_parameter")

    def probs_parameter(self, name: str | None = None) -> tf.Tensor:
        return self._categorical().probs_parameter(name=name or "probs_parameter")

    def _event_shape(self):
        return tf.TensorShape([])

    def _event_shape_tensor(self):
        return tf.constant([], tf.int32)

    def _categorical(self) -> tfd.Categorical:
        return tfd.Categorical(logits=self._logits, probs=self._probs, dtype=tf.int64)

    def _from_index(self, index: tf.Tensor) -> tf.Tensor:
        return tf.cast(index + self._shift, self.dtype)

    def _sample_n(self, n, seed=None):
        return self._from_index(self._categorical().sample(n, seed=seed))

    def _log_prob(self, x):
        index = tf.cast(x, tf.int64) - self._shift
        n = tf.shape(self._given(), out_type=tf.int64)[-1]
        inside = (index >= 0) & (index < n)
        log_prob = self._categorical().log_prob(tf.where(inside, index, tf.zeros_like(index)))
        return tf.where(inside, log_prob, tf.constant(-np.inf, log_prob.dtype))

    def _cdf(self, x):
        # P(X <= x): the Categorical's below its first and above its last category too.
        return self._categorical().cdf(tf.cast(x, tf.int64) - self._shift)

    def _mode(self):
        return self._from_index(tf.argmax(self._given(), axis=-1))

    def _entropy(self):
        return self._categorical().entropy()

    def _mean(self):
        given = self._given()
        values = tf.cast(tf.range(tf.shape(given)[-1]) + self._shift, given.dtype)
        return tf.reduce_sum(self.probs_parameter() * values, axis=-1)
