"""GPTQ int8: rounding that keeps a layer's outputs, and the model it writes."""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from exporters.quantize.gptq import gptq
from exporters.quantize.gptq_onnx import quantize_model
from toolkit.errors import BundleError, ExportError


def _scales(weight):
    return np.abs(weight).max(axis=0) / 127.0


def _inputs(rng, mix, count):
    """Correlated inputs, as a policy's hidden features are (a few directions dominate)."""
    rank, width = mix.shape
    return np.maximum(rng.normal(size=(count, rank)) @ mix, 0) + 0.01 * rng.normal(
        size=(count, width)
    )


def test_gptq_moves_the_layer_outputs_less_than_rounding_to_nearest():
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(48, 16))
    mix = rng.normal(size=(3, 48))
    calibration = _inputs(rng, mix, 2000)
    held_out = _inputs(rng, mix, 2000)  # inputs GPTQ never saw, from the same states
    q = gptq(weight, calibration)
    assert q.dtype == np.int8 and q.shape == weight.shape and np.abs(q).max() <= 127
    scale = _scales(weight)
    nearest = np.clip(np.round(weight / scale), -127, 127) * scale
    error_gptq = np.linalg.norm(held_out @ (weight - q * scale))
    error_nearest = np.linalg.norm(held_out @ (weight - nearest))
    assert error_gptq < 0.5 * error_nearest, (error_gptq, error_nearest)


def _mlp(rng, widths=(4, 32, 32, 2)):
    nodes, inits, last = [], [], "x"
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        inits += [
            numpy_helper.from_array(
                rng.normal(0, 1 / np.sqrt(a), (a, b)).astype(np.float32), f"w{i}"
            ),
            numpy_helper.from_array(rng.normal(0, 0.1, b).astype(np.float32), f"b{i}"),
        ]
        nodes += [
            helper.make_node("MatMul", [last, f"w{i}"], [f"m{i}"], name=f"fc{i}"),
            helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"], name=f"add{i}"),
        ]
        last = f"a{i}"
        if i < len(widths) - 2:
            nodes.append(helper.make_node("Relu", [last], [f"h{i}"], name=f"relu{i}"))
            last = f"h{i}"
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, widths[0]])],
        [helper.make_tensor_value_info(last, TensorProto.FLOAT, [None, widths[-1]])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model, x):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_hidden_layers_are_stored_as_int8_and_the_ends_stay_float():
    rng = np.random.default_rng(3)
    model = _mlp(rng)
    calibration = rng.normal(size=(3000, 4)).astype(np.float32)
    held_out = np.random.default_rng(4).normal(size=(3000, 4)).astype(np.float32)
    result = quantize_model(model, {"x": calibration}, discrete=True)
    onnx.checker.check_model(result.model)
    assert result.int8_layers == ("fc1",)
    assert result.float_layers == ("fc0", "fc2")
    assert result.refitted == ("fc2",)
    stored = {i.name: i.data_type for i in result.model.graph.initializer}
    assert stored["w1_int8"] == TensorProto.INT8 and "w1" not in stored
    assert stored["w0"] == stored["w2"] == TensorProto.FLOAT
    assert len(result.model.SerializeToString()) < len(model.SerializeToString())
    # The input model is left as it was.
    assert {i.name for i in model.graph.initializer} == {"w0", "b0", "w1", "b1", "w2", "b2"}

    # Decisions on states GPTQ never saw: as the float model's, far more often than
    # with the hidden layer rounded to nearest (built here by hand).
    want = _run(model, held_out)
    nearest = onnx.ModelProto.FromString(model.SerializeToString())
    for init in nearest.graph.initializer:
        if init.name == "w1":
            w = numpy_helper.to_array(init)
            s = _scales(w)
            init.CopyFrom(numpy_helper.from_array((np.round(w / s) * s).astype(np.float32), "w1"))
    flips = np.mean(_run(result.model, held_out).argmax(1) != want.argmax(1))
    flips_nearest = np.mean(_run(nearest, held_out).argmax(1) != want.argmax(1))
    assert flips < 0.01 and flips <= flips_nearest, (flips, flips_nearest)


def test_a_graph_of_output_layers_only_has_nothing_to_quantize():
    model = _mlp(np.random.default_rng(5), widths=(4, 2))
    with pytest.raises(ExportError, match="gptq: no hidden or first layer"):
        quantize_model(model, {"x": np.zeros((10, 4), np.float32)}, discrete=True)


def test_litert_hidden_layers_become_int8_weights_feeding_dequantize():
    import tensorflow as tf

    from exporters.quantize.gptq_litert import quantize_litert
    from runtimes.backends.litert import litert_ops, new_interpreter

    rng = np.random.default_rng(6)
    model = _mlp(rng, widths=(4, 64, 64, 3))
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}

    class Mlp(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def distribution(self, x):
            h = tf.nn.relu(x @ weights["w0"] + weights["b0"])
            h = tf.nn.relu(h @ weights["w1"] + weights["b1"])
            return {"q": h @ weights["w2"] + weights["b2"]}

    module = Mlp()
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [module.distribution.get_concrete_function()], module
    )
    float_model = converter.convert()
    signature = next(iter(new_interpreter(float_model).get_signature_list()))
    calibration = rng.normal(size=(3000, 4)).astype(np.float32)
    held_out = np.random.default_rng(7).normal(size=(3000, 4)).astype(np.float32)
    data, int8, kept, refitted = quantize_litert(
        float_model, {"x": calibration}, discrete=True, signature=signature
    )
    assert len(int8) == 1 and len(kept) == 2 and len(refitted) == 1
    assert "DEQUANTIZE" in litert_ops(data) and "DEQUANTIZE" not in litert_ops(float_model)
    assert len(data) < len(float_model)

    def run(model_bytes):
        runner = new_interpreter(model_bytes).get_signature_runner(signature)
        return runner(x=held_out)["q"]

    want, got = run(float_model), run(data)
    np.testing.assert_allclose(got, _run(model, held_out), atol=0.1)
    assert np.mean(got.argmax(1) != want.argmax(1)) < 0.01

    # A model file is untrusted input: one that LiteRT cannot build is a BundleError
    # (the schema's own parser raised struct.error on such files).
    for broken in (float_model[: len(float_model) // 2], float_model[:8] + b"\xff" * 64):
        with pytest.raises(BundleError, match="LiteRT could not load the policy model"):
            quantize_litert(broken, {"x": calibration}, discrete=True, signature=signature)
