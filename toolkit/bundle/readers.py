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

from toolkit.bundle.files import check_bundle_files, check_tree, read_member
from toolkit.bundle.layout import Layout
from toolkit.bundle.names import MAX_MANIFEST_BYTES, ONNX_MANIFEST_KEY, SAVED_MODEL_MANIFEST

__all__ = ["check_saved_model", "read_litert", "read_onnx"]


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
