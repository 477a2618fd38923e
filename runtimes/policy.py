"""The Python-policy interface over an exported bundle, shared by both backends (TF-free).

A bundle's graph computes distribution *parameters*, the next policy state and info
(docs/bundle-format.md). ``BundlePolicy`` turns time steps into the graph's flat
inputs, asks its backend to run the graph (``_run``), and derives the action from the
parameters with a numpy Generator, following the manifest's action description
(``toolkit.distribution_families``): plain sampling, epsilon-greedy, Gaussian and OU
noise, mixtures. The onnx backend (runtimes.backends.onnx) and the tf backend
(runtimes.backends.tf) differ only in how they run the graph and swap weights.

The hot path of ``action()`` (PyPolicy's: validate, compute, check the step) is kept
lean: names, dtypes, shapes, bounds and the derivation are compiled once at load; a
call with a well-formed TimeStep of numpy arrays costs a few identity checks on top of
running the graph, and anything else falls back to the full validation of ``PyPolicy``
(which converts safe dtypes and names what is wrong). The action derivation itself is
in ``runtimes.derivations``, the per-call value checks in ``runtimes.checks``.

Over 600 lines on purpose: one class, the Python-policy interface every backend shares
(nested and flat entry points, state, seeds, weights); its per-call path stays in one
place so each call pays for attribute lookups on one object only.
"""

from __future__ import annotations

import _thread
import abc
import functools
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from runtimes import derivations
from runtimes.checks import (
    LeafCheck,
    flatten_like,
    leaf_within,
    leaves_within,
    step_types_ok,
)
from toolkit import distribution_families as families
from toolkit import nest
from toolkit.bundle.layout import Layout, thaw
from toolkit.errors import (
    BundleError,
    PolicyError,
    SpecMismatchError,
    ToolkitError,
    UnsupportedError,
)
from toolkit.policies.py_policy import PyPolicy, Seed
from toolkit.trajectories.policy_step import PolicyInfo, PolicyStep
from toolkit.trajectories.time_step import TimeStep

__all__ = ["LOG_PROBABILITY", "BundlePolicy", "as_generator", "check_fingerprint"]

LOG_PROBABILITY = families.LOG_PROBABILITY
_NDARRAY = np.ndarray
#: tuple.__new__ builds a PolicyStep as its own __new__ does, without the Python frame.
_new_tuple = tuple.__new__


def as_generator(seed: Seed, default: np.random.Generator | None) -> np.random.Generator:
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


# --- the policy ----------------------------------------------------------------------------


class _ProvenClips:
    """``BundlePolicy._graph_clips``, made on first read under the policy's proof lock and
    then kept in the instance's ``__dict__`` (which a non-data descriptor yields to: later
    reads are a plain attribute lookup). Not ``functools.cached_property``: it must not
    write a value after ``_keep_proof`` has written a newer one (3.12's takes no lock)."""

    def __get__(self, policy: Any, owner: Any = None) -> Any:
        if policy is None:
            return self
        with policy._proof_lock:
            proven = policy.__dict__.get("_graph_clips")
            if proven is None:
                proven = policy.__dict__["_graph_clips"] = policy._prove_clips()
        return proven


