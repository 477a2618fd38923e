"""The runtime's per-call fast paths against its general paths, on the same inputs.

Compiled samplers (runtimes.derivations) must give what the numpy distributions give:
the same values, dtypes and Generator streams, through the numpy path and the Python
float path of small leaves alike. The general derivers (``compiled=False``) are the
reference: each test builds both from one description and feeds both the same graph
outputs and equally seeded Generators. The policy-level tests swap a loaded policy's
deriver for the general one; the backend tests compare bound and plain onnxruntime
runs, and one-thread and ``threads="auto"`` sessions.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

import runtimes
from runtimes import derivations
from runtimes.backends import onnx as onnx_backend
from tests.contract import cases_runtime as cr
from tests.contract.case import first_time_step, sample_time_step
from toolkit import distribution_families as families
from toolkit.errors import SpecMismatchError
from toolkit.specs.array_spec import ArraySpec, BoundedArraySpec

F32, F64 = np.float32, np.float64
BATCHES = (1, 2, 3, 4, 5, 256)  # 1-4 rows of 2 elements: Python floats; 5 and 256: numpy


def _leaf(family: str, dtype: str, event_ndims: int = 1, **static) -> families.LeafInfo:
    return families.LeafInfo(family, {"event_ndims": event_ndims, "dtype": dtype, **static})


def _both(description, params, action_spec, state_spec=(), state_path=None):
    """The compiled and the general deriver of one description."""
    return tuple(
        derivations.DerivationBuilder(action_spec, state_spec, compiled=compiled).build(
            description, params, "distribution", state_path
        )
        for compiled in (True, False)
    )


def _assert_same_draws(fast, general, out, seed=0, want_log_prob=False):
    """Both derivers on copies of ``out`` with equally seeded Generators: equal results."""
    rng_fast, rng_general = np.random.default_rng(seed), np.random.default_rng(seed)
    got, got_log = fast.act(copy.deepcopy(out), rng_fast, want_log_prob)
    want, want_log = general.act(copy.deepcopy(out), rng_general, want_log_prob)
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert type(a) is type(b) and a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)
        finite = ~np.isnan(b) if b.dtype.kind == "f" else np.ones(b.shape, bool)
        np.testing.assert_array_equal(np.signbit(a[finite]), np.signbit(b[finite]))  # -0.0
    if want_log_prob:
        for a, b in zip(got_log, want_log, strict=True):
            np.testing.assert_array_equal(a, b)
    # the same number of draws: the streams go on alike
    assert rng_fast.random() == rng_general.random()
    return got


def _locs(rng, shape, dtype=F32):
    """Locations inside and far outside [-1, 1], on the bounds, NaN, -0.0 and inf."""
    values = (rng.normal(0.0, 2.0, shape)).astype(dtype)
    flat = values.reshape(-1)
    for i, special in enumerate((np.nan, -0.0, 1.0, -1.0, np.inf, -np.inf)):
        if i < flat.size and flat.size > 2 * i + 1:
            flat[2 * i + 1] = special
    return values


def _bounded(shape=(2,), dtype=F32, low=-1.0, high=1.0):
    return BoundedArraySpec(shape, dtype, low, high, name="action")


# --- derivers: compiled against general --------------------------------------------------


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("clip", [True, False])
def test_deterministic_and_normal_samples(dtype, clip):
    spec = _bounded(dtype=dtype)
    name = np.dtype(dtype).name
    rng = np.random.default_rng(1)
    for family, params in (("deterministic", ("loc",)), ("normal", ("loc", "scale"))):
        fast, general = _both({"kind": "sample", "clip": clip}, _leaf(family, name), spec)
        for batch in BATCHES:
            out = {"distribution/loc": _locs(rng, (batch, 2), dtype)}
            if "scale" in params:
                out["distribution/scale"] = rng.uniform(0.1, 2.0, (batch, 2)).astype(dtype)
            got = _assert_same_draws(fast, general, out, seed=batch)
            if clip:
                assert np.all(np.isnan(got[0]) | ((got[0] >= -1) & (got[0] <= 1)))


def test_normal_with_float32_params_into_a_float64_leaf_and_broadcast_scale():
    spec = _bounded(dtype=F64)
    fast, general = _both({"kind": "sample", "clip": True}, _leaf("normal", "float64"), spec)
    rng = np.random.default_rng(2)
    for batch in BATCHES:
        out = {
            "distribution/loc": _locs(rng, (batch, 2)),
            "distribution/scale": rng.uniform(0.1, 2.0, (batch, 1)).astype(F32),  # broadcast
        }
        _assert_same_draws(fast, general, out, seed=batch)


def test_samples_within_bounds_that_differ_per_element():
    spec = BoundedArraySpec((3,), F32, [-1.0, 0.0, -5.0], [1.0, 0.5, 5.0], name="action")
    for family in ("deterministic", "normal"):
        fast, general = _both({"kind": "sample", "clip": True}, _leaf(family, "float32"), spec)
        rng = np.random.default_rng(3)
        for batch in (1, 2, 3, 256):
            out = {
                "distribution/loc": _locs(rng, (batch, 3)),
                "distribution/scale": rng.uniform(0.1, 4.0, (batch, 3)).astype(F32),
            }
            got = _assert_same_draws(fast, general, out, seed=batch)[0]
            ok = np.isnan(got) | ((got >= spec.minimum) & (got <= spec.maximum))
            assert ok.all()


def test_tanh_normal_samples():
    spec = BoundedArraySpec((2,), F32, [-2.0, 0.0], [1.0, 3.0], name="action")
    fast, general = _both({"kind": "sample", "clip": True}, _leaf("tanh_normal", "float32"), spec)
    rng = np.random.default_rng(4)
    for batch in BATCHES:
        rows = (batch, 2)
        out = {
            "distribution/loc": rng.normal(0.0, 2.0, rows).astype(F32),
            "distribution/scale": rng.uniform(0.1, 2.0, rows).astype(F32),
            "distribution/low": np.broadcast_to(spec.minimum, rows).copy(),
            "distribution/high": np.broadcast_to(spec.maximum, rows).copy(),
        }
        for seed in (0, 1):  # the second call takes the cached centre and half-width
            _assert_same_draws(fast, general, out, seed=seed)
        out["distribution/high"] = out["distribution/high"] + 1  # new bounds: recomputed
        _assert_same_draws(fast, general, out, seed=2)


@pytest.mark.parametrize("shape, dtype, shift", [((), "int64", 0), ((1,), "int32", -1)])
def test_categorical_samples(shape, dtype, shift):
    spec = BoundedArraySpec(shape, np.dtype(dtype), shift, shift + 3, name="action")
    leaf = _leaf("categorical", dtype, len(shape), shift=shift)
    fast, general = _both({"kind": "sample", "clip": True}, leaf, spec)
    rng = np.random.default_rng(5)
    for batch in BATCHES:
        logits = rng.normal(0.0, 2.0, (batch, *shape, 4)).astype(F32)
        logits[..., 0] = -np.inf  # a masked category is never drawn
        got = _assert_same_draws(fast, general, {"distribution/logits": logits}, seed=batch)
        assert np.all(got[0] != shift)


@pytest.mark.parametrize("dtype", [F32, F64])
def test_gaussian_noise_around_a_deterministic_action(dtype):
    name = np.dtype(dtype).name
    description = {
        "kind": "gaussian_noise",
        "clip": True,
        "scale": 0.7,
        "inner": {"kind": "sample", "clip": True},
    }
    for spec, scale in (
        (_bounded(dtype=dtype), 0.7),
        (BoundedArraySpec((2,), dtype, [-1.0, 0.0], [1.0, 0.25], name="a"), [0.7, 0.1]),
    ):
        fast, general = _both({**description, "scale": scale}, _leaf("deterministic", name), spec)
        rng = np.random.default_rng(6)
        for batch in BATCHES:
            out = {"distribution/loc": _locs(rng, (batch, 2), dtype)}
            got = _assert_same_draws(fast, general, out, seed=batch)[0]
            ok = np.isnan(got) | ((got >= spec.minimum) & (got <= spec.maximum))
            assert ok.all()


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("clip", [True, False])
def test_the_batch_sampler_draws_what_the_general_gaussian_noise_draws(dtype, clip):
    """``batch_sampler`` (the policy's batched hot path) against the general formula on
    the same seed: equal values (NaN, -0.0 and infinite locs too), a new array, the loc
    untouched, the same draws; a loc of another dtype takes act's path, equally."""
    name = np.dtype(dtype).name
    other = F64 if dtype == F32 else F32
    for spec, scale in (
        (_bounded(dtype=dtype), 0.7),
        (BoundedArraySpec((2,), dtype, [-1.0, 0.0], [1.0, 0.25], name="a"), [0.7, 0.1]),
    ):
        description = {
            "kind": "gaussian_noise",
            "clip": clip,
            "scale": scale,
            "inner": {"kind": "sample", "clip": clip},
        }
        fast, general = _both(description, _leaf("deterministic", name), spec)
        plan = fast.batch_sampler()
        assert plan is not None and plan[0] == "distribution/loc"
        assert general.batch_sampler() is None
        rng = np.random.default_rng(8)
        for batch in BATCHES:
            for loc_dtype in (dtype, other):
                loc = _locs(rng, (batch, 2), loc_dtype)
                before = loc.copy()
                rng_fast, rng_general = np.random.default_rng(batch), np.random.default_rng(batch)
                got = plan[1](loc, rng_fast)
                want = general.act({"distribution/loc": loc.copy()}, rng_general, False)[0][0]
                assert got.dtype == want.dtype == dtype and got.shape == want.shape
                np.testing.assert_array_equal(got, want)
                finite = ~np.isnan(want)
                np.testing.assert_array_equal(np.signbit(got[finite]), np.signbit(want[finite]))
                assert not np.shares_memory(got, loc)
                np.testing.assert_array_equal(loc, before)
                assert rng_fast.random() == rng_general.random()


def test_gaussian_noise_without_clips_and_around_a_normal():
    spec = _bounded()
    for inner_family, clip in (("deterministic", False), ("normal", True)):
        description = {
            "kind": "gaussian_noise",
            "clip": clip,
            "scale": 0.3,
            "inner": {"kind": "sample", "clip": clip},
        }
        fast, general = _both(description, _leaf(inner_family, "float32"), spec)
        rng = np.random.default_rng(7)
        for batch in BATCHES:
            out = {
                "distribution/loc": _locs(rng, (batch, 2)),
                "distribution/scale": rng.uniform(0.1, 1.0, (batch, 2)).astype(F32),
            }
            _assert_same_draws(fast, general, out, seed=batch)


def test_log_probabilities_take_the_general_path_with_the_same_draws():
    spec = _bounded()
    description = {
        "kind": "gaussian_noise",
        "clip": True,
        "scale": 0.3,
        "inner": {"kind": "sample", "clip": True},
    }
    fast, general = _both(description, _leaf("deterministic", "float32"), spec)
    out = {"distribution/loc": _locs(np.random.default_rng(8), (3, 2))}
    _assert_same_draws(fast, general, out, want_log_prob=True)
    fast, general = _both({"kind": "sample", "clip": True}, _leaf("normal", "float32"), spec)
    out["distribution/scale"] = np.full((3, 2), 0.5, F32)
    _assert_same_draws(fast, general, out, want_log_prob=True)


def test_nested_actions_and_composite_derivations():
    move = BoundedArraySpec((), np.int64, 2, 5, name="move")
    force = _bounded((3,))
    spec = {"force": force, "move": move}
    params = {
        "force": _leaf("normal", "float32"),
        "move": _leaf("categorical", "int64", 0, shift=2),
    }
    rng = np.random.default_rng(9)

    def outputs(batch, prefix="distribution"):
        return {
            f"{prefix}/force/loc": _locs(rng, (batch, 3)),
            f"{prefix}/force/scale": rng.uniform(0.1, 1.0, (batch, 3)).astype(F32),
            f"{prefix}/move/logits": rng.normal(size=(batch, 4)).astype(F32),
        }

    fast, general = _both({"kind": "sample", "clip": True}, params, spec)
    for batch in BATCHES:
        _assert_same_draws(fast, general, outputs(batch), seed=batch)
    mixture = {
        "kind": "mixture",
        "clip": True,
        "weights": [0.3, 0.7],
        "components": [{"kind": "sample", "clip": True}, {"kind": "sample", "clip": False}],
    }
    fast, general = _both(mixture, [params, params], spec)
    for batch in (1, 256):
        out = {**outputs(batch, "distribution/0"), **outputs(batch, "distribution/1")}
        _assert_same_draws(fast, general, out, seed=batch)


def test_epsilon_greedy_and_ou_noise_over_compiled_inner_derivers():
    q = BoundedArraySpec((), np.int64, 0, 3, name="q")
    description = {
        "kind": "epsilon_greedy",
        "clip": True,
        "epsilon": 0.4,
        "greedy": {"kind": "sample", "clip": True},
        "random": {"kind": "sample", "clip": True},
    }
    params = {
        "greedy": _leaf("deterministic", "int64", 0),
        "random": _leaf("categorical", "int64", 0),
    }
    fast, general = _both(description, params, q)
    rng = np.random.default_rng(10)
    for batch in BATCHES:
        out = {
            "distribution/greedy/loc": rng.integers(-2, 6, batch),  # some beyond the bounds
            "distribution/random/logits": np.zeros((batch, 4), F32),
        }
        _assert_same_draws(fast, general, out, seed=batch)
    force = _bounded()
    state_spec = {"ou": ArraySpec((2,), F32, name="ou")}
    ou = {
        "kind": "ou_noise",
        "clip": True,
        "state_key": "ou",
        "ou_stddev": 0.2,
        "ou_damping": 0.15,
        "inner": {"kind": "sample", "clip": True},
    }
    fast, general = _both(ou, _leaf("deterministic", "float32"), force, state_spec, ())
    for batch in (1, 256):
        out = {
            "distribution/loc": _locs(rng, (batch, 2)),
            "next_state/ou": rng.normal(size=(batch, 2)).astype(F32),
        }
        _assert_same_draws(fast, general, out, seed=batch)


def test_clip_with_broadcast_bounds_equals_numpy_clip():
    spec = BoundedArraySpec((2, 3), F32, [[-1, 0, 1]] * 2, [[1, 2, 3]] * 2, name="action")
    clip = derivations._clip_bounds(spec)
    assert clip.low.shape == (2, 3)  # not uniform: kept whole, broadcast per batch shape
    rng = np.random.default_rng(11)
    for batch in (1, 7, 7, 256):
        values = rng.normal(0.0, 3.0, (batch, 2, 3)).astype(F32)
        np.testing.assert_array_equal(clip(values), np.clip(values, spec.minimum, spec.maximum))
    uniform = derivations._clip_bounds(_bounded())
    assert uniform.low.shape == () and uniform.low.dtype == F32


# --- policies: the compiled hot path against the general one ------------------------------


def _general_copy(policy):
    """The same loaded policy with the general derivers (same seed, own generator)."""
    clone = policy.copy()
    clone._deriver = derivations.DerivationBuilder(
        clone.action_spec, clone.policy_state_spec, compiled=False
    ).build(
        clone._description, clone._params_tree, "distribution", () if clone.is_stateful else None
    )
    clone._row_sample = clone._row_sampler(clone._deriver)
    assert clone._row_sample is None and clone._batch_sample is None  # the general path only
    return clone


def _episode(policy, outer, steps=4, seed=None):
    rng = np.random.default_rng(42)
    state = policy.get_initial_state(outer[0] if outer else None)
    results = []
    for i in range(steps):
        time_step = sample_time_step(policy.time_step_spec, outer, rng)
        if i == 0:
            time_step = first_time_step(time_step)
        step = policy.action(time_step, state, seed=None if seed is None else seed + i)
        results.append(step)
        state = step.state
    return results


def _assert_steps_equal(got, want):
    import toolkit.nest as nest

    for a, b in zip(got, want, strict=True):
        for x, y in zip(nest.flatten(a), nest.flatten(b), strict=True):
            assert np.asarray(x).dtype == np.asarray(y).dtype
            np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize(
    "kind, backend",
    [
        ("q", "onnx"),  # one categorical action: the plain-output path
        ("q", "litert"),
        ("rnn/actor_distribution", "onnx"),  # normal, state fed back
        ("rnn/actor_distribution", "litert"),
        ("actor/categorical_normal", "onnx"),  # nested, log-probabilities in info
    ],
)
def test_policies_act_as_with_the_general_derivers(kind, backend):
    policy = cr.load(kind, backend, seed=5)
    general = _general_copy(policy)
    for outer in ((), (1,), (3,), (256,)):
        # the policies' own generators, then per-call seeds
        _assert_steps_equal(_episode(policy, outer), _episode(general, outer))
        _assert_steps_equal(_episode(policy, outer, seed=7), _episode(general, outer, seed=7))


@pytest.fixture(scope="module")
def tanh_normal_bundle(tmp_path_factory):
    """A SAC-like actor (tanh-squashed Normal), the production path of sampled policies."""
    import tensorflow as tf

    from exporters.export import export_policy
    from toolkit.networks.actor_distribution_network import ActorDistributionNetwork
    from toolkit.policies import actor_policy
    from toolkit.specs import tensor_spec
    from toolkit.trajectories import time_step as ts

    observation = tensor_spec.TensorSpec((3,), tf.float32, name="observation")
    action = tensor_spec.BoundedTensorSpec((2,), tf.float32, [-2.0, 0.0], [1.0, 3.0], name="a")
    network = ActorDistributionNetwork(
        observation, action, fc_layer_params=(8,), continuous_projection="tanh_normal"
    )
    policy = cr.set_weights(
        actor_policy.ActorPolicy(ts.time_step_spec(observation), action, network), 3
    )
    return export_policy(
        policy, tmp_path_factory.mktemp("tanh") / "b", formats=("onnx", "litert"), train_step=1
    )


@pytest.mark.parametrize("backend", ["onnx", "litert"])
def test_a_tanh_normal_policy_acts_as_with_the_general_derivers(tanh_normal_bundle, backend):
    policy = runtimes.load_policy(tanh_normal_bundle, backend, seed=3)
    assert policy._description["kind"] == "sample" and policy._plain_output
    general = _general_copy(policy)
    for outer in ((), (2,), (256,)):
        _assert_steps_equal(_episode(policy, outer), _episode(general, outer))
        _assert_steps_equal(_episode(policy, outer, seed=1), _episode(general, outer, seed=1))


@pytest.fixture(scope="module")
def gaussian_noise_bundle(tmp_path_factory):
    """A deterministic actor with clipped N(0, 0.2) noise (DDPG/TD3's collect policy)."""
    import tensorflow as tf

    from exporters.export import export_policy
    from toolkit.networks.actor_network import ActorNetwork
    from toolkit.policies import actor_policy, gaussian_policy
    from toolkit.specs import tensor_spec
    from toolkit.trajectories import time_step as ts

    observation = tensor_spec.TensorSpec((3,), tf.float32, name="observation")
    action = tensor_spec.BoundedTensorSpec((2,), tf.float32, -1.0, 1.0, name="force")
    network = ActorNetwork(observation, action, fc_layer_params=(8,))
    actor = cr.set_weights(
        actor_policy.ActorPolicy(ts.time_step_spec(observation), action, network), 4
    )
    policy = gaussian_policy.GaussianPolicy(actor, scale=0.2)
    return export_policy(
        policy, tmp_path_factory.mktemp("gauss") / "b", formats=("onnx", "litert"), train_step=1
    )


@pytest.mark.parametrize("backend", ["onnx", "litert"])
def test_a_gaussian_noise_policy_acts_as_with_the_general_derivers(gaussian_noise_bundle, backend):
    """The unbatched sampled row (Deriver.row_sampler) draws what the formula draws."""
    policy = runtimes.load_policy(gaussian_noise_bundle, backend, seed=3)
    assert policy._description["kind"] == "gaussian_noise" and policy._row_sample is not None
    general = _general_copy(policy)
    for outer in ((), (1,), (2,), (256,)):
        _assert_steps_equal(_episode(policy, outer), _episode(general, outer))
        _assert_steps_equal(_episode(policy, outer, seed=1), _episode(general, outer, seed=1))
    # the same stream afterwards: the row path drew as many normals as the formula
    assert policy._generator(None).random() == general._generator(None).random()


def test_an_unclipped_sample_out_of_bounds_is_still_reported():
    """Only leaves the derivation clipped skip the bounds check."""
    policy = cr.load("actor/normal_dict_obs", "onnx")
    time_step = sample_time_step(policy.time_step_spec, (2,), np.random.default_rng(0))
    real_run = policy._run

    def run(arrays, unbatched, fetch):
        outputs = real_run(arrays, unbatched, fetch)
        index = fetch.index("distribution/loc")
        outputs[index] = np.full_like(outputs[index], 100.0)
        return outputs

    policy._run = run
    action = policy.action(time_step).action  # clipped by the derivation: within bounds
    assert np.all(action == policy.action_spec.maximum)
    policy._deriver = derivations.DerivationBuilder(policy.action_spec, ()).build(
        {**policy._description, "clip": False}, policy._params_tree, "distribution", None
    )
    assert policy._deriver.clips == [None]
    with pytest.raises(SpecMismatchError, match="action: expected values in"):
        policy.action(time_step)


def test_a_step_checked_flat_is_known_by_identity_only():
    policy = cr.load("rnn/greedy_q", "onnx")
    time_step = sample_time_step(policy.time_step_spec, (2,), np.random.default_rng(0))
    step = policy.action(time_step, policy.get_initial_state(2))
    assert policy._checked is step
    policy._check_step(step, (2,))
    bad = step._replace(action=np.full_like(step.action, 7))  # a new step: checked in full
    with pytest.raises(SpecMismatchError, match=r"action: expected values in \[-1, 1\]"):
        policy._check_step(bad, (2,))


def test_step_types_are_checked_on_the_fast_path_at_every_batch_size():
    """Python (up to _STEP_ROWS rows) and numpy (above) decide as check_step_type does."""
    from runtimes import checks

    rows = checks.STEP_ROWS
    rng = np.random.default_rng(13)
    for size in (0, 1, 2, rows, rows + 1, 256):
        good = rng.integers(0, 3, size).astype(np.int32)
        assert checks.step_types_ok(good)
        assert checks.step_types_ok(np.repeat(good, 2)[::2])  # strided
        for bad_value in (-1, 3, 2**31 - 1, -(2**31)):
            for index in {0, size // 2, size - 1} if size else ():
                bad = good.copy()
                bad[index] = bad_value
                assert not checks.step_types_ok(bad)
                assert not checks.step_types_ok(np.repeat(bad, 2)[::2])
    policy = cr.load("greedy_q", "onnx")
    for outer in ((1,), (rows,), (rows + 1,), (256,)):
        time_step = sample_time_step(policy.time_step_spec, outer, rng)
        step_type = np.ones(outer, np.int32)
        step_type[-1] = 3 if outer[0] % 2 else -1
        with pytest.raises(
            SpecMismatchError,
            match=r"^step_type: expected a step type in \{0: FIRST, 1: MID, 2: LAST\}, got "
            rf"{step_type[-1]} at index \({outer[0] - 1},\)$",
        ):
            policy.action(time_step._replace(step_type=step_type))
        step_type[-1] = 2
        assert policy.action(time_step._replace(step_type=step_type)).action.shape[:1] == outer


# --- backends: bound and plain runs, threads ----------------------------------------------


def test_large_batches_run_plain_with_the_same_outputs(monkeypatch):
    kind = "rnn/actor_distribution"
    bound = cr.load(kind, "onnx")
    monkeypatch.setattr(onnx_backend, "PLAIN_RUN_BYTES", 0)
    plain = cr.load(kind, "onnx")
    rng = np.random.default_rng(12)
    for outer in ((), (3,), (40,)):
        time_step = sample_time_step(bound.time_step_spec, outer, rng)
        state = bound.get_initial_state(outer[0] if outer else None)
        arrays, _ = bound._inputs_from(time_step, state)
        want = bound._run(arrays, not outer, bound._fetch)
        got = plain._run(arrays, not outer, plain._fetch)
        for a, b in zip(got, want, strict=True):
            assert a.dtype == b.dtype
            np.testing.assert_array_equal(a, b)
    bindings = plain._session.local.bindings
    assert all(b.plain for b in bindings.values() if b.inputs == [])
    assert bindings[40].plain and not bound._session.local.bindings[40].plain
    # the arrays onnxruntime allocated are the caller's: the next run leaves them be
    kept = [a.copy() for a in got]
    other = sample_time_step(plain.time_step_spec, (40,), rng)
    plain._run(plain._inputs_from(other, plain.get_initial_state(40))[0], False, plain._fetch)
    for a, b in zip(got, kept, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("backend", ["onnx", "litert"])
def test_auto_threads_use_a_second_engine_for_large_batches(monkeypatch, backend):
    monkeypatch.setattr(runtimes, "AUTO_THREADS_MIN_BATCH", 4)
    kind = "rnn/actor_distribution"
    auto = runtimes.load_policy(cr.bundle(kind), backend, seed=1)
    one = runtimes.load_policy(cr.bundle(kind), backend, seed=1, threads=1)
    assert auto._threads == "auto" and one._threads == 1

    def engines():
        if backend == "onnx":
            return auto._session.many
        return getattr(auto._local, "many", None)

    for outer in ((), (3,)):
        _assert_steps_equal(_episode(auto, outer), _episode(one, outer))
    assert engines() is None  # small batches: one thread, no second engine yet
    for outer in ((4,), (9,)):
        _assert_steps_equal(_episode(auto, outer), _episode(one, outer))
    assert engines() is not None
    if backend == "onnx":
        assert auto._session.many.get_session_options().intra_op_num_threads == 0
        assert one._session.many is None


@pytest.mark.parametrize("threads", [0, -1, 1.5, "two", True, None])
def test_threads_must_be_a_positive_int_or_auto(threads):
    with pytest.raises(SpecMismatchError, match=r"threads: expected a positive int or 'auto', got"):
        runtimes.load_policy(cr.bundle("q"), "onnx", threads=threads)
    assert runtimes.load_policy(cr.bundle("q"), "onnx", threads=np.int64(2))._threads == 2


def test_an_equal_dtype_of_another_identity_passes_the_fast_check():
    """onnxruntime's plain run gives int64 as numpy's longlong (q): equal to, not the same
    object as, np.dtype(np.int64) on Linux; the fast check must still take it (and still
    refuse another dtype or a value out of bounds)."""
    from runtimes.checks import LeafCheck, leaf_within

    check = LeafCheck.of(BoundedArraySpec((), np.int64, 0, 3))
    longlong = np.arange(256, dtype="q") % 4
    assert longlong.dtype == check.dtype
    assert leaf_within(longlong, check, (256,))
    assert not leaf_within(longlong.astype(np.int32), check, (256,))
    longlong[7] = 4
    assert not leaf_within(longlong, check, (256,))


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint8])
def test_the_integer_bounds_check_by_extremes_refuses_either_side(dtype):
    """Uniform integer bounds are checked by the batch's minimum and maximum: a value
    one past either bound, anywhere in the batch, is refused; per-element bounds still
    go element by element."""
    from runtimes.checks import LeafCheck, leaf_within

    check = LeafCheck.of(BoundedArraySpec((2,), dtype, 1, 3))
    values = (np.arange(512) % 3 + 1).astype(dtype).reshape(256, 2)
    assert leaf_within(values, check, (256,))
    for index, bad in (((0, 0), 0), ((255, 1), 4), ((100, 1), 0)):
        wrong = values.copy()
        wrong[index] = bad
        assert not leaf_within(wrong, check, (256,))
    rng = np.random.default_rng(0)
    for _ in range(50):  # the general comparison's verdict on random batches, either way
        batch = rng.integers(0, 5, size=(256, 2)).astype(dtype)
        batch[batch == 0] = rng.integers(1, 4) if rng.random() < 0.5 else 0
        batch[batch == 4] = rng.integers(1, 4) if rng.random() < 0.5 else 4
        general = not ((batch < 1).any() or (batch > 3).any())
        assert leaf_within(batch, check, (256,)) == general
    per_element = LeafCheck.of(BoundedArraySpec((2,), dtype, [1, 2], [3, 3]))
    assert not per_element.uniform
    assert not leaf_within(values, per_element, (256,))  # column 0 holds 1 < 2
    assert leaf_within(np.maximum(values, 2).astype(dtype), per_element, (256,))


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.int8, np.uint8])
def test_the_integer_bounds_check_from_zero_by_the_unsigned_maximum_refuses_negatives(dtype):
    """Uniform bounds [0, high] are checked by one unsigned maximum: negatives (down to
    the dtype's minimum) and high + 1 are refused, anywhere, in strided batches too; the
    verdict is the general comparison's on random batches."""
    from runtimes.checks import LeafCheck, leaf_within

    check = LeafCheck.of(BoundedArraySpec((), dtype, 0, 3))
    assert check.unsigned is not None and check.unsigned.itemsize == np.dtype(dtype).itemsize
    assert LeafCheck.of(BoundedArraySpec((), dtype, 1, 3)).unsigned is None
    values = (np.arange(512) % 4).astype(dtype)
    assert leaf_within(values, check, (512,)) and leaf_within(values[::2], check, (256,))
    bads = [4, np.iinfo(dtype).max] + ([-1, np.iinfo(dtype).min] if dtype != np.uint8 else [])
    for bad in bads:
        for index in (0, 255, 511):
            wrong = values.copy()
            wrong[index] = bad
            assert not leaf_within(wrong, check, (512,))
            assert not leaf_within(wrong[index % 2 :: 2], check, (256,))
    rng = np.random.default_rng(1)
    low = -2 if dtype != np.uint8 else 0
    for _ in range(50):
        batch = rng.integers(0, 4, size=256).astype(dtype)
        if rng.random() < 0.5:
            batch[rng.integers(0, 256)] = rng.integers(low, 6)
        general = not ((batch < 0).any() or (batch > 3).any())
        assert leaf_within(batch, check, (256,)) == general


