"""Pieces of the quantize engine that need no export: the return gate, the output layers,
the recorded-states reader."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from exporters.quantize import return_floor
from exporters.quantize.gptq_onnx import last_layers
from exporters.quantize.onnx_target import float16_weights


def test_the_return_gate_counts_a_drop_from_the_float_return_for_either_sign():
    assert return_floor(500.0, 0.95) == 475.0
    assert return_floor(-150.0, 0.95) == -157.5  # not -142.5, which would beat the float
    assert return_floor(0.0, 0.5) == 0.0


def _mlp() -> onnx.ModelProto:
    weights = [
        np.ones((4, 3), np.float32),
        np.ones((3, 3), np.float32),
        np.ones((3, 2), np.float32),
    ]
    nodes, last = [], "x"
    for i, _ in enumerate(weights):
        nodes.append(helper.make_node("MatMul", [last, f"w{i}"], [f"m{i}"], name=f"fc{i}"))
        nodes.append(helper.make_node("Relu", [f"m{i}"], [f"h{i}"], name=f"relu{i}"))
        last = f"h{i}"
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info(last, TensorProto.FLOAT, [None, 2])],
        [numpy_helper.from_array(w, f"w{i}") for i, w in enumerate(weights)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_the_last_layers_are_those_no_other_layer_follows():
    assert last_layers(_mlp()) == ["fc2"]


def test_float16_weights_halve_the_weights_and_compute_the_same():
    import onnxruntime as ort

    model = _mlp()
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    halved = float16_weights(onnx.ModelProto.FromString(model.SerializeToString()))
    onnx.checker.check_model(halved)
    stored = {i.name: i.data_type for i in halved.graph.initializer}
    assert stored == {f"{name}_float16": TensorProto.FLOAT16 for name in weights}
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    run = [
        ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            None, {"x": x}
        )[0]
        for m in (model, halved)
    ]
    np.testing.assert_allclose(run[1], run[0], rtol=1e-3)


def test_recorded_states_read_as_numpy_loads_them(tmp_path):
    from exporters.quantize.recorded import Npz

    rng = np.random.default_rng(0)
    arrays = {
        "observation/pos": rng.normal(size=(7, 3)).astype(">f8"),  # big-endian
        "observation/flag": rng.normal(size=(7,)) > 0,
        "step_type": np.asfortranarray(rng.integers(0, 3, (7, 2), dtype=np.int16)),
    }
    for save in (np.savez, np.savez_compressed):
        path = tmp_path / f"{save.__name__}.npz"
        save(path, **arrays)
        with Npz(path) as npz, np.load(path, allow_pickle=False) as want:
            assert sorted(npz.arrays) == sorted(want.files)
            for key in want.files:
                got = npz.read(key)
                assert got.dtype == want[key].dtype and got.shape == want[key].shape
                np.testing.assert_array_equal(got, want[key])


def test_recorded_files_with_bad_members_or_headers_are_named(tmp_path):
    import io
    import struct
    import warnings
    import zipfile

    from exporters.quantize.recorded import MAX_HEADER, Npz
    from toolkit.errors import ExportError

    def archive(name, members):
        path = tmp_path / name
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # zipfile warns of duplicate names
            with zipfile.ZipFile(path, "w") as z:
                for member, data in members:
                    z.writestr(member, data)
        return path

    npy = b"\x93NUMPY\x01\x00"
    one = io.BytesIO()
    np.save(one, np.zeros((2, 4), np.float32))
    cases = {
        archive("text.npz", [("notes.txt", b"hi")]): (
            "expected an .npz of arrays (numpy.savez), got a member 'notes.txt' that is not .npy"
        ),
        archive("long.npz", [("observation.npy", npy + struct.pack("<H", MAX_HEADER + 1))]): (
            f"observation: expected a .npy header of at most {MAX_HEADER} bytes, got 10001"
        ),
        archive("garbage.npz", [("observation.npy", b"PK\x03\x04garbage")]): (
            "observation: expected a .npy array, got other data"
        ),
        archive("code.npz", [("observation.npy", npy + b"\x10\x00" + b"__import__('os')")]): (
            "observation: expected a .npy header, got b\"__import__('os')\""
        ),
        archive("twice.npz", [("observation.npy", one.getvalue())] * 2): (
            "observation: expected one array, got two of that name"
        ),
    }  # fmt: skip
    for path, message in cases.items():
        with pytest.raises(ExportError) as caught:
            Npz(path)
        assert str(caught.value) == f"{path}: {message}"


def test_the_cli_and_the_readme_offer_every_method_of_the_target_table():
    from pathlib import Path

    from typer.testing import CliRunner

    from exporters.quantize.targets import TARGETS
    from toolkit.cli import app

    shown = CliRunner().invoke(app, ["quantize", "--help"], terminal_width=400)
    assert shown.exit_code == 0, shown.output
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    row = next(line for line in readme.splitlines() if line.startswith("| `quantize BUNDLE"))
    for name, target in TARGETS.items():
        assert f"--target {name}" in row and f"{name} (needs {', '.join(target.needs)})" in (
            shown.output
        )
        for method in target.method_names:
            assert f"`{method}`" in row
            assert method in shown.output
