"""Makes TensorFlow (and friends) unimportable in the process that imports this module.

Used by subprocess tests of the TF-free rule: ``python -c "import tests.tf_blocker; ..."``.
"""

from __future__ import annotations

import importlib.abc
import sys

BLOCKED = ("tensorflow", "tensorflow_probability", "tf2onnx", "tf_keras", "keras")


class _Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in BLOCKED:
            raise ImportError(f"{fullname} is blocked: this process must run without TensorFlow")
        return None


def install() -> None:
    for name in list(sys.modules):
        if name.split(".")[0] in BLOCKED:
            del sys.modules[name]
    sys.meta_path.insert(0, _Blocker())


install()
