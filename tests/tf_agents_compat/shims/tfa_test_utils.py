"""Stands for ``tf_agents.utils.test_utils`` in TF-Agents' rewritten tests (our code).

TF-Agents' tests use its ``TestCase`` (tf.test.TestCase with resource variables on, which
TF2 always has, and gin's config cleared, which this project has no use for), ``contains``
and ``main``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf


def contains(container: Any, items: Any) -> bool:
    """True when every item (an array or a value) equals some element of ``container``."""
    return all(any(np.all(item == element) for element in container) for item in items)


class TestCase(tf.test.TestCase):
    """tf.test.TestCase, as TF-Agents' tests extend it."""

    def initialize_v1_variables(self) -> None:
        """Nothing to do: TF2 variables are initialized when created."""


def main() -> None:
    tf.test.main()
