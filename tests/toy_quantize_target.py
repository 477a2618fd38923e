"""A toy quantize target (the interface of ``exporters.quantize.targets``), for the test
that a target is one module and one table entry (tests/cli/test_cli_quantize.py).

It keeps the ONNX graph's weights float but rounds them to bfloat16's 8 significant
bits; everything else is the onnx target's.
"""

from __future__ import annotations

import numpy as np

from exporters.quantize import onnx_target

check = onnx_target.check
prepare = onnx_target.prepare
format_entry = onnx_target.format_entry
finish = onnx_target.finish
runner = onnx_target.runner
#: The methods built, in order (the test reads it).
built: list[str] = []


def build(method, prepared, source, calibration, tmp):
    from onnx import numpy_helper

    built.append(method)
    model = type(prepared.model)()
    model.CopyFrom(prepared.model)
    for init in model.graph.initializer:
        value = numpy_helper.to_array(init)
        if value.dtype == np.float32:
            bits = value.view(np.uint32) & np.uint32(0xFFFF0000)  # bfloat16's bits
            init.CopyFrom(numpy_helper.from_array(bits.view(np.float32), init.name))
    return model.SerializeToString(), ()
