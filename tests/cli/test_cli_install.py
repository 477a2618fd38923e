"""What an install without the command line, or without an optional module, is told.

Modules are made unimportable in a fresh interpreter (a finder that refuses them), as
if the extra that installs them were missing; tests/cli/test_device_install.py does the
same with real installs into fresh venvs.
"""

from __future__ import annotations

from importlib import metadata

import pytest

from tests.subprocess_utils import ROOT, run_python

#: A finder that makes ``BLOCK`` unimportable, prepended to the snippets below.
BLOCKER = """
import importlib.abc, sys
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCK:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, _Block())
"""


def _blocked(modules: tuple[str, ...], code: str, **kwargs):
    return run_python(f"BLOCK = {modules!r}\n{BLOCKER}\n{code}", **kwargs)


CLI_MISSING = (
    "error: the policy-toolkit command line needs typer and rich, which is not installed: "
    "pip install 'policy-toolkit[cli]' (or a device extra, which includes it: '[runtime]', "
    "'[litert]')"
)


@pytest.mark.parametrize("how", ["python -m toolkit", "console script"])
def test_without_the_cli_extra_the_command_says_which_extra_in_one_line(how):
    if how == "python -m toolkit":
        code = "import runpy, sys\nsys.argv = ['toolkit', '--help']\n"
        code += "runpy.run_module('toolkit', run_name='__main__')"
    else:
        # What pip's generated script does: import the entry point's module, call it.
        (script,) = metadata.entry_points(group="console_scripts", name="policy-toolkit")
        module, function = script.value.split(":")
        code = "import sys\nsys.argv = ['policy-toolkit', '--help']\n"
        code += f"from {module} import {function}\n{function}()"
    done = _blocked(("typer", "rich"), code)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [CLI_MISSING]
    assert "Traceback" not in done.stderr


