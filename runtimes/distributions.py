"""Light numpy distributions for exported policies (TF-free).

Exported graphs compute distribution *parameters*; these classes sample from them with
a seedable numpy Generator and implement ``mode``, ``log_prob``, ``entropy``, ``mean``
and ``stddev`` as TFP does, so the runtime matches the TF policy without TensorFlow.
Events have the action spec's shape: log-probabilities and entropies sum over it
(TFP's ``Independent``), leaving one value per batch entry.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from toolkit.errors import SpecMismatchError, UnsupportedError

__all__ = [
    "Categorical",
    "Deterministic",
    "Distribution",
    "Normal",
    "TanhNormal",
    "Uniform",
    "make_distribution",
    "tanh_centre_magnitude",
]

_LOG_2PI = float(np.log(2.0 * np.pi))


def _rng(seed: int | np.random.Generator | None) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


class Distribution:
    """Base: ``event_ndims`` trailing dims of a value form one event."""

    family = ""

    def __init__(self, event_ndims: int, dtype: Any):
        self.event_ndims = int(event_ndims)
        self.dtype = np.dtype(dtype)

    def _sum_event(self, values: np.ndarray) -> np.ndarray:
        if self.event_ndims == 0:
            return values
        return values.sum(axis=tuple(range(-self.event_ndims, 0)))

    def sample(self, seed: int | np.random.Generator | None = None) -> np.ndarray:
        raise NotImplementedError

    def mode(self) -> np.ndarray:
        raise NotImplementedError

    def log_prob(self, value: Any) -> np.ndarray:
        raise NotImplementedError

    def prob(self, value: Any) -> np.ndarray:
        return np.exp(self.log_prob(value))

    def entropy(self) -> np.ndarray:
        raise NotImplementedError

    def mean(self) -> np.ndarray:
        raise NotImplementedError

    def stddev(self) -> np.ndarray:
        raise NotImplementedError

    def parameters(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def __repr__(self) -> str:
        shapes = {k: v.shape for k, v in self.parameters().items()}
        return f"{type(self).__name__}({shapes}, dtype={self.dtype.name})"


class Deterministic(Distribution):
    """All mass at ``loc``."""

    family = "deterministic"

    def __init__(self, loc: Any, event_ndims: int = 0, dtype: Any = None):
        loc = np.asarray(loc)
        super().__init__(event_ndims, loc.dtype if dtype is None else dtype)
        self.loc = loc.astype(self.dtype)

    def sample(self, seed=None):
        del seed
        return self.loc.copy()

    def mode(self):
        return self.loc.copy()

    def mean(self):
        return self.loc.astype(np.float64 if self.dtype.kind in "iub" else self.dtype)

    def stddev(self):
        return np.zeros(self.loc.shape, np.float32 if self.dtype.kind in "iub" else self.dtype)

    def log_prob(self, value):
        equal = np.asarray(value) == self.loc
        return self._sum_event(np.where(equal, 0.0, -np.inf)).astype(np.float32)

    def entropy(self):
        return self._sum_event(np.zeros(self.loc.shape, np.float32))

    def parameters(self):
        return {"loc": self.loc}


class Categorical(Distribution):
    """Categorical over ``logits[..., n]``; values are ``shift + index`` in ``dtype``.

    ``shift`` is the action spec's minimum, so a spec of [-1, 1] yields -1, 0, 1.
    """

    family = "categorical"

    def __init__(self, logits: Any, shift: int = 0, event_ndims: int = 0, dtype: Any = np.int64):
        super().__init__(event_ndims, dtype)
        self.logits = np.asarray(logits)
        if self.logits.ndim < 1:
            raise SpecMismatchError("logits", "at least 1 dim (categories last)", "a scalar")
        self.shift = int(shift)

    @property
    def num_categories(self) -> int:
        return self.logits.shape[-1]

    def _log_probs(self) -> np.ndarray:
        logits = self.logits.astype(np.float64)
        top = logits.max(axis=-1, keepdims=True)
        return logits - top - np.log(np.exp(logits - top).sum(axis=-1, keepdims=True))

    def probs(self) -> np.ndarray:
        return np.exp(self._log_probs()).astype(np.float32)

    def sample(self, seed=None):
        # Gumbel-max: one argmax per entry, vectorised over the batch. Both terms in
        # float64: a mixed-dtype add costs more than the rest at batch 1.
        gumbel = _rng(seed).gumbel(size=self.logits.shape)
        index = (self.logits.astype(np.float64) + gumbel).argmax(axis=-1)
        return (index + self.shift).astype(self.dtype)

    def mode(self):
        return (np.argmax(self.logits, axis=-1) + self.shift).astype(self.dtype)

    def log_prob(self, value):
        index = np.asarray(value).astype(np.int64) - self.shift
        log_probs = self._log_probs()
        valid = (index >= 0) & (index < self.num_categories)
        picked = np.take_along_axis(
            log_probs, np.clip(index, 0, self.num_categories - 1)[..., None], axis=-1
        )[..., 0]
        return self._sum_event(np.where(valid, picked, -np.inf)).astype(np.float32)

    def entropy(self):
        log_probs = self._log_probs()
        # Categories with -inf logits (masked, or outside a narrower range) add 0, not NaN.
        terms = np.exp(log_probs) * np.where(np.isneginf(log_probs), 0.0, log_probs)
        return self._sum_event(-terms.sum(axis=-1)).astype(np.float32)

    def mean(self):
        values = np.arange(self.num_categories) + self.shift
        return (np.exp(self._log_probs()) * values).sum(axis=-1).astype(np.float32)

    def stddev(self):
        values = np.arange(self.num_categories) + self.shift
        probs = np.exp(self._log_probs())
        mean = (probs * values).sum(axis=-1, keepdims=True)
        return np.sqrt((probs * (values - mean) ** 2).sum(axis=-1)).astype(np.float32)

    def parameters(self):
        return {"logits": self.logits}


class Normal(Distribution):
    """Diagonal Normal with ``loc`` and ``scale`` of the event's shape."""

    family = "normal"

    def __init__(self, loc: Any, scale: Any, event_ndims: int = 0, dtype: Any = np.float32):
        super().__init__(event_ndims, dtype)
        self.loc = np.asarray(loc)
        self.scale = np.asarray(scale)

    def sample(self, seed=None):
        noise = _rng(seed).standard_normal(np.broadcast_shapes(self.loc.shape, self.scale.shape))
        return (self.loc + self.scale * noise).astype(self.dtype)

    def mode(self):
        return np.broadcast_to(
            self.loc, np.broadcast_shapes(self.loc.shape, self.scale.shape)
        ).astype(self.dtype)

    mean = mode

    def stddev(self):
        return np.broadcast_to(
            self.scale, np.broadcast_shapes(self.loc.shape, self.scale.shape)
        ).astype(self.dtype)

    def log_prob(self, value):
        loc = self.loc.astype(np.float64)
        scale = self.scale.astype(np.float64)
        z = (np.asarray(value, np.float64) - loc) / scale
        return self._sum_event(-0.5 * z**2 - np.log(scale) - 0.5 * _LOG_2PI).astype(np.float32)

    def entropy(self):
        scale = np.broadcast_to(self.scale, np.broadcast_shapes(self.loc.shape, self.scale.shape))
        return self._sum_event(0.5 + 0.5 * _LOG_2PI + np.log(scale.astype(np.float64))).astype(
            np.float32
        )

    def parameters(self):
        return {"loc": self.loc, "scale": self.scale}


