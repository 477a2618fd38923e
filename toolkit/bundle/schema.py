"""A small JSON Schema (draft 2020-12) interpreter for the manifest schema (TF-free).

It knows the keywords ``toolkit/schemas/manifest.schema.json`` uses, and words each
violation as one line naming the JSON path, e.g. ``signatures.distribution.inputs[0].
shape[1]: expected an int or null, got "x"``. The bundle rules a schema cannot say are in
``toolkit.bundle.manifest``.

Why not a schema library: this runs on every load on edge devices; importing jsonschema
costs tens of milliseconds, this interpreter a fraction of one (the dev extra's
jsonschema checks both agree: tests/toolkit/test_bundle_trust.py).

A load asks the committed schema's plain-Python form first (``_manifest_check``, written
by ``schema_codegen``): it passes exactly the manifests this interpreter passes, without
parsing or walking the schema; the interpreter runs where it says no, and words the
messages.
"""

from __future__ import annotations

import functools
import math
import re
from pathlib import Path
from typing import Any

from toolkit.bundle.files import json_string, loads_json

__all__ = [
    "MAX_VIOLATIONS",
    "SCHEMA_PATH",
    "add_format",
    "format_names",
    "join_path",
    "register_format",
    "schema",
    "schema_violations",
    "show_value",
]

SCHEMA_PATH = Path(__file__).parents[1] / "schemas" / "manifest.schema.json"
#: Violations reported at most (the rest are counted).
MAX_VIOLATIONS = 20
_MAX_DEPTH = 64
_IGNORED = frozenset({"$schema", "$id", "title", "description", "$defs", "else"})


#: Format sections registered at run time (``exporters.formats.register``), by name.
_REGISTERED: dict[str, dict[str, Any]] = {}


@functools.cache
def schema() -> dict[str, Any]:
    """The manifest's JSON Schema (draft 2020-12), with formats registered at run time."""
    data = loads_json(SCHEMA_PATH.read_text())
    for name, section in _REGISTERED.items():
        add_format(data, name, section)
    return data


def register_format(name: str, section: dict[str, Any]) -> None:
    """Makes readers accept the format ``name`` with a manifest section matching
    ``section`` (a format registered outside the committed schema)."""
    _REGISTERED[name] = section
    schema.cache_clear()


def unregister_format(name: str) -> None:
    """Undoes ``register_format``."""
    if _REGISTERED.pop(name, None) is not None:
        schema.cache_clear()


def add_format(data: dict[str, Any], name: str, section: dict[str, Any]) -> None:
    """Adds (or replaces) a format in a manifest schema: its section under ``name``, the
    name in ``formats``, and the rule that a listed format has its section."""
    data["properties"][name] = section
    items = data["properties"]["formats"]["items"]
    if name not in items["enum"]:
        items["enum"].append(name)
    data["properties"]["formats"]["maxItems"] = len(items["enum"])
    rule = {
        "if": {"properties": {"formats": {"contains": {"const": name}}}, "required": ["formats"]},
        "then": {"required": [name]},
    }
    if rule not in data.setdefault("allOf", []):
        data["allOf"].append(rule)


def format_names() -> list[str]:
    """The formats a manifest may list (the schema's ``formats`` enum)."""
    generated = _generated()
    if generated is not None:
        return list(generated.FORMAT_NAMES)
    return list(schema()["properties"]["formats"]["items"]["enum"])


def _generated() -> Any:
    """The committed schema as plain Python (``_manifest_check``, written by
    ``schema_codegen``), or None while formats are registered at run time (the
    interpreter reads the schema with them)."""
    if _REGISTERED:
        return None
    from toolkit.bundle import _manifest_check

    return _manifest_check


