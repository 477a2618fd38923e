"""Crash-safe writes of bundles and checkpoints (TF-free).

``write_bundle`` builds the bundle in a hidden ``.NAME.tmp-XXXXXXXX`` sibling, fsyncs every
file and folder, and swaps it with the old bundle atomically (``renameat2(RENAME_EXCHANGE)``
on Linux; elsewhere two renames, which ``toolkit.bundle.recovery.recover`` completes or
undoes on the next call). Stale siblings of killed runs are removed by the next write to
the same target. docs/bundle-format.md, "Crash safety".
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from toolkit.bundle.files import sha256_file
from toolkit.bundle.manifest import without_files
from toolkit.bundle.names import MANIFEST, SAVED_MODEL_MANIFEST
from toolkit.bundle.recovery import fsync_dir, fsync_tree, recover, siblings
from toolkit.errors import ExportError

__all__ = [
    "hash_files",
    "remove_stale",
    "write_bundle",
    "write_folder",
    "write_saved_model_manifest",
]

_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)

#: Test seam: called with the name of each crash point of a write (see tests/toolkit).
_crash_hook: Callable[[str], None] | None = None


def _crash_point(name: str) -> None:
    if _crash_hook is not None:
        _crash_hook(name)


def hash_files(root: Path, manifest_name: str = MANIFEST) -> dict[str, dict[str, Any]]:
    """``{relative posix path: {"sha256", "size"}}`` for every file under root but the manifest."""
    root = Path(root)
    files = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel == manifest_name:
            continue
        files[rel] = {"sha256": sha256_file(path), "size": path.stat().st_size}
    return files


@contextlib.contextmanager
def _held(path: Path) -> Iterator[bool]:
    """An exclusive flock on a folder for the block; yields False when another holds it.

    A writer holds its temporary folder's lock while it builds, so the next write can
    tell a killed run's leftovers (lock released with the process) from a live one's.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - no flock: every sibling counts as stale
        yield True
        return
    try:
        fd = os.open(path, os.O_RDONLY | _O_DIRECTORY | _O_NOFOLLOW | _O_CLOEXEC)
    except OSError:
        yield False
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def _remove_stale(target: Path, manifest_name: str) -> None:
    recover(target, manifest_name)
    remove_stale(target)


def remove_stale(target: str | os.PathLike) -> None:
    """Removes our own temporary and old siblings of ``target`` (``.NAME.tmp-XXXXXXXX``,
    ``.NAME.old-XXXXXXXX``) left by killed runs; not those of a write still running
    (it holds its folder's lock), nothing else."""
    import shutil  # writers only: readers (edge devices) skip the import

    target = Path(target).absolute()
    for path in siblings(target):
        if path.is_dir() and not path.is_symlink():
            with _held(path) as stale:
                if stale:
                    shutil.rmtree(path, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swaps two paths atomically with renameat2(RENAME_EXCHANGE); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    renameat2.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]
    result = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    if result == 0:
        return True
    error = ctypes.get_errno()
    if error in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(error, os.strerror(error), str(b))


#: Whether write_bundle may use renameat2 (tests turn it off to check the fallback).
_use_exchange = True


