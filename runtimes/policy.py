"""The Python-policy interface over an exported bundle, shared by both backends (TF-free).

A bundle's graph computes distribution *parameters*, the next policy state and info
(docs/bundle-format.md). ``BundlePolicy`` turns time steps into the graph's flat
inputs, asks its backend to run the graph (``_run``), and derives the action from the
parameters with a numpy Generator, following the manifest's action description
(``toolkit.distribution_families``): plain sampling, epsilon-greedy, Gaussian and OU
noise, mixtures. The onnx backend (runtimes.onnx_backend) and the tf backend
(runtimes.tf_backend) differ only in how they run the graph and swap weights.

The hot path of ``action()`` is kept lean: names, dtypes, shapes and the derivation
are compiled once at load; a call with a well-formed TimeStep of numpy arrays costs a
few attribute checks on top of running the graph, and anything else falls back to the
full validation of ``PyPolicy`` (which converts safe dtypes and names what is wrong).
"""

from __future__ import annotations

import abc
import copy
import dataclasses
import math
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import optree

from runtimes import distributions as dists
from toolkit import distribution_families as families
from toolkit import nest
from toolkit.errors import (
    BundleError,
    PolicyError,
    SpecError,
    SpecMismatchError,
    UnsupportedError,
)
from toolkit.policies.py_policy import PyPolicy, Seed
from toolkit.specs import array_spec
from toolkit.trajectories.policy_step import PolicyStep
from toolkit.trajectories.time_step import TimeStep

try:  # the clip ufunc: np.clip's Python wrapper costs microseconds on small arrays
    from numpy._core.umath import clip as _clip
except ImportError:  # numpy < 2
    from numpy.core.umath import clip as _clip

__all__ = ["LOG_PROBABILITY", "BundlePolicy", "as_generator", "check_fingerprint"]

LOG_PROBABILITY = "log_probability"
_NDARRAY = np.ndarray
_BYTEORDER = sys.byteorder
#: byte count -> (every bit but the two lowest of each int32 lane, the lowest bit of each)
_STEP_MASKS: dict[int, tuple[int, int]] = {}


def _step_types_ok(step_type: np.ndarray) -> bool:
    """Whether every int32 step type is 0, 1 or 2: the batch as one Python int, masked.

    A lane is valid when no bit above the lowest two is set and not both of those are
    (3); two big-int operations cost a fraction of a numpy reduction.
    """
    data = step_type.tobytes()
    masks = _STEP_MASKS.get(len(data))
    if masks is None:
        lanes = len(data) // 4
        high = (b"\xfc\xff\xff\xff" if _BYTEORDER == "little" else b"\xff\xff\xff\xfc") * lanes
        low = (b"\x01\x00\x00\x00" if _BYTEORDER == "little" else b"\x00\x00\x00\x01") * lanes
        masks = _STEP_MASKS[len(data)] = (
            int.from_bytes(high, _BYTEORDER),
            int.from_bytes(low, _BYTEORDER),
        )
    value = int.from_bytes(data, _BYTEORDER)
    return not (value & masks[0]) and not (value & (value >> 1) & masks[1])


# Where OUNoisePolicy keeps a stateful wrapped policy's state (toolkit.policies.ou_noise_policy).
_OU_WRAPPED_KEY = "wrapped"


def as_generator(seed: Seed, default: np.random.Generator) -> np.random.Generator:
    """The Generator for one call: ``default`` for None, a fresh one for an int."""
    if seed is None:
        return default
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool) and seed >= 0:
        return np.random.default_rng(int(seed))
    raise SpecMismatchError("seed", "None, a non-negative int or a numpy Generator", repr(seed))


def check_fingerprint(root: Path, info: dict[str, Any], expected: str) -> None:
    """Refuses a checkpoint (checkpoint.json ``info``) made for another graph."""
    got = str(info.get("graph_fingerprint"))
    if got != expected:
        raise BundleError(
            f"{root}: expected a checkpoint of this bundle's graph (fingerprint "
            f"{expected[:12]}...), got one of another graph ({got[:12]}...)"
        )


# --- the action derivation ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class _LeafInfo:
    """One leaf of the manifest's ``distribution`` nest (before names are attached)."""

    family: str
    static: dict[str, Any]


@dataclasses.dataclass(frozen=True, eq=False)
class _Leaf:
    """One action leaf's distribution: its family and the graph outputs holding its params."""

    family: str
    names: tuple[str, ...]
    static: dict[str, Any]

    def distribution(self, out: dict[str, np.ndarray]) -> dists.Distribution:
        params = {
            p: out[n] for p, n in zip(families.FAMILIES[self.family], self.names, strict=False)
        }
        return dists.make_distribution(self.family, params, **self.static)


