"""How a bundle policy derives actions from its graph's parameters (numpy, TF-free).

A bundle's graph computes distribution *parameters* (docs/bundle-format.md); the
manifest's action description (``toolkit.distribution_families``) says how actions
come from them: plain sampling, epsilon-greedy, Gaussian and OU noise, mixtures.
``DerivationBuilder`` compiles that description once at load into a tree of
``Deriver``s, which ``runtimes.policy.BundlePolicy`` calls on every step.

Over 600 lines on purpose: each deriver sits beside the compiled sampler that replaces
its general numpy path on small leaves (same values, dtypes and random stream; tested
against each other in tests/runtimes/test_fast_paths.py), and they share the clip
bounds and the small-leaf helpers.
"""

from __future__ import annotations

import _thread
import abc
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from toolkit import distribution_families as families
from toolkit import nest
from toolkit.errors import BundleError, SpecMismatchError, UnsupportedError
from toolkit.specs import array_spec

try:  # the clip ufunc: np.clip's Python wrapper costs microseconds on small arrays
    from numpy._core.umath import clip as _clip
except ImportError:  # numpy < 2
    from numpy.core.umath import clip as _clip

# The ufuncs the compiled samplers call with ``out=``: each call costs a few thousand
# instructions whatever the size, so the samplers make as few as the formula allows.
_add, _multiply, _tanh = np.add, np.multiply, np.tanh

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
    """Turns graph outputs (one batch dim) into action leaves, in action-spec order.

    ``clips`` holds one ``_Clip`` per action leaf (None: not clipped). Every derivation
    ends by clipping, so a clipped leaf of the spec's dtype is within the spec's bounds
    whatever the graph gave: the policy's output check skips its bounds (runtimes.policy).
    """

    clips: list[_Clip | None]

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
        return [a if c is None else c(a) for a, c in zip(actions, self.clips, strict=False)]


class _Clip:
    """Clips one action leaf to its spec's bounds (cast to the spec's dtype).

    Bounds whose elements are all equal are kept as 0-d arrays: numpy broadcasts a 0-d
    operand far faster than an event-shaped one (clipping a (256, 2) float32 array:
    6.4k instructions against 47k, callgrind). Other bounds are broadcast to the batch's
    shape once per shape, for the same reason. The values are those of clipping with the
    spec's bounds as they are. Float bounds also come as float64 (``wide``), for clipping
    float64 intermediates in place: the same numbers, without a mixed-dtype ufunc.
    """

    __slots__ = ("_full", "high", "high64", "low", "low64")

    #: batch shapes whose broadcast bounds are kept (per leaf)
    MAX_SHAPES = 4

    def __init__(self, low: np.ndarray, high: np.ndarray):
        self.low, self.high = _compact(low), _compact(high)
        self.low64 = self.high64 = None
        if low.dtype.kind == "f":
            self.low64, self.high64 = self.low.astype(np.float64), self.high.astype(np.float64)
        self._full: dict[tuple, tuple[np.ndarray, np.ndarray]] | None = (
            {} if self.low.ndim or self.high.ndim else None
        )

    def __call__(
        self, a: np.ndarray, out: np.ndarray | None = None, wide: bool = False
    ) -> np.ndarray:
        """``a`` clipped, into a new array or ``out``; ``wide``: with the float64 bounds."""
        low, high = (self.low64, self.high64) if wide else (self.low, self.high)
        full = self._full
        if full is not None and a.ndim > low.ndim:
            key = (a.shape, wide)
            bounds = full.get(key)
            if bounds is None:
                try:
                    bounds = tuple(
                        np.ascontiguousarray(np.broadcast_to(b, a.shape)) for b in (low, high)
                    )
                except ValueError:  # a shape unlike the spec's: the plain clip says so
                    bounds = (low, high)
                else:
                    if len(full) >= self.MAX_SHAPES:
                        full.clear()
                    full[key] = bounds
            low, high = bounds
        if out is None:
            return _clip(a, low, high)
        return _clip(a, low, high, out=out)


def _compact(bound: np.ndarray) -> np.ndarray:
    """``bound`` as a 0-d array when all its elements are equal (see ``_Clip``)."""
    flat = bound.reshape(-1)
    if flat.size and bool((flat == flat[0]).all()):
        return flat[:1].reshape(())
    return bound


