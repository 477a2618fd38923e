"""policy-toolkit: RL policies from TensorFlow to production.

Importing this package is cheap: it loads no TensorFlow and no onnxruntime.
``__version__`` comes from the installed package's metadata (pyproject.toml is the one
place it is written), read on first use.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

_DISTRIBUTION = "policy-toolkit"


@functools.cache
def _version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return _source_tree_version()


def _source_tree_version() -> str:
    """The version in pyproject.toml beside the package (a source tree, not installed)."""
    import re

    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    try:
        text = pyproject.read_text(encoding="utf-8")
    except OSError:
        return "0+unknown"
    project = text.partition("[project]")[2].split("\n[", 1)[0]
    match = re.search(r'^version\s*=\s*"([^"]+)"', project, re.MULTILINE)
    return match[1] if match else "0+unknown"


def __getattr__(name: str) -> Any:
    if name == "__version__":
        return _version()
    raise AttributeError(f"module 'toolkit' has no attribute {name!r}")