class Uniform(Distribution):
    """Uniform in ``[low, high)`` per element (TFP's density: ``1 / (high - low)`` on
    ``[low, high]``, 0 outside)."""

    family = "uniform"

    def __init__(self, low: Any, high: Any, event_ndims: int = 0, dtype: Any = np.float32):
        super().__init__(event_ndims, dtype)
        self.low = np.asarray(low)
        self.high = np.asarray(high)

    def _range(self) -> np.ndarray:
        return self.high.astype(np.float64) - self.low.astype(np.float64)

    def sample(self, seed=None):
        shape = np.broadcast_shapes(self.low.shape, self.high.shape)
        unit = _rng(seed).random(shape)
        return (self.low + self._range() * unit).astype(self.dtype)

    def mode(self):
        raise UnsupportedError("a Uniform distribution has no mode (every value is one)")

    def mean(self):
        return ((self.low.astype(np.float64) + self.high) / 2.0).astype(self.dtype)

    def stddev(self):
        return (self._range() / np.sqrt(12.0)).astype(self.dtype)

    def log_prob(self, value):
        value = np.asarray(value, np.float64)
        inside = (value >= self.low) & (value <= self.high)
        with np.errstate(divide="ignore"):
            density = np.where(inside, -np.log(self._range()), -np.inf)
        return self._sum_event(density).astype(np.float32)

    def entropy(self):
        shape = np.broadcast_shapes(self.low.shape, self.high.shape)
        return self._sum_event(np.broadcast_to(np.log(self._range()), shape)).astype(np.float32)

    def parameters(self):
        return {"low": self.low, "high": self.high}


