"""Where ``policy-toolkit export`` gets its policy: a factory, and optionally a checkpoint.

A factory is ``module:attribute`` (``uvicorn``-style): the module is imported (the
current folder is importable, as for ``python -m``), the attribute (dotted paths work)
is called with no arguments, or used as it is when it already is a policy. Checkpoints
come from training (``toolkit.agents.checkpoints``):

* a training output folder ``<out>`` or its ``<out>/policy_checkpoints``: TF checkpoints
  ``ckpt-<train step>`` holding ``model_variables/<i>``, the policy's variables in
  ``policy.variables()`` order. They are restored by index, so the factory only has to
  build the same networks (not the same wrappers) as training;
* a weights-only checkpoint (``exporters.save_checkpoint``: checkpoint.json and
  ``tf/ckpt``), restored into the policy's object graph.

TensorFlow is imported inside the functions that need it.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import re
import sys
from pathlib import Path
from typing import Any

from toolkit import bundle
from toolkit.errors import BundleError, PolicyError, SpecMismatchError, UnsupportedError

__all__ = [
    "RestoredCheckpoint",
    "find_policy_checkpoint",
    "load_factory",
    "parse_source",
    "restore_checkpoint",
]

_SOURCE = re.compile(r"^(?P<module>[A-Za-z_][\w.]*):(?P<attr>[A-Za-z_][\w.]*)$")
_CKPT = re.compile(r"^ckpt-(\d+)\.index$")


def parse_source(source: str) -> tuple[str, str]:
    """``(module, attribute path)`` of a ``module:callable`` string.

    Raises:
      PolicyError: for a string of another form.
    """
    match = _SOURCE.match(source)
    if match is None:
        raise PolicyError(
            f"factory {source!r}: expected 'module:callable' (e.g. "
            "'examples.cartpole_factory:policy')"
        )
    return match["module"], match["attr"]


def load_factory(source: str) -> Any:
    """The TF policy a ``module:callable`` string names.

    Raises:
      PolicyError: a malformed string, a module that cannot be imported, a missing
        attribute, a factory that raises, or one that returns no TFPolicy; the message
        says which.
    """
    module_name, attr = parse_source(source)
    # Like `python -m` and uvicorn: modules of the current folder are importable.
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name is not None and module_name.startswith(e.name):
            raise PolicyError(
                f"factory {source!r}: no module named {e.name!r} (run from the folder that "
                "holds it, or install it)"
            ) from e
        raise PolicyError(f"factory {source!r}: importing {module_name!r} failed: {e}") from e
    except Exception as e:
        raise PolicyError(
            f"factory {source!r}: importing {module_name!r} raised {type(e).__name__}: {e}"
        ) from e
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise PolicyError(f"factory {source!r}: {module_name!r} has no attribute {attr!r}")
        target = getattr(target, part)

    from toolkit.policies.tf_policy import TFPolicy

    if isinstance(target, TFPolicy):
        return target
    if not callable(target):
        raise PolicyError(
            f"factory {source!r}: expected a callable or a TFPolicy, got {type(target).__name__}"
        )
    try:
        policy = target()
    except Exception as e:
        raise PolicyError(f"factory {source!r} raised {type(e).__name__}: {e}") from e
    if not isinstance(policy, TFPolicy):
        raise PolicyError(
            f"factory {source!r}: expected it to return a TFPolicy "
            f"(toolkit.policies.tf_policy.TFPolicy), got {type(policy).__name__}"
        )
    return policy


@dataclasses.dataclass(frozen=True)
class RestoredCheckpoint:
    """Which checkpoint was restored: its path prefix, kind and train step."""

    prefix: str
    kind: str  # "policy_checkpoint" or "weights_only"
    train_step: int


def _checkpoint_steps(directory: Path) -> list[int]:
    return sorted(int(m[1]) for p in directory.iterdir() if (m := _CKPT.match(p.name)))


def find_policy_checkpoint(path: str | os.PathLike, step: int | None = None) -> tuple[str, str]:
    """The checkpoint a ``--checkpoint`` path (and ``--step``) means.

    Returns:
      ``(kind, prefix)``: ``("weights_only", <dir>)`` for an exporters.save_checkpoint
      folder, ``("policy_checkpoint", <dir>/ckpt-<step>)`` for training's policy
      checkpoints (the latest unless ``step`` is given).

    Raises:
      BundleError: no such path, an unknown step, or a folder that holds neither kind.
    """
    path = Path(path)
    if not path.exists():
        raise BundleError(f"{path}: no such checkpoint")
    if path.is_dir() and (path / bundle.CHECKPOINT_FILE).is_file():
        info = bundle.read_checkpoint(path)
        if step is not None and step != info.get("train_step"):
            raise BundleError(
                f"{path}: --step {step} asked, but this weights-only checkpoint holds train "
                f"step {info.get('train_step')}"
            )
        return "weights_only", str(path)
    directory = path
    if path.is_dir() and not _checkpoint_steps(path) and (path / "policy_checkpoints").is_dir():
        directory = path / "policy_checkpoints"  # a training output folder
    if path.is_file() or not directory.is_dir() or not _checkpoint_steps(directory):
        raise BundleError(
            f"{path}: unsupported checkpoint: expected a training output folder, its "
            "policy_checkpoints/ (ckpt-<step>.index files) or a weights-only checkpoint "
            "(checkpoint.json)"
        )
    steps = _checkpoint_steps(directory)
    if step is None:
        step = steps[-1]
    elif step not in steps:
        raise BundleError(f"{directory}: no checkpoint of train step {step}; there are {steps}")
    return "policy_checkpoint", str(directory / f"ckpt-{step}")


def restore_checkpoint(
    policy: Any, path: str | os.PathLike, step: int | None = None
) -> RestoredCheckpoint:
    """Restores a training or weights-only checkpoint into ``policy``'s variables.

    Raises:
      BundleError: see ``find_policy_checkpoint``.
      UnsupportedError: a TF checkpoint without the policy's variables (e.g. the full
        training state in ``<out>/checkpoints``).
      SpecMismatchError: the factory's networks differ from the checkpoint's (count or
        shapes of the variables).
    """
    import tensorflow as tf

    kind, prefix = find_policy_checkpoint(path, step)
    if kind == "weights_only":
        info = bundle.read_checkpoint(prefix)
        tf_prefix = str(Path(prefix) / info.get("tf_checkpoint", bundle.TF_CHECKPOINT_PREFIX))
        train_step = tf.Variable(0, dtype=tf.int64)
        checkpoint = tf.train.Checkpoint(policy=policy, train_step=train_step)
        try:
            status = checkpoint.read(tf_prefix)
            status.assert_existing_objects_matched()
            status.expect_partial()
        except (AssertionError, ValueError, tf.errors.OpError) as e:
            raise SpecMismatchError(
                f"{prefix}",
                f"a checkpoint of a {type(policy).__name__} like the factory's",
                f"one that does not fit ({_first_line(e)})",
            ) from e
        return RestoredCheckpoint(prefix, kind, int(train_step.numpy()))

    saved = dict(tf.train.list_variables(prefix))
    variables = list(policy.variables())
    saved_shapes = {}
    for name, shape in saved.items():
        match = re.match(r"^model_variables/(\d+)/\.ATTRIBUTES/VARIABLE_VALUE$", name)
        if match:
            saved_shapes[int(match[1])] = tuple(shape)
    if not saved_shapes:
        raise UnsupportedError(
            f"{prefix}: unsupported checkpoint: it holds no model_variables (a training-state "
            "checkpoint?); pass the policy_checkpoints/ folder that training writes"
        )
    if len(saved_shapes) != len(variables):
        raise SpecMismatchError(
            f"{prefix}",
            f"{len(variables)} variables (the factory's {type(policy).__name__})",
            f"{len(saved_shapes)} in the checkpoint: build the same networks as training",
        )
    for i, variable in enumerate(variables):
        got = saved_shapes.get(i)
        if got != tuple(variable.shape.as_list()):
            raise SpecMismatchError(
                f"{prefix}: model_variables/{i} ({variable.name})",
                f"shape {tuple(variable.shape.as_list())}",
                f"{got}: build the same networks as training",
            )
    train_step = tf.Variable(0, dtype=tf.int64)
    checkpoint = tf.train.Checkpoint(model_variables=variables, train_step=train_step)
    status = checkpoint.read(prefix)
    status.assert_existing_objects_matched()
    status.expect_partial()  # the wrappers' generator states and save_counter stay unread
    return RestoredCheckpoint(prefix, kind, int(train_step.numpy()))


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
