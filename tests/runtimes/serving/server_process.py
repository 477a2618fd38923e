"""A ``policy-toolkit serve`` process on 127.0.0.1 at a free port, with TensorFlow blocked."""

from __future__ import annotations

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


class ServerProcess:
    """Starts ``policy-toolkit serve ARGS --port 0`` (TF unimportable) and waits for it.

    Attributes:
      url: ``http://127.0.0.1:PORT``.
      process: the Popen.
    """

    def __init__(self, *args: str, timeout: float = 120.0):
        code = (
            "import sys, tests.tf_blocker; from toolkit.cli import main; "
            "sys.argv = ['policy-toolkit'] + sys.argv[1:]; main()"
        )
        command = [sys.executable, "-c", code, "serve", *args, "--port", "0"]
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.process = subprocess.Popen(
            command, cwd=ROOT, env=env, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self._lines: list[str] = []
        self._found = threading.Event()
        self.url = ""
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