def test_with_the_cli_extra_the_entry_point_runs_the_cli():
    done = run_python(
        "import sys\nsys.argv = ['policy-toolkit', '--version']\n"
        "from toolkit.__main__ import main\nmain()"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("policy-toolkit ")


def test_the_three_packages_are_typed_and_the_license_is_apache_2():
    # tests/cli/test_device_install.py checks that a wheel install ships them.
    for package in ("toolkit", "exporters", "runtimes"):
        assert (ROOT / package / "py.typed").is_file()
    text = (ROOT / "LICENSE").read_text()
    assert text.split()[:4] == ["Apache", "License", "Version", "2.0,"]
    assert "END OF TERMS AND CONDITIONS" in text
    assert metadata.metadata("policy-toolkit")["License-Expression"] == "Apache-2.0"


# --- a command checks what it needs before doing work ----------------------------------


def _cli(blocked: tuple[str, ...], *args, spy: bool = False, timeout: float = 120):
    """``policy-toolkit ARGS`` in a fresh interpreter where ``blocked`` cannot be imported.

    With ``spy``, starting the episodes of ``run`` prints ``PLAYED`` on stderr (so a test
    sees whether work began before the command failed).
    """
    code = "import sys\n"
    if spy:
        code += (
            "import toolkit.cli.rollout as _r\n"
            "def _spy(f):\n"
            "    def g(*a, **k):\n"
            "        print('PLAYED', file=sys.stderr, flush=True)\n"
            "        return f(*a, **k)\n"
            "    return g\n"
            "_r.rollout = _spy(_r.rollout)\n"
        )
    code += f"sys.argv = ['policy-toolkit', *{[str(a) for a in args]!r}]\n"
    code += "from toolkit.__main__ import main\nmain()"
    return _blocked(blocked, code, timeout=timeout)


def _error(done) -> str:
    return done.stderr.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def onnx_bundle(tmp_path_factory):
    from exporters import export_policy
    from tests.cli_factories import small_cartpole

    return export_policy(small_cartpole(seed=8), tmp_path_factory.mktemp("b") / "onnx", ("onnx",))


@pytest.fixture(scope="module")
def litert_bundle(tmp_path_factory):
    from exporters import export_policy
    from tests.cli_factories import small_cartpole

    root = tmp_path_factory.mktemp("b")
    return export_policy(small_cartpole(), root / "litert", formats=("onnx", "litert"))


def test_bench_plot_without_matplotlib_fails_before_benchmarking(onnx_bundle, tmp_path):
    plot = tmp_path / "b.png"
    args = ("bench", onnx_bundle, "--batch", "1", "--seconds", "0.05", "--plot", plot)
    done = _cli(("matplotlib",), *args)
    assert done.returncode == 2, done.stderr
    assert _error(done) == "error: --plot: matplotlib is not installed (pip install matplotlib)"
    assert "batch 1" not in done.stderr  # nothing was timed
    assert not plot.exists()


def test_bench_on_a_litert_install_checks_every_bundle_before_timing(litert_bundle, onnx_bundle):
    # [litert] alone: onnxruntime and TensorFlow are missing.
    blocked = ("onnxruntime", "tensorflow")
    args = ("bench", litert_bundle, onnx_bundle, "--batch", "1", "--seconds", "0.05")
    done = _cli(blocked, *args)
    assert done.returncode == 2, done.stderr
    assert _error(done) == (
        f"error: {onnx_bundle}: no backend for its formats (onnx) is installed: "
        "pip install 'policy-toolkit[runtime]' (onnx backend)"
    )
    assert "litert batch 1" not in done.stderr  # the first bundle was not timed either
    done = _cli(blocked, *args, "--backend", "litert")
    assert done.returncode == 2, done.stderr
    assert _error(done) == (
        f"error: {onnx_bundle}: the bundle was exported without LiteRT (formats ['onnx', "
        "'golden']); pip install 'policy-toolkit[runtime]' (onnx backend)"
    )
    done = _cli(blocked, "bench", litert_bundle, "--batch", "1", "--seconds", "0.05", "--json")
    assert done.returncode == 0, done.stderr
    assert '"backend": "litert"' in done.stdout


@pytest.mark.parametrize(
    ("blocked", "message"),
    [
        (
            "PIL",
            "error: --record: writing the GIF needs pillow, which is not installed "
            "(pip install pillow)",
        ),
        (
            "pygame",
            "error: --record: rendering CartPole-v1 needs pygame, which is not installed "
            "(pip install pygame)",
        ),
    ],
)
def test_run_record_names_what_it_needs_before_playing(onnx_bundle, tmp_path, blocked, message):
    gif = tmp_path / "e.gif"
    args = ("run", onnx_bundle, "--env", "CartPole-v1", "-n", "3", "--record", gif)
    done = _cli((blocked,), *args, spy=True)
    assert done.returncode == 2, done.stderr
    assert _error(done) == message
    assert "PLAYED" not in done.stderr and not gif.exists()


def test_export_names_a_format_s_missing_module_before_loading_tensorflow(tmp_path):
    args = ("export", "tests.cli_factories:small_cartpole", tmp_path / "b", "-f", "onnx,litert")
    done = _cli(("ai_edge_litert",), *args)
    assert done.returncode == 2, done.stderr
    assert _error(done) == (
        "error: export --format litert: ai_edge_litert is not installed "
        "(pip install 'policy-toolkit[litert]')"
    )
    assert "load TensorFlow" not in done.stderr


def test_import_tf_agents_names_a_format_s_missing_module_before_loading_tensorflow(tmp_path):
    args = ("import-tf-agents", tmp_path, tmp_path / "b", "-f", "onnx,litert")
    done = _cli(("ai_edge_litert",), *args)
    assert done.returncode == 2, done.stderr
    assert _error(done) == (
        "error: import-tf-agents --format litert: ai_edge_litert is not installed "
        "(pip install 'policy-toolkit[litert]')"
    )
    assert "load TensorFlow" not in done.stderr
    done = _cli(("tensorflow",), *args)
    assert _error(done) == (
        "error: import-tf-agents: TensorFlow is not installed (pip install 'policy-toolkit[all]')"
    )


# serve --backend tf without TensorFlow, refused before serving with one line naming the
# TF-free alternative: tests/runtimes/serving/test_hostile.py
# (test_backends_the_server_cannot_run_are_refused_before_serving).


def test_load_policy_advises_only_what_is_installed_or_the_extra_to_install(onnx_bundle):
    from tests.cli_factories import cartpole_bundle

    code = f"""
from runtimes import load_policy
from toolkit.errors import BundleError, UnsupportedError
for path, backend in (({str(cartpole_bundle())!r}, "auto"), ({str(onnx_bundle)!r}, "litert")):
    try:
        load_policy(path, backend)
    except (BundleError, UnsupportedError) as e:
        print(str(e).replace(path, "BUNDLE"))
"""
    # Nothing installed: auto names the extras; litert on an ONNX bundle names [runtime].
    done = _blocked(("onnxruntime", "ai_edge_litert", "tensorflow"), code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "BUNDLE: no backend for its formats (onnx, saved_model) is installed: pip install "
        "'policy-toolkit[runtime]' (onnx backend) or 'policy-toolkit[all]' (tf backend)",
        "BUNDLE: the bundle was exported without LiteRT (formats ['onnx', 'golden']); pip "
        "install 'policy-toolkit[runtime]' (onnx backend)",
    ]
    # onnxruntime installed: auto loads the first bundle; the advice is that backend.
    done = _blocked(("ai_edge_litert", "tensorflow"), code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "BUNDLE: the bundle was exported without LiteRT (formats ['onnx', 'golden']); use "
        "backend='onnx'"
    ]


def test_verify_without_tensorflow_checks_the_onnx_graph_against_the_golden_vectors():
    import json

    from tests.cli_factories import cartpole_bundle

    done = _cli(("tensorflow", "ai_edge_litert"), "verify", cartpole_bundle(), "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] and report["forms"] == ["onnx"] and report["reference"] == "golden"
    assert report["skipped"] == {
        "saved_model": "TensorFlow is not installed (pip install 'policy-toolkit[all]')"
    }
    assert report["recorded"] == {"golden": "16 time steps x 1 step recorded from tf_policy"}
    assert {(r["form"], r["reference"], r["output"]) for r in report["outputs"]} == {
        ("onnx", "golden", "distribution/loc"),
        ("onnx", "golden", "action"),
    }
    done = _cli(("tensorflow", "ai_edge_litert"), "verify", cartpole_bundle())
    assert done.returncode == 0, done.stderr
    assert "saved_model: skipped, TensorFlow is not installed (pip install " in done.stdout
