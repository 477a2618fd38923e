"""``serve --follow``: the version a model serves by default takes a learner's checkpoints.

For each model given a folder, the highest version in service follows it
(``runtimes.follow``): each new complete checkpoint there is applied to that version's
policy in place, without a new version. Checkpoints of lower train steps than the
version's own are skipped, so a freshly published version never goes back. When a
higher version comes into service, or the followed one is retired or replaced, the
old follower stops and the new version starts following (checking the folder at
once). Other versions (kept by ``--versions`` or labels) stay as published.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from runtimes.follow import Follower
from runtimes.serving.models import LoadedVersion, Snapshot

__all__ = ["Followers"]

log = logging.getLogger("policy_toolkit.serve")


class Followers:
    """Keeps each followed model's highest version following its folder.

    Args:
      folders: model name -> checkpoint folder.
      interval: seconds between checks of a folder.
      on_apply: called with the model name after a checkpoint was applied.
    """

    def __init__(
        self,
        folders: dict[str, Path],
        interval: float,
        on_apply: Callable[[str], None] | None = None,
    ):
        self.folders = dict(folders)
        self.interval = float(interval)
        self._on_apply = on_apply
        self._active: dict[str, tuple[LoadedVersion, Follower]] = {}
        self._lock = threading.Lock()

    def follower(self, name: str) -> Follower | None:
        """The running follower of a model, if any."""
        active = self._active.get(name)
        return None if active is None else active[1]

    def update(self, name: str, snapshot: Snapshot) -> None:
        """Moves a model's following to its highest version in service (after a switch)."""
        folder = self.folders.get(name)
        if folder is None:
            return
        target = snapshot.versions[max(snapshot.versions)] if snapshot.versions else None
        with self._lock:
            current = self._active.get(name)
            if current is not None and current[0] is target:
                return
            if current is not None:
                del self._active[name]
                current[1].stop(timeout=10)
                log.info(
                    "model %s: version %d no longer follows %s",
                    name,
                    current[0].version,
                    folder,
                )
            if target is None:
                return
            step = target.train_step
            follower = Follower(
                target.policy,
                folder,
                self.interval,
                after_step=step,
                on_apply=lambda _: self._applied(name),
            )
            self._active[name] = (target, follower)
            log.info(
                "model %s: version %d (train step %s) follows %s every %g s",
                name,
                target.version,
                step,
                folder,
                self.interval,
            )
            follower.start()

    def _applied(self, name: str) -> None:
        active = self._active.get(name)
        if active is not None:
            log.info(
                "model %s: version %d took checkpoint %s (train step %s)",
                name,
                active[0].version,
                active[1].checkpoint,
                active[0].train_step,
            )
        if self._on_apply is not None:
            self._on_apply(name)

    def stop(self) -> None:
        """Stops every follower (a checkpoint being applied is finished first)."""
        with self._lock:
            active, self._active = self._active, {}
        for _, follower in active.values():
            follower.stop(timeout=10)
