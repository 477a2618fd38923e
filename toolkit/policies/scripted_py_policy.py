"""ScriptedPyPolicy: plays back a script of ``(num_repeats, action)`` entries (TF-free)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from toolkit import nest
from toolkit.errors import ScriptExhaustedError, SpecError, SpecMismatchError
from toolkit.policies import py_policy
from toolkit.specs import array_spec
from toolkit.specs.array_spec import ArraySpec, BoundedArraySpec
from toolkit.trajectories.policy_step import PolicyStep

__all__ = ["ScriptedPyPolicy"]

_STATE_SPEC = ArraySpec((2,), np.int32, name="script_position")


class ScriptedPyPolicy(py_policy.PyPolicy):
    """Returns each scripted action ``num_repeats`` times, then moves to the next entry.

    Entries with zero repeats are skipped. The state is ``[entry index, repeats done]``
    (per batch entry when batched); ``get_initial_state()`` starts the script over.
    When the script runs out, ``action`` raises ScriptExhaustedError, unless built
    with ``loop=True``, which starts the script over.

    Args:
      time_step_spec: the TimeStep spec, or None.
      action_spec: a nest of array specs; every scripted action is checked against it
        when the policy is built.
      action_script: a sequence of ``(num_repeats, action)``.
      loop: start over instead of raising when the script runs out.
    """

    def __init__(
        self,
        time_step_spec: Any,
        action_spec: Any,
        action_script: Sequence[tuple[int, Any]],
        *,
        loop: bool = False,
        validate_args: bool = True,
    ):
        super().__init__(time_step_spec, action_spec, _STATE_SPEC, validate_args=validate_args)
        self._script = _check_script(action_script, self.action_spec)
        self._loop = loop
        if self._loop and not any(n > 0 for n, _ in self._script):
            raise SpecError("a looping script needs at least one entry with num_repeats > 0")

    @property
    def action_script(self) -> list[tuple[int, Any]]:
        return list(self._script)

    def _action(self, time_step: Any, policy_state: Any, seed: py_policy.Seed) -> PolicyStep:
        del seed  # Scripts are deterministic.
        state = np.array(policy_state, dtype=np.int32, copy=True)
        rows = state.reshape(-1, 2)
        actions = []
        for row in rows:
            actions.append(self._advance(row))
        state = rows.reshape(state.shape)
        outer = state.shape[:-1]
        if outer:
            action = nest.map_structure(
                lambda *xs: np.stack(xs).reshape(outer + xs[0].shape), *actions
            )
        else:
            action = actions[0]
        return PolicyStep(action, state, ())

    def _advance(self, row: np.ndarray) -> Any:
        """Advances one ``[index, repeats]`` row in place; returns the action to play."""
        index, repeats = int(row[0]), int(row[1])
        while True:
            if index >= len(self._script):
                if not self._loop:
                    raise ScriptExhaustedError(
                        f"the action script ran out: it holds {self._total()} actions in "
                        f"{len(self._script)} entries; call get_initial_state() to start over "
                        "or build the policy with loop=True (Episode is longer than the "
                        "provided scripted policy)"
                    )
                index, repeats = 0, 0
            num_repeats, action = self._script[index]
            if repeats < num_repeats:
                row[0], row[1] = index, repeats + 1
                return action
            index, repeats = index + 1, 0

    def _total(self) -> int:
        return sum(n for n, _ in self._script)

    def _update(self, policy: py_policy.PyPolicy) -> None:
        if not isinstance(policy, ScriptedPyPolicy):
            raise SpecMismatchError("policy", "a ScriptedPyPolicy", type(policy).__name__)
        self._script = list(policy._script)
        self._loop = policy._loop


def _check_script(script: Sequence[tuple[int, Any]], action_spec: Any) -> list[tuple[int, Any]]:
    checked = []
    for i, entry in enumerate(script):
        where = f"action_script[{i}]"
        if not isinstance(entry, (tuple, list)) or len(entry) != 2:
            raise SpecMismatchError(where, "a (num_repeats, action) pair", repr(entry))
        num_repeats, action = entry
        if isinstance(num_repeats, bool) or not isinstance(num_repeats, (int, np.integer)):
            raise SpecMismatchError(where, "num_repeats as a non-negative int", repr(num_repeats))
        if num_repeats < 0:
            raise SpecMismatchError(where, "num_repeats as a non-negative int", repr(num_repeats))
        nest.assert_same_structure(action, action_spec, where)
        arrays = []
        for (path, spec), value in zip(
            nest.flatten_with_paths(action_spec, where),
            nest.flatten_up_to(action_spec, action),
            strict=True,
        ):
            spec = array_spec.as_array_spec(spec)
            array, _ = spec.conform(value, path, outer_dims=())
            if isinstance(spec, BoundedArraySpec):
                spec.check_bounds(array, path)
            arrays.append(array)
        checked.append((int(num_repeats), nest.pack_sequence_as(action_spec, arrays)))
    return checked
