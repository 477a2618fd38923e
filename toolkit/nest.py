"""Nest helpers over optree, with the conventions of this project.

Nests are dicts (keys sorted, as tf.nest does), tuples, lists and namedtuples.
``None`` and ``()`` are empty nests. Paths join keys, field names and indices
with "/": ``observation/velocity``, ``policy_state/0``.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable
from typing import Any

import optree

from toolkit.errors import SpecError, StructureError

__all__ = [
    "assert_same_structure",
    "flatten",
    "flatten_up_to",
    "flatten_with_paths",
    "from_json",
    "is_nested",
    "join_path",
    "map_structure",
    "map_structure_with_paths",
    "pack_sequence_as",
    "structure_repr",
    "to_json",
]


def _entry_name(entry: Any) -> str:
    for attribute in ("field", "key", "name", "index"):
        if hasattr(entry, attribute):
            return str(getattr(entry, attribute))
    return str(entry)


def join_path(*parts: str | int) -> str:
    """Joins non-empty path parts with "/"."""
    return "/".join(str(p) for p in parts if str(p) != "")


def is_nested(value: Any) -> bool:
    """True for dicts, tuples, lists and namedtuples (even empty ones)."""
    return not optree.tree_is_leaf(value, none_is_leaf=True)


def flatten(tree: Any) -> list[Any]:
    """Leaves of ``tree`` in canonical order (dict keys sorted)."""
    return optree.tree_leaves(tree)


def flatten_up_to(structure: Any, tree: Any) -> list[Any]:
    """Leaves of ``tree`` cut at the leaves of ``structure`` (a list may stand for an array).

    Lists and tuples stand for each other, as ``assert_same_structure`` allows (users
    pass a recurrent state back as lists); a namedtuple or dict must match its kind.
    """
    try:
        return optree.tree_structure(structure).flatten_up_to(tree)
    except (ValueError, TypeError):
        out: list[Any] = []
        _flatten_up_to(structure, tree, "", out)
        return out


def _flatten_up_to(structure: Any, tree: Any, path: str, out: list[Any]) -> None:
    if not is_nested(structure) and structure is not None:
        out.append(tree)
        return
    if _is_empty(structure):
        if not _is_empty(tree):
            raise StructureError(path or "value", "an empty nest ()", _short(tree))
        return
    if isinstance(structure, dict):
        if not isinstance(tree, dict) or set(tree) != set(structure):
            raise StructureError(
                path or "value", f"a dict with keys {sorted(structure)}", _short(tree)
            )
        for key in sorted(structure):
            _flatten_up_to(structure[key], tree[key], join_path(path, key), out)
        return
    if _is_namedtuple(structure):
        if not _is_namedtuple(tree) or tree._fields != structure._fields:
            raise StructureError(
                path or "value",
                f"{type(structure).__name__} with fields {structure._fields}",
                _short(tree),
            )
    elif not isinstance(tree, (tuple, list)) or _is_namedtuple(tree):
        raise StructureError(path or "value", f"a sequence of {len(structure)}", _short(tree))
    if len(tree) != len(structure):
        raise StructureError(
            path or "value", f"a sequence of {len(structure)}", f"a sequence of {len(tree)}"
        )
    for index, (s, v) in enumerate(zip(structure, tree, strict=True)):
        name = structure._fields[index] if _is_namedtuple(structure) else index
        _flatten_up_to(s, v, join_path(path, name), out)


def flatten_with_paths(tree: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """``(path, leaf)`` pairs in canonical order; paths use field names for namedtuples."""
    accessors, leaves, _ = optree.tree_flatten_with_accessor(tree)
    return [
        (join_path(prefix, *(_entry_name(e) for e in accessor)), leaf)
        for accessor, leaf in zip(accessors, leaves, strict=True)
    ]


def pack_sequence_as(structure: Any, leaves: Iterable[Any]) -> Any:
    """Builds a nest shaped like ``structure`` from ``leaves`` in canonical order."""
    treespec = optree.tree_structure(structure)
    return optree.tree_unflatten(treespec, list(leaves))


def structure_repr(tree: Any) -> str:
    """A short text of a nest's structure, for error messages."""
    return repr(optree.tree_structure(tree)).removeprefix("PyTreeSpec(").removesuffix(")")


def assert_same_structure(value: Any, spec: Any, path: str = "") -> None:
    """Raises StructureError naming the first path where ``value`` and ``spec`` differ."""
    _assert_same_structure(value, spec, path)


