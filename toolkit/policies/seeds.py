"""Stateless seeds for TF policies: from an int, a numpy Generator or a tensor, and splits.

The same int always gives the same seed, so ``action(..., seed=7)`` repeats itself, in
eager mode and inside ``tf.function`` alike.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from toolkit.errors import SpecMismatchError

__all__ = ["split_seed", "stateless_seed"]


def stateless_seed(seed: Any) -> tf.Tensor:
    """A stateless seed (shape [2], int32) from an int, a numpy Generator or a tensor.

    The same int always gives the same seed, so ``action(..., seed=7)`` repeats itself.
    """
    if isinstance(seed, np.random.Generator):
        return tf.constant(seed.integers(-(2**31), 2**31, size=2, dtype=np.int64), tf.int32)
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        value = int(seed)
        state = np.random.SeedSequence([abs(value), int(value < 0)]).generate_state(2)
        return tf.constant(state.view(np.int32))
    if tf.is_tensor(seed) or isinstance(seed, (np.ndarray, list, tuple)):
        tensor = tf.convert_to_tensor(seed)
        if not tensor.dtype.is_integer or not tensor.shape.is_compatible_with([2]):
            raise SpecMismatchError(
                "seed",
                "an int or an integer tensor of shape (2,)",
                f"{tensor.dtype.name} tensor of shape {tuple(tensor.shape.as_list())}",
            )
        return tf.cast(tensor, tf.int32)
    raise SpecMismatchError("seed", "None, an int, a numpy Generator or a [2] tensor", repr(seed))


def split_seed(seed: tf.Tensor, count: int) -> list[tf.Tensor]:
    """``count`` independent stateless seeds derived from ``seed``."""
    if count == 0:
        return []
    return tf.unstack(tf.random.experimental.stateless_split(seed, num=count), num=count)
