"""toolkit.nest walks dicts, tuples, lists, namedtuples and None itself: exactly as optree.

Random nests of those types (dict keys inserted in shuffled order, empty containers,
None, namedtuple classes of several makings) must give optree's leaves, paths, maps,
rebuilt nests and cuts; node types the module hands to optree must give optree's
answers too.
"""

from __future__ import annotations

import collections
import os
import random
import time
from typing import Any, NamedTuple

import numpy as np
import optree
import pytest

from toolkit import nest
from toolkit.errors import StructureError
from toolkit.specs import array_spec
from toolkit.trajectories.policy_step import PolicyStep
from toolkit.trajectories.time_step import TimeStep

Pair = collections.namedtuple("Pair", ["first", "second"])


class Triple(NamedTuple):
    a: Any
    b: Any
    c: Any = None


class Empty(NamedTuple):
    pass


def _random_nest(rng: random.Random, depth: int, counter: list[int]) -> Any:
    if depth == 0 or rng.random() < 0.3:
        counter[0] += 1
        return counter[0]  # leaves are distinct ints: reprs tell any reordering
    choice = rng.randrange(9)
    size = rng.randrange(4)
    children = [_random_nest(rng, depth - 1, counter) for _ in range(size)]
    if choice == 0:
        return tuple(children)
    if choice == 1:
        return list(children)
    if choice == 2:
        keys = rng.sample(["b", "a", "zeta", "", "A", "obs/x", "10", "9"], size)
        return dict(zip(keys, children, strict=True))  # insertion order is not sorted
    if choice == 3:
        return Pair(*[_random_nest(rng, depth - 1, counter) for _ in range(2)])
    if choice == 4:
        return Triple(*[_random_nest(rng, depth - 1, counter) for _ in range(3)])
    if choice == 5:
        return TimeStep(*[_random_nest(rng, depth - 1, counter) for _ in range(4)])
    if choice == 6:
        return None
    if choice == 7:
        return PolicyStep(_random_nest(rng, depth - 1, counter))
    return rng.choice([(), [], {}, Empty()])


def _nests(count: int = 300) -> list[Any]:
    rng = random.Random(0)
    return [_random_nest(rng, 4, [0]) for _ in range(count)]


def _optree_paths(tree: Any, prefix: str = "") -> list[tuple[str, Any]]:
    accessors, leaves, _ = optree.tree_flatten_with_accessor(tree)
    return [
        (nest.join_path(prefix, *(nest._entry_name(e) for e in accessor)), leaf)
        for accessor, leaf in zip(accessors, leaves, strict=True)
    ]


def test_walks_like_optree_on_random_nests():
    for tree in _nests():
        assert nest.flatten(tree) == optree.tree_leaves(tree), tree
        assert nest.flatten_with_paths(tree, "p") == _optree_paths(tree, "p"), tree
        assert nest.flatten_with_paths(tree) == _optree_paths(tree), tree
        assert nest.is_nested(tree) == (not optree.tree_is_leaf(tree, none_is_leaf=True))

        seen: list[Any] = []
        mapped = nest.map_structure(lambda x, seen=seen: seen.append(x) or x * 10, tree)
        expected = optree.tree_map(lambda x: x * 10, tree)
        assert repr(mapped) == repr(expected), tree  # types, dict key order, values
        assert seen == optree.tree_leaves(tree)  # fn sees leaves in canonical order

        with_paths = nest.map_structure_with_paths(lambda p, x: (p, x), tree, prefix="q")
        assert nest.flatten(with_paths) == [v for pair in _optree_paths(tree, "q") for v in pair]

        leaves = [f"leaf{i}" for i in range(len(optree.tree_leaves(tree)))]
        rebuilt = nest.pack_sequence_as(tree, leaves)
        assert repr(rebuilt) == repr(optree.tree_unflatten(optree.tree_structure(tree), leaves))
        if nest.is_nested(tree) or tree is None:
            assert type(rebuilt) is type(tree)


def test_cuts_like_optree_where_optree_cuts():
    rng = random.Random(1)
    for tree in _nests(200):
        structure = optree.tree_structure(tree)
        # A cut at a random depth: replace some subtrees of the tree by leaves.
        cut = optree.tree_map(lambda x: x if rng.random() < 0.5 else [x, (x,)], tree)
        assert nest.flatten_up_to(tree, cut) == structure.flatten_up_to(cut)


