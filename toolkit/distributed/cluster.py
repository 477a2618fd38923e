"""Joining a Ray cluster, or starting a local one that talks over loopback only."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from toolkit.errors import ArgumentError, UnsupportedError

__all__ = ["LOCAL", "connect", "import_ray", "is_loopback"]

LOCAL = "local"
_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def is_loopback(address: str) -> bool:
    """Whether ``address`` ("local", or host:port) names this machine's loopback."""
    if address == LOCAL:
        return True
    host = address.split("://")[-1].rsplit(":", 1)[0].strip("[]")
    return host in _LOOPBACK_HOSTS


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


@contextlib.contextmanager
def connect(address: str = LOCAL, *, num_cpus: int | None = None) -> Iterator[Any]:
    """Connects to Ray for the ``with`` block and returns the ``ray`` module.

    Args:
      address: "local" starts a cluster on this machine bound to 127.0.0.1 (no
        dashboard, no usage stats) and stops it at the end; "host:port" joins a
        running cluster (a loopback address keeps this process on loopback too);
        "auto" joins the one ``ray start`` left on this machine. When Ray is already
        initialised in this process, it is used as it is and left running.
      num_cpus: CPUs a local cluster offers (default: the machine's). Actors take
        one CPU each, so more actors than CPUs wait unless this is raised.
    """
    if not address:
        raise ArgumentError("--ray: expected 'local' or a cluster address host:port, got ''")
    loopback = is_loopback(address)
    ray = import_ray(loopback)
    if ray.is_initialized():
        yield ray
        return
    options: dict[str, Any] = {"configure_logging": False, "log_to_driver": False}
    if loopback:
        options["_node_ip_address"] = "127.0.0.1"
    if address == LOCAL:
        options.update(include_dashboard=False, num_cpus=num_cpus)
    else:
        options["address"] = address
    try:
        ray.init(**options)
    except ConnectionError as e:
        raise UnsupportedError(f"--ray {address}: cannot reach a Ray cluster there ({e})") from e
    try:
        yield ray
    finally:
        ray.shutdown()
