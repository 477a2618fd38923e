"""Makes TensorFlow (and friends) unimportable in the process that imports this module.

Used by subprocess tests of the TF-free rule: ``python -c "import tests.tf_blocker; ..."``,
whose snippets end with ``tests.tf_blocker.assert_no_heavy_modules()``.
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


def heavy_modules() -> list[str]:
    """The blocked packages' modules loaded in this process (none, if the rule holds)."""
    return sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)


def assert_no_heavy_modules() -> None:
    """The TF-free rule's check, for the end of a subprocess test's snippet."""
    heavy = heavy_modules()
    assert not heavy, heavy


def install() -> None:
    for name in list(sys.modules):
        if name.split(".")[0] in BLOCKED:
            del sys.modules[name]
    sys.meta_path.insert(0, _Blocker())


install()
