"""``publish``: version folders that both servers read, written atomically."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import runtimes
from runtimes.serving.publish import publish
from tests.contract import cases_runtime as cr
from tests.contract.case import sample_time_step
from tests.subprocess_utils import run_python
from toolkit import bundle
from toolkit.errors import BundleError, SpecMismatchError


def test_the_version_is_the_bundle_with_its_saved_model_mirrored_at_the_root(tmp_path):
    source = cr.bundle("greedy_q")
    target = publish(source, tmp_path / "base")
    assert target == (tmp_path / "base" / "7").absolute()  # the train step
    # The bundle itself, unchanged: the same manifest, every file checked by its hash.
    assert (target / "manifest.json").read_bytes() == (source / "manifest.json").read_bytes()
    manifest = bundle.read_manifest(target)
    assert manifest["format_version"] == 1
    # TF Serving's layout: the SavedModel's files at the version's root, unlisted.
    for rel in manifest["files"]:
        if rel.startswith("saved_model/"):
            mirrored = target / rel.removeprefix("saved_model/")
            assert mirrored.read_bytes() == (target / rel).read_bytes(), rel
            assert rel.removeprefix("saved_model/") not in manifest["files"]
    assert (target / "saved_model.pb").is_file()
    assert (target / "variables" / "variables.index").is_file()
    assert [p.name for p in (tmp_path / "base").iterdir()] == ["7"]  # no temporary left


def test_both_backends_act_on_a_published_version_as_on_the_bundle(tmp_path):
    source = cr.bundle("actor/categorical_normal")
    target = publish(source, tmp_path / "base", 3)
    time_step = sample_time_step(
        runtimes.load_policy(source, "onnx").time_step_spec, (4,), np.random.default_rng(0)
    )
    expected = runtimes.load_policy(source, "onnx").action(time_step, seed=5)
    for backend in ("onnx", "tf"):
        got = runtimes.load_policy(target, backend).action(time_step, seed=5)
        for key in ("move", "force"):
            np.testing.assert_allclose(got.action[key], expected.action[key], atol=1e-5)


def test_existing_versions_are_never_replaced(tmp_path):
    publish(cr.bundle("greedy_q"), tmp_path, 1)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(BundleError, match="version 1 already exists; versions are never replaced"):
        publish(cr.bundle("greedy_q"), tmp_path, 1)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_a_damaged_bundle_is_not_published_and_leaves_nothing(tmp_path):
    damaged = tmp_path / "damaged"
    shutil.copytree(cr.bundle("greedy_q"), damaged)
    (damaged / "policy.onnx").write_bytes(b"changed")
    with pytest.raises(BundleError, match="policy.onnx: expected .* bytes"):
        publish(damaged, tmp_path / "base", 1)
    assert not (tmp_path / "base").exists() or not list((tmp_path / "base").iterdir())


def test_versions_must_be_numbers(tmp_path):
    no_step = tmp_path / "no_step"
    shutil.copytree(cr.bundle("greedy_q"), no_step)
    manifest = json.loads((no_step / "manifest.json").read_text())
    manifest["train_step"] = None
    (no_step / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SpecMismatchError, match="--version: expected a version number"):
        publish(no_step, tmp_path / "base")
    for bad in (-1, 2**63, True, "3"):
        with pytest.raises(SpecMismatchError, match="version: expected an int"):
            publish(cr.bundle("greedy_q"), tmp_path / "base", bad)


def test_a_published_version_is_not_updated_in_place(tmp_path):
    from exporters.update import update_bundle

    target = publish(cr.bundle("greedy_q"), tmp_path / "base", 1)
    with pytest.raises(BundleError, match="a published version is never changed in place"):
        update_bundle(target, tmp_path / "nowhere")


def test_publishing_needs_no_tensorflow(tmp_path):
    result = run_python(
        f"""
        import sys
        from runtimes.serving.publish import publish
        print(publish({str(cr.bundle("greedy_q"))!r}, {str(tmp_path / "base")!r}))
        heavy = [m for m in sys.modules if m.split(".")[0] in ("tensorflow", "tf2onnx")]
        assert not heavy, heavy
        """,
        without_tensorflow=True,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "base" / "7" / "saved_model.pb").is_file()


@pytest.mark.slow
def test_saved_model_cli_shows_serving_default_on_a_published_version(tmp_path):
    target = publish(cr.bundle("rnn/actor_distribution"), tmp_path / "base")
    cli = Path(sys.executable).parent / "saved_model_cli"
    result = subprocess.run(
        [
            str(cli),
            "show",
            "--dir",
            str(target),
            "--tag_set",
            "serve",
            "--signature_def",
            "serving_default",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for name in ("observation", "step_type", "policy_state/0/0", "policy_state/0/1"):
        assert f"inputs['{name}']" in out, out
    for name in ("action", "next_state/0/0", "next_state/0/1"):
        assert f"outputs['{name}']" in out, out
    assert "Method name is: tensorflow/serving/predict" in out


def test_publishing_to_a_base_that_is_a_file_is_one_line_and_exit_2(tmp_path):
    from typer.testing import CliRunner

    from toolkit.cli import app

    base = tmp_path / "base"
    base.write_text("not a folder")
    result = CliRunner().invoke(app, ["publish", str(cr.bundle("greedy_q")), str(base)])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines() == [
        f"error: {base}: expected a folder of versions (or a path to create), got a file"
    ]
    result = CliRunner().invoke(app, ["publish", str(cr.bundle("greedy_q")), str(base / "sub")])
    assert result.exit_code == 2, result.output
    assert "cannot create the base path (Not a directory)" in result.stderr


def test_killed_publishes_leave_nothing_the_next_publish_does_not_remove(tmp_path):
    """A publish killed after writing its temporary folder leaves ``.N.tmp-*``; the next
    publish removes it, and only it: not a publish still running (it holds its folder's
    lock), nor anything else hidden in the base path."""
    import fcntl

    base = tmp_path / "base"
    result = run_python(
        f"""
        import os
        from toolkit.bundle import writing
        from runtimes.serving.publish import publish
        writing._crash_hook = lambda point: os._exit(9) if point == "synced" else None
        publish({str(cr.bundle("greedy_q"))!r}, {str(base)!r}, 5)
        """,
        without_tensorflow=True,
    )
    assert result.returncode == 9, result.stderr
    (killed,) = [p.name for p in base.iterdir()]
    assert killed.startswith(".5.tmp-") and (base / killed / "saved_model.pb").is_file()
    running = base / ".6.tmp-0123abcd"
    running.mkdir()
    others = [base / ".5.tmp-notes", base / ".7.old", base / "tmp"]
    for folder in others:
        folder.mkdir()
    fd = os.open(running, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a live publish holds it
        publish(cr.bundle("greedy_q"), base, 8)
    finally:
        os.close(fd)
    names = sorted(p.name for p in base.iterdir())
    assert names == sorted(["8", running.name] + [p.name for p in others])
