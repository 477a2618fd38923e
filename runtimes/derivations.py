"""How a bundle policy derives actions from its graph's parameters (numpy, TF-free).

A bundle's graph computes distribution *parameters* (docs/bundle-format.md); the
manifest's action description (``toolkit.distribution_families``) says how actions
come from them: plain sampling, epsilon-greedy, Gaussian and OU noise, mixtures.
``DerivationBuilder`` compiles that description once at load into a tree of
``Deriver``s, which ``runtimes.policy.BundlePolicy`` calls on every step.
"""

from __future__ import annotations

import abc
import sys
from typing import TYPE_CHECKING, Any

import numpy as np

from toolkit import action_masks, nest
from toolkit import distribution_families as families
from toolkit.errors import BundleError, SpecMismatchError, UnsupportedError
from toolkit.specs import array_spec

try:  # the clip ufunc: np.clip's Python wrapper costs microseconds on small arrays
    from numpy._core.umath import clip as _clip
except ImportError:  # numpy < 2
    from numpy.core.umath import clip as _clip

if TYPE_CHECKING:
    from runtimes import distributions as dists

__all__ = ["DerivationBuilder", "Deriver", "Leaf", "MaskCheck", "named_leaves"]


def _dists() -> Any:
    """runtimes.distributions, imported when a policy first samples or builds one: greedy
    policies whose graph gives the action never need it (it costs ~0.5 ms of cold start)."""
    module = sys.modules.get("runtimes.distributions")
    if module is None:
        from runtimes import distributions as module
    return module


# Where OUNoisePolicy keeps a stateful wrapped policy's state (toolkit.policies.ou_noise_policy).
_OU_WRAPPED_KEY = "wrapped"


class Leaf(families.Record):
    """One action leaf's distribution: its family and the graph outputs holding its params."""

    _attributes = __match_args__ = ("family", "names", "static")
    family: str
    names: tuple[str, ...]
    static: dict[str, Any]

    def __init__(self, family: str, names: tuple[str, ...], static: dict[str, Any]):
        self._set(family=family, names=names, static=static)

    def distribution(self, out: dict[str, np.ndarray]) -> dists.Distribution:
        params = {
            p: out[n] for p, n in zip(families.FAMILIES[self.family], self.names, strict=False)
        }
        return _dists().make_distribution(self.family, params, **self.static)


def named_leaves(tree: Any, prefix: str) -> list[Leaf]:
    """The leaves of a decoded ``distribution`` nest with their graph output names."""
    return [
        Leaf(
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


class Deriver(abc.ABC):
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


class _Sample(Deriver):
    """``sample``: each leaf sampled from its distribution (a deterministic one: its loc)."""

    def __init__(self, leaves: list[Leaf], clips: list[Any]):
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


class _EpsilonGreedy(Deriver):
    """``epsilon_greedy``: per batch entry the random action with probability epsilon."""

    def __init__(self, greedy: Deriver, random: Deriver, epsilon: float, clips: list[Any]):
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
        if len(randoms) != 1 or not isinstance(randoms[0], _dists().Categorical):
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
            _dists().Categorical(logits, random.shift, random.event_ndims, random.dtype),
        ]


class _GaussianNoise(Deriver):
    """``gaussian_noise``: the inner action plus ``N(0, scale)`` noise."""

    def __init__(self, inner: Deriver, scales: list[np.ndarray], event_ndims: list[int], clips):
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
                _dists().Normal(a, np.broadcast_to(scale, a.shape), n, a.dtype).log_prob(x)
                for a, x, scale, n in zip(clean, noisy, self.scales, self.event_ndims, strict=True)
            ]
        return self._clip(noisy), log_probs

    def distributions(self, out):
        """TF's GaussianPolicy.distribution(): Normal(loc, scale) around a deterministic
        inner action, Normal(loc, sqrt(s^2 + scale^2)) around a Normal one."""
        out_dists = []
        for inner, scale in zip(self.inner.distributions(out), self.scales, strict=True):
            if isinstance(inner, _dists().Deterministic):
                loc, total = inner.loc, np.broadcast_to(scale, inner.loc.shape)
            elif isinstance(inner, _dists().Normal):
                loc, total = inner.loc, np.sqrt(np.square(inner.stddev()) + np.square(scale))
            else:
                raise UnsupportedError(
                    "gaussian_noise: distribution() needs a deterministic or normal inner "
                    f"distribution, got {type(inner).__name__}"
                )
            out_dists.append(
                _dists().Normal(loc, total.astype(inner.dtype), inner.event_ndims, inner.dtype)
            )
        return out_dists


