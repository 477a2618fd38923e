"""A TF-Agents save checked before TensorFlow loads or runs any of it.

A SavedModel is a program: loading one runs its resources' initialisers, and the
import then calls its ``action``, ``distribution``, ``get_train_step`` and
``get_metadata``. A save that reads or writes files, calls Python or talks to the
network would do so at import, and its ops would be traced into the bundle. So
``check_saved_model`` reads the files TensorFlow would read, each bounded first, and
refuses the save unless:

* ``saved_model.pb`` is a regular file of at most ``MAX_SAVED_MODEL_BYTES`` (there is no
  ``saved_model.pbtxt`` or ``saved_model.cpb``, which TensorFlow would read instead),
  holding one MetaGraph with an object graph (TensorFlow 2's loader; without one it
  runs the TF1 graph's initialisers);
* every op TensorFlow 2's loader can run is in ``exporters.tf_agents.ops.ALLOWED``: the
  functions of the object graph (the saved functions, resource initialisers), and every
  function they call (by op name, ``func`` attributes, registered gradients),
  recursively. The top-level graph and the functions nothing reaches (the TF1 saver's
  ``SaveV2``/``RestoreV2``) are never run by ``tf.saved_model.load``;
* ``variables/variables.index`` is at most ``MAX_INDEX_BYTES``; every tensor it declares
  lies within its data file, every variable's declared shape and dtype are those of the
  object graph's variable, and all declared tensors together take at most
  ``MAX_VARIABLE_BYTES`` (TensorFlow allocates what the index declares before reading);
* ``fingerprint.pb``, when present, is a small regular file.

The bounds: a policy's graph is small (the largest TF-Agents save in tests/data, SAC's
collect policy, is 1.2 MB) because its weights live in ``variables/``; a 128 MB
``saved_model.pb`` took TensorFlow 57 s and 7 GB to refuse. 16 MiB leaves 13 times the
largest save. Weights are bounded at 1 GiB: a bundle holds them twice (SavedModel and
ONNX) and ONNX's protobuf cannot exceed 2 GiB.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import numpy as np

from exporters.tf_agents import ops
from toolkit import tensor_bundle
from toolkit.errors import BundleError, CheckpointError

__all__ = [
    "MAX_INDEX_BYTES",
    "MAX_SAVED_MODEL_BYTES",
    "MAX_VARIABLE_BYTES",
    "check_saved_model",
    "check_variables",
    "reachable_functions",
    "read_bounded",
]

MAX_SAVED_MODEL_BYTES = 16 << 20
MAX_INDEX_BYTES = 16 << 20
MAX_VARIABLE_BYTES = 1 << 30
_MAX_FINGERPRINT_BYTES = 1 << 16  # five integers in TF 2.21
_MAX_LISTED = 4  # refused ops named in one message
# An element of a string tensor costs TensorFlow a std::string besides its bytes.
_STRING_ELEMENT_BYTES = 32


def _regular_size(path: Path, limit: int | None, what: str) -> int:
    """The size of a regular file at ``path``, refused past ``limit`` (nothing read)."""
    try:
        info = os.stat(path)
    except OSError as e:
        raise BundleError(f"{path}: cannot read {what} ({e.strerror})") from e
    if not stat.S_ISREG(info.st_mode):
        raise BundleError(f"{path}: expected {what} as a regular file, got another kind of file")
    if limit is not None and info.st_size > limit:
        raise BundleError(
            f"{path}: expected {what} of at most {limit} bytes, got {info.st_size} bytes"
        )
    return info.st_size


def read_bounded(path: Path, limit: int, what: str) -> bytes:
    """A regular file's bytes, refused past ``limit`` before anything is read.

    Opened non-blocking, so a FIFO in its place never blocks; checked again on the
    open file, so a file swapped in after the first check is not read past the limit.

    Raises:
      BundleError: no such file, not a regular file, or larger than ``limit``.
    """
    _regular_size(path, limit, what)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        raise BundleError(f"{path}: cannot read {what} ({e.strerror})") from e
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_size > limit:
            raise BundleError(f"{path}: expected {what} of at most {limit} bytes")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise BundleError(f"{path}: expected {what} of at most {limit} bytes, got more")
    return data


# --- the graph -------------------------------------------------------------------------


def _parse_saved_model(path: Path) -> Any:
    from google.protobuf.message import DecodeError
    from tensorflow.core.protobuf import saved_model_pb2

    data = read_bounded(path, MAX_SAVED_MODEL_BYTES, "a SavedModel")
    proto = saved_model_pb2.SavedModel()
    try:
        proto.ParseFromString(data)
    except DecodeError as e:
        raise BundleError(f"{path}: not a SavedModel protobuf ({e})") from e
    return proto


def reachable_functions(meta_graph: Any) -> dict[str, list[str]]:
    """``{function: [ops]}`` for every library function TensorFlow 2's loader can run.

    The roots are the object graph's functions; a function's calls are op types that
    name a library function, ``func`` and ``list(func)`` attributes, and its registered
    gradient function. Ops that name no library function are listed as ops.
    """
    library = {f.signature.name: f for f in meta_graph.graph_def.library.function}
    gradients = {g.function_name: g.gradient_func for g in meta_graph.graph_def.library.gradient}
    objects = meta_graph.object_graph_def
    roots = list(objects.concrete_functions)
    for node in objects.nodes:
        kind = node.WhichOneof("kind")
        if kind == "function":
            roots.extend(node.function.concrete_functions)
        elif kind == "bare_concrete_function":
            roots.append(node.bare_concrete_function.concrete_function_name)
    out: dict[str, list[str]] = {}
    todo = [name for name in roots if name in library]
    while todo:
        name = todo.pop()
        if name in out:
            continue
        called, op_types = [], []
        for node in library[name].node_def:
            (called if node.op in library else op_types).append(node.op)
            for value in node.attr.values():
                names = [value.func.name] if value.HasField("func") else []
                names += [f.name for f in value.list.func]
                for target in names:
                    (called if target in library else op_types).append(target)
        if name in gradients:
            called.append(gradients[name])
        out[name] = op_types
        todo.extend(c for c in called if c in library and c not in out)
    return out


def _check_ops(path: Path, meta_graph: Any) -> None:
    refused = []
    for function, op_types in sorted(reachable_functions(meta_graph).items()):
        for op in sorted(set(op_types) - ops.ALLOWED):
            refused.append(f"function {function}: op {op} ({ops.category(op)})")
    if not refused:
        return
    also = ""
    if len(refused) > 1:
        listed = ", ".join(refused[1:_MAX_LISTED])
        more = len(refused) - _MAX_LISTED
        also = f" (nor {listed}{f' and {more} more' if more > 0 else ''})"
    raise BundleError(
        f"{path}: {refused[0]} is not allowed{also}; a TF-Agents policy only computes (no "
        "files, Python or network), and nothing of this save was loaded or run"
    )


def check_saved_model(saved_model_dir: str | os.PathLike) -> None:
    """Checks a SavedModel's files, sizes and ops before TensorFlow touches it.

    Raises:
      BundleError: naming the file, the bound or the op (and the function holding it).
    """
    root = Path(saved_model_dir)
    for other in ("saved_model.pbtxt", "saved_model.cpb"):
        if os.path.lexists(root / other):
            raise BundleError(
                f"{root / other}: expected only saved_model.pb (PolicySaver's format), got "
                f"{other}, which TensorFlow would read instead"
            )
    pb = root / "saved_model.pb"
    proto = _parse_saved_model(pb)
    if len(proto.meta_graphs) != 1:
        raise BundleError(
            f"{pb}: expected one MetaGraph (PolicySaver writes one), got {len(proto.meta_graphs)}"
        )
    meta_graph = proto.meta_graphs[0]
    if not meta_graph.object_graph_def.nodes:
        raise BundleError(
            f"{pb}: expected a TensorFlow 2 SavedModel (an object graph, as PolicySaver "
            "writes), got a TF1 one, whose loading runs its graph's initialisers"
        )
    _check_ops(pb, meta_graph)
    fingerprint = root / "fingerprint.pb"
    if os.path.lexists(fingerprint):
        _regular_size(fingerprint, _MAX_FINGERPRINT_BYTES, "a SavedModel fingerprint")
    prefix = root / "variables" / "variables"
    if os.path.lexists(f"{prefix}.index"):
        check_variables(prefix, meta_graph.object_graph_def)


# --- the variables ---------------------------------------------------------------------


def _declared_bytes(entry: tensor_bundle.BundleEntry) -> int:
    count = int(np.prod(entry.shape, dtype=object)) if entry.shape else 1
    name = entry.dtype_name
    if name == "string":
        return entry.size + _STRING_ELEMENT_BYTES * count
    try:
        itemsize = np.dtype(name).itemsize
    except TypeError:
        itemsize = 1  # dtypes numpy lacks (bfloat16, quantized): the bytes on file count
    return max(entry.size, count * itemsize)


def _saved_variable(objects: Any, node_id: int) -> tuple[list[int], str] | None:
    """``(shape, dtype)`` of the object graph's variable ``node_id`` (-1: unknown dim)."""
    if objects is None or not 0 <= node_id < len(objects.nodes):
        return None
    node = objects.nodes[node_id]
    if node.WhichOneof("kind") != "variable":
        return None
    from tensorflow.python.framework import dtypes

    shape = node.variable.shape
    dims = [] if shape.unknown_rank else [d.size for d in shape.dim]
    return dims, dtypes.as_dtype(node.variable.dtype).name


