"""TensorFlow checkpoints read with numpy and the standard library (no TensorFlow).

A TF checkpoint ``<prefix>`` is a *tensor bundle*:

* ``<prefix>.index``: a LevelDB-format table (an SSTable: data blocks of prefix-compressed
  ``key -> value`` entries with restart points, an index block, a 48-byte footer; each
  block followed by a compression byte and a masked crc32c). The entry under the empty
  key is a ``BundleHeaderProto`` (``num_shards``, ``endianness``, ``version``); every
  other key is a tensor name and its value a ``BundleEntryProto`` (``dtype``, ``shape``,
  ``shard_id``, ``offset``, ``size``, ``crc32c``, ``slices``).
* ``<prefix>.data-NNNNN-of-MMMMM``: the shards, holding each tensor's bytes at its
  ``offset``: raw little-endian values, or for strings varint64 lengths, a 4-byte masked
  crc32c of the lengths, then the bytes.

The two protobuf messages are decoded by hand from the wire format (six fields each),
so reading needs no generated protos. Everything read is untrusted: sizes and offsets
are checked against the files' sizes before anything is allocated or read, every block
and tensor is checked against its crc32c, and anything unexpected raises a
``CheckpointError`` naming the file and what was wrong. Sliced (partitioned) variables,
big-endian bundles, compressed tables and dtypes without a numpy equivalent (resource,
variant, quantized, bfloat16) are refused.

``checkpoint_state(directory)`` reads the ``checkpoint`` state file TF's
``CheckpointManager`` writes (a text proto naming the latest prefix) the same way.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from toolkit.errors import CheckpointError

__all__ = [
    "OBJECT_GRAPH_KEY",
    "VARIABLE_VALUE",
    "BundleEntry",
    "ObjectNode",
    "TensorBundle",
    "checkpoint_state",
    "crc32c",
    "is_complete",
    "masked_crc32c",
    "resolve",
]

_FOOTER_SIZE = 48
_TABLE_MAGIC = 0xDB4775248B80FB57
_BLOCK_TRAILER = 5  # compression type byte + masked crc32c
_MAX_VARINT_BYTES = 10

# TF's DataType enum -> numpy dtype (the dtypes checkpoints of policies hold).
_DTYPES: dict[int, np.dtype] = {
    1: np.dtype("<f4"),  # DT_FLOAT
    2: np.dtype("<f8"),  # DT_DOUBLE
    3: np.dtype("<i4"),  # DT_INT32
    4: np.dtype("u1"),  # DT_UINT8
    5: np.dtype("<i2"),  # DT_INT16
    6: np.dtype("i1"),  # DT_INT8
    8: np.dtype("<c8"),  # DT_COMPLEX64
    9: np.dtype("<i8"),  # DT_INT64
    10: np.dtype("?"),  # DT_BOOL
    17: np.dtype("<u2"),  # DT_UINT16
    18: np.dtype("<c16"),  # DT_COMPLEX128
    19: np.dtype("<f2"),  # DT_HALF
    22: np.dtype("<u4"),  # DT_UINT32
    23: np.dtype("<u8"),  # DT_UINT64
}
_DT_STRING = 7
_DTYPE_NAMES = {
    11: "qint8",
    12: "quint8",
    13: "qint32",
    14: "bfloat16",
    15: "qint16",
    16: "quint16",
    20: "resource",
    21: "variant",
}


# --- crc32c ------------------------------------------------------------------------------


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE: list[int] | None = None


def _crc32c_python(data: bytes, crc: int = 0) -> int:
    global _TABLE
    if _TABLE is None:
        _TABLE = _crc32c_table()
    table = _TABLE
    crc ^= 0xFFFFFFFF
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


try:  # Google's C implementation (the runtime extra installs it); pure Python otherwise.
    import google_crc32c as _google_crc32c
except ImportError:  # pragma: no cover - exercised only without the extra
    _google_crc32c = None


def crc32c(data: bytes, crc: int = 0) -> int:
    """CRC-32C (Castagnoli) of ``data``, continuing from ``crc``."""
    if _google_crc32c is not None:
        return _google_crc32c.extend(crc, bytes(data))
    return _crc32c_python(bytes(data), crc)


def masked_crc32c(data: bytes) -> int:
    """LevelDB's and TF's masked CRC-32C (stored crcs are masked)."""
    return _mask(crc32c(data))


# --- protobuf wire format ----------------------------------------------------------------


def _varint(data: bytes | memoryview, pos: int, end: int, where: str) -> tuple[int, int]:
    result = shift = 0
    for i in range(_MAX_VARINT_BYTES):
        if pos + i >= end:
            raise CheckpointError(f"{where}: truncated varint")
        byte = data[pos + i]
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos + i + 1
        shift += 7
    raise CheckpointError(f"{where}: varint longer than 10 bytes")


def _fields(data: bytes, where: str) -> Iterator[tuple[int, int, Any]]:
    """``(field number, wire type, value)`` of a protobuf message (no groups)."""
    pos, end = 0, len(data)
    while pos < end:
        tag, pos = _varint(data, pos, end, where)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(data, pos, end, where)
        elif wire == 1 or wire == 5:
            width = 8 if wire == 1 else 4
            if pos + width > end:
                raise CheckpointError(f"{where}: truncated field {number}")
            value = int.from_bytes(data[pos : pos + width], "little")
            pos += width
        elif wire == 2:
            length, pos = _varint(data, pos, end, where)
            if length > end - pos:
                raise CheckpointError(
                    f"{where}: field {number} declares {length} bytes, {end - pos} left"
                )
            value = bytes(data[pos : pos + length])
            pos += length
        else:
            raise CheckpointError(f"{where}: unsupported protobuf wire type {wire}")
        yield number, wire, value


def _signed64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


class BundleEntry(NamedTuple):
    """One tensor's ``BundleEntryProto``: where its bytes are and what they hold."""

    dtype: int
    shape: tuple[int, ...]
    shard_id: int
    offset: int
    size: int
    crc32c: int
    sliced: bool

    @property
    def dtype_name(self) -> str:
        if self.dtype == _DT_STRING:
            return "string"
        if self.dtype in _DTYPES:
            return _DTYPES[self.dtype].name
        return _DTYPE_NAMES.get(self.dtype, f"dtype enum {self.dtype}")


