"""Joining a Ray cluster, or starting a local one that talks over loopback only.

Joining is bounded: an address where nothing listens fails at once, one that does not
answer as a Ray head (a gRPC server) within ``CONNECT_TIMEOUT_S`` fails then, and Ray
makes one attempt to join instead of 20 (alone, it retried for more than ten minutes,
printing reconnect warnings). Ray's own start-up output (its
token-auth notice, C++ warnings of a failed connection, the lines its driver prints
when a worker dies) is kept off the terminal unless ``quiet=False`` (``--debug``).
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from collections.abc import Iterator
from typing import Any

from toolkit.errors import ArgumentError, ClusterError, UnsupportedError

__all__ = [
    "CONNECT_TIMEOUT_S",
    "LOCAL",
    "check_reachable",
    "connect",
    "host_port",
    "import_ray",
    "is_loopback",
]

LOCAL = "local"
AUTO = "auto"
#: The longest joining a cluster at host:port may take before it is refused.
CONNECT_TIMEOUT_S = 20.0
_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def is_loopback(address: str) -> bool:
    """Whether ``address`` ("local", or host:port) names this machine's loopback."""
    if address == LOCAL:
        return True
    host = address.split("://")[-1].rsplit(":", 1)[0].strip("[]")
    return host in _LOOPBACK_HOSTS


def host_port(address: str) -> tuple[str, int]:
    """``(host, port)`` of "host:port" (also "ray://host:port", "[::1]:port").

    Raises:
      ArgumentError: for anything else, naming what was expected.
    """
    rest = address.split("://", 1)[-1]
    host, sep, port = rest.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ArgumentError(
            f"--ray: expected 'local', 'auto' or a cluster address host:port, got {address!r}"
        )
    return host, int(port)


def _pin_loopback() -> None:
    # Ray reads these when it is imported: no usage reports, and "127.0.0.1" stays
    # 127.0.0.1 instead of being swapped for the machine's routable address.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def import_ray(loopback: bool = True) -> Any:
    """Imports Ray (after pinning it to loopback), or says how to install it."""
    if loopback:
        _pin_loopback()
    try:
        import ray
    except ModuleNotFoundError as e:
        raise UnsupportedError(
            "distributed runs need Ray (pip install 'policy-toolkit[ray]')"
        ) from e
    return ray


