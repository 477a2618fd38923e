"""ExpandDims: a tf_keras layer adding a dim of 1, as TF-Agents' ``expand_dims_layer``."""

from __future__ import annotations

from typing import Any

import tensorflow as tf
import tf_keras

__all__ = ["ExpandDims"]


@tf_keras.utils.register_keras_serializable(package="toolkit")
class ExpandDims(tf_keras.layers.Layer):
    """Adds a dim of 1 before ``axis`` of each (batched) input.

    A negative ``axis`` counts from the right (-1 appends the dim); a non-negative one
    counts from the left after the batch dim, which it never moves.
    """

    def __init__(self, axis: int, **kwargs: Any):
        super().__init__(**kwargs)
        self.axis = int(axis)

    def compute_output_shape(self, input_shape: Any) -> tf.TensorShape:
        shape = tf.TensorShape(input_shape)
        if shape.rank is None:
            return shape
        dims = shape.as_list()
        if self.axis == -1:
            return tf.TensorShape([*dims, 1])
        if self.axis < 0:
            return tf.TensorShape(dims[: self.axis + 1] + [1] + dims[self.axis + 1 :])
        return tf.TensorShape(dims[: self.axis] + [1] + dims[self.axis :])

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        if self.axis < 0:
            return tf.expand_dims(inputs, self.axis)
        return tf.expand_dims(inputs, self.axis + 1)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "axis": self.axis}
