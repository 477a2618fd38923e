"""Server-held state of recurrent policies, keyed by sequence id (Triton's convention).

A request that carries ``sequence_id`` (with ``sequence_start`` on its first step and
``sequence_end`` on its last, as Triton's sequence batcher reads them) leaves its
``policy_state/...`` inputs to the server: the server keeps each sequence's state
between requests, starts it at the policy's initial state on ``sequence_start``, and
drops it after the request with ``sequence_end``. Sequences idle for more than
``idle_seconds`` are evicted; a new one past ``max_sequences`` is refused. Requests of
one sequence run one at a time, in arrival order. Every protocol that can carry the
flags (KServe v2 over REST and gRPC) uses this one store, through ``ServingCore.run``.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from toolkit.errors import ErrorKind, ServingError
from toolkit.trajectories.time_step import StepType

__all__ = ["STATE_IN", "STATE_OUT", "SequenceFlags", "Sequences", "parse_flags"]

STATE_IN = "policy_state/"
STATE_OUT = "next_state/"


@dataclasses.dataclass(frozen=True)
class SequenceFlags:
    """A request's sequence: its id (a non-zero integer or a non-empty string) and flags."""

    id: int | str
    start: bool = False
    end: bool = False


def parse_flags(parameters: dict[str, Any]) -> SequenceFlags | None:
    """The sequence flags among a request's parameters (None: not a sequence's request).

    Raises:
      ServingError: (invalid argument) for an id that is neither a whole number nor a
        string, or flags that are not booleans.
    """
    if "sequence_id" not in parameters:
        for flag in ("sequence_start", "sequence_end"):
            if parameters.get(flag):
                raise ServingError(f"parameters/{flag}: given without a sequence_id")
        return None
    sid = parameters["sequence_id"]
    if isinstance(sid, bool) or not isinstance(sid, int | str):
        raise ServingError(
            f"parameters/sequence_id: expected an integer or a string, got {sid!r:.40}"
        )
    if sid == 0 or sid == "":  # Triton's "no sequence"
        return None
    if isinstance(sid, str) and len(sid) > 256:
        raise ServingError(
            f"parameters/sequence_id: expected at most 256 characters, got {len(sid)}"
        )
    flags = {}
    for flag in ("sequence_start", "sequence_end"):
        value = parameters.get(flag, False)
        if not isinstance(value, bool):
            raise ServingError(f"parameters/{flag}: expected true or false, got {value!r:.40}")
        flags[flag] = value
    return SequenceFlags(sid, flags["sequence_start"], flags["sequence_end"])


class _Entry:
    __slots__ = ("lock", "state", "used")

    def __init__(self, state: dict[str, np.ndarray]):
        self.state = state
        self.used = time.monotonic()
        self.lock = asyncio.Lock()


class Sequences:
    """The sequences in progress, per model.

    Args:
      idle_seconds: a sequence unused this long is evicted.
      max_sequences: the most sequences held at once (over every model).
    """

    def __init__(self, idle_seconds: float = 60.0, max_sequences: int = 1024):
        self.idle_seconds = idle_seconds
        self.max_sequences = max_sequences
        # (model, id) -> entry, least recently used first
        self._entries: collections.OrderedDict[tuple[str, Any], _Entry] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def _evict(self) -> None:
        cutoff = time.monotonic() - self.idle_seconds
        entries = self._entries
        while entries:
            key, entry = next(iter(entries.items()))
            if entry.used > cutoff or entry.lock.locked():
                break
            del entries[key]

    async def run(
        self,
        model: str,
        flags: SequenceFlags,
        signature: Any,
        arrays: dict[str, np.ndarray],
        initial: Callable[[], dict[str, np.ndarray]],
        run: Callable[[dict[str, np.ndarray]], Awaitable[dict[str, Any]]],
    ) -> dict[str, Any]:
        """Runs one step of a sequence: its state in, the next state kept.

        Args:
          model: the model's name (sequence ids are per model).
          flags: the request's sequence flags.
          signature: the signature run (its ``policy_state/...`` inputs are the state).
          arrays: the request's decoded inputs, without state.
          initial: the policy's initial state for one row, as flat ``policy_state/...``.
          run: ``arrays -> outputs`` (``ServingCore.run`` without sequences).

        Raises:
          ServingError: state inputs given with a sequence id, a batch other than 1
            (invalid argument); an unknown sequence (not found); a new sequence past
            ``max_sequences`` (unavailable).
        """
        where = f"sequence {flags.id!r} of model {model}"
        state_names = [n for n in signature.inputs if n.startswith(STATE_IN)]
        given = sorted(n for n in arrays if n.startswith(STATE_IN))
        if given:
            raise ServingError(
                f"{where}: the server holds the state, got {given[0]} as an input "
                "(send either a sequence_id or the state)"
            )
        for name, array in arrays.items():
            if signature.batched and np.ndim(array) and np.shape(array)[0] != 1:
                raise ServingError(
                    f"{where}: {name}: expected a batch of 1 (one step of one sequence), "
                    f"got {np.shape(array)[0]}"
                )
        key = (model, flags.id)
        self._evict()
        entry = self._entries.get(key)
        if entry is None:
            if not flags.start:
                raise ServingError(
                    f"{where}: unknown sequence (its first request must set sequence_start; "
                    f"ended or evicted after {self.idle_seconds:g} s idle "
                    "(--sequence-idle-seconds) ones are gone)",
                    ErrorKind.NOT_FOUND,
                )
            if len(self._entries) >= self.max_sequences:
                raise ServingError(
                    f"{where}: the server holds {len(self._entries)} sequences, its "
                    f"--max-sequences; end one (sequence_end) or retry after idle ones are "
                    f"evicted ({self.idle_seconds:g} s, --sequence-idle-seconds)",
                    ErrorKind.UNAVAILABLE,
                )
            entry = _Entry({})
            self._entries[key] = entry
        async with entry.lock:
            if flags.start:
                entry.state = initial() if state_names else {}
                if "step_type" in signature.inputs and "step_type" not in arrays:
                    spec = signature.inputs["step_type"]
                    arrays = {**arrays, "step_type": np.full((1,), StepType.FIRST, spec.dtype)}
            inputs = {**arrays, **{n: entry.state[n] for n in state_names}}
            try:
                outputs = await run(inputs)
            except BaseException:
                if flags.start and self._entries.get(key) is entry:
                    del self._entries[key]  # a start that failed holds nothing
                raise
            for name in state_names:
                out = STATE_OUT + name[len(STATE_IN) :]
                if out in outputs:
                    entry.state[name] = np.asarray(outputs[out])
            entry.used = time.monotonic()
            if self._entries.get(key) is entry:
                if flags.end:
                    del self._entries[key]
                else:
                    self._entries.move_to_end(key)
        return outputs