def check_variables(prefix: str | os.PathLike, objects: Any = None) -> None:
    """Bounds a TF checkpoint (a SavedModel's ``variables/``, or a policy checkpoint)
    by what its index declares, before TensorFlow allocates or reads any of it.

    Args:
      prefix: the checkpoint prefix (``<dir>/variables/variables``).
      objects: the SavedModel's ``SavedObjectGraph``, whose node ids are the
        checkpoint's: each variable's declared shape and dtype must be its own.

    Raises:
      BundleError: an oversized index, a tensor outside its data file, a variable of
        another shape or dtype than the SavedModel's, or more than
        ``MAX_VARIABLE_BYTES`` declared in all.
    """
    index = Path(f"{prefix}.index")
    _regular_size(index, MAX_INDEX_BYTES, "a checkpoint index")
    try:
        bundle = tensor_bundle.TensorBundle(prefix)
    except CheckpointError as e:
        raise BundleError(f"{index}: not a readable checkpoint ({e})") from e
    entries = {key: bundle.entry(key) for key in bundle.tensor_names()}
    shard_sizes = {
        shard: _regular_size(bundle.shard_path(shard), None, "a checkpoint data file")
        for shard in sorted({e.shard_id for e in entries.values()})
    }
    total = 0
    for key, entry in entries.items():
        end = entry.offset + entry.size
        if entry.offset < 0 or entry.size < 0 or end > shard_sizes[entry.shard_id]:
            raise BundleError(
                f"{index}: {key}: expected its bytes within its data file "
                f"({shard_sizes[entry.shard_id]} bytes), got {entry.size} bytes at offset "
                f"{entry.offset}"
            )
        total += _declared_bytes(entry)
    if total > MAX_VARIABLE_BYTES:
        raise BundleError(
            f"{index}: expected at most {MAX_VARIABLE_BYTES} bytes of weights, got "
            f"{total} bytes declared"
        )
    graph = entries.get(tensor_bundle.OBJECT_GRAPH_KEY)
    if graph is None:
        return  # no object graph: nothing to compare the variables with
    if graph.size > MAX_INDEX_BYTES:
        raise BundleError(
            f"{index}: expected an object graph of at most {MAX_INDEX_BYTES} bytes, got "
            f"{graph.size} declared"
        )
    try:
        nodes = bundle.object_graph()
    except CheckpointError as e:
        raise BundleError(f"{index}: not a readable checkpoint ({e})") from e
    for node_id, node in enumerate(nodes):
        key = node.attributes.get(tensor_bundle.VARIABLE_VALUE)
        saved = _saved_variable(objects, node_id)
        if key is None or key not in entries or saved is None:
            continue
        entry, (dims, dtype) = entries[key], saved
        fits = len(dims) == len(entry.shape) and all(
            d in (-1, s) for d, s in zip(dims, entry.shape, strict=True)
        )
        if not fits or entry.dtype_name != dtype:
            raise BundleError(
                f"{index}: {key}: the index declares {entry.dtype_name} {list(entry.shape)}, "
                f"the SavedModel's variable is {dtype} {dims}"
            )
