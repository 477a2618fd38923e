"""Adding a backend or a format is one module plus one registry line (docs/architecture.md).

The toy backend (tests/extensions/toy_backend.py) and the toy format
(tests/extensions/toy_format.py) are registered here with one line each; nothing else of
the project knows them, yet ``load_policy``, ``run``, ``bench``, ``export``, ``verify``,
``inspect`` and ``update`` take them (or refuse them, naming why).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from exporters import formats
from runtimes import backends
from tests.cli_factories import cartpole_bundle, small_cartpole
from toolkit import bundle
from toolkit.cli import app, common
from toolkit.errors import BundleError
from toolkit.trajectories import time_step as ts

runner = CliRunner()


@pytest.fixture
def toy_backend():
    backends.register(  # the one registry line
        backends.Backend(
            "toy",
            "tests.extensions.toy_backend",
            "ToyPolicy",
            "onnx",
            "onnxruntime",
            "runtime",
            "ONNX",
            weight_updates=False,
            auto=False,
        )
    )
    yield backends.get("toy")
    backends.unregister("toy")


@pytest.fixture
def toy_format():
    from tests.extensions import toy_format

    formats.register(toy_format.FORMAT)  # the one registry line
    yield toy_format.FORMAT
    formats.unregister(toy_format.FORMAT.name)


def _time_steps(batch: int, seed: int = 0) -> ts.TimeStep:
    rng = np.random.default_rng(seed)
    observation = rng.normal(0.0, 1.0, (batch, 4)).astype(np.float32)
    return ts.restart(observation, batch_size=batch)


def test_a_registered_backend_loads_acts_like_the_others_and_the_cli_takes_it(toy_backend):
    from runtimes import load_policy

    path = cartpole_bundle()
    toy = load_policy(path, backend="toy", seed=0)
    onnx = load_policy(path, backend="onnx", seed=0)
    assert type(toy).__name__ == "ToyPolicy" and toy.backend == "toy"
    for batch in (1, 7):
        steps = _time_steps(batch, batch)
        np.testing.assert_array_equal(toy.action(steps).action, onnx.action(steps).action)
    # auto keeps to the table's auto backends: the toy one is never a silent pick.
    assert load_policy(path, seed=0).backend == "onnx"

    result = runner.invoke(
        app, ["run", str(path), "--env", "CartPole-v1", "-n", "2", "--backend", "toy", "--json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["backend"] == "toy"
    # The CLI's --backend help lists the table's backends, a registered one included.
    assert common.backends_help() == "onnx, litert, micro, c, toy: no TensorFlow; tf"
    result = runner.invoke(
        app, ["bench", str(path), "--backend", "toy", "--batch", "1", "--seconds", "0.05"]
    )
    assert result.exit_code == 0, result.output
    assert "toy" in result.stdout


def test_a_command_refuses_a_backend_without_the_capability_it_needs(toy_backend, tmp_path):
    result = runner.invoke(
        app,
        [
            "run",
            str(cartpole_bundle()),
            "--env",
            "CartPole-v1",
            "--backend",
            "toy",
            "--follow",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: --follow: expected a backend with weight updates from checkpoints "
        "(onnx, tf), got 'toy'"
    )


def test_an_unknown_backend_names_the_registered_ones(toy_backend):
    result = runner.invoke(app, ["run", str(cartpole_bundle()), "--env", "CartPole-v1", "-b", "x"])
    assert result.exit_code == 2
    known = "['auto', 'onnx', 'litert', 'micro', 'c', 'tf', 'toy']"
    assert f"expected one of {known}, got 'x'" in result.stderr


def test_a_registered_format_exports_verifies_inspects_and_refuses_updates(toy_format, tmp_path):
    from exporters import export_policy, update_bundle, verify
    from toolkit.errors import UnsupportedError

    path = export_policy(small_cartpole(), tmp_path / "b", formats=["saved_model", "onnx_copy"])
    layout = bundle.read_layout(path)  # the schema readers check takes the new section
    assert list(layout.formats) == ["saved_model", "onnx_copy", "golden"]
    assert layout.format("onnx_copy").path == "policy_copy.onnx"
    report = verify(path)
    assert report.forms == ["saved_model", "onnx_copy"] and report.ok, str(report)
    shown = runner.invoke(app, ["inspect", str(path)])
    assert shown.exit_code == 0, shown.output
    assert "the distribution function again (toy)" in shown.stdout
    with pytest.raises(UnsupportedError, match="policy_copy.onnx takes no updates"):
        update_bundle(path, tmp_path / "nothing")
    # The CLI's --format takes it too.
    result = runner.invoke(
        app,
        [
            "export",
            "tests.cli_factories:small_cartpole",
            str(tmp_path / "c"),
            "--format",
            "onnx_copy",
            "--no-verify",
        ],
    )
    assert result.exit_code == 0, result.output
    assert bundle.read_layout(tmp_path / "c").has("onnx_copy")


def test_an_unregistered_format_is_refused_by_readers(toy_format, tmp_path):
    from exporters import export_policy

    path = export_policy(small_cartpole(), tmp_path / "b", formats=["onnx", "onnx_copy"])
    formats.unregister("onnx_copy")
    with pytest.raises(BundleError, match=r"formats\[1\]: expected one of"):
        bundle.read_layout(path)
    formats.register(toy_format)


def test_the_committed_schema_is_the_registrys():
    """toolkit/schemas/manifest.schema.json holds every registered format's section."""
    import json

    from toolkit.bundle import schema as schema_lib

    assert json.loads(schema_lib.SCHEMA_PATH.read_text()) == formats.schema()
