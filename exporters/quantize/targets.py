"""The quantize targets: name -> the module building its candidates, formats, methods.

``TARGETS`` is what ``quantize_bundle``, the CLI's ``--target``/``--method`` choices and
the docs read. A new target is one module and one line here. Its module provides:

* ``check(source)``: BundleError when the float bundle (``source.FloatBundle``) lacks
  what the target reads; returns the bundle members it reads (hash-checked first).
* ``prepare(source)``: what every candidate starts from, read and checked before any
  episode is played; its ``float_model`` is the float model file compared with.
* ``build(method, prepared, source, calibration, tmp)``: one candidate's ``(model
  bytes, float layers)``, calibrated on ``calibration`` (``states.RealStates``).
* ``format_entry(source, model)``: its format's manifest entry (e.g. ``"onnx"``).
* ``finish(model, manifest)``: the model file as written beside ``manifest``.
* ``runner(model)``: a ``graph_io.Runner`` of the model's ``distribution`` graph.

Optional, for a target whose format is not one model file of the distribution graph
(``micro_target``):

* ``bind(prepared, source, states)``: called once the measured states are known; returns
  the object used as the module from then on (``build`` and the rest), bound to them.
* ``files(model, manifest)``: every file of the format, by bundle path (default: the
  one ``finish`` gives, at ``manifest[writes]["file"]``).
* ``agreement(model, tolerance)``: the share of measured states where the candidate
  acts as the float policy (default: its ``runner``'s distribution against the float
  graph's, ``measure.agreement``).

This module imports nothing heavy, so the CLI reads the table at start-up.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
from types import ModuleType

from toolkit.errors import ExportError, UnsupportedError

__all__ = ["METHODS", "TARGETS", "Method", "Target", "target"]


@dataclasses.dataclass(frozen=True)
class Method:
    """One candidate of a target, as the quantized manifest describes it.

    Attributes:
      name: what ``--method`` takes.
      weights: the stored weight type ("int8" or "float16").
      activations: what the graph computes in ("int8", "int16" or "float").
      per_channel: one int8 scale per output channel (else one per tensor).
    """

    name: str
    weights: str = "int8"
    activations: str = "float"
    per_channel: bool = False


@dataclasses.dataclass(frozen=True)
class Target:
    """A quantize target.

    Attributes:
      name: what ``--target`` takes.
      module: the module building its candidates (the interface in the module doc).
      reads: the bundle formats it quantizes from.
      writes: the format of the bundle it writes (that format only).
      methods: its candidates, in the order they are built.
      needs: the modules it imports, checked before any work.
      install: what installs them.
    """

    name: str
    module: str
    reads: tuple[str, ...]
    writes: str
    methods: tuple[Method, ...]
    needs: tuple[str, ...]
    install: str

    @property
    def method_names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.methods)

    def method(self, name: str) -> Method:
        for method in self.methods:
            if method.name == name:
                return method
        raise ExportError(
            f"method: expected 'auto' or one of {list(self.method_names)} for target "
            f"{self.name}, got {name!r}"
        )

    def missing(self) -> list[str]:
        """The modules it needs that are not installed."""
        return [name for name in self.needs if not _installed(name)]

    def check_installed(self) -> None:
        """UnsupportedError naming what to install, before the target does any work."""
        missing = self.missing()
        if missing:
            names = ", ".join(missing)
            raise UnsupportedError(
                f"quantize --target {self.name} needs {names}, which "
                f"{'is' if len(missing) == 1 else 'are'} not installed ({self.install})"
            )

    def load(self) -> ModuleType:
        return importlib.import_module(self.module)


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a blocked or half-installed module
        return False


TARGETS: dict[str, Target] = {
    "onnx": Target(
        "onnx",
        "exporters.quantize.onnx_target",
        reads=("onnx",),
        writes="onnx",
        methods=(
            Method("gptq", per_channel=True),
            Method("dynamic"),
            Method("dynamic-per-channel", per_channel=True),
            Method("dynamic-per-channel-keep-last", per_channel=True),
            Method("static-per-channel-keep-last", activations="int8", per_channel=True),
            Method("float16", weights="float16"),
        ),
        needs=("onnx", "onnxruntime"),
        install="pip install 'policy-toolkit[runtime]'",
    ),
    "litert": Target(
        "litert",
        "exporters.quantize.litert_target",
        reads=("saved_model",),
        writes="litert",
        methods=(
            Method("litert-gptq", per_channel=True),
            Method("litert-dynamic-range", per_channel=True),
            Method("litert-int8", activations="int8", per_channel=True),
            Method("litert-float16", weights="float16"),
        ),
        # The converter (and the flatbuffer schema litert-gptq edits with) is TensorFlow's.
        needs=("tensorflow", "ai_edge_litert"),
        install="pip install 'policy-toolkit[all]'; target onnx needs only the [runtime] extra",
    ),
    "micro": Target(
        "micro",
        "exporters.quantize.micro_target",
        reads=("onnx",),
        writes="micro",
        methods=(
            Method("micro-int8", activations="int8", per_channel=True),
            Method("micro-int16", activations="int16", per_channel=True),
        ),
        # The float graph (read as an MLP, and the reference) and TFLite Micro's interpreter.
        needs=("onnx", "onnxruntime", "tflite_micro"),
        install="pip install 'policy-toolkit[runtime,micro]'",
    ),
}

#: Every method of every target, by name.
METHODS: dict[str, Method] = {m.name: m for t in TARGETS.values() for m in t.methods}


def target(name: str) -> Target:
    """The target called ``name``; ExportError naming the choices otherwise."""
    found = TARGETS.get(name)
    if found is None:
        raise ExportError(f"target: expected one of {list(TARGETS)}, got {name!r}")
    return found
