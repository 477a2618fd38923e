"""A reader of the few ONNX protobuf fields a bundle reader must see first (TF-free, onnx-free).

Before onnxruntime is given a model, readers need two facts from it: whether any tensor
keeps its data outside the file (ONNX *external data*, which onnxruntime resolves
against the working directory when it loads from bytes), and the manifest copy in the
model's ``metadata_props``. Edge devices have onnxruntime but not the ``onnx`` package,
so this walks the protobuf wire format itself (``toolkit.protowire``: lengths checked
before slicing, subgraphs nested at most ``protowire.MAX_DEPTH`` deep), skipping what
it does not need (weights are skipped, not copied).

``output_clips`` reads a little more, once and only when asked: the top-level nodes that
produce given outputs and the constants they compare with, so a runtime can tell that
the graph itself clips an action to constant bounds (see ``output_clips``).

Field numbers are those of onnx/onnx.proto3 (ModelProto, GraphProto, NodeProto,
AttributeProto, TensorProto, SparseTensorProto, FunctionProto, TrainingInfoProto).
"""

from typing import NamedTuple

import numpy as np

from toolkit import protowire
from toolkit.errors import BundleError
from toolkit.protowire import LEN, VARINT, Span

__all__ = ["ModelFacts", "check_self_contained", "output_clips", "scan_model"]

# ModelProto
_MODEL_GRAPH, _MODEL_METADATA, _MODEL_TRAINING, _MODEL_FUNCTIONS = 7, 14, 20, 25
# GraphProto
_GRAPH_NODE, _GRAPH_INITIALIZER, _GRAPH_INPUT, _GRAPH_SPARSE = 1, 5, 11, 15
# NodeProto
_NODE_INPUT, _NODE_OUTPUT, _NODE_OP, _NODE_ATTRIBUTE, _NODE_DOMAIN = 1, 2, 4, 5, 7
# AttributeProto
_ATTR_NAME, _ATTR_F, _ATTR_I = 1, 2, 3
_ATTR_T, _ATTR_G, _ATTR_TENSORS, _ATTR_GRAPHS = 5, 6, 10, 11
_ATTR_SPARSE, _ATTR_SPARSES = 22, 23
# TensorProto
_TENSOR_DIMS, _TENSOR_TYPE, _TENSOR_FLOATS, _TENSOR_INT32S = 1, 2, 4, 5
_TENSOR_INT64S, _TENSOR_NAME, _TENSOR_RAW, _TENSOR_DOUBLES, _TENSOR_UINT64S = 7, 8, 9, 10, 11
_TENSOR_EXTERNAL, _TENSOR_LOCATION = 13, 14
# ValueInfoProto
_VALUE_NAME = 1
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


# --- output_clips ---------------------------------------------------------------------------

#: TensorProto.DataType -> (numpy dtype, the typed field its values may come in instead
#: of raw_data); only the numeric types a bounded action can have
_DATA_TYPES = {
    1: (np.dtype("<f4"), _TENSOR_FLOATS),
    2: (np.dtype("u1"), _TENSOR_INT32S),
    3: (np.dtype("i1"), _TENSOR_INT32S),
    4: (np.dtype("<u2"), _TENSOR_INT32S),
    5: (np.dtype("<i2"), _TENSOR_INT32S),
    6: (np.dtype("<i4"), _TENSOR_INT32S),
    7: (np.dtype("<i8"), _TENSOR_INT64S),
    11: (np.dtype("<f8"), _TENSOR_DOUBLES),
    12: (np.dtype("<u4"), _TENSOR_UINT64S),
    13: (np.dtype("<u8"), _TENSOR_UINT64S),
}
#: constants larger than this are not read (a clip bound is a scalar or one per element)
MAX_CLIP_CONSTANT = 4096
_ONNX_DOMAINS = ("", "ai.onnx")


#: A top-level node as ``output_clips`` reads it: (op, inputs, a Constant node's ``value``
#: tensor span, a Constant's (attribute field, raw value_int / value_float)). A plain
#: tuple: a class here would be built at every import of this module (a cold start).
_Node = tuple


