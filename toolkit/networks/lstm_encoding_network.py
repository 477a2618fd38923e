"""LSTMEncodingNetwork: encoder, stacked single-step LSTM cells, output dense layers.

State: one ``(h, c)`` pair of ``TensorSpec((units,), float32)`` per LSTM layer, i.e.
``((h0, c0), (h1, c1), ...)``. Called one step at a time (``[B] + obs shape``, state
``[B, units]``), or on sequences (``[B, T] + obs shape`` with ``step_type [B, T]``).
Where ``step_type == FIRST`` the state is replaced by zeros with ``tf.where`` INSIDE the
call, before the cell runs, so a traced or exported graph resets episodes by itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import tensorflow as tf
import tf_keras

from toolkit import nest
from toolkit.errors import SpecError, SpecMismatchError
from toolkit.networks.encoding_network import (
    EncodingNetwork,
    _fresh,
    default_kernel_initializer,
    outer_rank,
)
from toolkit.networks.network import Network, check_layer
from toolkit.trajectories.time_step import StepType

__all__ = ["LSTMEncodingNetwork", "reset_where_first"]


def _state_size(size: Any) -> Any:
    """A Keras cell's ``state_size`` as a nest of ints (TensorShapes become their size)."""
    if isinstance(size, (list, tuple)):
        items = [_state_size(s) for s in size]
        return items if len(items) > 1 else items[0]
    if isinstance(size, tf.TensorShape):
        return int(size.num_elements())
    return int(size)


def reset_where_first(state: Any, step_type: tf.Tensor | None) -> Any:
    """Zeros the ``[B, ...]`` state entries whose ``step_type`` (``[B]``) is FIRST."""
    if step_type is None:
        return state
    is_first = tf.equal(tf.cast(step_type, tf.int32), int(StepType.FIRST))

    def reset(tensor: tf.Tensor) -> tf.Tensor:
        mask = tf.reshape(is_first, [-1] + [1] * (tensor.shape.rank - 1))
        return tf.where(mask, tf.zeros_like(tensor), tensor)

    return nest.map_structure(reset, state)


