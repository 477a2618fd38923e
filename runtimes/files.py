"""Reading a bundle's model file, checked against its manifest entry (TF-free)."""

from __future__ import annotations

import hashlib
from pathlib import Path, PurePosixPath
from typing import Any

from toolkit import bundle
from toolkit.errors import BundleError

__all__ = ["read_checked"]


def read_checked(root: Path, rel: Any, files: dict[str, Any]) -> bytes:
    """The bytes of a bundle file, checked against the manifest's size and sha256.

    ``rel`` comes from the manifest, so it must be a plain relative path inside the
    bundle. The model is built from these same bytes, so what was checked is what runs.
    """
    if not isinstance(rel, str) or not rel:
        raise BundleError(f"{root}: expected a file name in {bundle.MANIFEST}, got {rel!r}")
    parts = PurePosixPath(rel).parts
    if PurePosixPath(rel).is_absolute() or "\\" in rel or any(p in ("..", "") for p in parts):
        raise BundleError(f"{root}: {rel!r}: expected a path inside the bundle")
    entry = files.get(rel) if isinstance(files, dict) else None
    if not isinstance(entry, dict):
        raise BundleError(f"{root}: {rel} is not listed in {bundle.MANIFEST}")
    path = root / rel
    try:
        inside = path.resolve().is_relative_to(root.resolve())
    except OSError:
        inside = False
    if not inside:
        raise BundleError(f"{root}: {rel} points outside the bundle")
    if not path.is_file():
        raise BundleError(f"{root}: file {rel} listed in {bundle.MANIFEST} is missing")
    data = path.read_bytes()
    if len(data) != entry.get("size"):
        raise BundleError(
            f"{path}: expected {entry.get('size')} bytes, got {len(data)} "
            "(the file was changed or truncated)"
        )
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry.get("sha256"):
        raise BundleError(
            f"{path}: expected sha256 {str(entry.get('sha256'))[:12]}..., got {digest[:12]}... "
            "(the file was changed)"
        )
    return data
