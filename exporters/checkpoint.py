"""Weights-only checkpoints that an exported bundle takes without a new export.

``save_checkpoint`` writes one folder with both forms:

```
ckpt/
  checkpoint.json   format, train_step, the ONNX graph fingerprint it fits, file hashes
  weights.npz       ONNX initializers w0, w1, ... in canonical order (numpy, no
                    pickle): for the onnx backend; see exporters.weights
  tf/ckpt-...       tf.train.Checkpoint(policy=..., train_step=...): for the tf backend
```

The initializers come from converting the policy again, exactly as export does, so
whatever tf2onnx folded into them (transposes, splits) is already applied; the graph
fingerprint (structure without weights or generated names) says which bundles the
weights fit, and a bundle's ``onnx.initializers`` list names them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.numpy_helper
import tensorflow as tf

from exporters import onnx_export
from exporters.onnx_export import onnx_model_and_weights
from exporters.signatures import module_for
from exporters.weights import canonical_initializers, graph_fingerprint
from toolkit import bundle
from toolkit.errors import ExportError

__all__ = ["save_checkpoint"]


def save_checkpoint(
    policy: Any,
    path: str | os.PathLike,
    train_step: int,
    *,
    overwrite: bool = False,
    opset: int = onnx_export.DEFAULT_OPSET,
) -> Path:
    """Writes a weights-only checkpoint of ``policy`` (atomically) and returns its path."""
    if isinstance(train_step, bool) or int(train_step) != train_step:
        raise ExportError(f"train_step: expected an int, got {train_step!r}")
    module = module_for(policy, int(train_step), {})
    model, _ = onnx_model_and_weights(module, opset)
    by_name = {init.name: init for init in model.graph.initializer}
    weights = {
        f"w{i}": onnx.numpy_helper.to_array(by_name[name])
        for i, name in enumerate(canonical_initializers(model))
    }

    def build(tmp: Path) -> dict[str, Any]:
        np.savez(tmp / bundle.WEIGHTS_FILE, **weights)
        step = tf.Variable(int(train_step), dtype=tf.int64, trainable=False)
        tf.train.Checkpoint(policy=policy, train_step=step).write(
            str(tmp / bundle.TF_CHECKPOINT_PREFIX)
        )
        return {
            "format": bundle.CHECKPOINT_FORMAT,
            "format_version": 1,
            "policy_class": type(policy).__name__,
            "train_step": int(train_step),
            "opset": opset,
            "graph_fingerprint": graph_fingerprint(model),
            "weights": bundle.WEIGHTS_FILE,
            "tf_checkpoint": bundle.TF_CHECKPOINT_PREFIX,
        }

    return bundle.write_bundle(
        path, build, overwrite=overwrite, manifest_name=bundle.CHECKPOINT_FILE
    )