class LSTMEncodingNetwork(Network):
    """Observation encoder + LSTM cells (or a Keras RNN layer) + dense layers.

    Output ``[B, units]`` for single steps, ``[B, T, units]`` for sequences.

    Args:
      input_tensor_spec: observation spec (nests allowed).
      preprocessing_layers, preprocessing_combiner: see ``EncodingNetwork``.
      input_fc_layer_params: dense layers before the LSTM.
      lstm_size: units of each stacked LSTM layer (default ``(40,)`` unless
        ``rnn_construction_fn`` is given; not both). State: one ``(h, c)`` pair per
        layer, ``((h0, c0), (h1, c1), ...)``, even for one layer.
      output_fc_layer_params: dense layers after the LSTM.
      activation_fn: activation of the conv and dense layers.
      kernel_initializer: conv and dense layers' initializer.
      conv_layer_params, input_dropout_layer_params, weight_decay_params, dtype: see
        ``EncodingNetwork`` (the input encoder's).
      rnn_construction_fn: instead of ``lstm_size``, a function returning a Keras RNN
        layer with ``return_state=True, return_sequences=True`` (e.g. ``tf_keras.layers.
        LSTM``), called with ``rnn_construction_kwargs``; the state is its cell's
        ``state_size`` as TF-Agents makes it (a tensor for one state, a list for several).
      rnn_construction_kwargs: keyword arguments of ``rnn_construction_fn``.
      name: module name.
      owner_name: name of the network holding this one, for error messages.
    """

    def __init__(
        self,
        input_tensor_spec: Any,
        preprocessing_layers: Any = None,
        preprocessing_combiner: Callable[..., tf.Tensor] | None = None,
        input_fc_layer_params: Sequence[int] | None = (75, 40),
        lstm_size: Sequence[int] | None = None,
        output_fc_layer_params: Sequence[int] | None = (75, 40),
        activation_fn: Callable[[tf.Tensor], tf.Tensor] | None = tf.nn.relu,
        *,
        kernel_initializer: Any = None,
        conv_layer_params: Sequence[Sequence[Any]] | None = None,
        input_dropout_layer_params: Sequence[Any] | None = None,
        weight_decay_params: Sequence[float | None] | None = None,
        rnn_construction_fn: Callable[..., Any] | None = None,
        rnn_construction_kwargs: dict[str, Any] | None = None,
        dtype: Any = tf.float32,
        name: str = "LSTMEncodingNetwork",
        owner_name: str | None = None,
    ):
        who = owner_name or name
        if rnn_construction_fn is not None and lstm_size:
            raise SpecError(f"{who}: expected either lstm_size or rnn_construction_fn, got both")
        rnn_layer = None
        if rnn_construction_fn is not None:
            rnn_layer = check_layer(
                rnn_construction_fn(**(rnn_construction_kwargs or {})), f"{who}.rnn"
            )
            cell = getattr(rnn_layer, "cell", None)
            if cell is None or not getattr(rnn_layer, "return_state", False):
                raise SpecError(
                    f"{who}: rnn_construction_fn: expected a Keras RNN layer with "
                    f"return_state=True and return_sequences=True, got {rnn_layer!r}"
                )
            state_spec = nest.map_structure(
                lambda size: tf.TensorSpec((int(size),), tf.as_dtype(dtype)),
                _state_size(cell.state_size),
            )
            lstm_size = ()
        else:
            lstm_size = tuple(int(u) for u in (lstm_size if lstm_size is not None else (40,)))
            if not lstm_size or min(lstm_size) < 1:
                raise SpecError(
                    f"{who}: lstm_size must list at least one positive size, got {lstm_size}"
                )
            state_spec = tuple(
                (
                    tf.TensorSpec((units,), tf.as_dtype(dtype)),
                    tf.TensorSpec((units,), tf.as_dtype(dtype)),
                )
                for units in lstm_size
            )
        super().__init__(input_tensor_spec, state_spec=state_spec, name=name)
        initializer = kernel_initializer or default_kernel_initializer()
        with self.name_scope:
            self._encoder = EncodingNetwork(
                input_tensor_spec,
                preprocessing_layers=preprocessing_layers,
                preprocessing_combiner=preprocessing_combiner,
                fc_layer_params=input_fc_layer_params,
                activation_fn=activation_fn,
                kernel_initializer=initializer,
                name="encoder",
                conv_layer_params=conv_layer_params,
                dropout_layer_params=input_dropout_layer_params,
                weight_decay_params=weight_decay_params,
                dtype=dtype,
                owner_name=who,
            )
        self._cells = [
            tf_keras.layers.LSTMCell(units, dtype=dtype, name=f"lstm_{i}")
            for i, units in enumerate(lstm_size)
        ]
        self._rnn = rnn_layer
        self._output_layers = [
            tf_keras.layers.Dense(
                int(units),
                activation=activation_fn,
                kernel_initializer=_fresh(initializer),
                dtype=dtype,
                name=f"output_fc_{i}",
            )
            for i, units in enumerate(output_fc_layer_params or ())
        ]
        self.create_variables()

    def call(self, observation, step_type=None, network_state=(), training=False):
        first_spec = nest.flatten(self.input_tensor_spec)[0]
        num_outer = outer_rank(nest.flatten(observation)[0], first_spec)
        if num_outer not in (1, 2):
            raise SpecMismatchError(
                "observation",
                f"[B] + {tuple(first_spec.shape.as_list())} or [B, T] + ...",
                f"shape {tuple(nest.flatten(observation)[0].shape.as_list())}",
            )
        if step_type is not None and step_type.shape.rank != num_outer:
            raise SpecMismatchError(
                "step_type",
                f"shape {'[B]' if num_outer == 1 else '[B, T]'} like the observation's batch",
                f"shape {tuple(step_type.shape.as_list())}",
            )
        encoded, _ = self._encoder(observation, training=training)
        if self._rnn is not None:
            output, state = self._keras_rnn(encoded, step_type, network_state, num_outer, training)
        elif num_outer == 1:
            output, state = self._step(encoded, step_type, network_state, training)
        else:
            output, state = self._unroll(encoded, step_type, network_state, training)
        for layer in self._output_layers:
            output = layer(output, training=training)
        return output, state

    def _keras_rnn(self, inputs, step_type, state, num_outer, training):
        # The Keras layer runs whole sequences: the state resets where a sequence starts
        # on a FIRST step (single steps are sequences of one).
        if num_outer == 1:
            inputs = tf.expand_dims(inputs, 1)
        if step_type is not None:
            first = step_type if num_outer == 1 else step_type[:, 0]
            state = reset_where_first(state, first)
        outputs = self._rnn(inputs, initial_state=nest.flatten(state), training=training)
        sequence, final = outputs[0], list(outputs[1:])
        next_state = nest.pack_sequence_as(self.state_spec, final)
        if num_outer == 1:
            sequence = tf.squeeze(sequence, 1)
        return sequence, next_state

    def _step(self, inputs, step_type, state, training):
        state = reset_where_first(state, step_type)
        next_state = []
        for cell, (h, c) in zip(self._cells, state, strict=True):
            inputs, (h, c) = cell(inputs, [h, c], training=training)
            next_state.append((h, c))
        return inputs, tuple(next_state)

    def _unroll(self, inputs, step_type, state, training):
        # Time-major scan of the same single step: the reset applies at every step.
        inputs_tm = tf.transpose(inputs, [1, 0, 2])
        if step_type is None:
            step_type = tf.fill(tf.shape(inputs)[:2], int(StepType.MID))
        step_type_tm = tf.transpose(tf.cast(step_type, tf.int32), [1, 0])
        initial_output = tf.zeros([tf.shape(inputs)[0], self._cells[-1].units], dtype=inputs.dtype)

        def step(carry, elements):
            _, previous_state = carry
            x, st = elements
            return self._step(x, st, previous_state, training)

        outputs_tm, states_tm = tf.scan(
            step, (inputs_tm, step_type_tm), initializer=(initial_output, state)
        )
        outputs = tf.transpose(outputs_tm, [1, 0, 2])
        final_state = nest.map_structure(lambda s: s[-1], states_tm)
        return outputs, final_state
