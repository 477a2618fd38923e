"""``publish``: a bundle -> a new version folder under a model base path (TF-free).

The version folder ``BASE/<version>`` is the bundle, unchanged (any reader reads it as
the bundle it was), plus its SavedModel mirrored at the folder's root, where TF Serving
looks (``BASE/<version>/saved_model.pb``): so both ``policy-toolkit serve BASE`` and
``tensorflow_model_server --model_base_path=BASE`` serve it. The mirror's files are hard
links to the bundle's own where the filesystem allows (no second copy on disk), copies
otherwise; the manifest does not list them, and no reader of ours reads them.

It is written beside the versions in a hidden temporary folder (which neither server
looks at), checked against the manifest, every file and folder synced to disk, then
renamed into place: a server polling BASE sees the whole version or none.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from toolkit import bundle
from toolkit.errors import BundleError, SpecMismatchError

__all__ = ["publish", "saved_model_mirror"]

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


def saved_model_mirror(manifest: dict) -> dict[str, str]:
    """``{bundle file: its path at the version root}`` for the SavedModel's files."""
    if "saved_model" not in manifest.get("formats", []):
        return {}
    prefix = str(manifest["saved_model"]["dir"]).rstrip("/") + "/"
    mirror = {rel: rel[len(prefix) :] for rel in manifest["files"] if rel.startswith(prefix)}
    clash = sorted(set(mirror.values()) & (set(manifest["files"]) | {bundle.MANIFEST}))
    if clash:
        raise BundleError(
            f"the SavedModel's files {clash} would overwrite the bundle's own at the version root"
        )
    return mirror


def publish(
    bundle_dir: str | os.PathLike,
    base: str | os.PathLike,
    version: int | None = None,
    *,
    trust: Any = None,
    sign_key: str | os.PathLike | None = None,
) -> Path:
    """Adds a bundle to a model base path as version ``version`` (default: its train step).

    A signed bundle's ``model.sig`` goes with it (its signature also covers the mirror,
    whose files equal the signed SavedModel's).

    Args:
      bundle_dir: the bundle (checked against its manifest first).
      base: the model base path (created if missing).
      version: the version number; defaults to the bundle's train step.
      trust: a trust policy (``toolkit.bundle.TrustPolicy``): only a bundle it accepts
        is published (checked before copying, and the copy again).
      sign_key: a PEM private key: the version folder (mirror included) is signed with
        it before it appears.

    Returns:
      The new version folder ``base/<version>``.

    Raises:
      BundleError: for a damaged bundle, or a version that already exists (versions are
        never changed in place: servers would not notice).
      TrustError: a bundle the trust policy refuses.
      SpecMismatchError: for a bad version number, or no train step to default to.
    """
    source = bundle.bundle_root(bundle_dir)
    manifest = bundle.read_manifest(source, check_files=True, trust=trust)
    signature = None
    if os.path.lexists(source / bundle.SIGNATURE_FILE):
        signature = bundle.read_member(
            source, bundle.SIGNATURE_FILE, key=bundle.SIGNATURE_FILE, cap=bundle.MAX_MANIFEST_BYTES
        )
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
    if os.path.lexists(target):
        raise BundleError(
            f"{target}: version {version} already exists; versions are never replaced in place "
            "(servers keep what they loaded), publish a higher version"
        )
    mirror = saved_model_mirror(manifest)
    base.mkdir(parents=True, exist_ok=True)
    tmp = base / f".{version}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        for rel in [*manifest["files"], bundle.MANIFEST]:
            _copy_synced(source / rel, tmp / rel)
        # What was copied is what the manifest describes (files changed meanwhile fail here).
        bundle.read_manifest(tmp, check_files=True)
        for rel, dest in mirror.items():
            (tmp / dest).parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(tmp / rel, tmp / dest)
            except OSError:  # a filesystem without hard links
                _copy_synced(tmp / rel, tmp / dest)
        if sign_key is not None:
            bundle.sign_bundle(tmp, sign_key)
        elif signature is not None:
            with open(tmp / bundle.SIGNATURE_FILE, "xb") as f:
                f.write(signature)
                f.flush()
                os.fsync(f.fileno())
        if trust is not None:  # the copy is what was trusted
            bundle.read_manifest(tmp, check_files=False, trust=trust)
        for folder in sorted({p.parent for p in tmp.rglob("*")}, key=lambda p: -len(p.parts)):
            _fsync_dir(folder)
        if os.path.lexists(target):  # published meanwhile by someone else
            raise BundleError(f"{target}: version {version} appeared while publishing")
        os.rename(tmp, target)
        _fsync_dir(base)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