def _decode_leaf(data: dict[str, Any]) -> _LeafInfo:
    if data.get("kind") != "distribution_params":
        raise BundleError(f"distribution: expected 'distribution_params' leaves, got {data!r:.80}")
    family = data.get("family")
    if family not in families.FAMILIES:
        raise UnsupportedError(
            f"distribution family {family!r} is not supported by this runtime "
            f"(supported: {sorted(families.FAMILIES)})"
        )
    static: dict[str, Any] = {"event_ndims": int(data["event_ndims"]), "dtype": data["dtype"]}
    if family == families.CATEGORICAL:
        static["shift"] = int(data.get("shift", 0))
    return _LeafInfo(family, static)


def _named_leaves(tree: Any, prefix: str) -> list[_Leaf]:
    return [
        _Leaf(
            info.family,
            tuple(nest.join_path(path, p) for p in families.FAMILIES[info.family]),
            info.static,
        )
        for path, info in nest.flatten_with_paths(tree, prefix)
    ]


def _leaves_like(spec: Any, value: Any, what: str) -> list[Any]:
    """``value``'s leaves at ``spec``'s leaves; JSON lists stand for tuples."""
    if isinstance(spec, dict):
        if not isinstance(value, dict) or set(value) != set(spec):
            raise BundleError(
                f"{what}: expected a dict with keys {sorted(spec)}, got {value!r:.80}"
            )
        return [leaf for k in sorted(spec) for leaf in _leaves_like(spec[k], value[k], what)]
    if isinstance(spec, (tuple, list)):
        fields = spec._fields if hasattr(spec, "_fields") else None
        if fields is not None and isinstance(value, dict):
            value = [value[f] for f in fields]
        if not isinstance(value, (list, tuple)) or len(value) != len(spec):
            raise BundleError(f"{what}: expected {len(spec)} entries, got {value!r:.80}")
        return [leaf for s, v in zip(spec, value, strict=True) for leaf in _leaves_like(s, v, what)]
    return [value]


def _per_leaf(value: Any, action_leaves: list[Any], action_spec: Any, what: str) -> list[Any]:
    """A number (for every leaf) or a nest like the action spec -> one array per leaf."""
    raw = _leaves_like(action_spec, value, what) if isinstance(value, dict) else None
    if raw is None and isinstance(value, list) and nest.is_nested(action_spec):
        raw = _leaves_like(action_spec, value, what)
    if raw is None:
        raw = [value] * len(action_leaves)
    out = []
    for spec, v in zip(action_leaves, raw, strict=True):
        array = np.asarray(v, dtype=spec.dtype)
        try:
            np.broadcast_to(array, spec.shape)
        except ValueError as e:
            raise BundleError(
                f"{what}: shape {array.shape} does not broadcast to the action shape {spec.shape}"
            ) from e
        out.append(array)
    return out


class _Deriver(abc.ABC):
    """Turns graph outputs (one batch dim) into action leaves, in action-spec order."""

    clips: list[tuple[np.ndarray, np.ndarray] | None]

    @abc.abstractmethod
    def act(
        self, out: dict[str, np.ndarray], rng: np.random.Generator, want_log_prob: bool
    ) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
        """``(actions, log_probs)``; log_probs (float32 ``[B]`` per leaf) when asked."""

    def distributions(self, out: dict[str, np.ndarray]) -> list[dists.Distribution]:
        """One numpy distribution per action leaf, where the derivation is one."""
        raise UnsupportedError(self.no_distribution)

    no_distribution = ""

    def _clip(self, actions: list[np.ndarray]) -> list[np.ndarray]:
        return [
            a if c is None else _clip(a, c[0], c[1])
            for a, c in zip(actions, self.clips, strict=False)
        ]


class _Sample(_Deriver):
    """``sample``: each leaf sampled from its distribution (a deterministic one: its loc)."""

    def __init__(self, leaves: list[_Leaf], clips: list[Any]):
        self.leaves = leaves
        self.clips = clips

    def act(self, out, rng, want_log_prob):
        actions, log_probs = [], []
        for leaf in self.leaves:
            if leaf.family == families.DETERMINISTIC:
                action = out[leaf.names[0]].astype(leaf.static["dtype"], copy=False)
                if want_log_prob:  # a delta's log-probability at its own loc
                    log_probs.append(np.zeros(action.shape[:1], np.float32))
            else:
                distribution = leaf.distribution(out)
                action = distribution.sample(rng)
                if want_log_prob:
                    log_probs.append(distribution.log_prob(action))
            actions.append(action)
        return self._clip(actions), (log_probs if want_log_prob else None)

    def distributions(self, out):
        return [leaf.distribution(out) for leaf in self.leaves]


def _rows(mask: np.ndarray, rank: int) -> np.ndarray:
    return mask.reshape(mask.shape + (1,) * (rank - 1))


