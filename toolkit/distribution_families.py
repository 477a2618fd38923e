"""Distribution families and action derivations of exported TF policies (TF-free).

Exported graphs hold no random ops: they compute distribution *parameters*, and the
runtime derives the action from them with a seedable numpy Generator. This module is
the contract between the two sides:

* ``DistributionParams``: one action leaf's distribution as a ``family`` (a name from
  ``FAMILIES``), named parameter arrays (``params``) with a leading batch dim, and
  static facts (``event_ndims`` = rank of the action spec, ``dtype`` of the action,
  ``shift`` for categoricals). ``static()`` gives the static facts as keyword arguments.
* ``export_description()`` of every TF policy: a JSON-able dict saying how the action is
  derived from the parameters its ``distribution_params()`` returns (see ``KINDS``).

Families (parameter shapes for a batch ``B`` and an action leaf of shape ``S``):

=================  ==========================  =========================================
family             params                      action
=================  ==========================  =========================================
``deterministic``  ``loc`` [B, *S]             ``loc``
``categorical``    ``logits`` [B, *S, n]       ``index + shift`` cast to ``dtype``; the
                                               categories are ``shift .. shift + n - 1``
``normal``         ``loc``, ``scale`` [B, *S]  ``loc + scale * N(0, 1)`` (diagonal)
``uniform``        ``low``, ``high`` [B, *S]   uniform in ``[low, high)``
``tanh_normal``    ``loc``, ``scale``,         ``c + m * tanh(loc + scale * N(0, 1))``
                   ``low``, ``high`` [B, *S]   with ``c = (high + low) / 2`` and
                                               ``m = (high - low) / 2``
=================  ==========================  =========================================

``tanh_normal`` is TF-Agents' ``SquashToSpecNormal`` (SAC's tanh-normal projection): a
diagonal Normal squashed by tanh into the bounds ``[low, high]`` of the action spec.
Its statistics are TF-Agents' definitions, not the squashed distribution's true ones:
``mode`` = ``mean`` = ``c + m * tanh(loc)``, ``stddev`` = ``m * tanh(scale)``. The
log-probability is the change of variables ``log N(x; loc, scale) - log m -
log(1 - tanh(x)^2)`` with ``x = atanh(u)``, ``u = (y - c) / m`` clipped to
``+-0.99999997`` (TF-Agents' stable tanh; values outside ``[low, high]`` get ``-inf``
where TF-Agents gives NaN); it has no closed-form entropy (TF-Agents neither).

Log-probabilities and entropies sum over the ``event_ndims`` trailing dims (TFP's
``Independent``), giving one value per batch entry.

Derivation kinds (``description["kind"]``); every description also has ``"clip"``
(clip the derived action to the bounded action spec, as the TF policy does):

* ``"sample"``: ``params`` is a nest like the action spec with a DistributionParams per
  leaf; the action samples each leaf (a deterministic leaf samples to its ``loc``).
  ``"emit_log_probability"`` says whether ``info["log_probability"]`` (the log-prob of
  the unclipped sample, per leaf) is expected.
* ``"epsilon_greedy"``: ``params = {"greedy": ..., "random": ...}`` for the two inner
  descriptions ``description["greedy"]`` and ``description["random"]``; each batch entry
  takes the random action with probability ``description["epsilon"]``.
* ``"gaussian_noise"``: ``params`` belongs to ``description["inner"]``; the action is the
  inner action plus ``N(0, scale)`` noise (``scale`` is a number or a nest like the
  action spec), then clipped.
* ``"ou_noise"``: ``params`` belongs to ``description["inner"]``; the policy state entry
  ``description["state_key"]`` holds the Ornstein-Uhlenbeck noise ``x`` (already reset
  on FIRST steps by the graph). The runtime draws ``x' = (1 - ou_damping) * x +
  ou_stddev * N(0, 1)``, returns ``inner action + x'`` (clipped), and puts ``x'`` into
  the next state in place of the graph's pass-through value.
* ``"mixture"``: ``params`` is a tuple with one entry per ``description["components"]``
  element; each batch entry takes the action of component ``i`` with probability
  ``description["weights"][i]``. The next state is the tuple of every component's state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from toolkit import nest
from toolkit.errors import BundleError, SpecError, UnsupportedError

__all__ = [
    "CATEGORICAL",
    "DETERMINISTIC",
    "EPSILON_GREEDY",
    "FAMILIES",
    "GAUSSIAN_NOISE",
    "KINDS",
    "LEAF_KIND",
    "LOG_PROBABILITY",
    "MIXTURE",
    "NORMAL",
    "OU_NOISE",
    "SAMPLE",
    "TANH_NORMAL",
    "UNIFORM",
    "DistributionParams",
    "LeafInfo",
    "Record",
    "flatten_params",
    "leaf_from_json",
    "leaf_to_json",
    "map_params",
]

#: The ``info`` key of the per-leaf log-probabilities a policy may emit.
LOG_PROBABILITY = "log_probability"
#: The ``kind`` of every leaf of a manifest's ``distribution`` nest.
LEAF_KIND = "distribution_params"

DETERMINISTIC = "deterministic"
CATEGORICAL = "categorical"
NORMAL = "normal"
UNIFORM = "uniform"
TANH_NORMAL = "tanh_normal"

#: family -> names of its parameter arrays, in a fixed order.
FAMILIES: dict[str, tuple[str, ...]] = {
    DETERMINISTIC: ("loc",),
    CATEGORICAL: ("logits",),
    NORMAL: ("loc", "scale"),
    UNIFORM: ("low", "high"),
    TANH_NORMAL: ("loc", "scale", "low", "high"),
}

SAMPLE = "sample"
EPSILON_GREEDY = "epsilon_greedy"
GAUSSIAN_NOISE = "gaussian_noise"
OU_NOISE = "ou_noise"
MIXTURE = "mixture"

#: the derivation kinds an ``export_description()`` may use.
KINDS = (SAMPLE, EPSILON_GREEDY, GAUSSIAN_NOISE, OU_NOISE, MIXTURE)


class Record:
    """Attributes set once in ``__init__``, as a frozen dataclass keeps them.

    Plain classes, not dataclasses: the runtimes import this module, and making a
    dataclass costs about half a millisecond each (the dataclasses module as much again)
    of their cold start. Pickling and copying go through ``__dict__`` as for dataclasses.
    """

    _attributes: tuple[str, ...] = ()

    def _set(self, **values: Any) -> None:
        self.__dict__.update(values)

    def __setattr__(self, name: str, value: Any) -> None:
        import dataclasses

        raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        import dataclasses

        raise dataclasses.FrozenInstanceError(f"cannot delete field {name!r}")

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._attributes)
        return f"{type(self).__qualname__}({fields})"


class DistributionParams(Record):
    """The distribution of one action leaf, as a family and named parameter arrays.

    Attributes:
      family: one of ``FAMILIES``.
      params: ``{name: array}`` with exactly the family's parameter names; arrays are
        tensors inside TensorFlow and numpy arrays in runtimes.
      event_ndims: how many trailing dims form one action (the action spec's rank).
      dtype: numpy name of the action dtype (e.g. "int32").
      shift: for categoricals, the action of index 0 (the spec's minimum); else 0.
    """

    _attributes = __match_args__ = ("family", "params", "event_ndims", "dtype", "shift")
    family: str
    params: dict[str, Any]
    event_ndims: int
    dtype: str
    shift: int

    def __init__(
        self, family: str, params: dict[str, Any], event_ndims: int, dtype: str, shift: int = 0
    ):
        expected = FAMILIES.get(family)
        if expected is None:
            raise SpecError(f"expected a family in {sorted(FAMILIES)}, got {family!r}")
        if set(params) != set(expected):
            raise SpecError(f"{family}: expected parameters {list(expected)}, got {sorted(params)}")
        self._set(family=family, params=params, event_ndims=event_ndims, dtype=dtype, shift=shift)

    def static(self) -> dict[str, Any]:
        """The static facts as keyword arguments (``shift`` only for categoricals)."""
        facts: dict[str, Any] = {"event_ndims": self.event_ndims, "dtype": self.dtype}
        if self.family == CATEGORICAL:
            facts["shift"] = self.shift
        return facts

    def to_json(self) -> dict[str, Any]:
        """Family, parameter names and static facts: what a manifest records."""
        return {"family": self.family, "params": list(FAMILIES[self.family]), **self.static()}

    def replace_params(self, params: dict[str, Any]) -> DistributionParams:
        return DistributionParams(
            self.family, dict(params), self.event_ndims, self.dtype, self.shift
        )


def _is_params(value: Any) -> bool:
    return isinstance(value, DistributionParams)


def flatten_params(tree: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """``(path, array)`` for every parameter in a nest of DistributionParams.

    Paths join the nest path and the parameter name: ``greedy/logits``,
    ``1/move/loc``. The order is canonical (nest order, then ``FAMILIES`` order).
    """
    out = []
    for path, leaf in nest.flatten_with_paths(tree, prefix):
        if not _is_params(leaf):
            raise SpecError(f"{path or 'params'}: expected DistributionParams, got {leaf!r:.60}")
        for name in FAMILIES[leaf.family]:
            out.append((nest.join_path(path, name), leaf.params[name]))
    return out


def map_params(fn: Callable[[Any], Any], tree: Any) -> Any:
    """The same nest of DistributionParams with ``fn`` applied to every parameter array."""
    return nest.map_structure(
        lambda p: p.replace_params({k: fn(v) for k, v in p.params.items()}), tree
    )


def dtype_name(dtype: Any) -> str:
    """The numpy name of a numpy or TensorFlow dtype."""
    return np.dtype(getattr(dtype, "as_numpy_dtype", dtype)).name


class LeafInfo(Record):
    """One leaf of a manifest's ``distribution`` nest: its family and static facts."""

    _attributes = __match_args__ = ("family", "static")
    family: str
    static: dict[str, Any]

    def __init__(self, family: str, static: dict[str, Any]):
        self._set(family=family, static=static)


def leaf_to_json(params: DistributionParams) -> dict[str, Any]:
    """The manifest form of one leaf (``nest.to_json``'s ``encode_leaf``)."""
    return {"kind": LEAF_KIND, **params.to_json()}


def leaf_from_json(data: dict[str, Any]) -> LeafInfo:
    """A manifest leaf back (``nest.from_json``'s ``decode_leaf``).

    Raises:
      BundleError: a leaf of another kind.
      UnsupportedError: a family this version does not know.
      KeyError: a leaf without ``event_ndims`` or ``dtype``.
    """
    if data.get("kind") != LEAF_KIND:
        raise BundleError(f"distribution: expected {LEAF_KIND!r} leaves, got {data!r:.80}")
    family = data.get("family")
    if family not in FAMILIES:
        raise UnsupportedError(
            f"distribution family {family!r} is not supported by this runtime "
            f"(supported: {sorted(FAMILIES)})"
        )
    static: dict[str, Any] = {"event_ndims": int(data["event_ndims"]), "dtype": data["dtype"]}
    if family == CATEGORICAL:
        static["shift"] = int(data.get("shift", 0))
    return LeafInfo(family, static)
