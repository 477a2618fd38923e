"""Collects TF-Agents 0.19.0's own unit tests from its wheel and runs them on our modules.

``scope.py`` is this suite's collection point: pytest hands it to ``WheelSuite``, which
reads each test file of ``scope.FILES`` from the wheel (``wheel.py``: found, hash-checked,
rewritten mechanically), writes it into pytest's cache folder and collects it as a test
module. Test ids read ``tests/tf_agents_compat/tf_agents/<file>::<Class>::<test>``.
``pytest_collection_modifyitems`` then deselects ``scope.DESELECTED`` and marks
``scope.XFAIL`` strict xfails naming their line in docs/tf-agents-differences.md.
Without the wheel (an offline machine) the whole suite is one skip, ``wheel.MISSING_REASON``.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path

import pytest

from tests.tf_agents_compat import scope, wheel
from tests.tf_agents_compat.differences import DifferencesDoc

HERE = Path(__file__).resolve().parent
#: The node id prefix of the collected tests (a virtual folder: the files are in the cache).
PREFIX = "tests/tf_agents_compat/tf_agents/"
#: tf.test.TestCase's deprecated session helper: its name makes it look like a test, and
#: it skips itself as "Not a test." (so do TF-Agents' own runs).
NOT_A_TEST = "test_session"


class WheelSuite(pytest.File):
    """The in-scope test files of TF-Agents' wheel, rewritten, as pytest modules."""

    def collect(self):
        path = wheel.find_wheel()
        if path is None:
            pytest.skip(wheel.MISSING_REASON)
        wheel.check_wheel(path)
        folder = _cache_folder(self.config)
        with zipfile.ZipFile(path) as archive:
            for name in scope.FILES:
                source = wheel.rewrite(wheel.read_test(archive, f"tf_agents/{name}"))
                # One flat folder, unique module names: tfa_specs_array_spec_test.py.
                target = folder / ("tfa_" + name.replace("/", "_"))
                _write_if_changed(target, source)
                yield pytest.Module.from_parent(self, path=target, nodeid=PREFIX + name)


def _cache_folder(config: pytest.Config) -> Path:
    cache = getattr(config, "cache", None)
    if cache is not None:
        return Path(cache.mkdir("tf_agents_compat"))
    return Path(tempfile.mkdtemp(prefix="tf_agents_compat_"))


def _write_if_changed(target: Path, text: str) -> None:
    """Atomic (xdist workers write the same files at once); unchanged files stay as they are,
    so their bytecode stays cached."""
    if target.is_file() and target.read_text() == text:
        return
    handle, temporary = tempfile.mkstemp(dir=target.parent, suffix=".tmp")
    with os.fdopen(handle, "w") as out:
        out.write(text)
    os.replace(temporary, target)


def pytest_collect_file(file_path: Path, parent: pytest.Collector):
    if file_path.resolve() == HERE / "scope.py":
        return WheelSuite.from_parent(parent, path=file_path)
    return None


def _run_uncaptured(item: pytest.Item) -> None:
    """Runs the item with pytest's capture off (``scope.UNCAPTURED``). Hooks of this
    conftest do not see these items (their files live in the cache folder), so the item's
    own ``runtest``, called inside the capture manager's wrapper, is wrapped instead."""
    runtest = item.runtest
    capture = item.config.pluginmanager.getplugin("capturemanager")

    def uncaptured() -> None:
        with capture.global_and_fixture_disabled():
            runtest()

    item.runtest = uncaptured


def _matches(test_id: str, key: str) -> bool:
    return test_id.startswith(key[:-1]) if key.endswith("*") else test_id == key


@pytest.hookimpl(tryfirst=True)  # before -k / -m: the stale-entry check sees every test
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    ours = [item for item in items if item.nodeid.startswith(PREFIX)]
    if not ours:
        return
    doc = DifferencesDoc.load()
    files = {item.nodeid[len(PREFIX) :].split("::")[0] for item in ours}
    used: set[str] = set()
    deselected = []
    for item in ours:
        test_id = item.nodeid[len(PREFIX) :]
        if item.name == NOT_A_TEST:
            deselected.append(item)
            continue
        if test_id in scope.UNCAPTURED:
            _run_uncaptured(item)
        reason = next((k for k in scope.DESELECTED if _matches(test_id, k)), None)
        if reason is not None:
            used.add(reason)
            deselected.append(item)
            continue
        key = next((k for k in scope.XFAIL if _matches(test_id, k)), None)
        if key is not None:
            used.add(key)
            item.add_marker(
                pytest.mark.xfail(strict=True, reason=doc.reason(scope.XFAIL[key]), run=True)
            )
    stale = sorted(
        key
        for key in {*scope.DESELECTED, *scope.XFAIL}
        if key.split("::")[0] in files and key not in used
    )
    if stale:
        raise pytest.UsageError(
            f"tests/tf_agents_compat/scope.py: entries that match no collected test: {stale}"
        )
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if item not in set(deselected)]