class _EpsilonGreedy(_Deriver):
    """``epsilon_greedy``: per batch entry the random action with probability epsilon."""

    def __init__(self, greedy: _Deriver, random: _Deriver, epsilon: float, clips: list[Any]):
        self.greedy = greedy
        self.random = random
        self.epsilon = float(epsilon)
        self.clips = clips
        if not 0.0 <= self.epsilon <= 1.0:
            raise BundleError(f"epsilon_greedy: expected epsilon in [0, 1], got {epsilon}")

    def act(self, out, rng, want_log_prob):
        greedy, _ = self.greedy.act(out, rng, False)
        random, _ = self.random.act(out, rng, False)
        explore = rng.random(greedy[0].shape[0]) < self.epsilon
        actions = [
            np.where(_rows(explore, g.ndim), r, g) for g, r in zip(greedy, random, strict=True)
        ]
        log_probs = None
        if want_log_prob:
            if len(actions) != 1:
                raise UnsupportedError(
                    "epsilon_greedy: log-probabilities need a single discrete action"
                )
            chosen = actions[0]
            is_greedy = np.all((chosen == greedy[0]).reshape(chosen.shape[0], -1), axis=1)
            random_probability = np.exp(self.random.distributions(out)[0].log_prob(chosen))
            probability = (1.0 - self.epsilon) * is_greedy + self.epsilon * random_probability
            with np.errstate(divide="ignore"):
                log_probs = [np.log(probability).astype(np.float32)]
        return self._clip(actions), log_probs

    def distributions(self, out):
        """TF's EpsilonGreedyPolicy.distribution(): the greedy one-hot mixed with the
        random policy's probabilities, for a single discrete action with one element."""
        randoms = self.random.distributions(out)
        if len(randoms) != 1 or not isinstance(randoms[0], dists.Categorical):
            raise UnsupportedError(
                "epsilon_greedy: distribution() needs a single discrete action with one element"
            )
        random = randoms[0]
        greedy, _ = self.greedy.act(out, np.random.default_rng(0), False)
        n = random.num_categories
        one_hot = np.eye(n, dtype=np.float64)[greedy[0].astype(np.int64) - random.shift]
        mixed = (1.0 - self.epsilon) * one_hot + self.epsilon * random.probs()
        with np.errstate(divide="ignore"):
            logits = np.log(mixed).astype(np.float32)
        return [
            dists.Categorical(logits, random.shift, random.event_ndims, random.dtype),
        ]


class _GaussianNoise(_Deriver):
    """``gaussian_noise``: the inner action plus ``N(0, scale)`` noise."""

    def __init__(self, inner: _Deriver, scales: list[np.ndarray], event_ndims: list[int], clips):
        self.inner = inner
        self.scales = scales
        self.event_ndims = event_ndims
        self.clips = clips

    def act(self, out, rng, want_log_prob):
        clean, _ = self.inner.act(out, rng, False)
        noisy = [
            (a + scale * rng.standard_normal(a.shape)).astype(a.dtype, copy=False)
            for a, scale in zip(clean, self.scales, strict=True)
        ]
        log_probs = None
        if want_log_prob:
            log_probs = [
                dists.Normal(a, np.broadcast_to(scale, a.shape), n, a.dtype).log_prob(x)
                for a, x, scale, n in zip(clean, noisy, self.scales, self.event_ndims, strict=True)
            ]
        return self._clip(noisy), log_probs

    def distributions(self, out):
        """TF's GaussianPolicy.distribution(): Normal(loc, scale) around a deterministic
        inner action, Normal(loc, sqrt(s^2 + scale^2)) around a Normal one."""
        out_dists = []
        for inner, scale in zip(self.inner.distributions(out), self.scales, strict=True):
            if isinstance(inner, dists.Deterministic):
                loc, total = inner.loc, np.broadcast_to(scale, inner.loc.shape)
            elif isinstance(inner, dists.Normal):
                loc, total = inner.loc, np.sqrt(np.square(inner.stddev()) + np.square(scale))
            else:
                raise UnsupportedError(
                    "gaussian_noise: distribution() needs a deterministic or normal inner "
                    f"distribution, got {type(inner).__name__}"
                )
            out_dists.append(
                dists.Normal(loc, total.astype(inner.dtype), inner.event_ndims, inner.dtype)
            )
        return out_dists


class _OUNoise(_Deriver):
    """``ou_noise``: the inner action plus OU noise, whose new value is the new state."""

    no_distribution = (
        "ou_noise: this policy has no distribution(): its next state depends on the noise "
        "drawn; distribution_params() gives the inner parameters"
    )

    def __init__(self, inner, stddevs, dampings, noise_names: list[str], clips):
        self.inner = inner
        self.stddevs = stddevs
        self.dampings = dampings
        self.noise_names = noise_names
        self.clips = clips

    def act(self, out, rng, want_log_prob):
        clean, _ = self.inner.act(out, rng, False)
        actions = []
        for a, name, stddev, damping in zip(
            clean, self.noise_names, self.stddevs, self.dampings, strict=True
        ):
            x = out[name]  # the graph passes the noise through, reset on FIRST steps
            x = ((1 - damping) * x + stddev * rng.standard_normal(x.shape)).astype(x.dtype)
            out[name] = x
            actions.append(a + x)
        return self._clip(actions), None