def join_path(path: str, key: Any) -> str:
    """A JSON path with ``key`` appended: ``a.b``, ``a[3]``, ``a["x y"]``."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    # An ASCII identifier ([A-Za-z_][A-Za-z0-9_]*), tested without a regex.
    if key.isascii() and key.isidentifier():
        return f"{path}.{key}" if path else key
    return f"{path}[{json_string(key)}]"


def _dumps(value: Any, **options: Any) -> str:
    """``json.dumps(value, **options)``; strings, numbers, bools, None and lists of strings
    without importing json (trial checks of oneOf branches word messages they drop)."""
    if not options:
        kind = type(value)
        if kind is str:
            return json_string(value)
        if kind is bool:
            return "true" if value else "false"
        if kind is int:
            return int.__repr__(value)
        if kind is float and math.isfinite(value):
            return float.__repr__(value)
        if value is None:
            return "null"
        if kind is list and all(type(v) is str for v in value):
            return "[" + ", ".join(map(json_string, value)) + "]"
    import json

    return json.dumps(value, **options)


def show_value(value: Any) -> str:
    """A value as a message shows it: its JSON, shortened, or "an object"/"a list"."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    text = _dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


_TYPE_TEXT = {
    "integer": "an int",
    "number": "a number",
    "string": "a string",
    "boolean": "a bool",
    "null": "null",
    "array": "a list",
    "object": "an object",
}


def _type_ok(value: Any, kind: str) -> bool:
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "string":
        return isinstance(value, str)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "null":
        return value is None
    if kind == "array":
        return isinstance(value, list)
    if kind == "object":
        return isinstance(value, dict)
    return False


#: JSON type names of the exact Python types json.loads makes (bool before int: a bool
#: is no "integer"); other types take _type_ok's isinstance tests.
_JSON_TYPES = {
    bool: "boolean",
    int: "integer",
    float: "number",
    str: "string",
    type(None): "null",
    list: "array",
    dict: "object",
}


def _types_ok(value: Any, kinds: str | list[str]) -> bool:
    """Whether ``value`` has one of the schema's ``type`` names (one dict lookup, mostly)."""
    kind = _JSON_TYPES.get(type(value))
    if kind is None:
        return any(_type_ok(value, k) for k in ([kinds] if isinstance(kinds, str) else kinds))
    if type(kinds) is str:
        return kind == kinds or (kind == "integer" and kinds == "number")
    return kind in kinds or (kind == "integer" and "number" in kinds)


#: Keywords of a "simple" schema: one a scalar is checked against in a few comparisons.
_SIMPLE_KEYS = frozenset(
    {"type", "minimum", "maximum", "minLength", "maxLength", "enum", "const", "description"}
)
#: id(schema node) -> (root, node, facts or None): the nodes of a cached schema live on.
_SIMPLE: dict[int, tuple[Any, Any, tuple | None]] = {}


def _passes_simple(value: Any, facts: tuple) -> bool:
    """True only where ``_Validator.check`` would find nothing wrong (else it runs).

    For the scalars most of a manifest is made of (names, dtypes, dims), this replaces a
    recursive check with a few comparisons; a violation, or any value this cannot
    judge, takes the full check, which words the message.
    """
    kinds, low, high, min_length, max_length, enum, has_const, const = facts
    kind = _JSON_TYPES.get(type(value))
    if kind is None or kind == "array" or kind == "object":
        return False
    if kinds is not None:
        if type(kinds) is str:
            if not (kind == kinds or (kind == "integer" and kinds == "number")):
                return False
        elif not (kind in kinds or (kind == "integer" and "number" in kinds)):
            return False
    if kind == "number" and not math.isfinite(value):
        return False
    if has_const and value != const:
        return False
    if enum is not None and not (
        value in enum
        if kind == "string"
        else any(value == e and type(value) is type(e) for e in enum)
    ):
        return False
    if kind == "integer" or kind == "number":
        return (low is None or value >= low) and (high is None or value <= high)
    if kind == "string":
        return len(value) >= min_length and (max_length is None or len(value) <= max_length)
    return True