class TanhNormal(Distribution):
    """TF-Agents' SquashToSpecNormal: ``c + m * tanh(x)``, ``x ~ Normal(loc, scale)``.

    ``c`` and ``m`` are the centre and half-width of ``[low, high]`` (the action spec's
    bounds). ``mode``, ``mean`` and ``stddev`` follow TF-Agents' definitions (the tanh of
    the input's mode and stddev, scaled), not the squashed distribution's moments; the
    log-probability is the change of variables through TF-Agents' stable tanh; there is
    no entropy (TF-Agents has none either).
    """

    family = "tanh_normal"
    #: TF-Agents' stable tanh inverse clips |u| <= 1 to this before atanh.
    INVERSE_CLIP = 0.99999997

    def __init__(
        self,
        loc: Any,
        scale: Any,
        low: Any,
        high: Any,
        event_ndims: int = 0,
        dtype: Any = np.float32,
    ):
        super().__init__(event_ndims, dtype)
        self.loc = np.asarray(loc)
        self.scale = np.asarray(scale)
        self.low = np.asarray(low)
        self.high = np.asarray(high)
        self._center, self._magnitude = tanh_centre_magnitude(self.low, self.high)

    def _shape(self) -> tuple[int, ...]:
        return np.broadcast_shapes(self.loc.shape, self.scale.shape, self._center.shape)

    def sample(self, seed=None):
        noise = _rng(seed).standard_normal(self._shape())
        x = self.loc.astype(np.float64) + self.scale.astype(np.float64) * noise
        return (self._center + self._magnitude * np.tanh(x)).astype(self.dtype)

    def mode(self):
        value = self._center + self._magnitude * np.tanh(self.loc.astype(np.float64))
        return np.broadcast_to(value, self._shape()).astype(self.dtype)

    mean = mode

    def stddev(self):
        value = self._magnitude * np.tanh(self.scale.astype(np.float64))
        return np.broadcast_to(value, self._shape()).astype(self.dtype)

    def log_prob(self, value):
        u = (np.asarray(value, np.float64) - self._center) / self._magnitude
        inside = np.abs(u) <= 1.0
        u = np.clip(np.where(inside, u, 0.0), -self.INVERSE_CLIP, self.INVERSE_CLIP)
        x = np.arctanh(u)
        loc = self.loc.astype(np.float64)
        scale = self.scale.astype(np.float64)
        normal = -0.5 * ((x - loc) / scale) ** 2 - np.log(scale) - 0.5 * _LOG_2PI
        # log |dy/dx| = log m + log(1 - tanh(x)^2), the latter in TF-Agents' stable form.
        log_det = np.log(self._magnitude) + 2.0 * (np.log(2.0) - x - np.logaddexp(0.0, -2.0 * x))
        return self._sum_event(np.where(inside, normal - log_det, -np.inf)).astype(np.float32)

    def entropy(self):
        raise UnsupportedError(
            "tanh_normal (TF-Agents' SquashToSpecNormal) has no closed-form entropy; "
            "estimate it as -mean(log_prob(samples))"
        )

    def parameters(self):
        return {"loc": self.loc, "scale": self.scale, "low": self.low, "high": self.high}


def tanh_centre_magnitude(low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """TanhNormal's centre and half-width of ``[low, high]``, as float64 arrays.

    Computed in float32 as TF-Agents does (spec_means_and_magnitudes).
    """
    centre = ((high + low) / 2.0).astype(np.float32).astype(np.float64)
    magnitude = ((high - low) / 2.0).astype(np.float32).astype(np.float64)
    return centre, magnitude


_FAMILIES = {cls.family: cls for cls in (Deterministic, Categorical, Normal, Uniform, TanhNormal)}


def make_distribution(family: str, params: dict[str, np.ndarray], **static: Any) -> Distribution:
    """Builds the distribution of a manifest's ``family`` from its parameter arrays."""
    cls = _FAMILIES.get(family)
    if cls is None:
        raise UnsupportedError(
            f"distribution family {family!r} is not supported by this runtime "
            f"(supported: {sorted(_FAMILIES)})"
        )
    return cls(**params, **static)
