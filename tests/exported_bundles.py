"""Bundles of every TF policy kind of the contract suite, exported once per test run.

Export takes seconds per policy, so test modules share these: ``bundle_for(case_id)``
returns ``(bundle_path, tf_policy)`` and caches both. The bundle is exported by the first
of ``make test``'s workers that asks (tests/run_cache.py); the policy is made in each
process (the same weights on every call).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from tests import run_cache
from tests.contract import cases_tf

#: case id -> the contract case, for every TF policy kind.
CASES = {case.id: case for case in cases_tf.CASES}

#: Cases a SavedModel cannot hold: the TF-Agents policies tutorial's network is a plain
#: function whose layer variables no tf.Module tracks. Their bundles are ONNX only.
ONNX_ONLY = frozenset({"tf/actor/tutorial_function"})


def tf_policy_for(case_id: str) -> Any:
    """A fresh TF policy of the case (the same weights on every call)."""
    made = CASES[case_id].make()
    return getattr(made, "tf_policy", made)


@functools.cache
def bundle_for(case_id: str) -> tuple[Path, Any]:
    """``(bundle path, the TF policy it was exported from)``, exported on first use."""
    from exporters import export_policy

    policy = tf_policy_for(case_id)
    formats = ("onnx",) if case_id in ONNX_ONLY else ("saved_model", "onnx")
    path = run_cache.shared(
        "exported-" + case_id.replace("/", "__"),
        lambda to: export_policy(
            policy, to, formats=formats, train_step=42, metadata={"case": case_id}
        ),
    )
    return path, policy
