"""Writes ``toolkit/bundle/_manifest_check.py``: the manifest schema as plain Python (TF-free).

The generated ``valid(manifest)`` is True exactly where ``toolkit.bundle.schema``'s
interpreter finds no violation, keyword for keyword (the interpreter's own semantics:
``oneOf`` passes on the first passing branch, a ``kind`` picks its branch, the nesting
limit); on anything it does not take (a type json.loads does not make, ``uniqueItems``
over non-strings) it says False, and the interpreter, which words the messages, decides.
A runtime's load thus checks the manifest in a few calls per value instead of walking
the schema (callgrind: ~9M instructions of a cold start) and does not parse the schema.

``python -m exporters.formats --write-schema`` writes it with the schema;
tests/toolkit/test_bundle_cold_paths.py fails when it is stale and holds it to the
interpreter over mutated manifests. Not imported by readers (only its output is).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from toolkit.bundle import schema as schema_lib

__all__ = ["MODULE_PATH", "generate"]

MODULE_PATH = Path(__file__).with_name("_manifest_check.py")

#: Keywords the interpreter acts on; the others it ignores (``schema._IGNORED``).
_HANDLED = frozenset(
    {
        "$ref",
        "oneOf",
        "type",
        "const",
        "enum",
        "minimum",
        "maximum",
        "minLength",
        "maxLength",
        "pattern",
        "minItems",
        "maxItems",
        "uniqueItems",
        "prefixItems",
        "items",
        "contains",
        "maxProperties",
        "required",
        "properties",
        "additionalProperties",
        "propertyNames",
        "allOf",
        "if",
        "then",
    }
)
_KNOWN = _HANDLED | schema_lib._IGNORED
#: Python types json.loads makes, by JSON Schema type name.
_TYPES = {
    "integer": ("int",),
    "number": ("int", "float"),
    "string": ("str",),
    "boolean": ("bool",),
    "null": ("NoneType",),
    "array": ("list",),
    "object": ("dict",),
}
_ALL = ("NoneType", "bool", "dict", "float", "int", "list", "str")


class _Writer:
    def __init__(self, root: dict[str, Any]):
        self.root = root
        self.names: dict[int, str] = {}
        self.keep: list[Any] = []  # the nodes named, so their ids stay theirs
        self.bodies: dict[str, str] = {}  # a body's text -> the function that has it
        self.functions: list[str] = []
        self.constants: dict[str, str] = {}  # a constant's text -> its name
        self.count = 0

    def resolve(self, node: Any) -> Any:
        seen = 0
        while isinstance(node, dict) and "$ref" in node:
            target: Any = self.root
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            node = target
            seen += 1
            if seen > 32:
                raise ValueError(f"$ref cycle at {node!r:.60}")
        return node

    def constant(self, text: str) -> str:
        name = self.constants.get(text)
        if name is None:
            name = self.constants[text] = f"_K{len(self.constants)}"
        return name

    def function(self, node: Any) -> str:
        """The name of the generated check of ``node`` (made on first use; one function
        for nodes with the same check)."""
        node = self.resolve(node)
        name = self.names.get(id(node))
        if name is not None:
            return name
        name = f"_c{self.count}"
        self.count += 1
        self.names[id(node)] = name
        self.keep.append(node)
        body = "".join(f"    {line}\n" for line in self.body(node))
        same = self.bodies.get(body)
        if same is not None:
            # Reused unless something made meanwhile calls this one (a recursive node).
            calls = re.compile(rf"\b{name}\b")
            texts = [body, *self.bodies, *self.constants]
            if not any(calls.search(text) for text in texts):
                self.names[id(node)] = same
                return same
        self.bodies[body] = name
        # Nesting beyond the interpreter's limit fails there; one level of margin here
        # for the inline checks of children (a False goes to the interpreter).
        self.functions.append(
            f"def {name}(v, d):\n    if d >= {schema_lib._MAX_DEPTH}:\n        return False\n"
            + body
        )
        return name

    def types(self, node: dict[str, Any]) -> tuple[str, ...]:
        kinds = node.get("type")
        if kinds is None:
            return _ALL
        names = [kinds] if isinstance(kinds, str) else kinds
        return tuple(sorted({t for k in names for t in _TYPES[k]}))

    def type_test(self, allowed: tuple[str, ...], x: str) -> str:
        if len(allowed) == 1:
            return f"type({x}) is {allowed[0]}"
        return f"type({x}) in {self.constant(_type_set(allowed))}"

    def scalar(self, node: dict[str, Any], x: str, allowed: tuple[str, ...]) -> list[str]:
        """Conditions that all hold where a value passes ``node``'s scalar keywords
        (its type already tested)."""
        tests = []
        if "float" in allowed:
            tests.append(f"(type({x}) is not float or isfinite({x}))")
        if "const" in node:
            tests.append(f"not {x} != {self.constant(repr(node['const']))}")
        if "enum" in node:
            enum = self.constant(repr(tuple(node["enum"])))
            if allowed == ("str",):
                tests.append(f"{x} in {enum}")
            else:
                tests.append(
                    f"({x} in {enum} if type({x}) is str else "
                    f"any({x} == e and type({x}) is type(e) for e in {enum}))"
                )
        numeric = [t for t in allowed if t in ("int", "float")]
        for key, op in (("minimum", "<"), ("maximum", ">")):
            if key in node and numeric:
                test = f"not {x} {op} {node[key]!r}"
                if set(allowed) - {"int", "float"}:
                    test = (
                        f"(type({x}) not in {self.constant(_type_set(('float', 'int')))} or {test})"
                    )
                tests.append(test)
        if "str" in allowed:
            text = []
            if node.get("minLength", 0):
                text.append(f"len({x}) >= {node['minLength']!r}")
            if "maxLength" in node:
                text.append(f"len({x}) <= {node['maxLength']!r}")
            if "pattern" in node:
                text.append(f"_matches({node['pattern']!r}, {x})")
            if text:
                joined = " and ".join(text)
                tests.append(
                    joined if allowed == ("str",) else f"(type({x}) is not str or ({joined}))"
                )
        return tests

    def expr(self, node: Any, x: str) -> str:
        """An expression true where ``x`` (one level below ``v``) passes ``node``."""
        node = self.resolve(node)
        if node is True or node == {}:
            return "True"
        if node is False:
            return "False"
        if isinstance(node, dict) and not (set(node) & _COMPOUND) and not set(node) - _KNOWN:
            allowed = self.types(node)
            return " and ".join([self.type_test(allowed, x), *self.scalar(node, x, allowed)])
        return f"{self.function(node)}({x}, d + 1)"

    def body(self, node: Any) -> list[str]:
        if node is True or node == {}:
            return ["return True"]
        if node is False:
            return ["return False"]
        if not isinstance(node, dict):
            raise ValueError(f"expected a schema object, got {node!r:.60}")
        unknown = set(node) - _KNOWN
        if unknown:
            raise ValueError(f"keywords the interpreter does not know: {sorted(unknown)}")
        if "oneOf" in node:  # the interpreter looks at nothing else beside it
            return self.one_of(node["oneOf"])
        allowed = self.types(node)
        lines = ["t = type(v)"]
        if len(allowed) == 1:
            lines.append(f"if t is not {allowed[0]}:")
        else:
            lines.append(f"if t not in {self.constant(_type_set(allowed))}:")
        lines.append("    return False")
        tests = self.scalar(node, "v", allowed)
        if tests:
            lines += [f"if not ({' and '.join(tests)}):", "    return False"]
        if "list" in allowed:
            array = self.array(node)
            if array:
                lines += ["if t is list:"] if len(allowed) > 1 else []
                lines += [("    " if len(allowed) > 1 else "") + line for line in array]
        if "dict" in allowed:
            obj = self.object(node)
            if obj:
                lines += ["if t is dict:"] if len(allowed) > 1 else []
                lines += [("    " if len(allowed) > 1 else "") + line for line in obj]
        for sub in node.get("allOf", []):
            lines += [f"if not {self.function(sub)}(v, d):", "    return False"]
        if "if" in node:
            then = self.function(node.get("then", True))
            lines += [f"if {self.function(node['if'])}(v, d) and not {then}(v, d):"]
            lines.append("    return False")
        lines.append("return True")
        return lines

    def one_of(self, branches: list[Any]) -> list[str]:
        resolved = [self.resolve(b) for b in branches]
        by_kind: dict[str, list[str]] = {}
        for branch in resolved:
            for kind in schema_lib._kinds(branch) if isinstance(branch, dict) else []:
                by_kind.setdefault(kind, []).append(self.function(branch))
        lines = []
        if by_kind:
            table = self.constant(
                "{" + ", ".join(f"{k!r}: ({', '.join(v)},)" for k, v in by_kind.items()) + "}"
            )
            lines += [
                'if type(v) is dict and "kind" in v:',
                '    k = v["kind"]',
                f"    m = {table}.get(k) if type(k) is str else None",
                "    if m is None:",
                "        return False",
                "    if len(m) == 1:",
                "        return m[0](v, d + 1)",
            ]
        # every branch at one level down, as the interpreter tries them
        lines.append("return " + " or ".join(self.expr(b, "v") for b in resolved))
        return lines

    def array(self, node: dict[str, Any]) -> list[str]:
        lines = []
        if node.get("minItems", 0):
            lines += [f"if len(v) < {node['minItems']!r}:", "    return False"]
        if "maxItems" in node:
            lines += [f"if len(v) > {node['maxItems']!r}:", "    return False"]
        if node.get("uniqueItems"):
            # Strings only: any other entry goes to the interpreter (canonical JSON).
            lines += [
                "if not all(type(x) is str for x in v) or len(set(v)) != len(v):",
                "    return False",
            ]
        prefix = node.get("prefixItems", [])
        for i, sub in enumerate(prefix):
            lines += [f"if len(v) > {i}:", f"    x = v[{i}]"]
            lines += [f"    if not ({self.expr(sub, 'x')}):", "        return False"]
        items = node.get("items")
        if items is not None:
            rest = f"v[{len(prefix)}:]" if prefix else "v"
            lines += [f"for x in {rest}:", f"    if not ({self.expr(items, 'x')}):"]
            lines.append("        return False")
        if "contains" in node:
            test = self.expr(node["contains"], "x")
            lines += [f"if not any({test} for x in v):", "    return False"]
        return lines

    def object(self, node: dict[str, Any]) -> list[str]:
        lines = []
        if "maxProperties" in node:
            lines += [f"if len(v) > {node['maxProperties']!r}:", "    return False"]
        required = node.get("required", [])
        if required:
            keys = self.constant(f"frozenset({sorted(required)!r})")
            lines += [f"if not {keys} <= v.keys():", "    return False"]
        properties = node.get("properties", {})
        extra = node.get("additionalProperties", True)
        names = node.get("propertyNames")
        known = self.constant(f"frozenset({sorted(properties)!r})")
        if extra is False:
            lines += [f"if not v.keys() <= {known}:", "    return False"]
        for key, sub in properties.items():
            test = self.expr(sub, "x")
            if test == "True":
                continue
            if key in required:
                lines += [f"x = v[{key!r}]", f"if not ({test}):", "    return False"]
            else:
                lines += [f"x = v.get({key!r}, _MISSING)"]
                lines += [f"if x is not _MISSING and not ({test}):", "    return False"]
        if names is not None or extra not in (True, False):
            lines.append("for k, x in v.items():")
            if names is not None:
                lines += [f"    if not ({self.expr(names, 'k')}):", "        return False"]
            if extra not in (True, False):
                test = self.expr(extra, "x")
                lines += [f"    if k not in {known} and not ({test}):", "        return False"]
        return lines


#: Keywords that take a function (the rest an inline expression).
_COMPOUND = frozenset(
    {
        "$ref",
        "oneOf",
        "allOf",
        "if",
        "then",
        "items",
        "prefixItems",
        "contains",
        "minItems",
        "maxItems",
        "uniqueItems",
        "properties",
        "required",
        "additionalProperties",
        "propertyNames",
        "maxProperties",
    }
)


def _type_set(names: tuple[str, ...]) -> str:
    return "frozenset({" + ", ".join(names) + "})"


def generate(schema: dict[str, Any]) -> str:
    """The source of ``_manifest_check.py`` for ``schema`` (the committed manifest schema)."""
    writer = _Writer(schema)
    root = writer.function(schema)
    formats = tuple(schema["properties"]["formats"]["items"]["enum"])
    header = (
        '"""The manifest schema as plain Python: generated by toolkit.bundle.schema_codegen\n'
        "from toolkit/schemas/manifest.schema.json; do not edit (``python -m exporters.formats\n"
        '--write-schema`` rewrites both)."""\n\n'
        "# ruff: noqa\n"
        "from math import isfinite\n\n"
        "from toolkit.bundle.schema import _matches\n\n"
        "NoneType = type(None)\n"
        "_MISSING = object()\n"
        f"#: The formats a manifest may list (the schema's ``formats`` enum).\n"
        f"FORMAT_NAMES = {formats!r}\n\n\n"
        "def valid(manifest):\n"
        '    """True where the schema interpreter finds no violation (False: let it look)."""\n'
        f"    return {root}(manifest, 0)\n\n\n"
    )
    constants = "\n".join(f"{name} = {text}" for text, name in writer.constants.items())
    return header + "\n\n".join(writer.functions) + "\n\n" + constants + "\n"