def _hex64(value: str) -> bool:
    return len(value) == 64 and not value.strip("0123456789abcdef")


def _identifier(value: str) -> bool:
    return value.isascii() and value[:1].isalpha() and value.replace("_", "a").isalnum()


def _relative_path(value: str) -> bool:
    # No newline: "." and "$" in the pattern treat it apart.
    return (
        "\\" not in value
        and "\x00" not in value
        and "\n" not in value
        and all(part not in ("", ".", "..") for part in value.split("/"))
    )


#: The schema's patterns, each with a test that is True only where the regex matches (a
#: False goes to the regex): compiling the three regexes is ~1.3M instructions of a
#: runtime's cold start (tests/toolkit/test_bundle_cold_paths.py holds each to its regex).
_PATTERN_TESTS = {
    "^[0-9a-f]{64}$": _hex64,
    "^[A-Za-z][A-Za-z0-9_]*$": _identifier,
    "^(?!\\.\\.?(/|$))(?!.*/\\.\\.?(/|$))[^/\\\\\\u0000]+(/[^/\\\\\\u0000]+)*$": _relative_path,
}


def _matches(pattern: str, value: str) -> bool:
    test = _PATTERN_TESTS.get(pattern)
    return (test is not None and test(value)) or re.search(pattern, value) is not None


def _or(texts: list[str]) -> str:
    return texts[0] if len(texts) == 1 else ", ".join(texts[:-1]) + " or " + texts[-1]


