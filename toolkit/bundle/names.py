"""The bundle's fixed names and limits (docs/bundle-format.md), shared by readers and writers."""

from __future__ import annotations

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
]

FORMAT = "policy-toolkit-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
# The built-in formats' file names.
ONNX_FILE = "policy.onnx"
LITERT_FILE = "policy.tflite"
SAVED_MODEL_DIR = "saved_model"
#: The ONNX file's metadata_props key holding the manifest (without its file table).
ONNX_MANIFEST_KEY = "policy_toolkit.manifest"
#: The SavedModel's copy of the manifest (without its file table), inside its folder.
#: ``assets.extra`` is TensorFlow's place for files the graph does not read.
SAVED_MODEL_MANIFEST = "assets.extra/policy_toolkit.manifest.json"

#: The bundle's signature (OpenSSF model-signing's format and default name); not listed in
#: the manifest's file table (it is written after it), never covered by itself.
SIGNATURE_FILE = "model.sig"
#: Public keys (PEM paths, separated by os.pathsep) every reader of this process trusts.
TRUST_KEYS_ENV = "POLICY_TOOLKIT_TRUST_KEYS"

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
