"""Reading a bundle's manifest (and a checkpoint's checkpoint.json), checked (TF-free).

``read_manifest`` reads manifest.json contained and capped, checks the format and its
version, validates every field against the schema and the bundle rules
(``toolkit.bundle.manifest``) and, unless told otherwise, the size and sha256 of every
listed file. ``read_layout`` gives the same manifest as a typed, immutable
``toolkit.bundle.layout.Layout``: what every reader uses.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from toolkit.bundle import manifest as manifest_lib
from toolkit.bundle.files import (
    _sha256_hex,
    check_bundle_files,
    check_member_path,
    parse_json,
    read_json_member,
    read_member,
)
from toolkit.bundle.layout import Layout
from toolkit.bundle.names import (
    CHECKPOINT_FILE,
    CHECKPOINT_FORMAT,
    FORMAT,
    FORMAT_VERSION,
    LITERT_FILE,
    MANIFEST,
    MAX_MANIFEST_BYTES,
    ONNX_FILE,
)
from toolkit.errors import BundleError, TrustError

if TYPE_CHECKING:
    from toolkit.bundle.signing import TrustPolicy

__all__ = ["bundle_root", "read_checkpoint", "read_layout", "read_manifest"]


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


def _read_trusted(root: Path, trust: TrustPolicy) -> Any:
    """manifest.json's content, the bundle verified against ``trust`` first and the bytes
    parsed being the signed ones; the manifest's file table must then agree with the
    signature, so every later hash check of a reader is a check against the signature."""
    from toolkit.bundle.signing import verify_bundle

    signed = verify_bundle(root, trust)
    data = read_member(root, MANIFEST, key=MANIFEST, cap=MAX_MANIFEST_BYTES, where=MANIFEST)
    if _sha256_hex(data) != signed[MANIFEST]:
        raise TrustError(f"{root / MANIFEST}: changed since it was verified")
    manifest = parse_json(data, root / MANIFEST)
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if isinstance(files, dict):
        for rel, entry in files.items():
            digest = entry.get("sha256") if isinstance(entry, dict) else None
            if signed.get(rel) != digest:
                raise TrustError(
                    f"{root / MANIFEST}: files[{rel!r:.80}]: its sha256 is not the signed one"
                )
    return manifest


def read_manifest(
    bundle_dir: str | os.PathLike,
    *,
    check_files: bool = True,
    validate: bool = True,
    trust: TrustPolicy | None = None,
) -> dict[str, Any]:
    """Reads and validates a bundle's manifest.

    Args:
      bundle_dir: the bundle folder (or its policy.onnx / manifest.json).
      check_files: verify that every listed file exists with its size and sha256.
      validate: check every field against the manifest schema (``toolkit.manifest``);
        only the format, the version and the file table's paths are checked without.
      trust: a ``toolkit.bundle.signing.TrustPolicy``: the bundle must be signed by one
        of its keys, every file as signed (``verify_bundle``), before anything is used.

    Raises:
      BundleError: saying what is wrong and where (one line per manifest violation).
      TrustError: a bundle the trust policy refuses.
    """
    return _read_manifest(bundle_dir, check_files, validate, trust, None)


def _read_manifest(
    bundle_dir: str | os.PathLike,
    check_files: bool,
    validate: bool,
    trust: TrustPolicy | None,
    nests: dict[str, Any] | None,
) -> dict[str, Any]:
    """``read_manifest``; ``nests`` is filled with the spec nests validation decoded."""
    root = bundle_root(bundle_dir)
    if not os.path.lexists(root):
        from toolkit.bundle.recovery import recover  # a killed writer's leftovers only

        recover(root)
    if not root.exists():
        raise BundleError(f"{root}: no such bundle")
    if not root.is_dir():
        raise BundleError(f"{root}: expected a bundle folder, got a file")
    path = root / MANIFEST
    if trust is not None:
        data = _read_trusted(root, trust)
    else:
        data = read_json_member(
            root, MANIFEST, f"{root}: no {MANIFEST}; not a policy-toolkit bundle"
        )
    manifest = _check_format(data, path, FORMAT)
    if validate:
        manifest_lib.validate(manifest, nests=nests)
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
    data = read_json_member(
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


def read_layout(
    bundle_dir: str | os.PathLike, *, check_files: bool = True, trust: TrustPolicy | None = None
) -> Layout:
    """Reads, validates and decodes a bundle's manifest (``read_manifest``) into its Layout.

    Args:
      bundle_dir: the bundle folder (or its policy.onnx / manifest.json).
      check_files: verify that every listed file exists with its size and sha256
        (runtime backends check only the files they read, when they read them).
      trust: a trust policy (``read_manifest``).

    Raises:
      BundleError: saying what is wrong and where (one line per manifest violation).
      TrustError: a bundle the trust policy refuses.
    """
    root = bundle_root(bundle_dir)
    # The specs are decoded once, by validation, for this load only: the bundle on disk
    # may change before the next.
    nests: dict[str, Any] = {}
    manifest = _read_manifest(root, check_files, True, trust, nests)
    return Layout.of(manifest, root / MANIFEST, owned=True, specs=nests)