class _OUNoise(Deriver):
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


class _Mixture(Deriver):
    """``mixture``: per batch entry the action of component i, with probability weights[i]."""

    no_distribution = (
        "mixture: this policy has no distribution(): its components may be of different "
        "families; distribution_params() gives each component's parameters"
    )

    def __init__(self, components: list[Deriver], weights: list[float], clips):
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


class MaskCheck:
    """The no-allowed-action check of a bundle's declared action mask (``policy.action_mask``).

    A masked policy's graph gives masked actions the lowest logit, so it never picks
    one, but an entry whose mask allows nothing would still get an action; the
    runtime refuses it (NoAllowedActionError naming the entry) before running the
    graph. On every call: one ``bytes`` search for a row of zeros (a fraction of a
    microsecond at batch 1, a few at 256); numpy finds the entry only when one turns up
    (a zero run may also straddle two rows: then numpy clears it).

    Args:
      index: the mask's position among the graph inputs.
      label: its input name, e.g. ``observation/mask``.
      count: the number of actions (the mask's last dim).
      itemsize: the bytes of one mask value (of the spec's dtype).
    """

    __slots__ = ("index", "itemsize", "label", "zero_row")

    def __init__(self, index: int, label: str, count: int, itemsize: int):
        self.index = index
        self.label = label
        self.itemsize = itemsize
        self.zero_row = b"\0" * (count * itemsize)

    @classmethod
    def build(
        cls, name: Any, time_step_spec: Any, action_spec: Any, input_names: list[str], where: Any
    ) -> MaskCheck | None:
        """The check for the manifest's ``policy.action_mask`` (None: the bundle has none).

        Raises:
          BundleError: a mask that is no observation input, not integer or bool, or
            whose last dim is not the number of actions of a single discrete action.
        """
        if name is None:
            return None
        specs = dict(nest.flatten_with_paths(time_step_spec.observation, "observation"))
        spec = specs.get(name)
        if spec is None:
            raise BundleError(
                f"{where}: policy.action_mask: expected one of the observation inputs "
                f"{sorted(specs)}, got {name!r}"
            )
        leaves = nest.flatten(action_spec)
        action = leaves[0] if len(leaves) == 1 else None
        if (
            not isinstance(action, array_spec.BoundedArraySpec)
            or action.dtype.kind not in "iu"
            or action.shape.count(1) != len(action.shape)
        ):
            raise BundleError(
                f"{where}: policy.action_mask: expected a single discrete action of one element "
                f"to mask, got {action_spec}"
            )
        count = int(np.max(action.maximum)) - int(np.min(action.minimum)) + 1
        if spec.dtype.kind not in "biu" or not spec.shape or spec.shape[-1] != count:
            raise BundleError(
                f"{where}: {name}: expected an int or bool mask of shape (..., {count}) (one "
                f"entry per action), got {spec.dtype.name} {spec.shape}"
            )
        return cls(input_names.index(name), name, count, spec.dtype.itemsize)

    def check(self, arrays: list[Any], outer: tuple[int, ...]) -> None:
        """Raises NoAllowedActionError for the first entry whose mask allows nothing.

        Args:
          arrays: the graph inputs (one batch dim, flattened from ``outer``, or none).
          outer: the caller's batch dims.
        """
        mask = arrays[self.index]
        # C order: each row is a run of zero_row's length; another dtype (unvalidated
        # inputs) gets numpy's check.
        if mask.itemsize == self.itemsize and self.zero_row not in mask.tobytes():
            return
        if len(outer) > 1:
            mask = mask.reshape(tuple(outer) + mask.shape[1:])
        action_masks.check_rows(mask, tuple(outer), self.label)


class DerivationBuilder:
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
                return _Sample(named_leaves(params, prefix), clips)
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
