"""The protocol-buffer wire format, decoded with bounds (TF-free, protobuf-free).

Two readers decode protobuf messages by hand, because the generated classes would need
TensorFlow's or onnx's protos on a device that has neither: ``toolkit.tensor_bundle``
(TF checkpoint indexes, their entries and object graphs) and ``toolkit.onnx_proto``
(the fields of an ONNX model a reader must see before onnxruntime does). Both decode
through this module, which trusts nothing it is given:

* a varint is at most 10 bytes and never runs past the end of its message;
* a length-delimited field's length is checked against the bytes left in its message
  before anything is sliced, as are fixed-width fields;
* nested messages are spans ``(start, end)`` of one buffer: nothing is copied until a caller asks
  for a field's bytes or text, so skipping a large field costs nothing;
* groups (wire types 3 and 4) and field number 0 are refused (no message read here
  uses them); recursive readers check their depth against ``MAX_DEPTH``.

A malformed message raises the exception its reader's ``fail`` makes from a short
reason (``"field 2: declares 90 bytes, 12 left"``), so each reader keeps its own error
class and says where.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from toolkit.errors import ToolkitError

__all__ = ["I32", "I64", "LEN", "MAX_DEPTH", "VARINT", "Decoder", "Span", "signed64"]

VARINT, I64, LEN, I32 = 0, 1, 2, 5
MAX_VARINT_BYTES = 10
#: How deeply recursive readers may nest messages (ONNX subgraphs); deeper is refused.
MAX_DEPTH = 32
_MASK64 = (1 << 64) - 1


#: Bytes ``[start, end)`` of a decoder's buffer (a nested message or a string). A plain
#: tuple: a scan makes one per length-delimited field, and a NamedTuple costs 10x more.
Span = tuple[int, int]


def signed64(value: int) -> int:
    """A varint read as int64 (protobuf encodes negative int64s as 10-byte varints)."""
    return value - (1 << 64) if value >= 1 << 63 else value


class Decoder:
    """Bounded reads of the protobuf messages in one buffer.

    Args:
      data: the serialized bytes (a message, or a file holding messages).
      fail: makes the exception to raise from a reason, e.g.
        ``lambda reason: CheckpointError(f"{path}: {reason}")``.
    """

    __slots__ = ("data", "fail", "size")

    def __init__(self, data: bytes | bytearray | memoryview, fail: Callable[[str], ToolkitError]):
        self.data = memoryview(data)
        self.size = len(self.data)
        self.fail = fail

    @property
    def whole(self) -> Span:
        return Span(0, self.size)

    def varint(self, pos: int, end: int) -> tuple[int, int]:
        """``(value, next position)`` of the varint at ``pos``, not reading past ``end``."""
        data = self.data
        result = shift = 0
        stop = end if end - pos < MAX_VARINT_BYTES else pos + MAX_VARINT_BYTES
        for i in range(pos, stop):
            byte = data[i]
            result |= (byte & 0x7F) << shift
            if byte < 0x80:
                return result & _MASK64, i + 1
            shift += 7
        if stop - pos == MAX_VARINT_BYTES:
            raise self.fail(f"varint longer than {MAX_VARINT_BYTES} bytes at byte {pos}")
        raise self.fail(f"truncated varint at byte {pos}")

    def fields(self, span: Span | None = None) -> Iterator[tuple[int, int, int | Span]]:
        """``(field number, wire type, value)`` of the message in ``span`` (default: all).

        The value is an int for varint and fixed-width fields (little-endian, unsigned),
        and a ``Span`` for length-delimited ones (bytes, strings, nested messages).
        """
        pos, end = span if span is not None else (0, self.size)
        if not 0 <= pos <= end <= self.size:
            raise self.fail(f"a message at bytes {pos}..{end} of a {self.size}-byte buffer")
        varint, data = self.varint, self.data
        # One-byte tags and lengths (most of them) are read inline: a bundle load scans
        # its whole ONNX model, and a call per varint doubled that time.
        while pos < end:
            tag = data[pos]
            if tag < 0x80:
                pos += 1
            else:
                tag, pos = varint(pos, end)
            number, wire = tag >> 3, tag & 7
            if number == 0:
                raise self.fail(f"field number 0 at byte {pos}")
            if wire == LEN:
                if pos < end and data[pos] < 0x80:
                    length = data[pos]
                    pos += 1
                else:
                    length, pos = varint(pos, end)
                if length > end - pos:
                    raise self.fail(f"field {number}: declares {length} bytes, {end - pos} left")
                yield number, wire, (pos, pos + length)
                pos += length
            elif wire == VARINT:
                value, pos = varint(pos, end)
                yield number, wire, value
            elif wire in (I64, I32):
                width = 8 if wire == I64 else 4
                if width > end - pos:
                    raise self.fail(f"field {number}: {width}-byte value, {end - pos} bytes left")
                yield number, wire, int.from_bytes(data[pos : pos + width], "little")
                pos += width
            else:
                raise self.fail(f"field {number}: wire type {wire} is not supported")

    def bytes(self, span: Span) -> bytes:
        """The bytes of a span (a copy)."""
        return bytes(self.data[span[0] : span[1]])

    def text(self, span: Span) -> str:
        """A span as UTF-8 text."""
        try:
            return str(self.data[span[0] : span[1]], "utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"a string at byte {span[0]} is not UTF-8") from None

    def check_depth(self, depth: int) -> None:
        """Refuses messages nested deeper than ``MAX_DEPTH`` (recursive readers call it)."""
        if depth > MAX_DEPTH:
            raise self.fail(f"messages nested more than {MAX_DEPTH} deep")