# --- the block of normals of the unbatched sampled path ----------------------------------


def test_a_normal_block_hands_out_the_generators_own_stream():
    """Taken a few at a time across refills, synced mid-block: the element-wise stream,
    and the generator left where element-wise draws leave it."""
    rng, reference = np.random.default_rng(11), np.random.default_rng(11)
    block = derivations.NormalBlock(rng)
    sizes = [2, 1, 3, 2] * 20 + [derivations.NormalBlock.SIZE + 5, 2]
    for i, n in enumerate(sizes):
        assert block.take(n) == reference.standard_normal(n).tolist()
        if i in (7, 50):  # another user of the generator: synced, then drawn directly
            block.sync()
            assert rng.bit_generator.state == reference.bit_generator.state
            assert rng.random(3).tolist() == reference.random(3).tolist()
    block.off()
    assert rng.bit_generator.state == reference.bit_generator.state
    assert block.take(2) is None


@pytest.mark.parametrize("backend", ["onnx", "litert"])
def test_the_policys_own_noise_block_gives_the_stream_of_a_generator_passed_per_call(
    gaussian_noise_bundle, backend
):
    """Own generator (block) against the same seed's Generator passed to every call (drawn
    directly): equal actions over several blocks, a copy and a batched call between."""
    policy = runtimes.load_policy(gaussian_noise_bundle, backend, seed=3)
    direct = runtimes.load_policy(gaussian_noise_bundle, backend)
    rng = np.random.default_rng(3)
    kept = None
    for i in range(90):  # two normals a step: a block of 64 lasts 32 steps
        time_step = first_time_step(
            sample_time_step(policy.time_step_spec, (), np.random.default_rng(i))
        )
        if i == 40:  # a copy draws what the policy draws next
            clone = policy.copy()
            np.testing.assert_array_equal(
                clone.action(time_step).action, policy.action(time_step).action
            )
            direct.action(time_step, seed=rng)
        if i == 60:  # a batched call takes the generator itself: the block syncs and ends
            batch = sample_time_step(policy.time_step_spec, (3,), np.random.default_rng(i))
            np.testing.assert_array_equal(
                policy.action(batch).action, direct.action(batch, seed=rng).action
            )
        got, want = policy.action(time_step).action, direct.action(time_step, seed=rng).action
        assert got.dtype == want.dtype == F32 and got.shape == want.shape == (2,)
        np.testing.assert_array_equal(got, want)
        if i == 1:  # the graph's outputs are borrowed: what the caller keeps stays
            kept = (got, got.copy())
    assert policy._block is not None and not policy._block.on
    np.testing.assert_array_equal(kept[0], kept[1])
    assert policy._generator(None).random() == rng.random()