class BundlePolicy(PyPolicy):
    """A bundle's policy: the TF-Agents policies tutorial's Python-policy interface over a graph.

    Subclasses run the graph (``_run``) and swap weights; this class does the rest.

    Args:
      layout: the bundle's layout (toolkit.bundle.read_layout).
      bundle_dir: the bundle folder.
      seed: seeds the policy's own Generator, used by ``action(seed=None)``.
      validate_args: check time steps and states against the specs (converting safe
        dtypes, e.g. float64 observations into a float32 spec).
    """

    backend = ""

    def __init__(
        self,
        layout: Layout,
        bundle_dir: str | os.PathLike,
        *,
        seed: int | None = None,
        validate_args: bool = True,
        check_finite: bool = False,
    ):
        specs = layout.specs
        signature = layout.signatures.get("distribution")
        if signature is None:
            raise BundleError(f"{bundle_dir}: the manifest has no 'distribution' signature")
        super().__init__(
            specs.time_step,
            specs.action,
            specs.policy_state,
            specs.info,
            validate_args=validate_args,
            check_finite=check_finite,
        )
        self._bundle = layout
        self._bundle_dir = Path(bundle_dir)
        # The Generator is made on first use (``_generator``): numpy.random costs about
        # 10 ms of a cold start, and greedy policies never sample. An int seed gives the
        # same stream made then as made now; None, fresh OS entropy either way. Other
        # seeds numpy accepts (a SeedSequence...) are taken now, as numpy checks them.
        self._seed = seed
        self._rng: np.random.Generator | None = None
        self._rng_lock = _thread.allocate_lock()  # threading's Lock; threading costs ~0.7 ms
        self._proof_lock = _thread.allocate_lock()  # _graph_clips (see _ProvenClips)
        # The unbatched sampled hot path takes its noise from a block of the generator's
        # normals (derivations.NormalBlock: the same stream); any other use of the
        # generator ends the block first (``_generator``).
        self._block: derivations.NormalBlock | None = None
        if seed is not None and not (
            isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0
        ):
            self._rng = np.random.default_rng(seed)
        self._train_step = layout.train_step
        # The derivation builder reads plain dicts: the policy's own copy.
        description = self._description = thaw(layout.action)
        self._emit_log_probability = bool(description.get("emit_log_probability", False))
        self._graph_info_spec = specs.graph_info
        self._params_tree = params_tree = layout.distribution
        state_spec, action_spec = specs.policy_state, specs.action

        # Graph I/O names, all by nest path (docs/bundle-format.md).
        names = layout.names
        self._input_names = list(names.inputs)
        self._state_names = list(names.states)
        self._next_state_names = list(names.next_states)
        self._info_names = list(names.infos)
        action_names = list(names.actions)
        graph_inputs = signature.input_names
        graph_outputs = set(signature.output_names)
        missing = sorted(set(self._input_names) ^ set(graph_inputs))
        if missing:
            raise BundleError(
                f"{bundle_dir}: the graph's inputs {sorted(graph_inputs)} do not match the "
                f"specs' {sorted(self._input_names)}"
            )
        self._mask_check = derivations.MaskCheck.build(
            layout.action_mask,
            specs.time_step,
            action_spec,
            self._input_names,
            bundle_dir,
        )
        self._deriver = derivations.DerivationBuilder(action_spec, state_spec).build(
            description, params_tree, "distribution", () if self.is_stateful else None
        )
        self._param_leaves = derivations.named_leaves(params_tree, "distribution")
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
        needed = (action_names if self._direct else param_names) + self._next_state_names
        needed += self._info_names
        missing = sorted(set(needed) - graph_outputs)
        if missing:
            raise BundleError(f"{bundle_dir}: the graph lacks the outputs {missing}")
        self._fetch = list(dict.fromkeys(needed))
        self._single_action = not nest.is_nested(action_spec)
        self._plain_output = (
            self._single_action
            and not self.is_stateful
            and not self._info_names
            and not self._emit_log_probability
        )
        self._state_leaf_specs = nest.flatten(state_spec)
        self._state_layout = [(s.dtype, s.shape) for s in self._state_leaf_specs]
        # check_finite: every call takes the general path, which checks observations.
        self._fast = None if check_finite else self._fast_layout(specs.time_step)
        self._action_checks = [LeafCheck.of(s) for s in nest.flatten(self.action_spec)]
        self._no_clips = [None] * len(self._action_checks)  # what a graph's own action has
        self._state_checks = [LeafCheck.of(s) for s in nest.flatten(self.policy_state_spec)]
        self._info_checks = [LeafCheck.of(s) for s in nest.flatten(self.info_spec)]
        # The hottest call, compiled: one unbatched TimeStep of exactly-typed arrays into a
        # graph that outputs the one action itself (greedy and deterministic policies).
        # The hot path's checks, flat: the four TimeStep fields' (dtype, shape) in a row
        # (unrolled, they cost a third of a loop), and whether inputs go to the graph as
        # they came (validated flat arrays, no state).
        self._fast_flat = None if self._fast is None else tuple(x for p in self._fast for x in p)
        self._batch_shapes: dict[tuple[int, ...], tuple] = {}
        self._flat_inputs = self._validate_args and self._fast is not None
        # The last PolicyStep whose leaves _policy_step checked flat (see _check_step).
        self._checked: PolicyStep | None = None
        # A scalar action spec: the graph's batch of one comes out as a numpy scalar, whose
        # type alone tells its dtype (its attributes cost more than an array's).
        check = self._action_checks[0]
        self._scalar_type = (
            check.dtype.type
            if self._plain_output and check.shape == () and check.low is not None
            else None
        )
        self._row_sample = self._row_sampler(self._deriver)
        # A recurrent policy whose graph outputs its one action and the next state, and
        # nothing else (a greedy LSTM Q policy): its unbatched step is built from the
        # outputs by position (``_state_row``), without the dict and lists of the general
        # ``_policy_step``.
        self._state_row = (
            self._direct
            and self._single_action
            and bool(self._next_state_names)
            and not self._info_names
            and not self._emit_log_probability
            and self._fetch == action_names + self._next_state_names
        )

    def _row_sampler(self, deriver: Any) -> tuple[int, Any] | None:
        """(fetch index, sample) when the deriver draws an unbatched row directly (see
        ``_GaussianNoise.row_sampler``): the sampled hot path of a plain policy."""
        compiled = getattr(deriver, "row_sampler", None)
        plan = compiled() if compiled is not None and self._plain_output else None
        # (dtype, shape) of a row whose bounds the derivation clipped: the output check of
        # such a step (``_check_step``) is done inline on the row path.
        check = self._action_checks[0]
        clipped = self._plain_output and deriver.clips[0] is not None
        self._row_exact = (check.dtype, check.shape) if clipped else None
        # The batched sampled hot path likewise (``_GaussianNoise.batch_sampler``): its
        # sample is always a new array, so the graph's outputs are read in place.
        batched = getattr(deriver, "batch_sampler", None)
        batch = batched() if batched is not None and self._plain_output else None
        self._batch_sample = None
        if batch is not None and not self._direct and batch[0] in self._fetch:
            self._batch_sample = self._fetch.index(batch[0]), batch[1]
        if plan is None or self._direct or plan[0] not in self._fetch:
            return None
        return self._fetch.index(plan[0]), plan[1]

    # optree's compiled structures, for nested actions, states and info, which the hot
    # path cuts and rebuilds on every call; made on first use, as flat policies (one
    # action, no state, no info) need none and then never import optree.

    @functools.cached_property
    def _action_treespec(self) -> Any:
        return nest.tree_spec(self.action_spec)

    @functools.cached_property
    def _state_treespec(self) -> Any:
        return nest.tree_spec(self.policy_state_spec)

    @functools.cached_property
    def _info_treespec(self) -> Any:
        return nest.tree_spec(self._graph_info_spec)

    @functools.cached_property
    def _info_spec_treespec(self) -> Any:
        return nest.tree_spec(self.info_spec)

    #: Per action leaf of a direct policy (the graph outputs its action): True where the
    #: graph itself provably clips that output to within the spec's bounds, so a batched
    #: call compares only its dtype and shape, else None. Made on the first batched call
    #: (``_ProvenClips``); a backend that replaces its graph runner keeps it true of every
    #: runner a call may still be using (``_keep_proof``).
    _graph_clips = _ProvenClips()

    def _prove_clips(self) -> list[Any]:
        """What this backend's graph runner proves (``_graph_clips``): nothing unless the
        backend overrides this."""
        return list(self._no_clips)

    def _keep_proof(self, proven: list[Any]) -> None:
        """Before a new graph runner is swapped in (``proven``: what it proves): the proof
        becomes what both the old and the new runner prove, so a call still reading the
        old runner's outputs is never let off a comparison the old one needed. A proof
        only ever shrinks (a runner that proves less costs every later call its
        comparison, which is the safe way to be wrong)."""
        with self._proof_lock:
            old = self.__dict__.get("_graph_clips")
            if old is None:
                old = self._prove_clips()  # the old runner's, made now
            self.__dict__["_graph_clips"] = [
                True if a and b else None
                for a, b in zip(old, proven)  # noqa: B905
            ]

    def _generator(self, seed: Seed) -> np.random.Generator:
        """The Generator for one call: the policy's own (made on first use) for None.

        The policy's own is handed out where it is drawn from directly: a block of its
        normals (``_normals``) is synced back into it and ended first.
        """
        if seed is not None:
            return as_generator(seed, None)
        block = self._block
        if block is not None and block.on:
            block.off()
        return self._own_rng()

    def _normals(self) -> derivations.NormalBlock:
        """The block of the policy's own normals for the unbatched sampled path."""
        block = self._block
        if block is None:
            with self._rng_lock:
                if self._block is None:
                    self._block = derivations.NormalBlock(self._own_rng_locked())
                block = self._block
        return block

    def _own_rng_locked(self) -> np.random.Generator:
        if self._rng is None:
            self._rng = np.random.default_rng(self._seed)
        return self._rng

    def _own_rng(self) -> np.random.Generator:
        """The policy's own Generator, made on first use."""
        rng = self._rng
        if rng is None:
            with self._rng_lock:  # two threads' first draws must not share one seed
                rng = self._own_rng_locked()
        return rng

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

    def _run_borrowed(self, arrays: list[np.ndarray], unbatched: bool, fetch: list[str]) -> list:
        """``_run``, whose outputs may be the backend's own buffers: the caller reads them
        before this thread runs the graph again and never hands them out."""
        return self._run(arrays, unbatched, fetch)

    @abc.abstractmethod
    def update_from_checkpoint(self, path: Any, *, step: int | None = None) -> None:
        """Takes the weights (and train step) of a checkpoint: a weights-only checkpoint
        (exporters.save_checkpoint), a training run's ``policy_checkpoints/``, TF-Agents'
        ``policies/checkpoints/``, one of their checkpoints, or a
        ``toolkit.checkpoint_weights.Checkpoint``; a folder gives its latest (or ``step``)."""

    def follow(self, directory: str | os.PathLike, interval: float = 1.0) -> Any:
        """Applies each new complete checkpoint that lands in ``directory``, atomically.

        Checks once before returning, then every ``interval`` seconds on a daemon thread
        (see runtimes.follow): calls in flight finish on the old weights; a corrupt or
        foreign checkpoint is logged once and skipped.

        Returns:
          A ``runtimes.follow.Follower``: ``stop()`` it, or use it as a context manager.
        """
        from runtimes.follow import follow

        return follow(self, directory, interval)

    # --- properties ------------------------------------------------------------------------

    @property
    def train_step(self) -> int | None:
        """The training step of the weights in use (from the export or the last checkpoint)."""
        return self._train_step

    @property
    def metadata(self) -> dict[str, Any]:
        """The user metadata recorded at export (a copy)."""
        return thaw(self._bundle.metadata)

    @property
    def layout(self) -> Layout:
        """The bundle's layout (toolkit.bundle.layout.Layout), read-only."""
        return self._bundle

    @property
    def manifest(self) -> dict[str, Any]:
        """The bundle's manifest (a copy)."""
        return self._bundle.to_json()

    @property
    def bundle_dir(self) -> Path:
        return self._bundle_dir

    @property
    def action_mask_input(self) -> str | None:
        """The observation input holding the action mask (``observation/mask``), or None."""
        return None if self._mask_check is None else self._mask_check.label

    @property
    def action_description(self) -> dict[str, Any]:
        """How actions are derived from the graph's parameters (the manifest's)."""
        import copy

        return copy.deepcopy(self._description)

    def set_action_description(self, description: dict[str, Any]) -> None:
        """Derives actions by ``description`` from the next call on; the graph stays.

        What a collect policy's decayed epsilon needs (Ray collectors take the learner's
        ``export_description()``): the description must be of the bundle's kind (e.g.
        ``epsilon_greedy`` with another ``epsilon``), as the graph's outputs were made
        for it. It is compiled before it is swapped in, so a bad one changes nothing.

        Raises:
          PolicyError: a description of another kind, or one the graph's parameters
            do not fit (naming the field).
        """
        import copy

        kind = self._description.get("kind")
        got = description.get("kind") if isinstance(description, dict) else description
        emit = isinstance(description, dict) and bool(
            description.get("emit_log_probability", False)
        )
        if got != kind or emit != self._emit_log_probability:
            raise PolicyError(
                f"set_action_description: expected a {kind!r} description "
                f"(emit_log_probability {self._emit_log_probability}) as the bundle's, got "
                f"{got!r:.80} (emit_log_probability {emit})"
            )
        try:
            deriver = derivations.DerivationBuilder(self.action_spec, self.policy_state_spec).build(
                description, self._params_tree, "distribution", () if self.is_stateful else None
            )
        except (ToolkitError, TypeError, ValueError) as e:
            raise PolicyError(f"set_action_description: {e}") from e
        self._description = copy.deepcopy(description)
        self._deriver = deriver
        self._row_sample = self._row_sampler(deriver)

    def apply_weights(self, initializers: dict[str, Any], train_step: int | None = None) -> None:
        """Swaps in new weights given as arrays keyed by graph initializer name.

        Only backends that run the graph with replaceable initializers take them (the
        onnx backend); LiteRT models and SavedModels hold theirs as constants or
        variables: this raises for them.

        Raises:
          UnsupportedError: always, here; backends that can override it.
        """
        raise UnsupportedError(
            f"apply_weights: the {self.backend} backend cannot take weights from arrays; load "
            "the bundle with backend='onnx' (or use update_from_checkpoint)"
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({str(self._bundle_dir)!r}, "
            f"policy={self._bundle.policy_class!r}, "
            f"action={self._description.get('kind')!r}, train_step={self._train_step})"
        )

    # --- copies ---------------------------------------------------------------------------

    def __deepcopy__(self, memo: dict[int, Any]) -> BundlePolicy:
        # The graph runner is immutable (weight updates replace it), so copies share it;
        # only the generator is the copy's own.
        import copy

        clone = copy.copy(self)
        if self._block is not None:
            self._block.sync()  # the generator where the draws handed out left it
        clone._rng = copy.deepcopy(self._own_rng(), memo)  # the same draws next
        clone._rng_lock = _thread.allocate_lock()
        clone._proof_lock = _thread.allocate_lock()
        clone._block = None
        clone._after_copy()
        return clone

    def _after_copy(self) -> None:
        """Hook for subclasses whose per-policy resources must not be shared."""

    # --- acting -----------------------------------------------------------------------------

    # PyPolicy.action validates (``_prepare``), computes (``_action``) and checks the
    # step (``_check_step``); here all three are compiled at load for the bundle's specs,
    # so a call with a TimeStep of exactly-typed numpy arrays costs a few identity checks
    # around the graph run, and anything else gets PyPolicy's full validation.

    def _action(self, time_step: Any, policy_state: Any, seed: Seed) -> PolicyStep:
        step_type = time_step[0] if type(time_step) is TimeStep else None
        if (  # the hot path, inline: validated flat arrays and state (see _prepare)
            self._flat_inputs and type(step_type) is _NDARRAY and step_type.ndim <= 1
        ):
            arrays, outer = list(time_step), step_type.shape
            if self._state_names:
                if type(policy_state) is _FlatState:
                    arrays += policy_state
                else:
                    arrays, outer = self._inputs_from(time_step, policy_state)
        else:
            arrays, outer = self._inputs_from(time_step, policy_state)
        fetch = self._fetch
        if self._mask_check is not None:
            self._mask_check.check(arrays, outer)
        row = self._row_sample
        if row is not None and not outer:  # one unbatched row, drawn as it is
            # The graph's outputs are only read here: the backend's own buffers, no copy.
            outputs = self._run_borrowed(arrays, True, fetch)
            if seed is None:
                block = self._block or self._normals()
                action = row[1](outputs[row[0]], block.rng, block)
            else:
                action = row[1](outputs[row[0]], self._generator(seed))
            step = _new_tuple(PolicyStep, (action, (), ()))
            exact = self._row_exact
            if (  # what _check_step checks of a leaf the derivation clipped; known by identity
                exact is not None
                and type(action) is _NDARRAY
                and action.dtype is exact[0]
                and action.shape == exact[1]
            ):
                self._checked = step
            return step
        batch = self._batch_sample
        if batch is not None and len(outer) == 1:  # a batch of rows, sampled
            # Read in place (the backend's buffers, no copy): the sample is a new array.
            outputs = self._run_borrowed(arrays, False, fetch)
            action = batch[1](outputs[batch[0]], self._generator(seed))
            return _new_tuple(PolicyStep, (action, (), ()))
        outputs = self._run(arrays, not outer, fetch)
        if self._plain_output:  # one action leaf; no state, info or log-probability
            if self._direct:
                action = outputs[0]
                if len(outer) == 1 and self._graph_clips[0]:
                    # The graph clipped it (proven at first use): what _check_step
                    # checks of it is its dtype and shape, here; the step is known by
                    # identity there.
                    step = _new_tuple(PolicyStep, (action, (), ()))
                    check = self._action_checks[0]
                    if (
                        self._validate_args
                        and type(action) is _NDARRAY
                        and (action.dtype is check.dtype or action.dtype == check.dtype)
                        and action.shape == (*outer, *check.shape)
                    ):
                        self._checked = step
                    return step
            else:
                rng = self._generator(seed)
                # (no strict=: zip's keyword parsing costs ~1.5k instructions per call)
                action = self._deriver.act(dict(zip(fetch, outputs)), rng, False)  # noqa: B905
                action = action[0][0]
            action = action[0] if not outer else _restore(action, outer)
            return _new_tuple(PolicyStep, (action, (), ()))  # PolicyStep(action), framelessly
        if self._state_row and len(outer) <= 1:
            return self._state_step(outputs, outer)
        return self._policy_step(dict(zip(fetch, outputs)), outer, seed)  # noqa: B905

    def _state_step(self, outputs: list[np.ndarray], outer: tuple) -> PolicyStep:
        """``_policy_step`` of an unbatched or one-batch-dim call of a ``_state_row``
        policy: the action, then the next state's leaves, by position; the same step and
        the same checks, without the dict by name, the restore and the lists between."""
        action = outputs[0]
        states = outputs[1:]
        rows = outer or (1,)
        checked = self._validate_args
        if checked:
            # (the graph's own clip, if proven, is looked up for batches only: an unbatched
            # call's bounds cost a comparison, and the proof is made on first use)
            clip = self._graph_clips[0] if outer else None
            if not leaf_within(action, self._action_checks[0], rows, clip):
                checked = False
            else:
                for value, (dtype, shape) in zip(states, self._state_layout):  # noqa: B905
                    if (
                        type(value) is not _NDARRAY
                        or (value.dtype is not dtype and value.dtype != dtype)
                        or value.shape != (*rows, *shape)
                    ):
                        checked = False
                        break
        if outer:  # batched outputs are the graph's own: nothing to restore
            step = _new_tuple(PolicyStep, (action, self._state_treespec.unflatten(states), ()))
        else:
            state = self._state_treespec.unflatten([a[0] for a in states])
            step = _new_tuple(PolicyStep, (action[0], state, ()))
        if checked:
            self._checked = step
        return step

    def _policy_step(self, out: dict[str, np.ndarray], outer: tuple, seed: Seed) -> PolicyStep:
        emit = self._emit_log_probability
        if self._direct:
            actions = [out[n] for n in self._action_names]
            log_probs = [np.zeros(a.shape[:1], np.float32) for a in actions] if emit else None
            clipped = self._graph_clips if outer else self._no_clips
        else:
            deriver = self._deriver
            actions, log_probs = deriver.act(out, self._generator(seed), emit)
            clipped = deriver.clips
        states = [out[n] for n in self._next_state_names]
        # The output check, here on the flat leaves with their batch dim (a stateful step
        # would have to be taken apart again): _check_step then knows this step by identity.
        checked = self._validate_args and not self._info_checks
        if checked:
            rows = outer if len(outer) == 1 else _rows(outer)
            # (zip without strict=: its keyword parsing costs ~1.5k instructions a call;
            # the lists are built per leaf of the specs here and in the deriver)
            for value, check, clip in zip(actions, self._action_checks, clipped):  # noqa: B905
                if not leaf_within(value, check, rows, clip):
                    checked = False
                    break
            for value, (dtype, shape) in zip(states, self._state_layout):  # noqa: B905
                if (
                    type(value) is not _NDARRAY
                    or (value.dtype is not dtype and value.dtype != dtype)  # see leaf_within
                    or value.shape != rows + shape
                ):
                    checked = False
                    break
        if len(outer) == 1:  # batched outputs are the graph's own: nothing to restore
            restore = _same
        else:
            restore = _unbatch if not outer else functools.partial(_restore, outer=outer)
        if self._single_action:
            action = restore(actions[0])
        else:
            action = self._action_treespec.unflatten([restore(a) for a in actions])
        state = self._state_treespec.unflatten([restore(a) for a in states]) if states else ()
        info = self._info(out, log_probs, restore) if self._info_names or emit else ()
        step = _new_tuple(PolicyStep, (action, state, info))
        if checked:
            self._checked = step
        return step

    def _info(self, out: dict[str, np.ndarray], log_probs: Any, restore: Any) -> Any:
        info: Any = ()
        if self._info_names:
            info = self._info_treespec.unflatten([restore(out[n]) for n in self._info_names])
        if log_probs is not None:
            log_prob = self._action_treespec.unflatten([restore(lp) for lp in log_probs])
            # As the TF policy's: its own dict plus the entry, or TF-Agents' PolicyInfo.
            if isinstance(info, dict):
                info = {**info, LOG_PROBABILITY: log_prob}
            else:
                info = PolicyInfo(log_probability=log_prob)
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
        out, outer = self._outputs(time_step, policy_state, check_mask=True)
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

    def _outputs(
        self, time_step: Any, policy_state: Any, check_mask: bool = False
    ) -> tuple[dict[str, np.ndarray], tuple]:
        """Every parameter, next state and info output for prepared inputs."""
        arrays, outer = self._inputs_from(time_step, policy_state)
        if check_mask and self._mask_check is not None:
            self._mask_check.check(arrays, outer)
        fetch = self._param_fetch
        return dict(zip(fetch, self._run(arrays, not outer, fetch), strict=True)), outer

    # --- flat entry points -------------------------------------------------------------------

    # A server holds a request as flat named arrays (one per graph input) and answers flat
    # named outputs: these entry points take and give exactly that, without building
    # nests (one is built only to name a problem, or for info shaped unlike its spec).

    @property
    def input_names(self) -> list[str]:
        """The graph's inputs by nest path: the time step's leaves, then ``policy_state/...``."""
        return list(self._input_names)

    @functools.cached_property
    def _flat_specs(self) -> list[tuple[str, np.dtype, tuple[int, ...]]]:
        specs = nest.flatten(self.time_step_spec) + nest.flatten(self.policy_state_spec)
        return [(n, s.dtype, s.shape) for n, s in zip(self._input_names, specs, strict=True)]

    @functools.cached_property
    def _info_spec_names(self) -> list[str] | None:
        """The info spec's leaves by name when the graph's info and the log probabilities
        are exactly those leaves (None: info goes through its nest)."""
        names = [p for p, _ in nest.flatten_with_paths(self.info_spec, "info")]
        found = list(self._info_names)
        if self._emit_log_probability:
            found += self._log_probability_names
        return names if sorted(names) == sorted(found) else None

    @functools.cached_property
    def _log_probability_names(self) -> list[str]:
        prefix = nest.join_path("info", LOG_PROBABILITY)
        return [p for p, _ in nest.flatten_with_paths(self.action_spec, prefix)]

    def action_flat(self, inputs: Mapping[str, Any], seed: Seed = None) -> dict[str, np.ndarray]:
        """``action()`` on flat named arrays, answered with flat named arrays.

        Args:
          inputs: each name of ``input_names`` -> an array with one batch dim (the same
            for all) and its spec's shape; other dtypes are converted where safe and
            anything else is refused, as by ``action()``.
          seed: as in ``action()``.

        Returns:
          Every leaf of the action, next state and info by nest path (``action[/...]``,
          ``next_state/...``, ``info/...``), each with the batch dim.

        Raises:
          SpecMismatchError: naming a missing, unknown or ill-fitting input, or an
            output outside its spec.
        """
        arrays, batch = self._named_inputs(inputs)
        return self._action_flat(arrays, (batch,), seed)

    def _action_flat(self, arrays: list[Any], outer: tuple, seed: Seed) -> dict[str, np.ndarray]:
        if self._mask_check is not None:  # as action(): a row that allows nothing is refused
            self._mask_check.check(arrays, outer)
        outputs = self._run(arrays, False, self._fetch)
        if self._plain_output and self._direct:  # the greedy case: the graph's one output
            result = {self._action_names[0]: outputs[0]}
            if self._validate_args and not leaf_within(outputs[0], self._action_checks[0], outer):
                self._check_flat(result, outer, None)
            return result
        out = dict(zip(self._fetch, outputs, strict=True))
        emit = self._emit_log_probability
        if self._direct:
            actions = [out[n] for n in self._action_names]
            log_probs = [np.zeros(outer, np.float32) for _ in actions] if emit else None
        else:
            actions, log_probs = self._deriver.act(out, self._generator(seed), emit)
        result = dict(zip(self._action_names, actions, strict=True))
        for name in self._next_state_names:
            result[name] = out[name]
        info = None
        if self._info_spec_names is not None:
            for name in self._info_names:
                result[name] = out[name]
            if log_probs is not None:
                result.update(zip(self._log_probability_names, log_probs, strict=True))
        else:  # info unlike its spec's leaves (an empty info): named as it is
            info = self._info(out, log_probs, _same)
            result.update(nest.flatten_with_paths(info, "info"))
        if self._validate_args:
            self._check_flat(result, outer, info)
        return result

    def distribution_params_flat(self, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """``distribution_params()`` on flat named arrays: the graph's parameters
        (``distribution/<path>/<param>``), next state and info by name, each batched."""
        arrays, _ = self._named_inputs(inputs)
        fetch = self._param_fetch
        return dict(zip(fetch, self._run(arrays, False, fetch), strict=True))

    def _named_inputs(self, inputs: Mapping[str, Any]) -> tuple[list[Any], int]:
        """The graph's inputs in order and the batch size; exactly-typed arrays pass as
        they are, anything else gets PyPolicy's validation through the nests."""
        specs = self._flat_specs
        if type(inputs) is not dict or len(inputs) != len(specs):
            self._check_names(inputs)
        arrays = []
        batch = -1
        for name, dtype, shape in specs:
            value = inputs.get(name)
            if (  # None and lists too: the checked path names or converts them
                type(value) is not _NDARRAY
                or value.dtype is not dtype
                or len(value.shape) != len(shape) + 1
                or value.shape[1:] != shape
                or (batch >= 0 and value.shape[0] != batch)
            ):
                return self._named_inputs_checked(inputs)
            batch = value.shape[0]
            arrays.append(value)
        if not self._validate_args:
            return arrays, batch
        step_type = arrays[0]
        if self._check_finite or not (
            step_types_ok(step_type)
            if step_type.dtype == np.int32
            else bool(((step_type >= 0) & (step_type <= 2)).all())
        ):
            return self._named_inputs_checked(inputs)  # it names what is wrong
        return arrays, batch

    def _check_names(self, inputs: Any) -> None:
        """Names a missing or unknown input, or inputs that are no mapping."""
        if not isinstance(inputs, Mapping):
            raise SpecMismatchError(
                "inputs", "a mapping of input name -> array", f"{type(inputs).__name__}"
            )
        names = self._input_names
        unknown = sorted(str(n) for n in set(inputs) - set(names))
        if unknown:
            raise SpecMismatchError(unknown[0], f"one of the inputs {names}", "an unknown name")
        for name in names:
            if inputs.get(name) is None:
                raise SpecMismatchError(name, f"an array (inputs: {names})", "none")

    def _named_inputs_checked(self, inputs: Mapping[str, Any]) -> tuple[list[Any], int]:
        self._check_names(inputs)
        leaves = [inputs[n] for n in self._input_names]
        count = len(self._input_names) - len(self._state_names)
        time_step = nest.pack_sequence_as(self.time_step_spec, leaves[:count])
        state: Any = ()
        if self._state_names:
            state = nest.pack_sequence_as(self.policy_state_spec, leaves[count:])
        time_step, state, outer = self._prepare(time_step, state)
        if outer is None or len(outer) != 1:
            raise SpecMismatchError(
                "step_type", "one batch dim, shape (B,)", f"shape {np.shape(time_step[0])}"
            )
        arrays, _ = self._inputs_from(time_step, state)
        return [np.asarray(a) for a in arrays], outer[0]

    def _check_flat(self, result: dict[str, np.ndarray], outer: tuple, info: Any) -> None:
        """Checks flat outputs against the specs; PyPolicy's check names what is wrong."""
        if leaves_within([result[n] for n in self._action_names], self._action_checks, outer):
            states = [result[n] for n in self._next_state_names]
            if not self._state_checks or leaves_within(states, self._state_checks, outer):
                names = self._info_spec_names
                if not self._info_checks or (
                    names is not None
                    and leaves_within([result[n] for n in names], self._info_checks, outer)
                ):
                    return
        actions = [result[n] for n in self._action_names]
        action = actions[0] if self._single_action else self._action_treespec.unflatten(actions)
        state = ()
        if self._next_state_names:
            state = self._state_treespec.unflatten([result[n] for n in self._next_state_names])
        if info is None:
            info = ()
            if self._info_spec_names is not None and self._info_spec_names:
                info = self._info_spec_treespec.unflatten(
                    [result[n] for n in self._info_spec_names]
                )
        PyPolicy._check_step(self, PolicyStep(action, state, info), outer)

    # --- inputs -------------------------------------------------------------------------------

    def _fast_layout(self, time_step_spec: TimeStep) -> Any:
        """Expected (dtype, shape) per time step leaf when every field is one array."""
        if any(nest.is_nested(field) for field in time_step_spec):
            return None
        return [(s.dtype, s.shape) for s in time_step_spec]

    def _prepare(self, time_step: Any, policy_state: Any) -> tuple[Any, Any, Any]:
        """A TimeStep of exactly-typed arrays passes as it is; anything else: PyPolicy's.

        Only checks types, dtypes and shapes (a few hundred nanoseconds); anything
        unexpected gets PyPolicy's validation, which converts or names the problem.
        With ``validate_args=False`` the caller vouches for dtypes and shapes.
        """
        layout = self._fast
        if layout is None or type(time_step) is not TimeStep:
            return super()._prepare(time_step, policy_state)
        if not self._validate_args:
            outer = np.shape(time_step[0])
            if len(outer) > 1 or (
                self._state_names and (policy_state is None or not nest.flatten(policy_state))
            ):
                return super()._prepare(time_step, policy_state)  # it names a missing state
            return time_step, policy_state, outer
        step_type, reward, discount, observation = time_step
        if type(step_type) is not _NDARRAY or step_type.dtype is not layout[0][0]:
            return super()._prepare(time_step, policy_state)
        ndim = step_type.ndim
        if ndim == 0:
            _, s0, d1, s1, d2, s2, d3, s3 = self._fast_flat
            if not (
                step_type.shape == s0
                and type(reward) is _NDARRAY
                and reward.dtype is d1
                and reward.shape == s1
                and type(discount) is _NDARRAY
                and discount.dtype is d2
                and discount.shape == s2
                and type(observation) is _NDARRAY
                and observation.dtype is d3
                and observation.shape == s3
                and 0 <= step_type.item() <= 2
            ):
                return super()._prepare(time_step, policy_state)  # it names what is wrong
        elif ndim == 1:
            outer = step_type.shape
            shapes = self._batch_shapes.get(outer)
            if shapes is None:
                shapes = self._shapes_at(outer)
            _, _, d1, _, d2, _, d3, _ = self._fast_flat
            if not (
                type(reward) is _NDARRAY
                and reward.dtype is d1
                and type(discount) is _NDARRAY
                and discount.dtype is d2
                and type(observation) is _NDARRAY
                and observation.dtype is d3
                and (outer, reward.shape, discount.shape, observation.shape) == shapes
                and step_types_ok(step_type)
            ):
                return super()._prepare(time_step, policy_state)  # it names what is wrong
        else:
            return super()._prepare(time_step, policy_state)
        outer = step_type.shape
        if self._state_names:
            try:
                state = self._state_treespec.flatten_up_to(policy_state)
            except (ValueError, TypeError):
                return super()._prepare(time_step, policy_state)
            for value, (dtype, shape) in zip(state, self._state_layout):  # noqa: B905
                if (
                    type(value) is not _NDARRAY
                    or (value.dtype is not dtype and value.dtype != dtype)  # see leaf_within
                    or value.shape != outer + shape
                ):
                    return super()._prepare(time_step, policy_state)
            # The leaves, flat: what _action feeds the graph, without flattening again.
            return time_step, _FlatState(state), outer
        return time_step, policy_state, outer

    def _shapes_at(self, outer: tuple[int, ...]) -> tuple:
        """The four TimeStep fields' shapes at batch ``outer`` (kept for a few batches)."""
        shapes = tuple(outer + shape for shape in self._fast_flat[1::2])
        if len(self._batch_shapes) >= 8:
            self._batch_shapes.clear()
        self._batch_shapes[outer] = shapes
        return shapes

    def _inputs_from(self, time_step: Any, policy_state: Any) -> tuple[list, tuple]:
        """Flat graph inputs (one batch dim, or none) from prepared nests, and their outer dims."""
        if self._fast is not None and type(time_step) is TimeStep:
            step_type = time_step[0]
            outer = step_type.shape if type(step_type) is _NDARRAY else np.shape(step_type)
            if len(outer) <= 1:
                arrays = list(time_step)
                if self._state_names:
                    if type(policy_state) is _FlatState:
                        arrays += policy_state
                    else:
                        arrays += self._state_treespec.flatten_up_to(policy_state)
                if self._validate_args:  # validated: every leaf is an array already
                    return arrays, outer
                return [a if type(a) is _NDARRAY else np.asarray(a) for a in arrays], outer
        outer = self.outer_dims(time_step)
        leaves = flatten_like(self.time_step_spec, time_step, "time_step")
        if type(policy_state) is _FlatState:
            leaves += policy_state
        elif self._state_names:
            leaves += flatten_like(self.policy_state_spec, policy_state, "policy_state")
        if len(outer) <= 1:
            return [np.asarray(a) for a in leaves], outer
        size = math.prod(outer)
        return [np.reshape(a, (size,) + np.shape(a)[len(outer) :]) for a in leaves], outer

    # --- output checks ------------------------------------------------------------------------

    def _check_step(self, step: Any, outer_dims: tuple[int, ...] | None) -> None:
        # The step is assembled from the specs' tree structures, so its leaves are checked
        # cheaply (dtype by identity, shape by tuple, bounds in Python for small arrays);
        # anything unexpected gets PyPolicy's full check, which names the problem.
        # Bounds are not compared for an action leaf the derivation clipped to them in
        # the spec's dtype (Deriver.clips): numpy's clip already put every value within
        # them (NaN stays NaN, which the full check lets pass too).
        if type(step) is PolicyStep and outer_dims is not None:
            if step is self._checked:  # built and checked by _policy_step
                return
            if self._plain_output:
                value, check = step.action, self._action_checks[0]
                if (  # the hottest case: one unbatched scalar, its type tells its dtype
                    type(value) is self._scalar_type
                    and not outer_dims
                    and check.low[0] <= value.item() <= check.high[0]
                ):
                    return
                if type(value) is _NDARRAY and (  # by identity, else equal (see leaf_within)
                    value.dtype is check.dtype or value.dtype == check.dtype
                ):
                    if self._direct or self._deriver.clips[0] is None:
                        if (  # the hot path's common case, inline: one in-bounds element
                            value.size == 1
                            and check.low is not None
                            and check.low[0] <= value.item() <= check.high[0]
                            and value.shape == outer_dims + check.shape
                        ) or leaf_within(value, check, outer_dims):
                            return
                    elif value.shape == outer_dims + check.shape:  # clipped by the derivation
                        return
            else:
                try:
                    if self._leaves_ok(step, outer_dims):
                        return
                except (ValueError, TypeError):
                    pass  # a structure unlike the specs': the full check names it
        super()._check_step(step, outer_dims)

    def _leaves_ok(self, step: PolicyStep, outer: tuple[int, ...]) -> bool:
        clipped = self._no_clips if self._direct else self._deriver.clips
        if self._single_action:
            if not leaf_within(step.action, self._action_checks[0], outer, clipped[0]):
                return False
        elif not leaves_within(
            self._action_treespec.flatten_up_to(step.action), self._action_checks, outer, clipped
        ):
            return False
        if self._state_checks and not leaves_within(
            self._state_treespec.flatten_up_to(step.state), self._state_checks, outer
        ):
            return False
        if self._info_checks:
            info = self._info_spec_treespec.flatten_up_to(step.info)
            return leaves_within(info, self._info_checks, outer)
        return True

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


def _same(array: np.ndarray) -> np.ndarray:
    return array


def _unbatch(array: np.ndarray) -> np.ndarray:
    return array[0]


def _rows(outer: tuple[int, ...]) -> tuple[int, ...]:
    """The graph's batch dim for inputs of outer dims ``outer`` (see ``_inputs_from``)."""
    if len(outer) == 1:
        return outer
    return (math.prod(outer),) if outer else (1,)


class _FlatState(list):
    """A validated policy state's leaves in state-spec order (``_prepare``'s fast path)."""


def _restore(array: np.ndarray, outer: tuple) -> np.ndarray:
    if len(outer) == 1:
        return array
    if not outer:
        return array[0]
    return array.reshape(tuple(outer) + array.shape[1:])


def _restore_any(array: np.ndarray, outer: tuple) -> np.ndarray:
    return _restore(np.asarray(array), tuple(outer))
