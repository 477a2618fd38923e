"""Reading TF-Agents' saved graphs: constants, exploration wrappers, and inlined calls.

TF-Agents' collect policies sample inside the saved ``action`` (their ``distribution``
only raises), and exported graphs must hold no random ops. This module finds, in the
saved ``action`` graph, the deterministic action the exploration wraps (the *core*)
and the exploration's parameters, so the import can rebuild the collect policy as this
project's derivations over the core:

* ``EpsilonGreedyPolicy``: ``Select(uniform >= epsilon, greedy, random)``: epsilon is a
  constant of the graph; a masked random branch (``MaskedCategorical`` over the
  ``observation_and_action_constraint_splitter``'s mask) selects its logits with a
  condition read from one observation leaf, the mask;
* ``GaussianPolicy``: ``core + (N(0, 1) * scale + loc)``, ``scale``/``loc`` constants
  (TF-Agents makes them outside the traced function: captured constants);
* ``OUNoisePolicy``: ``core + x`` where ``x`` is a variable assigned
  ``(1 - damping) * x + stddev * N(0, 1)``.

``analyze_action`` returns an ``Exploration`` (kind, parameters, core tensor name) or
raises UnsupportedError naming what was found. ``inline_call`` runs a saved concrete
function (or the part of it that computes some tensors) inside the current trace with
its captured constants folded in as constants, so no stray graph inputs are left (a
restored function called as a function passes its captured constants as inputs).

``folded_reads`` finds the variables whose values the ONNX conversion would fold into
computed constants (PPO's observation normaliser: ``rsqrt(m2 / count + eps)``), and
``inline_call`` reads them through ``unfoldable``, so the ONNX graph keeps the variables
as its initializers and computes from them: the weights map then covers them, and the
bundle takes later checkpoints of the normaliser like any other weight.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import numpy as np
import tensorflow as tf

from toolkit.errors import UnsupportedError

__all__ = [
    "Exploration",
    "SavedGraph",
    "action_is_clipped",
    "analyze_action",
    "captured_constants",
    "folded_reads",
    "inline_call",
    "unfoldable",
]

EPSILON_GREEDY = "epsilon_greedy"
GAUSSIAN = "gaussian"
OU = "ou"

_RANDOM_WORDS = ("Random", "Multinomial", "TruncatedNormal", "Rng")
_NORMAL_OPS = ("RandomStandardNormal", "StatelessRandomNormal", "StatelessRandomNormalV2")
_PASS_THROUGH = ("Identity", "Reshape", "Squeeze", "ExpandDims", "Cast")
_ADD_OPS = ("Add", "AddV2")
# Ops that fold a variable into a constant the weights map still describes: the variable
# itself, cast, reshaped or transposed (exporters.probe), or no value of it at all.
_MAPPABLE = (*_PASS_THROUGH, "Transpose", "ReadVariableOp", "Const", "Shape", "Size", "Rank")


def _node_name(tensor_name: str) -> str:
    return tensor_name.lstrip("^").split(":")[0]


def _tensor_name(name: str) -> str:
    """``node:k`` for a graph input reference (``node`` means output 0)."""
    return name if ":" in name else f"{name}:0"


@dataclasses.dataclass(frozen=True)
class Exploration:
    """What a saved collect policy adds to its deterministic core.

    Attributes:
      kind: ``epsilon_greedy``, ``gaussian`` or ``ou``.
      params: ``{"epsilon": float}``, ``{"scale": array}`` or ``{"stddev": array,
        "damping": float}``; None when the graph computes them (e.g. an epsilon
        schedule) instead of holding constants.
      core: the graph tensor name of the deterministic action (before the exploration).
      found: a description of the pattern found, for messages.
      mask: for epsilon-greedy, the index among the saved function's arguments of the
        action mask its random branch draws within (TF-Agents' RandomTFPolicy under an
        observation_and_action_constraint_splitter), or None.
    """

    kind: str
    params: dict[str, Any] | None
    core: str
    found: str
    mask: int | None = None


class SavedGraph:
    """The nodes of a restored concrete function, with its captured values."""

    def __init__(self, concrete: Any):
        self.concrete = concrete
        self.graph_def = concrete.graph.as_graph_def()
        self.nodes = {n.name: n for n in self.graph_def.node}
        captured = list(concrete.captured_inputs)
        inputs = list(concrete.inputs)
        self.arg_names = [_node_name(t.name) for t in inputs[: len(inputs) - len(captured)]]
        self.captures = {
            _node_name(t.name): value
            for t, value in zip(inputs[len(inputs) - len(captured) :], captured, strict=True)
        }

    def data_inputs(self, name: str) -> list[str]:
        return [i for i in self.nodes[name].input if not i.startswith("^")]

    def _closure(self, seeds: Iterable[str], control: bool) -> set[str]:
        """Nodes depending on ``seeds`` (through data edges, and control edges if asked)."""
        consumers: dict[str, list[str]] = {}
        for node in self.graph_def.node:
            for i in node.input:
                if control or not i.startswith("^"):
                    consumers.setdefault(_node_name(i), []).append(node.name)
        out, todo = set(), list(seeds)
        while todo:
            name = todo.pop()
            if name in out:
                continue
            out.add(name)
            todo.extend(consumers.get(name, ()))
        return out

    def random_nodes(self) -> list[str]:
        return [n.name for n in self.graph_def.node if any(w in n.op for w in _RANDOM_WORDS)]

    def constant(self, tensor_name: str) -> np.ndarray | None:
        """The value of a constant tensor (a Const, a captured constant, through Identity)."""
        name = _node_name(tensor_name)
        node = self.nodes.get(name)
        while node is not None and node.op == "Identity":
            name = _node_name(self.data_inputs(name)[0])
            node = self.nodes.get(name)
        if node is None:
            return None
        if node.op == "Const":
            return tf.make_ndarray(node.attr["value"].tensor)
        value = self.captures.get(name)
        if value is not None and value.dtype != tf.resource:
            return np.asarray(value)
        return None

    def describe(self, tensor_name: str) -> str:
        node = self.nodes.get(_node_name(tensor_name))
        return f"{node.op} {node.name!r}" if node is not None else repr(tensor_name)


def action_is_clipped(concrete: Any) -> bool:
    """Whether every float action leaf of a saved ``action`` ends in ``clip_by_value``.

    TF-Agents' policies clip to the spec by default; PPO's collect policy does not
    (its log-probabilities are of unclipped actions).
    """
    # The action's leaves come first among the flat outputs (PolicyStep order).
    count = len(tf.nest.flatten(concrete.structured_outputs[0], expand_composites=True))
    clipped = []
    for tensor in concrete.outputs[:count]:
        if not tensor.dtype.is_floating:
            continue
        op = tensor.op
        while op.type == "Identity":
            op = op.inputs[0].op
        # clip_by_value(t, low, high) is Maximum(Minimum(t, high), low).
        clipped.append(op.type == "Maximum" and op.inputs[0].op.type == "Minimum")
    return all(clipped)


def captured_constants(concrete: Any) -> list[str]:
    """The names of a concrete function's captured inputs that are not resources."""
    captured = list(concrete.captured_inputs)
    inputs = list(concrete.inputs)[len(concrete.inputs) - len(captured) :]
    return [
        _node_name(t.name)
        for t, value in zip(inputs, captured, strict=True)
        if value.dtype != tf.resource
    ]


