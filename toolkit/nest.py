"""Nest helpers with the conventions of this project (optree's semantics).

Nests are dicts (keys sorted, as tf.nest does), tuples, lists and namedtuples.
``None`` and ``()`` are empty nests. Paths join keys, field names and indices
with "/": ``observation/velocity``, ``policy_state/0``.

The nests policies pass around are small (a TimeStep of four arrays, a state of two
arrays), and walking them in Python is faster than calling optree (measured: flatten of
a TimeStep 1.4 us against 2.5 us, of one array 0.2 against 0.8 us) and needs no import:
optree and what it imports cost about 16 ms, a tenth of a LiteRT runtime's cold start.
So this module walks dicts with sortable keys, tuples, lists, namedtuples and ``None``
itself, exactly as optree does (``tests/toolkit/test_nest.py`` compares the two), and
hands anything else that optree treats as a node (OrderedDict, defaultdict, deque,
structseq, dicts whose keys do not sort) to optree, imported then. TensorFlow's tracking
containers, which ``tf.Module`` puts around the lists, dicts and tuples assigned to its
attributes (``ListWrapper``, a list subclass; ``_DictWrapper`` and ``_TupleWrapper``,
proxies), are the containers they hold, as in ``tf.nest``; rebuilt, they are plain lists,
dicts and tuples. Other objects are leaves, as in optree without custom registrations
(this project registers none).
``tree_spec`` gives optree's compiled structure, for hot paths that flatten and rebuild
one structure on every call.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from toolkit.errors import OptreeHandoff, SpecError, StructureError

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
    "tree_spec",
]


def _optree() -> Any:
    """optree, imported on first need (see the module docstring)."""
    import optree

    return optree


# --- node kinds -------------------------------------------------------------------------

_LEAF, _NONE, _SEQUENCE, _NAMEDTUPLE, _DICT, _PROXY = range(6)


#: type -> kind, for types met so far (bounded: namedtuple types are made at run time).
_KINDS: dict[type, int] = {type(None): _NONE, tuple: _SEQUENCE, list: _SEQUENCE, dict: _DICT}
_BUILTIN_KINDS = dict(_KINDS)
_MAX_KINDS = 4096
#: Types that optree may treat as nodes when they are not exactly tuple, list or dict:
#: its registered OrderedDict, defaultdict and deque, and structseqs (tuple subclasses).
_OPTREE_CONTAINERS = (tuple, list, dict, collections.deque)


def _is_namedtuple_class(cls: type) -> bool:
    """optree's test (include/optree/pytypes.h): a tuple subclass with ``_fields``, a tuple
    of str, and callable ``_make`` and ``_asdict``."""
    fields = getattr(cls, "_fields", None)
    return (
        type(fields) is tuple
        and all(type(f) is str for f in fields)
        and callable(getattr(cls, "_make", None))
        and callable(getattr(cls, "_asdict", None))
    )


def _is_tracking_proxy(cls: type) -> bool:
    """TensorFlow's tracking proxies (``_DictWrapper``, ``_TupleWrapper``): wrapt proxies of
    the container they track."""
    return cls.__module__.startswith("tensorflow.") and hasattr(cls, "__wrapped__")


def _kind_of(cls: type) -> int:
    if issubclass(cls, tuple) and _is_namedtuple_class(cls):
        kind = _NAMEDTUPLE
    elif _is_tracking_proxy(cls):
        kind = _PROXY
    elif issubclass(cls, list) and cls.__module__.startswith("tensorflow."):
        kind = _SEQUENCE  # ListWrapper
    elif issubclass(cls, _OPTREE_CONTAINERS):
        raise OptreeHandoff  # not cached: rare, and optree decides
    else:
        kind = _LEAF
    if len(_KINDS) >= _MAX_KINDS:
        _KINDS.clear()
        _KINDS.update(_BUILTIN_KINDS)
    _KINDS[cls] = kind
    return kind


def _sorted_keys(tree: dict) -> list[Any]:
    # optree sorts keys; keys that do not compare (int and str) it orders its own way.
    try:
        return sorted(tree)
    except TypeError:
        raise OptreeHandoff from None


def _leaves(tree: Any, out: list[Any]) -> None:
    kind = _KINDS.get(type(tree))
    if kind is None:
        kind = _kind_of(type(tree))
    if kind == _LEAF:
        out.append(tree)
    elif kind in (_SEQUENCE, _NAMEDTUPLE):
        for child in tree:
            _leaves(child, out)
    elif kind == _DICT:
        for key in _sorted_keys(tree):
            _leaves(tree[key], out)
    elif kind == _PROXY:
        _leaves(tree.__wrapped__, out)


def _leaves_with_paths(tree: Any, path: str, out: list[tuple[str, Any]]) -> None:
    kind = _KINDS.get(type(tree))
    if kind is None:
        kind = _kind_of(type(tree))
    if kind == _LEAF:
        out.append((path, tree))
    elif kind == _SEQUENCE:
        for index, child in enumerate(tree):
            _leaves_with_paths(child, _join2(path, str(index)), out)
    elif kind == _NAMEDTUPLE:
        for field, child in zip(type(tree)._fields, tree, strict=True):
            _leaves_with_paths(child, _join2(path, field), out)
    elif kind == _DICT:
        for key in _sorted_keys(tree):
            _leaves_with_paths(tree[key], _join2(path, str(key)), out)
    elif kind == _PROXY:
        _leaves_with_paths(tree.__wrapped__, path, out)


def _join2(path: str, part: str) -> str:
    if not part:
        return path
    return f"{path}/{part}" if path else part


def _rebuild(structure: Any, leaves: Iterator[Any]) -> Any:
    """``structure`` with its leaves taken from ``leaves`` in canonical order; dicts keep
    their own key order, as optree rebuilds them."""
    kind = _KINDS.get(type(structure))
    if kind is None:
        kind = _kind_of(type(structure))
    if kind == _LEAF:
        return next(leaves)
    if kind == _SEQUENCE:
        children = [_rebuild(child, leaves) for child in structure]
        return children if isinstance(structure, list) else tuple(children)
    if kind == _NAMEDTUPLE:
        return type(structure)(*[_rebuild(child, leaves) for child in structure])
    if kind == _DICT:
        built = {key: _rebuild(structure[key], leaves) for key in _sorted_keys(structure)}
        return {key: built[key] for key in structure}
    if kind == _PROXY:
        return _rebuild(structure.__wrapped__, leaves)
    return None


_END = object()


# --- the public helpers -----------------------------------------------------------------


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
    kind = _KINDS.get(type(value))
    if kind is None:
        try:
            kind = _kind_of(type(value))
        except OptreeHandoff:
            return not _optree().tree_is_leaf(value, none_is_leaf=True)
    if kind == _PROXY:
        return is_nested(value.__wrapped__)
    return kind > _NONE


def flatten(tree: Any) -> list[Any]:
    """Leaves of ``tree`` in canonical order (dict keys sorted)."""
    out: list[Any] = []
    try:
        _leaves(tree, out)
    except OptreeHandoff:
        return _optree().tree_leaves(tree)
    return out


def flatten_up_to(structure: Any, tree: Any) -> list[Any]:
    """Leaves of ``tree`` cut at the leaves of ``structure`` (a list may stand for an array).

    Lists and tuples stand for each other, as ``assert_same_structure`` allows (users
    pass a recurrent state back as lists); a namedtuple or dict must match its kind.
    """
    out: list[Any] = []
    try:
        _flatten_up_to(structure, tree, "", out)
    except (ValueError, TypeError) as error:
        # Where optree's strict cut works, this one gives the same leaves, except for
        # node types it does not walk (a deque): optree then decides.
        try:
            return _optree().tree_structure(structure).flatten_up_to(tree)
        except (ValueError, TypeError):
            raise error from None
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
    out: list[tuple[str, Any]] = []
    try:
        _leaves_with_paths(tree, str(prefix), out)
    except OptreeHandoff:
        pass
    else:
        return out
    accessors, leaves, _ = _optree().tree_flatten_with_accessor(tree)
    return [
        (join_path(prefix, *(_entry_name(e) for e in accessor)), leaf)
        for accessor, leaf in zip(accessors, leaves, strict=True)
    ]


def pack_sequence_as(structure: Any, leaves: Iterable[Any]) -> Any:
    """Builds a nest shaped like ``structure`` from ``leaves`` in canonical order."""
    leaves = list(leaves)
    remaining = iter(leaves)
    try:
        tree = _rebuild(structure, remaining)
    except OptreeHandoff:
        optree = _optree()
        return optree.tree_unflatten(optree.tree_structure(structure), leaves)
    except StopIteration:  # too few leaves
        tree = _END
    if tree is _END or next(remaining, _END) is not _END:
        raise ValueError(
            f"expected {len(flatten(structure))} leaves for {structure_repr(structure)}, "
            f"got {len(leaves)}"
        )
    return tree


def tree_spec(structure: Any) -> Any:
    """optree's compiled structure of ``structure`` (a ``PyTreeSpec``), for hot paths
    that cut (``flatten_up_to``) and rebuild (``unflatten``) one structure many times."""
    return _optree().tree_structure(structure)


def structure_repr(tree: Any) -> str:
    """A short text of a nest's structure, for error messages."""
    return repr(_optree().tree_structure(tree)).removeprefix("PyTreeSpec(").removesuffix(")")


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
    """Applies ``fn`` to corresponding leaves; the first tree gives the structure.

    ``fn`` sees the leaves in canonical order (dict keys sorted). With ``rest``, each
    other tree must have the first one's structure (optree's ``tree_map``).
    """
    if not rest:
        leaves: list[Any] = []
        try:
            _leaves(tree, leaves)  # first: fn must not run twice if optree takes over
            return _rebuild(tree, iter([fn(leaf) for leaf in leaves]))
        except OptreeHandoff:
            pass
    try:
        return _optree().tree_map(fn, tree, *rest)
    except (ValueError, TypeError):
        # TensorFlow's tracking containers (a spec nest kept on a tf.Module) are the
        # containers they hold: compare the plain nests.
        plain = [_plain(t) for t in (tree, *rest)]
        if all(p is t for p, t in zip(plain, (tree, *rest), strict=True)):
            raise
        return _optree().tree_map(fn, *plain)


def _plain(tree: Any) -> Any:
    """``tree`` with TensorFlow's tracking containers replaced by plain ones (``tree``
    itself when it holds none)."""
    leaves: list[Any] = []
    try:
        _leaves(tree, leaves)
        rebuilt = _rebuild(tree, iter(leaves))
    except OptreeHandoff:
        return tree
    return tree if _same_nodes(tree, rebuilt) else rebuilt


def _same_nodes(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, (tuple, list)):
        return all(_same_nodes(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return all(_same_nodes(a[k], b[k]) for k in a)
    return True


def map_structure_with_paths(
    fn: Callable[..., Any], tree: Any, *rest: Any, prefix: str = ""
) -> Any:
    """Like map_structure, with the leaf's path as the first argument of ``fn``."""
    if not rest:
        pairs: list[tuple[str, Any]] = []
        try:
            _leaves_with_paths(tree, str(prefix), pairs)
            return _rebuild(tree, iter([fn(path, leaf) for path, leaf in pairs]))
        except OptreeHandoff:
            pass
    paths = [p for p, _ in flatten_with_paths(tree, prefix)]
    rest_leaves = [_optree().tree_structure(tree).flatten_up_to(r) for r in rest]
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
