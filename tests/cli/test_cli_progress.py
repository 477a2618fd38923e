"""A local ``run`` of many episodes shows its progress on a terminal, and only there.

The command runs in a fresh interpreter whose stderr is a pseudo-terminal (what a user
at a shell has) or a pipe (what scripts and CI capture).
"""

from __future__ import annotations

import os
import pty
import subprocess
import sys
import threading

import pytest

from tests.subprocess_utils import ROOT

EPISODES = 40  # two chunks of environments (32 + 8)


def _run(*args: str, stderr_tty: bool) -> tuple[subprocess.CompletedProcess, str]:
    """``policy-toolkit ARGS``; returns the process (stdout captured) and its stderr."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="120")
    command = [sys.executable, "-m", "toolkit", *args]
    if not stderr_tty:
        done = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180
        )
        return done, done.stderr
    master, slave = pty.openpty()
    chunks: list[bytes] = []

    def read() -> None:  # drained while the command runs, so it never blocks on a full pty
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO: every writer closed
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        done = subprocess.run(
            command,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=slave,
            text=True,
            timeout=180,
        )
    finally:
        os.close(slave)
        reader.join(timeout=10)
        os.close(master)
    return done, b"".join(chunks).decode(errors="replace")


@pytest.fixture(scope="module")
def bundle():
    from tests.cli_factories import cartpole_bundle

    return str(cartpole_bundle())


def test_a_local_run_shows_a_progress_bar_on_a_terminal(bundle):
    args = ("run", bundle, "--env", "CartPole-v1", "-n", str(EPISODES), "--backend", "onnx")
    done, stderr = _run(*args, stderr_tty=True)
    assert done.returncode == 0, stderr
    assert "CartPole-v1 episodes" in stderr
    assert f"{EPISODES}/{EPISODES}" in stderr  # the last refresh counts every episode
    assert "mean return" in done.stdout  # the results table is unchanged, on stdout


def test_no_progress_when_stderr_is_not_a_terminal_or_with_json(bundle):
    args = ("run", bundle, "--env", "CartPole-v1", "-n", str(EPISODES), "--backend", "onnx")
    done, stderr = _run(*args, stderr_tty=False)
    assert done.returncode == 0, stderr
    assert "episodes" not in stderr and f"/{EPISODES}" not in stderr
    done, stderr = _run(*args, "--json", stderr_tty=True)
    assert done.returncode == 0, stderr
    assert "episodes" not in stderr and f"/{EPISODES}" not in stderr
    assert done.stdout.lstrip().startswith("{")