def output_clips(
    data: bytes, outputs: list[str], where: str, overrides: dict[str, np.ndarray] | None = None
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The constant bounds the top-level graph provably clips each of ``outputs`` to.

    An output counts as clipped when the node producing it is ``Clip(x, low, high)``,
    ``Max(Min(x, high), low)`` or ``Min(Max(x, low), high)`` (the ONNX domain, exactly
    those inputs, either operand order) and each bound is a constant: an initializer
    that is not also a graph input (a feed could replace it), with the value
    ``overrides`` gives it if any (the initializers a session was built with), or a
    Constant node. Every element of the output then lies between the smallest and the
    largest element of the two constants together (or is NaN where the input was):
    what the caller compares with its bounds. Anything else, including constants of two
    dtypes, over ``MAX_CLIP_CONSTANT`` elements or stored as external data, leaves the
    output out of the answer.

    Returns:
      ``{output: (low constant, high constant)}`` as flat arrays, for the outputs proven.

    Raises:
      BundleError: bytes that are not a well-formed protobuf message.
    """
    wire = protowire.Decoder(
        data, lambda reason: BundleError(f"{where}: not a valid ONNX model ({reason})")
    )
    graph = next((v for n, k, v in wire.fields() if n == _MODEL_GRAPH and k == LEN), None)
    if graph is None:
        return {}
    wanted = set(outputs)
    producers: dict[str, _Node] = {}
    initializers: dict[str, Span] = {}
    fed: set[str] = set()
    nodes = []
    for number, kind, value in wire.fields(graph):
        if kind != LEN:
            continue
        if number == _GRAPH_NODE:
            nodes.append(value)
        elif number == _GRAPH_INITIALIZER:
            name = _tensor_name(wire, value)
            if name:
                initializers[name] = value
        elif number == _GRAPH_INPUT:
            for n, k, v in wire.fields(value):
                if n == _VALUE_NAME and k == LEN:
                    fed.add(wire.text(v))
    for span in nodes:
        node, outs = _read_node(wire, span)
        for out in outs:
            producers[out] = node
    overrides = overrides or {}

    def constant(name: str) -> np.ndarray | None:
        if name in overrides and name not in initializers:
            return None  # an override of no initializer: not what the model says
        if name in initializers:
            if name in fed:
                return None
            if name in overrides:
                value = np.asarray(overrides[name])
                return value.ravel() if value.size <= MAX_CLIP_CONSTANT else None
            return _tensor_values(wire, initializers[name])
        node = producers.get(name)
        if node is None or node[0] != "Constant":
            return None
        if node[2] is not None:
            return _tensor_values(wire, node[2])
        if node[3] is not None:
            kind, raw = node[3]
            if kind == _ATTR_I:
                return np.array([protowire.signed64(int(raw))], np.int64)
            return np.frombuffer(int(raw).to_bytes(4, "little"), "<f4").copy()
        return None

    def split(node: _Node | None, op: str) -> tuple[str, np.ndarray] | None:
        """``(x, c)`` for a node ``op(x, c)`` or ``op(c, x)`` with one constant operand."""
        if node is None or node[0] != op or len(node[1]) != 2:
            return None
        for i in (0, 1):
            c = constant(node[1][i])
            if c is not None and constant(node[1][1 - i]) is None:
                return node[1][1 - i], c
        return None

    found = {}
    for name in wanted:
        node = producers.get(name)
        if node is None:
            continue
        bounds = None
        if node[0] == "Clip" and len(node[1]) == 3 and all(node[1]):
            low, high = constant(node[1][1]), constant(node[1][2])
            if low is not None and high is not None:
                bounds = low, high
        elif node[0] in ("Max", "Min"):
            inner_op = "Min" if node[0] == "Max" else "Max"
            outer = split(node, node[0])
            inner = split(producers.get(outer[0]), inner_op) if outer else None
            if outer is not None and inner is not None:
                bounds = (outer[1], inner[1]) if node[0] == "Max" else (inner[1], outer[1])
        if bounds is not None and bounds[0].dtype == bounds[1].dtype:
            found[name] = bounds
    return found


def _read_node(wire: protowire.Decoder, span: Span) -> tuple[_Node | None, list[str]]:
    """A node's op (None outside the ONNX domain), inputs and outputs; a Constant's value."""
    op, domain, inputs, outputs = "", "", [], []
    attributes = []
    for number, kind, value in wire.fields(span):
        if kind != LEN:
            continue
        if number == _NODE_OP:
            op = wire.text(value)
        elif number == _NODE_INPUT:
            inputs.append(wire.text(value))
        elif number == _NODE_OUTPUT:
            outputs.append(wire.text(value))
        elif number == _NODE_DOMAIN:
            domain = wire.text(value)
        elif number == _NODE_ATTRIBUTE:
            attributes.append(value)
    if domain not in _ONNX_DOMAINS:
        return None, outputs
    tensor = scalar = None
    if op == "Constant" and len(attributes) == 1:  # exactly one value attribute
        name, fields = "", {}
        for n, k, v in wire.fields(attributes[0]):
            if n == _ATTR_NAME and k == LEN:
                name = wire.text(v)
            else:
                fields[n] = (k, v)
        if name == "value" and fields.get(_ATTR_T, (None,))[0] == LEN:
            tensor = fields[_ATTR_T][1]
        elif name == "value_int" and fields.get(_ATTR_I, (None,))[0] == protowire.VARINT:
            scalar = (_ATTR_I, fields[_ATTR_I][1])
        elif name == "value_float" and fields.get(_ATTR_F, (None,))[0] == protowire.I32:
            scalar = (_ATTR_F, fields[_ATTR_F][1])
    return (op, inputs, tensor, scalar), outputs


def _tensor_name(wire: protowire.Decoder, span: Span) -> str:
    for number, kind, value in wire.fields(span):
        if number == _TENSOR_NAME and kind == LEN:
            return wire.text(value)
    return ""


def _tensor_values(wire: protowire.Decoder, span: Span) -> np.ndarray | None:
    """A small dense tensor's values, flat; None for anything else (external, too big,
    a type or a size unlike its dims)."""
    dims, data_type, raw, typed = [], None, None, []
    for number, kind, value in wire.fields(span):
        if number == _TENSOR_DIMS:
            if kind == LEN:  # packed
                pos, end = value
                while pos < end:
                    dim, pos = wire.varint(pos, end)
                    dims.append(protowire.signed64(dim))
            elif kind == protowire.VARINT:
                dims.append(protowire.signed64(value))
        elif number == _TENSOR_TYPE and kind == protowire.VARINT:
            data_type = value
        elif number == _TENSOR_RAW and kind == LEN:
            raw = value
        elif number in (_TENSOR_EXTERNAL, _TENSOR_LOCATION) and (kind == LEN or value):
            return None
        elif kind != LEN or number != _TENSOR_NAME:
            typed.append((number, kind, value))
    entry = _DATA_TYPES.get(data_type)
    if entry is None or any(d < 0 for d in dims):
        return None
    count = 1
    for d in dims:
        count *= d
        if count > MAX_CLIP_CONSTANT:
            return None
    dtype, field = entry
    if raw is not None:
        if raw[1] - raw[0] != count * dtype.itemsize:
            return None
        return np.frombuffer(wire.bytes(raw), dtype).astype(dtype.newbyteorder("="))
    values: list = []
    for number, kind, value in typed:
        if number != field:
            continue
        if kind == LEN:  # packed
            pos, end = value
            if field in (_TENSOR_FLOATS, _TENSOR_DOUBLES):
                width = 4 if field == _TENSOR_FLOATS else 8
                if (end - pos) % width:
                    return None
                values.extend(np.frombuffer(wire.bytes(value), f"<f{width}").tolist())
                continue
            while pos < end:
                item, pos = wire.varint(pos, end)
                values.append(item)
        else:
            values.append(value)
        if len(values) > count:
            return None
    if len(values) != count:
        return None
    if field in (_TENSOR_FLOATS, _TENSOR_DOUBLES):
        if values and not isinstance(values[0], float):  # unpacked: fixed-width ints
            width = 4 if field == _TENSOR_FLOATS else 8
            values = [
                np.frombuffer(int(v).to_bytes(width, "little"), f"<f{width}")[0] for v in values
            ]
        return np.array(values, dtype.newbyteorder("="))
    if dtype.kind == "i":  # varints hold the two's complement of negatives
        values = [protowire.signed64(v) for v in values]
    try:
        return np.array(values, dtype.newbyteorder("="))
    except OverflowError:
        return None
