"""Stands for TF-Agents modules this project does not mirror (drivers, TF environments,
bandits), so that a test file that imports one of them still imports.

The tests that use them are deselected (``scope.DESELECTED`` names them, with why); any
use that reaches this module anyway fails, naming what it asked for.
"""

from __future__ import annotations


def __getattr__(name: str):
    raise AttributeError(
        f"{name}: from a TF-Agents module this project does not mirror "
        "(tests/tf_agents_compat/scope.py deselects the tests that use it)"
    )
