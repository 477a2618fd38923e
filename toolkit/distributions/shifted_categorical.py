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

    Args:
      logits: ``[..., n]`` unnormalized log-probabilities.
      shift: the value of category 0.
      dtype: the dtype of samples (an integer or bool dtype).
    """

    def __init__(
        self,
        logits: Any,
        shift: int = 0,
        dtype: Any = tf.int32,
        validate_args: bool = False,
        allow_nan_stats: bool = True,
        name: str = "ShiftedCategorical",
    ):
        parameters = dict(locals())
        with tf.name_scope(name) as name:
            self._logits = tf.convert_to_tensor(logits, dtype_hint=tf.float32, name="logits")
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
        return {"logits": tfp.util.ParameterProperties(event_ndims=1)}

    @property
    def logits(self) -> tf.Tensor:
        return self._logits

    @property
    def shift(self) -> int:
        return self._shift

    @property
    def num_categories(self) -> Any:
        static = self._logits.shape[-1]
        return static if static is not None else tf.shape(self._logits)[-1]

    def logits_parameter(self, name: str | None = None) -> tf.Tensor:
        return tf.identity(self._logits, name=name or "logits_parameter")

    def probs_parameter(self, name: str | None = None) -> tf.Tensor:
        return tf.nn.softmax(self._logits, name=name or "probs_parameter")

    def _event_shape(self):
        return tf.TensorShape([])

    def _event_shape_tensor(self):
        return tf.constant([], tf.int32)

    def _categorical(self) -> tfd.Categorical:
        return tfd.Categorical(logits=self._logits, dtype=tf.int64)

    def _from_index(self, index: tf.Tensor) -> tf.Tensor:
        return tf.cast(index + self._shift, self.dtype)

    def _sample_n(self, n, seed=None):
        return self._from_index(self._categorical().sample(n, seed=seed))

    def _log_prob(self, x):
        index = tf.cast(x, tf.int64) - self._shift
        n = tf.shape(self._logits, out_type=tf.int64)[-1]
        inside = (index >= 0) & (index < n)
        log_prob = self._categorical().log_prob(tf.where(inside, index, tf.zeros_like(index)))
        return tf.where(inside, log_prob, tf.constant(-np.inf, log_prob.dtype))

    def _mode(self):
        return self._from_index(tf.argmax(self._logits, axis=-1))

    def _entropy(self):
        return self._categorical().entropy()

    def _mean(self):
        values = tf.cast(tf.range(tf.shape(self._logits)[-1]) + self._shift, self._logits.dtype)
        return tf.reduce_sum(self.probs_parameter() * values, axis=-1)
