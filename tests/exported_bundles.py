"""Bundles of every TF policy kind of the contract suite, exported once per test process.

Export takes seconds per policy, so test modules share these: ``bundle_for(case_id)``
returns ``(bundle_path, tf_policy)`` and caches both.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path
from typing import Any

from tests.contract import cases_tf


@functools.cache
def _root() -> Path:
    """The folder of this process's bundles (made on first use, removed at exit)."""
    root = Path(tempfile.mkdtemp(prefix="policy-bundles-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return root


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
    path = _root() / case_id.replace("/", "__")
    formats = ("onnx",) if case_id in ONNX_ONLY else ("saved_model", "onnx")
    export_policy(policy, path, formats=formats, train_step=42, metadata={"case": case_id})
    return path, policy
