"""``policy_specs.pbtxt``: the specs PolicySaver writes beside a TF-Agents SavedModel.

``read_policy_specs`` decodes it with TensorFlow's own structure coder (as TF-Agents'
``tensor_spec.from_pbtxt_file`` does) and rebuilds the time step, action, policy state
and info specs the way ``policy_saver.specs_from_collect_data_spec`` does, as this
project's array specs (``TFAgentsSpecs``), keeping TF-Agents' own structures in ``raw``
to call the saved functions with.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import tensorflow as tf

from exporters.tf_agents import screen
from toolkit import nest
from toolkit.errors import BundleError
from toolkit.specs import tensor_spec
from toolkit.trajectories.time_step import TimeStep

__all__ = [
    "MAX_SPECS_BYTES",
    "POLICY_SPECS_PBTXT",
    "TIME_STEP_FIELDS",
    "TFAgentsSpecs",
    "field_names",
    "read_policy_specs",
]

POLICY_SPECS_PBTXT = "policy_specs.pbtxt"
#: The specs file is text naming a few dozen specs (the largest save in tests/data: 4 KB); past
#: 1 MiB it is not a policy's, and it is refused before it is read.
MAX_SPECS_BYTES = 1 << 20

TIME_STEP_FIELDS = ("step_type", "reward", "discount", "observation")
_TRAJECTORY_FIELDS = ("step_type", "observation", "action", "policy_info", "reward", "discount")


@dataclasses.dataclass(frozen=True)
class TFAgentsSpecs:
    """The specs of a TF-Agents saved policy, as this project's array specs.

    Attributes:
      time_step_spec: a ``TimeStep`` of array specs.
      action_spec: nest of (bounded) array specs.
      policy_state_spec: nest of array specs; ``()`` for stateless policies.
      info_spec: nest of array specs; ``()`` when the policy emits no info.
      raw: the decoded ``policy_specs.pbtxt`` as TensorFlow specs (TF-Agents' own
        structure, e.g. lists for LSTM states), used to call the saved functions.
    """

    time_step_spec: TimeStep
    action_spec: Any
    policy_state_spec: Any
    info_spec: Any
    raw: Any = dataclasses.field(repr=False, compare=False)


def _specs_file(saved_model_dir: Path) -> Path:
    if not saved_model_dir.is_dir():
        raise BundleError(
            f"{saved_model_dir}: expected a TF-Agents saved policy directory, got no such directory"
        )
    path = saved_model_dir / POLICY_SPECS_PBTXT
    if path.is_file():
        return path
    if (saved_model_dir / "saved_model.pb").is_file():
        raise BundleError(
            f"{saved_model_dir}: a SavedModel without {POLICY_SPECS_PBTXT} is not a TF-Agents "
            f"policy (PolicySaver writes {POLICY_SPECS_PBTXT} beside saved_model.pb)"
        )
    raise BundleError(
        f"{saved_model_dir}: expected a TF-Agents saved policy (saved_model.pb and "
        f"{POLICY_SPECS_PBTXT}), got a directory without either"
    )


def _decode_specs_file(path: Path) -> Any:
    from google.protobuf import text_format
    from tensorflow.core.protobuf import struct_pb2
    from tensorflow.python.saved_model import nested_structure_coder

    proto = struct_pb2.StructuredValue()
    try:
        text = screen.read_bounded(path, MAX_SPECS_BYTES, "a specs file").decode("utf-8")
        text_format.Parse(text, proto)
    except (UnicodeDecodeError, text_format.ParseError) as e:
        raise BundleError(f"{path}: not a readable StructuredValue text proto ({e})") from e
    try:
        return nested_structure_coder.decode_proto(proto)
    except Exception as e:  # TF raises several types for unknown or broken values
        raise BundleError(f"{path}: cannot decode the specs ({type(e).__name__}: {e})") from e


def field_names(value: Any) -> tuple[str, ...] | None:
    """The fields of a namedtuple (TF-Agents' own or a decoded generic one), else None."""
    return tuple(value._fields) if isinstance(value, tuple) and hasattr(value, "_fields") else None


def read_policy_specs(saved_model_dir: str | os.PathLike) -> TFAgentsSpecs:
    """Reads ``policy_specs.pbtxt`` of a TF-Agents saved policy.

    Raises:
      BundleError: for a missing directory, a directory without the specs file, a
        corrupted or oversized file, or specs that are not a TF-Agents policy's.
    """
    saved_model_dir = Path(saved_model_dir)
    path = _specs_file(saved_model_dir)
    decoded = _decode_specs_file(path)
    expected = "a dict with 'collect_data_spec' and 'policy_state_spec'"
    if not isinstance(decoded, dict) or not {"collect_data_spec", "policy_state_spec"} <= set(
        decoded
    ):
        got = f"keys {sorted(decoded)}" if isinstance(decoded, dict) else type(decoded).__name__
        raise BundleError(f"{path}: expected {expected}, got {got}")
    collect = decoded["collect_data_spec"]
    fields = field_names(collect)
    if fields is None or not set(_TRAJECTORY_FIELDS) <= set(fields):
        got = f"fields {list(fields)}" if fields else type(collect).__name__
        raise BundleError(
            f"{path}: collect_data_spec: expected a Trajectory with fields "
            f"{list(_TRAJECTORY_FIELDS)}, got {got}"
        )
    raw_time_step = TimeStep(*(getattr(collect, f) for f in TIME_STEP_FIELDS))
    raw = {
        "time_step_spec": raw_time_step,
        "action_spec": collect.action,
        "policy_state_spec": decoded["policy_state_spec"],
        "info_spec": collect.policy_info,
    }
    for name, spec in raw.items():
        for leaf_path, leaf in nest.flatten_with_paths(spec, name):
            if not isinstance(leaf, tf.TensorSpec):
                raise BundleError(
                    f"{path}: {leaf_path}: expected a TensorSpec, got {type(leaf).__name__}"
                )
            if not leaf.shape.is_fully_defined():
                raise BundleError(
                    f"{path}: {leaf_path}: expected a fully defined shape, got {leaf.shape}"
                )
    arrays = {k: tensor_spec.to_array_spec(v) for k, v in raw.items()}
    return TFAgentsSpecs(
        time_step_spec=TimeStep(*arrays["time_step_spec"]),
        action_spec=arrays["action_spec"],
        policy_state_spec=arrays["policy_state_spec"],
        info_spec=arrays["info_spec"],
        raw=raw,
    )
