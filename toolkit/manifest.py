"""Validation of bundle manifests against their JSON Schema (TF-free, no schema library).

The schema is ``toolkit/schemas/manifest.schema.json`` (published as
docs/manifest.schema.json). ``validate`` checks a manifest against it with a small
interpreter of the JSON Schema keywords the schema uses, then checks what a schema
cannot say (spec bounds that fit their dtype and shape, element counts, file
references). Every violation is one line naming the JSON path, e.g.
``manifest.json: signatures.distribution.inputs[0].shape[1]: expected an int or null,
got "x"``.

Why not a schema library: this runs on every load on edge devices; importing
jsonschema costs tens of milliseconds, this interpreter a fraction of one.
"""

from __future__ import annotations

import functools
import json
import math
import re
from pathlib import Path
from typing import Any

from toolkit.errors import BundleError

__all__ = ["MAX_ELEMENTS", "SCHEMA_PATH", "schema", "schema_violations", "validate", "violations"]

SCHEMA_PATH = Path(__file__).parent / "schemas" / "manifest.schema.json"
#: Largest element count of one array a manifest may describe (a spec leaf, a graph I/O).
MAX_ELEMENTS = 1 << 24
#: Violations reported at most (the rest are counted).
MAX_VIOLATIONS = 20
_MAX_DEPTH = 64
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_IGNORED = frozenset({"$schema", "$id", "title", "description", "$defs", "else"})


@functools.cache
def schema() -> dict[str, Any]:
    """The manifest's JSON Schema (draft 2020-12)."""
    return json.loads(SCHEMA_PATH.read_text())


def _join(path: str, key: Any) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    # An ASCII identifier is exactly what _IDENTIFIER matches, and this test is cheaper.
    if key.isascii() and key.isidentifier():
        return f"{path}.{key}" if path else key
    return f"{path}[{json.dumps(key)}]"


