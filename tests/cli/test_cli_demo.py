"""The demo's pieces that the full run (tests/test_examples.py, --quick) cannot reach."""

from __future__ import annotations

import importlib.util

from tests.subprocess_utils import ROOT


def _demo():
    spec = importlib.util.spec_from_file_location("demo", ROOT / "examples" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_mean_return_reads_the_training_examples_last_line():
    demo = _demo()
    output = "stopped: target after 19082 env steps\nbest evaluation: 500.0\nmean return: 487.5\n"
    assert demo.mean_return(output) == 487.5
    assert demo.mean_return("mean return: -12.0\n") == -12.0
    assert demo.mean_return("crashed before the end\n") == float("-inf")


def test_every_retry_is_a_fresh_run_with_the_next_seed(tmp_path):
    demo = _demo()
    first = demo.train_command(tmp_path / "cartpole_run", 0)
    second = demo.train_command(tmp_path / "cartpole_run_seed1", 1)
    assert "--seed" not in first  # the example's default seed, as the README shows
    assert second[second.index("--seed") + 1] == "1"
    assert second[second.index("--output-dir") + 1] == str(tmp_path / "cartpole_run_seed1")
    # The full demo's budget is in steps, capped in time; the quick one is tiny.
    assert first[first.index("--steps") + 1] == "40000"
    quick = demo.train_command(tmp_path / "r", 0, quick=True)
    assert int(quick[quick.index("--steps") + 1]) <= 3000
    assert quick[quick.index("--jit-compile") + 1] == "0"  # compiling costs more than it trains


def test_the_demo_exports_the_run_it_trained(tmp_path):
    demo = _demo()
    commands = demo.steps(tmp_path, tmp_path / "cartpole_run_seed2")
    export = next(c for c in commands if c[:2] == ["policy-toolkit", "export"])
    assert export[export.index("--checkpoint") + 1] == str(tmp_path / "cartpole_run_seed2")
    assert [c[1] for c in commands] == [
        "export", "verify", "inspect", "run", "run", "quantize", "quantize", "bench",
        "export", "run", "run",
    ]  # fmt: skip
    assert export[export.index("--format") + 1] == "saved_model,onnx,litert"
    runs = [c for c in commands if c[1] == "run"]
    assert [c[c.index("--backend") + 1] for c in runs] == ["onnx", "litert", "micro", "c"]
    # It ends by playing CartPole through TFLite Micro and the compiled C.
    edge = commands[-3]
    assert edge[edge.index("--format") + 1] == "micro,c"
    assert edge[edge.index("--checkpoint") + 1] == str(tmp_path / "cartpole_run_seed2")
    assert {c[2] for c in commands[-2:]} == {edge[3]}
    assert "--no-verify" not in edge  # the full demo verifies agreement on held-out states
    quantize = [c for c in commands if c[1] == "quantize"]
    assert all(c[c.index("--env") + 1] == "CartPole-v1" for c in quantize)
    assert "--force" not in quantize[0]  # the full demo writes only what passes the gates
    bench = commands[-4]
    assert [c for c in bench if "cartpole" in c] == [
        str(tmp_path / "cartpole"),
        str(tmp_path / "cartpole_quantized"),
        str(tmp_path / "cartpole_quantized_litert"),
    ]


def test_outputs_go_under_the_current_folder_not_the_source_tree(tmp_path, monkeypatch):
    demo = _demo()
    monkeypatch.chdir(tmp_path)
    assert demo.parse_args([]).out == tmp_path / "demo_out"
    assert demo.parse_args(["--output-dir", "elsewhere"]).out == tmp_path / "elsewhere"
    assert demo.parse_args(["--out", "old"]).out == tmp_path / "old"  # the older spelling
    # Commands run from the repository root: paths outside it are printed absolute.
    export = demo.steps(tmp_path / "demo_out", tmp_path / "demo_out" / "run")[0]
    assert export[export.index("--checkpoint") + 1] == str(tmp_path / "demo_out" / "run")