def _affine_from_normal(graph: SavedGraph, tensor: str) -> tuple[np.ndarray, np.ndarray]:
    """``(a, b)`` with ``tensor = a * N(0, 1) + b``, walking back to a normal sampler."""
    name = _node_name(tensor)
    node = graph.nodes[name]
    if node.op in _NORMAL_OPS:
        return np.float64(1.0), np.float64(0.0)
    inputs = graph.data_inputs(name)
    if node.op in _PASS_THROUGH:
        return _affine_from_normal(graph, inputs[0])
    if node.op in (*_ADD_OPS, "Mul", "Sub") and len(inputs) == 2:
        values = [graph.constant(i) for i in inputs]
        if sum(v is not None for v in values) == 1:
            k = 0 if values[0] is not None else 1
            const = values[k].astype(np.float64)
            a, b = _affine_from_normal(graph, inputs[1 - k])
            if node.op == "Mul":
                return a * const, b * const
            if node.op == "Sub":
                return (a, b - const) if k == 1 else (-a, const - b)
            return a, b + const
    raise UnsupportedError(
        f"expected noise made of a normal sample scaled and shifted by constants, got "
        f"{graph.describe(name)}"
    )


def _ou_noise(graph: SavedGraph, noise: str) -> dict[str, Any] | None:
    """OU parameters when ``noise`` reads a variable assigned ``c * x + normal noise``."""
    name = _node_name(noise)
    node = graph.nodes[name]
    while node.op in _PASS_THROUGH:
        name = _node_name(graph.data_inputs(name)[0])
        node = graph.nodes[name]
    if node.op != "ReadVariableOp":
        return None
    resource = _node_name(node.input[0])
    assigns = [
        n
        for n in graph.graph_def.node
        if n.op == "AssignVariableOp" and _node_name(n.input[0]) == resource
    ]
    if len(assigns) != 1:
        return None
    value = _node_name(assigns[0].input[1])
    if graph.nodes[value].op not in _ADD_OPS:
        return None
    damped, fresh = None, None
    for operand in graph.data_inputs(value):
        op = graph.nodes[_node_name(operand)]
        reads = [
            _node_name(i)
            for i in graph.data_inputs(op.name)
            if graph.nodes[_node_name(i)].op == "ReadVariableOp"
        ]
        if op.op == "Mul" and reads and _node_name(graph.nodes[reads[0]].input[0]) == resource:
            others = [i for i in graph.data_inputs(op.name) if _node_name(i) != reads[0]]
            damped = graph.constant(others[0]) if others else None
        else:
            fresh = operand
    if damped is None or fresh is None:
        return None
    stddev, mean = _affine_from_normal(graph, fresh)
    if np.any(mean != 0):
        raise UnsupportedError(f"OU noise: expected zero-mean noise, got mean {mean}")
    damping = float(np.float32(1.0 - np.float32(damped)))
    return {"stddev": np.asarray(stddev, np.float32), "damping": damping}


