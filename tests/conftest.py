"""The order in which the test files reach ``make test``'s two workers.

``make test`` runs ``pytest -n 2 --dist loadfile``: each file goes whole to one worker,
so its module fixtures (shared exports, unpacked saves) are made once. pytest-xdist
hands files out in its queue's order and by default queues the files with the most
tests first. The end-to-end files hold a few tests of minutes each, so they were
queued last and one worker ran them alone at the end: the last 2% of the tests took
8 of the suite's 53 minutes (2 cores under a load of 16). Here those files are queued
first, the rest still by their number of tests, so both workers finish together.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest

from tests import run_cache

#: Files of few, long end-to-end tests, longest first (``--durations``, 2 busy cores:
#: the demo and follow_training 850 s; two fresh venvs 640 s; four trainings 380 s;
#: imports of TF-Agents' trigger output with its checkpoints 290 s). The Ray file goes
#: first: about 70-90 s of 19 tests, much of it waiting on Ray (a cluster's start, a node's
#: death), which the other worker's CPU work fills; queued by its number of tests it
#: started near the end and ran alone. The micro device install and the training output
#: checks (fresh interpreters importing TensorFlow) take 15-50 s each.
_RUN_CACHE = pytest.StashKey[Path]()

LONG_FILES = (
    "tests/toolkit/test_distributed.py",
    "tests/test_examples.py",
    "tests/cli/test_device_install.py",
    "tests/test_training_examples.py",
    "tests/exporters/test_tf_agents_trigger.py",
    "tests/cli/test_device_install_micro.py",
    "tests/toolkit/test_training_output.py",
)


#: The Ray file's cluster (GCS, raylets, workers: ~50 s of CPU in bursts) mostly waits on
#: its own processes' answers, which stretch 2-5x when they queue behind the other
#: worker's CPU-bound tests. Every other file runs at this lower CPU priority (niceness)
#: in xdist workers: it keeps all the CPU the Ray file leaves idle, but yields when the
#: cluster needs it. The Ray file goes first (LONG_FILES), so its worker is not yet
#: lowered (a process cannot raise its own priority back).
RAY_FILE = "tests/toolkit/test_distributed.py"
LOWER_PRIORITY = 10


@functools.cache
def _lower_priority() -> None:
    """Gives every thread of this process (TensorFlow's pools too) LOWER_PRIORITY, once:
    threads started later inherit it."""
    try:
        threads = [int(tid) for tid in os.listdir("/proc/self/task")]  # Linux: per thread
    except OSError:
        threads = [0]  # elsewhere the priority is the process's
    for tid in threads:
        try:
            if os.getpriority(os.PRIO_PROCESS, tid) < LOWER_PRIORITY:
                os.setpriority(os.PRIO_PROCESS, tid, LOWER_PRIORITY)
        except OSError:  # a thread that ended meanwhile
            pass


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config.option, "loadscopereorder"):  # pytest-xdist: keep the order below
        config.option.loadscopereorder = False
    if not hasattr(config, "workerinput"):  # the controlling process (or a lone pytest)
        # Exports shared by the workers it starts (tests/run_cache.py), removed at the end.
        config.stash[_RUN_CACHE] = run_cache.start_run()


def pytest_unconfigure(config: pytest.Config) -> None:
    if _RUN_CACHE in config.stash:
        run_cache.end_run(config.stash[_RUN_CACHE])


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    by_file: dict[str, list[pytest.Item]] = {}
    for item in items:
        by_file.setdefault(item.nodeid.split("::")[0], []).append(item)
    rank = {name: i for i, name in enumerate(LONG_FILES)}
    order = sorted(by_file, key=lambda name: (rank.get(name, len(rank)), -len(by_file[name])))
    items[:] = [item for name in order for item in by_file[name]]


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER") and item.nodeid.split("::")[0] != RAY_FILE:
        _lower_priority()
