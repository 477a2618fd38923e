"""The bundle on disk: layout, manifest, contained reads, hashes and crash-safe writes (TF-free).

Exporters write bundles with ``write_bundle``; runtimes, the CLI and the exporters that
read bundles go through ``read_manifest`` and ``read_member`` / ``check_bundle_files``:

* every path taken from a manifest is relative, normalised and inside the bundle, and
  is opened component by component without following symbolic links;
* only regular files are read (a FIFO, device or folder is refused before any read),
  never more than the size the manifest declares (``manifest.json`` itself is capped);
* the manifest is validated against docs/manifest.schema.json (``toolkit.manifest``)
  before any field is used.

Writes build the bundle in a hidden ``.NAME.tmp-XXXXXXXX`` sibling, fsync every file
and folder, and swap it with the old bundle atomically (``renameat2(RENAME_EXCHANGE)``
on Linux; elsewhere two renames, which the next call on the path completes or undoes).
Stale siblings of killed runs are removed by the next write to the same target.
The format is documented in docs/bundle-format.md.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import json
import os
import re
import stat
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from toolkit.errors import BundleError, ExportError

__all__ = [
    "CHECKPOINT_FILE",
    "CHECKPOINT_FORMAT",
    "FORMAT",
    "FORMATS",
    "FORMAT_VERSION",
    "LITERT_FILE",
    "MANIFEST",
    "MAX_MANIFEST_BYTES",
    "ONNX_FILE",
    "ONNX_MANIFEST_KEY",
    "SAVED_MODEL_DIR",
    "SAVED_MODEL_MANIFEST",
    "check_bundle_files",
    "check_member_path",
    "check_tree",
    "hash_files",
    "read_checkpoint",
    "read_manifest",
    "read_member",
    "recover",
    "sha256_file",
    "write_bundle",
]

FORMAT = "policy-toolkit-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
ONNX_FILE = "policy.onnx"
LITERT_FILE = "policy.tflite"
SAVED_MODEL_DIR = "saved_model"
#: The forms a bundle may hold (manifest ``formats``).
FORMATS = ("saved_model", "onnx", "litert")
#: The ONNX file's metadata_props key holding the manifest (without its file table).
ONNX_MANIFEST_KEY = "policy_toolkit.manifest"
#: The SavedModel's copy of the manifest (without its file table), inside its folder.
#: ``assets.extra`` is TensorFlow's place for files the graph does not read.
SAVED_MODEL_MANIFEST = "assets.extra/policy_toolkit.manifest.json"

# Weights-only checkpoints (exporters.save_checkpoint): a folder with checkpoint.json,
# weights.npz (ONNX initializers by name) and tf/ckpt-* (a TF checkpoint).
CHECKPOINT_FORMAT = "policy-toolkit-checkpoint"
CHECKPOINT_FILE = "checkpoint.json"
WEIGHTS_FILE = "weights.npz"
TF_CHECKPOINT_PREFIX = "tf/ckpt"

#: Largest manifest.json (or checkpoint.json) read; real ones are a few KiB to a MiB.
MAX_MANIFEST_BYTES = 16 << 20
#: Largest file read whole into memory (protobuf models cannot exceed 2 GiB anyway).
MAX_MEMBER_BYTES = 2 << 30

_CHUNK = 1 << 20
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_O_BINARY = getattr(os, "O_BINARY", 0)
_WALK_WITH_FDS = os.open in os.supports_dir_fd and bool(_O_NOFOLLOW)


# --- paths from manifests ---------------------------------------------------------------

_PATH_PART = re.compile(r"[^/\\\x00]+")


def check_member_path(rel: Any, key: str, where: str = MANIFEST) -> list[str]:
    """The parts of a bundle-relative path from a manifest, or a BundleError naming ``key``.

    Accepted: a non-empty relative posix path without ``.``/``..`` parts, empty parts,
    backslashes or NUL bytes (so it cannot leave the bundle by itself; symbolic links
    are refused when it is opened).
    """
    if not isinstance(rel, str) or not rel:
        raise BundleError(
            f"{where}: {key}: expected a relative path inside the bundle, got {rel!r:.60}"
        )
    parts = rel.split("/")
    if (
        len(rel) > 4096
        or rel.startswith("/")
        or any(p in ("", ".", "..") or not _PATH_PART.fullmatch(p) for p in parts)
    ):
        raise BundleError(
            f"{where}: {key}: expected a relative path inside the bundle, got {rel!r:.80} "
            "(absolute paths, '..', '.', empty parts and backslashes leave or blur the bundle)"
        )
    return parts


def _symlink_error(key: str, rel: str) -> BundleError:
    # Says nothing about where the link points: that may be outside the bundle.
    return BundleError(
        f"{key}: {rel} is reached through a symbolic link; bundles hold regular files only"
    )


def _open_member(root: Path, rel: str, key: str, where: str) -> int:
    """An fd of ``root/rel`` opened without following any symbolic link on the way."""
    parts = check_member_path(rel, key, where)
    if not _WALK_WITH_FDS:  # pragma: no cover - platforms without openat
        full = root / rel
        real_root = os.path.realpath(root)
        real = os.path.realpath(full)
        if os.path.commonpath([real_root, real]) != real_root or os.path.islink(full):
            raise _symlink_error(key, rel)
        return os.open(full, os.O_RDONLY | _O_NONBLOCK | _O_CLOEXEC | _O_BINARY)
    dir_flags = os.O_RDONLY | _O_DIRECTORY | _O_NOFOLLOW | _O_CLOEXEC
    try:
        dirfd = os.open(root, os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC)
    except OSError as e:
        raise BundleError(f"{root}: cannot open the bundle folder ({e.strerror})") from e
    try:
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            flags = os.O_RDONLY | _O_NOFOLLOW | _O_NONBLOCK | _O_CLOEXEC if last else dir_flags
            try:
                fd = os.open(part, flags, dir_fd=dirfd)
            except OSError as e:
                if e.errno == errno.ELOOP or (
                    e.errno == errno.ENOTDIR and os.path.islink(os.path.join(root, *parts[: i + 1]))
                ):
                    raise _symlink_error(key, rel) from None
                if e.errno in (errno.ENOENT, errno.ENOTDIR):
                    raise FileNotFoundError(errno.ENOENT, "missing", rel) from None
                raise BundleError(f"{key}: {rel}: cannot be opened ({e.strerror})") from None
            os.close(dirfd)
            dirfd = fd
        return dirfd
    except BaseException:
        os.close(dirfd)
        raise


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


@contextlib.contextmanager
def _member(
    root: Path, rel: str, key: str, size: int | None, cap: int, where: str
) -> Iterator[tuple[int, int]]:
    """``(fd, size)`` of a contained regular file whose size is ``size`` (if given) and <= cap."""
    fd = _open_member(root, rel, key, where)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise BundleError(f"{key}: {rel}: expected a regular file, got {_kind(info.st_mode)}")
        if size is not None and info.st_size != size:
            raise BundleError(
                f"{root / rel}: expected {size} bytes, got {info.st_size} "
                "(the file was changed or truncated)"
            )
        if info.st_size > cap:
            raise BundleError(f"{root / rel}: expected at most {cap} bytes, got {info.st_size}")
        yield fd, info.st_size
    finally:
        os.close(fd)


def _read_fd(fd: int, limit: int, path: Path) -> bytes:
    chunks, total = [], 0
    while total <= limit:
        chunk = os.read(fd, min(_CHUNK, limit + 1 - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    if total != limit:
        raise BundleError(
            f"{path}: expected {limit} bytes, got {total} (the file changed while read)"
        )
    return b"".join(chunks)


def read_member(
    root: str | os.PathLike,
    rel: str,
    *,
    key: str,
    files: dict[str, Any] | None = None,
    cap: int = MAX_MEMBER_BYTES,
    where: str = MANIFEST,
) -> bytes:
    """The bytes of one bundle file, contained, bounded and (with ``files``) hash-checked.

    Args:
      root: the bundle folder.
      rel: the path from the manifest.
      key: the manifest key ``rel`` came from, for messages (e.g. ``onnx.file``).
      files: the manifest's file table: the file must be listed, and its size and
        sha256 must match. Without it any size up to ``cap`` is read.
      cap: the most bytes read.
      where: the manifest's name, for messages.

    Raises:
      BundleError: a path leaving the bundle, a symbolic link, a missing, non-regular,
        oversized, changed or unlisted file.
    """
    root = Path(root)
    entry = None
    if files is not None:
        entry = files.get(rel)
        if not isinstance(entry, dict):
            raise BundleError(f"{where}: {key}: {rel!r:.80} is not listed in 'files'")
    try:
        with _member(root, rel, key, entry["size"] if entry else None, cap, where) as (fd, size):
            data = _read_fd(fd, size, root / rel)
    except FileNotFoundError:
        raise BundleError(f"{root}: file {rel} listed in {where} is missing") from None
    if entry is not None:
        _check_digest(root / rel, _sha256_hex(data), entry)
    return data


#: Up to this size a file is hashed with the interpreter's own SHA-256 when OpenSSL's
#: (hashlib) is not loaded yet: importing hashlib costs ~3 ms, a fiftieth of a runtime's
#: cold start, and the built-in code (~140 MB/s here, OpenSSL ~1.1 GB/s) hashes 256 KiB
#: in under 2 ms. Small policy models (kilobytes) then never load OpenSSL.
_BUILTIN_HASH_BYTES = 1 << 18


def _builtin_sha256() -> Any:
    """CPython's own sha256 constructor (``_sha2`` from 3.12, ``_sha256`` before), or None."""
    try:
        return importlib.import_module("_sha2" if sys.version_info >= (3, 12) else "_sha256").sha256
    except (ImportError, AttributeError):  # another interpreter
        return None


