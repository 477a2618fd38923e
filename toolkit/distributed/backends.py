"""Which runtime backend Ray workers run, decided here from the runtime's backend table.

Workers never import TensorFlow, so they run the table's TF-free backends
(``runtimes.backends``: onnx, litert, and any other registered one). Collectors also swap
in the learner's weights from arrays, which needs a backend with weight updates (onnx;
LiteRT models hold their weights as converted constants). A worker receives what its
backend reads (the manifest and its format's file) as bytes, so workers on other machines
need no shared disk.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

from runtimes import backends
from toolkit.errors import ArgumentError, BundleError, UnsupportedError

__all__ = ["Payload", "choose", "payload", "worker_backends"]


class Payload(NamedTuple):
    """What a worker loads: the backend's name and its files ``{name: bytes}``."""

    backend: str
    files: dict[str, bytes]


def worker_backends(*, takes_weights: bool = False) -> list[backends.Backend]:
    """The backends Ray workers may run, in the table's order: the TF-free ones (with
    weight updates, for collectors)."""
    return [
        b
        for b in backends.BACKENDS.values()
        if b.tf_free and (b.weight_updates or not takes_weights)
    ]


def choose(
    formats: Any, requested: str = "auto", *, takes_weights: bool = False
) -> backends.Backend:
    """The backend workers run for a bundle holding ``formats``: ``requested``, or for
    "auto" the first worker backend whose format the bundle holds.

    Args:
      formats: the bundle's formats (``Layout.formats``).
      requested: "auto" or a backend name.
      takes_weights: the workers must apply new weights from arrays (collectors).

    Raises:
      UnsupportedError: a backend that imports TensorFlow (workers never do), or one
        that cannot take weights when the workers must.
      BundleError: the bundle lacks the backend's format.
      ArgumentError: an unknown backend name.
    """
    usable = worker_backends(takes_weights=takes_weights)
    names = [b.name for b in usable]
    formats = list(formats)
    if requested == backends.AUTO:
        for backend in usable:
            if backend.format in formats:
                return backend
        raise BundleError(
            f"Ray workers run the {' or '.join(names)} backend: expected a bundle with "
            f"{' or '.join(b.format for b in usable)}, got formats {formats}"
        )
    backend = backends.BACKENDS.get(requested)
    if backend is None:
        raise ArgumentError(
            f"backend: expected one of {[backends.AUTO, *(b.name for b in worker_backends())]} "
            f"for Ray workers, got {requested!r}"
        )
    if not backend.tf_free:
        raise UnsupportedError(
            f"backend {requested!r}: Ray workers run TF-free backends ({', '.join(names)}), "
            f"never TensorFlow; play {requested} locally (without --workers)"
        )
    if takes_weights and not backend.weight_updates:
        raise UnsupportedError(
            f"backend {requested!r}: collectors apply the learner's weights from arrays, "
            f"which only {' or '.join(names)} takes"
        )
    if backend.format not in formats:
        raise BundleError(
            f"backend {requested!r}: expected a bundle with {backend.format}, got formats {formats}"
        )
    return backend


def payload(
    path: str | os.PathLike,
    backend: str = "auto",
    *,
    takes_weights: bool = False,
    trust: Any = None,
):
    """What workers of ``backend`` load from the bundle at ``path`` (read, bounded and
    hash-checked here): a ``Payload``.

    A payload holds the manifest and one model file, not the whole signed bundle, so the
    signature is checked here, on the driver, and the bytes sent are the signed ones:
    each is compared with the signature's digest after it is read (a file swapped
    between the check and the read is refused). Workers then load the payload without a
    trust policy of their own (``actors.load_payload``).

    Args:
      path: the bundle folder.
      backend: the workers' backend name, or "auto".
      takes_weights: the workers take weight updates (distributed training).
      trust: as ``runtimes.load_policy``'s: a TrustPolicy or PEM path(s), False for
        none, None for POLICY_TOOLKIT_TRUST_KEYS's keys if set.

    Raises:
      BundleError, UnsupportedError, ArgumentError: as ``choose``, or for an unreadable
        bundle.
      TrustError: a bundle the trust policy refuses.
    """
    import hashlib

    from toolkit import bundle
    from toolkit.errors import TrustError

    root = bundle.bundle_root(Path(path))
    policy = bundle.trust_policy(trust)
    signed = bundle.verify_bundle(root, policy) if policy is not None else None
    layout = bundle.read_layout(root, check_files=False)
    chosen = choose(layout.formats, backend, takes_weights=takes_weights)
    entry = layout.format(chosen.format)
    files = {
        bundle.MANIFEST: bundle.read_member(
            root, bundle.MANIFEST, key=bundle.MANIFEST, cap=bundle.MAX_MANIFEST_BYTES
        ),
        entry.path: bundle.read_member(
            root, entry.path, key=f"{chosen.format}.file", files=layout.files_json
        ),
    }
    for name, data in files.items() if signed is not None else ():
        if signed.get(name) != hashlib.sha256(data).hexdigest():
            raise TrustError(f"{root}: {name} changed after its signature was checked")
    return Payload(chosen.name, files)
