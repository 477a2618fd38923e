"""Plans of plain gRPC requests: what a layout needs, worked out on its first request.

A plain request (v2's raw tensors without parameters, TF Serving's inputs all in
``tensor_content``) of a layout seen before fixes everything but its data once the
version is resolved: the arrays' dtypes and shapes, and that they pass the signature's
check unchanged (then it is not run again: ``ServingCore.run``'s ``checked``).
``InputPlan`` holds that, shared by the gRPC codecs; each codec's plan adds its answer's
head on the wire. ``Plans`` keeps them by layout, bounded.
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np

from runtimes.serving.core import ServingCore
from runtimes.serving.models import LoadedVersion
from runtimes.serving.signatures import Signature
from runtimes.serving.v2 import little_endian

__all__ = ["TEXT_KINDS", "InputPlan", "Plans", "field"]

#: numpy dtype kinds a plan does not take (text and objects: their bytes are not fixed)
TEXT_KINDS = "OUSV"


class InputPlan:
    """A layout's inputs: per input its name, dtype, shape and byte count, for one version."""

    __slots__ = ("batch", "inputs", "loaded", "signature")

    def __init__(
        self, loaded: LoadedVersion, signature: Signature, inputs: tuple, batch: int
    ) -> None:
        #: the version it was made for, weakly: a plan keeps no retired version alive
        self.loaded = weakref.ref(loaded)
        #: the signature's name (the signature itself would hold the version's policy)
        self.signature = signature.name
        #: per input, in the request's order: name, dtype, shape, byte count
        self.inputs = inputs
        self.batch = batch

    @staticmethod
    def layout(arrays: dict[str, np.ndarray]) -> tuple | None:
        """The inputs of a request whose arrays passed the check as they came (None:
        one of text tensors)."""
        inputs = tuple((n, a.dtype, a.shape, a.nbytes) for n, a in arrays.items())
        if any(dtype.kind in TEXT_KINDS for _, dtype, _, _ in inputs):
            return None
        return inputs

    async def run(self, core: ServingCore, loaded: LoadedVersion, contents: Any) -> Any:
        """The outputs of a request's input bytes, run on ``loaded`` (None: the plan is
        another version's, or a count of bytes does not fit: the full path names it)."""
        if self.loaded() is not loaded or len(contents) != len(self.inputs):
            return None
        arrays = {}
        for (name, dtype, shape, size), data in zip(self.inputs, contents, strict=True):
            if len(data) != size:
                return None
            arrays[name] = little_endian(data, dtype).reshape(shape)
        return await core.run(loaded.signatures[self.signature], arrays, checked=self.batch)


class Plans:
    """Plans by request layout; all are dropped when ``limit`` are kept."""

    __slots__ = ("_plans", "limit")

    def __init__(self, limit: int = 256) -> None:
        self._plans: dict[Any, Any] = {}
        self.limit = limit

    def get(self, key: Any) -> Any:
        return self._plans.get(key)

    def learn(self, key: Any, plan: Any) -> None:
        """Keeps ``plan`` for ``key`` (nothing for None)."""
        if plan is None:
            return
        if len(self._plans) >= self.limit:
            self._plans.clear()
        self._plans[key] = plan

    def __len__(self) -> int:
        return len(self._plans)


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def field(tag: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (``tag``: its number << 3 | 2) on the wire,
    for the plans' answers written without building a message."""
    return bytes((tag,)) + _varint(len(payload)) + payload