def _sha256_hex(data: bytes) -> str:
    if len(data) <= _BUILTIN_HASH_BYTES and "_hashlib" not in sys.modules:
        builtin = _builtin_sha256()
        if builtin is not None:
            return builtin(data).hexdigest()
    import hashlib

    return hashlib.sha256(data).hexdigest()


def _check_digest(path: Path, digest: str, entry: dict[str, Any]) -> None:
    if digest != entry.get("sha256"):
        raise BundleError(
            f"{path}: expected sha256 {str(entry.get('sha256'))[:12]}..., got {digest[:12]}... "
            "(the file was changed)"
        )


def _hash_member(root: Path, rel: str, key: str, size: int, where: str) -> str:
    import hashlib

    digest = hashlib.sha256()
    with _member(root, rel, key, size, sys.maxsize, where) as (fd, _):
        remaining = size
        while remaining:
            chunk = os.read(fd, min(_CHUNK, remaining))
            if not chunk:
                raise BundleError(f"{root / rel}: expected {size} bytes, got fewer (truncated)")
            digest.update(chunk)
            remaining -= len(chunk)
    return digest.hexdigest()


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file of our own making, read in chunks."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_state(root: Path, rel: str, entry: Any, where: str = MANIFEST) -> str:
    """``"ok"``, ``"missing"``, ``"changed"`` or ``"refused"`` (unsafe path or file kind)."""
    try:
        size = entry.get("size") if isinstance(entry, dict) else None
        if not isinstance(size, int):
            return "changed"
        digest = _hash_member(Path(root), rel, f"files[{rel!r}]", size, where)
    except FileNotFoundError:
        return "missing"
    except BundleError as e:
        return "changed" if "bytes" in str(e) else "refused"
    return "ok" if digest == entry.get("sha256") else "changed"


