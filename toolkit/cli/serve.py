"""``policy-toolkit serve``: a TF-free policy server (TF Serving's REST API).

The server (``runtimes.serving``) is imported when the command runs; neither it nor
this module imports TensorFlow (with the onnx or litert backend).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from toolkit.cli import common

__all__ = ["follow_folders", "model_configs", "serve"]


def _bad(option: str, expected: str, got: str) -> Exception:
    """A usage error naming the option (the CLI prints it, exit status 2)."""
    from toolkit.errors import SpecMismatchError

    return SpecMismatchError(option, expected, got)


def _split(text: str, sep: str, what: str, example: str) -> tuple[str, str]:
    left, found, right = text.partition(sep)
    if not found or not left or not right:
        raise _bad(what, example, repr(text))
    return left, right


def model_configs(
    model: Path | None,
    name: str | None,
    models: list[str],
    versions: list[str],
    labels: list[str],
) -> list:
    """The served models from the command line's MODEL, --name, --model, --versions, --label."""
    from runtimes.serving.models import ModelConfig, VersionPolicy

    pairs: list[tuple[str, Path]] = []
    if model is not None:
        pairs.append((name or model.resolve().name or "default", model))
    elif name is not None:
        raise _bad("--name", "a MODEL argument to name", "none")
    for entry in models:
        model_name, path = _split(entry, "=", "--model", "NAME=PATH")
        pairs.append((model_name, Path(path)))
    if not pairs:
        raise _bad("MODEL", "a MODEL path or --model NAME=PATH", "neither")
    names = [n for n, _ in pairs]
    if len(set(names)) != len(names):
        raise _bad("--model", "distinct model names", str(names))
    policies: dict[str | None, VersionPolicy] = {}
    for entry in versions:
        target, _, text = entry.rpartition("=")
        if target and target not in names:
            raise _bad("--versions", f"NAME=POLICY with NAME one of {names}", repr(target))
        policies[target or None] = VersionPolicy.parse(text)
    model_labels: dict[str | None, list[tuple[str, int]]] = {}
    for entry in labels:
        target, _, rest = entry.rpartition(":")
        if target and target not in names:
            raise _bad("--label", f"MODEL:LABEL=VERSION with MODEL one of {names}", repr(target))
        label, version = _split(rest, "=", "--label", "[MODEL:]LABEL=VERSION")
        if not version.isdigit():
            raise _bad("--label", "[MODEL:]LABEL=VERSION with a numeric version", repr(entry))
        model_labels.setdefault(target or None, []).append((label, int(version)))
    return [
        ModelConfig(
            n,
            p,
            policies.get(n, policies.get(None, VersionPolicy())),
            tuple(model_labels.get(None, []) + model_labels.get(n, [])),
        )
        for n, p in pairs
    ]


def follow_folders(entries: list[str], names: list[str]) -> dict[str, Path]:
    """``--follow [NAME=]DIR`` entries as model name -> folder.

    A bare DIR needs exactly one served model; ``NAME=`` is read as a model name only
    when NAME is one (so a folder whose name holds ``=`` still works).
    """
    folders: dict[str, Path] = {}
    for entry in entries:
        target, sep, rest = entry.partition("=")
        if sep and target in names:
            name, folder = target, rest
        elif len(names) == 1:
            name, folder = names[0], entry
        else:
            raise _bad("--follow", f"NAME=DIR with NAME one of {names}", repr(entry))
        if not folder:
            raise _bad("--follow", "[NAME=]DIR with a folder", repr(entry))
        if name in folders:
            raise _bad("--follow", f"one folder for model {name!r}", repr(entry))
        folders[name] = Path(folder)
    return folders


