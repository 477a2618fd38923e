"""The ``Network`` base: a ``tf.Module`` called as ``net(observation, step_type, state)``.

Why ``tf.Module`` and not a Keras 3 model: TFP 0.25 is built on tf-keras (Keras 2),
``tf.keras`` in TF 2.21 is Keras 3 whose variables are not ``tf.Variable`` (so
``tf.Module.variables`` and ``tf.train.Checkpoint`` of a plain module would not see
them), and export wraps policies in a ``tf.Module`` with ``tf.function`` signatures.
A ``tf.Module`` holding ``tf_keras`` layers gives tracked ``tf.Variable``s that
checkpoints, SavedModels and tf2onnx all understand.

A subclass calls ``super().__init__(input_tensor_spec, state_spec, name)``, creates its
layers, implements ``call(observation, step_type=None, network_state=(), training=False)``
returning ``(output, next_state)``, and usually ends its constructor with
``self.create_variables()`` so that variables exist before any ``tf.function`` traces.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import numpy as np
import optree
import tensorflow as tf

from toolkit import nest
from toolkit.distributions import utils as dist_utils
from toolkit.errors import SpecMismatchError, StructureError, UnsupportedError
from toolkit.specs import tensor_spec

__all__ = [
    "Network",
    "check_layer",
    "clone_layer",
]


class Network(tf.Module):
    """Base class of the networks used by TF policies.

    Attributes:
      input_tensor_spec: nest of TensorSpecs of one (unbatched) input.
      state_spec: nest of TensorSpecs of one (unbatched) network state; ``()`` if stateless.
    """

    # Kept out of tf.Module's variable/submodule search: the constructor arguments may hold
    # layers that copy() clones, and specs are no variables.
    _TF_MODULE_IGNORED_PROPERTIES = tf.Module._TF_MODULE_IGNORED_PROPERTIES | frozenset(
        (
            "_init_kwargs",
            "_input_tensor_spec",
            "_state_spec",
            "_call_takes_training",
            "_variables_created",
            "_network_output_spec",
        )
    )

    def __new__(cls, *args: Any, **kwargs: Any) -> Network:
        # Record the constructor arguments (TF-Agents style) so copy() can rebuild the
        # network with new variables. Done here so subclasses need no boilerplate.
        self = super().__new__(cls)
        try:
            bound = inspect.signature(cls.__init__).bind(None, *args, **kwargs)
        except TypeError:
            bound = None  # __init__ will raise the real error with a better message.
        recorded: dict[str, Any] = {}
        if bound is not None:
            parameters = inspect.signature(cls.__init__).parameters
            for key, value in list(bound.arguments.items())[1:]:
                kind = parameters[key].kind
                if kind is inspect.Parameter.VAR_KEYWORD:
                    recorded.update(value)
                elif kind is inspect.Parameter.VAR_POSITIONAL:
                    if value:
                        recorded[key] = _VarPositional(value)
                else:
                    recorded[key] = value
        object.__setattr__(self, "_init_kwargs", recorded)
        return self

    def __init__(self, input_tensor_spec: Any, state_spec: Any = (), name: str | None = None):
        """Declares the specs.

        Args:
          input_tensor_spec: nest of tensor (or array) specs of one unbatched input.
          state_spec: nest of specs of one unbatched network state; ``()`` if stateless.
          name: module name (a Python identifier); defaults to the class name.
        """
        super().__init__(name=name or type(self).__name__)
        # Specs stay plain Python: no tracking wrappers around their nests.
        self._set_untracked("_input_tensor_spec", tensor_spec.from_spec(input_tensor_spec))
        stateful = state_spec is not None and bool(nest.flatten(state_spec))
        self._set_untracked("_state_spec", tensor_spec.from_spec(state_spec) if stateful else ())
        self._set_untracked("_call_takes_training", _accepts(self.call, "training"))

    def _set_untracked(self, name: str, value: Any) -> None:
        """Sets an attribute that checkpoints ignore and tracking never wraps (specs, config).

        tf.Module would otherwise wrap dicts and lists into tracking proxies that optree
        treats as leaves, breaking nests of specs.
        """
        object.__setattr__(self, name, value)

    # --- specs ---------------------------------------------------------------------

    @property
    def input_tensor_spec(self) -> Any:
        return self._input_tensor_spec

    @property
    def state_spec(self) -> Any:
        return self._state_spec

    # --- calling -------------------------------------------------------------------

    def call(
        self, observation: Any, step_type: Any = None, network_state: Any = (), training=False
    ) -> tuple[Any, Any]:
        """Computes ``(output, next_state)`` from validated, batched tensors."""
        raise NotImplementedError(f"{type(self).__name__} must implement call()")

    def __call__(
        self,
        observation: Any,
        step_type: Any = None,
        network_state: Any = (),
        training: bool = False,
    ) -> tuple[Any, Any]:
        """Runs the network on a batch.

        Args:
          observation: nest like ``input_tensor_spec``, each leaf of shape
            ``[B] + spec.shape`` (sequence networks also take ``[B, T] + spec.shape``).
            numpy and Python values are converted to the spec's dtype.
          step_type: ``[B]`` (or ``[B, T]``) step types, or None. Stateful networks reset
            the state of entries whose step type is FIRST.
          network_state: nest like ``state_spec`` with a leading batch dimension.
          training: passed to layers such as dropout.

        Returns:
          ``(output, next_network_state)``.
        """
        observation = self._convert_input(observation)
        if step_type is not None:
            step_type = tf.convert_to_tensor(step_type, dtype_hint=tf.int32)
        network_state = self._convert_state(network_state)
        # The module's name scope names variables ("QNetwork/encoder/fc_0/kernel") and ops.
        with self.name_scope:
            if self._call_takes_training:
                return self.call(
                    observation,
                    step_type=step_type,
                    network_state=network_state,
                    training=training,
                )
            return self.call(observation, step_type=step_type, network_state=network_state)

    def _convert_input(self, observation: Any) -> Any:
        where = type(self).__name__
        nest.assert_same_structure(observation, self._input_tensor_spec, path="observation")
        leaves = _flatten_up_to(self._input_tensor_spec, observation)
        specs_with_paths = nest.flatten_with_paths(self._input_tensor_spec, prefix="observation")
        converted = []
        for (path, spec), value in zip(specs_with_paths, leaves, strict=True):
            tensor = _to_tensor(value, spec, path)
            inner = spec.shape.rank
            rank = tensor.shape.rank
            if (
                rank is None
                or rank <= inner
                or not spec.shape.is_compatible_with(tensor.shape[rank - inner :])
            ):
                raise SpecMismatchError(
                    path,
                    f"a batch of shape [B] + {tuple(spec.shape.as_list())}",
                    f"shape {_shape_text(tensor.shape)}",
                    detail=f"{where} inputs are batched",
                )
            converted.append(tensor)
        return nest.pack_sequence_as(self._input_tensor_spec, converted)

    def _convert_state(self, network_state: Any) -> Any:
        if not nest.flatten(self._state_spec):
            return ()
        if network_state is None or (
            nest.is_nested(network_state) and not nest.flatten(network_state)
        ):
            raise StructureError(
                "network_state",
                f"a state like {nest.structure_repr(self._state_spec)}",
                "an empty state",
                detail=f"{type(self).__name__} is stateful: pass get_initial_state(batch_size)",
            )
        nest.assert_same_structure(network_state, self._state_spec, path="network_state")
        leaves = _flatten_up_to(self._state_spec, network_state)
        specs_with_paths = nest.flatten_with_paths(self._state_spec, prefix="network_state")
        converted = []
        for (path, spec), value in zip(specs_with_paths, leaves, strict=True):
            tensor = _to_tensor(value, spec, path)
            if tensor.shape.rank != spec.shape.rank + 1 or not spec.shape.is_compatible_with(
                tensor.shape[1:]
            ):
                raise SpecMismatchError(
                    path,
                    f"shape [B] + {tuple(spec.shape.as_list())}",
                    f"shape {_shape_text(tensor.shape)}",
                )
            converted.append(tensor)
        return nest.pack_sequence_as(self._state_spec, converted)

    # --- variables and state -------------------------------------------------------

    def create_variables(self, input_tensor_spec: Any = None, **kwargs: Any) -> Any:
        """Creates the variables by calling the network once on a zero batch of one, and
        returns the spec of one (unbatched) output, as TF-Agents does.

        Runs eagerly even when called inside a ``tf.function`` (``tf.init_scope``), so a
        policy traced later never creates variables during tracing.

        Args:
          input_tensor_spec: if given, must equal the network's (it is no way to change it).
          **kwargs: passed to the call (e.g. ``training``).
        """
        if input_tensor_spec is not None:
            given = tensor_spec.from_spec(input_tensor_spec)
            if nest.flatten(given) != nest.flatten(self._input_tensor_spec):
                raise SpecMismatchError(
                    "input_tensor_spec",
                    f"the network's own {self._input_tensor_spec}",
                    f"{given}",
                    detail=f"{type(self).__name__}.create_variables",
                )
        if getattr(self, "_variables_created", False):
            return getattr(self, "_network_output_spec", None)
        with tf.init_scope():
            observation = tensor_spec.zero_spec_nest(self._input_tensor_spec, outer_dims=[1])
            step_type = tf.zeros([1], tf.int32)
            output, _ = self(
                observation, step_type=step_type, network_state=self.get_initial_state(1), **kwargs
            )
        self._set_untracked("_network_output_spec", _output_spec(output))
        self._set_untracked("_variables_created", True)
        return self._network_output_spec

    # --- Keras-like views (TF-Agents' networks are Keras layers) --------------------

    @property
    def variables(self) -> tuple[tf.Variable, ...]:
        """Every variable, in the order the network built its layers (as a Keras layer
        lists its weights: layer by layer, each layer's in creation order)."""
        return tuple(_ordered_variables(self))

    @property
    def trainable_variables(self) -> tuple[tf.Variable, ...]:
        return tuple(v for v in _ordered_variables(self) if v.trainable)

    @property
    def non_trainable_variables(self) -> tuple[tf.Variable, ...]:
        return tuple(v for v in _ordered_variables(self) if not v.trainable)

    @property
    def weights(self) -> tuple[tf.Variable, ...]:
        return self.variables

    @property
    def trainable_weights(self) -> tuple[tf.Variable, ...]:
        return self.trainable_variables

    @property
    def non_trainable_weights(self) -> tuple[tf.Variable, ...]:
        return self.non_trainable_variables

    @property
    def layers(self) -> list[Any]:
        """The network's own layers (Keras layers and networks), in the order it made them."""
        return [c for c in _direct_children(self) if _is_layer(c)]

    @property
    def losses(self) -> list[tf.Tensor]:
        """The regularization losses of the network's layers (e.g. ``weight_decay_params``)."""
        losses: list[tf.Tensor] = []
        for layer in _keras_layers(self):
            losses.extend(layer.losses)
        return losses

    def get_initial_state(self, batch_size: Any = None) -> Any:
        """Zeros like ``state_spec`` with an outer ``batch_size`` (an int or a scalar tensor).

        With ``batch_size=None`` the zeros have no batch dimension. ``()`` for stateless
        networks.
        """
        if not nest.flatten(self._state_spec):
            return ()
        outer = (
            []
            if batch_size is None
            else (tf.reshape(batch_size, [1]) if tf.is_tensor(batch_size) else [int(batch_size)])
        )
        return tensor_spec.zero_spec_nest(self._state_spec, outer_dims=outer)

    def copy(self, **kwargs: Any) -> Network:
        """A new network built from the same constructor arguments, with NEW variables.

        Keyword arguments override the recorded ones. Layers among the arguments (e.g.
        preprocessing layers) are cloned from their config and networks are copied, so
        the copy shares no variables with this network.
        """
        arguments = dict(self._init_kwargs)
        arguments.update(kwargs)
        positional = ()
        for key, value in list(arguments.items()):
            if isinstance(value, _VarPositional):
                positional = value.values
                del arguments[key]
        overridden = set(kwargs)
        arguments = {k: v if k in overridden else _clone_nest(v) for k, v in arguments.items()}
        try:
            new = type(self)(*positional, **arguments)
        except TypeError as error:
            raise UnsupportedError(
                f"{type(self).__name__}.copy(): cannot rebuild from the recorded constructor "
                f"arguments {sorted(arguments)}: {error}"
            ) from error
        if self.variables:
            # A lazily built original: build the copy too, so it can take its values at once.
            new.create_variables()
        return new


class _VarPositional:
    """Marks recorded ``*args`` values (kept apart from keyword arguments)."""

    def __init__(self, values: tuple[Any, ...]):
        self.values = values


# --- layers ------------------------------------------------------------------------


def check_layer(layer: Any, where: str) -> Any:
    """Returns ``layer`` if it is usable inside a Network, else raises UnsupportedError.

    Keras 3 layers (``tf.keras`` in TF 2.21) keep ``keras.Variable``s that tf.Module and
    tf.train.Checkpoint do not see: their weights would silently not train or save.
    """
    if layer is None:
        return None
    if any(c.__module__.split(".")[0] == "keras" for c in type(layer).__mro__):
        raise UnsupportedError(
            f"{where}: got a Keras 3 layer ({type(layer).__name__} from tf.keras/keras); "
            "use tf_keras layers (import tf_keras; tf_keras.layers...) or a Network, "
            "whose variables tf.Module and checkpoints can track"
        )
    if not callable(layer):
        raise TypeError(f"{where}: expected a layer or a callable, got {type(layer).__name__}")
    return layer


def clone_layer(layer: Any) -> Any:
    """A fresh copy of a layer (new variables); plain callables are returned as they are."""
    if isinstance(layer, Network):
        return layer.copy()
    if hasattr(layer, "get_config") and hasattr(type(layer), "from_config"):
        import tf_keras  # deferred: only needed when cloning Keras layers

        if isinstance(layer, tf_keras.Model):
            return tf_keras.models.clone_model(layer)
        return type(layer).from_config(layer.get_config())
    return layer


def _clone_nest(value: Any) -> Any:
    # Only nests can hold layers; specs and numbers map through unchanged.
    def clone(leaf: Any) -> Any:
        if isinstance(leaf, tf.Module) or hasattr(leaf, "get_config"):
            return clone_layer(leaf)
        return leaf

    return optree.tree_map(clone, value, none_is_leaf=True)


# --- variables and layers in construction order -------------------------------------


def _is_layer(value: Any) -> bool:
    import tf_keras  # deferred like clone_layer's: networks already loaded it

    return isinstance(value, (Network, tf_keras.layers.Layer))


def _direct_children(module: tf.Module) -> list[Any]:
    """The leaves of a module's attributes, in the order they were set (Python keeps it),
    lists, tuples and dicts walked, TensorFlow's tracking wrappers included."""
    ignored = getattr(module, "_TF_MODULE_IGNORED_PROPERTIES", frozenset())
    children: list[Any] = []

    def walk(value: Any) -> None:
        value = getattr(value, "__wrapped__", value) if _is_tracking_proxy(value) else value
        if isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk(item)
        elif value is not None:
            children.append(value)

    for key, value in vars(module).items():
        if key not in ignored:
            walk(value)
    return children


def _is_tracking_proxy(value: Any) -> bool:
    cls = type(value)
    return cls.__module__.startswith("tensorflow.") and hasattr(cls, "__wrapped__")


def _ordered_variables(module: tf.Module) -> list[tf.Variable]:
    import tf_keras  # deferred like clone_layer's: networks already loaded it

    found: list[tf.Variable] = []
    seen_variables: set[int] = set()
    seen_objects: set[int] = set()

    def add(variable: tf.Variable) -> None:
        if id(variable) not in seen_variables:
            seen_variables.add(id(variable))
            found.append(variable)

    def visit(value: Any) -> None:
        if isinstance(value, tf.Variable):
            add(value)
        elif id(value) in seen_objects:
            return
        elif isinstance(value, tf_keras.layers.Layer):
            seen_objects.add(id(value))
            for variable in value.weights:
                add(variable)
        elif isinstance(value, tf.Module):
            seen_objects.add(id(value))
            for child in _direct_children(value):
                visit(child)

    seen_objects.add(id(module))
    for child in _direct_children(module):
        visit(child)
    return found


def _keras_layers(module: tf.Module) -> list[Any]:
    """The outermost Keras layers under a module (each lists its sublayers' losses)."""
    import tf_keras  # deferred like clone_layer's: networks already loaded it

    layers: list[Any] = []
    seen: set[int] = {id(module)}

    def visit(value: Any) -> None:
        if id(value) in seen:
            return
        seen.add(id(value))
        if isinstance(value, tf_keras.layers.Layer):
            layers.append(value)
        elif isinstance(value, tf.Module):
            for child in _direct_children(value):
                visit(child)

    for child in _direct_children(module):
        visit(child)
    return layers


def _output_spec(output: Any) -> Any:
    """The spec of one output of a batch-of-one call, as TF-Agents': tensors lose their
    batch dim; a distribution is a ``DistributionSpecV2`` whose parameters' specs lose
    it too."""

    def unbatched(value: Any) -> Any:
        if not tf.is_tensor(value):
            return value
        shape = value.shape
        if shape.rank and shape[0] == 1:  # scalar parameters have no batch dim to lose
            shape = shape[1:]
        return tf.TensorSpec(shape, value.dtype)

    def spec(value: Any) -> Any:
        if isinstance(value, tf.Tensor):
            return tf.TensorSpec(value.shape[1:], value.dtype)
        if dist_utils.is_distribution(value):
            parameters = dist_utils.map_params(unbatched, dist_utils.get_parameters(value))
            return dist_utils.DistributionSpecV2(value.event_shape, value.dtype, parameters)
        return value

    return nest.map_structure(spec, output)


# --- small helpers -----------------------------------------------------------------


def _accepts(function: Callable[..., Any], name: str) -> bool:
    parameters = inspect.signature(function).parameters
    return name in parameters or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()
    )


def _flatten_up_to(structure: Any, value: Any) -> list[Any]:
    return optree.tree_structure(structure).flatten_up_to(value)


def _shape_text(shape: tf.TensorShape) -> str:
    if shape.rank is None:
        return "of unknown rank"
    return str(tuple(None if d is None else int(d) for d in shape.as_list()))


def _to_tensor(value: Any, spec: tf.TensorSpec, path: str) -> tf.Tensor:
    """Tensors keep their dtype (a mismatch is an error); other values take the spec's."""
    if tf.is_tensor(value) or isinstance(value, tf.Variable):
        if value.dtype != spec.dtype:
            raise SpecMismatchError(path, f"dtype {spec.dtype.name}", f"dtype {value.dtype.name}")
        return tf.convert_to_tensor(value)
    return tf.convert_to_tensor(np.asarray(value, dtype=spec.dtype.as_numpy_dtype))
