"""Bundles the serving tests share: the contract suite's, plus a second greedy Q version."""

from __future__ import annotations

import functools
from pathlib import Path

from tests.contract import cases_runtime as cr


@functools.cache
def greedy_q_v2() -> Path:
    """``greedy_q`` with other weights and train step 8: a distinguishable next version."""
    from exporters.export import export_policy

    policy = cr.set_weights(cr.live("greedy_q"), 99)
    return export_policy(policy, cr._root() / "greedy_q_v2", train_step=8, metadata={"v": 2})
