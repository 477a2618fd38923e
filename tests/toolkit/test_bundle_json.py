"""The bundle's JSON reading without the json package (toolkit.bundle.files.loads_json) and
the schema's messages' JSON (schema._dumps) give exactly what json gives, errors included."""

from __future__ import annotations

import json
import math

import pytest

from toolkit.bundle import files, schema
from toolkit.errors import BundleError

DOCUMENTS = [
    '{"a": [1, 2.5, -3e-7, true, false, null, "x\\u00e9\\n"], "b": {}}',
    "  \n\t[]\r\n ",
    '"just a string"',
    "12345678901234567890",
    '{"a": 1, "a": 2}',  # the last duplicate wins, as json.loads
    "-0.0",
    '{"nested": [[[[{"k": "v"}]]]]}',
]

BAD = [
    "",
    "   ",
    "{",
    '{"a": 1} x',  # extra data
    '{"a": NaN}',
    '{"a": Infinity}',
    "[-Infinity]",
    '{"a": "\x01"}',  # a control character in a string (strict)
    "[1,]",
    "'single'",
    "[" * 100000 + "]" * 100000,  # deeper than the scanner recurses
]


@pytest.mark.parametrize("text", DOCUMENTS)
def test_loads_json_is_json_loads(text):
    got = files.loads_json(text)
    assert got == json.loads(text)
    assert json.dumps(got) == json.dumps(json.loads(text))  # same types too


@pytest.mark.parametrize("text", BAD, ids=range(len(BAD)))
def test_loads_json_refuses_what_json_loads_refuses_with_its_error(text):
    def no_constants(name):
        raise ValueError(f"{name} is not JSON")

    with pytest.raises((ValueError, RecursionError)) as expected:
        json.loads(text, parse_constant=no_constants)
    with pytest.raises(type(expected.value)) as got:
        files.loads_json(text)
    assert str(got.value) == str(expected.value)


def test_parse_json_names_the_file_and_refuses_constants():
    with pytest.raises(BundleError, match=r"m.json: not valid JSON \(NaN is not JSON\)"):
        files.parse_json(b'{"x": NaN}', "m.json")
    with pytest.raises(BundleError, match=r"m.json: not valid JSON \(Extra data"):
        files.parse_json(b"{} {}", "m.json")


@pytest.mark.parametrize(
    "value",
    [
        "a",
        'é"\\\n\x00\u2028',
        "",
        True,
        False,
        0,
        -5,
        10**30,
        1.5,
        -0.0,
        1e300,
        5e-324,
        0.1,
        None,
        ["a", "b"],
        [],
        ["x", 1],
        [1.0],
        {"a": 1},
        math.nan,
        math.inf,
        -math.inf,
    ],
)
def test_schema_messages_json_is_json_dumps(value):
    assert schema._dumps(value) == json.dumps(value)
    if isinstance(value, str):
        assert files.json_string(value) == json.dumps(value)
    assert schema._dumps(value, sort_keys=True) == json.dumps(value, sort_keys=True)
