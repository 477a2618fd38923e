"""tf2onnx handlers for TensorFlow ops that tf2onnx 1.17 cannot convert.

TensorFlow Probability emits ``BroadcastArgs`` (in ``sample``, ``batch_shape_tensor``
and friends, even inside greedy TF-Agents policies), and tf2onnx 1.17 has no handler
for it. Nothing is registered on import: call ``register_handlers()`` before a
conversion (it is idempotent).
"""

from __future__ import annotations

import numpy as np

__all__ = ["HANDLED_OPS", "BroadcastArgsHandler", "register_handlers"]

#: TensorFlow op types this module adds to tf2onnx.
HANDLED_OPS = ("BroadcastArgs",)

# The handler only uses ONNX ops that exist unchanged since opset 9 (Where, Equal on
# integers since 11), so one version covers every opset this project converts to.
_MIN_OPSET = 11

_registered = False


class BroadcastArgsHandler:
    """``BroadcastArgs(s0, s1)``: the broadcast shape of two 1-D shape tensors.

    Numpy rules, aligned on the right: the shorter shape is padded on the left with
    1s, then each dim is the other shape's dim where one of them is 1 (so a 0 beats
    a 1, as in TensorFlow). The output has the inputs' dtype (int32 or int64).

    Incompatible shapes (3 against 4) make TensorFlow raise; the ONNX graph cannot
    raise, and returns the first shape's dim there. Traced TF graphs only reach this
    op with shapes TensorFlow already checked.
    """

    @classmethod
    def version_11(cls, ctx, node, **kwargs):
        del kwargs
        from onnx import TensorProto, helper
        from tf2onnx import utils

        s0, s1 = node.input[0], node.input[1]
        dtype = ctx.get_dtype(s0)
        np_dtype = np.int64 if dtype == TensorProto.INT64 else np.int32
        name = node.name
        out_shapes = node.output_shapes
        out_dtypes = node.output_dtypes
        output = node.output[0]
        ctx.remove_node(name)

        def length(x, tag):
            return ctx.make_node("Shape", [x], op_name_scope=f"{name}_{tag}").output[0]

        n0 = length(s0, "len0")
        n1 = length(s1, "len1")
        n = ctx.make_node("Max", [n0, n1], op_name_scope=name).output[0]
        one = ctx.make_const(utils.make_name(f"{name}_one"), np.array([1], np_dtype)).output[0]

        def padded(x, count, tag):
            # [1] * (n - len(x)) + x: ConstantOfShape makes the 1s, even zero of them.
            missing = ctx.make_node("Sub", [n, count], op_name_scope=f"{name}_{tag}").output[0]
            ones = ctx.make_node(
                "ConstantOfShape",
                [missing],
                attr={"value": helper.make_tensor("value", dtype, [1], [1])},
                op_name_scope=f"{name}_{tag}",
            ).output[0]
            return ctx.make_node(
                "Concat", [ones, x], attr={"axis": 0}, op_name_scope=f"{name}_{tag}"
            ).output[0]

        p0 = padded(s0, n0, "pad0")
        p1 = padded(s1, n1, "pad1")
        is_one = ctx.make_node("Equal", [p0, one], op_name_scope=name).output[0]
        ctx.make_node(
            "Where",
            [is_one, p1, p0],
            outputs=[output],
            name=name,
            shapes=out_shapes,
            dtypes=out_dtypes,
        )


def register_handlers() -> tuple[str, ...]:
    """Adds this module's handlers to tf2onnx's registry; returns the op types handled.

    Safe to call more than once. tf2onnx builds its op mapping at the start of every
    conversion, so handlers registered here apply to all later conversions.
    """
    global _registered
    if not _registered:
        from tf2onnx import handler

        handler.tf_op.register_handler(
            BroadcastArgsHandler.version_11, _MIN_OPSET, ["BroadcastArgs"], "", {}
        )
        _registered = True
    return HANDLED_OPS
