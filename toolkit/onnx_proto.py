"""A reader of the few ONNX protobuf fields a bundle reader must see first (TF-free, onnx-free).

Before onnxruntime is given a model, readers need two facts from it: whether any tensor
keeps its data outside the file (ONNX *external data*, which onnxruntime resolves
against the working directory when it loads from bytes), and the manifest copy in the
model's ``metadata_props``. Edge devices have onnxruntime but not the ``onnx`` package,
so this walks the protobuf wire format itself (``toolkit.protowire``: lengths checked
before slicing, subgraphs nested at most ``protowire.MAX_DEPTH`` deep), skipping what
it does not need (weights are skipped, not copied).

Field numbers are those of onnx/onnx.proto3 (ModelProto, GraphProto, NodeProto,
AttributeProto, TensorProto, SparseTensorProto, FunctionProto, TrainingInfoProto).
"""

from typing import NamedTuple

from toolkit import protowire
from toolkit.errors import BundleError
from toolkit.protowire import LEN, VARINT, Span

__all__ = ["ModelFacts", "scan_model"]

# ModelProto
_MODEL_GRAPH, _MODEL_METADATA, _MODEL_TRAINING, _MODEL_FUNCTIONS = 7, 14, 20, 25
# GraphProto
_GRAPH_NODE, _GRAPH_INITIALIZER, _GRAPH_SPARSE = 1, 5, 15
# NodeProto
_NODE_ATTRIBUTE = 5
# AttributeProto
_ATTR_T, _ATTR_G, _ATTR_TENSORS, _ATTR_GRAPHS = 5, 6, 10, 11
_ATTR_SPARSE, _ATTR_SPARSES = 22, 23
# TensorProto
_TENSOR_NAME, _TENSOR_EXTERNAL, _TENSOR_LOCATION = 8, 13, 14
# SparseTensorProto
_SPARSE_VALUES, _SPARSE_INDICES = 1, 2
# TrainingInfoProto
_TRAINING_GRAPHS = (1, 2)
# FunctionProto
_FUNCTION_NODE = 7
# StringStringEntryProto
_ENTRY_KEY, _ENTRY_VALUE = 1, 2


class ModelFacts(NamedTuple):
    """What ``scan_model`` found: the model's metadata_props and its external-data tensors.

    A NamedTuple, not a dataclass: readers scan a model on every cold start, and
    importing dataclasses costs about a millisecond.
    """

    metadata: dict[str, str]
    external_tensors: list[str]


class _Scan:
    def __init__(self, data: bytes, where: str):
        self.wire = protowire.Decoder(
            data, lambda reason: BundleError(f"{where}: not a valid ONNX model ({reason})")
        )
        self.metadata: dict[str, str] = {}
        self.external: list[str] = []

    def model(self) -> None:
        wire = self.wire
        for number, kind, value in wire.fields():
            if kind != LEN:
                continue
            if number == _MODEL_GRAPH:
                self.graph(value, 0)
            elif number == _MODEL_METADATA:
                key = val = ""
                for n, w, v in wire.fields(value):
                    if w == LEN and n == _ENTRY_KEY:
                        key = wire.text(v)
                    elif w == LEN and n == _ENTRY_VALUE:
                        val = wire.text(v)
                self.metadata[key] = val
            elif number == _MODEL_TRAINING:
                for n, w, v in wire.fields(value):
                    if w == LEN and n in _TRAINING_GRAPHS:
                        self.graph(v, 1)
            elif number == _MODEL_FUNCTIONS:
                for n, w, v in wire.fields(value):
                    if w == LEN and n == _FUNCTION_NODE:
                        self.node(v, 1)

    def graph(self, span: Span, depth: int) -> None:
        self.wire.check_depth(depth)
        for number, kind, value in self.wire.fields(span):
            if kind != LEN:
                continue
            if number == _GRAPH_NODE:
                self.node(value, depth)
            elif number == _GRAPH_INITIALIZER:
                self.tensor(value)
            elif number == _GRAPH_SPARSE:
                self.sparse(value)

    def node(self, span: Span, depth: int) -> None:
        wire = self.wire
        for number, kind, value in wire.fields(span):
            if kind != LEN or number != _NODE_ATTRIBUTE:
                continue
            for n, w, v in wire.fields(value):
                if w != LEN:
                    continue
                if n in (_ATTR_T, _ATTR_TENSORS):
                    self.tensor(v)
                elif n in (_ATTR_G, _ATTR_GRAPHS):
                    self.graph(v, depth + 1)
                elif n in (_ATTR_SPARSE, _ATTR_SPARSES):
                    self.sparse(v)

    def sparse(self, span: Span) -> None:
        for number, kind, value in self.wire.fields(span):
            if kind == LEN and number in (_SPARSE_VALUES, _SPARSE_INDICES):
                self.tensor(value)

    def tensor(self, span: Span) -> None:
        name, external = "", False
        for number, kind, value in self.wire.fields(span):
            if number == _TENSOR_NAME and kind == LEN:
                name = self.wire.text(value)
            elif (number == _TENSOR_EXTERNAL and kind == LEN) or (
                number == _TENSOR_LOCATION and kind == VARINT and value != 0
            ):
                external = True
        if external:
            self.external.append(name or "(unnamed)")


def scan_model(data: bytes, where: str) -> ModelFacts:
    """The metadata and external-data tensors of a serialized ONNX model.

    Raises:
      BundleError: for bytes that are not a well-formed protobuf message, naming
        ``where`` (``x.onnx: not a valid ONNX model (truncated varint at byte 7)``).
    """
    scan = _Scan(data, where)
    scan.model()
    return ModelFacts(scan.metadata, scan.external)


def check_self_contained(data: bytes, where: str) -> ModelFacts:
    """``scan_model``, refusing a model with any tensor stored as external data."""
    facts = scan_model(data, where)
    if facts.external_tensors:
        names = ", ".join(facts.external_tensors[:5])
        raise BundleError(
            f"{where}: expected a self-contained ONNX model, got tensors with external data "
            f"({names}); onnxruntime would read them from outside the bundle"
        )
    return facts
