"""The bundle on disk: the contract between exporters (writers) and runtimes (readers), TF-free.

docs/bundle-format.md is the contract; this package implements it, one concern a module:

=================  ============================================================================
``names``          the fixed file names, format name and version, size caps
``files``          contained, bounded reads of a bundle's files and their hashes
``schema``         a small JSON Schema interpreter (the manifest schema's keywords)
``schema_codegen`` writes ``_manifest_check``: the committed schema as plain Python
``manifest``       the manifest's rules: the schema and what a schema cannot say
``layout``         the typed, immutable layout every reader uses, built once from a manifest
``reading``        read_manifest / read_layout / read_checkpoint, and the manifest copies
``readers``        the built-in formats' files read as every reader must (ONNX, SavedModel)
``recovery``       completing a replacement a killed writer left half done
``writing``        crash-safe writes (a temporary sibling, fsync, an atomic swap)
``signing``        signatures (OpenSSF model-signing's format) and trust policies
=================  ============================================================================

The layers inside: ``names`` < ``files`` < ``schema`` < ``manifest`` < ``layout`` <
``recovery`` < ``signing`` < ``reading`` < ``readers``, ``writing``. The names below are the
package's public API (``from toolkit import bundle; bundle.read_layout(path)``); the
writer's, the format readers' and the signing modules load when first used, so a runtime
that only reads skips them.
"""

from __future__ import annotations

import importlib
from typing import Any

from toolkit.bundle.files import (
    check_bundle_files,
    check_member_path,
    check_tree,
    file_state,
    read_member,
    sha256_file,
)
from toolkit.bundle.layout import Layout
from toolkit.bundle.manifest import check_embedded, without_files
from toolkit.bundle.names import (
    CHECKPOINT_FILE,
    CHECKPOINT_FORMAT,
    FORMAT,
    FORMAT_VERSION,
    LITERT_FILE,
    MANIFEST,
    MAX_MANIFEST_BYTES,
    MAX_MEMBER_BYTES,
    ONNX_FILE,
    ONNX_MANIFEST_KEY,
    SAVED_MODEL_DIR,
    SAVED_MODEL_MANIFEST,
    SIGNATURE_FILE,
    TF_CHECKPOINT_PREFIX,
    TRUST_KEYS_ENV,
    WEIGHTS_FILE,
)
from toolkit.bundle.reading import bundle_root, read_checkpoint, read_layout, read_manifest

#: Loaded on first use: name -> module of this package.
_LAZY = {
    "hash_files": "writing",
    "write_bundle": "writing",
    "write_folder": "writing",
    "remove_stale": "writing",
    "write_saved_model_manifest": "writing",
    "read_onnx": "readers",
    "read_litert": "readers",
    "check_saved_model": "readers",
    "TrustPolicy": "signing",
    "sign_bundle": "signing",
    "signature_info": "signing",
    "trust_policy": "signing",
    "verify_bundle": "signing",
    "recover": "recovery",
}

__all__ = [
    "CHECKPOINT_FILE",
    "CHECKPOINT_FORMAT",
    "FORMAT",
    "FORMAT_VERSION",
    "LITERT_FILE",
    "MANIFEST",
    "MAX_MANIFEST_BYTES",
    "MAX_MEMBER_BYTES",
    "ONNX_FILE",
    "ONNX_MANIFEST_KEY",
    "SAVED_MODEL_DIR",
    "SAVED_MODEL_MANIFEST",
    "SIGNATURE_FILE",
    "TF_CHECKPOINT_PREFIX",
    "TRUST_KEYS_ENV",
    "WEIGHTS_FILE",
    "Layout",
    "bundle_root",
    "check_bundle_files",
    "check_embedded",
    "check_member_path",
    "check_tree",
    "file_state",
    "read_checkpoint",
    "read_layout",
    "read_manifest",
    "read_member",
    "sha256_file",
    "without_files",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'toolkit.bundle' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"toolkit.bundle.{module}"), name)
    globals()[name] = value
    return value
