"""Naming-independent views of an ONNX graph, so weights can move between conversions.

tf2onnx names generated constants and intermediate tensors differently from one run to
the next, and it orders nodes by those names, so neither names nor node order survive
a new conversion of the same policy (seen with LSTM policies: each conversion in one
process came out in another order). So every node gets a *structural key*: a hash of
its op, attributes and inputs traced back to graph inputs and weight shapes (upstream),
and of how its outputs are used on the way to the graph outputs (downstream). Names
and node order play no part. Initializers are numbered by the keys of the nodes that
use them (``canonical_initializers``) and the graph is hashed as the multiset of node
keys (``graph_fingerprint``). A weights file keyed ``w0, w1, ...`` then fits every
bundle whose manifest carries the same fingerprint, and its manifest's
``onnx.initializers`` list turns the numbers back into names.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict

import onnx

__all__ = ["canonical_initializers", "graph_fingerprint"]


def _hash(*parts: object) -> str:
    return hashlib.sha256("\x1f".join(map(str, parts)).encode()).hexdigest()


class _Structure:
    """Structural keys of a graph's nodes and initializers (no names, no order)."""

    def __init__(self, model: onnx.ModelProto):
        graph = model.graph
        self.graph = graph
        self.inits = {init.name: init for init in graph.initializer}
        inputs = {value.name: _type_text(value) for value in graph.input}
        producer: dict[str, tuple[int, int]] = {}
        consumers: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for index, node in enumerate(graph.node):
            for j, out in enumerate(node.output):
                if out:
                    producer[out] = (index, j)
            for k, name in enumerate(node.input):
                if name:
                    consumers[name].append((index, k))
        self.consumers = consumers
        outputs = {value.name: _type_text(value) for value in graph.output}

        def source(name: str) -> str:
            if not name:
                return "none"
            if name in producer:
                index, j = producer[name]
                return f"{up[index]}.{j}"
            if name in self.inits:
                init = self.inits[name]
                return f"init:{init.data_type}:{list(init.dims)}"
            if name in inputs:
                return f"in:{name}:{inputs[name]}"
            return "outer"  # a name from an enclosing graph

        # ONNX keeps nodes in topological order: producers come first.
        up: list[str] = []
        for node in graph.node:
            attributes = [a.SerializeToString(deterministic=True).hex() for a in node.attribute]
            up.append(
                _hash(
                    node.domain,
                    node.op_type,
                    attributes,
                    [source(name) for name in node.input],
                    len(node.output),
                )
            )
        down = [""] * len(up)
        for index in reversed(range(len(graph.node))):
            uses = []
            for j, out in enumerate(graph.node[index].output):
                for c, k in consumers.get(out, []):
                    uses.append(f"{j}>{down[c]}:{k}")
                if out in outputs:
                    uses.append(f"{j}>out:{out}:{outputs[out]}")
            down[index] = _hash(graph.node[index].op_type, sorted(uses))
        self.node_keys = [_hash(u, d) for u, d in zip(up, down, strict=True)]
        self.producer = producer

    def initializer_key(self, name: str) -> str:
        init = self.inits[name]
        uses = sorted(f"{self.node_keys[c]}:{k}" for c, k in self.consumers.get(name, []))
        return _hash(init.data_type, list(init.dims), uses)

    def tensor_key(self, name: str) -> str:
        if name in self.producer:
            index, j = self.producer[name]
            return f"{self.node_keys[index]}.{j}"
        if name in self.inits:
            return f"init:{self.initializer_key(name)}"
        return f"in:{name}"


def canonical_initializers(model: onnx.ModelProto) -> list[str]:
    """Initializer names ordered by structural role (used ones first, unused last).

    Ties (initializers whose every use looks the same, e.g. two equal constants) keep
    the graph's order; swapping such initializers does not change what the graph does
    unless their values differ, which weights of one structure never make ambiguous.
    """
    structure = _Structure(model)
    names = [init.name for init in model.graph.initializer]
    used = [n for n in names if structure.consumers.get(n)]
    unused = [n for n in names if not structure.consumers.get(n)]
    return sorted(used, key=structure.initializer_key) + unused


def graph_fingerprint(model: onnx.ModelProto) -> str:
    """sha256 of the graph's structure: ops, wiring, attributes, I/O and weight shapes.

    Names of initializers and intermediate tensors and the order of nodes are left out
    (see the module docstring), and so are weight values: two conversions of one policy
    structure share the fingerprint whatever their weights.
    """
    graph = model.graph
    structure = _Structure(model)
    digest = hashlib.sha256()
    for value in graph.input:
        digest.update(f"in:{value.name}:{_type_text(value)};".encode())
    for i, name in enumerate(canonical_initializers(model)):
        init = structure.inits[name]
        digest.update(
            f"w{i}:{init.data_type}:{list(init.dims)}:{structure.initializer_key(name)};".encode()
        )
    for key in sorted(structure.node_keys):
        digest.update(f"node:{key};".encode())
    for value in graph.output:
        key = structure.tensor_key(value.name)
        digest.update(f"out:{value.name}:{_type_text(value)}={key};".encode())
    for opset in model.opset_import:
        digest.update(f"opset:{opset.domain}:{opset.version}".encode())
    return digest.hexdigest()


def _type_text(value: onnx.ValueInfoProto) -> str:
    # Symbolic dims get generated names ("unk__28"): only whether a dim is fixed counts.
    tensor = value.type.tensor_type
    dims = [str(d.dim_value) if d.HasField("dim_value") else "?" for d in tensor.shape.dim]
    return f"{tensor.elem_type}[{','.join(dims)}]"
