"""The protocol-neutral serving core: models, versions, signatures, batching, following.

``ServingCore`` is what every protocol answers from. It holds the model catalogue
(``runtimes.serving.models``: versions, labels, polling), each version's signatures of
flat named arrays (``runtimes.serving.signatures``), request batching, ``--follow``,
the limits, the metrics (labelled by protocol) and the draining state. It knows no
JSON, no HTTP path and no status code: it raises ``ServingError`` with an ``ErrorKind``
and each protocol's codec (``runtimes.serving.protocols`` lists them) maps that to its
own status. A codec turns its wire format into (model, version or label, signature,
flat arrays), calls ``run`` and encodes the outputs; CPU-heavy decoding of large
requests goes through ``offload``, off the event loop's thread. Both transports (HTTP
and gRPC) call ``run`` on the event loop, where batching and sequences live.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from runtimes.serving.batching import Batcher
from runtimes.serving.following import Followers
from runtimes.serving.metrics import UNKNOWN_MODEL, ServerMetrics
from runtimes.serving.models import LoadedVersion, ModelConfig, ModelRegistry, Snapshot
from runtimes.serving.sequences import SequenceFlags, Sequences
from runtimes.serving.signatures import Signature, distribution_outputs, signatures_for
from toolkit import nest
from toolkit.errors import ErrorKind, ServingError, TrustError, UnsupportedError

__all__ = [
    "MAX_BUFFERED_BYTES",
    "OFFLOAD_BYTES",
    "CoreOptions",
    "Limits",
    "RequestBudget",
    "ServingCore",
    "VersionState",
    "build_core",
    "check_backend",
]

#: Requests up to this many bytes are decoded on the event loop's thread (well under a
#: millisecond); larger ones in the decoding thread (``ServingCore.offload``).
OFFLOAD_BYTES = 64 << 10


#: ``--max-buffered-bytes`` by default: 64 whole bodies of the default
#: ``--max-body-bytes`` (4 MiB) buffered at once, far more than 2-8 cores decode at once,
#: and a size any machine that runs the server has to spare
MAX_BUFFERED_BYTES = 256 << 20


@dataclasses.dataclass(frozen=True)
class Limits:
    """Request limits: body bytes (resource exhausted beyond), rows per request, and the
    request bytes buffered at once across every connection of both ports."""

    max_body_bytes: int = 4 << 20
    max_batch: int = 1024
    max_buffered_bytes: int = MAX_BUFFERED_BYTES

    def __post_init__(self) -> None:
        if self.max_buffered_bytes < self.max_body_bytes:
            raise ServingError(
                f"--max-buffered-bytes: expected at least --max-body-bytes "
                f"({self.max_body_bytes}), got {self.max_buffered_bytes}"
            )


class RequestBudget:
    """The request bytes buffered at once across every connection of both ports, at most
    ``--max-buffered-bytes``.

    A transport reserves a request's bytes before it buffers them (HTTP/1.1: the
    Content-Length, or each chunk as it comes; gRPC: the message's length prefix) and
    releases them when the request's body is dropped (answered, refused, cancelled, its
    connection closed); a request that cannot reserve is refused at once, with its
    protocol's "try later" error. Bodies over ``OFFLOAD_BYTES`` (64 KiB) may take only
    ``large_limit`` (seven eighths of the limit, or ``--max-body-bytes`` if more): the
    rest is kept for small requests, so large ones holding the budget do not stop the
    small ones of other clients. Both transports run on the event loop's thread, so a
    reservation is a plain add and compare, with no lock.

    Args:
      limit: the bytes that may be reserved at once.
      max_body: the largest body (``--max-body-bytes``): one always fits in an empty
        budget.

    Attributes:
      limit: the bytes that may be reserved at once.
      large_limit: what bodies over ``OFFLOAD_BYTES`` may reserve in all.
      reserved: the bytes reserved now (``policy_serving_buffered_request_bytes``).
      refused: requests refused, by port (``"http"``, ``"grpc"``;
        ``policy_serving_buffer_refusals_total``).
    """

    __slots__ = ("large_limit", "limit", "refused", "reserved")

    def __init__(self, limit: int, max_body: int = 0):
        self.limit = limit
        self.large_limit = min(limit, max(limit - limit // 8, max_body))
        self.reserved = 0
        self.refused = {"http": 0, "grpc": 0}

    def reserve(self, size: int, body: int) -> bool:
        """Reserves ``size`` more bytes of a body of ``body`` bytes (so far, with them);
        False (nothing reserved) when they do not fit."""
        reserved = self.reserved + size
        if reserved > self.limit or (body > OFFLOAD_BYTES and reserved > self.large_limit):
            return False
        self.reserved = reserved
        return True

    def release(self, size: int) -> None:
        """Gives back ``size`` bytes reserved before."""
        self.reserved -= size

    def refusal(self, port: str, what: str, size: int, body: int) -> str:
        """Counts a refusal on ``port``; the error's message (``what``: the request's
        part that did not fit, e.g. "request body"; ``size`` bytes of ``body``)."""
        self.refused[port] += 1
        large = body > OFFLOAD_BYTES and self.large_limit < self.limit
        left = max(0, (self.large_limit if large else self.limit) - self.reserved)
        kept = f", {self.limit - self.large_limit} of which are kept for bodies of 64 KiB at most"
        return (
            f"{what}: {size} bytes cannot be buffered now: expected at most {left} more of "
            f"the server's --max-buffered-bytes ({self.limit}{kept if large else ''}), "
            "which other requests hold; retry later"
        )


@dataclasses.dataclass
class CoreOptions:
    """What the core is asked for (``policy-toolkit serve``'s model options)."""

    models: list[ModelConfig]
    poll_seconds: float = 1.0
    seed: int | None = None
    #: a runtime backend name (``runtimes.load_policy``): onnx, litert, tf or auto
    backend: str = "onnx"
    threads: int = 1
    batch_window_us: int | None = None
    limits: Limits = dataclasses.field(default_factory=Limits)
    #: model name -> a checkpoint folder its highest version follows (``--follow``)
    follow: dict[str, Path] = dataclasses.field(default_factory=dict)
    follow_seconds: float = 1.0
    #: the keys a version must be signed by (a ``toolkit.bundle.TrustPolicy``, from
    #: ``--trust-key`` or POLICY_TOOLKIT_TRUST_KEYS); a refused version is logged and
    #: counted, the versions in service stay. None: no policy.
    trust: Any = None
    #: server-held sequences (runtimes.serving.sequences): idle eviction and the limit
    sequence_idle_seconds: float = 60.0
    max_sequences: int = 1024


@dataclasses.dataclass(frozen=True)
class VersionState:
    """A version's state as a status request shows it: in service, or failed with an error."""

    version: int
    available: bool
    error: str = ""


class ServingCore:
    """Answers requests for the served models, whatever protocol carries them.

    Args:
      registry: the model catalogue (polled by the caller's ``start``).
      metrics: the Prometheus metrics.
      limits: the request limits.
      followers: the ``--follow`` watches (stopped by ``close``).
      executor: the inference thread of request batching, if any (shut by ``close``).
      sequences: the server-held state of sequences (a default store if None).
    """

    def __init__(
        self,
        registry: ModelRegistry,
        metrics: ServerMetrics,
        limits: Limits,
        followers: Followers | None = None,
        executor: ThreadPoolExecutor | None = None,
        sequences: Sequences | None = None,
    ):
        self.registry = registry
        self.sequences = sequences if sequences is not None else Sequences()
        self.metrics = metrics
        self.limits = limits
        #: the request bytes both ports buffer at once (``--max-buffered-bytes``)
        self.budget = RequestBudget(limits.max_buffered_bytes, limits.max_body_bytes)
        metrics.show_budget(self.budget)
        self.followers = followers
        self._executor = executor
        # One thread decodes large requests: several at once would only take turns on
        # the GIL, and the event loop's thread takes its turn between their slices.
        self._decoder = ThreadPoolExecutor(1, thread_name_prefix="policy-serve-decode")
        self.draining = False

    # --- the catalogue -------------------------------------------------------------------

    def resolve(self, name: str, version: int | None, label: str | None) -> LoadedVersion:
        """The version a request asks for: by number, by label, or the highest."""
        return self.registry.get(name).resolve(version, label)

    def status(self, name: str, version: int | None, label: str | None) -> list[VersionState]:
        """The versions of a model (or the one asked for), failed ones included."""
        snapshot = self.registry.get(name)
        if version is not None or label is not None:
            if version is not None and version not in snapshot.versions:
                failure = snapshot.failures.get(version)
                if failure is not None:
                    return [VersionState(version, False, failure[1])]
                raise ServingError(
                    f"Could not find version {version} of model {snapshot.name}",
                    ErrorKind.NOT_FOUND,
                )
            return [VersionState(snapshot.resolve(version, label).version, True)]
        states = [VersionState(v, True) for v in sorted(snapshot.versions)]
        states += [
            VersionState(v, False, f[1])
            for v, f in sorted(snapshot.failures.items())
            if v not in snapshot.versions
        ]
        if not states:
            raise ServingError(
                f"Could not find any versions of model {snapshot.name}", ErrorKind.NOT_FOUND
            )
        return states

    def ready(self) -> bool:
        """Whether every model has a version in service and the server is not draining."""
        return not self.draining and all(s.versions for s in self.registry.snapshots.values())

    # --- running ---------------------------------------------------------------------------

    async def run(
        self,
        signature: Signature,
        arrays: dict[str, np.ndarray],
        sequence: SequenceFlags | None = None,
        loaded: LoadedVersion | None = None,
        model: str = "",
        checked: int | None = None,
    ) -> dict[str, Any]:
        """Checks decoded inputs against a signature and runs it: flat arrays out.

        Args:
          signature: the signature to run.
          arrays: the decoded inputs, by name.
          sequence: the request's sequence flags: the state is the server's
            (``runtimes.serving.sequences``); then ``loaded`` and ``model`` name the
            version and the model.
          checked: the batch size of arrays a codec made in the inputs' exact dtypes
            and shapes, as ``Signature.check`` passed them for an earlier request of
            this very layout (the check is not run again).

        Raises:
          ServingError: naming the input that does not fit (invalid argument); for
            sequences, an unknown one (not found) or one too many (unavailable).
          ToolkitError: the policy's own refusal of its inputs (invalid argument too).
        """
        if sequence is not None:
            if loaded is None:
                raise ValueError("a sequence's request needs its loaded version")
            policy = loaded.policy

            def initial() -> dict[str, np.ndarray]:
                return dict(nest.flatten_with_paths(policy.get_initial_state(1), "policy_state"))

            return await self.sequences.run(
                model, sequence, signature, arrays, initial, lambda a: self.run(signature, a)
            )
        if checked is None:
            arrays, batch = signature.check(arrays, self.limits.max_batch)
        else:
            batch = checked
        outputs = signature.run(arrays, batch)
        if not isinstance(outputs, dict):  # batched: the merged call's share
            outputs = await outputs
        return outputs

    async def offload(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Runs CPU-heavy work of one request (decoding a large body) off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self._decoder, fn, *args)

    # --- metrics and life cycle -------------------------------------------------------------

    def observe(
        self,
        protocol: str,
        model: str | None,
        api: str,
        code: Any,
        seconds: float,
        error: bool,
    ) -> None:
        """Counts one answered request (``code``: the protocol's own status; requests
        for models not served count under ``_unknown``)."""
        metrics = self.metrics
        label = model if model in metrics.models else UNKNOWN_MODEL
        metrics.observe(protocol, label, api, code, seconds, error)

    def start(self, poll_seconds: float) -> None:
        """Keeps polling the models' paths every ``poll_seconds`` (0: never)."""
        self.registry.start(poll_seconds)

    def start_draining(self) -> None:
        """From now on the server is not ready (it finishes what it has, then stops)."""
        self.draining = True

    def close(self) -> None:
        """Stops polling, following, and the decoding and inference threads."""
        self.draining = True
        self.registry.stop()
        if self.followers is not None:
            self.followers.stop()
        self._decoder.shutdown(wait=True)
        if self._executor is not None:
            self._executor.shutdown(wait=True)


def check_backend(backend: str, follow: bool) -> None:
    """Refuses a backend that is not installed, or cannot do what is asked, up front.

    Any backend of ``runtimes.backends.BACKENDS`` serves; ``auto`` is checked when a
    version loads.

    Raises:
      SpecMismatchError: an unknown backend (naming the known ones).
      UnsupportedError: naming the backend, what it lacks and what to install or use.
    """
    from runtimes import backends

    if backend == backends.AUTO:
        return
    row = backends.get(backend)
    if row.missing() is not None:
        light = backends.names(tf_free=True)
        hint = f"; --backend {light[0]} serves without it" if not row.tf_free and light else ""
        raise UnsupportedError(
            f"--backend {backend}: the {backend} backend needs {row.engine_label}, which is "
            f"not installed (pip install 'policy-toolkit[{row.extra}]'){hint}"
        )
    if follow and not row.weight_updates:
        able = [b.name for b in backends.BACKENDS.values() if b.weight_updates]
        raise UnsupportedError(
            f"--follow: the {backend} backend cannot take checkpoints; expected a backend "
            f"with weight updates ({', '.join(able)})"
        )


def build_core(options: CoreOptions) -> ServingCore:
    """The core the options ask for: models (not polled yet), batching, following, metrics."""
    import runtimes

    metrics = ServerMetrics([c.name for c in options.models])
    window = None if options.batch_window_us is None else options.batch_window_us / 1e6
    executor = (
        ThreadPoolExecutor(1, thread_name_prefix="policy-serve-infer")
        if window is not None
        else None
    )
    followers = Followers(
        options.follow,
        options.follow_seconds,
        # A checkpoint changes the train step /metrics shows for the version (followers
        # start once the registry below has loaded versions).
        on_apply=lambda name: metrics.set_versions(name, registry.get(name).versions),
    )

    trust = False if options.trust is None else options.trust
    names = {Path(c.path).absolute(): c.name for c in options.models}

    def load(path: Path) -> tuple[Any, dict[str, Any]]:
        try:
            policy = runtimes.load_policy(
                path, options.backend, seed=options.seed, threads=options.threads, trust=trust
            )
        except TrustError:
            folder = Path(path).absolute()
            metrics.trust_refusals.labels(names.get(folder.parent, names.get(folder, ""))).inc()
            raise
        return policy, policy.layout

    def prepare(name, policy, layout, version, path, identity) -> LoadedVersion:
        batcher = None
        if window is not None:
            batcher = Batcher(
                policy.action_flat,
                window,
                options.limits.max_batch,
                executor,
                on_batch=metrics.batch_rows.labels(name).observe,
            )
        signatures = signatures_for(policy, distribution_outputs(layout), batcher)
        return LoadedVersion(version, path, policy, signatures, identity, time.time(), batcher)

    def on_change(name: str, snapshot: Snapshot) -> None:
        metrics.set_versions(name, snapshot.versions)
        followers.update(name, snapshot)

    registry = ModelRegistry(
        options.models,
        load,
        prepare,
        on_change=on_change,
        on_failure=lambda name, version, message: metrics.load_failures.labels(name).inc(),
    )
    sequences = Sequences(options.sequence_idle_seconds, options.max_sequences)
    return ServingCore(registry, metrics, options.limits, followers, executor, sequences)
