"""A ``policy-toolkit serve`` process on 127.0.0.1 at a free port, with TensorFlow blocked."""

from __future__ import annotations

import ctypes
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
_LISTENING = re.compile(r"listening on (http://127\.0\.0\.1:\d+)")
_GRPC = re.compile(r"gRPC listening on (127\.0\.0\.1:\d+)")


_CODE = (
    "import sys, tests.tf_blocker; from toolkit.cli import main; "
    "sys.argv = ['policy-toolkit'] + sys.argv[1:]; main()"
)


def _without_dac_override() -> None:
    """In the child before exec: a root process loses the capabilities that let it read
    any file (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH), so mode 000 folders are unreadable
    to it as to any user. Run as another user, nothing needs doing."""
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) needs CAP_SETPCAP")


def run_serve(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    """Runs ``policy-toolkit serve ARGS`` (TF unimportable) to its end: for refusals."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-c", _CODE, "serve", *args, "--port", "0"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class ServerProcess:
    """Starts ``policy-toolkit serve ARGS --port 0`` (TF unimportable) and waits for it.

    Args:
      args: the command's arguments.
      timeout: seconds to wait for it to listen.
      permissions: honour file permissions even when the tests run as root (so a mode
        000 folder is unreadable to the server).
      executable: an installed ``policy-toolkit`` script to run instead (e.g. a device
        venv's), from a folder outside the checkout; TF is then simply not installed.

    Attributes:
      url: ``http://127.0.0.1:PORT``.
      grpc: ``127.0.0.1:PORT`` of the gRPC server (with ``--grpc-port``), else "".
      process: the Popen.
    """

    def __init__(
        self,
        *args: str,
        timeout: float = 120.0,
        permissions: bool = False,
        executable: str | os.PathLike | None = None,
    ):
        if executable is None:
            command = [sys.executable, "-c", _CODE, "serve", *args, "--port", "0"]
            env, cwd = dict(os.environ, PYTHONPATH=str(ROOT)), ROOT
        else:
            command = [str(executable), "serve", *args, "--port", "0"]
            env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
            cwd = Path(executable).parent
        self.process = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stderr=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            preexec_fn=_without_dac_override if permissions else None,
        )
        self._lines: list[str] = []
        self._found = threading.Event()
        self.url = ""
        self.grpc = ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._found.wait(timeout) or not self.url:
            self.process.kill()
            self.process.wait()
            self._reader.join(5)
            raise RuntimeError(f"the server did not start:\n{self.log}")

    def _read(self) -> None:
        for line in self.process.stderr:
            self._lines.append(line)
            grpc_match = _GRPC.search(line)
            if grpc_match and not self.grpc:
                self.grpc = grpc_match.group(1)
            match = _LISTENING.search(line)
            if match and not self.url:
                self.url = match.group(1)
                self._found.set()
        self._found.set()

    @property
    def log(self) -> str:
        return "".join(self._lines)

    def wait_for_log(self, pattern: str, timeout: float = 30.0) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(pattern, self.log)
            if match:
                return match
            time.sleep(0.05)
        raise AssertionError(f"no {pattern!r} in the server's log within {timeout} s:\n{self.log}")

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, then the exit status (killed after ``timeout`` seconds)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self._reader.join(5)
        return code

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_until(predicate, timeout: float = 30.0) -> None:
    """Polls ``predicate`` every 50 ms until it is true; AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("timed out")