# --- compiled samplers -----------------------------------------------------------------
#
# One function per action leaf, made at load, drawing exactly what the leaf's numpy
# distribution (runtimes.distributions) draws and computing the same float64 formula in
# place: the same values, dtypes and Generator stream as ``Leaf.distribution(out).sample``
# (tests/runtimes/test_fast_paths.py), without building a distribution object and its
# temporaries on every call. A numpy call costs a few thousand instructions whatever the
# size, so a leaf of at most ``_SMALL`` elements (one action of a few dims) is computed
# in Python floats instead: IEEE doubles as numpy's float64, the one rounding to the
# action's dtype by numpy.

#: Elements of a leaf below which the samplers compute in Python floats.
_SMALL = 8


def _sampler(
    leaf: Leaf, clip: _Clip | None
) -> Callable[[dict[str, np.ndarray], np.random.Generator], np.ndarray]:
    """The leaf's sample, clipped (``clip``) as the derivation then does."""
    family, names = leaf.family, leaf.names
    dtype = np.dtype(leaf.static["dtype"])
    if family == families.DETERMINISTIC:
        (loc_name,) = names
        if clip is None:
            return lambda out, rng: out[loc_name].astype(dtype, copy=False)
        return lambda out, rng: clip(out[loc_name].astype(dtype, copy=False))
    if family == families.NORMAL:
        return _normal_sampler(names, dtype, clip)
    if family == families.TANH_NORMAL:
        return _tanh_normal_sampler(names, dtype, clip)
    if family == families.CATEGORICAL:
        return _categorical_sampler(names, dtype, int(leaf.static.get("shift", 0)), clip)
    if clip is None:  # uniform (random policies): rare, through its distribution
        return lambda out, rng: leaf.distribution(out).sample(rng)
    return lambda out, rng: clip(leaf.distribution(out).sample(rng))


def _python_bounds(clip: _Clip | None, dtype: np.dtype) -> tuple | None:
    """A float leaf's clip bounds for Python math: ``()`` (no clip), ``(low, high)`` as
    floats when uniform, else as lists over the event's elements.

    None when the small path cannot reproduce numpy exactly: an integer or other dtype,
    or bounds of another dtype than the leaf's (their clip would promote).
    """
    if dtype not in _FLOATS:
        return None
    if clip is None:
        return ()
    if clip.low.dtype != dtype or clip.high.dtype != dtype:
        return None
    return _python_values(clip.low), _python_values(clip.high)


def _python_values(array: np.ndarray) -> float | list[float]:
    """A 0-d array as a float, others as a list of floats (C order)."""
    return array.item() if array.ndim == 0 else array.ravel().tolist()


def _clip_values(values: list[float], bounds: tuple) -> list[float]:
    """numpy's clip of Python floats: NaN passes, a value equal to a bound is kept."""
    if not bounds:
        return values
    low, high = bounds
    if type(low) is float and type(high) is float:
        return [low if x < low else (high if x > high else x) for x in values]
    size = len(values)
    return [
        lo if x < lo else (hi if x > hi else x)
        for x, lo, hi in zip(values, _repeat_list(low, size), _repeat_list(high, size), strict=True)
    ]


