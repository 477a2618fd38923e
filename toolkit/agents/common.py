"""Pieces shared by the agents: loss info, Huber loss, target updates, schedules."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import tensorflow as tf

from toolkit import nest
from toolkit.errors import SpecMismatchError, StructureError
from toolkit.replay_buffer import Experience
from toolkit.specs import tensor_spec

__all__ = [
    "LossInfo",
    "check_experience",
    "experience_tensor_spec",
    "huber_loss",
    "linear_decay",
    "run_batches",
    "soft_update",
]


class LossInfo(NamedTuple):
    """What a train step returns: the scalar loss and a dict of extra scalars."""

    loss: tf.Tensor
    extra: Any = ()


def huber_loss(error: tf.Tensor, delta: float = 1.0) -> tf.Tensor:
    """Element-wise Huber loss: ``0.5 e^2`` for ``|e| <= delta``, else ``delta (|e| - delta/2)``."""
    abs_error = tf.abs(error)
    quadratic = tf.minimum(abs_error, delta)
    return 0.5 * tf.square(quadratic) + delta * (abs_error - quadratic)


def soft_update(
    targets: Sequence[tf.Variable], sources: Sequence[tf.Variable], tau: float
) -> tf.Operation:
    """``target = (1 - tau) * target + tau * source`` for paired variables (tau 1 copies)."""
    if len(targets) != len(sources):
        raise StructureError(
            "target variables", f"{len(sources)} variables like the source", f"{len(targets)}"
        )
    updates = []
    for target, source in zip(targets, sources, strict=True):
        if target.shape != source.shape:
            raise SpecMismatchError(
                target.name, f"shape {source.shape} (as {source.name})", f"{target.shape}"
            )
        if tau == 1.0:
            updates.append(target.assign(source))
        else:
            updates.append(target.assign((1.0 - tau) * target + tau * source))
    return tf.group(*updates)


def linear_decay(start: float, end: float, steps: int, counter: tf.Variable) -> Callable[[], Any]:
    """A no-argument callable: ``start`` moving linearly to ``end`` over ``steps`` of ``counter``.

    It reads ``counter`` each call, also inside a traced ``tf.function`` (e.g. an
    epsilon-greedy policy's epsilon following the agent's train step).
    """
    steps = max(int(steps), 1)

    def value() -> tf.Tensor:
        fraction = tf.minimum(tf.cast(counter, tf.float32) / float(steps), 1.0)
        return start + (end - start) * fraction

    return value


def experience_tensor_spec(time_step_spec: Any, action_spec: Any) -> Experience:
    """The TensorSpec of one Experience row (unbatched)."""
    observation = tensor_spec.from_spec(time_step_spec.observation)
    return Experience(
        observation=observation,
        action=tensor_spec.from_spec(action_spec),
        reward=tf.TensorSpec((), tf.float32, "reward"),
        discount=tf.TensorSpec((), tf.float32, "discount"),
        next_observation=observation,
    )


def check_experience(experience: Any, spec: Experience, who: str) -> int:
    """Checks a (traced) Experience against ``spec`` and returns its number of outer dims.

    Runs while a train function is traced, on static shapes, so a wrong batch fails
    with a message naming the field instead of deep inside a matmul.
    """
    if not isinstance(experience, Experience):
        raise StructureError(
            f"{who}.train experience",
            "an Experience(observation, action, reward, discount, next_observation)",
            type(experience).__name__,
        )
    nest.assert_same_structure(experience, spec, "experience")
    outer_rank = None
    for (path, s), value in zip(
        nest.flatten_with_paths(spec, "experience"), nest.flatten(experience), strict=True
    ):
        if value.dtype != s.dtype:
            raise SpecMismatchError(path, f"dtype {s.dtype.name}", value.dtype.name)
        rank = value.shape.rank - s.shape.rank
        if rank not in (1, 2) or not s.shape.is_compatible_with(value.shape[rank:]):
            raise SpecMismatchError(
                path,
                f"shape [B] + {tuple(s.shape.as_list())} or [K, B] + {tuple(s.shape.as_list())}",
                f"{tuple(value.shape.as_list())}",
            )
        if outer_rank is None:
            outer_rank = rank
        elif rank != outer_rank:
            raise SpecMismatchError(
                path, f"{outer_rank} outer dims like the other fields", f"{rank}"
            )
    return int(outer_rank)


def run_batches(
    experience: Experience,
    outer_rank: int,
    step_fn: Callable[[Experience], LossInfo],
    extra_keys: Sequence[str],
) -> LossInfo:
    """Runs ``step_fn`` on a ``[B]`` batch, or once per batch of ``[K, B]`` experience.

    Several gradient steps per call (K > 1) make one ``tf.function`` call do K steps:
    the per-call overhead is paid once. Returns the mean LossInfo over the K steps;
    ``step_fn`` must return ``LossInfo(loss, {key: scalar for key in extra_keys})``.
    """
    if outer_rank == 1:
        return step_fn(experience)
    count = tf.shape(experience.reward)[0]

    def body(i, loss, extra):
        info = step_fn(nest.map_structure(lambda x: x[i], experience))
        extra = {key: extra[key] + info.extra[key] for key in extra_keys}
        return i + 1, loss + info.loss, extra

    zero = tf.constant(0.0, tf.float32)
    _, loss, extra = tf.while_loop(
        lambda i, *_: i < count,
        body,
        (tf.constant(0), zero, {key: zero for key in extra_keys}),
    )
    scale = 1.0 / tf.cast(tf.maximum(count, 1), tf.float32)
    return LossInfo(loss * scale, {key: value * scale for key, value in extra.items()})
