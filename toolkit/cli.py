"""The policy-toolkit command line (typer): export, inspect, verify, run, bench, quantize, update.

Commands import what they need inside their bodies, so ``--help`` and the commands
that work on ONNX bundles (``inspect``, ``run``/``bench`` with the onnx backend,
``quantize``) start without TensorFlow.

Exit codes: 0 ok; 1 a verification or agreement failure (or an unexpected error);
2 a usage or input error. Errors are one line on stderr (``--debug`` shows the
traceback). Progress goes to stderr, results to stdout.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from toolkit import __version__
from toolkit.errors import ToolkitError

app = typer.Typer(
    name="policy-toolkit",
    help="Build, export, verify and run RL policies: TensorFlow in, ONNX and SavedModel out.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

FORMATS = ("saved_model", "onnx")
_STATE = {"debug": False}


# --- plumbing ---------------------------------------------------------------------------


def _version(value: bool) -> None:
    if value:
        typer.echo(f"policy-toolkit {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks and TensorFlow's own logs.")
    ] = False,
) -> None:
    """Build, export, verify and run RL policies."""
    _STATE["debug"] = debug or bool(os.environ.get("POLICY_TOOLKIT_DEBUG"))


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    # Piped or captured output gets a wide fixed width, so tables neither fold nor cut
    # paths and bounds at rich's default of 80 columns.
    width = None if stream.isatty() else max(int(os.environ.get("COLUMNS") or 0), 200)
    return Console(stderr=stderr, width=width, highlight=False)


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _command(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turns toolkit errors into one line and exit code 2 (tracebacks with --debug)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except ToolkitError as e:
            if _STATE["debug"]:
                raise
            raise _fail(str(e), 2) from None
        except KeyboardInterrupt:
            raise _fail("interrupted", 130) from None
        except Exception as e:
            if _STATE["debug"]:
                raise
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise _fail(
                f"unexpected {type(e).__name__}: {first} "
                "(run `policy-toolkit --debug ...` for the traceback)",
                1,
            ) from None

    return wrapper


def _quiet_tensorflow() -> None:
    """Imports TensorFlow with its C++ start-up chatter (CUDA probes) kept off the terminal."""
    if "tensorflow" in sys.modules or _STATE["debug"]:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as log:
        os.dup2(log.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices("GPU")  # the CUDA probe logs here, once
        except BaseException:
            os.dup2(saved, 2)
            log.seek(0)
            sys.stderr.write(log.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


class _Stages:
    """Prints one line per stage (a spinner while it runs on a terminal) to stderr."""

    def __init__(self) -> None:
        self.console = _console(stderr=True)

    @contextlib.contextmanager
    def stage(self, label: str) -> Iterator[dict[str, str]]:
        note: dict[str, str] = {}
        started = time.perf_counter()
        try:
            with self.console.status(f"{label}..."):
                yield note
        except BaseException:
            self.console.print(f"[red]✗[/red] {label}", soft_wrap=True)
            raise
        detail = f": {note['detail']}" if note.get("detail") else ""
        seconds = time.perf_counter() - started
        self.console.print(
            f"[green]✓[/green] {label}{detail} [dim]({seconds:.1f} s)[/dim]", soft_wrap=True
        )


def _parse_list(value: str, what: str, allowed: tuple[str, ...] | None = None) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise _fail(f"{what}: expected a comma-separated list, got {value!r}")
    if allowed is not None:
        unknown = [v for v in items if v not in allowed]
        if unknown:
            raise _fail(f"{what}: expected some of {list(allowed)}, got {unknown}")
    return list(dict.fromkeys(items))


def _parse_metadata(pairs: list[str]) -> dict[str, str]:
    metadata: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise _fail(f"--metadata: expected key=value, got {pair!r}")
        key = key.strip()
        if key in metadata:
            raise _fail(f"--metadata: key {key!r} given twice")
        metadata[key] = value
    return metadata


def _bundle_must_exist(path: Path) -> None:
    if not path.exists():
        raise _fail(f"{path}: no such bundle")


def _verify_renderable(report: Any) -> Any:
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, show_edge=False)
    for column in ("form", "output", "max abs diff", "max rel diff", ""):
        table.add_column(column, justify="right" if "diff" in column else "left")
    for row in report.rows:
        table.add_row(
            row.form,
            row.output,
            f"{row.max_abs:.3g}",
            f"{row.max_rel:.3g}",
            "ok" if row.ok else "[red]BEYOND TOLERANCE[/red]",
        )
    return table


def _print_verify(report: Any) -> None:
    console = _console()
    status = "[green]OK[/green]" if report.ok else "[red]FAILED[/red]"
    console.print(
        f"verify {report.bundle}: {status} ({report.num_samples} samples x {report.steps} "
        f"step{'s' if report.steps != 1 else ''}; reference {report.reference}; tolerance "
        f"{report.atol:g} + {report.rtol:g} x |reference|)",
        soft_wrap=True,
    )
    console.print(_verify_renderable(report))


# --- export -------------------------------------------------------------------------------


@app.command()
@_command
def export(
    source: Annotated[
        str,
        typer.Argument(
            metavar="SOURCE",
            help="The policy factory, module:callable (e.g. examples.cartpole_factory:policy); "
            "called with no arguments, it returns a TF policy.",
            show_default=False,
        ),
    ],
    output: Annotated[
        Path,
        typer.Argument(metavar="OUTPUT", help="The bundle folder to write.", show_default=False),
    ],
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            "--checkpoint",
            "-c",
            help="Restore the policy's weights from training checkpoints (a training output "
            "folder or its policy_checkpoints/) or a weights-only checkpoint.",
        ),
    ] = None,
    step: Annotated[
        int | None,
        typer.Option("--step", help="The train step to restore (default: the latest)."),
    ] = None,
    formats: Annotated[
        str, typer.Option("--format", "-f", help="Comma-separated: saved_model,onnx.")
    ] = "saved_model,onnx",
    metadata: Annotated[
        list[str] | None,
        typer.Option("--metadata", "-m", help="key=value stored in the manifest (repeatable)."),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing bundle.")
    ] = False,
    verify: Annotated[
        bool,
        typer.Option("--verify/--no-verify", help="Check every exported form against the policy."),
    ] = True,
    samples: Annotated[
        int, typer.Option("--samples", min=1, help="Sampled time steps for verification.")
    ] = 64,
) -> None:
    """Export a TF policy to a bundle.

    The policy comes from a factory, optionally restored from a training checkpoint;
    the export is verified against it unless --no-verify.
    """
    format_list = _parse_list(formats, "--format", FORMATS)
    meta = _parse_metadata(metadata or [])
    if step is not None and checkpoint is None:
        raise _fail("--step needs --checkpoint")
    if output.exists() and not overwrite:
        raise _fail(f"{output}: already exists; pass --overwrite to replace it")
    if checkpoint is not None and not checkpoint.exists():
        raise _fail(f"{checkpoint}: no such checkpoint")
    from toolkit import cli_sources

    cli_sources.parse_source(source)  # a malformed string fails before TensorFlow loads
    stages = _Stages()
    with stages.stage("load TensorFlow"):
        _quiet_tensorflow()

    with stages.stage(f"build {source}") as note:
        policy = cli_sources.load_factory(source)
        note["detail"] = type(policy).__name__
    train_step = None
    if checkpoint is not None:
        with stages.stage(f"restore {checkpoint}") as note:
            restored = cli_sources.restore_checkpoint(policy, checkpoint, step)
            train_step = restored.train_step
            note["detail"] = f"{Path(restored.prefix).name}, train step {train_step}"
    from exporters import export_policy

    with stages.stage(f"export {', '.join(format_list)}") as note:
        path = export_policy(
            policy,
            output,
            formats=format_list,
            train_step=train_step,
            metadata=meta,
            overwrite=overwrite,
        )
        note["detail"] = str(path)
    report = None
    if verify:
        from exporters import verify as verify_bundle

        with stages.stage("verify") as note:
            report = verify_bundle(path, samples, policy=policy)
            worst = max((r.max_abs for r in report.rows), default=0.0)
            note["detail"] = f"{'OK' if report.ok else 'FAILED'}, max abs diff {worst:.3g}"
    console = _console()
    step_text = "" if train_step is None else f", train step {train_step}"
    console.print(f"exported {type(policy).__name__}{step_text} -> {path}", soft_wrap=True)
    if report is not None:
        _print_verify(report)
        if not report.ok:
            raise _fail(
                f"{path}: written, but an exported form differs from the policy beyond "
                "tolerance (see above)",
                1,
            )


# --- inspect / verify ----------------------------------------------------------------------


@app.command()
@_command
def inspect(
    bundle: Annotated[
        Path,
        typer.Argument(
            metavar="BUNDLE", help="A bundle folder (or a policy.onnx file).", show_default=False
        ),
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print the manifest as JSON.")] = False,
) -> None:
    """Show a bundle's specs, files and metadata (no TF).

    Specs, signatures, distribution family, files, train step, metadata and producer
    versions. Exits 1 when a
    file differs from the manifest (missing files are only marked: an edge device may
    hold just manifest.json and policy.onnx).
    """
    from toolkit import cli_inspect

    _bundle_must_exist(bundle)
    manifest, source, checks = cli_inspect.load_for_inspection(bundle)
    if as_json:
        typer.echo(json.dumps(manifest, indent=2))
    else:
        console = _console()
        for renderable in cli_inspect.render_manifest(manifest, str(bundle), source, checks):
            console.print(renderable)
            console.print()
    changed = sorted(path for path, check in checks.items() if check == "changed")
    if changed:
        raise _fail(
            f"{bundle}: {', '.join(changed)} changed since export (size or sha256 differ "
            "from the manifest)",
            1,
        )


@app.command("verify")
@_command
def verify_command(
    bundle: Annotated[
        Path, typer.Argument(metavar="BUNDLE", help="A bundle folder.", show_default=False)
    ],
    samples: Annotated[
        int, typer.Option("--samples", "-n", min=1, help="Sampled time steps per step.")
    ] = 64,
    steps: Annotated[
        int | None,
        typer.Option("--steps", min=1, help="Steps per sequence (default 8 if stateful, else 1)."),
    ] = None,
    atol: Annotated[float, typer.Option("--atol", help="Absolute tolerance.")] = 1e-5,
    rtol: Annotated[float, typer.Option("--rtol", help="Relative tolerance.")] = 1e-5,
    seed: Annotated[int, typer.Option("--seed", help="Seeds the sampled time steps.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Check that a bundle's forms agree (exit 1 if not).

    Feeds spec-sampled time steps to the SavedModel and the ONNX graph and reports the
    largest difference per output.
    """
    _bundle_must_exist(bundle)
    _quiet_tensorflow()
    from exporters import verify

    report = verify(bundle, samples, steps=steps, atol=atol, rtol=rtol, seed=seed)
    if as_json:
        typer.echo(json.dumps(report.to_json(), indent=2))
    else:
        _print_verify(report)
    if not report.ok:
        raise typer.Exit(1)