def _parse_shape(data: bytes, where: str) -> tuple[int, ...]:
    dims = []
    for number, wire, value in _fields(data, where):
        if number == 2 and wire == 2:  # Dim {int64 size = 1; string name = 2}
            size = 0
            for n, w, v in _fields(value, where):
                if n == 1 and w == 0:
                    size = _signed64(v)
            if size < 0:
                raise CheckpointError(f"{where}: expected a known shape, got a dim of {size}")
            dims.append(size)
        elif number == 3 and wire == 0 and value:
            raise CheckpointError(f"{where}: expected a known shape, got an unknown rank")
    return tuple(dims)


def _parse_entry(data: bytes, where: str) -> BundleEntry:
    fields = {"dtype": 0, "shape": (), "shard_id": 0, "offset": 0, "size": 0, "crc32c": 0}
    sliced = False
    for number, wire, value in _fields(data, where):
        if number == 1 and wire == 0:
            fields["dtype"] = value
        elif number == 2 and wire == 2:
            fields["shape"] = _parse_shape(value, where)
        elif number == 3 and wire == 0:
            fields["shard_id"] = _signed64(value)
        elif number == 4 and wire == 0:
            fields["offset"] = _signed64(value)
        elif number == 5 and wire == 0:
            fields["size"] = _signed64(value)
        elif number == 6 and wire == 5:
            fields["crc32c"] = value
        elif number == 7:
            sliced = True
    return BundleEntry(**fields, sliced=sliced)


# --- the table (.index) ------------------------------------------------------------------


def _block(index: bytes, handle: bytes, where: str) -> bytes:
    """The contents of the block a BlockHandle points at, crc-checked."""
    offset, pos = _varint(handle, 0, len(handle), where)
    size, _ = _varint(handle, pos, len(handle), where)
    if offset + size + _BLOCK_TRAILER > len(index):
        raise CheckpointError(
            f"{where}: a block at {offset} of {size} bytes runs past the end of the file "
            f"({len(index)} bytes)"
        )
    contents = index[offset : offset + size]
    kind = index[offset + size]
    (stored,) = struct.unpack_from("<I", index, offset + size + 1)
    if masked_crc32c(contents + bytes([kind])) != stored:
        raise CheckpointError(f"{where}: block at {offset}: crc32c mismatch (corrupted file)")
    if kind != 0:
        raise CheckpointError(
            f"{where}: block at {offset}: compression type {kind} is not supported (TF "
            "writes checkpoint indexes uncompressed)"
        )
    return contents


