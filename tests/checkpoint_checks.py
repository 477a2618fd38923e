"""Checks shared by the checkpoint tests: the TF-free reader against TensorFlow's own.

``assert_reader_matches_tf(prefix)`` compares every tensor of a checkpoint, as
``toolkit.tensor_bundle`` reads it, with ``tf.train.load_checkpoint``: the same keys,
dtypes, shapes and bytes. The checkpoint tests call it on every checkpoint they make.
"""

from __future__ import annotations

import struct

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
