"""Folders made once per test run and shared by ``make test``'s two pytest-xdist workers.

``--dist loadfile`` puts each test file on one worker, but the files that share an
export (the contract kinds, the micro bundles, the project's wheel) land on both, so a
per-process cache made every export twice. ``shared(name, build)`` makes ``name`` once
per run: the first process to ask builds it into a private folder under an exclusive
lock and renames it into place (atomic on one file system); the others wait on the lock
and then reuse it. Every builder is deterministic (seeded weights), so which worker
builds a folder does not change what a test sees. Tests copy what they change.

The run's folder is made by the controlling pytest process (``tests/conftest.py``),
named in ``RUN_CACHE_ENV`` for the workers it starts, and removed when it ends. Outside
such a run (a script importing these helpers) each process gets its own folder.
"""

from __future__ import annotations

import atexit
import fcntl
import functools
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

#: The environment variable naming the run's shared folder.
RUN_CACHE_ENV = "POLICY_TOOLKIT_TEST_RUN_CACHE"


def start_run() -> Path:
    """Makes the run's folder and names it for the processes started from now on."""
    root = Path(tempfile.mkdtemp(prefix="policy-test-run-"))
    os.environ[RUN_CACHE_ENV] = str(root)
    return root


def end_run(root: Path) -> None:
    """Removes the run's folder (by the process that made it, after its workers ended)."""
    if os.environ.get(RUN_CACHE_ENV) == str(root):
        del os.environ[RUN_CACHE_ENV]
    shutil.rmtree(root, ignore_errors=True)


@functools.cache
def _root() -> Path:
    named = os.environ.get(RUN_CACHE_ENV)
    if named and Path(named).is_dir():
        return Path(named)
    root = Path(tempfile.mkdtemp(prefix="policy-test-process-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return root


def shared(name: str, build: Callable[[Path], object]) -> Path:
    """``<run folder>/<name>``, made by ``build(path)`` (which must create ``path``) in
    the first process that asks for it during this run."""
    root = _root()
    target = root / name
    if target.exists():
        return target
    with open(root / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not target.exists():
            private = root / f".{name}.{os.getpid()}.partial"
            shutil.rmtree(private, ignore_errors=True)
            try:
                build(private)
                os.rename(private, target)
            finally:
                shutil.rmtree(private, ignore_errors=True)
    return target
