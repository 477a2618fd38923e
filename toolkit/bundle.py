"""The bundle on disk: layout, manifest, hashes and atomic writes (TF-free).

Exporters write bundles with ``write_bundle``; runtimes and the CLI read them with
``read_manifest``, which refuses a missing, corrupted, tampered or too-new bundle.
The format is documented in docs/bundle-format.md.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
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
    "MANIFEST",
    "ONNX_FILE",
    "ONNX_MANIFEST_KEY",
    "SAVED_MODEL_DIR",
    "hash_files",
    "read_checkpoint",
    "read_manifest",
    "sha256_file",
    "write_bundle",
]

FORMAT = "policy-toolkit-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
ONNX_FILE = "policy.onnx"
SAVED_MODEL_DIR = "saved_model"
#: The forms a bundle may hold (manifest ``formats``).
FORMATS = ("saved_model", "onnx")
#: The ONNX file's metadata_props key holding the manifest (without its file table).
ONNX_MANIFEST_KEY = "policy_toolkit.manifest"

# Weights-only checkpoints (exporters.save_checkpoint): a folder with checkpoint.json,
# weights.npz (ONNX initializers by name) and tf/ckpt-* (a TF checkpoint).
CHECKPOINT_FORMAT = "policy-toolkit-checkpoint"
CHECKPOINT_FILE = "checkpoint.json"
WEIGHTS_FILE = "weights.npz"
TF_CHECKPOINT_PREFIX = "tf/ckpt"

_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


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


def write_bundle(
    output_dir: str | os.PathLike,
    build: Callable[[Path], dict[str, Any]],
    *,
    overwrite: bool = False,
    manifest_name: str = MANIFEST,
) -> Path:
    """Builds a bundle in a temporary folder beside ``output_dir``, then renames it in place.

    Args:
      output_dir: where the bundle goes.
      build: writes the bundle's files into the folder it is given and returns the
        manifest (without ``files``, which this function adds).
      overwrite: replace an existing ``output_dir``; otherwise an existing one is an error.
      manifest_name: the manifest's file name (checkpoints use checkpoint.json).

    Returns:
      The bundle's path. On any failure nothing is left behind and an existing bundle
      is untouched.
    """
    output = Path(output_dir).absolute()
    if output.exists() and not overwrite:
        raise ExportError(f"{output}: already exists; pass overwrite=True to replace it")
    parent = output.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ExportError(f"{parent}: cannot create the output folder ({e.strerror})") from e
    if not os.access(parent, os.W_OK):
        raise ExportError(f"{parent}: not writable")
    tmp = parent / f".{output.name}.tmp-{uuid.uuid4().hex[:8]}"
    with _removed_on_failure(tmp):
        tmp.mkdir()
        manifest = build(tmp)
        manifest["files"] = hash_files(tmp, manifest_name)
        _write_json(tmp / manifest_name, manifest)
        _replace_dir(tmp, output)
    return output


def _replace_dir(new: Path, target: Path) -> None:
    if not target.exists():
        new.rename(target)
        return
    old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
    target.rename(old)
    try:
        new.rename(target)
    except BaseException:
        old.rename(target)
        raise
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def _removed_on_failure(path: Path) -> Iterator[None]:
    try:
        yield
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False, allow_nan=False) + "\n")


def _read_json_of_format(path: Path, expected: str) -> dict[str, Any]:
    """A JSON object whose "format" is ``expected``, or a BundleError saying what came."""
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict) or data.get("format") != expected:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise BundleError(f"{path}: expected format {expected!r}, got {found!r}")
    return data


def read_manifest(bundle_dir: str | os.PathLike, *, check_files: bool = True) -> dict[str, Any]:
    """Reads and validates a bundle's manifest.

    Args:
      bundle_dir: the bundle folder (or its policy.onnx / manifest.json).
      check_files: verify that every listed file exists with its size and sha256.

    Raises:
      BundleError: saying what is wrong and where.
    """
    root = Path(bundle_dir)
    if root.is_file() and root.name in (MANIFEST, ONNX_FILE):
        root = root.parent
    if not root.exists():
        raise BundleError(f"{root}: no such bundle")
    if not root.is_dir():
        raise BundleError(f"{root}: expected a bundle folder, got a file")
    path = root / MANIFEST
    if not path.exists():
        raise BundleError(f"{root}: no {MANIFEST}; not a policy-toolkit bundle")
    manifest = _read_json_of_format(path, FORMAT)
    version = manifest.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise BundleError(f"{path}: expected an integer format_version, got {version!r}")
    if version > FORMAT_VERSION:
        raise BundleError(
            f"{path}: bundle format version {version} is newer than this policy-toolkit "
            f"reads (up to {FORMAT_VERSION}); upgrade policy-toolkit"
        )
    if version < 1:
        raise BundleError(f"{path}: expected format_version >= 1, got {version}")
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise BundleError(f"{path}: expected a 'files' table, got {type(files).__name__}")
    if check_files:
        check_bundle_files(root, files)
    return manifest


def check_bundle_files(root: Path, files: dict[str, Any], only: list[str] | None = None) -> None:
    """Checks listed files' sizes and hashes (all, or those under the ``only`` prefixes)."""
    for rel, entry in files.items():
        if only is not None and not any(rel == p or rel.startswith(p + "/") for p in only):
            continue
        file = root / rel
        if ".." in Path(rel).parts or Path(rel).is_absolute():
            raise BundleError(f"{root}/{MANIFEST}: file path {rel!r} leaves the bundle")
        if not file.is_file():
            raise BundleError(f"{root}: file {rel} listed in {MANIFEST} is missing")
        size = file.stat().st_size
        if size != entry.get("size"):
            raise BundleError(
                f"{file}: expected {entry.get('size')} bytes, got {size} "
                "(the file was changed or truncated)"
            )
        digest = sha256_file(file)
        if digest != entry.get("sha256"):
            raise BundleError(
                f"{file}: expected sha256 {str(entry.get('sha256'))[:12]}..., got {digest[:12]}... "
                "(the file was changed)"
            )


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Reads a weights-only checkpoint's checkpoint.json and checks its files.

    Raises:
      BundleError: for a folder that is no checkpoint, or a changed or missing file.
    """
    root = Path(path)
    if not root.is_dir():
        raise BundleError(f"{root}: no such checkpoint folder")
    info_path = root / CHECKPOINT_FILE
    if not info_path.is_file():
        raise BundleError(f"{root}: no {CHECKPOINT_FILE}; not a policy-toolkit checkpoint")
    info = _read_json_of_format(info_path, CHECKPOINT_FORMAT)
    if not isinstance(info.get("files"), dict):
        raise BundleError(f"{info_path}: expected a 'files' table")
    check_bundle_files(root, info["files"])
    return info
