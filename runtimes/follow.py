"""Follow a learner: apply each new complete checkpoint of a folder to a running policy.

``follow(policy, directory, interval)`` (also ``policy.follow(...)``) checks the folder
once before it returns, then every ``interval`` seconds on a daemon thread, and applies
the newest checkpoint it has not applied with ``policy.update_from_checkpoint``. The
backends swap their weights whole (a new onnxruntime session, a new SavedModel load),
so calls in flight finish on the old weights and none sees a mix.

What counts as complete (nothing is read half-way):

* TF checkpoints of a ``tf.train.CheckpointManager`` (the toolkit's training
  ``policy_checkpoints/``): only those the ``checkpoint`` state file lists, which TF
  rewrites after a checkpoint's files are written;
* TF-Agents' ``policy_checkpoint_<step>/``: once ``variables/variables.index`` exists
  (TF writes the index after the data); an index that cannot be read yet is retried;
* weights-only checkpoints: once ``checkpoint.json`` exists (``save_checkpoint`` builds
  the folder under a hidden name and renames it into place), with every file's sha256
  checked against it.

A checkpoint that fails twice unchanged (corrupt, or of another policy) is logged once
on the ``runtimes.follow`` logger and skipped; the policy keeps its last good weights.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from toolkit import checkpoint_weights
from toolkit.errors import ToolkitError

__all__ = ["Follower", "follow"]

logger = logging.getLogger(__name__)


class Follower:
    """A running watch of a checkpoint folder (made by ``follow``).

    Attributes:
      policy: the policy it updates.
      directory: the folder watched.
      applied: how many checkpoints it applied.
      checkpoint: the path of the last one applied, or None.
    """

    def __init__(
        self,
        policy: Any,
        directory: str | os.PathLike,
        interval: float = 1.0,
        *,
        after_step: int | None = None,
        on_apply: Callable[[Follower], None] | None = None,
    ):
        """See ``follow``; ``after_step`` and ``on_apply`` are documented there."""
        if not interval > 0:
            raise ValueError(f"interval: expected a positive number of seconds, got {interval}")
        self.policy = policy
        self.directory = Path(directory)
        self.interval = float(interval)
        self.applied = 0
        self.checkpoint: Path | None = None
        self._applied_signature: tuple | None = None
        self._applied_step: int | None = after_step
        self._on_apply = on_apply
        self._failures: dict[tuple, int] = {}
        self._logged: set[tuple] = set()
        self._unreadable: str | None = None  # why the folder cannot be read, while it cannot
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # --- the watch ---------------------------------------------------------------------

    def poll(self) -> bool:
        """Checks the folder once; applies the newest new checkpoint. True if it did."""
        with self._lock:
            try:
                if not self.directory.exists():
                    return False  # training has not started yet
                if self.directory.is_dir() and not any(self.directory.iterdir()):
                    return self._readable(False)  # nor written anything yet
                found = checkpoint_weights.find_checkpoints(self.directory)
            except ToolkitError as e:
                self._log_once(("folder", str(e)), "cannot watch %s: %s", self.directory, e)
                return False
            except OSError as e:  # unreadable (for now): said once per change, kept watching
                reason = e.strerror or type(e).__name__
                if self._unreadable != reason:
                    self._unreadable = reason
                    logger.warning(
                        "cannot read %s (%s); checking again every %g s",
                        self.directory,
                        reason,
                        self.interval,
                    )
                return False
            self._readable(True)
            for checkpoint in reversed(found):
                signature = checkpoint.signature()
                if signature == self._applied_signature:
                    return False
                if (
                    self._applied_step is not None
                    and checkpoint.step is not None
                    and checkpoint.step < self._applied_step
                ):
                    return False
                if self._failures.get(signature, 0) >= 2:
                    continue  # logged; a corrupt or foreign checkpoint stays skipped
                try:
                    self.policy.update_from_checkpoint(checkpoint)
                except (ToolkitError, OSError) as e:
                    count = self._failures[signature] = self._failures.get(signature, 0) + 1
                    if count >= 2:  # unchanged since the last try: not one being written
                        self._log_once(signature, "skipping checkpoint %s: %s", checkpoint.path, e)
                    continue
                self._applied_signature = signature
                self._applied_step = checkpoint.step
                self.checkpoint = checkpoint.path
                self.applied += 1
                logger.info(
                    "applied checkpoint %s (train step %s)",
                    checkpoint.path,
                    self.policy.train_step,
                )
                if self._on_apply is not None:
                    self._on_apply(self)
                return True
            return False

    def _readable(self, result: bool) -> bool:
        if self._unreadable is not None:
            self._unreadable = None
            logger.info("%s can be read again", self.directory)
        return result

    def _log_once(self, key: tuple, message: str, *args: Any) -> None:
        if key not in self._logged:
            self._logged.add(key)
            logger.warning(message, *args)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.poll()
            except Exception:  # never let the watch die silently
                logger.exception("checking %s for checkpoints failed", self.directory)

    def start(self) -> Follower:
        """Checks the folder once, then keeps checking on a daemon thread."""
        if self._thread is not None:
            return self
        self.poll()
        self._thread = threading.Thread(
            target=self._run, name=f"follow {self.directory}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Stops watching (a checkpoint being applied is finished first)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> Follower:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def __repr__(self) -> str:
        return (
            f"Follower({str(self.directory)!r}, interval={self.interval}, "
            f"applied={self.applied}, running={self.running})"
        )


def follow(
    policy: Any,
    directory: str | os.PathLike,
    interval: float = 1.0,
    *,
    after_step: int | None = None,
    on_apply: Callable[[Follower], None] | None = None,
) -> Follower:
    """Starts following the checkpoints in ``directory`` (see the module docstring).

    Args:
      policy: a policy loaded by ``runtimes.load_policy`` (either backend).
      directory: a training run's output or ``policy_checkpoints/``, TF-Agents'
        ``policies/checkpoints/`` (or its ``policies/`` or root folder), or a folder
        of weights-only checkpoints. It may have no checkpoint yet.
      interval: seconds between checks.
      after_step: skip checkpoints of lower train steps than this (the server passes
        a version's own train step, so a following version never goes back).
      on_apply: called with the follower, on its thread, after each checkpoint applied.

    Returns:
      A started ``Follower``; ``stop()`` it, or use it as a context manager.
    """
    return Follower(policy, directory, interval, after_step=after_step, on_apply=on_apply).start()
