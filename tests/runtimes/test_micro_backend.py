"""The micro backend: TFLite Micro's interpreter behind the Python-policy interface."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from toolkit import bundle
from toolkit.errors import UnsupportedError
from toolkit.trajectories import time_step as ts

pytest.importorskip("tflite_micro")

runner = CliRunner()


@pytest.fixture(scope="module")
def micro_bundle():
    from tests.micro_bundles import cartpole_micro

    return cartpole_micro()


def test_load_policy_runs_the_micro_model_batched_and_unbatched(micro_bundle):
    from tflite_micro.python.tflite_micro import runtime

    from exporters.formats import micro
    from runtimes import load_policy

    layout = bundle.read_layout(micro_bundle)
    states, _ = micro.read_held_out(micro_bundle, layout)
    policy = load_policy(micro_bundle, backend="micro")
    assert policy.backend == "micro"
    got = policy.action(ts.restart(states, batch_size=len(states))).action
    # The same model under a fresh interpreter of tflite-micro, row by row.
    interpreter = runtime.Interpreter.from_bytes(
        (micro_bundle / "micro/policy.tflite").read_bytes(), arena_size=1 << 16
    )
    want = []
    for row in states:
        interpreter.set_input(row[None], 0)
        interpreter.invoke()
        want.append(int(interpreter.get_output(0)[0]))
    assert got.dtype == np.int64 and got.shape == (len(states),)
    np.testing.assert_array_equal(got, want)
    one = policy.action(ts.restart(states[0])).action
    assert one.shape == () and int(one) == want[0]


def test_what_the_micro_model_cannot_do_is_refused(micro_bundle):
    from runtimes import load_policy

    policy = load_policy(micro_bundle, backend="micro")
    step = ts.restart(np.zeros((2, 4), np.float32), batch_size=2)
    with pytest.raises(UnsupportedError, match="deterministic action only"):
        policy.distribution(step)
    with pytest.raises(UnsupportedError, match="takes no checkpoints"):
        policy.update_from_checkpoint("somewhere")
    # auto never picks it silently.
    assert load_policy(micro_bundle).backend == "onnx"


def test_run_and_bench_take_the_micro_backend(micro_bundle):
    from toolkit.cli import app

    result = runner.invoke(
        app, ["run", str(micro_bundle), "--env", "CartPole-v1", "-n", "2", "-b", "micro", "--json"]
    )
    assert result.exit_code == 0, result.output
    result = runner.invoke(
        app, ["bench", str(micro_bundle), "-b", "micro", "--batch", "1", "--seconds", "0.05"]
    )
    assert result.exit_code == 0, result.output
    assert "micro" in result.stdout


def test_a_manifest_declaring_too_small_an_arena_cannot_crash_the_interpreter(
    micro_bundle, tmp_path
):
    """The loader runs in at least the model's own arena bound: an arena too small can
    crash this tflite-micro release (SIGSEGV) instead of failing."""
    import json
    import shutil

    from runtimes import load_policy

    copy = tmp_path / "small_arena"
    shutil.copytree(micro_bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["micro"]["arena_bytes"] = 16
    (copy / "manifest.json").write_text(json.dumps(manifest))
    states = np.zeros((3, 4), np.float32)
    got = load_policy(copy, backend="micro").action(ts.restart(states, batch_size=3)).action
    want = load_policy(micro_bundle, backend="micro").action(ts.restart(states, batch_size=3))
    np.testing.assert_array_equal(got, want.action)


def _rehash(root) -> None:
    import json

    manifest = json.loads((root / "manifest.json").read_text())
    manifest["files"] = bundle.hash_files(root)
    (root / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("seed", range(4))
def test_a_damaged_micro_model_is_refused_or_acts_within_the_spec(micro_bundle, tmp_path, seed):
    """Bytes of micro/policy.tflite cut or flipped, the manifest's hashes rewritten to match:
    the micro backend (whose tflite-micro release trusts its flatbuffer) refuses with a
    ToolkitError or acts within the action spec; it never crashes the process."""
    import shutil

    from runtimes import load_policy
    from toolkit.errors import ToolkitError

    rng = np.random.default_rng(seed)
    states = ts.restart(np.zeros((2, 4), np.float32), batch_size=2)
    outcomes = []
    for trial in range(12):
        copy = tmp_path / f"m{trial}"
        shutil.copytree(micro_bundle, copy)
        model = copy / "micro/policy.tflite"
        data = bytearray(model.read_bytes())
        if trial == 0:
            data = data[: int(rng.integers(1, len(data)))]
        else:
            for where in rng.integers(0, len(data), int(rng.integers(1, 9))):
                data[where] ^= 1 << int(rng.integers(0, 8))
        model.write_bytes(bytes(data))
        _rehash(copy)
        try:
            action = load_policy(copy, backend="micro").action(states).action
        except ToolkitError as e:
            outcomes.append(type(e).__name__)
            continue
        assert action.shape == (2,) and np.all((action >= 0) & (action <= 1)), action
        outcomes.append("acted")
    assert len(outcomes) == 12


def _fc(model):
    """The first FULLY_CONNECTED operator of a parsed model and its input tensors."""
    graph = model.subgraphs[0]
    for op in graph.operators:
        code = model.operatorCodes[op.opcodeIndex]
        if max(code.builtinCode, code.deprecatedBuiltinCode) == 9:  # FULLY_CONNECTED
            return op, [graph.tensors[i] for i in op.inputs]
    raise AssertionError("no FULLY_CONNECTED")


def _weights_wider(model):
    _, (_, weights, _) = _fc(model)
    weights.shape = np.array([weights.shape[0], weights.shape[1] * 2], np.int32)


def _offline_arena(model):
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

    entry = schema.MetadataT()
    entry.name = b"OfflineMemoryAllocation"
    entry.buffer = 0
    model.metadata = [entry]


def _shorter_bias(model):
    _, (_, _, bias) = _fc(model)
    model.buffers[bias.buffer].data = model.buffers[bias.buffer].data[:-4]


def _input_read_before_written(model):
    graph = model.subgraphs[0]
    graph.operators[0].inputs = np.array([graph.operators[-1].outputs[0], 1], np.int32)


def _argmax_along_the_batch(model):
    graph = model.subgraphs[0]
    for op in graph.operators:
        code = model.operatorCodes[op.opcodeIndex]
        if max(code.builtinCode, code.deprecatedBuiltinCode) == 56:  # ARG_MAX
            axis = graph.tensors[op.inputs[1]]
            model.buffers[axis.buffer].data = np.frombuffer(
                np.array([0], "<i4").tobytes(), np.uint8
            )
            return
    raise AssertionError("no ARG_MAX")


HOSTILE = {
    "an argmax along the batch axis": (
        _argmax_along_the_batch,
        "expected ARG_MAX along a constant int32 axis 1",
    ),
    "an operator code out of range": (
        lambda m: setattr(m.subgraphs[0].operators[0], "opcodeIndex", 99),
        "operator 0: expected an operator code below",
    ),
    "a tensor index out of range": (
        lambda m: setattr(m.subgraphs[0].operators[0], "inputs", np.array([0, 999], np.int32)),
        "operator 0: expected tensor indices below",
    ),
    "a buffer index out of range": (
        lambda m: setattr(m.subgraphs[0].tensors[1], "buffer", 999),
        "tensor 1: expected a buffer index below",
    ),
    "weights wider than their bytes": (_weights_wider, r"expected \d+ bytes of INT8"),
    "a bias shorter than its shape": (_shorter_bias, r"expected \d+ bytes of INT(32|64)"),
    "an offline arena plan": (_offline_arena, "metadata: expected none"),
    "a tensor read before it is computed": (
        _input_read_before_written,
        "operator 0: expected inputs computed before it",
    ),
    "a batch of 2": (
        lambda m: setattr(m.subgraphs[0].tensors[0], "shape", np.array([2, 4], np.int32)),
        r"operator 0: expected MUL of a \(1, n\) tensor",
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_well_formed_micro_model_that_does_not_hold_together_is_refused(
    micro_bundle, tmp_path, case
):
    """Canonical flatbuffers (they pass the re-packing check) whose indices, sizes or
    metadata TFLite Micro would trust: each is refused, naming the part, before TFLite
    Micro sees it."""
    import shutil

    import flatbuffers
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

    from runtimes import load_policy
    from toolkit.errors import BundleError

    mutate, message = HOSTILE[case]
    copy = tmp_path / "hostile"
    shutil.copytree(micro_bundle, copy)
    path = copy / "micro/policy.tflite"
    model = schema.ModelT.InitFromPackedBuf(bytearray(path.read_bytes()), 0)
    mutate(model)
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path.write_bytes(bytes(builder.Output()))
    _rehash(copy)
    with pytest.raises(BundleError, match=f"micro/policy.tflite: .*{message}"):
        load_policy(copy, backend="micro")