class _Mixture(_Deriver):
    """``mixture``: per batch entry the action of component i, with probability weights[i]."""

    no_distribution = (
        "mixture: this policy has no distribution(): its components may be of different "
        "families; distribution_params() gives each component's parameters"
    )

    def __init__(self, components: list[_Deriver], weights: list[float], clips):
        weights = np.asarray(weights, np.float64)
        if weights.shape != (len(components),) or np.any(weights < 0) or weights.sum() <= 0:
            raise BundleError(
                f"mixture: expected {len(components)} non-negative weights, got {weights.tolist()}"
            )
        self.components = components
        self.weights = weights / weights.sum()
        self.clips = clips

    def act(self, out, rng, want_log_prob):
        per_component = [c.act(out, rng, False)[0] for c in self.components]
        batch = per_component[0][0].shape[0]
        choice = rng.choice(len(self.components), size=batch, p=self.weights)
        rows = np.arange(batch)
        actions = [
            np.stack(leaves, axis=1)[rows, choice] for leaves in zip(*per_component, strict=True)
        ]
        return self._clip(actions), None


class _DerivationBuilder:
    """Compiles a manifest's action description into a tree of derivers."""

    def __init__(self, action_spec: Any, state_spec: Any):
        self.action_spec = action_spec
        self.action_leaves = nest.flatten(action_spec)
        self.state_spec = state_spec
        self.clips = [_clip_bounds(s) for s in self.action_leaves]
        self.no_clips = [None] * len(self.action_leaves)

    def build(self, description: Any, params: Any, prefix: str, state_path: tuple | None):
        if not isinstance(description, dict) or "kind" not in description:
            raise BundleError(
                f"policy.action: expected a description with a 'kind', got {description!r:.80}"
            )
        kind = description["kind"]
        clips = self.clips if description.get("clip", False) else self.no_clips
        try:
            if kind == families.SAMPLE:
                self._check_params(params, prefix)
                return _Sample(_named_leaves(params, prefix), clips)
            if kind == families.EPSILON_GREEDY:
                if not isinstance(params, dict) or set(params) != {"greedy", "random"}:
                    raise BundleError(f"{prefix}: expected parameters 'greedy' and 'random'")
                greedy = self.build(
                    description["greedy"], params["greedy"], f"{prefix}/greedy", state_path
                )
                random = self.build(
                    description["random"], params["random"], f"{prefix}/random", None
                )
                return _EpsilonGreedy(greedy, random, description["epsilon"], clips)
            if kind == families.GAUSSIAN_NOISE:
                inner = self.build(description["inner"], params, prefix, state_path)
                scales = self._per_leaf(description["scale"], "gaussian_noise scale")
                event_ndims = [len(s.shape) for s in self.action_leaves]
                return _GaussianNoise(inner, scales, event_ndims, clips)
            if kind == families.OU_NOISE:
                return self._ou_noise(description, params, prefix, state_path, clips)
            if kind == families.MIXTURE:
                components = description["components"]
                if not isinstance(params, (tuple, list)) or len(params) != len(components):
                    raise BundleError(
                        f"{prefix}: expected parameters for {len(components)} mixture components"
                    )
                built = [
                    self.build(
                        c, p, f"{prefix}/{i}", None if state_path is None else state_path + (i,)
                    )
                    for i, (c, p) in enumerate(zip(components, params, strict=True))
                ]
                return _Mixture(built, description["weights"], clips)
        except KeyError as e:
            raise BundleError(f"policy.action ({kind}): missing field {e.args[0]!r}") from e
        raise UnsupportedError(
            f"action derivation {kind!r} is not supported by this runtime "
            f"(supported: {list(families.KINDS)})"
        )

    def _check_params(self, params: Any, prefix: str) -> None:
        try:
            nest.assert_same_structure(params, self.action_spec, prefix)
        except SpecMismatchError as e:
            raise BundleError(f"distribution does not match the action spec: {e}") from e

    def _per_leaf(self, value: Any, what: str) -> list[np.ndarray]:
        return _per_leaf(value, self.action_leaves, self.action_spec, what)

    def _ou_noise(self, description, params, prefix, state_path, clips) -> _OUNoise:
        key = description["state_key"]
        path = () if state_path is None else state_path
        state = _subtree(self.state_spec, path)
        if not isinstance(state, dict) or key not in state:
            raise BundleError(
                f"ou_noise: expected the policy state entry {'/'.join(map(str, path + (key,)))}"
            )
        names = [
            n
            for n, _ in nest.flatten_with_paths(
                state[key], nest.join_path("next_state", *path, key)
            )
        ]
        if len(names) != len(self.action_leaves):
            raise BundleError(f"ou_noise: expected one noise entry per action leaf, got {names}")
        inner_path = path + (_OU_WRAPPED_KEY,) if _OU_WRAPPED_KEY in state else None
        inner = self.build(description["inner"], params, prefix, inner_path)
        stddevs = self._per_leaf(description["ou_stddev"], "ou_noise ou_stddev")
        dampings = self._per_leaf(description["ou_damping"], "ou_noise ou_damping")
        return _OUNoise(inner, stddevs, dampings, names, clips)


