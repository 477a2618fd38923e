"""toolkit.protowire: the bounded protobuf decoder tensor_bundle and onnx_proto share."""

from __future__ import annotations

import hypothesis
import hypothesis.strategies as st
import pytest

from tests.checkpoint_checks import field
from toolkit import protowire
from toolkit.errors import CheckpointError


def _decoder(data: bytes) -> protowire.Decoder:
    return protowire.Decoder(data, lambda reason: CheckpointError(f"x.index: {reason}"))


def test_fields_give_ints_and_spans_into_the_buffer():
    nested = field(1, 0, 300) + field(2, 2, b"ab")
    data = field(1, 0, 7) + field(3, 2, nested) + field(4, 5, 0xDEADBEEF) + field(5, 0, -2)
    wire = _decoder(data)
    (n1, w1, v1), (n3, w3, span), (n4, w4, v4), (n5, w5, v5) = list(wire.fields())
    assert (n1, w1, v1) == (1, protowire.VARINT, 7)
    assert (n3, w3) == (3, protowire.LEN) and wire.bytes(span) == nested
    assert (n4, w4, v4) == (4, protowire.I32, 0xDEADBEEF)
    assert (n5, w5, protowire.signed64(v5)) == (5, protowire.VARINT, -2)  # a 10-byte varint
    inner = list(wire.fields(span))
    assert inner[0] == (1, protowire.VARINT, 300)
    assert wire.text(inner[1][2]) == "ab"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (field(2, 2, b"abc")[:-1], r"x.index: field 2: declares 3 bytes, 2 left"),
        (b"\x08" + b"\xff" * 10 + b"\x01", r"x.index: varint longer than 10 bytes at byte 1"),
        (b"\x08\xff", r"x.index: truncated varint at byte 1"),
        (b"\x0b", r"x.index: field 1: wire type 3 is not supported"),
        (b"\x00\x00", r"x.index: field number 0 at byte 1"),
        (b"\x0d\x01\x02", r"x.index: field 1: 4-byte value, 2 bytes left"),
        (field(1, 2, b"\xff\xfe"), r"x.index: a string at byte 2 is not UTF-8"),
    ],
)
def test_malformed_messages_name_what_is_wrong(data, message):
    wire = _decoder(data)
    with pytest.raises(CheckpointError, match=f"^{message}$"):
        for _, kind, value in wire.fields():
            if kind == protowire.LEN:
                wire.text(value)


def test_spans_outside_the_buffer_and_deep_nesting_are_refused():
    wire = _decoder(b"\x08\x01")
    with pytest.raises(CheckpointError, match=r"a message at bytes 1\.\.9 of a 2-byte buffer"):
        list(wire.fields((1, 9)))
    wire.check_depth(protowire.MAX_DEPTH)
    with pytest.raises(CheckpointError, match=r"messages nested more than 32 deep"):
        wire.check_depth(protowire.MAX_DEPTH + 1)


@hypothesis.settings(max_examples=300, deadline=None, derandomize=True)
@hypothesis.given(data=st.binary(max_size=64))
def test_garbage_gives_the_readers_error_or_fields_within_the_buffer(data):
    wire = _decoder(data)
    try:
        for _, kind, value in wire.fields():
            if kind == protowire.LEN:
                assert 0 <= value[0] <= value[1] <= len(data)
                list(wire.fields(value))
    except CheckpointError as e:
        assert str(e).startswith("x.index: ")
