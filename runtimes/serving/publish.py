"""``publish``: a bundle -> a new version folder under a model base path (TF-free).

The version folder is a bundle whose SavedModel sits at its root (bundle format
version 2, docs/bundle-format.md), the layout both ``policy-toolkit serve`` and
``tensorflow_model_server --model_base_path=BASE`` read: TF Serving needs
``BASE/<version>/saved_model.pb``. It is written beside the versions in a hidden
temporary folder (which neither server looks at), every file and folder synced to
disk, then renamed into place: a server polling BASE sees the whole version or none.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from toolkit import bundle
from toolkit.errors import BundleError, SpecMismatchError

__all__ = ["PUBLISHED_FORMAT_VERSION", "publish"]

#: The bundle format version of published versions (the SavedModel at the root).
PUBLISHED_FORMAT_VERSION = 2
_MAX_VERSION = 2**63 - 1


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy_synced(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(source, "rb") as src, open(target, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
        dst.flush()
        os.fsync(dst.fileno())


def published_layout(manifest: dict[str, Any]) -> tuple[dict[str, str], dict[str, Any]]:
    """``({source rel path: published rel path}, published manifest)`` for a bundle."""
    new = copy.deepcopy(manifest)
    files = manifest["files"]
    saved = manifest.get("saved_model") if "saved_model" in manifest.get("formats", []) else None
    prefix = None
    if isinstance(saved, dict) and saved.get("dir") not in (None, "", "."):
        prefix = str(saved["dir"]).rstrip("/") + "/"
    moves = {}
    for rel in files:
        if ".." in Path(rel).parts or Path(rel).is_absolute():
            raise BundleError(f"{bundle.MANIFEST}: file path {rel!r} leaves the bundle")
        moves[rel] = rel[len(prefix) :] if prefix and rel.startswith(prefix) else rel
    targets = list(moves.values())
    clash = sorted(
        {t for t in targets if targets.count(t) > 1} | ({bundle.MANIFEST} & set(targets))
    )
    if clash:
        raise BundleError(
            f"the SavedModel's files {clash} would overwrite the bundle's own at the version root"
        )
    new["files"] = {moves[rel]: entry for rel, entry in files.items()}
    if isinstance(saved, dict):
        new["saved_model"] = {**saved, "dir": "."}
    new["format_version"] = max(int(manifest["format_version"]), PUBLISHED_FORMAT_VERSION)
    return moves, new


def publish(
    bundle_dir: str | os.PathLike, base: str | os.PathLike, version: int | None = None
) -> Path:
    """Adds a bundle to a model base path as version ``version`` (default: its train step).

    Args:
      bundle_dir: the bundle (checked against its manifest first).
      base: the model base path (created if missing).
      version: the version number; defaults to the bundle's train step.

    Returns:
      The new version folder ``base/<version>``.

    Raises:
      BundleError: for a damaged bundle, or a version that already exists (versions are
        never changed in place: servers would not notice).
      SpecMismatchError: for a bad version number, or no train step to default to.
    """
    source = Path(bundle_dir)
    manifest = bundle.read_manifest(source, check_files=True)
    if version is None:
        version = manifest.get("train_step")
        if version is None or (isinstance(version, int) and version < 0):
            raise SpecMismatchError(
                "--version",
                "a version number (the bundle records no train step to use)",
                repr(version),
            )
    if (
        isinstance(version, bool)
        or not isinstance(version, int)
        or not 0 <= version <= _MAX_VERSION
    ):
        raise SpecMismatchError("version", f"an int in [0, {_MAX_VERSION}]", repr(version))
    base = Path(base).absolute()
    target = base / str(version)
    if target.exists():
        raise BundleError(
            f"{target}: version {version} already exists; versions are never replaced in place "
            "(servers keep what they loaded), publish a higher version"
        )
    moves, new_manifest = published_layout(manifest)
    base.mkdir(parents=True, exist_ok=True)
    tmp = base / f".{version}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        for rel, dest in moves.items():
            _copy_synced(source / rel, tmp / dest)
        with open(tmp / bundle.MANIFEST, "w") as f:
            f.write(json.dumps(new_manifest, indent=2, allow_nan=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        bundle.check_bundle_files(tmp, new_manifest["files"])  # what was copied is what runs
        for folder in sorted({p.parent for p in tmp.rglob("*")}, key=lambda p: -len(p.parts)):
            _fsync_dir(folder)
        if target.exists():  # published meanwhile by someone else
            raise BundleError(f"{target}: version {version} appeared while publishing")
        os.rename(tmp, target)
        _fsync_dir(base)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
