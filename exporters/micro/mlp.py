"""A policy's deterministic action as a plain MLP, read from its ONNX graph (``Mlp``).

The micro targets (``exporters.formats.micro``, ``exporters.formats.c``) run on devices
with no graph runtime, so they take only what a few dense layers express: the
observation (one leaf, or several concatenated), dense layers with ReLU, tanh or no
activation, and a head: ``argmax`` (discrete actions, plus the categorical's shift) or
an affine map with optional tanh squashing and clipping to the action spec (continuous
actions). The action is the policy's deterministic one: a greedy Q policy's argmax, a
deterministic actor's action, a stochastic policy's mode (a categorical's argmax, a
normal's ``loc``, a tanh-normal's ``c + m * tanh(loc)``).

The graph is walked backwards from that action's output to the observation; anything
else on the way (a recurrent cell, a convolution, a sampled action...) is an
``UnsupportedError`` naming the node. Elementwise constants are folded into the dense
layers next to them (``Mul``/``Add`` after a ``MatMul`` into its weights and bias,
before one into the next layer), and the result is checked against the graph itself on
real states (``check_against``), so a misread graph can never pass silently.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from toolkit import nest
from toolkit.bundle.layout import Layout
from toolkit.errors import ExportError, UnsupportedError

__all__ = ["ACTIVATIONS", "Dense", "Head", "Mlp", "extract"]

#: The activations the targets compute.
ACTIVATIONS = ("linear", "relu", "tanh")


@dataclasses.dataclass(frozen=True)
class Dense:
    """One dense layer: ``activation(x @ weight + bias)``.

    Attributes:
      name: the graph node it came from (for messages and reports).
      weight: float64 ``[inputs, outputs]``.
      bias: float64 ``[outputs]``.
      activation: one of ``ACTIVATIONS``.
    """

    name: str
    weight: np.ndarray
    bias: np.ndarray
    activation: str

    @property
    def inputs(self) -> int:
        return int(self.weight.shape[0])

    @property
    def outputs(self) -> int:
        return int(self.weight.shape[1])


@dataclasses.dataclass(frozen=True)
class Head:
    """How the last layer's outputs become the action.

    Attributes:
      kind: ``"argmax"`` (index of the largest output, plus ``shift``) or ``"affine"``
        (``clip(offset + scale * y)``; the last layer's tanh, if any, is its squashing).
      dtype: the action spec's dtype name.
      shape: the action spec's shape.
      shift: argmax only: added to the index (a categorical's first action).
      scale, offset: affine only, float64 per action element.
      low, high: affine only: the clip bounds (the action spec's), float64 per element.
    """

    kind: str
    dtype: str
    shape: tuple[int, ...]
    shift: int = 0
    scale: np.ndarray | None = None
    offset: np.ndarray | None = None
    low: np.ndarray | None = None
    high: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class Mlp:
    """A policy's deterministic action as dense layers.

    Attributes:
      observation: the observation leaves' graph input names, concatenated in this order
        (each flattened) into one float vector.
      sizes: each leaf's element count.
      layers: the dense layers, in order.
      head: how the action is read from the last layer.
    """

    observation: tuple[str, ...]
    sizes: tuple[int, ...]
    layers: tuple[Dense, ...]
    head: Head

    @property
    def inputs(self) -> int:
        return int(sum(self.sizes))

    @property
    def outputs(self) -> int:
        return self.layers[-1].outputs

    @property
    def discrete(self) -> bool:
        return self.head.kind == "argmax"

    @property
    def action_size(self) -> int:
        return int(np.prod(self.head.shape, dtype=np.int64))

    def features(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """The flat float observation vectors ``[N, inputs]`` from graph inputs by name."""
        parts = [
            np.asarray(inputs[name], np.float64).reshape(len(inputs[name]), -1)
            for name in self.observation
        ]
        return np.concatenate(parts, axis=1)

    def hidden(self, x: np.ndarray) -> list[np.ndarray]:
        """Every layer's output (after its activation) for flat observations, in float64."""
        out = []
        for layer in self.layers:
            x = activate(x @ layer.weight + layer.bias, layer.activation)
            out.append(x)
        return out

    def act(self, x: np.ndarray) -> np.ndarray:
        """The actions ``[N, *shape]`` (the action dtype) for flat observations ``[N, inputs]``."""
        return self.head_of(self.hidden(np.asarray(x, np.float64))[-1])

    def head_of(self, y: np.ndarray) -> np.ndarray:
        """The actions from the last layer's outputs ``[N, outputs]``."""
        head = self.head
        if head.kind == "argmax":
            index = np.argmax(y, axis=1) + head.shift
            return index.astype(head.dtype).reshape((len(y), *head.shape))
        value = np.clip(head.offset + head.scale * y, head.low, head.high)
        return value.astype(head.dtype).reshape((len(y), *head.shape))


def activate(x: np.ndarray, activation: str) -> np.ndarray:
    if activation == "relu":
        return np.maximum(x, 0.0)
    if activation == "tanh":
        return np.tanh(x)
    return x


# --- reading the graph ---------------------------------------------------------------------


@dataclasses.dataclass
class _Step:
    """One op on the path from the observation to the action, in forward order."""

    op: str  # matmul, add, mul, relu, tanh, clip_low, clip_high, argmax, shift, cast
    node: str
    value: Any = None


class _Graph:
    def __init__(self, model: Any, what: str):
        from onnx import numpy_helper

        self.what = what
        self.inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        self.producer = {out: node for node in model.graph.node for out in node.output}
        for node in model.graph.node:  # Constant nodes are initializers too
            if node.op_type == "Constant" and node.attribute:
                attribute = node.attribute[0]
                if attribute.name == "value":
                    self.inits[node.output[0]] = numpy_helper.to_array(attribute.t)
        self.inputs = {i.name for i in model.graph.input}

    def const(self, name: str) -> np.ndarray | None:
        return self.inits.get(name)

    def unsupported(self, node: Any, why: str = "") -> UnsupportedError:
        return UnsupportedError(
            f"{self.what}: layer {node.name or node.output[0]!r} ({node.op_type}) "
            f"{why or 'is not something a micro target computes'}; it takes dense layers "
            "with ReLU or tanh, argmax, tanh squashing and the action spec's scaling"
        )


def extract(model: Any, layout: Layout | dict[str, Any], what: str) -> Mlp:
    """The policy's deterministic action as an ``Mlp``, from its float ONNX graph.

    Args:
      model: the bundle's ``onnx.ModelProto`` (float).
      layout: the bundle's layout (specs, distribution, graph names).
      what: how messages name the target ("micro export").

    Raises:
      UnsupportedError: a recurrent policy, nested actions, a wrapper policy
        (epsilon-greedy, noise, mixtures), or a layer the targets cannot compute (named).
    """
    layout = Layout.coerce(layout)
    if layout.names.states:
        raise UnsupportedError(
            f"{what}: the policy is recurrent (policy state {list(layout.names.states)}); "
            "the micro targets compute stateless MLP policies only"
        )
    action_specs = nest.flatten(layout.specs.action)
    leaves = nest.flatten_with_paths(layout.distribution, "distribution")
    if len(action_specs) != 1 or len(leaves) != 1:
        raise UnsupportedError(
            f"{what}: expected one action leaf, got {len(action_specs)} action leaves and "
            f"{len(leaves)} distribution leaves (nested actions or a wrapper policy: export "
            "the plain or greedy policy)"
        )
    if layout.action.get("kind") != "sample":
        raise UnsupportedError(
            f"{what}: expected a plain policy, got a {layout.action.get('kind')!r} wrapper; "
            "export the wrapped policy (its deterministic action) instead"
        )
    spec = action_specs[0]
    dtype = np.dtype(spec.dtype)
    path, leaf = leaves[0]
    graph = _Graph(model, what)
    outputs = {o.name for o in model.graph.output}
    family = leaf.family
    mode: list[_Step] = []
    action_name = layout.names.actions[0] if layout.names.actions else None
    if action_name in outputs:
        start = action_name
    elif family in ("categorical", "deterministic", "normal", "tanh_normal"):
        param = "logits" if family == "categorical" else "loc"
        start = nest.join_path(path, param)
        if family == "categorical":
            mode = [_Step("argmax", start), _Step("shift", start, int(leaf.static.get("shift", 0)))]
        elif family == "tanh_normal":
            low, high = _constant_outputs(model, layout, [f"{path}/low", f"{path}/high"], what)
            mode = [
                _Step("tanh", start),
                _Step("mul", start, (high - low) / 2.0),
                _Step("add", start, (high + low) / 2.0),
            ]
    else:
        raise UnsupportedError(
            f"{what}: a {family!r} distribution has no deterministic action a micro target "
            "computes (argmax, loc or tanh-squashed loc)"
        )
    steps, observation = _walk(graph, start, layout)
    steps += mode
    if layout.action.get("clip", True) and dtype.kind == "f":
        low, high = _bounds(spec)
        steps += [_Step("clip_high", "clip", high), _Step("clip_low", "clip", low)]
    sizes = []
    time_step_inputs = dict(nest.flatten_with_paths(layout.specs.time_step))
    for name in observation:
        leaf_spec = time_step_inputs[name]
        sizes.append(int(np.prod(leaf_spec.shape, dtype=np.int64)))
    return _fold(steps, tuple(observation), tuple(sizes), spec, graph)


def _bounds(spec: Any) -> tuple[np.ndarray, np.ndarray]:
    shape = spec.shape
    low = np.broadcast_to(np.asarray(getattr(spec, "minimum", -np.inf), np.float64), shape)
    high = np.broadcast_to(np.asarray(getattr(spec, "maximum", np.inf), np.float64), shape)
    return low.reshape(-1), high.reshape(-1)


def _constant_outputs(model: Any, layout: Layout, names: list[str], what: str) -> list[np.ndarray]:
    """Graph outputs that must not depend on the observation (a tanh-normal's bounds)."""
    from exporters import graph_io

    run = graph_io.onnx_runner(model.SerializeToString())
    rng = np.random.default_rng(0)
    values = []
    for _ in range(2):
        inputs = graph_io.sample_time_steps(layout, 4, rng, first=True, moderate=True)
        out = run(inputs)
        values.append([np.asarray(out[n], np.float64) for n in names])
    for name, a, b in zip(names, values[0], values[1], strict=True):
        if not np.array_equal(a, b) or not np.all(a == a[:1]):
            raise UnsupportedError(f"{what}: {name} depends on the observation; expected bounds")
    return [v[0].reshape(-1) for v in values[0]]


_IDENTITY = ("Identity", "Expand", "Reshape", "Squeeze", "Unsqueeze", "Flatten")


def _walk(graph: _Graph, start: str, layout: Layout) -> tuple[list[_Step], list[str]]:
    """The ops from the observation to ``start`` (forward order) and the observation's
    input names in concatenation order."""
    steps: list[_Step] = []
    name = start
    observation_names = [n for n in layout.names.inputs if n.split("/")[0] == "observation"]
    while name not in graph.inputs:
        node = graph.producer.get(name)
        if node is None:
            raise ExportError(f"{graph.what}: tensor {name!r} has no producer in the graph")
        op = node.op_type
        variable = [i for i in node.input if i and graph.const(i) is None]
        consts = [graph.const(i) for i in node.input if i and graph.const(i) is not None]
        if op == "Concat":
            return list(reversed(steps)), _concat_inputs(graph, node, observation_names)
        if op in _IDENTITY or op == "Cast":
            # Their other inputs are shapes (a batch broadcast, the action's shape): the
            # check against the graph on real states catches a reshape that mixes rows.
            if op == "Cast":
                steps.append(_Step("cast", node.name))
            name = node.input[0]
            continue
        if len(variable) != 1:
            raise graph.unsupported(node, "mixes several tensors")
        x = variable[0]
        if op == "MatMul":
            weight = graph.const(node.input[1])
            if weight is None or weight.ndim != 2 or node.input[0] != x:
                raise graph.unsupported(node, "has no constant 2-D weight")
            steps.append(_Step("matmul", node.name, weight.astype(np.float64)))
        elif op == "Gemm":
            attrs = {a.name: a for a in node.attribute}
            weight = graph.const(node.input[1])
            if weight is None or node.input[0] != x or ("transA" in attrs and attrs["transA"].i):
                raise graph.unsupported(node, "has no constant weight")
            weight = weight.astype(np.float64)
            if "transB" in attrs and attrs["transB"].i:
                weight = weight.T
            alpha = attrs["alpha"].f if "alpha" in attrs else 1.0
            beta = attrs["beta"].f if "beta" in attrs else 1.0
            if len(node.input) > 2 and node.input[2]:
                steps.append(_Step("add", node.name, beta * graph.const(node.input[2])))
            steps.append(_Step("matmul", node.name, alpha * weight))
        elif op in ("Add", "Sub", "Mul", "Div") and len(consts) == 1:
            c = np.asarray(consts[0], np.float64)
            first = node.input[0] == x
            if op == "Add":
                steps.append(_Step("add", node.name, c))
            elif op == "Mul":
                steps.append(_Step("mul", node.name, c))
            elif op == "Sub":
                if first:
                    steps.append(_Step("add", node.name, -c))
                else:  # c - x
                    steps += [_Step("add", node.name, c), _Step("mul", node.name, -1.0)]
            elif first:  # x / c
                steps.append(_Step("mul", node.name, 1.0 / c))
            else:
                raise graph.unsupported(node, "divides by the observation")
        elif op in ("Relu", "Tanh"):
            steps.append(_Step(op.lower(), node.name))
        elif op in ("Max", "Min") and len(consts) == 1:
            steps.append(_Step("clip_low" if op == "Max" else "clip_high", node.name, consts[0]))
        elif op == "Clip":
            low = graph.const(node.input[1]) if len(node.input) > 1 and node.input[1] else None
            high = graph.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
            if high is not None:
                steps.append(_Step("clip_high", node.name, high))
            if low is not None:
                steps.append(_Step("clip_low", node.name, low))
        elif op == "ArgMax":
            attrs = {a.name: a.i for a in node.attribute}
            if attrs.get("keepdims", 1) != 0 or attrs.get("axis", 0) not in (1, -1):
                raise graph.unsupported(node, "is an argmax over another axis")
            steps.append(_Step("argmax", node.name))
        else:
            raise graph.unsupported(node)
        name = x
    if name not in observation_names:
        raise UnsupportedError(
            f"{graph.what}: the action depends on the graph input {name!r}; expected it to "
            "depend on the observation only"
        )
    return list(reversed(steps)), [name]


def _concat_inputs(graph: _Graph, node: Any, observation_names: list[str]) -> list[str]:
    """The observation leaves a ``Concat`` along the last axis joins, in its order."""
    attrs = {a.name: a.i for a in node.attribute}
    if attrs.get("axis") not in (1, -1):
        raise graph.unsupported(node, "joins along another axis than the features'")
    names = []
    for name in node.input:
        while name not in graph.inputs:
            producer = graph.producer.get(name)
            if producer is None or producer.op_type not in (*_IDENTITY, "Cast"):
                raise graph.unsupported(
                    producer or node, "is between the observation and the first dense layer"
                )
            name = producer.input[0]
        if name not in observation_names:
            raise UnsupportedError(
                f"{graph.what}: the action depends on the graph input {name!r}; expected it "
                "to depend on the observation only"
            )
        names.append(name)
    return names


def _fold(
    steps: list[_Step], observation: tuple[str, ...], sizes: tuple[int, ...], spec: Any, graph: Any
) -> Mlp:
    """Dense layers and a head from the forward op list (constants folded into layers)."""
    n = int(sum(sizes))
    # Elementwise x -> a * x + c waiting to be folded into the next layer (or the head).
    a, c = np.ones(n), np.zeros(n)
    layers: list[Dense] = []
    open_layer: dict[str, Any] | None = None  # the last MatMul, before its activation
    argmax = False
    shift = 0
    low = high = None
    width = n

    def close(activation: str) -> None:
        nonlocal open_layer
        layers.append(Dense(open_layer["name"], open_layer["w"], open_layer["b"], activation))
        open_layer = None

    for step in steps:
        op = step.op
        if argmax and op not in ("shift", "cast", "clip_low", "clip_high", "add"):
            raise UnsupportedError(f"{graph.what}: {step.node!r} ({op}) after the argmax")
        if op == "matmul":
            if open_layer is not None:
                close("linear")
            w = step.value
            if w.shape[0] != width:
                raise ExportError(
                    f"{graph.what}: {step.node}: expected {width} inputs, got weight {w.shape}"
                )
            open_layer = {"name": step.node, "w": a[:, None] * w, "b": c @ w}
            width = w.shape[1]
            a, c = np.ones(width), np.zeros(width)
        elif op == "add" and argmax:
            shift += int(np.asarray(step.value).reshape(-1)[0])
        elif op in ("add", "mul"):
            value = np.broadcast_to(np.asarray(step.value, np.float64).reshape(-1), (width,))
            if open_layer is not None:
                if op == "add":
                    open_layer["b"] = open_layer["b"] + value
                else:
                    open_layer["w"] = open_layer["w"] * value
                    open_layer["b"] = open_layer["b"] * value
            elif op == "add":
                c = c + value
            else:
                a, c = a * value, c * value
        elif op in ("relu", "tanh"):
            if open_layer is None:
                if layers and layers[-1].activation == "linear" and np.all(a == 1) and not c.any():
                    last = layers.pop()
                    layers.append(dataclasses.replace(last, activation=op))
                    continue
                raise UnsupportedError(
                    f"{graph.what}: {step.node!r} ({op}) does not follow a dense layer"
                )
            close(op)
        elif op == "argmax":
            if open_layer is not None:
                close("linear")
            if not (np.all(a > 0) and np.allclose(a, a[0])):
                raise UnsupportedError(f"{graph.what}: {step.node!r}: argmax of scaled outputs")
            argmax = True
        elif op == "shift":
            shift += int(step.value)
        elif op in ("clip_low", "clip_high"):
            bound = np.broadcast_to(np.asarray(step.value, np.float64).reshape(-1), (width,))
            if argmax:
                continue  # the index is within the spec: the categorical's own range
            if op == "clip_low":
                low = bound if low is None else np.maximum(low, bound)
            else:
                high = bound if high is None else np.minimum(high, bound)
        elif op == "cast":
            continue
    if open_layer is not None:
        close("linear")
    if not layers:
        raise UnsupportedError(f"{graph.what}: the action has no dense layer")
    dtype = np.dtype(spec.dtype)
    shape = tuple(int(d) for d in spec.shape)
    if argmax:
        head = Head("argmax", dtype.name, shape, shift=shift)
    else:
        if dtype.kind != "f":
            raise UnsupportedError(
                f"{graph.what}: a {dtype.name} action without an argmax; expected float actions"
            )
        if width != int(np.prod(shape, dtype=np.int64)):
            raise ExportError(
                f"{graph.what}: the last layer has {width} outputs for an action of shape {shape}"
            )
        low = np.full(width, -np.inf) if low is None else np.asarray(low, np.float64)
        high = np.full(width, np.inf) if high is None else np.asarray(high, np.float64)
        head = Head("affine", dtype.name, shape, scale=a, offset=c, low=low, high=high)
    return Mlp(observation, sizes, tuple(layers), head)
