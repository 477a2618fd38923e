"""Micro bundles shared by the micro tests, exported once per test run (by the first of
``make test``'s workers that asks, tests/run_cache.py)."""

from __future__ import annotations

import functools
from pathlib import Path

from tests import run_cache

#: Calibration and held-out episodes of the shared export (short: the policy is untrained).
ENV = {"env": "CartPole-v1", "episodes": 3, "calibration_episodes": 3}


@functools.cache
def cartpole_micro() -> Path:
    """A 100-40 greedy Q policy for CartPole-v1 exported as ONNX and micro."""
    from exporters import export_policy
    from tests.cli_factories import cartpole_100_40

    return run_cache.shared(
        "micro-cartpole",
        lambda to: export_policy(
            cartpole_100_40(), to, formats=["onnx", "micro"], format_options=ENV
        ),
    )


@functools.cache
def cartpole_c() -> Path:
    """The same policy as ``cartpole_micro`` exported as ONNX and C."""
    from exporters import export_policy
    from tests.cli_factories import cartpole_100_40

    options = {"env": ENV["env"], "episodes": ENV["episodes"]}
    return run_cache.shared(
        "micro-cartpole_c",
        lambda to: export_policy(
            cartpole_100_40(), to, formats=["onnx", "c"], format_options=options
        ),
    )


@functools.cache
def cartpole_c_int8() -> Path:
    """The same policy exported as ONNX and C with int8 weights (``c_weights=int8``)."""
    from exporters import export_policy
    from tests.cli_factories import cartpole_100_40

    options = {**ENV, "c_weights": "int8"}
    return run_cache.shared(
        "micro-cartpole_c_int8",
        lambda to: export_policy(
            cartpole_100_40(), to, formats=["onnx", "c"], format_options=options
        ),
    )
