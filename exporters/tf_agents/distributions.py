"""TF-Agents' own distribution types, registered so TF 2.21 loads its SavedModels without it.

A policy whose ``distribution`` returns one of TF-Agents' distributions is saved with a
TypeSpec named after TF-Agents' module (e.g.
``tf_agents.distributions.utils.SquashToSpecNormal_ACTTypeSpec``); TensorFlow refuses to
load it unless a class registered that name. ``register()`` defines compatible classes
under TF-Agents' names (same constructor arguments, same semantics) and registers their
TypeSpecs with TFP's ``auto_composite_tensor``, as TF-Agents' own classes do:

* ``SquashToSpecNormal`` (``tf_agents.distributions.utils``): SAC's
  ``TanhNormalProjectionNetwork``: ``y = mean + magnitude * tanh(x)``, ``x`` the input
  Normal or MultivariateNormalDiag, ``mean``/``magnitude`` the centre and half-width of
  the action spec's bounds;
* ``ShiftedCategorical`` (``tf_agents.distributions.shifted_categorical``): a
  Categorical whose values are ``index + shift`` (Q and bandit policies whose action
  minimum is not 0);
* ``MaskedCategorical`` (``tf_agents.distributions.masked``): a Categorical whose
  masked logits are replaced by ``neg_inf``.

Registration happens on the first call (never at import) and is idempotent; the
classes are returned by name. ``TYPE_SPEC_NAMES`` lists the names covered, for error
messages.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import tensorflow as tf

__all__ = ["TYPE_SPEC_NAMES", "register", "tf_agents_class"]

SQUASH_TO_SPEC_NORMAL = "SquashToSpecNormal"
SHIFTED_CATEGORICAL = "ShiftedCategorical"
MASKED_CATEGORICAL = "MaskedCategorical"

_MODULES = {
    SQUASH_TO_SPEC_NORMAL: "tf_agents.distributions.utils",
    SHIFTED_CATEGORICAL: "tf_agents.distributions.shifted_categorical",
    MASKED_CATEGORICAL: "tf_agents.distributions.masked",
}

#: The TypeSpec names ``register()`` makes loadable.
TYPE_SPEC_NAMES = tuple(f"{m}.{c}_ACTTypeSpec" for c, m in _MODULES.items())


def tf_agents_class(value: Any) -> str | None:
    """``SquashToSpecNormal`` etc. for an instance of a registered class, else None."""
    for name, module in _MODULES.items():
        cls = type(value)
        if cls.__name__ == name and cls.__module__ == module:
            return name
    return None


def _registered(type_spec_name: str) -> bool:
    from tensorflow.python.framework import type_spec_registry

    try:
        type_spec_registry.lookup(type_spec_name)
    except ValueError:
        return False
    return True


@functools.cache
def register() -> dict[str, type]:
    """Defines and registers the TF-Agents-compatible classes (once); returns them by name.

    A name TF-Agents itself already registered (it is imported in this process) is left
    to TF-Agents' class, which has the same attributes.
    """
    import tensorflow_probability as tfp

    factories = {
        SQUASH_TO_SPEC_NORMAL: _squash_to_spec_normal,
        SHIFTED_CATEGORICAL: _shifted_categorical,
        MASKED_CATEGORICAL: _masked_categorical,
    }
    return {
        name: factory(tfp)
        for name, factory in factories.items()
        if not _registered(f"{_MODULES[name]}.{name}_ACTTypeSpec")
    }


def _squash_to_spec_normal(tfp) -> type:
    # One stable tanh for this class and the tanh_normal family's TanhNormal.
    from toolkit.distributions.tanh_normal import StableTanh

    tfd = tfp.distributions
    tfb = tfp.bijectors

    class SquashToSpecNormal(tfd.AutoCompositeTensorDistribution):
        """TF-Agents' SquashToSpecNormal: a Normal squashed by tanh into the spec's bounds.

        ``mode`` and ``mean`` are ``mean + magnitude * tanh(mode of x)``; ``stddev`` is
        ``magnitude * tanh(stddev of x)`` (TF-Agents' definitions); sampling and
        log-probabilities are the transformed distribution's; there is no entropy.
        """

        __module__ = _MODULES[SQUASH_TO_SPEC_NORMAL]

        def __init__(self, distribution, spec, validate_args=False, name="SquashToSpecNormal"):
            parameters = dict(locals())
            if not isinstance(distribution, (tfd.Normal, tfd.MultivariateNormalDiag)):
                raise ValueError(
                    f"SquashToSpecNormal: expected a Normal or MultivariateNormalDiag input, "
                    f"got {type(distribution).__name__}"
                )
            low = np.asarray(spec.minimum, np.float32)
            high = np.asarray(spec.maximum, np.float32)
            self.action_means = np.asarray((high + low) / 2.0, np.float32)
            self.action_magnitudes = np.asarray((high - low) / 2.0, np.float32)
            self._distribution = distribution
            self._spec = spec
            chain = tfb.Chain(
                [
                    tfb.Shift(self.action_means)(tfb.Scale(self.action_magnitudes)),
                    StableTanh(),
                ]
            )
            self._squashed = tfd.TransformedDistribution(distribution=distribution, bijector=chain)
            super().__init__(
                dtype=distribution.dtype,
                reparameterization_type=distribution.reparameterization_type,
                validate_args=validate_args,
                allow_nan_stats=distribution.allow_nan_stats,
                parameters=parameters,
                name=name,
            )

        @classmethod
        def _parameter_properties(cls, dtype, num_classes=None):
            return {"distribution": tfp.util.BatchedComponentProperties()}

        @property
        def input_distribution(self):
            return self._distribution

        @property
        def spec(self):
            return self._spec

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
            return self.action_magnitudes * tf.tanh(self._distribution.mode()) + self.action_means

        def _mean(self):
            return self._mode()

        def _stddev(self):
            return self.action_magnitudes * tf.tanh(self._distribution.stddev())

    return SquashToSpecNormal


def _shifted_categorical(tfp) -> type:
    tfd = tfp.distributions

    class ShiftedCategorical(tfd.Categorical):
        """TF-Agents' ShiftedCategorical: values ``index + shift``."""

        __module__ = _MODULES[SHIFTED_CATEGORICAL]

        def __init__(
            self,
            logits=None,
            probs=None,
            dtype=tf.int32,
            force_probs_to_zero_outside_support=False,
            validate_args=False,
            allow_nan_stats=True,
            shift=None,
            name="ShiftedCategorical",
        ):
            if shift is None:
                raise ValueError("ShiftedCategorical: expected a shift value, got None")
            self._shift = shift
            super().__init__(
                logits=logits,
                probs=probs,
                dtype=dtype,
                force_probs_to_zero_outside_support=force_probs_to_zero_outside_support,
                validate_args=validate_args,
                allow_nan_stats=allow_nan_stats,
                name=name,
            )

        @classmethod
        def _parameter_properties(cls, dtype, num_classes=None):
            return tfd.Categorical._parameter_properties(dtype, num_classes)

        @property
        def shift(self):
            return self._shift

        @property
        def parameters(self):
            params = super().parameters
            params["shift"] = self._shift
            return params

        def _log_prob(self, x):
            return super()._log_prob(x - tf.cast(self._shift, x.dtype))

        def _sample_n(self, n, seed=None):
            return super()._sample_n(n, seed) + tf.cast(self._shift, self.dtype)

        def _mode(self):
            return super()._mode() + tf.cast(self._shift, self.dtype)

    return ShiftedCategorical


def _masked_categorical(tfp) -> type:
    tfd = tfp.distributions

    class MaskedCategorical(tfd.Categorical):
        """TF-Agents' MaskedCategorical: logits outside ``mask`` become ``neg_inf``."""

        __module__ = _MODULES[MASKED_CATEGORICAL]

        def __init__(
            self,
            logits,
            mask,
            probs=None,
            dtype=tf.int32,
            validate_args=False,
            allow_nan_stats=True,
            neg_inf=-1e10,
            name="MaskedCategorical",
        ):
            parameters = dict(locals())
            logits = tf.convert_to_tensor(logits)
            self._mask = tf.cast(tf.convert_to_tensor(mask), tf.bool)
            self._neg_inf = neg_inf
            fill = logits.dtype.min if neg_inf is None else neg_inf
            masked = tf.where(
                self._mask, logits, tf.cast(tf.fill(tf.shape(logits), fill), logits.dtype)
            )
            super().__init__(
                logits=masked,
                dtype=dtype,
                validate_args=validate_args,
                allow_nan_stats=allow_nan_stats,
                name=name,
            )
            self._parameters = parameters

        @classmethod
        def _parameter_properties(cls, dtype, num_classes=None):
            return {
                "logits": tfp.util.ParameterProperties(event_ndims=1),
                "mask": tfp.util.ParameterProperties(event_ndims=1),
            }

        @property
        def mask(self):
            return self._mask

    return MaskedCategorical