def analyze_action(concrete: Any, time_step_inputs: int = 4) -> Exploration:
    """The exploration of a saved ``action`` that samples, and its deterministic core.

    Args:
      concrete: the restored ``action`` concrete function.
      time_step_inputs: how many leading inputs are the time step (their dependents
        form the computation of the action).

    Raises:
      UnsupportedError: no known exploration pattern (the message names what was found).
    """
    graph = SavedGraph(concrete)
    randoms = graph.random_nodes()
    if not randoms:
        raise UnsupportedError("the saved action holds no random op")
    dirty = graph._closure(randoms, control=True)
    clean = graph._closure(graph.arg_names[:time_step_inputs], control=False) - dirty
    outputs = [_node_name(t.name) for t in concrete.outputs]
    if len(outputs) != 1:
        raise UnsupportedError(
            f"expected a single action tensor among the saved action's outputs, got "
            f"{len(outputs)} outputs (a nest of actions or info)"
        )
    name = outputs[0]
    for _ in range(len(graph.nodes)):
        node = graph.nodes[name]
        inputs = graph.data_inputs(name)
        core = [i for i in inputs if _node_name(i) in clean]
        noisy = [i for i in inputs if _node_name(i) in dirty]
        if node.op in ("Select", "SelectV2") and len(core) == 1:
            return _epsilon_greedy(graph, node, core[0])
        if node.op in _ADD_OPS and len(core) == 1 and len(noisy) == 1:
            ou = _ou_noise(graph, noisy[0])
            if ou is not None:
                return Exploration(OU, ou, core[0], f"OU noise ({graph.describe(noisy[0])})")
            scale, loc = _affine_from_normal(graph, noisy[0])
            if np.any(loc != 0):
                raise UnsupportedError(f"Gaussian noise: expected zero mean, got {loc}")
            return Exploration(
                GAUSSIAN,
                {"scale": np.asarray(scale, np.float32)},
                core[0],
                f"Gaussian noise ({graph.describe(noisy[0])})",
            )
        if len(noisy) != 1:
            break
        name = _node_name(noisy[0])
    raise UnsupportedError(
        f"expected epsilon-greedy, Gaussian or OU exploration around a deterministic action, "
        f"got random ops {sorted({graph.nodes[r].op for r in randoms})} reaching the action "
        f"through {graph.describe(name)}"
    )


