"""Served models: version folders, the version policy, labels, loading and switching.

A model's path is one bundle, or a base path in TF Serving's layout: numeric version
folders, each a bundle (``policy-toolkit publish`` writes them). The server polls it:
a version that the policy wants and is not loaded is loaded, checked (one action on
a sample time step) and only then put into service; a version that fails is logged
and the versions in service stay (standing in for it, or else the next version on
disk the policy would take). A path that cannot be read for a while (moved away and
back, unreadable) keeps its versions in service, as TF Serving keeps them. Switching
replaces one immutable snapshot, so a request holds the versions it started with until
it ends: none fails in a switch.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from toolkit import action_masks, bundle, nest
from toolkit.errors import ErrorKind, ServingError, SpecMismatchError, ToolkitError
from toolkit.trajectories.time_step import StepType

__all__ = [
    "MAX_VERSION",
    "LoadedVersion",
    "ModelConfig",
    "ModelRegistry",
    "Snapshot",
    "VersionPolicy",
    "list_versions",
    "parse_version",
]

log = logging.getLogger("policy_toolkit.serve")

#: The highest version number: TF Serving's versions are int64 (publish and serve agree).
MAX_VERSION = 2**63 - 1
_DIGITS = re.compile(r"[0-9]{1,64}")


def parse_version(text: str) -> int | None:
    """A version folder's name or a URL's version as a number; None if it is not one.

    TF Serving's rule: ASCII digits making a non-negative int64 (``007`` is 7).
    """
    if not _DIGITS.fullmatch(text):
        return None
    value = int(text)
    return value if value <= MAX_VERSION else None


@dataclasses.dataclass(frozen=True)
class VersionPolicy:
    """Which versions to serve, as TF Serving's ``model_version_policy``.

    ``latest`` (the ``count`` highest; the default, with 1), ``all``, or ``specific``
    (the listed versions).
    """

    kind: str = "latest"
    count: int = 1
    versions: tuple[int, ...] = ()

    @classmethod
    def parse(cls, text: str) -> VersionPolicy:
        """``latest``, ``latest:N``, ``all`` or ``specific:V1,V2``."""
        kind, _, rest = text.strip().partition(":")
        try:
            if kind == "latest":
                count = int(rest) if rest else 1
                if count < 1:
                    raise ValueError
                return cls("latest", count)
            if kind == "all" and not rest:
                return cls("all")
            if kind == "specific" and rest:
                versions = tuple(sorted({int(v) for v in rest.split(",")}))
                if any(v < 0 for v in versions):
                    raise ValueError
                return cls("specific", 0, versions)
        except ValueError:
            pass
        raise SpecMismatchError(
            "--versions", "latest, latest:N (N >= 1), all or specific:V1,V2,...", repr(text)
        )

    def select(self, available: list[int]) -> list[int]:
        """The versions to serve among those on disk, highest first."""
        ordered = sorted(available, reverse=True)
        if self.kind == "latest":
            return ordered[: self.count]
        if self.kind == "all":
            return ordered
        return [v for v in ordered if v in self.versions]

    def stand_ins(self, available: list[int]) -> list[int]:
        """Versions on disk that may serve in place of selected ones that failed to load,
        best first: for ``latest``, the next highest; ``all`` and ``specific`` select every
        version they may serve already."""
        if self.kind != "latest":
            return []
        return sorted(available, reverse=True)[self.count :]

    def __str__(self) -> str:
        if self.kind == "latest":
            return f"latest:{self.count}"
        if self.kind == "all":
            return "all"
        return "specific:" + ",".join(map(str, self.versions))


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """One served model: its name, path, version policy and labels (label -> version)."""

    name: str
    path: Path
    versions: VersionPolicy = VersionPolicy()
    labels: tuple[tuple[str, int], ...] = ()


def is_bundle(path: Path) -> bool:
    """Whether ``path`` holds a bundle (its manifest); OSError when it cannot be read."""
    return (path / bundle.MANIFEST).is_file()


def list_versions(base: Path) -> dict[int, Path]:
    """Numeric version folders of a base path; hidden and temporary folders are not.

    Raises:
      OSError: when the base path cannot be listed (missing or unreadable).
    """
    found: dict[int, Path] = {}
    # Sorted, so of two spellings of one number ("7", "007") the plain one wins.
    for entry in sorted(os.scandir(base), key=lambda e: (len(e.name), e.name)):
        version = parse_version(entry.name)
        if version is None or version in found:
            continue
        try:
            if entry.is_dir():
                found[version] = Path(entry.path)
        except OSError:  # vanished or unreadable meanwhile: not a version now
            continue
    return found


@dataclasses.dataclass(eq=False)
class LoadedVersion:
    """One version in service: its policy and what it answers."""

    version: int
    path: Path
    policy: Any
    signatures: dict[str, Any]
    identity: tuple
    loaded_at: float
    batcher: Any = None

    @property
    def train_step(self) -> int | None:
        return self.policy.train_step


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """A model's versions in service at one moment (never changed; replaced whole)."""

    name: str
    versions: dict[int, LoadedVersion]
    labels: dict[str, int]
    failures: dict[int, str]

    @functools.cached_property
    def _latest(self) -> LoadedVersion:
        """The highest version (looked up once: most requests name none)."""
        return self.versions[max(self.versions)]

    def resolve(self, version: int | None, label: str | None) -> LoadedVersion:
        """The version a request asks for (the highest when it names none)."""
        if label is not None:
            if label not in self.labels:
                raise ServingError(
                    f"Unrecognized servable version label: {label} (model {self.name} has "
                    f"labels {sorted(self.labels) or 'none'})",
                    ErrorKind.NOT_FOUND,
                )
            version = self.labels[label]
        if version is None:
            if not self.versions:
                raise ServingError(
                    f"Servable not found for request: Latest({self.name})", ErrorKind.NOT_FOUND
                )
            return self._latest
        found = self.versions.get(version)
        if found is None:
            raise ServingError(
                f"Servable not found for request: Specific({self.name}, {version})",
                ErrorKind.NOT_FOUND,
            )
        return found


