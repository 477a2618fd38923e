"""Contained, bounded reads of a bundle's files, and their hashes (TF-free).

Every path taken from a manifest is relative, normalised and inside the bundle, and is
opened component by component without following symbolic links (``openat`` with
``O_NOFOLLOW``); only regular files are read (a FIFO, device or folder is refused before
any read), never more than the size the manifest declares. docs/bundle-format.md, "What a
reader trusts", is the contract.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from toolkit.bundle.names import MANIFEST, MAX_MANIFEST_BYTES, MAX_MEMBER_BYTES
from toolkit.errors import BundleError

__all__ = [
    "check_bundle_files",
    "check_member_path",
    "check_tree",
    "file_state",
    "json_string",
    "loads_json",
    "parse_json",
    "read_json_member",
    "read_member",
    "sha256_file",
]

_CHUNK = 1 << 20
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_O_BINARY = getattr(os, "O_BINARY", 0)
_WALK_WITH_FDS = os.open in os.supports_dir_fd and bool(_O_NOFOLLOW)

# --- paths from manifests ---------------------------------------------------------------


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
        or "\\" in rel
        or "\x00" in rel
        or any(p in ("", ".", "..") for p in parts)
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


def _open_member(
    root: Path, rel: str, key: str, where: str = MANIFEST, *, folder: bool = False
) -> int:
    """An fd of ``root/rel`` (a file, or a folder with ``folder``) opened without following
    any symbolic link on the way: one ``openat(O_NOFOLLOW)`` per path component."""
    parts = check_member_path(rel, key, where)
    if not _WALK_WITH_FDS:  # pragma: no cover - platforms without openat
        full = root / rel
        real_root = os.path.realpath(root)
        real = os.path.realpath(full)
        if os.path.commonpath([real_root, real]) != real_root or os.path.islink(full):
            raise _symlink_error(key, rel)
        kind = _O_DIRECTORY if folder else _O_NONBLOCK | _O_BINARY
        return os.open(full, os.O_RDONLY | kind | _O_CLOEXEC)
    dir_flags = os.O_RDONLY | _O_DIRECTORY | _O_NOFOLLOW | _O_CLOEXEC
    last_flags = dir_flags if folder else os.O_RDONLY | _O_NOFOLLOW | _O_NONBLOCK | _O_CLOEXEC
    try:
        dirfd = os.open(root, os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC)
    except OSError as e:
        raise BundleError(f"{root}: cannot open the bundle folder ({e.strerror})") from e
    try:
        for i, part in enumerate(parts):
            flags = last_flags if i == len(parts) - 1 else dir_flags
            try:
                fd = os.open(part, flags, dir_fd=dirfd)
            except OSError as e:
                if e.errno == errno.ELOOP or os.path.islink(os.path.join(root, *parts[: i + 1])):
                    raise _symlink_error(key, rel) from None
                if e.errno == errno.ENOENT or (e.errno == errno.ENOTDIR and not folder):
                    raise FileNotFoundError(errno.ENOENT, "missing", rel) from None
                what = "expected a folder" if folder else "cannot be opened"
                raise BundleError(f"{key}: {rel}: {what} ({e.strerror})") from None
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
        fd = _open_member(root, rel_dir, key, folder=True)
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


# --- JSON files ----------------------------------------------------------------------------


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# Reading JSON runs json's own C scanner (what json.loads runs) without importing the json
# package: importing it compiles six regexes, ~5M instructions (0.7 ms) of a runtime's
# cold start (callgrind). Anything the scanner does not take whole goes to json.loads,
# which raises its own error; json.dumps runs only where a message needs it.
try:
    from _json import encode_basestring_ascii as _c_json_string
    from _json import make_scanner as _c_make_scanner
except ImportError:  # not CPython: json itself
    _c_json_string = _c_make_scanner = None


class _ScanContext:
    """What json's C scanner reads from a json.JSONDecoder: its defaults, constants refused."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = staticmethod(_no_constants)
    memo: dict = {}  # the C scanner keeps its own


_SCAN = _c_make_scanner(_ScanContext) if _c_make_scanner is not None else None
_JSON_SPACE = " \t\n\r"


def loads_json(text: str) -> Any:
    """``json.loads(text)`` with NaN and Infinity refused (a ValueError), as parse_json."""
    if _SCAN is not None:
        start = len(text) - len(text.lstrip(_JSON_SPACE))
        try:
            value, end = _SCAN(text, start)
        except (StopIteration, ValueError, RecursionError):
            pass  # json.loads raises its own error (the same for the same text)
        else:
            if not text[end:].strip(_JSON_SPACE):
                return value
    import json

    return json.loads(text, parse_constant=_no_constants)


def json_string(text: str) -> str:
    """``json.dumps(text)`` of a str (ASCII, escaped, quoted)."""
    if _c_json_string is not None:
        return _c_json_string(text)
    import json

    return json.dumps(text)


def parse_json(data: bytes, path: Path) -> Any:
    """JSON without NaN/Infinity constants; a BundleError naming ``path`` otherwise."""
    try:
        return loads_json(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise BundleError(f"{path}: not valid JSON ({str(e).splitlines()[0][:120]})") from None
    except RecursionError:
        raise BundleError(f"{path}: not valid JSON (nested too deeply)") from None


def read_json_member(root: Path, name: str, missing: str) -> Any:
    """A JSON file of the folder (manifest.json, checkpoint.json), capped; ``missing`` is the
    error when it is not there."""
    try:
        data = read_member(root, name, key=name, cap=MAX_MANIFEST_BYTES, where=name)
    except BundleError as e:
        if "is missing" in str(e):
            raise BundleError(missing) from None
        raise
    return parse_json(data, root / name)
