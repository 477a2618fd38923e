"""The onnx backend's use of onnxruntime's inner session objects (pinned range, checked here).

runtimes/backends/onnx.py calls ``InferenceSession._sess`` and ``IOBinding._iobinding``
directly, skipping per-call Python checks (measured: 2-4 us of a 15 us action). These
tests fail when an onnxruntime release moves them, so the pin in pyproject.toml is
raised only with them passing.
"""

from __future__ import annotations

import re

import numpy as np
import onnxruntime as ort
from packaging.specifiers import SpecifierSet

from tests.contract import cases_runtime as cr
from tests.contract.case import sample_time_step
from tests.subprocess_utils import ROOT


def test_the_installed_onnxruntime_is_in_the_pinned_range():
    text = (ROOT / "pyproject.toml").read_text()
    pinned = re.search(r'"onnxruntime([^"]+)"', text)[1]
    assert "<" in pinned  # an upper bound: the inner API is not public
    assert ort.__version__ in SpecifierSet(pinned)


def test_the_inner_session_is_used_and_agrees_with_the_public_api():
    policy = cr.load("q", "onnx")  # sampling: the plain run fetches every parameter
    session = policy._session
    assert session.run_plain.__self__ is session.session._sess
    assert session.run_bound.__self__ is session.session._sess
    for outer in ((), (1,), (5,)):
        time_step = sample_time_step(policy.time_step_spec, outer, np.random.default_rng(3))
        arrays, _ = policy._inputs_from(time_step, ())
        batched = [a[None] for a in arrays] if not outer else arrays
        feeds = dict(zip(session.names, batched, strict=True))
        for fetch in (policy._fetch, policy._param_fetch):
            public = session.session.run(list(fetch), feeds)
            mine = policy._run(arrays, not outer, fetch)
            for a, b in zip(public, mine, strict=True):
                np.testing.assert_array_equal(a, b)


def test_bound_buffers_are_bound_through_the_inner_binding():
    policy = cr.load("greedy_q", "onnx")
    time_step = sample_time_step(policy.time_step_spec, (2,), np.random.default_rng(0))
    policy.action(time_step)
    bindings = policy._session.local.bindings
    assert bindings, "the hot path ran without an IO binding"
    for binding in bindings.values():
        assert binding.inner is binding.io._iobinding