def test_namedtuple_test_is_optrees():
    class Fields(tuple):
        _fields = ("a",)  # no _make or _asdict: a leaf for optree

    class Sub(Triple):
        pass

    for value in (Fields((1,)), Sub(1, 2, 3), Triple(1, [2], {"x": 3})):
        assert nest.flatten(value) == optree.tree_leaves(value)
        assert nest.is_nested(value) == (not optree.tree_is_leaf(value, none_is_leaf=True))


@pytest.mark.parametrize(
    "tree",
    [
        collections.OrderedDict([("b", 1), ("a", (2, 3))]),
        collections.defaultdict(list, {"b": 1, "a": 2}),
        collections.deque([1, (2, 3)]),
        {"x": collections.deque([1, 2]), "a": 3},
        time.gmtime(0),  # a structseq
        os.stat_result(range(10)),
        {1: "one", "b": "bee", 0.5: "half"},  # keys that do not sort: optree orders them
        type("Listy", (list,), {})([1, 2]),  # a list subclass: a leaf for optree
        type("Tupley", (tuple,), {})((1, 2)),
    ],
    ids=lambda t: type(t).__name__,
)
def test_hands_other_nodes_to_optree(tree):
    assert nest.flatten(tree) == optree.tree_leaves(tree)
    assert nest.flatten_with_paths(tree, "p") == _optree_paths(tree, "p")
    assert nest.is_nested(tree) == (not optree.tree_is_leaf(tree, none_is_leaf=True))
    calls: list[Any] = []
    mapped = nest.map_structure(lambda x: calls.append(x) or ("m", x), tree)
    assert repr(mapped) == repr(optree.tree_map(lambda x: ("m", x), tree))
    assert calls == optree.tree_leaves(tree)  # each leaf once: no second pass
    leaves = list(range(len(calls)))
    assert repr(nest.pack_sequence_as(tree, leaves)) == repr(
        optree.tree_unflatten(optree.tree_structure(tree), leaves)
    )


def test_leaves_and_specs_are_leaves():
    spec = array_spec.BoundedArraySpec((2,), np.float32, -1.0, 1.0, name="x")
    array = np.zeros(3)
    for leaf in (spec, array, np.float32(1.0), "text", b"bytes", 3, 2.5, object()):
        assert nest.flatten(leaf) == [leaf]
        assert nest.flatten_with_paths(leaf, "x") == [("x", leaf)]
        assert not nest.is_nested(leaf)
        assert nest.pack_sequence_as(leaf, ["new"]) == "new"
    assert nest.flatten(None) == [] and not nest.is_nested(None)
    assert nest.pack_sequence_as(None, []) is None


def test_pack_sequence_as_refuses_a_wrong_count():
    with pytest.raises(ValueError, match="expected 3 leaves .* got 2"):
        nest.pack_sequence_as({"a": (1, 2), "b": 3}, [1, 2])
    with pytest.raises(ValueError, match="expected 1 leaves .* got 2"):
        nest.pack_sequence_as([0], [1, 2])
    with pytest.raises(ValueError, match="expected 0 leaves .* got 1"):
        nest.pack_sequence_as((), [1])
    assert nest.pack_sequence_as([7], [None]) == [None]  # a None leaf is a leaf


def test_map_structure_with_other_trees_is_optrees():
    assert nest.map_structure(lambda a, b: a + b, {"b": 1, "a": 2}, {"a": 3, "b": 4}) == {
        "b": 5,
        "a": 5,
    }
    with pytest.raises(ValueError):
        nest.map_structure(lambda a, b: a + b, (1, 2), [3, 4])


def test_flatten_up_to_lets_lists_stand_for_tuples_and_names_mismatches():
    state = ((np.zeros(2), np.ones(2)),)
    as_lists = [[state[0][0], state[0][1]]]
    cut = nest.flatten_up_to(state, as_lists)
    assert len(cut) == 2 and cut[0] is state[0][0] and cut[1] is state[0][1]
    with pytest.raises(StructureError, match="0: expected a sequence of 2, got a sequence of 3"):
        nest.flatten_up_to(state, [[1, 2, 3]])
    assert nest.flatten_up_to(collections.deque([1, 2]), collections.deque([3, 4])) == [3, 4]


def test_tree_spec_is_optrees():
    spec = nest.tree_spec(TimeStep(1, 2, 3, {"b": 4, "a": 5}))
    assert spec == optree.tree_structure(TimeStep(1, 2, 3, {"b": 4, "a": 5}))
    assert spec.unflatten([1, 2, 3, 4, 5]).observation == {"b": 5, "a": 4}