def _block_entries(block: bytes, where: str) -> Iterator[tuple[bytes, bytes]]:
    """``(key, value)`` pairs of a block (keys prefix-compressed against the previous)."""
    if len(block) < 4:
        raise CheckpointError(f"{where}: block of {len(block)} bytes has no restart count")
    (restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    limit = len(block) - 4 - 4 * restarts
    if restarts < 1 or limit < 0:
        raise CheckpointError(f"{where}: block declares {restarts} restart points")
    for i in range(restarts):
        (point,) = struct.unpack_from("<I", block, limit + 4 * i)
        if point >= limit and not point == limit == 0:
            raise CheckpointError(f"{where}: restart point {point} outside the block")
    pos, key = 0, b""
    while pos < limit:
        shared, pos = _varint(block, pos, limit, where)
        unshared, pos = _varint(block, pos, limit, where)
        length, pos = _varint(block, pos, limit, where)
        if shared > len(key) or unshared + length > limit - pos:
            raise CheckpointError(f"{where}: malformed block entry at byte {pos}")
        key = key[:shared] + block[pos : pos + unshared]
        pos += unshared
        yield key, block[pos : pos + length]
        pos += length


def _table(index: bytes, where: str) -> Iterator[tuple[bytes, bytes]]:
    if len(index) < _FOOTER_SIZE:
        raise CheckpointError(
            f"{where}: expected a table of at least {_FOOTER_SIZE} bytes, got {len(index)}"
        )
    footer = index[-_FOOTER_SIZE:]
    (magic,) = struct.unpack_from("<Q", footer, 40)
    if magic != _TABLE_MAGIC:
        raise CheckpointError(f"{where}: not a TF checkpoint index (bad table magic number)")
    _, pos = _varint(footer, 0, 40, where)  # metaindex handle: unused
    _, pos = _varint(footer, pos, 40, where)
    index_handle = footer[pos:40]
    previous = None
    for _, handle in _block_entries(_block(index, index_handle, where), where):
        for key, value in _block_entries(_block(index, handle, where), where):
            if previous is not None and key <= previous:
                raise CheckpointError(f"{where}: keys out of order (corrupted file)")
            previous = key
            yield key, value


# --- the bundle --------------------------------------------------------------------------


class TensorBundle:
    """The tensors of a TF checkpoint, read without TensorFlow.

    Args:
      prefix: the checkpoint's path prefix (``<dir>/ckpt-5`` for ``ckpt-5.index``).

    Raises:
      CheckpointError: a missing or malformed index, a big-endian bundle, or missing
        shards.
    """

    def __init__(self, prefix: str | os.PathLike):
        self.prefix = Path(prefix)
        index_path = Path(f"{self.prefix}.index")
        where = str(index_path)
        try:
            index = index_path.read_bytes()
        except OSError as e:
            raise CheckpointError(f"{index_path}: cannot read the checkpoint index ({e})") from e
        entries: dict[str, BundleEntry] = {}
        header = None
        for raw_key, value in _table(index, where):
            if raw_key == b"":
                header = value
                continue
            try:
                key = raw_key.decode("utf-8")
            except UnicodeDecodeError as e:
                raise CheckpointError(f"{where}: a tensor name is not UTF-8") from e
            entries[key] = _parse_entry(value, f"{where}: {key}")
        if header is None:
            raise CheckpointError(f"{where}: no bundle header (not a TF checkpoint index)")
        num_shards, endianness = 1, 0
        for number, wire, value in _fields(header, f"{where}: header"):
            if number == 1 and wire == 0:
                num_shards = _signed64(value)
            elif number == 2 and wire == 0:
                endianness = value
        if endianness != 0:
            raise CheckpointError(f"{where}: big-endian checkpoints are not supported")
        if not 1 <= num_shards <= 1 << 16:
            raise CheckpointError(f"{where}: expected 1 to 65536 shards, got {num_shards}")
        self.num_shards = num_shards
        self._entries = entries
        self._shard_sizes: dict[int, int] = {}
        for shard in sorted({e.shard_id for e in entries.values()}):
            if not 0 <= shard < num_shards:
                raise CheckpointError(
                    f"{where}: a tensor names shard {shard}, the bundle has {num_shards}"
                )
            path = self.shard_path(shard)
            if not path.is_file():
                raise CheckpointError(f"{path}: checkpoint data file missing")
            self._shard_sizes[shard] = path.stat().st_size

    def shard_path(self, shard: int) -> Path:
        return Path(f"{self.prefix}.data-{shard:05d}-of-{self.num_shards:05d}")

    def tensor_names(self) -> list[str]:
        """Every tensor name, sorted."""
        return sorted(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def entry(self, key: str) -> BundleEntry:
        try:
            return self._entries[key]
        except KeyError:
            raise CheckpointError(f"{self.prefix}: no tensor {key!r} in the checkpoint") from None

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: e.shape for k, e in self._entries.items()}

    def dtypes(self) -> dict[str, str]:
        return {k: e.dtype_name for k, e in self._entries.items()}

    def get(self, key: str) -> np.ndarray:
        """The tensor ``key`` as a numpy array (strings as an object array of bytes).

        Raises:
          CheckpointError: no such tensor, an unsupported dtype or a sliced variable,
            sizes that do not fit the shape or the file, or a crc32c mismatch.
        """
        entry = self.entry(key)
        where = f"{self.prefix}: {key}"
        if entry.sliced:
            raise CheckpointError(
                f"{where}: a sliced (partitioned) variable: not supported; save the "
                "variable unpartitioned"
            )
        count = 1
        for dim in entry.shape:
            count *= dim
        shard_size = self._shard_sizes[entry.shard_id]
        if entry.offset < 0 or entry.size < 0 or entry.offset + entry.size > shard_size:
            raise CheckpointError(
                f"{where}: expected bytes within its data file ({shard_size} bytes), got "
                f"{entry.size} bytes at offset {entry.offset}"
            )
        if entry.dtype == _DT_STRING:
            data = self._read(entry, check=False)
            return _strings(data, entry, count, where)
        dtype = _DTYPES.get(entry.dtype)
        if dtype is None:
            raise CheckpointError(
                f"{where}: dtype {entry.dtype_name} is not supported (expected one of "
                f"{sorted({d.name for d in _DTYPES.values()} | {'string'})})"
            )
        if count * dtype.itemsize != entry.size:
            raise CheckpointError(
                f"{where}: shape {list(entry.shape)} of {dtype.name} needs "
                f"{count * dtype.itemsize} bytes, the entry has {entry.size}"
            )
        data = self._read(entry)
        array = np.frombuffer(data, dtype=dtype).reshape(entry.shape)
        return array.astype(dtype.newbyteorder("="), copy=True)

    def object_graph(self) -> list[ObjectNode]:
        """The checkpoint's object graph (``_CHECKPOINTABLE_OBJECT_GRAPH``), node 0 the root.

        Raises:
          CheckpointError: a checkpoint without an object graph (written by TF1 savers)
            or a malformed one.
        """
        if OBJECT_GRAPH_KEY not in self._entries:
            raise CheckpointError(
                f"{self.prefix}: no object graph (not written by tf.train.Checkpoint)"
            )
        data = self.get(OBJECT_GRAPH_KEY)
        if data.shape != ():
            raise CheckpointError(f"{self.prefix}: {OBJECT_GRAPH_KEY}: expected a scalar")
        return _parse_object_graph(data.item(), f"{self.prefix}: {OBJECT_GRAPH_KEY}")

    def as_dict(self) -> dict[str, np.ndarray]:
        return {key: self.get(key) for key in self.tensor_names()}

    def _read(self, entry: BundleEntry, *, check: bool = True) -> bytes:
        path = self.shard_path(entry.shard_id)
        with open(path, "rb") as f:
            f.seek(entry.offset)
            data = f.read(entry.size)
        if len(data) != entry.size:
            raise CheckpointError(f"{path}: truncated (the file changed while being read)")
        if check and masked_crc32c(data) != entry.crc32c:
            raise CheckpointError(f"{path}: crc32c mismatch at offset {entry.offset} (corrupted)")
        return data


OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
#: The attribute name under which a tf.Variable's value is saved.
VARIABLE_VALUE = "VARIABLE_VALUE"


class ObjectNode(NamedTuple):
    """One ``TrackableObject`` of a checkpoint's object graph."""

    children: dict[str, int]  # local name -> node id
    attributes: dict[str, str]  # attribute name (VARIABLE_VALUE) -> tensor key


def _parse_object_graph(data: bytes, where: str) -> list[ObjectNode]:
    nodes = []
    for number, wire, value in _fields(data, where):
        if number != 1 or wire != 2:
            continue
        children, attributes = {}, {}
        for n, w, v in _fields(value, where):
            if n == 1 and w == 2:  # ObjectReference {int32 node_id = 1; string local_name = 2}
                ref = {k: x for k, _, x in _fields(v, where)}
                name = ref.get(2, b"")
                children[name.decode("utf-8", "replace")] = _signed64(ref.get(1, 0))
            elif n == 2 and w == 2:  # SerializedTensor {name = 1; full_name = 2; key = 3}
                tensor = {k: x for k, _, x in _fields(v, where)}
                name = tensor.get(1, b"").decode("utf-8", "replace")
                attributes[name] = tensor.get(3, b"").decode("utf-8", "replace")
        nodes.append(ObjectNode(children, attributes))
    if not nodes:
        raise CheckpointError(f"{where}: an empty object graph")
    for node in nodes:
        for name, child in node.children.items():
            if not 0 <= child < len(nodes):
                raise CheckpointError(f"{where}: child {name!r} names node {child} of {len(nodes)}")
    return nodes


def resolve(nodes: list[ObjectNode], path: Sequence[str], start: int = 0) -> int | None:
    """The node at ``path`` (local names) from node ``start``, or None."""
    node = start
    for name in path:
        node = nodes[node].children.get(name)
        if node is None:
            return None
    return node


def _mask(crc: int) -> int:
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _strings(data: bytes, entry: BundleEntry, count: int, where: str) -> np.ndarray:
    """A string tensor: varint64 lengths, their masked crc32c, then the bytes.

    The entry's crc32c covers the lengths as fixed-width integers (uint32, uint64 for
    longer strings), the length checksum, and the bytes, as TF's WriteStringTensor.
    """
    if count > len(data):  # each element takes at least one length byte
        raise CheckpointError(f"{where}: {count} strings cannot fit in {len(data)} bytes")
    lengths, pos, crc = [], 0, 0
    for _ in range(count):
        length, pos = _varint(data, pos, len(data), where)
        lengths.append(length)
        crc = crc32c(struct.pack("<I" if length <= 0xFFFFFFFF else "<Q", length), crc)
    if pos + 4 > len(data):
        raise CheckpointError(f"{where}: truncated string tensor")
    checksum = data[pos : pos + 4]
    if int.from_bytes(checksum, "little") != _mask(crc):
        raise CheckpointError(f"{where}: crc32c mismatch of the string lengths (corrupted)")
    pos += 4
    if sum(lengths) != len(data) - pos:
        raise CheckpointError(
            f"{where}: string lengths add up to {sum(lengths)} bytes, {len(data) - pos} stored"
        )
    if _mask(crc32c(data[pos:], crc32c(checksum, crc))) != entry.crc32c:
        raise CheckpointError(f"{where}: crc32c mismatch (corrupted)")
    out = np.empty(count, dtype=object)
    for i, length in enumerate(lengths):
        out[i] = data[pos : pos + length]
        pos += length
    return out.reshape(entry.shape)


# --- the checkpoint state file -----------------------------------------------------------

STATE_FILE = "checkpoint"


def _unescape(text: str, where: str) -> str:
    try:
        return text.encode("latin-1", "backslashreplace").decode("unicode_escape")
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{where}: malformed string {text!r}") from e


def checkpoint_state(directory: str | os.PathLike) -> tuple[Path | None, list[Path]]:
    """``(latest prefix, all prefixes)`` from a directory's ``checkpoint`` file.

    The file is the text proto ``CheckpointState`` TF's ``CheckpointManager`` writes
    after each save (``model_checkpoint_path: "ckpt-5"``); relative paths are taken
    relative to ``directory``. ``(None, [])`` when there is no state file.

    Raises:
      CheckpointError: a state file that cannot be read.
    """
    directory = Path(directory)
    path = directory / STATE_FILE
    if not path.is_file():
        return None, []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read the checkpoint state ({e})") from e
    latest, every = None, []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        name, sep, value = line.partition(":")
        value = value.strip()
        if not sep or len(value) < 2 or value[0] != '"' or value[-1] != '"':
            continue  # timestamps and other numeric fields
        prefix = Path(_unescape(value[1:-1], str(path)))
        prefix = prefix if prefix.is_absolute() else directory / prefix
        if name.strip() == "model_checkpoint_path":
            latest = prefix
        elif name.strip() == "all_model_checkpoint_paths":
            every.append(prefix)
    return latest, every


def is_complete(prefix: str | os.PathLike) -> bool:
    """True when a checkpoint's index and every data shard it names are on disk.

    TF writes the data shards first and the index last (then renames it into place),
    so an index whose shards exist is a whole checkpoint.
    """
    try:
        bundle = TensorBundle(prefix)
    except CheckpointError:
        return False
    return all(bundle.shard_path(s).is_file() for s in range(bundle.num_shards))
