"""Bundles the serving tests share: the contract suite's, plus a second greedy Q version."""

from __future__ import annotations

import functools
from pathlib import Path

from tests import run_cache
from tests.contract import cases_runtime as cr


@functools.cache
def greedy_q_v2() -> Path:
    """``greedy_q`` with other weights and train step 8: a distinguishable next version,
    exported once per test run (the serving files that publish it land on both workers,
    tests/run_cache.py); tests publish copies of it."""
    from exporters.export import export_policy

    policy = cr.set_weights(cr.live("greedy_q"), 99)
    return run_cache.shared(
        "serving-greedy_q_v2",
        lambda to: export_policy(policy, to, train_step=8, metadata={"v": 2}),
    )