@common.command
def serve(
    ctx: typer.Context,
    model: Annotated[
        Path | None,
        typer.Argument(
            metavar="[MODEL]",
            help="A bundle, or a base path of numeric version folders (TF Serving's layout).",
            show_default=False,
        ),
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", help="MODEL's name in URLs (default: its folder's).")
    ] = None,
    models: Annotated[
        list[str],
        typer.Option("--model", help="Another model: NAME=PATH (repeatable).", show_default=False),
    ] = [],  # noqa: B006 (typer needs a literal default)
    host: Annotated[
        str, typer.Option("--host", help="Address to listen on (keep 127.0.0.1 unless proxied).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="0: any free port.")] = 8501,
    versions: Annotated[
        list[str],
        typer.Option(
            "--versions",
            help="Which versions to serve: latest, latest:N, all or specific:V1,V2 "
            "(as TF Serving's model_version_policy); NAME=POLICY for one model.",
            show_default=False,
        ),
    ] = [],  # noqa: B006
    labels: Annotated[
        list[str],
        typer.Option(
            "--label",
            help="A version label, [MODEL:]LABEL=VERSION, for /labels/LABEL URLs (repeatable).",
            show_default=False,
        ),
    ] = [],  # noqa: B006
    poll_seconds: Annotated[
        float,
        typer.Option(
            "--poll-seconds", min=0.0, help="How often to look for new versions (0: never)."
        ),
    ] = 1.0,
    seed: Annotated[
        int | None,
        typer.Option("--seed", min=0, help="Seeds stochastic actions (default: from the OS)."),
    ] = None,
    backend: Annotated[
        str,
        typer.Option("--backend", help=f"A runtime backend ({common.backends_help()}), or auto."),
    ] = "onnx",
    batch_window_us: Annotated[
        int | None,
        typer.Option(
            "--batch-window-us",
            min=0,
            help="Merge concurrent action requests of a model into one call, waiting this "
            "long for more (0: merge what has arrived). Off by default.",
        ),
    ] = None,
    max_batch: Annotated[
        int, typer.Option("--max-batch", min=1, help="Most rows per request (400 beyond).")
    ] = 1024,
    max_body_bytes: Annotated[
        int, typer.Option("--max-body-bytes", min=1, help="Largest request body (413 beyond).")
    ] = 4 << 20,
    max_buffered_bytes: Annotated[
        int | None,
        typer.Option(
            "--max-buffered-bytes",
            min=1,
            help="Most request bytes buffered at once across every connection of both "
            "ports (at least --max-body-bytes); a request that does not fit is refused at "
            "once (HTTP 503 with Retry-After, gRPC RESOURCE_EXHAUSTED). Bodies over 64 KiB "
            "may take 7/8 of it: the rest is kept for small ones. Default: 256 MiB, or "
            "--max-body-bytes if larger.",
            show_default=False,
        ),
    ] = None,
    log_level: Annotated[
        str, typer.Option("--log-level", help="critical, error, warning, info or debug.")
    ] = "info",
    access_log: Annotated[
        bool, typer.Option("--access-log", help="Log every request (off: it costs latency).")
    ] = False,
    follow: Annotated[
        list[str],
        typer.Option(
            "--follow",
            help="A learner's checkpoint folder, [NAME=]DIR: the model's highest version "
            "takes each new checkpoint there in place, without a new version (repeatable).",
            show_default=False,
        ),
    ] = [],  # noqa: B006
    follow_seconds: Annotated[
        float,
        typer.Option("--follow-seconds", min=0.001, help="How often --follow folders are checked."),
    ] = 1.0,
    trust_key: common.TrustKeyOption = None,
    graceful_seconds: Annotated[
        float,
        typer.Option(
            "--graceful-seconds", min=0.0, help="On SIGTERM, how long in-flight requests get."
        ),
    ] = 4.0,
    read_timeout_seconds: Annotated[
        float,
        typer.Option(
            "--read-timeout-seconds",
            min=0.001,
            help="Close a connection that has not sent a whole request this long after it "
            "opened or its request began.",
        ),
    ] = 5.0,
    max_connections: Annotated[
        int,
        typer.Option(
            "--max-connections", min=1, help="Most open connections; more are closed at once."
        ),
    ] = 1024,
    grpc_port: Annotated[
        int | None,
        typer.Option(
            "--grpc-port",
            min=0,
            max=65535,
            help="Also serve gRPC here (KServe v2's GRPCInferenceService, TF Serving's "
            "PredictionService and ModelService; TF Serving uses 8500; 0: any free port).",
            show_default=False,
        ),
    ] = None,
    sequence_idle_seconds: Annotated[
        float,
        typer.Option(
            "--sequence-idle-seconds",
            min=0.001,
            help="Drop a server-held sequence (sequence_id) unused this long.",
        ),
    ] = 60.0,
    max_sequences: Annotated[
        int,
        typer.Option(
            "--max-sequences", min=1, help="Most server-held sequences; new ones are refused."
        ),
    ] = 1024,
) -> None:
    """Serve policies without TensorFlow: TF Serving's REST API, KServe v2 REST, gRPC.

    TF Serving: GET /v1/models/NAME (status), .../metadata, POST /v1/models/NAME:predict
    (row "instances" or columnar "inputs"). KServe v2: GET /v2, /v2/health/live|ready,
    /v2/models/NAME[/versions/V][/ready], POST .../infer. With --grpc-port: KServe v2's
    and TF Serving's gRPC services. GET /metrics. SIGTERM stops it gracefully.
    """
    try:
        from runtimes import backends
        from runtimes.serving.core import MAX_BUFFERED_BYTES, Limits, check_backend
        from runtimes.serving.server import LOG_LEVELS, ServeOptions, run
    except ImportError as e:  # installed without the server's libraries
        from toolkit.errors import UnsupportedError

        raise UnsupportedError(
            f"serve needs the server's libraries ({e.name} is missing): "
            "pip install 'policy-toolkit[serve]'"
        ) from None

    if log_level not in LOG_LEVELS:
        raise _bad("--log-level", f"one of {list(LOG_LEVELS)}", repr(log_level))
    known = [backends.AUTO, *backends.BACKENDS]
    if backend not in known:
        raise _bad("--backend", f"one of {known}", repr(backend))
    # Before the server starts, not per version: not installed, or unable to --follow.
    check_backend(backend, follow=bool(follow))
    configs = model_configs(model, name, models, versions, labels)
    if max_buffered_bytes is None:
        max_buffered_bytes = max(MAX_BUFFERED_BYTES, max_body_bytes)
    limits = Limits(
        max_body_bytes=max_body_bytes, max_batch=max_batch, max_buffered_bytes=max_buffered_bytes
    )
    options = ServeOptions(
        models=configs,
        host=host,
        port=port,
        poll_seconds=poll_seconds,
        seed=seed,
        backend=backend,
        batch_window_us=batch_window_us,
        limits=limits,
        log_level=log_level,
        access_log=access_log,
        graceful_seconds=graceful_seconds,
        read_timeout_seconds=read_timeout_seconds,
        max_connections=max_connections,
        follow=follow_folders(follow, [c.name for c in configs]),
        follow_seconds=follow_seconds,
        grpc_port=grpc_port,
        sequence_idle_seconds=sequence_idle_seconds,
        max_sequences=max_sequences,
        trust=common.trust_policy(trust_key),
    )
    raise typer.Exit(run(options))
