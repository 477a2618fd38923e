"""Crash recovery: completing a replacement a killed writer left half done (TF-free).

``toolkit.bundle.writing`` swaps a new bundle in with one ``renameat2(RENAME_EXCHANGE)``;
where that is unavailable it renames the old bundle aside and the new one into place, and
a process killed between the two renames leaves no bundle at the path. The next toolkit
call on the path, read or write, then puts the complete old (or, failing that, new)
bundle back (``recover``). docs/bundle-format.md, "Crash safety".
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from toolkit.bundle.files import check_bundle_files, read_json_member
from toolkit.bundle.names import MANIFEST
from toolkit.errors import BundleError

__all__ = ["fsync_dir", "fsync_tree", "recover", "siblings", "stale_pattern"]

_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)


def stale_pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"\.{re.escape(name)}\.(tmp|old)-[0-9a-f]{{8}}")


def siblings(target: Path) -> list[Path]:
    pattern = stale_pattern(target.name)
    try:
        names = os.listdir(target.parent)
    except OSError:
        return []
    return [target.parent / n for n in sorted(names) if pattern.fullmatch(n)]


def _is_complete(path: Path, manifest_name: str) -> bool:
    try:
        data = read_json_member(path, manifest_name, "missing")
        files = data.get("files") if isinstance(data, dict) else None
        if not isinstance(files, dict):
            return False
        check_bundle_files(path, files, where=manifest_name)
    except (BundleError, OSError):
        return False
    return True


def recover(target: str | os.PathLike, manifest_name: str = MANIFEST) -> bool:
    """Completes a replacement a killed process left half done; True if it restored one.

    Only the two-rename fallback can leave ``target`` missing: then the newest complete
    ``.NAME.old-*`` (the previous bundle) or ``.NAME.tmp-*`` (the new one) sibling is
    renamed back into place. Nothing else is touched.
    """
    target = Path(target).absolute()
    if os.path.lexists(target):
        return False
    candidates = [p for p in siblings(target) if p.is_dir() and not p.is_symlink()]
    # The old bundle first: it was complete before the replacement began.
    candidates.sort(key=lambda p: (".old-" not in p.name, -p.stat().st_mtime))
    for candidate in candidates:
        if _is_complete(candidate, manifest_name):
            try:
                os.rename(candidate, target)
            except OSError:
                return False
            fsync_dir(target.parent)
            return True
    return False


def _fsync_path(path: Path, directory: bool) -> None:
    flags = os.O_RDONLY | (_O_DIRECTORY if directory else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot fsync folders
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    _fsync_path(path, directory=True)


def fsync_tree(root: Path) -> None:
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            _fsync_path(Path(dirpath) / name, directory=False)
        fsync_dir(Path(dirpath))
