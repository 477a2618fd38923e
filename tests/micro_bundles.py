"""Micro bundles shared by the micro tests, exported once per test process."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path


@functools.cache
def _root() -> Path:
    """The folder of this process's micro bundles (made on first use, removed at exit)."""
    root = Path(tempfile.mkdtemp(prefix="micro-bundles-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return root


#: Calibration and held-out episodes of the shared export (short: the policy is untrained).
ENV = {"env": "CartPole-v1", "episodes": 3, "calibration_episodes": 3}


@functools.cache
def cartpole_micro() -> Path:
    """A 100-40 greedy Q policy for CartPole-v1 exported as ONNX and micro."""
    from exporters import export_policy
    from tests.cli_factories import cartpole_100_40

    return export_policy(
        cartpole_100_40(), _root() / "cartpole", formats=["onnx", "micro"], format_options=ENV
    )


@functools.cache
def cartpole_c() -> Path:
    """The same policy as ``cartpole_micro`` exported as ONNX and C."""
    from exporters import export_policy
    from tests.cli_factories import cartpole_100_40

    options = {"env": ENV["env"], "episodes": ENV["episodes"]}
    return export_policy(
        cartpole_100_40(), _root() / "cartpole_c", formats=["onnx", "c"], format_options=options
    )


@functools.cache
def cartpole_c_int8() -> Path:
    """The same policy exported as ONNX and C with int8 weights (``c_weights=int8``)."""
    from exporters import export_policy
    from tests.cli_factories import cartpole_100_40

    options = {**ENV, "c_weights": "int8"}
    return export_policy(
        cartpole_100_40(),
        _root() / "cartpole_c_int8",
        formats=["onnx", "c"],
        format_options=options,
    )