def write_bundle(
    output_dir: str | os.PathLike,
    build: Callable[[Path], dict[str, Any]],
    *,
    overwrite: bool = False,
    manifest_name: str = MANIFEST,
) -> Path:
    """Builds a bundle in a temporary folder beside ``output_dir``, then swaps it in place.

    Args:
      output_dir: where the bundle goes.
      build: writes the bundle's files into the folder it is given and returns the
        manifest (without ``files``, which this function adds).
      overwrite: replace an existing ``output_dir``; otherwise an existing one is an error.
      manifest_name: the manifest's file name (checkpoints use checkpoint.json).

    Returns:
      The bundle's path. On any failure nothing is left behind and an existing bundle
      is untouched; a process killed at any point leaves a complete bundle (old or new)
      at the path, or (without renameat2) one the next call restores.
    """
    output = Path(output_dir).absolute()
    parent = output.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ExportError(f"{parent}: cannot create the output folder ({e.strerror})") from e
    if not os.access(parent, os.W_OK):
        raise ExportError(f"{parent}: not writable")
    _remove_stale(output, manifest_name)
    if os.path.lexists(output) and not overwrite:
        raise ExportError(f"{output}: already exists; pass overwrite=True to replace it")
    if os.path.islink(output) or (os.path.lexists(output) and not output.is_dir()):
        raise ExportError(f"{output}: expected a bundle folder to replace, got a file or link")

    def fill(tmp: Path) -> None:
        manifest = build(tmp)
        manifest["files"] = hash_files(tmp, manifest_name)
        _write_json(tmp / manifest_name, manifest)

    _build_and_swap(output, fill)
    return output


def write_folder(output_dir: str | os.PathLike, fill: Callable[[Path], None]) -> Path:
    """Writes a new folder crash-safely: ``fill`` builds it in a temporary sibling
    (``.NAME.tmp-XXXXXXXX``, locked while it is built), every file and folder is synced,
    then it is renamed into place. write_bundle's writer, for folders of any layout.

    Args:
      output_dir: the folder to create; it must not exist (nothing is replaced).
      fill: writes the folder's contents into the folder it is given.

    Returns:
      The folder's path. On any failure nothing is left behind; a process killed
      before the rename leaves only the temporary sibling, which ``remove_stale``
      removes.

    Raises:
      ExportError: when ``output_dir`` exists already (or appears meanwhile).
    """
    output = Path(output_dir).absolute()
    remove_stale(output)
    if os.path.lexists(output):
        raise ExportError(f"{output}: already exists")
    _build_and_swap(output, fill, replace=False)
    return output


def _build_and_swap(output: Path, fill: Callable[[Path], None], replace: bool = True) -> None:
    tmp = output.parent / f".{output.name}.tmp-{_suffix()}"
    with _removed_on_failure(tmp):
        tmp.mkdir()
        with _held(tmp):
            fill(tmp)
            _crash_point("written")
            fsync_tree(tmp)
            _crash_point("synced")
            if replace:
                _replace_dir(tmp, output)
                return
            try:
                if os.path.lexists(output):
                    raise FileExistsError(errno.EEXIST, "exists")
                os.rename(tmp, output)
            except OSError as e:
                if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
                raise ExportError(f"{output}: appeared while it was being written") from None
            fsync_dir(output.parent)


def _suffix() -> str:
    import uuid  # writers only: readers (edge devices) skip the import

    return uuid.uuid4().hex[:8]


def _replace_dir(new: Path, target: Path) -> None:
    import shutil

    if not os.path.lexists(target):
        os.rename(new, target)
        _crash_point("renamed")
        fsync_dir(target.parent)
        return
    if _use_exchange and _exchange(new, target):
        # ``new`` now holds the old bundle.
        _crash_point("exchanged")
        fsync_dir(target.parent)
        _crash_point("exchange-synced")
        shutil.rmtree(new, ignore_errors=True)
        return
    old = target.parent / f".{target.name}.old-{_suffix()}"
    os.rename(target, old)
    _crash_point("moved-old")
    try:
        os.rename(new, target)
    except BaseException:
        os.rename(old, target)
        raise
    _crash_point("moved-new")
    fsync_dir(target.parent)
    _crash_point("fallback-synced")
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def _removed_on_failure(path: Path) -> Iterator[None]:
    try:
        yield
    except BaseException:
        import shutil

        shutil.rmtree(path, ignore_errors=True)
        raise


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False, allow_nan=False) + "\n")


def write_saved_model_manifest(saved_model_dir: Path, manifest: dict[str, Any]) -> None:
    """Puts the manifest (less its file table) into a SavedModel folder being written."""
    path = Path(saved_model_dir) / SAVED_MODEL_MANIFEST
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(without_files(manifest), sort_keys=True))
