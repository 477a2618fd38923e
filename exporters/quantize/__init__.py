"""``quantize_bundle``: a smaller copy of a bundle's policy, judged on the states it will meet.

A quantized policy is only as good as the actions it takes where the policy really
goes, so every measurement is on *real states* (``states``): episodes of the float
policy in a gymnasium environment, or states the user recorded in an ``.npz``.
Calibration (static activation ranges, GPTQ rounding, refits) uses *other* real
states than those measured, so a candidate fitted to its states cannot pass by
remembering them.

What makes int8 work for small policies: a Q-network's action is decided by a gap
between Q-values that can be a few thousandths of their range, so a per-tensor int8
step flips it often. ``gptq`` (int8 hidden layers rounded by GPTQ on the calibration
states, first and last layers float, the last refitted) agrees on 99.6-100% of the
real states of trained demo policies, where round-to-nearest int8 agrees on 50-94%
and float16 weights on 93-99%.

``method="auto"`` tries the target's candidates in order of file size and takes the
first that passes both gates: agreement >= ``min_agreement`` and, with ``env``, mean
return >= the float policy's less ``(1 - min_return_ratio)`` x its magnitude. Below
the gates nothing is written unless ``force`` (then the most faithful candidate is
written). The report lists every candidate tried, with why it was taken or not.

The modules, one job each; no import circles (an import-linter contract in
pyproject.toml holds them in layers):

* ``engine``: ``quantize_bundle``, which runs the steps below in order and chooses.
* ``targets``: the target table (name -> module, formats read and written, methods,
  what it needs installed); ``onnx_target`` and ``litert_target`` build the candidates.
* ``measure``: agreement, latency and return of a candidate; ``report``: the report.
* ``states``: real states (env rollouts, recorded files, the calibration split);
  ``recorded``: the bounded ``.npz`` reader.
* ``gptq_onnx``, ``gptq_litert``: GPTQ in each format; ``gptq``: the method itself.
* ``source``: the float bundle's manifest, read in one place, and the quantized one.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "LITERT_METHODS",
    "ONNX_METHODS",
    "Candidate",
    "QuantizeReport",
    "RealStates",
    "quantize_bundle",
    "return_floor",
]

_LAZY = {
    "quantize_bundle": "exporters.quantize.engine",
    "Candidate": "exporters.quantize.report",
    "QuantizeReport": "exporters.quantize.report",
    "return_floor": "exporters.quantize.report",
    "RealStates": "exporters.quantize.states",
}


def __getattr__(name: str) -> Any:
    # Lazily, so that the CLI reads the target table (``targets``) without numpy.
    if name in ("ONNX_METHODS", "LITERT_METHODS"):
        from exporters.quantize.targets import TARGETS

        return TARGETS[name.split("_")[0].lower()].method_names
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'exporters.quantize' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