def _subtree(tree: Any, path: tuple) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def _clip_bounds(spec: Any) -> tuple[np.ndarray, np.ndarray] | None:
    if not isinstance(spec, array_spec.BoundedArraySpec) or spec.dtype.kind == "b":
        return None
    low = np.broadcast_to(spec.minimum, spec.shape).astype(spec.dtype)
    high = np.broadcast_to(spec.maximum, spec.shape).astype(spec.dtype)
    return low, high


# --- the policy ----------------------------------------------------------------------------


def _io_names(signature: dict[str, Any], which: str) -> list[str]:
    return [entry["name"] for entry in signature.get(which, [])]


class BundlePolicy(PyPolicy):
    """A bundle's policy: the seed's Python-policy interface over an exported graph.

    Subclasses run the graph (``_run``) and swap weights; this class does the rest.

    Args:
      manifest: the bundle's validated manifest (toolkit.bundle.read_manifest).
      bundle_dir: the bundle folder.
      seed: seeds the policy's own Generator, used by ``action(seed=None)``.
      validate_args: check time steps and states against the specs (converting safe
        dtypes, e.g. float64 observations into a float32 spec).
    """

    backend = ""

    def __init__(
        self,
        manifest: dict[str, Any],
        bundle_dir: str | os.PathLike,
        *,
        seed: int | None = None,
        validate_args: bool = True,
        check_finite: bool = False,
    ):
        try:
            specs = manifest["specs"]
            time_step_spec = array_spec.spec_nest_from_json(specs["time_step"])
            action_spec = array_spec.spec_nest_from_json(specs["action"])
            state_spec = array_spec.spec_nest_from_json(specs["policy_state"])
            info_spec = array_spec.spec_nest_from_json(specs["info"])
            graph_info_spec = array_spec.spec_nest_from_json(specs["graph_info"])
            description = manifest["policy"]["action"]
            params_tree = nest.from_json(manifest["distribution"], _decode_leaf)
            signature = manifest["signatures"]["distribution"]
        except KeyError as e:
            raise BundleError(f"{bundle_dir}: the manifest has no {e}") from e
        except (TypeError, SpecError) as e:
            raise BundleError(f"{bundle_dir}: the manifest is malformed: {e}") from e
        if not isinstance(time_step_spec, TimeStep):
            raise BundleError(f"{bundle_dir}: specs.time_step is not a TimeStep")
        state_spec = () if state_spec is None else state_spec
        super().__init__(
            time_step_spec,
            action_spec,
            state_spec,
            info_spec,
            validate_args=validate_args,
            check_finite=check_finite,
        )
        self._manifest = manifest
        self._bundle_dir = Path(bundle_dir)
        self._rng = np.random.default_rng(seed)
        self._train_step = manifest.get("train_step")
        self._description = description
        self._emit_log_probability = bool(description.get("emit_log_probability", False))
        self._graph_info_spec = () if graph_info_spec is None else graph_info_spec
        self._params_tree = params_tree

        # Graph I/O names, all by nest path (docs/bundle-format.md).
        self._input_names = [p for p, _ in nest.flatten_with_paths(time_step_spec)]
        self._state_names = [p for p, _ in nest.flatten_with_paths(state_spec, "policy_state")]
        self._input_names += self._state_names
        self._next_state_names = [p for p, _ in nest.flatten_with_paths(state_spec, "next_state")]
        self._info_names = [p for p, _ in nest.flatten_with_paths(self._graph_info_spec, "info")]
        action_names = [p for p, _ in nest.flatten_with_paths(action_spec, "action")]
        graph_inputs = _io_names(signature, "inputs")
        graph_outputs = set(_io_names(signature, "outputs"))
        missing = sorted(set(self._input_names) ^ set(graph_inputs))
        if missing:
            raise BundleError(
                f"{bundle_dir}: the graph's inputs {sorted(graph_inputs)} do not match the "
                f"specs' {sorted(self._input_names)}"
            )
        self._deriver = _DerivationBuilder(action_spec, state_spec).build(
            description, params_tree, "distribution", () if self.is_stateful else None
        )
        self._param_leaves = _named_leaves(params_tree, "distribution")
        param_names = [n for leaf in self._param_leaves for n in leaf.names]
        self._param_fetch = list(
            dict.fromkeys(param_names + self._next_state_names + self._info_names)
        )
        # A plain policy whose every leaf is deterministic: the graph outputs the
        # (clipped) action itself and no sampling is needed.
        self._direct = (
            description.get("kind") == families.SAMPLE
            and bool(action_names)
            and all(n in graph_outputs for n in action_names)
        )
        self._action_names = action_names
        # The graph clips a direct action already; clipping again to the manifest's spec
        # keeps actions inside the spec the policy reports, whatever the graph does.
        self._direct_clips = self._deriver.clips if description.get("clip", False) else None
        needed = (action_names if self._direct else param_names) + self._next_state_names
        needed += self._info_names
        missing = sorted(set(needed) - graph_outputs)
        if missing:
            raise BundleError(f"{bundle_dir}: the graph lacks the outputs {missing}")
        self._fetch = list(dict.fromkeys(needed))
        self._action_treespec = optree.tree_structure(action_spec, none_is_leaf=False)
        self._state_treespec = optree.tree_structure(state_spec)
        self._info_treespec = optree.tree_structure(self._graph_info_spec)
        self._single_action = not nest.is_nested(action_spec)
        self._plain_output = (
            self._single_action
            and not self.is_stateful
            and not self._info_names
            and not self._emit_log_probability
        )
        self._state_leaf_specs = nest.flatten(state_spec)
        # check_finite: every call takes the general path, which checks observations.
        self._fast = None if check_finite else self._fast_layout(time_step_spec)

    # --- what subclasses provide ------------------------------------------------------

    @abc.abstractmethod
    def _run(self, arrays: list[np.ndarray], unbatched: bool, fetch: list[str]) -> list[Any]:
        """Runs the ``distribution`` graph.

        Args:
          arrays: the inputs in ``self._input_names`` order, each with one batch dim,
            or with none when ``unbatched`` (the graph then runs at batch 1).
          unbatched: whether ``arrays`` lack the batch dim.
          fetch: output names; ``self._fetch`` (the same list object) on the hot path.

        Returns:
          The outputs in ``fetch`` order, each with a batch dim, owned by the caller.
        """

    @abc.abstractmethod
    def update_from_checkpoint(self, path: str | os.PathLike) -> None:
        """Takes the weights (and train step) of a checkpoint from exporters.save_checkpoint."""

    # --- properties ------------------------------------------------------------------------

    @property
    def train_step(self) -> int | None:
        """The training step of the weights in use (from the export or the last checkpoint)."""
        return self._train_step

    @property
    def metadata(self) -> dict[str, Any]:
        """The user metadata recorded at export."""
        return copy.deepcopy(self._manifest.get("metadata", {}))

    @property
    def manifest(self) -> dict[str, Any]:
        return copy.deepcopy(self._manifest)

    @property
    def bundle_dir(self) -> Path:
        return self._bundle_dir

    @property
    def action_description(self) -> dict[str, Any]:
        """How actions are derived from the graph's parameters (the manifest's)."""
        return copy.deepcopy(self._description)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({str(self._bundle_dir)!r}, "
            f"policy={self._manifest['policy'].get('class')!r}, "
            f"action={self._description.get('kind')!r}, train_step={self._train_step})"
        )

    # --- copies ---------------------------------------------------------------------------

    def __deepcopy__(self, memo: dict[int, Any]) -> BundlePolicy:
        # The graph runner is immutable (weight updates replace it), so copies share it;
        # only the generator is the copy's own.
        clone = copy.copy(self)
        clone._rng = copy.deepcopy(self._rng, memo)
        clone._after_copy()
        return clone

    def _after_copy(self) -> None:
        """Hook for subclasses whose per-policy resources must not be shared."""

    # --- acting -----------------------------------------------------------------------------

    def action(self, time_step: Any, policy_state: Any = (), seed: Seed = None) -> PolicyStep:
        """The PolicyStep(action, state, info) for a time step (batched or not).

        Args:
          time_step: a TimeStep of numpy arrays (or array-likes) matching
            ``time_step_spec``, with no batch dims, one, or several.
          policy_state: for stateful policies, ``get_initial_state()`` or the last
            step's state (with the same batch dims).
          seed: an int or Generator makes sampling reproducible; None draws from the
            policy's own generator (seeded at load).
        """
        prepared = self._fast_inputs(time_step, policy_state)
        if prepared is None:
            prepared = self._general_inputs(time_step, policy_state)
        arrays, outer = prepared
        outputs = self._run(arrays, not outer, self._fetch)
        if self._plain_output and self._direct:
            action = outputs[0]
            clips = self._direct_clips
            if clips is not None and clips[0] is not None:
                action = _clip(action, clips[0][0], clips[0][1])
            return PolicyStep(action[0] if not outer else _restore(action, outer))
        return self._policy_step(dict(zip(self._fetch, outputs, strict=False)), outer, seed)

    def _action(self, time_step: Any, policy_state: Any, seed: Seed) -> PolicyStep:
        # PyPolicy's entry point (action() is overridden above for speed).
        arrays, outer = self._general_inputs(time_step, policy_state)
        outputs = self._run(arrays, not outer, self._fetch)
        return self._policy_step(dict(zip(self._fetch, outputs, strict=False)), outer, seed)

    def _policy_step(self, out: dict[str, np.ndarray], outer: tuple, seed: Seed) -> PolicyStep:
        emit = self._emit_log_probability
        if self._direct:
            actions = [out[n] for n in self._action_names]
            if self._direct_clips is not None:
                actions = self._deriver._clip(actions)
            log_probs = [np.zeros(a.shape[:1], np.float32) for a in actions] if emit else None
        else:
            actions, log_probs = self._deriver.act(out, as_generator(seed, self._rng), emit)
        restore = _unbatch if not outer else (lambda a: _restore(a, outer))
        if self._single_action:
            action = restore(actions[0])
        else:
            action = self._action_treespec.unflatten([restore(a) for a in actions])
        state = ()
        if self._next_state_names:
            state = self._state_treespec.unflatten(
                [restore(out[n]) for n in self._next_state_names]
            )
        info = self._info(out, log_probs, restore)
        return PolicyStep(action, state, info)

    def _info(self, out: dict[str, np.ndarray], log_probs: Any, restore: Any) -> Any:
        info: Any = ()
        if self._info_names:
            info = self._info_treespec.unflatten([restore(out[n]) for n in self._info_names])
        if log_probs is not None:
            info = dict(info) if isinstance(info, dict) else {}
            info[LOG_PROBABILITY] = self._action_treespec.unflatten(
                [restore(lp) for lp in log_probs]
            )
        return info

    # --- distributions ------------------------------------------------------------------------

    def distribution(self, time_step: Any, policy_state: Any = ()) -> PolicyStep:
        """A PolicyStep whose action is a nest of numpy distributions (runtimes.distributions).

        What the TF policy's ``distribution()`` gives, computed from the graph's
        parameters: for plain policies one distribution per action leaf (Categorical,
        Normal, Uniform, or Deterministic for deterministic leaves, unclipped); for
        epsilon-greedy the Categorical mixing the greedy one-hot with the random
        policy's probabilities (single discrete action only); for Gaussian noise the
        Normal widened by the noise. OU-noise and mixture policies have none, as in TF
        (UnsupportedError): ``distribution_params()`` gives their parameters.
        ``state`` is the next state; ``info["log_probability"]``, if emitted, is zeros.
        """
        return super().distribution(time_step, policy_state)

    def _distribution(self, time_step: Any, policy_state: Any) -> PolicyStep:
        out, outer = self._outputs(time_step, policy_state)
        restored = {k: _restore_any(v, outer) for k, v in out.items()}
        leaves = self._deriver.distributions(restored)
        action = leaves[0] if self._single_action else self._action_treespec.unflatten(leaves)
        return self._restored_step(action, restored, outer)

    def distribution_params(self, time_step: Any, policy_state: Any = ()) -> PolicyStep:
        """The graph's parameters as numpy distributions, for every kind of policy.

        Returns:
          A PolicyStep whose ``action`` has the structure of the manifest's
          ``distribution`` (e.g. ``{"greedy": ..., "random": ...}`` for epsilon-greedy,
          one entry per component for mixtures), each leaf a numpy distribution; the
          ``state`` is the graph's next state (OU noise passes through un-drawn).
        """
        time_step, policy_state, _ = self._prepare(time_step, policy_state)
        out, outer = self._outputs(time_step, policy_state)
        restored = {k: _restore_any(v, outer) for k, v in out.items()}
        tree = nest.pack_sequence_as(
            self._params_tree, [leaf.distribution(restored) for leaf in self._param_leaves]
        )
        return self._restored_step(tree, restored, outer)

    def _restored_step(self, action: Any, out: dict[str, np.ndarray], outer: tuple) -> PolicyStep:
        state = ()
        if self._next_state_names:
            state = self._state_treespec.unflatten([out[n] for n in self._next_state_names])
        log_probs = None
        if self._emit_log_probability:
            log_probs = [np.zeros(outer, np.float32) for _ in nest.flatten(self.action_spec)]
        return PolicyStep(action, state, self._info(out, log_probs, lambda a: a))

    def _outputs(self, time_step: Any, policy_state: Any) -> tuple[dict[str, np.ndarray], tuple]:
        """Every parameter, next state and info output for prepared inputs."""
        arrays, outer = self._inputs_from(time_step, policy_state)
        fetch = self._param_fetch
        return dict(zip(fetch, self._run(arrays, not outer, fetch), strict=True)), outer

    # --- inputs -------------------------------------------------------------------------------

    def _fast_layout(self, time_step_spec: TimeStep) -> Any:
        """Expected (dtype, shape) per time step leaf when every field is one array."""
        if any(nest.is_nested(field) for field in time_step_spec):
            return None
        return [(s.dtype, s.shape) for s in time_step_spec]

    def _fast_inputs(self, time_step: Any, policy_state: Any) -> Any:
        """Graph inputs from a TimeStep of exactly-typed arrays, or None (general path).

        Only checks types, dtypes and shapes (a few hundred nanoseconds); anything
        unexpected goes to the general path, which converts or names the problem.
        """
        layout = self._fast
        if layout is None or type(time_step) is not TimeStep:
            return None
        if not self._validate_args:
            return self._trusted_inputs(time_step, policy_state)
        step_type = time_step[0]
        if type(step_type) is not _NDARRAY or step_type.dtype is not layout[0][0]:
            return None
        ndim = step_type.ndim
        if ndim == 0:
            if not 0 <= step_type.item() <= 2:
                return None  # the general path names the bad step type
            for value, (dtype, shape) in zip(time_step, layout, strict=False):
                if type(value) is not _NDARRAY or value.dtype is not dtype or value.shape != shape:
                    return None
            arrays = list(time_step)
        elif ndim == 1:
            if not _step_types_ok(step_type):
                return None  # the general path names the bad step type
            outer = step_type.shape
            for value, (dtype, shape) in zip(time_step, layout, strict=False):
                if (
                    type(value) is not _NDARRAY
                    or value.dtype is not dtype
                    or value.shape[1:] != shape
                    or value.shape[:1] != outer
                ):
                    return None
            arrays = list(time_step)
        else:
            return None
        if self._state_names:
            try:
                state = self._state_treespec.flatten_up_to(policy_state)
            except (ValueError, TypeError):
                return None
            for value, spec in zip(state, self._state_leaf_specs, strict=False):
                if (
                    type(value) is not _NDARRAY
                    or value.dtype is not spec.dtype
                    or value.shape[ndim:] != spec.shape
                    or value.shape[:ndim] != step_type.shape
                ):
                    return None
            arrays += state
        return arrays, step_type.shape

    def _trusted_inputs(self, time_step: TimeStep, policy_state: Any) -> Any:
        # validate_args=False: the caller vouches for dtypes and shapes.
        outer = np.shape(time_step[0])
        if len(outer) > 1:
            return None
        arrays = list(time_step)
        if self._state_names:
            if policy_state is None or not nest.flatten(policy_state):
                return None  # the general path names the missing state
            arrays += self._state_treespec.flatten_up_to(policy_state)
        return [a if type(a) is _NDARRAY else np.asarray(a) for a in arrays], outer

    def _general_inputs(self, time_step: Any, policy_state: Any) -> tuple[list, tuple]:
        time_step, policy_state, outer = self._prepare(time_step, policy_state)
        return self._inputs_from(time_step, policy_state, outer)

    def _inputs_from(self, time_step, policy_state, outer=None) -> tuple[list, tuple]:
        """Flat graph inputs (one batch dim, or none) from prepared nests, and their outer dims."""
        if outer is None:
            outer = self.outer_dims(time_step)
        leaves = _flatten_like(self.time_step_spec, time_step, "time_step")
        if self._state_names:
            leaves += _flatten_like(self.policy_state_spec, policy_state, "policy_state")
        outer = tuple(outer)
        if len(outer) <= 1:
            return [np.asarray(a) for a in leaves], outer
        size = math.prod(outer)
        return [np.reshape(a, (size,) + np.shape(a)[len(outer) :]) for a in leaves], outer

    # --- update -------------------------------------------------------------------------------

    def _update(self, policy: PyPolicy) -> None:
        if not isinstance(policy, BundlePolicy) or policy.backend != self.backend:
            raise PolicyError(
                f"update(): expected a {self.backend}-backend bundle policy of the same graph, "
                f"got {type(policy).__name__}"
            )
        self._take_weights(policy)
        self._train_step = policy._train_step

    @abc.abstractmethod
    def _take_weights(self, policy: BundlePolicy) -> None:
        """Makes this policy use ``policy``'s weights (same graph structure)."""


def _flatten_like(spec: Any, values: Any, what: str) -> list[Any]:
    try:
        return nest.flatten_up_to(spec, values)
    except (ValueError, TypeError):
        nest.assert_same_structure(values, spec, what)  # raises a StructureError naming where
        raise


def _unbatch(array: np.ndarray) -> np.ndarray:
    return array[0]


def _restore(array: np.ndarray, outer: tuple) -> np.ndarray:
    if len(outer) == 1:
        return array
    if not outer:
        return array[0]
    return array.reshape(tuple(outer) + array.shape[1:])


def _restore_any(array: np.ndarray, outer: tuple) -> np.ndarray:
    return _restore(np.asarray(array), tuple(outer))
