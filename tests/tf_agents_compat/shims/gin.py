"""Stands for gin in TF-Agents' rewritten tests: their setUp clears gin's config, and this
project has no gin config to clear. Anything else from gin is out of scope."""

from __future__ import annotations


def clear_config() -> None:
    """Nothing to clear."""


def __getattr__(name: str):
    raise AttributeError(f"gin.{name}: gin is not used by this project (tests/tf_agents_compat)")
