"""Checks shared by the checkpoint tests: the TF-free reader against TensorFlow's own.

``assert_reader_matches_tf(prefix)`` compares every tensor of a checkpoint, as
``toolkit.tensor_bundle`` reads it, with ``tf.train.load_checkpoint``: the same keys,
dtypes, shapes and bytes. The checkpoint tests call it on every checkpoint they make.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

from toolkit import tensor_bundle

#: How many checkpoints were compared in this process (reported by the tests).
COMPARED: list[str] = []


def assert_reader_matches_tf(prefix) -> int:
    """Compares every tensor bit for bit; returns how many were compared."""
    import tensorflow as tf

    reference = tf.train.load_checkpoint(str(prefix))
    ours = tensor_bundle.TensorBundle(prefix)
    assert ours.tensor_names() == sorted(reference.get_variable_to_shape_map())
    dtypes = reference.get_variable_to_dtype_map()
    for key in ours.tensor_names():
        want, got = reference.get_tensor(key), ours.get(key)
        if dtypes[key] == tf.string:
            assert got.dtype == object
            assert np.asarray(want, dtype=object).tolist() == got.tolist(), key
            continue
        want = np.asarray(want)
        assert got.dtype == want.dtype, (key, got.dtype, want.dtype)
        assert got.shape == want.shape, (key, got.shape, want.shape)
        assert got.tobytes() == want.tobytes(), key
    COMPARED.append(str(prefix))
    return len(ours.tensor_names())


# --- a minimal table writer, for checkpoints TF would not write --------------------------


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def field(number: int, wire: int, value) -> bytes:
    tag = _varint(number << 3 | wire)
    if wire == 0:
        return tag + _varint(value & (1 << 64) - 1)
    if wire == 5:
        return tag + struct.pack("<I", value)
    return tag + _varint(len(value)) + value


def entry_proto(dtype, shape, shard=0, offset=0, size=0, crc=0, sliced=False) -> bytes:
    dims = b"".join(field(2, 2, field(1, 0, d)) for d in shape)
    out = field(1, 0, dtype) + field(2, 2, dims) + field(3, 0, shard)
    out += field(4, 0, offset) + field(5, 0, size) + field(6, 5, crc)
    if sliced:
        out += field(7, 2, b"")
    return out


def _block(entries: list[tuple[bytes, bytes]]) -> bytes:
    body = b"".join(_varint(0) + _varint(len(k)) + _varint(len(v)) + k + v for k, v in entries)
    return body + struct.pack("<I", 0) + struct.pack("<I", 1)


def write_index(path, entries: dict[bytes, bytes], num_shards: int = 1) -> None:
    """A valid table (one data block) mapping tensor names to entry protos."""
    header = field(1, 0, num_shards)
    rows = sorted([(b"", header), *entries.items()])
    data = _block(rows)
    trailer = b"\x00" + struct.pack("<I", tensor_bundle.masked_crc32c(data + b"\x00"))
    index_offset = len(data) + 5
    handle = _varint(0) + _varint(len(data))
    index = _block([(rows[-1][0] + b"\xff", handle)])
    index_trailer = b"\x00" + struct.pack("<I", tensor_bundle.masked_crc32c(index + b"\x00"))
    footer = _varint(0) + _varint(0) + _varint(index_offset) + _varint(len(index))
    footer = footer.ljust(40, b"\x00") + struct.pack("<Q", 0xDB4775248B80FB57)
    with open(path, "wb") as f:
        f.write(data + trailer + index + index_trailer + footer)


# --- whole checkpoints written by hand (TF-free), and hostile rewrites of real ones -------


def _object_graph(nodes: list[tuple[dict[str, int], dict[str, str]]]) -> bytes:
    """A TrackableObjectGraph: per node, its children {local name: id} and attributes
    {name: checkpoint key}."""
    out = b""
    for children, attributes in nodes:
        body = b"".join(
            field(1, 2, field(1, 0, child) + field(2, 2, name.encode()))
            for name, child in children.items()
        )
        body += b"".join(
            field(2, 2, field(1, 2, name.encode()) + field(3, 2, key.encode()))
            for name, key in attributes.items()
        )
        out += field(1, 2, body)
    return out


def _string_scalar(value: bytes) -> tuple[bytes, int]:
    """A string scalar as TF stores it (length, its masked crc, the bytes) and its crc."""
    length = struct.pack("<I", len(value))
    checksum = struct.pack("<I", tensor_bundle.masked_crc32c(length))
    return _varint(len(value)) + checksum + value, tensor_bundle.masked_crc32c(
        length + checksum + value
    )


_DTYPE_ENUMS = {"float32": 1, "float64": 2, "int32": 3, "int64": 9}


def write_policy_checkpoint(
    prefix, variables: dict[str, np.ndarray], train_step: int | None = None
) -> str:
    """A checkpoint as ``tf.train.Checkpoint(policy=module, train_step=step)`` writes it,
    where ``module`` has one variable per name (its object path: ``[name]``).
    TF's own reader reads it (tests/toolkit/test_tensor_bundle.py checks)."""
    names = sorted(variables)
    nodes: list[tuple[dict[str, int], dict[str, str]]] = [({"policy": 1}, {}), ({}, {})]
    tensors: dict[str, np.ndarray] = {}
    for name in names:
        key = f"policy/{name}/.ATTRIBUTES/VARIABLE_VALUE"
        nodes[1][0][name] = len(nodes)
        nodes.append(({}, {tensor_bundle.VARIABLE_VALUE: key}))
        tensors[key] = np.ascontiguousarray(variables[name])
    if train_step is not None:
        key = "train_step/.ATTRIBUTES/VARIABLE_VALUE"
        nodes[0][0]["train_step"] = len(nodes)
        nodes.append(({}, {tensor_bundle.VARIABLE_VALUE: key}))
        tensors[key] = np.int64(train_step)
    data, entries = b"", {}
    graph, crc = _string_scalar(_object_graph(nodes))
    entries[tensor_bundle.OBJECT_GRAPH_KEY.encode()] = entry_proto(
        7, [], offset=0, size=len(graph), crc=crc
    )
    data += graph
    for key, value in sorted(tensors.items()):
        raw = np.asarray(value).astype(np.asarray(value).dtype.newbyteorder("<")).tobytes()
        entries[key.encode()] = entry_proto(
            _DTYPE_ENUMS[np.asarray(value).dtype.name],
            list(np.shape(value)),
            offset=len(data),
            size=len(raw),
            crc=tensor_bundle.masked_crc32c(raw),
        )
        data += raw
    prefix = str(prefix)
    Path(prefix).parent.mkdir(parents=True, exist_ok=True)
    Path(f"{prefix}.data-00000-of-00001").write_bytes(data)
    write_index(f"{prefix}.index", entries)
    return prefix


def declare_shape(prefix, key: str, shape: tuple[int, ...]) -> int:
    """Rewrites a checkpoint's index so tensor ``key`` declares ``shape``, its bytes a
    sparse hole appended to its shard (a file that costs nothing on disk); returns the
    bytes declared. The rest of the checkpoint is unchanged."""
    reader = tensor_bundle.TensorBundle(prefix)
    entries = {}
    for name in reader.tensor_names():
        e = reader.entry(name)
        entries[name.encode()] = entry_proto(
            e.dtype, e.shape, e.shard_id, e.offset, e.size, e.crc32c
        )
    e = reader.entry(key)
    size = int(np.prod(shape, dtype=np.int64)) * np.dtype(e.dtype_name).itemsize
    shard = reader.shard_path(e.shard_id)
    offset = shard.stat().st_size
    os.truncate(shard, offset + size)
    entries[key.encode()] = entry_proto(e.dtype, list(shape), e.shard_id, offset, size, e.crc32c)
    write_index(f"{prefix}.index", entries, num_shards=reader.num_shards)
    return size
