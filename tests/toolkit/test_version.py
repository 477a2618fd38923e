"""The version is written once, in pyproject.toml, and read from the installed metadata."""

from __future__ import annotations

import importlib.metadata
import re

import toolkit
from tests.subprocess_utils import ROOT


def _pyproject_version() -> str:
    text = (ROOT / "pyproject.toml").read_text()
    return re.search(r'^version = "([^"]+)"', text, re.MULTILINE)[1]


def test_the_version_is_the_installed_metadata_and_pyproject():
    assert toolkit.__version__ == importlib.metadata.version("policy-toolkit")
    assert toolkit.__version__ == _pyproject_version()


def test_a_source_tree_without_metadata_reads_pyproject(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    toolkit._version.cache_clear()
    try:
        assert toolkit.__version__ == _pyproject_version()
    finally:
        toolkit._version.cache_clear()
