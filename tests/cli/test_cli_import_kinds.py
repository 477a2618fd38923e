"""import-tf-agents on the saves of TF-Agents' own agents: --greedy, and no bundle left
behind by a failed verification."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import exporters
from tests import tf_agents_saved
from toolkit import bundle as bundle_lib
from toolkit.cli import app
from toolkit.trajectories.time_step import TimeStep

pytestmark = pytest.mark.slow  # three imports with their ONNX conversions

runner = CliRunner()


@pytest.fixture(scope="module")
def saves() -> Path:
    """The saves of TF-Agents' agents, unpacked once per test process (tests copy what
    they change)."""
    return tf_agents_saved.saves()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_greedy_imports_the_core_of_dqns_collect_policy(saves, tmp_path):
    out = tmp_path / "dqn"
    result = invoke("import-tf-agents", saves / "dqn_collect" / "saved_policy", out, "--greedy")
    assert result.exit_code == 0, result.output
    assert "imported action_core of" in result.stdout
    metadata = bundle_lib.read_manifest(out)["metadata"]
    assert metadata["tf_agents_greedy"] is True
    from runtimes import load_policy

    with np.load(saves / "dqn_greedy" / "expected.npz") as rec:
        n = len(rec["step_type"])
        step = TimeStep(
            rec["step_type"], np.zeros(n, np.float32), np.ones(n, np.float32), rec["observation"]
        )
        action = load_policy(out).action(step).action
        np.testing.assert_array_equal(action, rec["action"])


def test_collect_import_says_which_exploration_it_rebuilt(saves, tmp_path):
    result = invoke("import-tf-agents", saves / "td3_collect" / "saved_policy", tmp_path / "t")
    assert result.exit_code == 0, result.output
    assert "note: TF-Agents' exploration rebuilt as gaussian" in result.stderr


def test_a_failed_verification_leaves_no_bundle_and_keeps_the_old_one(saves, tmp_path, monkeypatch):
    """A real comparison with zero tolerance: TD3's forms differ by ~1e-9."""
    real = exporters.verify
    monkeypatch.setattr(exporters, "verify", lambda path, n, **kw: real(path, n, atol=0, rtol=0))
    out = tmp_path / "td3"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    result = invoke("import-tf-agents", saves / "td3_collect" / "saved_policy", out, "--overwrite")
    assert result.exit_code == 1, result.output
    assert f"{out}: not written: the imported SavedModel and ONNX forms differ" in result.stderr
    assert (out / "keep.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["td3"]  # no staging left