def check_bundle_files(
    root: str | os.PathLike,
    files: dict[str, Any],
    only: list[str] | None = None,
    where: str = MANIFEST,
) -> None:
    """Checks listed files' sizes and hashes (all, or those under the ``only`` prefixes).

    Each file is opened contained (no symbolic links, nothing outside the bundle),
    must be a regular file of the declared size, and is hashed as it is read.
    """
    root = Path(root)
    for rel, entry in files.items():
        key = f"files[{rel!r}]"
        check_member_path(rel, key, where)
        if only is not None and not any(rel == p or rel.startswith(p + "/") for p in only):
            continue
        if not isinstance(entry, dict) or not isinstance(entry.get("size"), int):
            raise BundleError(f"{where}: {key}: expected {{'sha256', 'size'}}, got {entry!r:.60}")
        try:
            digest = _hash_member(root, rel, key, entry["size"], where)
        except FileNotFoundError:
            raise BundleError(f"{root}: file {rel} listed in {where} is missing") from None
        _check_digest(root / rel, digest, entry)


def check_tree(root: str | os.PathLike, rel_dir: str, files: dict[str, Any], key: str) -> None:
    """Refuses a folder of the bundle holding anything but regular files listed in ``files``.

    A library that reads the folder by path (TensorFlow's SavedModel loader) then reads
    only hashed regular files: no symbolic link, FIFO, device or unlisted file.
    """
    root = Path(root)
    listed = {r for r in files if r.startswith(rel_dir + "/")}
    if not listed:
        raise BundleError(f"{MANIFEST}: {key}: {rel_dir} has no files listed in 'files'")
    try:
        fd = _open_member_dir(root, rel_dir, key)
    except FileNotFoundError:
        first = sorted(listed)[0]
        raise BundleError(f"{root}: file {first} listed in {MANIFEST} is missing") from None
    try:
        if not _WALK_WITH_FDS:  # pragma: no cover
            walker = ((d, ds, fs, None) for d, ds, fs in os.walk(root / rel_dir))
        else:
            walker = os.fwalk(".", dir_fd=fd, follow_symlinks=False)
        for dirpath, dirnames, filenames, dfd in walker:
            base = os.path.normpath(os.path.join(rel_dir, dirpath)) if dfd is not None else None
            if base is None:  # pragma: no cover
                base = Path(dirpath).relative_to(root).as_posix()
            for name in dirnames + filenames:
                rel = f"{base}/{name}".replace(os.sep, "/")
                info = (
                    os.stat(name, dir_fd=dfd, follow_symlinks=False)
                    if dfd is not None
                    else (os.lstat(os.path.join(dirpath, name)))
                )
                if stat.S_ISLNK(info.st_mode):
                    raise _symlink_error(key, rel)
                if stat.S_ISDIR(info.st_mode):
                    continue
                if not stat.S_ISREG(info.st_mode):
                    raise BundleError(
                        f"{key}: {rel}: expected a regular file, got {_kind(info.st_mode)}"
                    )
                if rel not in listed:
                    raise BundleError(f"{key}: {rel} is in the bundle but not listed in 'files'")
    finally:
        os.close(fd)