@pytest.mark.parametrize("backend", ["onnx", "litert"])
def test_a_sampled_row_of_another_shape_than_the_spec_is_still_reported(
    gaussian_noise_bundle, backend
):
    """The row path checks its action inline (dtype, shape) before skipping _check_step:
    a graph row of the wrong width goes to the full check, which names it."""
    policy = runtimes.load_policy(gaussian_noise_bundle, backend, seed=0)
    rng = np.random.default_rng(0)
    time_step = first_time_step(sample_time_step(policy.time_step_spec, (), rng))
    assert policy.action(time_step).action.shape == (2,)
    policy._run_borrowed = lambda arrays, unbatched, fetch: [np.zeros((1, 3), F32)]
    with pytest.raises(SpecMismatchError, match=r"action: expected shape \(2,\)"):
        policy.action(time_step)


@pytest.mark.parametrize("backend", ["onnx", "litert"])
def test_a_recurrent_greedy_step_by_position_equals_the_general_step(backend):
    """``_state_step`` (unbatched, outputs by position) against ``_policy_step`` (by
    name): equal episodes with the state fed back, the same checks."""
    policy = cr.load("rnn/greedy_q", backend)
    assert policy._state_row
    general = policy.copy()
    general._state_row = False
    for outer in ((), (3,), (256,)):
        _assert_steps_equal(_episode(policy, outer, steps=6), _episode(general, outer, steps=6))
    # the outputs' check: an action outside the spec is named by the full check
    time_step = first_time_step(
        sample_time_step(policy.time_step_spec, (), np.random.default_rng(1))
    )
    real_run = policy._run

    def run(arrays, unbatched, fetch):
        outputs = real_run(arrays, unbatched, fetch)
        outputs[0] = np.full_like(outputs[0], 99)
        return outputs

    batch = first_time_step(sample_time_step(policy.time_step_spec, (3,), np.random.default_rng(1)))
    for p in (policy, general):
        p._run = run
        p._graph_clips = [None]  # a stand-in graph: the real one's clip is not proven of it
        with pytest.raises(SpecMismatchError, match="action: expected values in"):
            p.action(time_step, p.get_initial_state())
        with pytest.raises(SpecMismatchError, match="action: expected values in"):
            p.action(batch, p.get_initial_state(3))


