"""A uniform replay buffer over numpy arrays, and the writer that fills it (TF-free).

``ReplayBuffer`` is a ring buffer of nests (one preallocated array per leaf) with
uniform sampling from a seedable numpy Generator. ``state()``/``load_state()`` give
its position and contents as plain arrays, which ``toolkit.agents.checkpoints`` puts in
training checkpoints.

``ExperienceWriter`` is a driver observer: it turns ``Transition``s into ``Experience``
rows (optionally n-step), dropping boundary transitions. With n-step returns the
row's ``reward`` is ``sum_j gamma**j * r_{t+j}`` and its ``discount`` is
``gamma**(m-1) * prod_j d_{t+j}`` over the ``m <= n`` steps it spans, so that an agent's
target is always ``reward + gamma * discount * value(next_observation)``; for n = 1
these are just the step's reward and discount.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from toolkit import nest
from toolkit.errors import ArgumentError, EmptyBufferError, SpecMismatchError
from toolkit.specs import array_spec
from toolkit.specs.array_spec import ArraySpec

__all__ = ["Experience", "ExperienceWriter", "ReplayBuffer", "experience_spec"]


@array_spec.register_namedtuple
class Experience(NamedTuple):
    """Transitions for off-policy learning; every field is batched the same way."""

    observation: Any
    action: Any
    reward: Any
    discount: Any
    next_observation: Any


def experience_spec(time_step_spec: Any, action_spec: Any) -> Experience:
    """The spec of one Experience row for an environment's time step and action specs."""
    to_array = array_spec.as_array_spec
    observation = nest.map_structure(to_array, time_step_spec.observation)
    return Experience(
        observation=observation,
        action=nest.map_structure(to_array, action_spec),
        reward=ArraySpec((), np.float32, "reward"),
        discount=ArraySpec((), np.float32, "discount"),
        next_observation=observation,
    )


class ReplayBuffer:
    """A fixed-capacity ring buffer of nests with uniform sampling.

    Args:
      data_spec: a nest of array specs describing one item (e.g. ``experience_spec``).
      capacity: how many items it holds; the oldest are overwritten first.
      seed: seeds the sampling generator.
    """

    def __init__(self, data_spec: Any, capacity: int, seed: int | None = None):
        if int(capacity) < 1:
            raise ArgumentError(f"capacity: expected a positive int, got {capacity}")
        self.data_spec = data_spec
        self.capacity = int(capacity)
        self._specs = nest.flatten(data_spec)
        self._paths = [path for path, _ in nest.flatten_with_paths(data_spec)]
        self._storage = [np.zeros((self.capacity, *s.shape), s.dtype) for s in self._specs]
        self._position = 0
        self._size = 0
        self._num_added = 0
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return self._size

    @property
    def position(self) -> int:
        """Where the next item goes."""
        return self._position

    @property
    def num_added(self) -> int:
        """Items added since creation (or the last ``clear``), overwritten ones included."""
        return self._num_added

    def add_batch(self, items: Any) -> None:
        """Adds items whose leaves all have one leading batch dimension."""
        nest.assert_same_structure(items, self.data_spec)
        leaves = [np.asarray(x) for x in nest.flatten(items)]
        n = leaves[0].shape[0] if leaves and leaves[0].ndim else None
        for path, spec, leaf in zip(self._paths, self._specs, leaves, strict=True):
            if n is None or leaf.shape != (n, *spec.shape):
                want = f"shape (batch, {', '.join(map(str, spec.shape))})".replace(", )", ")")
                raise SpecMismatchError(
                    path, want if n is None else f"shape {(n, *spec.shape)}", f"{leaf.shape}"
                )
        if n == 0:
            return
        if n > self.capacity:  # only the newest items survive, where they would have landed
            skipped = n - self.capacity
            leaves = [leaf[skipped:] for leaf in leaves]
            self._position = (self._position + skipped) % self.capacity
            self._num_added += skipped
            n = self.capacity
        index = (self._position + np.arange(n)) % self.capacity
        for storage, leaf in zip(self._storage, leaves, strict=True):
            storage[index] = leaf
        self._position = int((self._position + n) % self.capacity)
        self._size = min(self._size + n, self.capacity)
        self._num_added += n

    def add(self, item: Any) -> None:
        """Adds one unbatched item."""
        self.add_batch(nest.map_structure(lambda x: np.asarray(x)[None], item))

    def sample(self, batch_size: int, num_batches: int | None = None) -> Any:
        """Uniformly samples items (with replacement).

        Returns:
          The data nest with leaves of shape ``[batch_size, ...]``, or
          ``[num_batches, batch_size, ...]`` when ``num_batches`` is given.
        """
        if self._size == 0:
            raise EmptyBufferError("sample: the replay buffer is empty")
        shape = (batch_size,) if num_batches is None else (num_batches, batch_size)
        index = self.rng.integers(0, self._size, size=shape)
        return nest.pack_sequence_as(self.data_spec, [s[index] for s in self._storage])

    def gather_all(self) -> Any:
        """Every stored item, oldest first."""
        start = self._position if self._size == self.capacity else 0
        index = (start + np.arange(self._size)) % self.capacity
        return nest.pack_sequence_as(self.data_spec, [s[index] for s in self._storage])

    def clear(self) -> None:
        self._position = self._size = self._num_added = 0

    def state(self) -> dict[str, np.ndarray]:
        """Position, size, count, sampler state and contents, as named plain arrays."""
        state = {
            "position": np.int64(self._position),
            "size": np.int64(self._size),
            "num_added": np.int64(self._num_added),
            "capacity": np.int64(self.capacity),
            # The generator's state as uint64 words, to resume the same sample stream.
            "rng": _rng_to_array(self.rng),
        }
        for path, storage in zip(self._paths, self._storage, strict=True):
            state[f"data/{path}"] = storage[: self._size]
        return state

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        """Restores what ``state()`` returned (same data spec and capacity)."""
        capacity = int(state["capacity"])
        if capacity != self.capacity:
            raise SpecMismatchError("replay buffer capacity", str(self.capacity), str(capacity))
        size = int(state["size"])
        for path, spec, storage in zip(self._paths, self._specs, self._storage, strict=True):
            key = f"data/{path}"
            if key not in state:
                raise SpecMismatchError(key, "a stored array", "nothing")
            data = np.asarray(state[key])
            if data.shape != (size, *spec.shape) or data.dtype != spec.dtype:
                raise SpecMismatchError(
                    key,
                    f"shape {(size, *spec.shape)} dtype {spec.dtype.name}",
                    f"shape {data.shape} dtype {data.dtype.name}",
                )
            storage[:size] = data
        self._position = int(state["position"])
        self._size = size
        self._num_added = int(state["num_added"])
        _rng_from_array(self.rng, np.asarray(state["rng"]))