def _open_member_dir(root: Path, rel: str, key: str) -> int:
    parts = check_member_path(rel, key)
    dirfd = os.open(root, os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC)
    try:
        for part in parts:
            try:
                fd = os.open(
                    part, os.O_RDONLY | _O_DIRECTORY | _O_NOFOLLOW | _O_CLOEXEC, dir_fd=dirfd
                )
            except OSError as e:
                if e.errno == errno.ELOOP or os.path.islink(os.path.join(root, rel)):
                    raise _symlink_error(key, rel) from None
                if e.errno == errno.ENOENT:
                    raise FileNotFoundError(errno.ENOENT, "missing", rel) from None
                raise BundleError(f"{key}: {rel}: expected a folder ({e.strerror})") from None
            os.close(dirfd)
            dirfd = fd
        return dirfd
    except BaseException:
        os.close(dirfd)
        raise


# --- reading manifests ---------------------------------------------------------------------


def _parse_json(data: bytes, path: Path) -> Any:
    def no_constants(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    try:
        return json.loads(data.decode("utf-8"), parse_constant=no_constants)
    except (UnicodeDecodeError, ValueError) as e:
        raise BundleError(f"{path}: not valid JSON ({str(e).splitlines()[0][:120]})") from None
    except RecursionError:
        raise BundleError(f"{path}: not valid JSON (nested too deeply)") from None


def _read_json_file(root: Path, name: str, missing: str) -> Any:
    try:
        data = read_member(root, name, key=name, cap=MAX_MANIFEST_BYTES, where=name)
    except BundleError as e:
        if "is missing" in str(e):
            raise BundleError(missing) from None
        raise
    return _parse_json(data, root / name)


def _check_format(data: Any, path: Path, expected: str) -> dict[str, Any]:
    if not isinstance(data, dict) or data.get("format") != expected:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise BundleError(f"{path}: expected format {expected!r}, got {found!r:.60}")
    version = data.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise BundleError(f"{path}: expected an integer format_version, got {version!r:.40}")
    if version > FORMAT_VERSION:
        raise BundleError(
            f"{path}: bundle format version {version} is newer than this policy-toolkit "
            f"reads (up to {FORMAT_VERSION}); upgrade policy-toolkit"
        )
    if version < 1:
        raise BundleError(f"{path}: expected format_version >= 1, got {version}")
    return data


def bundle_root(path: str | os.PathLike) -> Path:
    """The bundle folder for a path to it, its manifest.json, policy.onnx or policy.tflite."""
    root = Path(path)
    if (
        root.name in (MANIFEST, ONNX_FILE, LITERT_FILE)
        and not root.is_dir()
        and root.parent.is_dir()
    ):
        root = root.parent
    return root


def read_manifest(
    bundle_dir: str | os.PathLike, *, check_files: bool = True, validate: bool = True
) -> dict[str, Any]:
    """Reads and validates a bundle's manifest.

    Args:
      bundle_dir: the bundle folder (or its policy.onnx / manifest.json).
      check_files: verify that every listed file exists with its size and sha256.
      validate: check every field against the manifest schema (``toolkit.manifest``);
        only the format, the version and the file table's paths are checked without.

    Raises:
      BundleError: saying what is wrong and where (one line per manifest violation).
    """
    root = bundle_root(bundle_dir)
    if not os.path.lexists(root):
        recover(root)
    if not root.exists():
        raise BundleError(f"{root}: no such bundle")
    if not root.is_dir():
        raise BundleError(f"{root}: expected a bundle folder, got a file")
    path = root / MANIFEST
    data = _read_json_file(root, MANIFEST, f"{root}: no {MANIFEST}; not a policy-toolkit bundle")
    manifest = _check_format(data, path, FORMAT)
    if validate:
        from toolkit import manifest as manifest_lib

        manifest_lib.validate(manifest)
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise BundleError(f"{path}: expected a 'files' table, got {type(files).__name__}")
    for rel in files:
        check_member_path(rel, f"files[{rel!r}]")
    if check_files:
        check_bundle_files(root, files)
    return manifest


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Reads a weights-only checkpoint's checkpoint.json and checks its files.

    Raises:
      BundleError: for a folder that is no checkpoint, or a changed or missing file.
    """
    root = Path(path)
    if not root.is_dir():
        raise BundleError(f"{root}: no such checkpoint folder")
    info_path = root / CHECKPOINT_FILE
    data = _read_json_file(
        root, CHECKPOINT_FILE, f"{root}: no {CHECKPOINT_FILE}; not a policy-toolkit checkpoint"
    )
    info = _check_format(data, info_path, CHECKPOINT_FORMAT)
    files = info.get("files")
    if not isinstance(files, dict):
        raise BundleError(f"{info_path}: expected a 'files' table")
    for key in ("weights", "tf_checkpoint"):
        if key in info:
            check_member_path(info[key], key, CHECKPOINT_FILE)
    step = info.get("train_step")
    if step is not None and (not isinstance(step, int) or isinstance(step, bool)):
        raise BundleError(
            f"{CHECKPOINT_FILE}: train_step: expected an int or null, got {step!r:.40}"
        )
    check_bundle_files(root, files, where=CHECKPOINT_FILE)
    return info


# --- writing --------------------------------------------------------------------------------

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


def _stale_pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"\.{re.escape(name)}\.(tmp|old)-[0-9a-f]{{8}}")


def _siblings(target: Path) -> list[Path]:
    pattern = _stale_pattern(target.name)
    try:
        names = os.listdir(target.parent)
    except OSError:
        return []
    return [target.parent / n for n in sorted(names) if pattern.fullmatch(n)]


def _is_complete(path: Path, manifest_name: str) -> bool:
    try:
        data = _read_json_file(path, manifest_name, "missing")
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
    candidates = [p for p in _siblings(target) if p.is_dir() and not p.is_symlink()]
    # The old bundle first: it was complete before the replacement began.
    candidates.sort(key=lambda p: (".old-" not in p.name, -p.stat().st_mtime))
    for candidate in candidates:
        if _is_complete(candidate, manifest_name):
            try:
                os.rename(candidate, target)
            except OSError:
                return False
            _fsync_dir(target.parent)
            return True
    return False


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
    for path in _siblings(target):
        if path.is_dir() and not path.is_symlink():
            with _held(path) as stale:
                if stale:
                    shutil.rmtree(path, ignore_errors=True)


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


def _fsync_dir(path: Path) -> None:
    _fsync_path(path, directory=True)


def _fsync_tree(root: Path) -> None:
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            _fsync_path(Path(dirpath) / name, directory=False)
        _fsync_dir(Path(dirpath))


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
            _fsync_tree(tmp)
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
            _fsync_dir(output.parent)


def _suffix() -> str:
    import uuid  # writers only: readers (edge devices) skip the import

    return uuid.uuid4().hex[:8]


def _replace_dir(new: Path, target: Path) -> None:
    import shutil

    if not os.path.lexists(target):
        os.rename(new, target)
        _crash_point("renamed")
        _fsync_dir(target.parent)
        return
    if _use_exchange and _exchange(new, target):
        # ``new`` now holds the old bundle.
        _crash_point("exchanged")
        _fsync_dir(target.parent)
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
    _fsync_dir(target.parent)
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
    embedded = {k: v for k, v in manifest.items() if k != "files"}
    path.write_text(json.dumps(embedded, sort_keys=True))


def without_files(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest as the formats embed it: everything but the file table."""
    return {k: v for k, v in manifest.items() if k != "files"}


def check_embedded(manifest: dict[str, Any], embedded_text: Any, where: str) -> None:
    """Refuses a manifest that differs from the copy a format carries (``where``)."""
    if embedded_text is None:
        raise BundleError(
            f"{where}: carries no copy of the manifest; not exported by policy-toolkit"
        )
    if isinstance(embedded_text, bytes):
        try:
            embedded_text = embedded_text.decode("utf-8")
        except UnicodeDecodeError:
            raise BundleError(f"{where}: its manifest copy is not UTF-8") from None
    copy = _parse_json(embedded_text.encode("utf-8"), Path(where))
    expected = without_files(manifest)
    if copy != expected:
        if isinstance(copy, dict):
            keys = sorted(k for k in set(copy) | set(expected) if copy.get(k) != expected.get(k))
        else:
            keys = ["(all)"]
        raise BundleError(
            f"{MANIFEST}: differs from the copy in {where} at {', '.join(keys[:6])} "
            "(the manifest was edited after export)"
        )


# --- the formats' files, read as every reader must -----------------------------------------


def read_onnx(root: str | os.PathLike, manifest: dict[str, Any]) -> bytes:
    """The bundle's ONNX model bytes: contained, hash-checked, self-contained, and carrying
    a manifest copy equal to ``manifest``. Build sessions from these bytes, never a path."""
    from toolkit import onnx_proto

    rel = manifest["onnx"]["file"]
    data = read_member(root, rel, key="onnx.file", files=manifest["files"])
    facts = onnx_proto.check_self_contained(data, rel)
    check_embedded(manifest, facts.metadata.get(ONNX_MANIFEST_KEY), f"{rel} (metadata_props)")
    return data


def check_saved_model(root: str | os.PathLike, manifest: dict[str, Any]) -> Path:
    """Checks the bundle's SavedModel folder before TensorFlow reads it by path.

    It must hold only listed, hash-checked regular files (no links, FIFOs or extra
    files), and its manifest copy must equal ``manifest``; bundles written before
    SavedModels carried a copy are compared with the ONNX graph's copy when they have
    one. Returns the folder's path.
    """
    root = Path(root)
    files = manifest["files"]
    rel = manifest["saved_model"]["dir"]
    check_tree(root, rel, files, "saved_model.dir")
    check_bundle_files(root, files, only=[rel])
    copy_rel = f"{rel}/{SAVED_MODEL_MANIFEST}"
    if copy_rel in files:
        text = read_member(
            root, copy_rel, key="saved_model.dir", files=files, cap=MAX_MANIFEST_BYTES
        )
        check_embedded(manifest, text, copy_rel)
    elif manifest.get("onnx", {}).get("file") in files:
        read_onnx(root, manifest)
    return root / rel