def _got(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    text = json.dumps(value)
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
            return json.dumps(schema["const"])
        if "enum" in schema:
            return "one of " + json.dumps(schema["enum"])
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
            self.fail(path, f"expected {_or([_TYPE_TEXT[k] for k in kinds])}, got {_got(value)}")
            return False
        if isinstance(value, float) and not math.isfinite(value):
            self.fail(path, f"expected a finite number, got {value}")
            return False
        if "const" in schema and value != schema["const"]:
            self.fail(path, f"expected {json.dumps(schema['const'])}, got {_got(value)}")
            return False
        if "enum" in schema and not (
            value in schema["enum"]  # a str equals only strs: no type test needed
            if type(value) is str
            else any(value == e and type(value) is type(e) for e in schema["enum"])
        ):
            self.fail(path, f"expected one of {json.dumps(schema['enum'])}, got {_got(value)}")
            return False
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if "minimum" in schema and value < schema["minimum"]:
                self.fail(path, f"expected a value >= {schema['minimum']}, got {_got(value)}")
            if "maximum" in schema and value > schema["maximum"]:
                self.fail(path, f"expected a value <= {schema['maximum']}, got {_got(value)}")
        if isinstance(value, str):
            if len(value) < schema.get("minLength", 0):
                self.fail(
                    path, f"expected at least {schema['minLength']} characters, got {_got(value)}"
                )
            if len(value) > schema.get("maxLength", math.inf):
                self.fail(
                    path, f"expected at most {schema['maxLength']} characters, got {len(value)}"
                )
            elif "pattern" in schema and not re.search(schema["pattern"], value):
                self.fail(path, f"expected {self.pattern_text(schema)}, got {_got(value)}")
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
        if "u0000" in json.dumps(schema["pattern"]) or "\\x00" in schema["pattern"]:
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
        if isinstance(value, dict) and "kind" in value:
            # Branches told apart by "kind": report the matching branch's own violations.
            matching = [b for b in resolved if _kind_matches(b, value["kind"])]
            if matching and len(matching) == 1:
                return self.check(value, matching[0], path, depth + 1)
            kinds = [k for b in resolved for k in _kinds(b)]
            if kinds and not matching:
                self.fail(
                    _join(path, "kind"),
                    f"expected one of {json.dumps(kinds)}, got {_got(value['kind'])}",
                )
                return False
        passing = [b for b in resolved if self.passes(value, b, path, depth + 1)]
        if passing:
            return True
        typed = [
            b
            for b in resolved
            if "type" in b and _type_ok(value, b["type"] if isinstance(b["type"], str) else "")
        ]
        if len(typed) == 1:
            return self.check(value, typed[0], path, depth + 1)
        self.fail(path, f"expected {_or([self.describe(b) for b in resolved])}, got {_got(value)}")
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
                (True, v) if type(v) is str else (False, json.dumps(v, sort_keys=True))
                for v in value
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
                self.check(item, sub, _join(path, i), depth + 1)
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
                self.fail(_join(path, key), "expected this key, got none")
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
            where = _join(path, key)
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


def _semantic(manifest: dict[str, Any], errors: list[str], files_listed: bool = True) -> None:
    from toolkit import distribution_families as families
    from toolkit.errors import SpecError
    from toolkit.specs.array_spec import ArraySpec

    def specs(node: Any, path: str) -> None:
        kind = node.get("kind")
        if kind in ("array_spec", "bounded_array_spec"):
            count = math.prod(node["shape"])
            if count > MAX_ELEMENTS:
                errors.append(
                    f"{path}.shape: expected at most {MAX_ELEMENTS} elements, got {count}"
                )
                return
            try:
                ArraySpec.from_json(node)
            except (SpecError, ValueError, TypeError, OverflowError) as e:
                errors.append(f"{path}: {str(e).splitlines()[0]}")
        elif kind == "dict":
            for key, item in node["items"].items():
                specs(item, _join(_join(path, "items"), key))
        elif kind in ("tuple", "list", "namedtuple"):
            if kind == "namedtuple" and len(node["fields"]) != len(node["items"]):
                errors.append(
                    f"{path}.items: expected {len(node['fields'])} entries (one per field), "
                    f"got {len(node['items'])}"
                )
            for i, item in enumerate(node["items"]):
                specs(item, _join(_join(path, "items"), i))

    for group, node in manifest["specs"].items():
        specs(node, f"specs.{group}")

    def params(node: Any, path: str) -> None:
        kind = node.get("kind")
        if kind == "distribution_params":
            expected = list(families.FAMILIES[node["family"]])
            if node["params"] != expected:
                errors.append(
                    f"{path}.params: expected {json.dumps(expected)} for family "
                    f"{node['family']!r}, got {json.dumps(node['params'])}"
                )
        elif kind == "dict":
            for key, item in node["items"].items():
                params(item, _join(_join(path, "items"), key))
        elif kind in ("tuple", "list", "namedtuple"):
            for i, item in enumerate(node["items"]):
                params(item, _join(_join(path, "items"), i))

    params(manifest["distribution"], "distribution")

    for name, signature in manifest["signatures"].items():
        for which in ("inputs", "outputs"):
            seen = set()
            for i, entry in enumerate(signature[which]):
                where = f"signatures.{name}.{which}[{i}]"
                if entry["name"] in seen:
                    errors.append(
                        f"{where}.name: expected a unique name, got {entry['name']!r} again"
                    )
                seen.add(entry["name"])
                dims = [d for d in entry["shape"] or [] if d is not None]
                count = math.prod(dims)
                if count > MAX_ELEMENTS:
                    errors.append(
                        f"{where}.shape: expected at most {MAX_ELEMENTS} elements, got {count}"
                    )

    files = manifest["files"] if files_listed else {}
    if files_listed and "onnx" in manifest and manifest["onnx"]["file"] not in files:
        errors.append(
            f"onnx.file: expected a path listed in files, got {_got(manifest['onnx']['file'])}"
        )
    if files_listed and "saved_model" in manifest:
        folder = manifest["saved_model"]["dir"]
        if not any(rel.startswith(folder + "/") for rel in files):
            errors.append(
                f"saved_model.dir: expected a folder with files listed in files, got {_got(folder)}"
            )
    for fmt in ("onnx", "saved_model"):
        if fmt in manifest and fmt not in manifest["formats"]:
            errors.append(
                f"{fmt}: expected no {fmt!r} section where formats "
                f"{json.dumps(manifest['formats'])} lacks it, got one"
            )


def _signature_entry_text(entry: dict[str, Any]) -> str:
    return f"{entry['dtype']} {json.dumps(entry['shape'])}"


def _consistency(manifest: dict[str, Any], errors: list[str]) -> None:
    """The distribution signature agrees with the specs (names, dtypes, shapes, categories)."""
    from toolkit import nest
    from toolkit.specs import array_spec

    specs = manifest["specs"]
    try:
        time_step = array_spec.spec_nest_from_json(specs["time_step"])
        state = array_spec.spec_nest_from_json(specs["policy_state"])
        action = array_spec.spec_nest_from_json(specs["action"])
        graph_info = array_spec.spec_nest_from_json(specs["graph_info"])
    except (ValueError, TypeError, KeyError) as e:  # SpecError is a ValueError
        errors.append(f"specs: {str(e).splitlines()[0]}")
        return
    expected_inputs = nest.flatten_with_paths(time_step) + nest.flatten_with_paths(
        state, "policy_state"
    )
    signature = manifest["signatures"]["distribution"]
    inputs = {e["name"]: (i, e) for i, e in enumerate(signature["inputs"])}
    outputs = {e["name"]: (i, e) for i, e in enumerate(signature["outputs"])}
    names = [n for n, _ in expected_inputs]
    if sorted(inputs) != sorted(names):
        errors.append(
            f"signatures.distribution.inputs: expected the inputs {sorted(names)} of the specs, "
            f"got {sorted(inputs)}"
        )
        return

    def agree(table: dict, which: str, name: str, spec: Any, required: bool = True) -> None:
        if name not in table:
            if required:
                errors.append(f"signatures.distribution.{which}: expected {name!r}, got none")
            return
        i, entry = table[name]
        # The batch dim is dynamic, or fixed where the source was (TF-Agents policies
        # saved with a batch size).
        batch = entry["shape"][0] if entry["shape"] else None
        want = {"dtype": spec.dtype.name, "shape": [batch, *spec.shape]}
        if entry["dtype"] != want["dtype"] or entry["shape"] != want["shape"]:
            errors.append(
                f"signatures.distribution.{which}[{i}]: expected {_signature_entry_text(want)} "
                f"for {name!r} (its spec), got {_signature_entry_text(entry)}"
            )

    for name, spec in expected_inputs:
        agree(inputs, "inputs", name, spec)
    for name, spec in nest.flatten_with_paths(state, "next_state"):
        agree(outputs, "outputs", name, spec)
    for name, spec in nest.flatten_with_paths(graph_info, "info"):
        agree(outputs, "outputs", name, spec)
    action_leaves = nest.flatten_with_paths(action, "action")
    for name, spec in action_leaves:
        agree(outputs, "outputs", name, spec, required=False)
    _check_params(manifest, outputs, [s for _, s in action_leaves], errors)


def _check_params(
    manifest: dict[str, Any], outputs: dict, action_leaves: list[Any], errors: list[str]
) -> None:
    from toolkit import distribution_families as families
    from toolkit import nest
    from toolkit.specs.array_spec import BoundedArraySpec

    leaves: list[tuple[str, dict[str, Any]]] = []

    def walk(node: Any, path: str) -> None:
        kind = node.get("kind")
        if kind == "distribution_params":
            leaves.append((path, node))
        elif kind == "dict":
            for key in sorted(node["items"]):
                walk(node["items"][key], nest.join_path(path, key))
        elif kind in ("tuple", "list", "namedtuple"):
            for i, item in enumerate(node["items"]):
                walk(item, nest.join_path(path, i))

    walk(manifest["distribution"], "distribution")
    for index, (path, leaf) in enumerate(leaves):
        rank = 1 + leaf["event_ndims"] + (leaf["family"] == families.CATEGORICAL)
        for param in families.FAMILIES[leaf["family"]]:
            name = nest.join_path(path, param)
            if name not in outputs:
                errors.append(f"signatures.distribution.outputs: expected {name!r}, got none")
                continue
            i, entry = outputs[name]
            shape = entry["shape"]
            if shape is None or len(shape) != rank:
                errors.append(
                    f"signatures.distribution.outputs[{i}].shape: expected rank {rank} (a batch "
                    f"dim first) for {name!r}, got {json.dumps(shape)}"
                )
                continue
            if leaf["family"] != families.CATEGORICAL or not action_leaves:
                continue
            spec = action_leaves[index % len(action_leaves)]
            n, shift = shape[-1], leaf.get("shift", 0)
            if isinstance(spec, BoundedArraySpec) and isinstance(n, int):
                low, high = int(spec.minimum.max()), int(spec.maximum.min())
                if shift < low or shift + n - 1 > high:
                    errors.append(
                        f"{path}: expected categories within the action spec's [{low}, {high}], "
                        f"got {shift}..{shift + n - 1} (shift {shift}, {n} logits)"
                    )


def schema_violations(manifest: Any) -> list[str]:
    """The violations of the JSON Schema alone (what any schema validator reports)."""
    validator = _Validator(schema())
    try:
        validator.check(manifest, schema(), "")
    except RecursionError:
        return ["(root): expected a manifest of bounded depth, got one nested too deeply"]
    return validator.errors


def violations(manifest: Any, *, files_listed: bool = True) -> list[str]:
    """Every violation of the manifest schema (and of the checks beyond it), one per line.

    ``files_listed=False`` skips checking that the formats' files are listed (for the
    copy a lone ONNX file carries, whose file table cannot list the bundle).
    """
    errors = schema_violations(manifest)
    if not errors:
        _semantic(manifest, errors, files_listed)
    if not errors:
        _consistency(manifest, errors)
    return errors


def validate(manifest: Any, where: str = "manifest.json", *, files_listed: bool = True) -> None:
    """Raises BundleError with one line per violation (at most MAX_VIOLATIONS)."""
    errors = violations(manifest, files_listed=files_listed)
    if errors:
        lines = [f"{where}: {e}" for e in errors[:MAX_VIOLATIONS]]
        if len(errors) > MAX_VIOLATIONS:
            lines.append(f"{where}: ... and {len(errors) - MAX_VIOLATIONS} more")
        raise BundleError("\n".join(lines))