def _through(graph: SavedGraph, tensor: str) -> str:
    """The node behind ``tensor``'s casts, identities and reshapes."""
    name = _node_name(tensor)
    while graph.nodes[name].op in _PASS_THROUGH:
        name = _node_name(graph.data_inputs(name)[0])
    return name


def _random_mask(graph: SavedGraph, random: str, core: str) -> int | None:
    """The argument a random branch's action mask is (None when it has none).

    TF-Agents' masked RandomTFPolicy samples ``MaskedCategorical(zeros, mask)``, whose
    logits are ``Select(mask, logits, -inf)``: a Select of the random branch (and not of
    the greedy one) whose condition is an input of the function.
    """
    own = _ancestors(graph, [random], stop=set()) - _ancestors(graph, [core], stop=set())
    masks = set()
    for name in sorted(own):
        if graph.nodes[name].op not in ("Select", "SelectV2"):
            continue
        condition = _through(graph, graph.data_inputs(name)[0])
        if condition not in graph.arg_names:
            raise UnsupportedError(
                "epsilon-greedy: the random branch selects its actions with "
                f"{graph.describe(condition)}, computed in the graph; expected an action mask "
                "given in the observation (or none)"
            )
        masks.add(graph.arg_names.index(condition))
    if len(masks) > 1:
        names = [graph.arg_names[i] for i in sorted(masks)]
        raise UnsupportedError(f"epsilon-greedy: expected one action mask, got inputs {names}")
    return masks.pop() if masks else None


def _epsilon_greedy(graph: SavedGraph, select: Any, core: str) -> Exploration:
    condition = graph.data_inputs(select.name)[0]
    cond = graph.nodes[_node_name(condition)]
    if cond.op != "GreaterEqual":
        raise UnsupportedError(
            "epsilon-greedy: expected the choice `uniform >= epsilon`, got "
            f"{graph.describe(condition)}"
        )
    threshold = graph.data_inputs(cond.name)[1]
    (random,) = [i for i in graph.data_inputs(select.name)[1:] if i != core]
    mask = _random_mask(graph, random, core)
    epsilon = graph.constant(threshold)
    if epsilon is None or epsilon.size != 1:
        # A schedule (e.g. a function of the train step): the core still imports.
        return Exploration(
            EPSILON_GREEDY,
            None,
            core,
            f"epsilon-greedy whose epsilon is computed in the graph ({graph.describe(threshold)})",
            mask,
        )
    return Exploration(
        EPSILON_GREEDY,
        {"epsilon": float(epsilon.reshape(()))},
        core,
        f"epsilon-greedy ({graph.describe(select.name)})",
        mask,
    )


def _ancestors(graph: SavedGraph, names: Iterable[str], stop: set[str]) -> set[str]:
    """``names`` and the nodes they read through data edges, not reading past ``stop``."""
    out, todo = set(), [_node_name(n) for n in names]
    while todo:
        name = todo.pop()
        if name in out:
            continue
        out.add(name)
        if name not in stop:
            todo.extend(_node_name(i) for i in graph.data_inputs(name))
    return out