# --- run / bench ----------------------------------------------------------------------------


def _load_runtime_policy(bundle: Path, backend: str, seed: int | None) -> Any:
    _bundle_must_exist(bundle)
    if backend in ("tf", "auto"):
        from toolkit import bundle as bundle_lib

        formats = bundle_lib.read_manifest(bundle, check_files=False).get("formats", [])
        if backend == "tf" or "onnx" not in formats:
            _quiet_tensorflow()
    from runtimes import load_policy

    return load_policy(bundle, backend=backend, seed=seed)


@app.command()
@_command
def run(
    bundle: Annotated[
        Path, typer.Argument(metavar="BUNDLE", help="A bundle folder.", show_default=False)
    ],
    env: Annotated[
        str, typer.Option("--env", "-e", help="A gymnasium environment id, e.g. CartPole-v1.")
    ],
    episodes: Annotated[int, typer.Option("--episodes", "-n", min=1)] = 10,
    seed: Annotated[
        int, typer.Option("--seed", help="Episode i resets with seed + i; seeds the policy too.")
    ] = 0,
    backend: Annotated[
        str, typer.Option("--backend", "-b", help="onnx (no TensorFlow), tf or auto.")
    ] = "onnx",
    record: Annotated[
        Path | None,
        typer.Option("--record", help="Save one rendered episode (the first seed) as a .gif."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
) -> None:
    """Play the policy in a gymnasium environment.

    Prints the mean, std, min and max return and the steps per second.
    """
    from toolkit import cli_run

    backend = _parse_list(backend, "--backend", ("onnx", "tf", "auto"))[0]
    if record is not None and record.suffix.lower() != ".gif":
        raise _fail(f"--record: expected a .gif file, got {record.name!r}")
    gym_env = cli_run.make_env(env, min(episodes, cli_run.MAX_PARALLEL_ENVS))
    policy = _load_runtime_policy(bundle, backend, seed)
    cli_run.check_compatible(policy, gym_env, env)
    result = cli_run.rollout(policy, gym_env, episodes, seed, env_id=env)
    frames = None
    if record is not None:
        frames = cli_run.record_episode(policy, env, seed, record)
    if as_json:
        data = result.to_json()
        if record is not None:
            data["record"] = {"path": str(record), "frames": frames}
        typer.echo(json.dumps(data, indent=2))
        return
    console = _console()
    title, table = cli_run.render_rollout(result, bundle, policy.backend)
    console.print(title, soft_wrap=True)
    console.print(table)
    if record is not None:
        console.print(f"recorded {frames} frames -> {record}", soft_wrap=True)


@app.command()
@_command
def bench(
    bundle: Annotated[
        Path, typer.Argument(metavar="BUNDLE", help="A bundle folder.", show_default=False)
    ],
    backend: Annotated[
        str, typer.Option("--backend", "-b", help="Comma-separated backends: onnx,tf.")
    ] = "onnx,tf",
    batch: Annotated[
        str, typer.Option("--batch", help="Comma-separated batch sizes.")
    ] = "1,32,256",
    seconds: Annotated[
        float, typer.Option("--seconds", min=0.01, help="Time budget per backend and batch.")
    ] = 1.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
    plot: Annotated[
        Path | None, typer.Option("--plot", help="Save latency and throughput plots (.png).")
    ] = None,
) -> None:
    """Measure action latency and throughput.

    Latency percentiles (p50/p90/p99) of single policy.action calls, and actions per
    second, as a table (or JSON) and optionally a plot.
    """
    from toolkit import cli_bench

    backends = _parse_list(backend, "--backend", ("onnx", "tf"))
    try:
        batches = [int(b) for b in _parse_list(batch, "--batch")]
    except ValueError:
        raise _fail(f"--batch: expected comma-separated integers, got {batch!r}") from None
    if any(b < 1 for b in batches):
        raise _fail(f"--batch: expected sizes >= 1, got {batches}")
    if plot is not None and plot.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise _fail(f"--plot: expected a .png, .svg or .pdf file, got {plot.name!r}")
    _bundle_must_exist(bundle)
    stages = _Stages()
    rows = []
    for name in backends:
        with stages.stage(f"load {name} backend") as note:
            policy = _load_runtime_policy(bundle, name, 0)
            note["detail"] = type(policy).__name__
        for size in batches:
            with stages.stage(f"{name} batch {size}") as note:
                row = cli_bench.measure(policy, name, size, seconds)
                note["detail"] = f"p50 {row.p50_us:.1f} us"
                rows.append(row)
    if plot is not None:
        cli_bench.plot(rows, plot, title=str(bundle))
    if as_json:
        typer.echo(json.dumps([row.to_json() for row in rows], indent=2))
    else:
        console = _console()
        console.print(f"policy.action on {bundle} (microseconds per call)", soft_wrap=True)
        console.print(cli_bench.render(rows))
        if plot is not None:
            console.print(f"plot -> {plot}", soft_wrap=True)


# --- quantize / update ------------------------------------------------------------------------


@app.command()
@_command
def quantize(
    bundle: Annotated[
        Path,
        typer.Argument(metavar="BUNDLE", help="A bundle with an ONNX graph.", show_default=False),
    ],
    output: Annotated[
        Path,
        typer.Argument(metavar="OUTPUT", help="The quantized bundle to write.", show_default=False),
    ],
    min_agreement: Annotated[
        float,
        typer.Option(
            "--min-agreement", min=0.0, max=1.0, help="Refuse below this share of agreeing actions."
        ),
    ] = 0.95,
    force: Annotated[bool, typer.Option("--force", help="Write even below the threshold.")] = False,
    samples: Annotated[int, typer.Option("--samples", min=1, help="Sampled time steps.")] = 1024,
    tolerance: Annotated[
        float,
        typer.Option(
            "--tolerance", min=0.0, help="Float actions agree within this share of their range."
        ),
    ] = 0.01,
    per_channel: Annotated[
        bool, typer.Option("--per-channel", help="One scale per output column.")
    ] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace OUTPUT.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Write an int8 copy of a bundle's ONNX graph.

    Dynamic int8 quantization (onnxruntime); reports size, latency, action agreement on
    sampled time steps and the largest weight difference; refuses below
    --min-agreement unless --force (exit 1).
    """
    _bundle_must_exist(bundle)
    if output.exists() and not overwrite:
        raise _fail(f"{output}: already exists; pass --overwrite to replace it")
    from exporters.quantize import quantize_bundle

    report = quantize_bundle(
        bundle,
        output,
        samples=samples,
        tolerance=tolerance,
        min_agreement=min_agreement,
        force=force,
        per_channel=per_channel,
        overwrite=overwrite,
    )
    if as_json:
        typer.echo(json.dumps(report.to_json(), indent=2))
    else:
        console = _console()
        console.print(f"quantize {report.source} -> {report.output}", soft_wrap=True)
        console.print(_quantize_renderable(report))
        if report.written:
            console.print(f"wrote {report.output}", soft_wrap=True)
    if not report.written:
        raise _fail(
            f"action agreement {100 * report.action_agreement:.1f}% is below "
            f"--min-agreement {100 * report.min_agreement:.1f}%: nothing written "
            "(--force writes anyway)",
            1,
        )


def _quantize_renderable(report: Any) -> Any:
    from rich import box
    from rich.table import Table

    def kib(n: int) -> str:
        return f"{n / 1024:.1f} KiB"

    table = Table(box=box.SIMPLE_HEAD, show_edge=False)
    table.add_column("")
    table.add_column("original", justify="right")
    table.add_column("int8", justify="right")
    table.add_column("change", justify="right")
    table.add_row(
        "onnx size",
        kib(report.size_before),
        kib(report.size_after),
        f"{report.size_after / report.size_before:.2f}x",
    )
    table.add_row(
        "latency (batch 1, median)",
        f"{report.latency_before_us:.1f} us",
        f"{report.latency_after_us:.1f} us",
        f"{report.latency_after_us / report.latency_before_us:.2f}x",
    )
    table.add_row(
        "action agreement",
        "",
        f"{100 * report.action_agreement:.1f}%",
        f"{report.samples} samples",
    )
    table.add_row(
        "largest weight difference",
        "",
        f"{report.max_weight_diff:.3g}",
        f"{report.quantized_weights} weights int8",
    )
    return table


@app.command()
@_command
def update(
    bundle: Annotated[
        Path, typer.Argument(metavar="BUNDLE", help="The bundle to update.", show_default=False)
    ],
    checkpoint: Annotated[
        Path,
        typer.Option(
            "--checkpoint",
            "-c",
            help="A weights-only checkpoint (exporters.save_checkpoint) or a training run's "
            "policy checkpoints.",
        ),
    ],
    step: Annotated[
        int | None, typer.Option("--step", help="The train step to take (default: the latest).")
    ] = None,
) -> None:
    """Write a checkpoint's weights into an existing bundle.

    Both formats and every hash are updated, atomically. Takes a weights-only
    checkpoint, a training run's policy checkpoints, or (for imported bundles) a
    TF-Agents checkpoint.
    """
    _bundle_must_exist(bundle)
    if not checkpoint.exists():
        raise _fail(f"{checkpoint}: no such checkpoint")
    from toolkit import bundle as bundle_lib

    manifest = bundle_lib.read_manifest(bundle)
    weights_only = (checkpoint / bundle_lib.CHECKPOINT_FILE).is_file()
    if "saved_model" in manifest.get("formats", []) or not weights_only:
        _quiet_tensorflow()
    from exporters.update import update_bundle

    report = update_bundle(bundle, checkpoint, step=step)
    change = ""
    if report.max_weight_change is not None:
        change = f"; largest weight change {report.max_weight_change:.3g}"
    _console().print(
        f"updated {report.bundle} ({', '.join(report.formats)}): train step "
        f"{report.previous_train_step} -> {report.train_step}{change}",
        soft_wrap=True,
    )


# --- import / tour -------------------------------------------------------------------------


@app.command("import-tf-agents")
@_command
def import_tf_agents(
    saved_model: Annotated[
        Path,
        typer.Argument(
            metavar="SAVED_MODEL", help="A TF-Agents PolicySaver output folder.", show_default=False
        ),
    ],
    output: Annotated[
        Path,
        typer.Argument(metavar="OUTPUT", help="The bundle folder to write.", show_default=False),
    ],
    formats: Annotated[
        str, typer.Option("--format", "-f", help="Comma-separated: saved_model,onnx.")
    ] = "saved_model,onnx",
    metadata: Annotated[
        list[str] | None,
        typer.Option("--metadata", "-m", help="key=value stored in the manifest (repeatable)."),
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing bundle.")] = (
        False
    ),
    verify: Annotated[
        bool,
        typer.Option(
            "--verify/--no-verify", help="Compare the bundle's SavedModel and ONNX forms."
        ),
    ] = True,
    samples: Annotated[
        int, typer.Option("--samples", min=1, help="Sampled time steps for verification.")
    ] = 64,
) -> None:
    """Import a TF-Agents PolicySaver output into a bundle.

    TF-Agents itself is not needed.
    """
    format_list = _parse_list(formats, "--format", FORMATS)
    meta = _parse_metadata(metadata or [])
    if not saved_model.is_dir():
        raise _fail(f"{saved_model}: no such SavedModel folder")
    if output.exists() and not overwrite:
        raise _fail(f"{output}: already exists; pass --overwrite to replace it")
    stages = _Stages()
    with stages.stage("load TensorFlow"):
        _quiet_tensorflow()
    import warnings

    from exporters import import_tf_agents as import_bundle

    with (
        stages.stage(f"import {saved_model}") as note,
        warnings.catch_warnings(record=True) as seen,
    ):
        warnings.simplefilter("always", UserWarning)
        path = import_bundle(
            saved_model, output, formats=format_list, overwrite=overwrite, metadata=meta
        )
        note["detail"] = str(path)
    for warning in seen:
        if issubclass(warning.category, UserWarning):
            typer.echo(f"note: {warning.message}", err=True)
    report = None
    if verify and len(format_list) > 1:
        from exporters import verify as verify_bundle

        with stages.stage("verify") as note:
            report = verify_bundle(path, samples)
            worst = max((r.max_abs for r in report.rows), default=0.0)
            note["detail"] = f"{'OK' if report.ok else 'FAILED'}, max abs diff {worst:.3g}"
    from toolkit import bundle as bundle_lib

    manifest = bundle_lib.read_manifest(path)
    train_step = manifest.get("train_step")
    step_text = "" if train_step is None else f", train step {train_step}"
    _console().print(
        f"imported {manifest['metadata'].get('tf_agents_function')} of {saved_model}"
        f"{step_text} -> {path}",
        soft_wrap=True,
    )
    if report is not None:
        _print_verify(report)
        if not report.ok:
            raise _fail(f"{path}: written, but its SavedModel and ONNX forms differ", 1)


@app.command()
def tour() -> None:
    """Run the seed tutorial's examples, in TF2 form."""
    import runpy

    script = Path(__file__).resolve().parent.parent / "examples" / "policies_tour.py"
    if not script.exists():
        typer.echo(f"error: {script} not found (the tour ships with the source tree)", err=True)
        raise typer.Exit(2)
    runpy.run_path(str(script), run_name="__main__")


def _register_serving() -> None:
    from toolkit import cli_serve

    app.command("serve")(_command(cli_serve.serve))
    app.command("publish")(_command(cli_serve.publish))


_register_serving()


def main() -> None:
    """Console-script entry point."""
    app()
