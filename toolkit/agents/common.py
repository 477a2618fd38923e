"""Pieces shared by the agents: the Agent base, loss info, Huber loss, target updates,
schedules."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import tensorflow as tf

from toolkit import nest
from toolkit.errors import SpecError, SpecMismatchError, StructureError
from toolkit.replay_buffer import Experience
from toolkit.specs import tensor_spec

__all__ = [
    "Agent",
    "LossInfo",
    "apply_gradients",
    "check_experience",
    "check_target_update",
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


class Agent(tf.Module):
    """What every agent shares: specs, the train-step counter, the ``train`` function.

    Subclasses call ``__init__`` first, build their networks and policies, then
    ``_make_train(self._train, jit_compile)``; they implement ``_train`` and
    ``policy_config``.

    Args:
      time_step_spec: the environment's TimeStep spec (array or tensor specs).
      action_spec: the action spec nest.
      train_step_counter: an int64 variable counting gradient steps; a new one by default.
      name: module name.
    """

    def __init__(
        self,
        time_step_spec: Any,
        action_spec: Any,
        train_step_counter: tf.Variable | None = None,
        name: str | None = None,
    ):
        super().__init__(name=name)
        time_step_spec = tensor_spec.from_spec(time_step_spec)
        action_spec = tensor_spec.from_spec(action_spec)
        self._set_plain("time_step_spec", time_step_spec)
        self._set_plain("action_spec", action_spec)
        self._set_plain("experience_spec", experience_tensor_spec(time_step_spec, action_spec))
        self.train_step_counter = (
            train_step_counter
            if train_step_counter is not None
            else tf.Variable(0, dtype=tf.int64, trainable=False, name="train_step")
        )

    def _set_plain(self, name: str, value: Any) -> None:
        # Spec nests stay plain Python: tf.Module would wrap them in tracking proxies.
        object.__setattr__(self, "_" + name, value)

    @property
    def time_step_spec(self) -> Any:
        return self._time_step_spec

    @property
    def action_spec(self) -> Any:
        return self._action_spec

    @property
    def observation_and_action_constraint_splitter(self) -> Callable[[Any], Any] | None:
        """The action-mask splitter the agent was built with (TF-Agents' argument), or None."""
        return getattr(self, "_splitter", None)

    @property
    def experience_spec(self) -> Experience:
        """The TensorSpec of one Experience row that an off-policy ``train`` takes."""
        return self._experience_spec

    def _make_train(self, function: Callable[..., Any], jit_compile: bool) -> None:
        # No autograph: the steps use explicit tf.while_loop/tf.cond, and spec errors raised
        # while tracing then reach the caller as they are.
        self.train = tf.function(function, jit_compile=bool(jit_compile), autograph=False)

    def _update_targets(self, pairs: Sequence[tuple[Any, Any]], tau: float, period: int) -> None:
        """Soft-updates each ``(target, source)`` network pair every ``period`` train steps."""

        def update() -> None:
            for target, source in pairs:
                soft_update(target.variables, source.variables, tau)

        if period == 1:
            update()
        else:
            tf.cond(tf.equal(self.train_step_counter % period, 0), update, lambda: None)

    def policy_config(self) -> dict[str, Any]:
        """The policy_spec.json content that lets ``checkpoints.load_policy`` rebuild ``policy``."""
        raise NotImplementedError


def check_target_update(tau: float, period: int) -> None:
    """Raises SpecError unless ``0 < tau <= 1`` and ``period >= 1``."""
    if not 0.0 < float(tau) <= 1.0:
        raise SpecError(f"target_update_tau: expected a value in (0, 1], got {tau}")
    if int(period) < 1:
        raise SpecError(f"target_update_period: expected >= 1, got {period}")


def apply_gradients(
    optimizer: Any, loss_gradients: Sequence[Any], variables: Sequence[tf.Variable], clipping
) -> None:
    """Applies gradients, clipped to the global norm ``clipping`` unless it is None."""
    gradients = list(loss_gradients)
    if clipping is not None:
        gradients, _ = tf.clip_by_global_norm(gradients, clipping)
    optimizer.apply_gradients(zip(gradients, variables, strict=True))


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
