"""TanhNormal: a diagonal Normal squashed by tanh into an action spec's bounds.

The TF side of the ``tanh_normal`` family (``toolkit.distribution_families``), with
TF-Agents' ``SquashToSpecNormal`` semantics: ``y = c + m * tanh(x)``, ``x ~ loc +
scale * N(0, 1)``, where ``c`` and ``m`` are the centre and half-width of ``[low, high]``.
``mode`` and ``mean`` are ``c + m * tanh(loc)`` and ``stddev`` is ``m * tanh(scale)``
(TF-Agents' definitions, which the runtime's ``runtimes.distributions.TanhNormal``
shares); there is no closed-form entropy. Samples are reparameterized, and TFP's
bijector cache gives ``log_prob`` of a sample from its pre-tanh value (no ``atanh`` of
a value near the bounds), which SAC's actor loss relies on.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

tfb = tfp.bijectors
tfd = tfp.distributions

__all__ = ["TANH_INVERSE_CLIP", "StableTanh", "TanhNormal"]

#: TF-Agents' stable tanh clips ``|u| <= 1`` to this before ``atanh``.
TANH_INVERSE_CLIP = 0.99999997


class StableTanh(tfb.Tanh):
    """tanh whose inverse clips values within [-1, 1] first (TF-Agents'
    ``tanh_bijector_stable.Tanh``; its SquashToSpecNormal uses it too)."""

    def _inverse(self, y):
        y = tf.where(
            tf.less_equal(tf.abs(y), 1.0),
            tf.clip_by_value(y, -TANH_INVERSE_CLIP, TANH_INVERSE_CLIP),
            y,
        )
        return tf.atanh(y)


class TanhNormal(tfd.Distribution):
    """``c + m * tanh(Normal(loc, scale))`` per element, events of ``event_ndims`` dims.

    Args:
      loc, scale: the pre-tanh Normal's parameters, ``[B] + event shape``.
      low, high: the bounds (numpy, broadcastable to the event shape).
      event_ndims: how many trailing dims form one event (the action spec's rank).
    """

    def __init__(
        self,
        loc: Any,
        scale: Any,
        low: Any,
        high: Any,
        event_ndims: int = 0,
        validate_args: bool = False,
        allow_nan_stats: bool = True,
        name: str = "TanhNormal",
    ):
        parameters = dict(locals())
        with tf.name_scope(name) as name:
            self._loc = tf.convert_to_tensor(loc, dtype_hint=tf.float32, name="loc")
            self._scale = tf.convert_to_tensor(scale, dtype=self._loc.dtype, name="scale")
            dtype = self._loc.dtype.as_numpy_dtype
            self._low = np.asarray(low, np.float32).astype(dtype)
            self._high = np.asarray(high, np.float32).astype(dtype)
            # float32 as TF-Agents computes them (spec_means_and_magnitudes).
            self._center = ((self._high + self._low) / 2.0).astype(np.float32).astype(dtype)
            self._magnitude = ((self._high - self._low) / 2.0).astype(np.float32).astype(dtype)
            self._event_ndims = int(event_ndims)
            normal = tfd.Normal(self._loc, self._scale)
            if self._event_ndims:
                normal = tfd.Independent(normal, reinterpreted_batch_ndims=self._event_ndims)
            bijector = tfb.Chain(
                [tfb.Shift(self._center)(tfb.Scale(self._magnitude)), StableTanh()]
            )
            self._squashed = tfd.TransformedDistribution(normal, bijector)
            super().__init__(
                dtype=self._loc.dtype,
                reparameterization_type=tfd.FULLY_REPARAMETERIZED,
                validate_args=validate_args,
                allow_nan_stats=allow_nan_stats,
                parameters=parameters,
                name=name,
            )

    @classmethod
    def _parameter_properties(cls, dtype, num_classes=None):
        del dtype, num_classes
        return {
            "loc": tfp.util.ParameterProperties(),
            "scale": tfp.util.ParameterProperties(),
        }

    @property
    def loc(self) -> tf.Tensor:
        return self._loc

    @property
    def scale(self) -> tf.Tensor:
        return self._scale

    @property
    def low(self) -> np.ndarray:
        return self._low

    @property
    def high(self) -> np.ndarray:
        return self._high

    def _event_shape(self):
        return self._squashed.event_shape

    def _event_shape_tensor(self):
        return self._squashed.event_shape_tensor()

    def _batch_shape(self):
        return self._squashed.batch_shape

    def _batch_shape_tensor(self):
        return self._squashed.batch_shape_tensor()

    def _sample_n(self, n, seed=None):
        return self._squashed.sample(n, seed=seed)

    def _log_prob(self, value):
        return self._squashed.log_prob(value)

    def _mode(self):
        return self._center + self._magnitude * tf.tanh(self._loc)

    def _mean(self):
        return self._mode()

    def _stddev(self):
        return self._magnitude * tf.tanh(self._scale)
