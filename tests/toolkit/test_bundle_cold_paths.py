"""What a runtime's cold start skips gives what it replaces: the bundle's JSON read without
the json package (toolkit.bundle.files.loads_json) and the schema's messages' JSON
(schema._dumps) are json's, errors included; the schema's patterns tested without their
regexes pass only what the regexes match; member paths are checked as the regex did."""

from __future__ import annotations

import itertools
import json
import math
import random
import re

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


def _strings():
    """Tricky strings for the patterns: every short string over a small alphabet of the
    characters they treat apart, and random longer ones."""
    alphabet = ["a", "Z", "0", "f", "_", ".", "/", "\\", "\x00", "\n", "\r", "é", " "]
    for n in range(4):
        yield from ("".join(t) for t in itertools.product(alphabet, repeat=n))
    rng = random.Random(3)
    for _ in range(3000):
        pieces = alphabet + ["ab", "..", "/..", "./"]
        yield "".join(rng.choice(pieces) for _ in range(rng.randrange(12)))
        yield "".join(rng.choice("0123456789abcdef") for _ in range(rng.choice((63, 64, 64))))
    yield from ("a" * 64, "0123456789abcdef" * 4, "0123456789abcdef" * 4 + "\n", "A" * 64)
    yield from ("a/b/c", "a/./b", "a/../b", "a\n/../b", "../a", "./a", "a/", "/a", "a//b", "..a/b.")


def test_each_schema_pattern_has_a_test_and_each_test_passes_only_what_its_regex_matches():
    patterns = set()

    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                patterns.add(value) if key == "pattern" else walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema.schema())
    assert patterns == set(schema._PATTERN_TESTS)  # every pattern of the schema skips re
    for pattern, test in schema._PATTERN_TESTS.items():
        regex = re.compile(pattern)
        passed = 0
        for text in _strings():
            if test(text):
                passed += 1
                assert regex.search(text), (pattern, text)
            assert schema._matches(pattern, text) == bool(regex.search(text)), (pattern, text)
        assert passed > 10, pattern  # the test does pass things


def test_member_paths_are_checked_as_the_part_regex_did():
    part = re.compile(r"[^/\\\x00]+")
    for text in _strings():
        parts = text.split("/")
        expected = bool(text) and not (
            len(text) > 4096
            or text.startswith("/")
            or any(p in ("", ".", "..") or not part.fullmatch(p) for p in parts)
        )
        try:
            files.check_member_path(text, "k")
        except BundleError:
            assert not expected, text
        else:
            assert expected, text


def _manifest_only_bundle(root, manifest):
    """A bundle folder holding only its manifest (read with ``check_files=False``)."""
    from tests.toolkit.manifests import minimal_manifest

    manifest = minimal_manifest(**manifest)
    manifest["files"] = {
        "policy.onnx": {"sha256": "0" * 64, "size": 1},
        "saved_model/saved_model.pb": {"sha256": "0" * 64, "size": 1},
    }
    root.mkdir(exist_ok=True)
    (root / "manifest.json").write_text(json.dumps(manifest))
    return manifest


def test_a_load_decodes_each_spec_leaf_once_and_gives_the_specs_a_fresh_decode_gives(
    tmp_path, monkeypatch
):
    from toolkit.bundle import Layout, read_layout
    from toolkit.specs.array_spec import ArraySpec

    manifest = _manifest_only_bundle(tmp_path / "b", {})
    decoded = []
    from_json = ArraySpec.from_json

    def counting(data):
        decoded.append(data["name"])
        return from_json(data)

    monkeypatch.setattr(ArraySpec, "from_json", staticmethod(counting))
    layout = read_layout(tmp_path / "b", check_files=False)
    # validation decodes each leaf (its messages name the leaf); the layout takes them
    assert sorted(decoded) == ["action", "discount", "observation", "reward", "step_type"]
    fresh = Layout.of(manifest)  # decodes on its own
    assert len(decoded) == 10
    assert layout.specs == fresh.specs
    assert type(layout.specs.time_step) is type(fresh.specs.time_step)
    assert layout.names == fresh.names


def test_a_load_decodes_the_manifest_on_disk_not_the_last_loads_specs(tmp_path):
    from toolkit.bundle import read_layout

    root = tmp_path / "b"
    _manifest_only_bundle(root, {})
    assert int(read_layout(root, check_files=False).specs.action.maximum) == 1
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["specs"]["action"]["maximum"] = 2
    (root / "manifest.json").write_text(json.dumps(manifest))
    assert int(read_layout(root, check_files=False).specs.action.maximum) == 2
    manifest["specs"]["action"]["maximum"] = -1  # below the minimum: refused, not cached
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"specs\.action: .*minimum"):
        read_layout(root, check_files=False)


# --- the schema as plain Python (toolkit.bundle._manifest_check) ----------------------------


def test_the_generated_manifest_check_is_written_from_the_committed_schema():
    """Stale when the schema changed without ``python -m exporters.formats --write-schema``."""
    from toolkit.bundle import _manifest_check, schema_codegen

    committed = files.loads_json(schema.SCHEMA_PATH.read_text())
    assert schema_codegen.MODULE_PATH.read_text() == schema_codegen.generate(committed), (
        "toolkit/bundle/_manifest_check.py is stale: run python -m exporters.formats --write-schema"
    )
    assert list(_manifest_check.FORMAT_NAMES) == committed["properties"]["formats"]["items"]["enum"]