def _repeat_list(value: float | list[float], size: int) -> list[float]:
    """A float, or a list over one event's elements, over ``size`` elements."""
    return [value] * size if type(value) is float else value * (size // len(value))


def _finish(values: list[float], bounds: tuple, dtype: np.dtype, shape: tuple) -> np.ndarray:
    """Python floats clipped (as numpy, in float64) and rounded once to ``dtype``.

    Clipping before the rounding gives what rounding then clipping gives: the bounds are
    values of ``dtype`` and rounding to nearest is monotonic.
    """
    return np.array(_clip_values(values, bounds), dtype).reshape(shape)


def _normal_sampler(names: tuple[str, ...], dtype: np.dtype, clip: _Clip | None) -> Callable:
    loc_name, scale_name = names
    python = _python_bounds(clip, dtype)

    def normal(out, rng):
        loc, scale = out[loc_name], out[scale_name]
        if loc.shape == scale.shape:
            if python is not None and loc.size <= _SMALL and _float_params(loc, scale):
                noise = rng.standard_normal(loc.size).tolist()
                values = [
                    m + s * z
                    for m, s, z in zip(
                        loc.ravel().tolist(), scale.ravel().tolist(), noise, strict=True
                    )
                ]
                return _finish(values, python, dtype, loc.shape)
            shape = loc.shape
        else:
            shape = _broadcast(loc, scale)
        x = rng.standard_normal(shape)  # Normal.sample: loc + scale * noise, in float64
        _multiply(x, scale, out=x)
        _add(x, loc, out=x)
        x = x.astype(dtype, copy=False)
        return x if clip is None else clip(x)

    return normal


class NormalBlock:
    """A Generator's standard normals, drawn ``SIZE`` at a time and handed out in order.

    Invisible in the random stream: numpy's Generator fills an array by drawing its
    elements one after the other, so the values handed out are those that draws of a
    few at a time would give; and before anything else draws from the generator,
    ``sync`` puts it back where those draws would have left it (the state from before
    the block, then the normals handed out drawn again). What it saves: a
    ``standard_normal(2)`` and its ``tolist()`` cost about 6k instructions, a slice of
    the block's list a few hundred (callgrind). ``take`` is safe across threads (each
    normal goes to one caller); ``off`` syncs and ends the block for good: the policy's
    generator is then drawn from directly, as by every other path.
    """

    #: normals per block (a refill costs about 70k instructions: the generator's state,
    #: the draws and their list)
    SIZE = 256

    __slots__ = ("lock", "on", "pos", "rng", "state", "values")

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.lock = _thread.allocate_lock()
        self.values: list[float] = []  # empty when off: every take goes to _next
        self.pos = 0
        self.state: dict[str, Any] | None = None  # the generator's state before the block
        self.on = True

    def take(self, n: int) -> list[float] | None:
        """The next ``n`` normals of the stream; None once the block is off."""
        lock = self.lock
        lock.acquire()  # (acquire and release cost half of ``with lock``)
        try:
            pos = self.pos
            end = pos + n
            values = self.values
            if end <= len(values):
                self.pos = end
                return values[pos:end]
            return self._next(n)
        finally:
            lock.release()

    def _next(self, n: int) -> list[float] | None:
        """The rest of this block, then the next one's first normals (lock held)."""
        if not self.on:
            return None
        head = self.values[self.pos :]
        self.state = self.rng.bit_generator.state
        values = self.values = self.rng.standard_normal(max(self.SIZE, n)).tolist()
        self.pos = end = n - len(head)
        return head + values[:end]

    def sync(self) -> None:
        """Puts the generator where element-wise draws would have left it."""
        with self.lock:
            self._sync()

    def off(self) -> None:
        """Syncs and hands out nothing more (``take`` returns None)."""
        with self.lock:
            self._sync()
            self.on = False

    def _sync(self) -> None:
        if self.state is not None:
            self.rng.bit_generator.state = self.state
            if self.pos:
                self.rng.standard_normal(self.pos)  # drawn again: handed out already
        self.state, self.values, self.pos = None, [], 0


def _float_params(*arrays: np.ndarray) -> bool:
    """Whether numpy promotes these parameters to float64 exactly as Python floats are
    (float32 and float64 values convert to doubles exactly)."""
    return all(a.dtype in _FLOATS for a in arrays)


_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _categorical_sampler(
    names: tuple[str, ...], dtype: np.dtype, shift: int, clip: _Clip | None
) -> Callable:
    (logits_name,) = names

    def categorical(out, rng):
        logits = out[logits_name]
        x = rng.gumbel(size=logits.shape)  # Categorical.sample: Gumbel-max in float64
        _add(x, logits, out=x)
        index = x.argmax(axis=-1)
        if shift:
            index += shift
        index = index.astype(dtype, copy=False)
        return index if clip is None else clip(index)

    return categorical


def _broadcast(*arrays: np.ndarray) -> tuple[int, ...]:
    return np.broadcast_shapes(*(a.shape for a in arrays))


def _tanh_normal_sampler(names: tuple[str, ...], dtype: np.dtype, clip: _Clip | None) -> Callable:
    loc_name, scale_name, low_name, high_name = names
    # The centre and half-width come from the graph's low and high outputs, which are
    # the spec's bounds in every row: computed as TanhNormal does, kept while the bytes
    # of low and high are the same (comparing them costs less than recomputing).
    last: list[Any] = [None]

    def centre_magnitude(low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        key = (low.dtype, low.shape, low.tobytes(), high.dtype, high.shape, high.tobytes())
        cached = last[0]
        if cached is not None and cached[0] == key:
            return cached[1]
        pair = _dists().tanh_centre_magnitude(low, high)
        last[0] = (key, pair)
        return pair

    def tanh_normal(out, rng):
        loc, scale = out[loc_name], out[scale_name]
        centre, magnitude = centre_magnitude(out[low_name], out[high_name])
        x = rng.standard_normal(_broadcast(loc, scale, centre))
        _multiply(x, scale, out=x)  # TanhNormal.sample: c + m * tanh(loc + scale * noise)
        _add(x, loc, out=x)
        _tanh(x, out=x)
        _multiply(x, magnitude, out=x)
        _add(x, centre, out=x)
        x = x.astype(dtype, copy=False)
        return x if clip is None else clip(x)

    return tanh_normal


class _Sample(Deriver):
    """``sample``: each leaf sampled from its distribution (a deterministic one: its loc)."""

    def __init__(self, leaves: list[Leaf], clips: list[Any], compiled: bool = True):
        self.leaves = leaves
        self.clips = clips
        if compiled:
            samplers = [_sampler(leaf, clip) for leaf, clip in zip(leaves, clips, strict=False)]
            self.act = _compiled_sample(samplers, self._act_general)

    def act(self, out, rng, want_log_prob):
        return self._act_general(out, rng, want_log_prob)

    def _act_general(self, out, rng, want_log_prob):
        """Through the numpy distributions: the reference, and the log-probabilities."""
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


def _general(deriver: Deriver) -> Callable:
    """A deriver's general (reference) ``act``: its own where it has a compiled one."""
    return getattr(deriver, "_act_general", deriver.act)


def _compiled_sample(samplers: list[Callable], general: Callable) -> Callable:
    """``_Sample.act`` over compiled samplers (log-probabilities: the general path)."""
    if len(samplers) == 1:
        (sample,) = samplers

        def act_one(out, rng, want_log_prob):
            if want_log_prob:
                return general(out, rng, want_log_prob)
            return [sample(out, rng)], None

        return act_one

    def act(out, rng, want_log_prob):
        if want_log_prob:
            return general(out, rng, want_log_prob)
        return [sample(out, rng) for sample in samplers], None

    return act


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

    def __init__(
        self,
        inner: Deriver,
        scales: list[np.ndarray],
        event_ndims: list[int],
        clips,
        compiled: bool = True,
        shapes: list[tuple[int, ...]] | None = None,
    ):
        self.inner = inner
        self.scales = scales
        self.event_ndims = event_ndims
        self.clips = clips
        if compiled:
            # ``scale * noise`` promotes the spec-dtype scale to float64: the same
            # numbers, converted once (0-d when uniform, see _Clip).
            self._scales64 = [_compact(np.asarray(s, np.float64)) for s in scales]
            self._small = self._small_plan(shapes)
            self._uniform = self._uniform_plan()
            self._row = None if self._uniform is None else self.row_sampler()[1]
            self.act = self._act_compiled

    def act(self, out, rng, want_log_prob):
        return self._act_general(out, rng, want_log_prob)

    def _small_plan(self, shapes: list[tuple[int, ...]] | None) -> tuple | None:
        """What the Python-float path needs for one deterministic float leaf, or None."""
        inner = self.inner
        if not (
            shapes is not None
            and isinstance(inner, _Sample)
            and len(inner.leaves) == 1
            and inner.leaves[0].family == families.DETERMINISTIC
        ):
            return None
        leaf = inner.leaves[0]
        dtype = np.dtype(leaf.static["dtype"])
        inner_bounds = _python_bounds(inner.clips[0], dtype)
        bounds = _python_bounds(self.clips[0], dtype)
        if inner_bounds is None or bounds is None:
            return None
        scale = np.broadcast_to(self._scales64[0], shapes[0])
        scale = _python_values(_compact(np.ascontiguousarray(scale)))
        return leaf.names[0], dtype, inner_bounds, bounds, scale

    def _uniform_plan(self) -> tuple | None:
        """``(low, high, inner low, inner high, scale)`` as floats for ``_act_row``: both
        clips (an absent one: infinite bounds, which clip nothing) and the scale uniform."""
        if self._small is None:
            return None
        _, _, inner, outer, scale = self._small
        if type(scale) is not float:
            return None
        bounds = []
        for clip in (outer, inner):
            if not clip:
                clip = (-np.inf, np.inf)
            if type(clip[0]) is not float or type(clip[1]) is not float:
                return None
            bounds += clip
        return (*bounds, scale)

    def _act_compiled(self, out, rng, want_log_prob):
        if want_log_prob:
            return self._act_general(out, rng, want_log_prob)
        small = self._small
        if small is not None:
            name, dtype, inner_bounds, bounds, scale = small
            loc = out[name]
            if loc.size <= _SMALL and loc.dtype in _FLOATS:
                if self._uniform is not None and loc.ndim == 2 and len(loc) == 1:
                    return [self._act_row(loc, dtype, rng)], None
                # the inner action (the loc in the leaf's dtype, clipped) + scale * noise
                values = _clip_values(loc.astype(dtype, copy=False).ravel().tolist(), inner_bounds)
                noise = rng.standard_normal(len(values)).tolist()
                if type(scale) is float:
                    values = [v + scale * z for v, z in zip(values, noise, strict=True)]
                else:
                    scales = _repeat_list(scale, len(values))
                    values = [v + s * z for v, s, z in zip(values, scales, noise, strict=True)]
                return [_finish(values, bounds, dtype, loc.shape)], None
            return self._act_one(loc, dtype, rng), None
        clean, _ = self.inner.act(out, rng, False)
        noisy = []
        for a, scale in zip(clean, self._scales64, strict=True):
            x = rng.standard_normal(a.shape)  # a + scale * noise in float64, in place
            _multiply(x, scale, out=x)
            _add(x, a, out=x)
            noisy.append(x.astype(a.dtype, copy=False))
        return self._clip(noisy), None

    def _act_row(self, loc: np.ndarray, dtype: np.dtype, rng: np.random.Generator) -> np.ndarray:
        """One row of a few elements, both clips and the scale uniform: one Python loop
        (``row_sampler``'s), with its batch dim."""
        return self._row(loc, rng)[None]

    def row_sampler(self) -> tuple[str, Any] | None:
        """``(parameter name, sample)`` for the policy's unbatched hot path, or None.

        ``sample(loc, rng, block=None)`` is ``act({name: loc}, rng, False)[0][0][0]`` for a
        ``loc`` of one row (the graph's output at batch 1), without the dict, the list of
        leaves and the batch dim made and taken apart again (callgrind: see
        runtimes/policy.py); any other ``loc`` (another dtype or size) goes through
        ``act``. ``block``: a NormalBlock over ``rng`` to take the noise from (the same
        values). ``loc`` may be a backend's own buffer: it is read, never kept.
        """
        if getattr(self, "_uniform", None) is None:  # the general (uncompiled) deriver
            return None
        name, dtype = self._small[0], self._small[1]
        low, high, inner_low, inner_high, scale = self._uniform
        act = self._act_compiled

        def sample(
            loc: np.ndarray, rng: np.random.Generator, block: NormalBlock | None = None
        ) -> np.ndarray:
            kind = loc.dtype  # by identity first: ``in`` compares with dtype.__eq__
            if not (
                loc.ndim == 2
                and len(loc) == 1
                and loc.size <= _SMALL
                and (kind is dtype or kind in _FLOATS)
            ):
                if block is not None:
                    block.sync()  # act draws from rng itself
                return act({name: loc.copy()}, rng, False)[0][0][0]
            # The row in one loop, inline (the bounds and scale are this closure's):
            # the inner clip, plus scale * noise in float64, the outer clip, one rounding.
            # (astype's keyword parsing costs ~1k instructions: skipped for the dtype)
            row = (loc if kind is dtype else loc.astype(dtype, copy=False)).tolist()[0]
            noise = None if block is None else block.take(len(row))
            if noise is None:
                noise = rng.standard_normal(len(row)).tolist()
            values = []
            for v, z in zip(row, noise):  # noqa: B905 (one noise per element; no keyword parsing)
                v = inner_low if v < inner_low else (inner_high if v > inner_high else v)
                x = v + scale * z
                values.append(low if x < low else (high if x > high else x))
            return np.array(values, dtype)

        return name, sample

    def batch_sampler(self) -> tuple[str, Any] | None:
        """``(parameter name, sample)`` for the policy's batched hot path, or None.

        ``sample(loc, rng)`` is ``act({name: loc}, rng, False)[0][0]`` for a ``loc`` with a
        batch dim (the graph's output), without the dict and the list of leaves; it
        always returns a new array, so ``loc`` may be a backend's own buffer (read, never
        kept or handed out). A loc of the leaf's dtype above ``_SMALL`` elements is
        computed as ``_act_one`` does with one numpy call fewer: the inner clip in the
        leaf's dtype (its bounds are values of that dtype, so this is the float64 clip
        of the float64 copy) into a new array, added to the float64 noise; anything
        else goes through ``act``.
        """
        if getattr(self, "_small", None) is None:  # the general (uncompiled) deriver
            return None
        name, dtype = self._small[0], self._small[1]
        inner, outer, scale = self.inner.clips[0], self.clips[0], self._scales64[0]
        act = self._act_compiled

        def sample(loc: np.ndarray, rng: np.random.Generator) -> np.ndarray:
            if loc.dtype is not dtype or loc.size <= _SMALL:  # (a 0-d loc is small too)
                return act({name: loc.copy()}, rng, False)[0][0]
            clean = loc if inner is None else inner(loc)  # read now, never kept
            x = rng.standard_normal(loc.shape)  # clean + scale * noise, in float64, in place
            _multiply(x, scale, out=x)
            _add(x, clean, out=x)
            if outer is not None:
                outer(x, out=x, wide=True)
            return x.astype(dtype)

        return name, sample

    def _act_one(self, loc: np.ndarray, dtype: np.dtype, rng: np.random.Generator) -> list:
        """One deterministic float leaf, in numpy, in float64 throughout.

        The leaf's values are exact in float64, so clipping them there is the inner
        clip; the noise is added in float64 as the formula does; the outer clip also
        happens in float64, before the rounding to the leaf's dtype: the bounds are
        values of that dtype and rounding is monotonic, so this is the formula's
        rounding, then clipping. Same-dtype ufuncs in place cost half what mixed ones do.
        """
        clean = np.array(loc.astype(dtype, copy=False), np.float64)  # a copy, ours
        inner, outer = self.inner.clips[0], self.clips[0]
        if inner is not None:
            inner(clean, out=clean, wide=True)
        x = rng.standard_normal(loc.shape)
        _multiply(x, self._scales64[0], out=x)
        _add(x, clean, out=x)
        if outer is not None:
            outer(x, out=x, wide=True)
        return [x.astype(dtype, copy=False)]

    def _act_general(self, out, rng, want_log_prob):
        """The formula as written: the reference, and the log-probabilities."""
        clean, _ = _general(self.inner)(out, rng, False)
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
        from toolkit import action_masks  # here, not at import: a runtime's cold start

        action_masks.check_rows(mask, tuple(outer), self.label)


class DerivationBuilder:
    """Compiles a manifest's action description into a tree of derivers.

    Args:
      action_spec: the policy's action spec.
      state_spec: its state spec.
      compiled: give ``sample`` and ``gaussian_noise`` their compiled samplers (the
        default); False builds the general derivers only, the reference the compiled
        ones are tested against.
    """

    def __init__(self, action_spec: Any, state_spec: Any, *, compiled: bool = True):
        self.compiled = compiled
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
                return _Sample(named_leaves(params, prefix), clips, self.compiled)
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
                shapes = [s.shape for s in self.action_leaves]
                return _GaussianNoise(inner, scales, event_ndims, clips, self.compiled, shapes)
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


def _clip_bounds(spec: Any) -> _Clip | None:
    if not isinstance(spec, array_spec.BoundedArraySpec) or spec.dtype.kind == "b":
        return None
    low = np.broadcast_to(spec.minimum, spec.shape).astype(spec.dtype)
    high = np.broadcast_to(spec.maximum, spec.shape).astype(spec.dtype)
    return _Clip(low, high)