def _rng_to_array(rng: np.random.Generator) -> np.ndarray:
    s = rng.bit_generator.state
    if s.get("bit_generator") != "PCG64":
        return np.zeros(0, np.uint64)
    words = [s["state"]["state"], s["state"]["inc"], s["has_uint32"], s["uinteger"]]
    # 128-bit integers split into two 64-bit words each.
    out = []
    for w in words[:2]:
        out += [w >> 64, w & (2**64 - 1)]
    out += words[2:]
    return np.array(out, dtype=np.uint64)


def _rng_from_array(rng: np.random.Generator, words: np.ndarray) -> None:
    if words.size != 6 or rng.bit_generator.state.get("bit_generator") != "PCG64":
        return
    w = [int(x) for x in words]
    rng.bit_generator.state = {
        "bit_generator": "PCG64",
        "state": {"state": (w[0] << 64) | w[1], "inc": (w[2] << 64) | w[3]},
        "has_uint32": w[4],
        "uinteger": w[5],
    }


class ExperienceWriter:
    """A driver observer that writes Experience rows into a replay buffer.

    Boundary transitions (the environment reset) are dropped. With ``n_step > 1``, each
    batch entry keeps a window of its last steps (ring arrays, updated for the whole
    batch at once) and writes a row per step once the window is full, and the remaining
    rows when its episode ends.

    Args:
      buffer: the ReplayBuffer, built with ``experience_spec(...)``.
      n_step: how many steps each row spans.
      gamma: the discount per step folded into n-step rows.
    """

    def __init__(self, buffer: ReplayBuffer, n_step: int = 1, gamma: float = 0.99):
        if int(n_step) < 1:
            raise ArgumentError(f"n_step: expected an int >= 1, got {n_step}")
        self.buffer = buffer
        self.n_step = int(n_step)
        self.gamma = float(gamma)
        self._batch: int | None = None

    def __call__(self, transition: Any) -> None:
        time_step, action_step, next_time_step = transition
        batched = np.ndim(time_step.step_type) > 0
        add_dim = (lambda x: x) if batched else (lambda x: np.asarray(x)[None])
        observation = nest.map_structure(add_dim, time_step.observation)
        next_observation = nest.map_structure(add_dim, next_time_step.observation)
        action = nest.map_structure(add_dim, action_step.action)
        reward = np.asarray(add_dim(next_time_step.reward), np.float32)
        discount = np.asarray(add_dim(next_time_step.discount), np.float32)
        keep = np.reshape(np.not_equal(time_step.step_type, 2), -1)  # 2 == StepType.LAST
        if self.n_step == 1:
            if keep.all():
                rows = Experience(observation, action, reward, discount, next_observation)
            else:

                def take(x):
                    return x[keep]

                rows = Experience(
                    nest.map_structure(take, observation),
                    nest.map_structure(take, action),
                    reward[keep],
                    discount[keep],
                    nest.map_structure(take, next_observation),
                )
            self.buffer.add_batch(rows)
            return
        ended = np.reshape(np.equal(next_time_step.step_type, 2), -1) & keep
        self._append(observation, action, reward, discount, keep)
        rows = [self._full_rows(next_observation, keep & ~ended)]
        rows += [self._flush(i, next_observation) for i in np.flatnonzero(ended)]
        rows = [r for r in rows if r is not None]
        if rows:
            self.buffer.add_batch(rows[0] if len(rows) == 1 else nest.map_structure(_concat, *rows))

    def _append(self, observation, action, reward, discount, keep) -> None:
        batch = len(keep)
        if self._batch != batch:
            self._init_windows(observation, action, batch)
        rows = np.flatnonzero(keep)
        slots = (self._start[rows] + self._count[rows]) % self.n_step

        def put(window, value):
            window[slots, rows] = value[rows]

        nest.map_structure(put, self._observations, observation)
        nest.map_structure(put, self._actions, action)
        self._rewards[slots, rows] = reward[rows]
        self._discounts[slots, rows] = discount[rows]
        self._count[rows] += 1

    def _init_windows(self, observation, action, batch: int) -> None:
        n = self.n_step

        def window(x):
            return np.zeros((n, batch) + np.shape(x)[1:], np.asarray(x).dtype)

        self._observations = nest.map_structure(window, observation)
        self._actions = nest.map_structure(window, action)
        self._rewards = np.zeros((n, batch), np.float32)
        self._discounts = np.zeros((n, batch), np.float32)
        self._start = np.zeros(batch, np.int64)
        self._count = np.zeros(batch, np.int64)
        self._batch = batch

    def _returns(self, rewards: np.ndarray, discounts: np.ndarray):
        """n-step rewards and discounts of windows ``[rows, m]``, oldest step first."""
        ones = np.ones_like(discounts[:, :1])
        scales = np.cumprod(np.concatenate([ones, self.gamma * discounts[:, :-1]], 1), axis=1)
        total = np.sum(scales * rewards, axis=1).astype(np.float32)
        return total, (scales[:, -1] * discounts[:, -1]).astype(np.float32)

    def _full_rows(self, next_observation, candidates) -> Experience | None:
        rows = np.flatnonzero(candidates & (self._count == self.n_step))
        if rows.size == 0:
            return None
        start = self._start[rows]
        slots = (start[:, None] + np.arange(self.n_step)) % self.n_step
        total, discount = self._returns(
            self._rewards[slots, rows[:, None]], self._discounts[slots, rows[:, None]]
        )
        row = Experience(
            nest.map_structure(lambda w: w[start, rows], self._observations),
            nest.map_structure(lambda w: w[start, rows], self._actions),
            total,
            discount,
            nest.map_structure(lambda x: x[rows], next_observation),
        )
        self._start[rows] = (start + 1) % self.n_step
        self._count[rows] -= 1
        return row

    def _flush(self, i: int, next_observation) -> Experience | None:
        """Every remaining row of entry ``i``, whose episode just ended."""
        count, start = int(self._count[i]), int(self._start[i])
        self._start[i], self._count[i] = 0, 0
        if count == 0:
            return None
        slots = (start + np.arange(count)) % self.n_step  # oldest first
        rewards, discounts = self._rewards[slots, i], self._discounts[slots, i]
        # Row j spans steps j .. count-1: all end at the episode's last observation.
        returns = [self._returns(rewards[None, j:], discounts[None, j:]) for j in range(count)]
        return Experience(
            nest.map_structure(lambda w: w[slots, i], self._observations),
            nest.map_structure(lambda w: w[slots, i], self._actions),
            np.concatenate([total for total, _ in returns]),
            np.concatenate([discount for _, discount in returns]),
            nest.map_structure(lambda x: np.repeat(x[i : i + 1], count, axis=0), next_observation),
        )

    def reset(self) -> None:
        """Forgets partial windows (e.g. after restoring a checkpoint mid-episode)."""
        self._batch = None


def _concat(*values: Any) -> np.ndarray:
    return np.concatenate(values, axis=0)
