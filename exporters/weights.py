"""Naming-independent views of an ONNX graph, so weights can move between conversions.

tf2onnx names some generated constants differently from one run to the next, but
emits the nodes in the same order. So initializers are numbered by first use along
the node list (``canonical_initializers``), and the graph's structure is hashed with
those numbers in place of names (``graph_fingerprint``). A weights file keyed ``w0,
w1, ...`` then fits every bundle whose manifest carries the same fingerprint, and its
manifest's ``onnx.initializers`` list turns the numbers back into names.
"""

from __future__ import annotations

import hashlib

import onnx

__all__ = ["canonical_initializers", "graph_fingerprint"]


def canonical_initializers(model: onnx.ModelProto) -> list[str]:
    """Initializer names in order of first use by the graph's nodes (unused ones last)."""
    names = {init.name for init in model.graph.initializer}
    order: list[str] = []
    seen: set[str] = set()
    for node in model.graph.node:
        for name in node.input:
            if name in names and name not in seen:
                seen.add(name)
                order.append(name)
    order.extend(init.name for init in model.graph.initializer if init.name not in seen)
    return order


def graph_fingerprint(model: onnx.ModelProto) -> str:
    """sha256 of the graph's structure: ops, wiring, attributes, I/O and weight shapes.

    Names of initializers and intermediate tensors are replaced by their canonical
    numbers, and weight values are left out, so two conversions of one policy
    structure share the fingerprint whatever their weights.
    """
    graph = model.graph
    canonical = {name: f"w{i}" for i, name in enumerate(canonical_initializers(model))}
    produced: dict[str, str] = {}
    digest = hashlib.sha256()

    def ref(name: str) -> str:
        if name in canonical:
            return canonical[name]
        return produced.get(name, f"in:{name}")

    for value in graph.input:
        digest.update(f"in:{value.name}:{_type_text(value)};".encode())
    init_by_name = {init.name: init for init in graph.initializer}
    for name in canonical_initializers(model):
        init = init_by_name[name]
        digest.update(f"{canonical[name]}:{init.data_type}:{list(init.dims)};".encode())
    for index, node in enumerate(graph.node):
        for j, out in enumerate(node.output):
            if out:
                produced[out] = f"t{index}.{j}"
        attributes = [a.SerializeToString(deterministic=True) for a in node.attribute]
        digest.update(
            f"{node.domain}:{node.op_type}({','.join(ref(i) for i in node.input)})".encode()
        )
        for attribute in attributes:
            digest.update(attribute)
    for value in graph.output:
        digest.update(f"out:{value.name}:{_type_text(value)}={ref(value.name)};".encode())
    for opset in model.opset_import:
        digest.update(f"opset:{opset.domain}:{opset.version}".encode())
    return digest.hexdigest()


def _type_text(value: onnx.ValueInfoProto) -> str:
    # Symbolic dims get generated names ("unk__28"): only whether a dim is fixed counts.
    tensor = value.type.tensor_type
    dims = [str(d.dim_value) if d.HasField("dim_value") else "?" for d in tensor.shape.dim]
    return f"{tensor.elem_type}[{','.join(dims)}]"
