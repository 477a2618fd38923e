"""A reader of the few ONNX protobuf fields a bundle reader must see first (TF-free, onnx-free).

Before onnxruntime is given a model, readers need two facts from it: whether any tensor
keeps its data outside the file (ONNX *external data*, which onnxruntime resolves
against the working directory when it loads from bytes), and the manifest copy in the
model's ``metadata_props``. Edge devices have onnxruntime but not the ``onnx`` package,
so this walks the protobuf wire format itself: varints and length-delimited fields,
skipping what it does not need (weights are skipped, not copied).

Field numbers are those of onnx/onnx.proto3 (ModelProto, GraphProto, NodeProto,
AttributeProto, TensorProto, SparseTensorProto, FunctionProto, TrainingInfoProto).
"""

from __future__ import annotations

import dataclasses

from toolkit.errors import BundleError

__all__ = ["ModelFacts", "scan_model"]

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
_MAX_DEPTH = 32

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


def _malformed(reason: str) -> BundleError:
    # Raised inside the scan; scan_model adds where (the scan does not know it).
    return BundleError(reason)


@dataclasses.dataclass(frozen=True)
class ModelFacts:
    """What ``scan_model`` found: the model's metadata_props and its external-data tensors."""

    metadata: dict[str, str]
    external_tensors: list[str]


def _varint(data: memoryview, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise _malformed("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(data: memoryview, start: int, end: int):
    """``(field number, wire type, value)``: value is an int, or (start, end) for LEN."""
    pos = start
    while pos < end:
        key, pos = _varint(data, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise _malformed("field number 0")
        if wire == _VARINT:
            value, pos = _varint(data, pos, end)
            yield number, wire, value
        elif wire == _LEN:
            length, pos = _varint(data, pos, end)
            if pos + length > end:
                raise _malformed("truncated field")
            yield number, wire, (pos, pos + length)
            pos += length
        elif wire == _I64:
            pos += 8
        elif wire == _I32:
            pos += 4
        else:
            raise _malformed(f"wire type {wire}")
        if pos > end:
            raise _malformed("truncated field")


class _Scan:
    def __init__(self, data: bytes):
        self.data = memoryview(data)
        self.metadata: dict[str, str] = {}
        self.external: list[str] = []

    def text(self, span: tuple[int, int]) -> str:
        try:
            return bytes(self.data[span[0] : span[1]]).decode("utf-8")
        except UnicodeDecodeError:
            raise _malformed("a string that is not UTF-8") from None

    def model(self) -> None:
        for number, wire, value in _fields(self.data, 0, len(self.data)):
            if wire != _LEN:
                continue
            if number == _MODEL_GRAPH:
                self.graph(value, 0)
            elif number == _MODEL_METADATA:
                key = val = ""
                for n, w, v in _fields(self.data, *value):
                    if w == _LEN and n == _ENTRY_KEY:
                        key = self.text(v)
                    elif w == _LEN and n == _ENTRY_VALUE:
                        val = self.text(v)
                self.metadata[key] = val
            elif number == _MODEL_TRAINING:
                for n, w, v in _fields(self.data, *value):
                    if w == _LEN and n in _TRAINING_GRAPHS:
                        self.graph(v, 1)
            elif number == _MODEL_FUNCTIONS:
                for n, w, v in _fields(self.data, *value):
                    if w == _LEN and n == _FUNCTION_NODE:
                        self.node(v, 1)

    def graph(self, span: tuple[int, int], depth: int) -> None:
        if depth > _MAX_DEPTH:
            raise _malformed("subgraphs nested too deeply")
        for number, wire, value in _fields(self.data, *span):
            if wire != _LEN:
                continue
            if number == _GRAPH_NODE:
                self.node(value, depth)
            elif number == _GRAPH_INITIALIZER:
                self.tensor(value)
            elif number == _GRAPH_SPARSE:
                self.sparse(value)

    def node(self, span: tuple[int, int], depth: int) -> None:
        for number, wire, value in _fields(self.data, *span):
            if wire != _LEN or number != _NODE_ATTRIBUTE:
                continue
            for n, w, v in _fields(self.data, *value):
                if w != _LEN:
                    continue
                if n in (_ATTR_T, _ATTR_TENSORS):
                    self.tensor(v)
                elif n in (_ATTR_G, _ATTR_GRAPHS):
                    self.graph(v, depth + 1)
                elif n in (_ATTR_SPARSE, _ATTR_SPARSES):
                    self.sparse(v)

    def sparse(self, span: tuple[int, int]) -> None:
        for number, wire, value in _fields(self.data, *span):
            if wire == _LEN and number in (_SPARSE_VALUES, _SPARSE_INDICES):
                self.tensor(value)

    def tensor(self, span: tuple[int, int]) -> None:
        name, external = "", False
        for number, wire, value in _fields(self.data, *span):
            if number == _TENSOR_NAME and wire == _LEN:
                name = self.text(value)
            elif (number == _TENSOR_EXTERNAL and wire == _LEN) or (
                number == _TENSOR_LOCATION and wire == _VARINT and value != 0
            ):
                external = True
        if external:
            self.external.append(name or "(unnamed)")


def scan_model(data: bytes, where: str) -> ModelFacts:
    """The metadata and external-data tensors of a serialized ONNX model.

    Raises:
      BundleError: for bytes that are not a well-formed protobuf message.
    """
    scan = _Scan(data)
    try:
        scan.model()
    except BundleError as e:
        raise BundleError(f"{where}: not a valid ONNX model ({e})") from None
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