class _Validator:
    def __init__(self, root: dict[str, Any]):
        self.root = root
        self.errors: list[str] = []

    def resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        seen = 0
        while "$ref" in schema:
            ref = schema["$ref"]
            node: Any = self.root
            for part in ref.removeprefix("#/").split("/"):
                node = node[part]
            schema = node
            seen += 1
            if seen > 32:
                raise RecursionError(ref)
        return schema

    def describe(self, schema: dict[str, Any]) -> str:
        schema = self.resolve(schema)
        if "const" in schema:
            return _dumps(schema["const"])
        if "enum" in schema:
            return "one of " + _dumps(schema["enum"])
        if "oneOf" in schema:
            return _or([self.describe(s) for s in schema["oneOf"]])
        kinds = schema.get("type")
        if kinds is not None:
            kinds = [kinds] if isinstance(kinds, str) else kinds
            return _or([_TYPE_TEXT[k] for k in kinds])
        return "a valid value"

    def simple(self, schema: Any) -> tuple | None:
        """The facts of a simple schema (after $ref), else None; cached per node."""
        entry = _SIMPLE.get(id(schema))
        if entry is not None and entry[0] is self.root and entry[1] is schema:
            return entry[2]
        facts = None
        if type(schema) is dict and schema:
            node = self.resolve(schema) if "$ref" in schema else schema
            if type(node) is dict and node and node.keys() <= _SIMPLE_KEYS:
                facts = (
                    node.get("type"),
                    node.get("minimum"),
                    node.get("maximum"),
                    node.get("minLength", 0),
                    node.get("maxLength"),
                    node.get("enum"),
                    "const" in node,
                    node.get("const"),
                )
        if len(_SIMPLE) >= 4096:
            _SIMPLE.clear()
        _SIMPLE[id(schema)] = (self.root, schema, facts)
        return facts

    def fail(self, path: str, text: str) -> None:
        self.errors.append(f"{path or '(root)'}: {text}")

    def check(self, value: Any, schema: Any, path: str, depth: int = 0) -> bool:
        """Appends violations to self.errors; True when there were none."""
        before = len(self.errors)
        if depth > _MAX_DEPTH:
            self.fail(path, f"expected at most {_MAX_DEPTH} levels of nesting, got more")
            return False
        if schema is True or schema == {}:
            return True
        if schema is False:
            self.fail(path, "unexpected key")
            return False
        if "$ref" in schema:
            schema = self.resolve(schema)
        if "oneOf" in schema:
            return self.one_of(value, schema["oneOf"], path, depth)
        kinds = schema.get("type")
        if kinds is not None and not _types_ok(value, kinds):
            kinds = [kinds] if isinstance(kinds, str) else kinds
            self.fail(
                path, f"expected {_or([_TYPE_TEXT[k] for k in kinds])}, got {show_value(value)}"
            )
            return False
        if isinstance(value, float) and not math.isfinite(value):
            self.fail(path, f"expected a finite number, got {value}")
            return False
        if "const" in schema and value != schema["const"]:
            self.fail(path, f"expected {_dumps(schema['const'])}, got {show_value(value)}")
            return False
        if "enum" in schema and not (
            value in schema["enum"]  # a str equals only strs: no type test needed
            if type(value) is str
            else any(value == e and type(value) is type(e) for e in schema["enum"])
        ):
            self.fail(path, f"expected one of {_dumps(schema['enum'])}, got {show_value(value)}")
            return False
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if "minimum" in schema and value < schema["minimum"]:
                self.fail(path, f"expected a value >= {schema['minimum']}, got {show_value(value)}")
            if "maximum" in schema and value > schema["maximum"]:
                self.fail(path, f"expected a value <= {schema['maximum']}, got {show_value(value)}")
        if isinstance(value, str):
            if len(value) < schema.get("minLength", 0):
                self.fail(
                    path,
                    f"expected at least {schema['minLength']} characters, got {show_value(value)}",
                )
            if len(value) > schema.get("maxLength", math.inf):
                self.fail(
                    path, f"expected at most {schema['maxLength']} characters, got {len(value)}"
                )
            elif "pattern" in schema and not _matches(schema["pattern"], value):
                self.fail(path, f"expected {self.pattern_text(schema)}, got {show_value(value)}")
        if isinstance(value, list):
            self.check_array(value, schema, path, depth)
        if isinstance(value, dict):
            self.check_object(value, schema, path, depth)
        for sub in schema.get("allOf", []):
            self.check(value, sub, path, depth)
        if "if" in schema and self.passes(value, schema["if"], path, depth):
            self.check(value, schema.get("then", True), path, depth)
        return len(self.errors) == before

    def pattern_text(self, schema: dict[str, Any]) -> str:
        if "sha256" in schema["pattern"] or schema["pattern"] == "^[0-9a-f]{64}$":
            return "64 lowercase hex digits"
        if "u0000" in _dumps(schema["pattern"]) or "\\x00" in schema["pattern"]:
            return (
                "a relative path inside the bundle (no leading '/', '.', '..', empty parts or '\\')"
            )
        return f"a string matching {schema['pattern']}"

    def passes(self, value: Any, schema: Any, path: str, depth: int) -> bool:
        saved = self.errors
        self.errors = []
        try:
            return self.check(value, schema, path, depth)
        finally:
            self.errors = saved

    def one_of(self, value: Any, branches: list[Any], path: str, depth: int) -> bool:
        resolved = [self.resolve(b) for b in branches]
        if depth < _MAX_DEPTH and type(value) is not dict:
            # A value passing a simple branch in a few comparisons passes: no trial checks
            # (_passes_simple takes no dict, so the "kind" dispatch below cannot apply).
            for branch in resolved:
                facts = self.simple(branch)
                if facts is not None and _passes_simple(value, facts):
                    return True
        if isinstance(value, dict) and "kind" in value:
            # Branches told apart by "kind": report the matching branch's own violations.
            matching = [b for b in resolved if _kind_matches(b, value["kind"])]
            if matching and len(matching) == 1:
                return self.check(value, matching[0], path, depth + 1)
            kinds = [k for b in resolved for k in _kinds(b)]
            if kinds and not matching:
                self.fail(
                    join_path(path, "kind"),
                    f"expected one of {_dumps(kinds)}, got {show_value(value['kind'])}",
                )
                return False
        if any(self.passes(value, b, path, depth + 1) for b in resolved):
            return True
        typed = [
            b
            for b in resolved
            if "type" in b and _type_ok(value, b["type"] if isinstance(b["type"], str) else "")
        ]
        if len(typed) == 1:
            return self.check(value, typed[0], path, depth + 1)
        self.fail(
            path, f"expected {_or([self.describe(b) for b in resolved])}, got {show_value(value)}"
        )
        return False

    def check_array(self, value: list, schema: dict[str, Any], path: str, depth: int) -> None:
        if len(value) < schema.get("minItems", 0):
            self.fail(path, f"expected at least {schema['minItems']} entries, got {len(value)}")
        if len(value) > schema.get("maxItems", math.inf):
            self.fail(path, f"expected at most {schema['maxItems']} entries, got {len(value)}")
            return
        if schema.get("uniqueItems"):
            # Strings as they are (most lists of unique items hold strings), anything
            # else as its canonical JSON; the flag keeps the two kinds apart.
            seen = [
                (True, v) if type(v) is str else (False, _dumps(v, sort_keys=True)) for v in value
            ]
            if len(set(seen)) != len(seen):
                self.fail(path, "expected unique entries, got repeats")
        prefix = schema.get("prefixItems", [])
        items = schema.get("items")
        facts = self.simple(items) if items is not None and depth < _MAX_DEPTH else None
        for i, item in enumerate(value):
            sub = prefix[i] if i < len(prefix) else items
            if sub is items and facts is not None and _passes_simple(item, facts):
                continue
            if sub is not None and len(self.errors) < MAX_VIOLATIONS:
                self.check(item, sub, join_path(path, i), depth + 1)
        if "contains" in schema and not any(
            self.passes(v, schema["contains"], path, depth + 1) for v in value
        ):
            self.fail(path, f"expected an entry {self.describe(schema['contains'])}")

    def check_object(self, value: dict, schema: dict[str, Any], path: str, depth: int) -> None:
        if len(value) > schema.get("maxProperties", math.inf):
            self.fail(path, f"expected at most {schema['maxProperties']} keys, got {len(value)}")
            return
        for key in schema.get("required", []):
            if key not in value:
                self.fail(join_path(path, key), "expected this key, got none")
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        names = schema.get("propertyNames")
        shallow = depth < _MAX_DEPTH
        for key, item in value.items():
            if len(self.errors) >= MAX_VIOLATIONS:
                return
            if names is None and key in properties and shallow:
                facts = self.simple(properties[key])
                if facts is not None and _passes_simple(item, facts):
                    continue
            where = join_path(path, key)
            if names is not None and not self.check(key, names, where, depth + 1):
                continue
            if key in properties:
                self.check(item, properties[key], where, depth + 1)
            elif extra is False:
                self.fail(where, f"unexpected key (expected one of {sorted(properties)})")
            elif extra is not True:
                self.check(item, extra, where, depth + 1)


def _kinds(schema: dict[str, Any]) -> list[str]:
    kind = schema.get("properties", {}).get("kind", {})
    if "const" in kind:
        return [kind["const"]]
    return list(kind.get("enum", []))


def _kind_matches(schema: dict[str, Any], kind: Any) -> bool:
    return isinstance(kind, str) and kind in _kinds(schema)


# --- what the schema cannot say ------------------------------------------------------------


def schema_violations(manifest: Any) -> list[str]:
    """The violations of the JSON Schema alone (what any schema validator reports)."""
    generated = _generated()
    # The generated check says True only where the walk below finds nothing (tests):
    # a valid manifest is checked without parsing or walking the schema.
    if generated is not None and generated.valid(manifest):
        return []
    validator = _Validator(schema())
    try:
        validator.check(manifest, schema(), "")
    except RecursionError:
        return ["(root): expected a manifest of bounded depth, got one nested too deeply"]
    return validator.errors
