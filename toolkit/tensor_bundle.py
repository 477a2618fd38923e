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

The protobuf messages are decoded by hand (``toolkit.protowire``), so reading needs no
generated protos. Everything read is untrusted: a file's size is checked against a cap
before it is read (only regular files are opened, so a FIFO never blocks), declared
sizes and offsets are checked against the files' sizes before anything is allocated or
read, every block and tensor is checked against its crc32c, and anything unexpected
raises a ``CheckpointError`` naming the file and what was wrong. Sliced (partitioned)
variables, big-endian bundles, compressed tables and dtypes without a numpy equivalent
(resource, variant, quantized, bfloat16) are refused.

The caps are what a policy's checkpoint can need, with a wide margin: a policy has one
tensor per variable (tens to a few thousand, ~100 bytes of index each) and an object
graph of one node per trackable object (layers, lists, variables):

* ``MAX_INDEX_BYTES`` (4 MiB), ``MAX_TENSORS`` (65,536 tensors), ``MAX_KEY_BYTES``
  (4 KiB a tensor name; TF's are object paths of 50-300 bytes) and, since keys are
  prefix-compressed, ``MAX_KEYS_TOTAL_BYTES`` (16 MiB of names in all);
* ``MAX_OBJECT_GRAPH_BYTES`` (4 MiB) and ``MAX_OBJECT_NODES`` (100,000 nodes);
* ``MAX_STATE_BYTES`` (1 MiB) for the ``checkpoint`` state file, of which only the
  newest ``MAX_STATE_CHECKPOINTS`` (1,000) prefixes are taken: a CheckpointManager
  lists the checkpoints it keeps (``max_to_keep``, 5 by default), ~90 bytes each.

A tensor's bytes are read only when asked for (``get``), bounded by its entry, which
callers check against what they expect first (``checkpoint_weights`` compares the
entry's shape and dtype with the bundle's weights map before reading).

``checkpoint_state(directory)`` reads the ``checkpoint`` state file TF's
``CheckpointManager`` writes (a text proto naming the latest prefix) the same way.

Over 600 lines on purpose: one file format's reader, each bound next to the read it
guards and every read going through the same capped, regular-file-only helpers; the
wire decoding itself is ``toolkit.protowire``'s.
"""

from __future__ import annotations

import os
import re
import stat
import struct
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from toolkit import protowire
from toolkit.errors import CheckpointError
from toolkit.protowire import I32, LEN, VARINT, Span, signed64

__all__ = [
    "MAX_INDEX_BYTES",
    "MAX_KEYS_TOTAL_BYTES",
    "MAX_KEY_BYTES",
    "MAX_OBJECT_GRAPH_BYTES",
    "MAX_OBJECT_NODES",
    "MAX_STATE_BYTES",
    "MAX_STATE_CHECKPOINTS",
    "MAX_TENSORS",
    "OBJECT_GRAPH_KEY",
    "VARIABLE_VALUE",
    "BundleEntry",
    "ObjectNode",
    "TensorBundle",
    "checkpoint_state",
    "crc32c",
    "masked_crc32c",
    "resolve",
]

_FOOTER_SIZE = 48
_TABLE_MAGIC = 0xDB4775248B80FB57
_BLOCK_TRAILER = 5  # compression type byte + masked crc32c

MAX_INDEX_BYTES = 4 << 20
MAX_TENSORS = 65_536
MAX_KEY_BYTES = 4096
MAX_KEYS_TOTAL_BYTES = 16 << 20
MAX_OBJECT_GRAPH_BYTES = 4 << 20
MAX_OBJECT_NODES = 100_000
MAX_STATE_BYTES = 1 << 20
MAX_STATE_CHECKPOINTS = 1000

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


# --- bounded file reads ------------------------------------------------------------------


def _failing(where: str) -> Callable[[str], CheckpointError]:
    return lambda reason: CheckpointError(f"{where}: {reason}")


def _open_regular(path: Path, what: str) -> tuple[int, int]:
    """``(fd, size)`` of a regular file, opened without blocking (a FIFO never blocks)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except (OSError, ValueError) as e:  # ValueError: a NUL in a path a state file named
        raise CheckpointError(f"{path}: cannot read the {what} ({e})") from e
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise CheckpointError(f"{path}: expected the {what} as a regular file, got another kind")
    return fd, info.st_size


def _read_at(fd: int, offset: int, size: int) -> bytes:
    chunks, done = [], 0
    while done < size:
        chunk = os.pread(fd, min(size - done, 1 << 20), offset + done)
        if not chunk:
            break
        chunks.append(chunk)
        done += len(chunk)
    return b"".join(chunks)


def _read_capped(path: Path, limit: int, what: str, why: str) -> bytes:
    """A whole file of at most ``limit`` bytes; larger ones are refused before reading."""
    fd, size = _open_regular(path, what)
    try:
        if size > limit:
            raise CheckpointError(
                f"{path}: expected a {what} of at most {limit} bytes ({why}), got {size} bytes"
            )
        data = _read_at(fd, 0, size)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read the {what} ({e.strerror or e})") from e
    finally:
        os.close(fd)
    if len(data) != size:
        raise CheckpointError(f"{path}: truncated (the file changed while being read)")
    return data


# --- the index's messages ----------------------------------------------------------------


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

    @property
    def count(self) -> int:
        """How many elements its shape holds."""
        count = 1
        for dim in self.shape:
            count *= dim
        return count


_MAX_RANK = 64


def _parse_shape(wire: protowire.Decoder, span: Span) -> tuple[int, ...]:
    dims = []
    for number, kind, value in wire.fields(span):
        if number == 2 and kind == LEN:  # Dim {int64 size = 1; string name = 2}
            size = 0
            for n, w, v in wire.fields(value):
                if n == 1 and w == VARINT:
                    size = signed64(v)
            if size < 0:
                raise wire.fail(f"expected a known shape, got a dim of {size}")
            if len(dims) == _MAX_RANK:
                raise wire.fail(f"expected a shape of at most {_MAX_RANK} dims")
            dims.append(size)
        elif number == 3 and kind == VARINT and value:
            raise wire.fail("expected a known shape, got an unknown rank")
    return tuple(dims)


def _parse_entry(data: bytes, where: str) -> BundleEntry:
    wire = protowire.Decoder(data, _failing(where))
    fields = {"dtype": 0, "shape": (), "shard_id": 0, "offset": 0, "size": 0, "crc32c": 0}
    sliced = False
    for number, kind, value in wire.fields():
        if number == 1 and kind == VARINT:
            fields["dtype"] = value
        elif number == 2 and kind == LEN:
            fields["shape"] = _parse_shape(wire, value)
        elif number == 3 and kind == VARINT:
            fields["shard_id"] = signed64(value)
        elif number == 4 and kind == VARINT:
            fields["offset"] = signed64(value)
        elif number == 5 and kind == VARINT:
            fields["size"] = signed64(value)
        elif number == 6 and kind == I32:
            fields["crc32c"] = value
        elif number == 7:
            sliced = True
    return BundleEntry(**fields, sliced=sliced)


# --- the table (.index) ------------------------------------------------------------------


def _block(wire: protowire.Decoder, handle: bytes) -> bytes:
    """The contents of the block a BlockHandle points at, crc-checked."""
    handle_wire = protowire.Decoder(handle, wire.fail)
    offset, pos = handle_wire.varint(0, len(handle))
    size, _ = handle_wire.varint(pos, len(handle))
    if offset + size + _BLOCK_TRAILER > wire.size:
        raise wire.fail(
            f"a block at {offset} of {size} bytes runs past the end of the file ({wire.size} bytes)"
        )
    index = wire.data
    contents = bytes(index[offset : offset + size])
    kind = index[offset + size]
    (stored,) = struct.unpack_from("<I", index, offset + size + 1)
    if masked_crc32c(contents + bytes([kind])) != stored:
        raise wire.fail(f"block at {offset}: crc32c mismatch (corrupted file)")
    if kind != 0:
        raise wire.fail(
            f"block at {offset}: compression type {kind} is not supported (TF writes "
            "checkpoint indexes uncompressed)"
        )
    return contents


def _block_entries(block: bytes, fail: Callable[[str], CheckpointError]):
    """``(key, value)`` pairs of a block (keys prefix-compressed against the previous).

    Keys longer than MAX_KEY_BYTES are refused as they are decoded: prefix compression
    would otherwise let a small block spell out ever longer keys.
    """
    wire = protowire.Decoder(block, fail)
    if len(block) < 4:
        raise fail(f"block of {len(block)} bytes has no restart count")
    (restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    limit = len(block) - 4 - 4 * restarts
    if restarts < 1 or limit < 0:
        raise fail(f"block declares {restarts} restart points")
    for i in range(restarts):
        (point,) = struct.unpack_from("<I", block, limit + 4 * i)
        if point >= limit and not point == limit == 0:
            raise fail(f"restart point {point} outside the block")
    pos, key = 0, b""
    while pos < limit:
        shared, pos = wire.varint(pos, limit)
        unshared, pos = wire.varint(pos, limit)
        length, pos = wire.varint(pos, limit)
        if shared > len(key) or unshared + length > limit - pos:
            raise fail(f"malformed block entry at byte {pos}")
        if shared + unshared > MAX_KEY_BYTES:
            raise fail(
                f"expected keys of at most {MAX_KEY_BYTES} bytes (tensor names), got one of "
                f"{shared + unshared} at byte {pos}"
            )
        key = key[:shared] + block[pos : pos + unshared]
        pos += unshared
        yield key, block[pos : pos + length]
        pos += length


def _table(index: bytes, where: str) -> Iterator[tuple[bytes, bytes]]:
    fail = _failing(where)
    if len(index) < _FOOTER_SIZE:
        raise fail(f"expected a table of at least {_FOOTER_SIZE} bytes, got {len(index)}")
    footer = index[-_FOOTER_SIZE:]
    (magic,) = struct.unpack_from("<Q", footer, 40)
    if magic != _TABLE_MAGIC:
        raise fail("not a TF checkpoint index (bad table magic number)")
    footer_wire = protowire.Decoder(footer, fail)
    _, pos = footer_wire.varint(0, 40)  # metaindex handle: unused
    _, pos = footer_wire.varint(pos, 40)
    index_handle = footer[pos:40]
    wire = protowire.Decoder(index, fail)
    previous = None
    for _, handle in _block_entries(_block(wire, index_handle), fail):
        for key, value in _block_entries(_block(wire, handle), fail):
            if previous is not None and key <= previous:
                raise fail("keys out of order (corrupted file)")
            previous = key
            yield key, value


# --- the bundle --------------------------------------------------------------------------


class TensorBundle:
    """The tensors of a TF checkpoint, read without TensorFlow.

    Opening one reads the index (at most ``MAX_INDEX_BYTES``) and checks that the
    shards it names exist; a tensor's bytes are read by ``get`` alone.

    Args:
      prefix: the checkpoint's path prefix (``<dir>/ckpt-5`` for ``ckpt-5.index``).

    Raises:
      CheckpointError: a missing, oversized or malformed index, a big-endian bundle,
        or missing shards.
    """

    def __init__(self, prefix: str | os.PathLike):
        self.prefix = Path(prefix)
        index_path = Path(f"{self.prefix}.index")
        where = str(index_path)
        index = _read_capped(
            index_path,
            MAX_INDEX_BYTES,
            "checkpoint index",
            f"{MAX_TENSORS} tensors at most, ~100 bytes each",
        )
        entries: dict[str, BundleEntry] = {}
        header = None
        key_bytes = 0
        for raw_key, value in _table(index, where):
            if raw_key == b"":
                header = value
                continue
            key_bytes += len(raw_key)
            if len(entries) == MAX_TENSORS or key_bytes > MAX_KEYS_TOTAL_BYTES:
                raise CheckpointError(
                    f"{where}: expected at most {MAX_TENSORS} tensors with names of "
                    f"{MAX_KEYS_TOTAL_BYTES} bytes in all (a policy's checkpoint), got more"
                )
            try:
                key = raw_key.decode("utf-8")
            except UnicodeDecodeError as e:
                raise CheckpointError(f"{where}: a tensor name is not UTF-8") from e
            entries[key] = _parse_entry(value, f"{where}: {key}")
        if header is None:
            raise CheckpointError(f"{where}: no bundle header (not a TF checkpoint index)")
        num_shards, endianness = 1, 0
        for number, kind, value in protowire.Decoder(header, _failing(f"{where}: header")).fields():
            if number == 1 and kind == VARINT:
                num_shards = signed64(value)
            elif number == 2 and kind == VARINT:
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

    def get(self, key: str, *, max_bytes: int | None = None) -> np.ndarray:
        """The tensor ``key`` as a numpy array (strings as an object array of bytes).

        Args:
          key: the tensor's name.
          max_bytes: refuse, before reading, a tensor whose entry declares more bytes.

        Raises:
          CheckpointError: no such tensor, an unsupported dtype or a sliced variable,
            sizes that do not fit the shape, the file or ``max_bytes``, or a crc32c
            mismatch.
        """
        entry = self.entry(key)
        where = f"{self.prefix}: {key}"
        if entry.sliced:
            raise CheckpointError(
                f"{where}: a sliced (partitioned) variable: not supported; save the "
                "variable unpartitioned"
            )
        shard_size = self._shard_sizes[entry.shard_id]
        if entry.offset < 0 or entry.size < 0 or entry.offset + entry.size > shard_size:
            raise CheckpointError(
                f"{where}: expected bytes within its data file ({shard_size} bytes), got "
                f"{entry.size} bytes at offset {entry.offset}"
            )
        if max_bytes is not None and entry.size > max_bytes:
            raise CheckpointError(
                f"{where}: expected at most {max_bytes} bytes, the entry declares {entry.size}"
            )
        count = entry.count
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
          CheckpointError: a checkpoint without an object graph (written by TF1 savers),
            a malformed one, or one larger than MAX_OBJECT_GRAPH_BYTES or
            MAX_OBJECT_NODES.
        """
        if OBJECT_GRAPH_KEY not in self._entries:
            raise CheckpointError(
                f"{self.prefix}: no object graph (not written by tf.train.Checkpoint)"
            )
        where = f"{self.prefix}: {OBJECT_GRAPH_KEY}"
        entry = self._entries[OBJECT_GRAPH_KEY]
        if entry.dtype != _DT_STRING or entry.shape != ():
            raise CheckpointError(
                f"{where}: expected a string scalar, got {entry.dtype_name} {list(entry.shape)}"
            )
        data = self.get(OBJECT_GRAPH_KEY, max_bytes=MAX_OBJECT_GRAPH_BYTES + _MAX_VARINT_LEN)
        return _parse_object_graph(data.item(), where)

    def as_dict(self) -> dict[str, np.ndarray]:
        return {key: self.get(key) for key in self.tensor_names()}

    def _read(self, entry: BundleEntry, *, check: bool = True) -> bytes:
        path = self.shard_path(entry.shard_id)
        fd, _ = _open_regular(path, "checkpoint data file")
        try:
            data = _read_at(fd, entry.offset, entry.size)
        except OSError as e:
            raise CheckpointError(f"{path}: cannot read ({e.strerror or e})") from e
        finally:
            os.close(fd)
        if len(data) != entry.size:
            raise CheckpointError(f"{path}: truncated (the file changed while being read)")
        if check and masked_crc32c(data) != entry.crc32c:
            raise CheckpointError(f"{path}: crc32c mismatch at offset {entry.offset} (corrupted)")
        return data


_MAX_VARINT_LEN = protowire.MAX_VARINT_BYTES + 4  # a string scalar's length and its crc
OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
#: The attribute name under which a tf.Variable's value is saved.
VARIABLE_VALUE = "VARIABLE_VALUE"


class ObjectNode(NamedTuple):
    """One ``TrackableObject`` of a checkpoint's object graph."""

    children: dict[str, int]  # local name -> node id
    attributes: dict[str, str]  # attribute name (VARIABLE_VALUE) -> tensor key


def _parse_object_graph(data: bytes, where: str) -> list[ObjectNode]:
    wire = protowire.Decoder(data, _failing(where))
    nodes = []
    for number, kind, value in wire.fields():
        if number != 1 or kind != LEN:
            continue
        if len(nodes) == MAX_OBJECT_NODES:
            raise wire.fail(f"expected at most {MAX_OBJECT_NODES} objects, got more")
        children, attributes = {}, {}
        for n, w, v in wire.fields(value):
            if n == 1 and w == LEN:  # ObjectReference {int32 node_id = 1; string local_name = 2}
                ref = {k: x for k, _, x in wire.fields(v)}
                name = ref.get(2)
                name = wire.bytes(name).decode("utf-8", "replace") if type(name) is tuple else ""
                node_id = ref.get(1, 0)
                children[name] = signed64(node_id) if type(node_id) is int else -1
            elif n == 2 and w == LEN:  # SerializedTensor {name = 1; full_name = 2; key = 3}
                tensor = {k: x for k, _, x in wire.fields(v)}
                name, key = tensor.get(1), tensor.get(3)
                name = wire.bytes(name).decode("utf-8", "replace") if type(name) is tuple else ""
                key = wire.bytes(key).decode("utf-8", "replace") if type(key) is tuple else ""
                attributes[name] = key
        nodes.append(ObjectNode(children, attributes))
    if not nodes:
        raise wire.fail("an empty object graph")
    for node in nodes:
        for name, child in node.children.items():
            if not 0 <= child < len(nodes):
                raise wire.fail(f"child {name!r} names node {child} of {len(nodes)}")
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
    wire = protowire.Decoder(data, _failing(where))
    lengths, pos, crc = [], 0, 0
    for _ in range(count):
        length, pos = wire.varint(pos, len(data))
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
_STATE_LINE = re.compile(
    r'^[ \t]*(model_checkpoint_path|all_model_checkpoint_paths)[ \t]*:[ \t]*"(.*)"[ \t]*\r?$',
    re.MULTILINE,
)


def _unescape(text: str, where: str) -> str:
    try:
        return text.encode("latin-1", "backslashreplace").decode("unicode_escape")
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{where}: malformed string {text!r}") from e


def checkpoint_state(directory: str | os.PathLike) -> tuple[Path | None, list[Path]]:
    """``(latest prefix, the newest prefixes listed)`` from a directory's ``checkpoint`` file.

    The file is the text proto ``CheckpointState`` TF's ``CheckpointManager`` writes
    after each save (``model_checkpoint_path: "ckpt-5"``); relative paths are taken
    relative to ``directory``. ``(None, [])`` when there is no state file. Of the
    ``all_model_checkpoint_paths`` (oldest first), the newest MAX_STATE_CHECKPOINTS
    are returned.

    Raises:
      CheckpointError: a state file that cannot be read, or one over MAX_STATE_BYTES.
    """
    directory = Path(directory)
    path = directory / STATE_FILE
    if not path.is_file():
        return None, []
    data = _read_capped(
        path,
        MAX_STATE_BYTES,
        "checkpoint state file",
        "about 10,000 checkpoints kept; set the CheckpointManager's max_to_keep",
    )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{path}: cannot read the checkpoint state ({e})") from e
    latest, every = None, []
    # One regex pass (timestamps and other numeric fields do not match): a state file
    # at the cap parses in milliseconds, on every check of a follower.
    for name, value in _STATE_LINE.findall(text):
        if name == "model_checkpoint_path":
            latest = value
        else:
            every.append(value)
    every = every[-MAX_STATE_CHECKPOINTS:]

    def prefix(text: str) -> Path:
        found = Path(_unescape(text, str(path)))
        return found if found.is_absolute() else directory / found

    return (prefix(latest) if latest is not None else None), [prefix(p) for p in every]
