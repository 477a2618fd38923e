"""Pieces of the quantize engine that need no export: the return gate, the output layers."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from exporters.quantize import last_layers, return_floor
from exporters.quantize.engine import _float16_weights


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
    halved = _float16_weights(onnx.ModelProto.FromString(model.SerializeToString()))
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
