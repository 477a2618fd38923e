"""The few ``tf_agents.utils.common`` helpers TF-Agents code calls everywhere (TF layer).

``function`` is ``tf.function`` with TF-Agents' defaults (no autograph, reduced
retracing); ``create_variable`` makes an eager ``tf.Variable`` (counters, schedules).
TF2 and eager-only: no TF1 collections or ``get_variable``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import tensorflow as tf

__all__ = ["create_variable", "function"]


def function(*args: Any, **kwargs: Any) -> Any:
    """``tf.function`` with ``autograph=False`` and ``reduce_retracing=True`` unless given."""
    kwargs.setdefault("autograph", False)
    kwargs.setdefault("reduce_retracing", True)
    return tf.function(*args, **kwargs)


def create_variable(
    name: str,
    initial_value: Any = 0,
    shape: Any = (),
    dtype: tf.DType = tf.int64,
    use_local_variable: bool = False,
    trainable: bool = False,
    initializer: Callable[..., Any] | Any = None,
    unique_name: bool = True,
) -> tf.Variable:
    """A variable of ``shape`` and ``dtype`` filled with ``initial_value`` (or made by
    ``initializer(shape, dtype)``); not trainable by default."""
    del use_local_variable, unique_name  # TF1 options: eager variables have neither
    if initializer is None:
        if shape:
            value = tf.constant(initial_value, shape=shape, dtype=dtype)
        else:
            value = tf.convert_to_tensor(initial_value, dtype=dtype)
    elif callable(initializer):
        value = lambda: initializer(shape, dtype)  # noqa: E731
    else:
        value = initializer
    return tf.Variable(value, trainable=trainable, dtype=dtype, name=name)