def folded_reads(graph: SavedGraph, fetches: list[str] | None = None) -> set[str]:
    """The variable reads whose values an ONNX conversion would fold into new constants.

    tf2onnx freezes variables into constants, then folds every op whose inputs are all
    constants. A read that only meets the time step through casts, reshapes and
    transposes stays a constant the weights map can trace to its variable; one that is
    first combined with other constants (``rsqrt(m2 / count + eps)``) would become a
    value no checkpoint can update. Those reads are returned (among the ancestors of
    ``fetches``, default the function's outputs).
    """
    fetches = fetches or [t.name for t in graph.concrete.outputs]
    needed = _ancestors(graph, fetches, stop=set())
    live = graph._closure(graph.arg_names, control=False)  # computed from the inputs
    reads = {n.name for n in graph.graph_def.node if n.op == "ReadVariableOp"}
    out: set[str] = set()
    for name in needed - live:
        node = graph.nodes[name]
        inputs = graph.data_inputs(name)
        if node.op in _MAPPABLE or not inputs:
            continue
        out |= _ancestors(graph, inputs, stop=set()) & reads
    return out


def unfoldable(value: tf.Tensor, step_type: tf.Tensor) -> tf.Tensor:
    """``value``, as a tensor no constant folding can compute before the graph runs.

    ``Where(c, value, value)`` is ``value``; ``c`` (the smallest step type is at least
    its dtype's minimum) is always true but computed from the time step, so neither
    TensorFlow's, tf2onnx's nor LiteRT's folding can evaluate it. (Shape-based tricks
    fail on a static batch size; this holds for any.)
    """
    always = tf.reduce_min(step_type) >= step_type.dtype.min
    return tf.where(always, value, value)


def inline_call(
    graph: SavedGraph,
    args: list[tf.Tensor],
    variables: Iterable[tf.Variable],
    fetches: list[str] | None = None,
) -> list[tf.Tensor]:
    """Runs (part of) a saved function's graph inside the current ``tf.function`` trace.

    Reads of captured variables become reads of ``variables`` (so exports find the
    variables; ``folded_reads`` go through ``unfoldable``), captured constants become
    constants, and only the ancestors of ``fetches`` are imported, through data edges
    (control edges are dropped: random ops the fetches do not use are left out).

    Args:
      graph: the saved function.
      args: its flat arguments (the time step and state leaves).
      variables: the variables its captured resources belong to.
      fetches: tensor names to compute (default: the function's outputs).

    Raises:
      UnsupportedError: a captured resource that belongs to none of ``variables``, or
        one used other than by ReadVariableOp.
    """
    fetches = fetches or [t.name for t in graph.concrete.outputs]
    by_handle = {id(v.handle): v for v in variables}
    resources = {n for n, v in graph.captures.items() if v.dtype == tf.resource}
    reads = {
        n.name
        for n in graph.graph_def.node
        if n.op == "ReadVariableOp" and _node_name(n.input[0]) in resources
    }
    keep = _ancestors(graph, fetches, stop=reads)
    folded = folded_reads(graph, fetches)
    input_map = {}
    for name in sorted(reads & keep):
        resource = _node_name(graph.nodes[name].input[0])
        variable = by_handle.get(id(graph.captures[resource]))
        if variable is None:
            raise UnsupportedError(
                f"the saved graph reads a resource ({resource}) that is none of its variables"
            )
        value = variable.read_value()
        input_map[f"{name}:0"] = unfoldable(value, args[0]) if name in folded else value
    sub = type(graph.graph_def)()
    sub.versions.CopyFrom(graph.graph_def.versions)
    sub.library.CopyFrom(graph.graph_def.library)
    for node in graph.graph_def.node:
        if node.name in keep and node.name not in reads:
            copy = sub.node.add()
            copy.CopyFrom(node)
            del copy.input[:]
            copy.input.extend(i for i in node.input if not i.startswith("^"))
    for name, arg in zip(graph.arg_names, args, strict=True):
        if name in keep:
            input_map[f"{name}:0"] = arg
    for name, value in graph.captures.items():
        if name not in keep:
            continue
        if value.dtype == tf.resource:
            raise UnsupportedError(
                f"the saved graph uses the resource {name} other than by reading it "
                "(e.g. an embedding lookup), which cannot be inlined"
            )
        input_map[f"{name}:0"] = tf.constant(np.asarray(value))
    return tf.graph_util.import_graph_def(
        sub,
        input_map=input_map,
        return_elements=[_tensor_name(f) for f in fetches],
        name="tf_agents",
    )
