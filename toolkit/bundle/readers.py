"""The built-in formats' files, read as every reader must (TF-free).

Readers of a format's file check more than its hash: the ONNX model must be
self-contained (no external data) and both the ONNX model and the SavedModel carry a copy
of the manifest, which must equal the manifest read (docs/bundle-format.md, "How the
manifest itself is covered").
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from toolkit.bundle.files import check_bundle_files, check_tree, parse_json, read_member
from toolkit.bundle.layout import Layout
from toolkit.bundle.names import MAX_MANIFEST_BYTES, ONNX_MANIFEST_KEY, SAVED_MODEL_MANIFEST
from toolkit.errors import BundleError

__all__ = ["check_saved_model", "read_litert", "read_lone_onnx", "read_onnx"]


def read_onnx(root: str | os.PathLike, layout: Layout | dict[str, Any]) -> bytes:
    """The bundle's ONNX model bytes: contained, hash-checked, self-contained, and carrying
    a manifest copy equal to the bundle's. Build sessions from these bytes, never a path."""
    from toolkit import onnx_proto

    layout = Layout.coerce(layout)
    rel = layout.format("onnx").path
    data = read_member(root, rel, key="onnx.file", files=layout.files_json)
    facts = onnx_proto.check_self_contained(data, rel)
    layout.check_copy(facts.metadata.get(ONNX_MANIFEST_KEY), f"{rel} (metadata_props)")
    return data


def read_litert(root: str | os.PathLike, layout: Layout | dict[str, Any]) -> bytes:
    """The bundle's LiteRT model bytes, contained and hash-checked."""
    layout = Layout.coerce(layout)
    rel = layout.format("litert").path
    return read_member(root, rel, key="litert.file", files=layout.files_json)


def check_saved_model(root: str | os.PathLike, layout: Layout | dict[str, Any]) -> Path:
    """Checks the bundle's SavedModel folder before TensorFlow reads it by path.

    It must hold only listed, hash-checked regular files (no links, FIFOs or extra
    files), and its manifest copy must equal the bundle's; bundles written before
    SavedModels carried a copy are compared with the ONNX graph's copy when they have
    one. Returns the folder's path.
    """
    layout = Layout.coerce(layout)
    root = Path(root)
    files = layout.files_json
    rel = layout.format("saved_model").path
    check_tree(root, rel, files, "saved_model.dir")
    check_bundle_files(root, files, only=[rel])
    copy_rel = f"{rel}/{SAVED_MODEL_MANIFEST}"
    if copy_rel in files:
        text = read_member(
            root, copy_rel, key="saved_model.dir", files=files, cap=MAX_MANIFEST_BYTES
        )
        layout.check_copy(text, copy_rel)
    elif layout.has("onnx") and layout.format("onnx").path in files:
        read_onnx(root, layout)
    return root / rel


def read_lone_onnx(path: str | os.PathLike) -> Layout:
    """The layout an ``.onnx`` file exported by policy-toolkit carries in its metadata (a
    model copied out of its bundle describes itself), with the file as it is now as its
    file table. The model is only parsed, never run: external data is reported, not read.

    Raises:
      BundleError: not a regular file, not an ONNX model, no manifest copy, or a copy
        that breaks the manifest's rules.
    """
    import hashlib

    from toolkit import onnx_proto
    from toolkit.bundle import manifest as manifest_lib

    path = Path(path)

    # The user named this file, so a link they gave is followed; it is still read
    # only if regular, and bounded.
    real = path.resolve()
    try:
        data = read_member(real.parent, real.name, key="file")
    except BundleError as e:
        raise BundleError(f"{path}: {str(e).splitlines()[0]}") from None
    # The model is only parsed here, never run: external data is reported, not read.
    facts = onnx_proto.scan_model(data, str(path))
    text = facts.metadata.get(ONNX_MANIFEST_KEY)
    if text is None:
        raise BundleError(
            f"{path}: no {ONNX_MANIFEST_KEY} in the model's metadata; "
            "not exported by policy-toolkit"
        )
    manifest = parse_json(text.encode("utf-8"), path)
    # The embedded copy cannot list its own file; describe the file as it is now.
    if not isinstance(manifest, dict):
        raise BundleError(
            f"{path}: expected a manifest object in its metadata, got {type(manifest).__name__}"
        )
    onnx_info = manifest.get("onnx")
    name = onnx_info.get("file") if isinstance(onnx_info, dict) else None
    manifest["files"] = {
        name if isinstance(name, str) else path.name: {
            "sha256": hashlib.sha256(data).hexdigest(),
            "size": len(data),
        }
    }
    where = f"{path.name} (metadata_props)"
    manifest_lib.validate(manifest, where, files_listed=False)
    return Layout.of(manifest, where, owned=True)
