"""What a runtime's cold start leaves out, and that leaving it out changes no behaviour.

A greedy policy loaded with the litert or onnx backend imports neither optree, numpy.random,
OpenSSL's hashlib, threading, dataclasses, json nor the writers' modules (issue 15's cold
start target); the hash check still refuses a changed model. Generators are made on
first use with the seeding of before: seeded draws, per-call Generators and copies give
the actions they gave when the Generator was made at load.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from tests.contract import cases_runtime as cr
from tests.contract.case import sample_time_step
from tests.subprocess_utils import run_python

#: Modules a flat greedy policy's load and action must not import (issue 15).
NOT_IMPORTED = (
    "optree",
    "numpy.random",
    "hashlib",
    "_hashlib",
    "threading",
    "dataclasses",
    "shutil",
    "uuid",
    "tempfile",
    "runtimes.distributions",
    # JSON is read by json's C scanner: importing json compiles six regexes.
    "json",
    "toolkit.bundle.recovery",
)


@pytest.mark.parametrize("backend", ["litert", "onnx"])
def test_loading_and_acting_greedily_imports_none_of_the_heavy_modules(tmp_path, backend):
    bundle = cr.bundle("greedy_q")
    changed = tmp_path / "changed"
    shutil.copytree(bundle, changed)
    model = changed / ("policy.tflite" if backend == "litert" else "policy.onnx")
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 1  # same size, other bytes: only the hash can tell
    model.write_bytes(bytes(data))
    result = run_python(
        f"""
        import sys
        import numpy as np
        import runtimes
        from toolkit.errors import BundleError
        from toolkit.trajectories import time_step as ts

        policy = runtimes.load_policy({str(bundle)!r}, {backend!r})
        shape, action = policy.time_step_spec.observation.shape, policy.action_spec.shape
        step = policy.action(ts.restart(np.zeros(shape, np.float32)))
        assert step.action.shape == action, step
        step = policy.action(ts.restart(np.zeros((3, *shape), np.float32), 3))
        assert step.action.shape == (3, *action), step
        try:
            runtimes.load_policy({str(changed)!r}, {backend!r})
        except BundleError as e:
            assert "expected sha256" in str(e), e
        else:
            raise AssertionError("a changed model loaded")
        loaded = sorted(m for m in sys.modules if m in {NOT_IMPORTED!r})
        print("loaded:", loaded)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("loaded: []"), result.stdout


@pytest.mark.parametrize("backend", ["onnx", "litert"])
@pytest.mark.parametrize("kind", ["q", "gaussian_actor"])
def test_generators_made_on_first_use_draw_as_made_at_load(kind, backend):
    policy = cr.load(kind, backend, seed=7)
    time_step = sample_time_step(policy.time_step_spec, (3,), np.random.default_rng(0))
    # The policy's own Generator is default_rng(7): the draws of one passed per call.
    given = np.random.default_rng(7)
    explicit = [policy.action(time_step, seed=given).action for _ in range(3)]
    fresh = cr.load(kind, backend, seed=7)
    fresh.distribution(time_step)  # no draw: the Generator is still unmade
    own = [fresh.action(time_step).action for _ in range(3)]
    for a, b in zip(explicit, own, strict=True):
        np.testing.assert_array_equal(a, b)
    if kind == "gaussian_actor":  # continuous: equal draws would mean a repeated stream
        assert not np.array_equal(own[0], own[1])

    # A copy continues with the same draws as its original, seeded or not, made or not.
    for seed in (7, None):
        original = cr.load(kind, backend, seed=seed)
        twin = original.copy()
        first = [original.action(time_step).action for _ in range(2)]
        second = [twin.action(time_step).action for _ in range(2)]
        for a, b in zip(first, second, strict=True):
            np.testing.assert_array_equal(a, b)
        later = original.copy()
        np.testing.assert_array_equal(
            later.action(time_step).action, original.action(time_step).action
        )

    if kind == "gaussian_actor":  # unseeded loads draw from OS entropy: they differ
        a, b = cr.load(kind, backend, seed=None), cr.load(kind, backend, seed=None)
        assert not np.array_equal(a.action(time_step).action, b.action(time_step).action)


def test_seeds_numpy_accepts_besides_ints_are_still_taken_and_checked_at_load():
    bundle = cr.bundle("q")
    import runtimes

    sequence = np.random.SeedSequence(7)
    policy = runtimes.load_policy(bundle, "onnx", seed=sequence)
    time_step = sample_time_step(policy.time_step_spec, (2,), np.random.default_rng(0))
    expected = runtimes.load_policy(bundle, "onnx", seed=7).action(time_step).action
    np.testing.assert_array_equal(policy.action(time_step).action, expected)
    with pytest.raises(ValueError):
        runtimes.load_policy(bundle, "onnx", seed=-1)
