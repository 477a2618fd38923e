"""Real states: the graph inputs of states a policy really meets, and where they came from.

* ``states_from_env``: episodes of the float policy in a gymnasium environment (episode
  i resets with ``seed + i``); every time step it acted on (with its policy state, for
  stateful policies) is kept.
* ``states_from_file``: an ``.npz`` the user recorded (``observation`` or
  ``observation/<key>`` arrays with one row per state; optional ``step_type``,
  ``reward``, ``discount`` and ``policy_state/...``), read by ``recorded.Npz`` with
  every declared shape checked before any data is read.

Calibration uses other real states than those measured: a second set of episodes
(``CALIBRATION_SEED_OFFSET``) or the first half of a file's rows (``RealStates.split``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from exporters import graph_io
from exporters.quantize import recorded
from exporters.quantize.source import FloatBundle
from toolkit import nest
from toolkit.environments import episodes as episodes_lib
from toolkit.errors import ExportError

__all__ = [
    "CALIBRATION_SEED_OFFSET",
    "MAX_STATES",
    "RealStates",
    "states_from_env",
    "states_from_file",
]

#: Largest number of states kept from rollouts (evenly thinned beyond).
MAX_STATES = 20_000
#: Calibration episode i (env) resets with seed + CALIBRATION_SEED_OFFSET + i.
CALIBRATION_SEED_OFFSET = 1_000_000


@dataclasses.dataclass
class RealStates:
    """Graph inputs of states a policy really meets, by flat input name, one row each.

    Attributes:
      inputs: ``{input name: array [N, ...]}`` for every graph input (policy states too).
      source: where they came from, for the report.
      env_id, episodes, seed: the rollouts' set-up (env only).
      float_return: the float policy's mean return over them (env only).
    """

    inputs: dict[str, np.ndarray]
    source: str
    env_id: str | None = None
    episodes: int = 0
    seed: int = 0
    float_return: float | None = None

    @property
    def count(self) -> int:
        return len(next(iter(self.inputs.values())))

    def batches(self, size: int) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, self.count, size):
            yield {k: v[start : start + size] for k, v in self.inputs.items()}

    def split(self) -> tuple[RealStates, RealStates]:
        """(calibration, measured): the first and the second half of the rows.

        One row calibrates and is measured too (said in both sources).
        """
        count = self.count
        if count < 2:
            same = dataclasses.replace(self, source=f"{self.source} (also calibrated on)")
            return same, same
        half = count // 2
        first = {k: v[:half] for k, v in self.inputs.items()}
        second = {k: v[half:] for k, v in self.inputs.items()}
        return (
            dataclasses.replace(
                self, inputs=first, source=f"{self.source}: rows 0-{half - 1} calibrate"
            ),
            dataclasses.replace(
                self, inputs=second, source=f"{self.source}: rows {half}-{count - 1} measured"
            ),
        )


class _Recorder:
    """A policy that plays as the wrapped one and keeps every graph input it was given."""

    def __init__(self, policy: Any, dtypes: dict[str, tuple[np.dtype, list]]):
        self.policy = policy
        self.dtypes = dtypes
        self.rows: list[dict[str, np.ndarray]] = []

    def get_initial_state(self, batch_size: int | None = None) -> Any:
        return self.policy.get_initial_state(batch_size)

    def action(self, time_step: Any, policy_state: Any = ()) -> Any:
        flat = dict(nest.flatten_with_paths(time_step))
        flat.update(nest.flatten_with_paths(policy_state, "policy_state"))
        row = {}
        for name, (dtype, _) in self.dtypes.items():
            value = np.asarray(flat[name], dtype)
            row[name] = value.reshape((-1, *value.shape[1:])) if value.ndim else value[None]
        self.rows.append(row)
        return self.policy.action(time_step, policy_state)


def states_from_env(source: FloatBundle, env_id: str, episodes: int, seed: int) -> RealStates:
    """Rollouts of the bundle's float policy (loaded afresh: a sampling policy's draws
    start from its seed again); every state it acted on."""
    policy = source.float_policy()
    env = episodes_lib.make_env(env_id, 1)
    try:
        episodes_lib.check_compatible(policy, env, env_id)
    finally:
        env.close()
    recorder = _Recorder(policy, source.inputs)
    returns = episodes_lib.play(recorder, env_id, episodes, seed).returns
    inputs = {
        name: np.concatenate([row[name] for row in recorder.rows]) for name in recorder.dtypes
    }
    count = len(inputs["step_type"])
    if count > MAX_STATES:
        keep = np.linspace(0, count - 1, MAX_STATES).astype(np.int64)
        inputs = {k: v[keep] for k, v in inputs.items()}
    _check_finite(inputs, env_id)
    return RealStates(
        inputs,
        f"{env_id}: {len(returns)} episodes of the float policy (seeds {seed}..."
        f"{seed + episodes - 1})",
        env_id=env_id,
        episodes=episodes,
        seed=seed,
        float_return=float(np.mean(returns)),
    )


def states_from_file(path: Path, source: FloatBundle) -> RealStates:
    """States recorded by the user: an .npz of observation arrays, one row per state.

    Missing ``step_type`` means MID steps (FIRST for the first row of a stateful
    policy), missing ``reward``/``discount`` zeros/ones; for a stateful policy without
    ``policy_state/...`` arrays the rows are taken as one sequence and the float graph
    computes the states. Names, shapes and dtypes are checked on the arrays' headers,
    before their data is read.
    """
    dtypes = source.inputs
    with recorded.Npz(path) as npz:
        declared = npz.arrays
        observation_names = [
            n for n in dtypes if n == "observation" or n.startswith("observation/")
        ]
        missing = [n for n in observation_names if n not in declared]
        if missing:
            raise ExportError(
                f"{path}: expected arrays {observation_names} (one row per state), "
                f"missing {missing}; found {_names(declared)}"
            )
        unknown = sorted(set(declared) - set(dtypes))
        if unknown:
            raise ExportError(
                f"{path}: unexpected arrays {_names(unknown)}; the graph takes {list(dtypes)}"
            )
        count = declared[observation_names[0]].shape[0]
        if count < 1:
            raise ExportError(f"{path}: expected at least one state, got 0 rows")
        for name, (dtype, inner) in dtypes.items():
            if name in declared:
                _check_declared(path, name, declared[name], count, dtype, inner)
        arrays = {name: npz.read(name) for name in dtypes if name in declared}
    stateful = any(n.startswith("policy_state/") for n in dtypes)
    inputs = {}
    for name, (dtype, inner) in dtypes.items():
        if name in arrays:
            value = arrays[name]
        elif name == "step_type":
            value = np.ones(count, np.int32)
            if stateful:
                value[0] = 0
        elif name == "discount":
            value = np.ones(count, np.float32)
        elif name == "reward" or name.startswith("policy_state/"):
            value = np.zeros((count, *[d or 1 for d in inner]), dtype)
        else:  # pragma: no cover - every input is one of the above
            raise ExportError(f"{path}: missing array {name!r}")
        inputs[name] = value.astype(dtype, copy=False)
    _check_finite(inputs, str(path))
    if stateful and not any(n.startswith("policy_state/") for n in arrays):
        inputs = _sequence_states(source, inputs)
    return RealStates(inputs, f"{path.name}: {count} recorded states")


def _names(names: Any, shown: int = 20) -> str:
    names = sorted(names)
    more = len(names) - shown
    return str(names[:shown]) + (f" and {more} more" if more > 0 else "")


def _check_declared(
    path: Path, name: str, declared: recorded.Declared, count: int, dtype: np.dtype, inner: list
) -> None:
    shape = declared.shape
    if shape[:1] != (count,) or (
        all(d is not None for d in inner) and tuple(shape[1:]) != tuple(inner)
    ):
        raise ExportError(
            f"{path}: {name}: expected shape ({count}, {', '.join(map(str, inner))}), got {shape}"
        )
    kind = declared.dtype.kind
    if kind != dtype.kind and not (kind in "iu" and dtype.kind in "iu"):
        raise ExportError(f"{path}: {name}: expected {dtype.name} values, got {declared.dtype}")


def _check_finite(inputs: dict[str, np.ndarray], where: str) -> None:
    """Calibration and agreement need numbers: NaN or infinity is refused, naming the row."""
    for name, value in inputs.items():
        if value.dtype.kind != "f" or not len(value):
            continue
        flat = value.reshape(len(value), -1)
        bad = ~np.isfinite(flat)
        rows = bad.any(axis=1)
        if rows.any():
            row = int(np.argmax(rows))
            raise ExportError(
                f"{where}: {name}: expected finite values, got {flat[row][bad[row]][0]} in row "
                f"{row} ({int(rows.sum())} of {len(value)} rows hold NaN or infinity)"
            )


def _sequence_states(source: FloatBundle, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The policy states along one recorded sequence, from the float graph."""
    run = source.float_runner()
    state = graph_io.initial_state(source.layout, 1)
    out = {k: v.copy() for k, v in inputs.items()}
    for i in range(len(inputs["step_type"])):
        for name, value in state.items():
            out[name][i] = value[0]
        row = {k: v[i : i + 1] for k, v in out.items()}
        state = graph_io.next_state(run(row))
    return out