def _walk(manifest):
    validator = schema._Validator(schema.schema())
    validator.check(manifest, schema.schema(), "")
    return validator.errors


def _mutations():
    import copy

    from tests.toolkit.manifests import minimal_manifest

    base = minimal_manifest()
    base["files"] = {
        "policy.onnx": {"sha256": "a" * 64, "size": 10},
        "saved_model/saved_model.pb": {"sha256": "b" * 64, "size": 8},
    }

    def paths(node, prefix=()):
        yield prefix
        if isinstance(node, (dict, list)):
            for key, value in node.items() if isinstance(node, dict) else enumerate(node):
                yield from paths(value, (*prefix, key))

    values = [
        None,
        True,
        0,
        -1,
        1.5,
        2.0,
        float("nan"),
        2**70,
        "",
        "x" * 300,
        "float32",
        "a" * 64,
        "../x",
        [],
        [1],
        {},
        {"kind": "tuple", "items": []},
        (1,),
    ]
    yield base
    for path in [p for p in paths(base) if p]:
        for value in [*values, "<delete>"]:
            manifest = copy.deepcopy(base)
            node = manifest
            for key in path[:-1]:
                node = node[key]
            if value == "<delete>":
                del node[path[-1]]
            else:
                node[path[-1]] = value
            yield manifest


def test_the_generated_check_passes_exactly_what_the_schema_walk_passes():
    """Every field of a manifest replaced by each of 19 values, or deleted: the generated
    check says True exactly where the walk finds no violation (a True where the walk finds
    one would let a bad manifest load; a False where it finds none only costs time)."""
    from toolkit.bundle import _manifest_check

    passed = 0
    for manifest in _mutations():
        errors = _walk(manifest)
        assert _manifest_check.valid(manifest) == (errors == []), (errors, manifest)
        passed += not errors
    assert 100 < passed < 1000, passed  # both kinds, many of each


def test_the_generated_check_leaves_nesting_beyond_the_limit_to_the_walk():
    from tests.toolkit.manifests import minimal_manifest
    from toolkit.bundle import _manifest_check

    manifest = minimal_manifest()
    manifest["files"] = {
        "policy.onnx": {"sha256": "a" * 64, "size": 1},
        "saved_model/x": {"sha256": "a" * 64, "size": 1},
    }
    node = manifest["specs"]["info"] = {"kind": "tuple", "items": []}
    for _ in range(40):  # 80 levels: beyond the walk's 64
        inner = {"kind": "tuple", "items": []}
        node["items"].append(inner)
        node = inner
    assert _walk(manifest)  # too deep
    assert not _manifest_check.valid(manifest)
    assert schema.schema_violations(manifest) == _walk(manifest)


def test_formats_registered_at_run_time_are_checked_by_the_walk(monkeypatch):
    from tests.toolkit.manifests import minimal_manifest

    manifest = minimal_manifest(formats=["saved_model", "onnx", "toy"], toy={"file": 3})
    manifest["files"] = {
        "policy.onnx": {"sha256": "a" * 64, "size": 1},
        "saved_model/x": {"sha256": "a" * 64, "size": 1},
    }
    assert schema.schema_violations(manifest)  # no such format in the committed schema
    schema.register_format("toy", {"type": "object", "properties": {"file": {"type": "string"}}})
    try:
        assert schema.format_names()[-1] == "toy"
        assert schema.schema_violations(manifest) == ["toy.file: expected a string, got 3"]
    finally:
        schema.unregister_format("toy")
    assert "toy" not in schema.format_names()


def test_layout_records_behave_as_the_namedtuples_they_replace():
    import collections
    import copy
    import pickle

    from toolkit import nest
    from toolkit.bundle.layout import FormatEntry, GraphNames, TensorInfo

    info = TensorInfo("x", "float32", (None, 3))
    twin = collections.namedtuple("TensorInfo", ["name", "dtype", "shape"])(
        "x", "float32", (None, 3)
    )
    assert info == twin == ("x", "float32", (None, 3)) and hash(info) == hash(twin)
    assert repr(info) == repr(twin) == "TensorInfo(name='x', dtype='float32', shape=(None, 3))"
    assert info._fields == twin._fields and info._asdict() == twin._asdict()
    assert info._replace(shape=None) == TensorInfo(name="x", dtype="float32", shape=None)
    assert TensorInfo._make(["a", "b", None]) == ("a", "b", None)
    for bad, error in (
        (lambda: TensorInfo("x"), TypeError),
        (lambda: TensorInfo._make(["x"]), TypeError),
        (lambda: info._replace(size=1), ValueError),
        (lambda: setattr(info, "name", "y"), AttributeError),
    ):
        with pytest.raises(error):
            bad()
    for copied in (pickle.loads(pickle.dumps(info)), copy.deepcopy(info), copy.copy(info)):
        assert copied == info and type(copied) is TensorInfo
    name, dtype, shape = info
    assert (name, dtype, shape) == (info.name, info.dtype, info.shape)
    names = GraphNames(inputs=("a",), states=(), next_states=(), infos=(), actions=("b",))
    assert nest.flatten(names) == ["a", "b"]
    assert nest.map_structure(str.upper, names) == GraphNames(("A",), (), (), (), ("B",))
    entry = FormatEntry("onnx", {}, "policy.onnx", False)
    assert entry.path == entry[2] == "policy.onnx" and not entry.is_dir
