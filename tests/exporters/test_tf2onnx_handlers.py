"""The tf2onnx handler for BroadcastArgs, checked against TensorFlow itself."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tensorflow as tf
import tf2onnx
from tf2onnx.handler import tf_op

from exporters import tf2onnx_handlers
from tests.subprocess_utils import run_python

# (s0, s1): equal lengths, different lengths either way, 1s on either side, zeros
# (a 0 beats a 1), empty shapes on one or both sides.
BROADCAST_CASES = [
    ([2, 3], [2, 3]),
    ([3], [2, 1]),
    ([2, 1], [3]),
    ([1, 4], [5, 1, 1]),
    ([5, 1, 1], [1, 4]),
    ([1], [1]),
    ([1, 1, 6], [7, 1]),
    ([], [3, 2]),
    ([3, 2], []),
    ([], []),
    ([0], [1]),
    ([1], [0]),
    ([4, 1, 0], [1, 7, 1]),
    ([2_000_000_000], [1]),
]


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module", params=[tf.int32, tf.int64], ids=["int32", "int64"])
def converted(request):
    dtype = request.param
    tf2onnx_handlers.register_handlers()

    @tf.function(
        input_signature=[
            tf.TensorSpec([None], dtype, name="s0"),
            tf.TensorSpec([None], dtype, name="s1"),
        ]
    )
    def broadcast_args(s0, s1):
        return {"shape": tf.raw_ops.BroadcastArgs(s0=s0, s1=s1)}

    model, _ = tf2onnx.convert.from_function(
        broadcast_args, input_signature=broadcast_args.input_signature, opset=17
    )
    return dtype, broadcast_args, model


def test_the_graph_is_plain_onnx(converted):
    _, _, model = converted
    onnx.checker.check_model(model, full_check=True)
    op_types = {node.op_type for node in model.graph.node}
    assert "BroadcastArgs" not in op_types
    assert all(onnx.defs.has(op) for op in op_types), op_types
    assert [i.name for i in model.graph.input] == ["s0", "s1"]
    assert [o.name for o in model.graph.output] == ["shape"]


@pytest.mark.parametrize(("s0", "s1"), BROADCAST_CASES)
def test_matches_tensorflow(converted, s0, s1):
    dtype, function, model = converted
    np_dtype = dtype.as_numpy_dtype
    a, b = np.array(s0, np_dtype), np.array(s1, np_dtype)
    expected = function(a, b)["shape"].numpy()
    (got,) = _session(model).run(None, {"s0": a, "s1": b})
    assert got.dtype == np_dtype
    np.testing.assert_array_equal(got, expected)
    # numpy's rules are the hand-derived reference for the same cases.
    np.testing.assert_array_equal(got, np.broadcast_shapes(tuple(s0), tuple(s1)))


def test_broadcast_shapes_of_tensors_with_a_dynamic_batch():
    """The way TFP uses it: shapes of two tensors, then BroadcastTo."""
    tf2onnx_handlers.register_handlers()

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, 1, 3], tf.float32, name="x"),
            tf.TensorSpec([4, 1], tf.float32, name="y"),
        ]
    )
    def broadcast(x, y):
        shape = tf.raw_ops.BroadcastArgs(s0=tf.shape(x), s1=tf.shape(y))
        return {"sum": tf.broadcast_to(x, shape) + tf.broadcast_to(y, shape)}

    model, _ = tf2onnx.convert.from_function(
        broadcast, input_signature=broadcast.input_signature, opset=17
    )
    onnx.checker.check_model(model, full_check=True)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 1, 3)).astype(np.float32)
    y = rng.standard_normal((4, 1)).astype(np.float32)
    (got,) = _session(model).run(None, {"x": x, "y": y})
    assert got.shape == (2, 4, 3)
    np.testing.assert_allclose(got, x + y, rtol=0, atol=1e-6)


def test_register_handlers_is_idempotent_and_names_the_ops():
    assert tf2onnx_handlers.register_handlers() == ("BroadcastArgs",)
    assert tf2onnx_handlers.register_handlers() == ("BroadcastArgs",)
    opsets = tf_op.get_opsets()[""]
    handlers = [ops["BroadcastArgs"] for ops in opsets if "BroadcastArgs" in ops]
    assert len(handlers) == 1


def test_nothing_is_registered_on_import():
    result = run_python(
        """
        import tf2onnx.tfonnx  # loads every built-in handler
        from tf2onnx.handler import tf_op
        import exporters.tf2onnx_handlers
        opsets = tf_op.get_opsets()[""]
        print(any("BroadcastArgs" in ops for ops in opsets))
        exporters.tf2onnx_handlers.register_handlers()
        print(any("BroadcastArgs" in ops for ops in opsets))
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "True"]