#: An HTTP/2 client's connection preface and an empty SETTINGS frame (RFC 9113, 3.4).
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
_H2_SETTINGS = 4


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Refuses, within ``timeout`` seconds, an address where no Ray cluster can answer.

    Ray's head (its GCS) is a gRPC server: it answers an HTTP/2 connection preface
    with a SETTINGS frame at once. Nothing listening, no answer, or another protocol
    is refused here; Ray itself would retry each for minutes.

    Raises:
      ClusterError: naming the address and what came instead.
      ArgumentError: an address that is not host:port.
    """
    host, port = host_port(address)
    deadline = time.monotonic() + timeout
    head = b""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(_H2_PREFACE)
            while len(head) < 9:
                sock.settimeout(max(deadline - time.monotonic(), 0.001))
                chunk = sock.recv(9 - len(head))
                if not chunk:
                    break
                head += chunk
    except TimeoutError:
        raise ClusterError(
            f"Ray cluster at {address}: expected an answer within {timeout:g} s, got none"
        ) from None
    except OSError as e:
        reason = (e.strerror or str(e) or type(e).__name__).lower()
        raise ClusterError(
            f"Ray cluster at {address}: expected a Ray head listening there, got {reason} "
            "(start one with `ray start --head`, or use --ray local)"
        ) from None
    if len(head) < 9 or head[3] != _H2_SETTINGS:
        got = "the connection closed" if len(head) < 9 else "another protocol"
        raise ClusterError(
            f"Ray cluster at {address}: expected a Ray head (a gRPC server) there, got {got}"
        )


def _bounded_join() -> dict[str, str]:
    """Ray settings for joining an address: one attempt instead of 20 (about 40 s each).

    Ray reads this one when it connects, even when it was imported before.
    """
    return {"RAY_gcs_server_port_wait_time_s": "1"}


@contextlib.contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    """Sets environment variables for the block, unless the user set them already."""
    added = {k: v for k, v in values.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


@contextlib.contextmanager
def _stderr_dropped() -> Iterator[None]:
    """Drops what is written to file descriptor 2 (Ray's C++ warnings) for the block.

    Only around joining a running cluster: no process is started then, so none
    inherits the redirected descriptor.
    """
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # a captured stderr (tests)
        fd = 2
    sys.stderr.flush()
    saved = os.dup(fd)
    with open(os.devnull, "wb") as sink:
        os.dup2(sink.fileno(), fd)
        try:
            yield
        finally:
            os.dup2(saved, fd)
            os.close(saved)


@contextlib.contextmanager
def _ray_quiet(ray: Any) -> Iterator[None]:
    """Ray's Python warnings (its token-auth notice) and driver prints off, for the block."""
    import logging  # Ray has imported it already; not at module import (the CLI's start)

    logger = logging.getLogger("ray")
    level = logger.level
    logger.setLevel(logging.ERROR)
    # Ray's driver prints "(raylet) A worker died..." notes on *stdout* (mixed into
    # --json output); this switch is the one ray.util.rpdb turns off while debugging.
    # We replace lost workers ourselves and say so in one line.
    worker = getattr(getattr(ray, "_private", None), "worker", None)
    printing = getattr(worker, "_worker_logs_enabled", None)
    if printing is not None:
        worker._worker_logs_enabled = False
    try:
        yield
    finally:
        logger.setLevel(level)
        if printing is not None:
            worker._worker_logs_enabled = printing


@contextlib.contextmanager
def _joining(address: str, quiet: bool) -> Iterator[None]:
    """Around ``ray.init``: joining an address is one attempt, quiet unless asked."""
    if address == LOCAL:
        yield
        return
    with _environ(_bounded_join()), _stderr_dropped() if quiet else contextlib.nullcontext():
        yield


def _init_error(address: str, error: BaseException) -> ClusterError:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    reason = lines[0] if lines else type(error).__name__
    if address == LOCAL:
        return ClusterError(f"--ray local: could not start a Ray cluster ({reason})")
    return ClusterError(f"Ray cluster at {address}: could not join it ({reason})")


@contextlib.contextmanager
def connect(
    address: str = LOCAL,
    *,
    num_cpus: int | None = None,
    quiet: bool = True,
    timeout: float = CONNECT_TIMEOUT_S,
) -> Iterator[Any]:
    """Connects to Ray for the ``with`` block and returns the ``ray`` module.

    Args:
      address: "local" starts a cluster on this machine bound to 127.0.0.1 (no
        dashboard, no usage stats) and stops it at the end; "host:port" joins a
        running cluster (a loopback address keeps this process on loopback too);
        "auto" joins the one ``ray start`` left on this machine. When Ray is already
        initialised in this process, it is used as it is and left running.
      num_cpus: CPUs a local cluster offers (default: the machine's). Actors take
        one CPU each, so more actors than CPUs wait unless this is raised.
      quiet: keep Ray's own output (its start-up notices, C++ warnings while joining,
        the notes its driver prints when a worker dies) off the terminal.
      timeout: seconds an address has to answer as a Ray head (``check_reachable``).

    Raises:
      ClusterError: nothing listens at ``address``, no Ray head answers there within
        ``timeout`` seconds, or Ray's one attempt to join it fails.
      ArgumentError: an address that is neither "local", "auto" nor host:port.
    """
    if not address:
        raise ArgumentError("--ray: expected 'local' or a cluster address host:port, got ''")
    if address not in (LOCAL, AUTO):
        host_port(address)  # a malformed address fails before Ray is imported
    imported = sys.modules.get("ray")
    if imported is not None and imported.is_initialized():
        yield imported
        return
    if address not in (LOCAL, AUTO):
        check_reachable(address, timeout)  # before Ray's import (a second or two)
    loopback = is_loopback(address)
    ray = import_ray(loopback)
    options: dict[str, Any] = {"configure_logging": False, "log_to_driver": False}
    if loopback:
        options["_node_ip_address"] = "127.0.0.1"
    if address == LOCAL:
        options.update(include_dashboard=False, num_cpus=num_cpus)
    else:
        options["address"] = address
    with contextlib.ExitStack() as stack:
        if quiet:
            stack.enter_context(_ray_quiet(ray))
        try:
            with _joining(address, quiet):
                ray.init(**options)
        except (OSError, RuntimeError, ValueError, ray.exceptions.RayError) as e:
            raise _init_error(address, e) from e
        try:
            yield ray
        finally:
            ray.shutdown()