def _assert_same_structure(value: Any, spec: Any, path: str) -> None:
    spec_is_leaf = not is_nested(spec) and spec is not None
    if spec_is_leaf:
        # Lists and plain tuples of numbers are array-likes; mappings never are.
        if isinstance(value, dict) or _is_namedtuple(value):
            raise StructureError(path or "value", "a single array", structure_repr(value))
        return
    if _is_empty(spec):
        if not _is_empty(value):
            raise StructureError(path or "value", "an empty nest ()", _short(value))
        return
    if isinstance(spec, dict):
        if not isinstance(value, dict):
            raise StructureError(path or "value", f"a dict with keys {sorted(spec)}", _short(value))
        if set(value) != set(spec):
            missing = sorted(set(spec) - set(value), key=str)
            extra = sorted(set(value) - set(spec), key=str)
            got = []
            if missing:
                got.append(f"missing {missing}")
            if extra:
                got.append(f"unexpected {extra}")
            raise StructureError(path or "value", f"keys {sorted(spec)}", ", ".join(got))
        for key in spec:
            _assert_same_structure(value[key], spec[key], join_path(path, key))
        return
    if _is_namedtuple(spec):
        fields = spec._fields
        if not _is_namedtuple(value) or value._fields != fields:
            raise StructureError(
                path or "value", f"{type(spec).__name__} with fields {fields}", _short(value)
            )
        for field in fields:
            _assert_same_structure(
                getattr(value, field), getattr(spec, field), join_path(path, field)
            )
        return
    # tuples and lists: either kind matches the other, as users mix them freely.
    if not isinstance(value, (tuple, list)) or _is_namedtuple(value):
        raise StructureError(path or "value", f"a sequence of {len(spec)}", _short(value))
    if len(value) != len(spec):
        raise StructureError(
            path or "value", f"a sequence of {len(spec)}", f"a sequence of {len(value)}"
        )
    for index, (v, s) in enumerate(zip(value, spec, strict=True)):
        _assert_same_structure(v, s, join_path(path, index))


def map_structure(fn: Callable[..., Any], tree: Any, *rest: Any) -> Any:
    """Applies ``fn`` to corresponding leaves; the first tree gives the structure."""
    return optree.tree_map(fn, tree, *rest)


def map_structure_with_paths(
    fn: Callable[..., Any], tree: Any, *rest: Any, prefix: str = ""
) -> Any:
    """Like map_structure, with the leaf's path as the first argument of ``fn``."""
    paths = [p for p, _ in flatten_with_paths(tree, prefix)]
    rest_leaves = [optree.tree_structure(tree).flatten_up_to(r) for r in rest]
    results = [
        fn(path, leaf, *(r[i] for r in rest_leaves))
        for i, (path, leaf) in enumerate(zip(paths, flatten(tree), strict=True))
    ]
    return pack_sequence_as(tree, results)


def _is_namedtuple(value: Any) -> bool:
    return isinstance(value, tuple) and hasattr(value, "_fields")


def _is_empty(value: Any) -> bool:
    return value is None or (is_nested(value) and len(flatten(value)) == 0)


def _short(value: Any) -> str:
    if is_nested(value):
        return structure_repr(value)
    shape = getattr(value, "shape", None)
    return f"a {type(value).__name__}" + (f" of shape {tuple(shape)}" if shape is not None else "")


# --- JSON -------------------------------------------------------------------------------

_KNOWN_NAMEDTUPLES: dict[str, type] = {}


def register_namedtuple(cls: type) -> type:
    """Lets from_json rebuild this namedtuple type by name (no code is loaded)."""
    _KNOWN_NAMEDTUPLES[cls.__name__] = cls
    return cls


def to_json(tree: Any, encode_leaf: Callable[[Any], dict[str, Any]]) -> Any:
    """A JSON-able form of a nest: dicts, tuples, lists and namedtuples are kept.

    Containers become ``{"kind": "dict"|"tuple"|"list"|"namedtuple", ...}`` and
    ``None`` ``{"kind": "none"}``; ``encode_leaf`` encodes each leaf as a dict whose
    "kind" names the leaf type.
    """
    if tree is None:
        return {"kind": "none"}
    if isinstance(tree, dict):
        for key in tree:
            if not isinstance(key, str):
                raise SpecError(f"dict keys must be strings for JSON, got {key!r}")
        return {
            "kind": "dict",
            "items": {k: to_json(v, encode_leaf) for k, v in sorted(tree.items())},
        }
    if _is_namedtuple(tree):
        return {
            "kind": "namedtuple",
            "type": type(tree).__name__,
            # Lists, not a dict: field order must survive JSON writers that sort keys.
            "fields": list(tree._fields),
            "items": [to_json(getattr(tree, f), encode_leaf) for f in tree._fields],
        }
    if isinstance(tree, (tuple, list)):
        return {
            "kind": "tuple" if isinstance(tree, tuple) else "list",
            "items": [to_json(v, encode_leaf) for v in tree],
        }
    return encode_leaf(tree)


def from_json(data: Any, decode_leaf: Callable[[dict[str, Any]], Any]) -> Any:
    """Inverse of to_json. Unknown namedtuple types become plain namedtuples."""
    if not isinstance(data, dict) or "kind" not in data:
        raise SpecError(f"expected a dict with a 'kind', got {data!r:.80}")
    kind = data["kind"]
    try:
        if kind == "none":
            return None
        if kind == "dict":
            return {str(k): from_json(v, decode_leaf) for k, v in data["items"].items()}
        if kind in ("tuple", "list"):
            items = [from_json(v, decode_leaf) for v in data["items"]]
            return tuple(items) if kind == "tuple" else items
        if kind == "namedtuple":
            fields = [str(f) for f in data["fields"]]
            items = data["items"]
            if len(fields) != len(items) or not all(f.isidentifier() for f in fields):
                raise SpecError(f"malformed namedtuple entry: fields {fields!r}")
            type_name = str(data["type"])
            cls = _KNOWN_NAMEDTUPLES.get(type_name)
            if cls is None or tuple(cls._fields) != tuple(fields):
                cls = collections.namedtuple(
                    type_name if type_name.isidentifier() else "Nest", fields
                )
            return cls(*(from_json(v, decode_leaf) for v in items))
    except (KeyError, TypeError, AttributeError) as e:
        raise SpecError(f"malformed {kind} entry: {e}") from e
    return decode_leaf(data)