def _identity(path: Path) -> tuple:
    """What changes when a bundle is replaced (exports and publishes rename into place)."""
    stat = (path / bundle.MANIFEST).stat()
    return (stat.st_ino, stat.st_mtime_ns, stat.st_size)


class ModelRegistry:
    """Every served model's current snapshot, kept up to date by ``poll()``.

    Args:
      configs: the models.
      load: ``(path) -> (policy, layout)``; loads one bundle.
      prepare: ``(model name, policy, layout, version, path, identity) -> LoadedVersion``
        (its signatures and batcher).
      on_change: called with the model name and new snapshot after each switch.
    """

    def __init__(
        self,
        configs: list[ModelConfig],
        load: Callable[[Path], tuple[Any, dict[str, Any]]],
        prepare: Callable[..., LoadedVersion],
        on_change: Callable[[str, Snapshot], None] | None = None,
        on_failure: Callable[[str, int, str], None] | None = None,
    ):
        names = [c.name for c in configs]
        if len(set(names)) != len(names):
            raise SpecMismatchError("--model", "distinct model names", str(names))
        self.configs = {c.name: c for c in configs}
        self._load = load
        self._prepare = prepare
        self._on_change = on_change
        self._on_failure = on_failure
        self.snapshots: dict[str, Snapshot] = {
            c.name: Snapshot(c.name, {}, {}, {}) for c in configs
        }
        self._lock = threading.Lock()  # one poll at a time
        self._unreadable: dict[str, str] = {}  # model -> why its path cannot be read
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def get(self, name: str) -> Snapshot:
        snapshot = self.snapshots.get(name)
        if snapshot is None:
            raise ServingError(
                f"Servable not found for request: Latest({name})", ErrorKind.NOT_FOUND
            )
        return snapshot

    # --- polling ------------------------------------------------------------------------

    def poll(self) -> None:
        """Looks at every model's path once; loads, checks and switches versions."""
        with self._lock:
            for config in self.configs.values():
                try:
                    self._poll_model(config)
                except Exception:  # a poll must never kill the server
                    log.exception("model %s: polling %s failed", config.name, config.path)

    def _on_disk(self, config: ModelConfig) -> dict[int, Path] | None:
        """The versions on disk, or None when the path cannot be read now (logged once
        per change: a path that comes back is logged too)."""
        path = config.path
        try:
            # A single bundle is version 1 (replacing it in place loads it again).
            on_disk = {1: path} if is_bundle(path) else list_versions(path)
        except OSError as e:
            reason = e.strerror or type(e).__name__
            if self._unreadable.get(config.name) != reason:
                self._unreadable[config.name] = reason
                kept = sorted(self.snapshots[config.name].versions)
                outcome = f"versions {kept} stay in service" if kept else "no version in service"
                log.warning(
                    "model %s: cannot read %s (%s); %s until it can be read",
                    config.name,
                    path,
                    reason,
                    outcome,
                )
            return None
        if self._unreadable.pop(config.name, None) is not None:
            log.info("model %s: %s can be read again", config.name, path)
        return on_disk

    def _poll_model(self, config: ModelConfig) -> None:
        old = self.snapshots[config.name]
        on_disk = self._on_disk(config)
        if on_disk is None:
            return  # moved away or unreadable for now: TF Serving keeps its versions too
        wanted = config.versions.select(list(on_disk))
        loaded: dict[int, LoadedVersion] = {}
        failures = {v: f for v, f in old.failures.items() if v in on_disk}
        changed = False
        for version in wanted:
            found = self._version(config, version, on_disk[version], old, failures)
            if found is not None:
                changed |= found is not old.versions.get(version)
                loaded[version] = found
        # Availability first: when a wanted version could not be loaded, versions in
        # service (still on disk) keep serving in its place, highest first; failing
        # those, the next versions on disk the policy would take are loaded.
        if len(loaded) < len(wanted):
            for version in sorted(old.versions, reverse=True):
                if len(loaded) >= len(wanted):
                    break
                if version not in loaded and version in on_disk:
                    loaded[version] = old.versions[version]
        if len(loaded) < len(wanted):
            for version in config.versions.stand_ins(list(on_disk)):
                if len(loaded) >= len(wanted):
                    break
                if version in loaded:
                    continue
                found = self._version(config, version, on_disk[version], old, failures)
                if found is not None:
                    loaded[version] = found
                    changed = True
                    log.info(
                        "model %s: version %d serves in place of versions %s, which failed to load",
                        config.name,
                        version,
                        sorted(set(wanted) - set(loaded)),
                    )
        if set(loaded) != set(old.versions):
            changed = True
        labels = {}
        for label, version in config.labels:
            if version in loaded:
                labels[label] = version
        snapshot = Snapshot(config.name, dict(sorted(loaded.items())), labels, failures)
        self.snapshots = {**self.snapshots, config.name: snapshot}
        if changed or labels != old.labels:
            dropped = sorted(set(old.versions) - set(loaded))
            if dropped:
                log.info("model %s: versions %s out of service", config.name, dropped)
            if self._on_change is not None:
                self._on_change(config.name, snapshot)

    def _version(
        self,
        config: ModelConfig,
        version: int,
        path: Path,
        old: Snapshot,
        failures: dict[int, tuple],
    ) -> LoadedVersion | None:
        """The version in service, unchanged, or loaded and checked anew; None if it
        is gone or failed (recorded in ``failures`` and logged once per change)."""
        try:
            identity = _identity(path)
        except OSError:
            return None  # removed while we looked
        current = old.versions.get(version)
        if current is not None and current.identity == identity:
            return current
        if failures.get(version, ("",))[0] == identity:
            return None  # failed before and unchanged since: logged once
        started = time.perf_counter()
        try:
            policy, layout = self._load(path)
            check(policy)
            found = self._prepare(config.name, policy, layout, version, path, identity)
        except Exception as e:  # any failure of a new version keeps the old ones
            message = f"{type(e).__name__}: {e}" if not isinstance(e, ToolkitError) else str(e)
            failures[version] = (identity, message)
            outcome = "the versions in service stay" if old.versions else "none is in service"
            log.error(
                "model %s: version %d at %s failed to load; %s (%s)",
                config.name,
                version,
                path,
                outcome,
                message,
            )
            if self._on_failure is not None:
                self._on_failure(config.name, version, message)
            return None
        failures.pop(version, None)
        log.info(
            "model %s: version %d loaded from %s (train step %s) in %.2f s",
            config.name,
            version,
            path,
            found.train_step,
            time.perf_counter() - started,
        )
        return found

    def start(self, interval: float) -> None:
        """Polls every ``interval`` seconds in a background thread (0: never)."""
        if interval <= 0:
            return

        def loop() -> None:
            while not self._stop.wait(interval):
                self.poll()

        self._thread = threading.Thread(target=loop, name="policy-serve-poll", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)


def check(policy: Any) -> None:
    """Acts once on a sample time step, so a version that cannot act never serves."""
    time_step = nest.map_structure(lambda s: s.generate_value()[None], policy.time_step_spec)
    # A zero mask would allow no action: the sample allows every one.
    time_step = action_masks.allow_every_action(
        time_step, getattr(policy, "action_mask_input", None)
    )
    dtype = policy.time_step_spec.step_type.dtype
    time_step = time_step._replace(step_type=np.full((1,), int(StepType.FIRST), dtype))
    state = policy.get_initial_state(1)
    # A seed of its own: the check leaves the policy's generator (--seed) untouched.
    policy.action(time_step, state, seed=0)
