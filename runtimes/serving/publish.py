"""``publish``: a bundle -> a new version folder under a model base path (TF-free).

The version folder ``BASE/<version>`` is the bundle, unchanged (any reader reads it as
the bundle it was), plus its SavedModel mirrored at the folder's root, where TF Serving
looks (``BASE/<version>/saved_model.pb``): so both ``policy-toolkit serve BASE`` and
``tensorflow_model_server --model_base_path=BASE`` serve it. The mirror's files are hard
links to the bundle's own where the filesystem allows (no second copy on disk), copies
otherwise; the manifest does not list them, and no reader of ours reads them.

It is written by ``toolkit.bundle.write_folder``: in a hidden temporary folder beside
the versions (``.N.tmp-XXXXXXXX``, which neither server looks at), checked against the
manifest, every file and folder synced to disk, then renamed into place, so a server
polling BASE sees the whole version or none. Temporary folders that killed publishes
left behind are removed by the next publish (those of a publish still running are not).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

from runtimes.serving.models import MAX_VERSION
from toolkit import bundle
from toolkit.bundle import Layout
from toolkit.errors import BundleError, ExportError, SpecMismatchError

__all__ = ["publish", "saved_model_mirror"]

# A publish's temporary folder (toolkit.bundle.write_folder's name for version N).
_TEMPORARY = re.compile(r"\.([0-9]{1,64})\.tmp-[0-9a-f]{8}")


def saved_model_mirror(layout: Layout) -> dict[str, str]:
    """``{bundle file: its path at the version root}`` for the SavedModel's files."""
    if not layout.has("saved_model"):
        return {}
    prefix = layout.format("saved_model").path.rstrip("/") + "/"
    mirror = {rel: rel[len(prefix) :] for rel in layout.files if rel.startswith(prefix)}
    clash = sorted(set(mirror.values()) & (set(layout.files) | {bundle.MANIFEST}))
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
    layout = bundle.read_layout(source, check_files=True, trust=trust)
    signature = None
    if os.path.lexists(source / bundle.SIGNATURE_FILE):
        signature = bundle.read_member(
            source, bundle.SIGNATURE_FILE, key=bundle.SIGNATURE_FILE, cap=bundle.MAX_MANIFEST_BYTES
        )
    if version is None:
        version = layout.train_step
        if version is None or (isinstance(version, int) and version < 0):
            raise SpecMismatchError(
                "--version",
                "a version number (the bundle records no train step to use)",
                repr(version),
            )
    if isinstance(version, bool) or not isinstance(version, int) or not 0 <= version <= MAX_VERSION:
        raise SpecMismatchError("version", f"an int in [0, {MAX_VERSION}]", repr(version))
    base = Path(base).absolute()
    if os.path.lexists(base) and not base.is_dir():
        raise SpecMismatchError(str(base), "a folder of versions (or a path to create)", "a file")
    target = base / str(version)
    if os.path.lexists(target):
        raise BundleError(
            f"{target}: version {version} already exists; versions are never replaced in place "
            "(servers keep what they loaded), publish a higher version"
        )
    mirror = saved_model_mirror(layout)
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BundleError(f"{base}: cannot create the base path ({e.strerror})") from None
    _remove_leftovers(base)

    def fill(tmp: Path) -> None:
        for rel in [*layout.files, bundle.MANIFEST]:
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / rel, tmp / rel)
        # What was copied is what the manifest describes (files changed meanwhile fail here).
        bundle.read_manifest(tmp, check_files=True)
        for rel, dest in mirror.items():
            (tmp / dest).parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(tmp / rel, tmp / dest)
            except OSError:  # a filesystem without hard links
                shutil.copyfile(tmp / rel, tmp / dest)
        if sign_key is not None:
            bundle.sign_bundle(tmp, sign_key)
        elif signature is not None:
            (tmp / bundle.SIGNATURE_FILE).write_bytes(signature)
        if trust is not None:  # the copy is what was trusted
            bundle.read_manifest(tmp, check_files=False, trust=trust)

    try:
        return bundle.write_folder(target, fill)
    except ExportError:  # published meanwhile by someone else
        raise BundleError(f"{target}: version {version} appeared while publishing") from None


def _remove_leftovers(base: Path) -> None:
    """Removes the temporary folders of publishes that were killed (only those)."""
    try:
        names = os.listdir(base)
    except OSError:
        return
    for name in names:
        match = _TEMPORARY.fullmatch(name)
        if match is not None:
            bundle.remove_stale(base / match.group(1))