def test_threads_sampling_rows_take_each_normal_of_the_block_once(gaussian_noise_bundle):
    """4 threads x 60 unbatched sampled calls from the policy's own generator: the actions
    of 240 calls in one thread, in some order (no normal handed out twice, none lost),
    and the generator ends where 480 draws leave it."""
    import threading

    policy = runtimes.load_policy(gaussian_noise_bundle, "onnx", seed=9)
    time_step = first_time_step(
        sample_time_step(policy.time_step_spec, (), np.random.default_rng(2))
    )
    actions = [[] for _ in range(4)]

    def work(i):
        for _ in range(60):
            actions[i].append(policy.action(time_step).action)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    drawn = sorted(tuple(a.tolist()) for per_thread in actions for a in per_thread)
    alone = runtimes.load_policy(gaussian_noise_bundle, "onnx", seed=9)
    # each call takes its row's normals at once: the actions one thread would get
    assert drawn == sorted(tuple(alone.action(time_step).action.tolist()) for _ in range(240))
    reference = np.random.default_rng(9)
    reference.standard_normal(480)
    assert policy._generator(None).random() == reference.random()


@pytest.mark.parametrize("backend", ["onnx", "litert"])
def test_a_sampled_batch_reads_the_outputs_in_place_and_hands_out_new_arrays(
    gaussian_noise_bundle, backend
):
    """The batched sampled path (Deriver.batch_sampler) reads the graph's own buffers:
    an action the caller keeps never changes, and an output of the wrong width is
    still named by the full check."""
    policy = runtimes.load_policy(gaussian_noise_bundle, backend, seed=5)
    assert policy._batch_sample is not None
    kept = []
    for i in range(3):
        time_step = sample_time_step(policy.time_step_spec, (256,), np.random.default_rng(i))
        action = policy.action(first_time_step(time_step)).action
        assert action.dtype == F32 and action.shape == (256, 2)
        kept.append((action, action.copy()))
    for action, snapshot in kept:
        np.testing.assert_array_equal(action, snapshot)
    assert not np.array_equal(kept[0][1], kept[1][1])
    policy._run_borrowed = lambda arrays, unbatched, fetch: [np.zeros((256, 3), F32)]
    with pytest.raises(SpecMismatchError, match=r"action: expected shape \(256, 2\)"):
        policy.action(first_time_step(time_step))
