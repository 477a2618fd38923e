"""A toy runtime backend, as a user would add one: this module plus one registry line.

It runs a bundle's ONNX graph with onnxruntime's plain ``InferenceSession.run`` (no
reused buffers, no inner API): another engine behind the same Python-policy interface.
It takes no checkpoints (its table row says so), so commands that need weight updates
refuse it.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import onnxruntime as ort

from runtimes.policy import BundlePolicy
from toolkit.bundle import readers
from toolkit.bundle.layout import Layout
from toolkit.errors import UnsupportedError


class ToyPolicy(BundlePolicy):
    backend = "toy"

    def __init__(
        self,
        layout: Layout,
        bundle_dir: str | os.PathLike,
        *,
        seed: int | None = None,
        validate_args: bool = True,
        check_finite: bool = False,
        threads: int | str = 1,
    ):
        super().__init__(
            layout, bundle_dir, seed=seed, validate_args=validate_args, check_finite=check_finite
        )
        options = ort.SessionOptions()
        # A backend with the threads capability takes an int or "auto" (load_policy's
        # default); the toy runs "auto" on one thread.
        options.intra_op_num_threads = 1 if threads == "auto" else int(threads)
        self._session = ort.InferenceSession(
            readers.read_onnx(self.bundle_dir, layout), options, providers=["CPUExecutionProvider"]
        )

    def _run(self, arrays: list[Any], unbatched: bool, fetch: list[str]) -> list[Any]:
        if unbatched:
            arrays = [np.asarray(a)[None] for a in arrays]
        feeds = dict(zip(self._input_names, arrays, strict=True))
        return self._session.run(fetch, feeds)

    def update_from_checkpoint(self, path: Any, *, step: int | None = None) -> None:
        raise UnsupportedError("the toy backend takes no checkpoints")

    def _take_weights(self, policy: BundlePolicy) -> None:
        raise UnsupportedError("the toy backend takes no weights")
