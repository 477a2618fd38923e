"""The plumbing every command shares: errors and exit codes, consoles, stages, parsing.

Exit codes: 0 ok; 1 a verification or agreement failure (or an unexpected error);
2 a usage or input error. Errors are one line on stderr (``--debug`` shows the
traceback). Progress goes to stderr, results to stdout.

The run's state (``--debug``) lives on the root ``typer.Context`` (``CliState``),
not in a module global, so one process can invoke the app many times.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from toolkit.errors import ToolkitError

__all__ = [
    "BackendOption",
    "BundleArgument",
    "CliState",
    "FormatsOption",
    "MetadataOption",
    "OutputArgument",
    "OverwriteOption",
    "SamplesOption",
    "Stages",
    "TrustKeyOption",
    "backends_help",
    "bundle_must_exist",
    "command",
    "console",
    "fail",
    "is_debug",
    "load_runtime_policy",
    "not_installed",
    "parse_backend",
    "parse_list",
    "parse_metadata",
    "print_verify",
    "quiet_tensorflow",
    "refuse_existing",
    "require",
    "tensorflow_stage",
    "trust_policy",
    "verify_stage",
]

# Modules a command may need that are no backend's engine, as (what messages call them,
# what installs them). Engines (TensorFlow, onnxruntime, ai_edge_litert) are named with
# their extra by the backend table. Only what is true on a device: a package, not
# '[all]' (which pulls TensorFlow), unless only '[all]' has it.
_PACKAGES = {
    "tensorflow_probability": ("TensorFlow Probability", "'policy-toolkit[all]'"),
    "tf2onnx": ("tf2onnx", "'policy-toolkit[all]'"),
    "tf_keras": ("tf-keras", "'policy-toolkit[all]'"),
    "onnx": ("the onnx package", "onnx"),
    "gymnasium": ("gymnasium", "gymnasium"),
    "matplotlib": ("matplotlib", "matplotlib"),
    "pygame": ("pygame", "pygame"),
    "PIL": ("pillow", "pillow"),
}


def _install(module: str) -> str | None:
    """What installs ``module`` (``'policy-toolkit[all]'``, ``onnx``...), if known."""
    if module in _PACKAGES:
        return _PACKAGES[module][1]
    from runtimes import backends

    for backend in backends.BACKENDS.values():
        if backend.engine == module:
            return f"'policy-toolkit[{backend.extra}]'"
    return None


def not_installed(module: str) -> str | None:
    """Why ``module`` cannot be used here, naming what installs it ("matplotlib is not
    installed (pip install matplotlib)"), or None when it is installed."""
    from runtimes import backends

    if module not in _PACKAGES:
        return backends.not_installed(module)
    try:
        import importlib.util

        if importlib.util.find_spec(module) is not None:
            return None
    except (ImportError, ValueError):  # a blocked or half-installed module
        pass
    label, install = _PACKAGES[module]
    return f"{label} is not installed (pip install {install})"


def require(modules: Any, what: str) -> None:
    """Fails (exit 2) before any work when a module ``what`` needs is not installed.

    Raises:
      typer.Exit: ``error: --plot: matplotlib is not installed (pip install matplotlib)``.
    """
    for module in modules:
        reason = not_installed(module)
        if reason is not None:
            raise fail(f"{what}: {reason}")


# Arguments and options that several commands take, declared once.
BundleArgument = Annotated[
    Path, typer.Argument(metavar="BUNDLE", help="A bundle folder.", show_default=False)
]
OutputArgument = Annotated[
    Path,
    typer.Argument(metavar="OUTPUT", help="The bundle folder to write.", show_default=False),
]
FormatsOption = Annotated[
    str,
    typer.Option(
        "--format",
        "-f",
        help="Comma-separated: saved_model,onnx,litert. Golden vectors (verify's reference "
        "on devices) come with every export.",
    ),
]
MetadataOption = Annotated[
    list[str] | None,
    typer.Option("--metadata", "-m", help="key=value stored in the manifest (repeatable)."),
]
OverwriteOption = Annotated[bool, typer.Option("--overwrite", help="Replace an existing bundle.")]


def backends_help() -> str:
    """The backends of the table as help texts list them: ``onnx, litert, ...: no
    TensorFlow; tf`` (a backend added to runtimes.backends shows up here)."""
    from runtimes import backends

    free = backends.names(tf_free=True)
    rest = [name for name in backends.names() if name not in free]
    return f"{', '.join(free)}: no TensorFlow" + (f"; {', '.join(rest)}" if rest else "")


BackendOption = Annotated[
    str,
    typer.Option(
        "--backend",
        "-b",
        help=f"A runtime backend ({backends_help()}), or auto: the first TF-free one the "
        "bundle has a format for and whose engine is installed, else tf.",
    ),
]
TrustKeyOption = Annotated[
    list[Path] | None,
    typer.Option(
        "--trust-key",
        help="Load only bundles signed by this PEM public key (repeatable; any one will "
        "do): unsigned bundles, other keys' and changed, added or removed files are "
        "refused. Default: the keys of POLICY_TOOLKIT_TRUST_KEYS, if set.",
        show_default=False,
    ),
]
SamplesOption = Annotated[
    int, typer.Option("--samples", min=1, help="Sampled time steps for verification.")
]


@dataclasses.dataclass
class CliState:
    """What the root callback learns for every command of one invocation."""

    debug: bool = False


def is_debug(ctx: typer.Context | None) -> bool:
    """Whether this invocation shows tracebacks (``--debug`` or POLICY_TOOLKIT_DEBUG)."""
    state = ctx.find_object(CliState) if ctx is not None else None
    if state is None:
        return bool(os.environ.get("POLICY_TOOLKIT_DEBUG"))
    return state.debug


def console(stderr: bool = False) -> Any:
    """A rich console for results (stdout) or progress (stderr)."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    # Piped or captured output gets a wide fixed width, so tables neither fold nor cut
    # paths and bounds at rich's default of 80 columns.
    width = None if stream.isatty() else max(int(os.environ.get("COLUMNS") or 0), 200)
    return Console(stderr=stderr, width=width, highlight=False)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Prints ``error: message`` on stderr; returns the Exit to raise."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def one_line(error: BaseException) -> str:
    """An error's first line, counting the others (a manifest error lists every violation)."""
    lines = str(error).strip().splitlines() or [type(error).__name__]
    more = len(lines) - 1
    return lines[0] + (f" (and {more} more; --debug shows all)" if more else "")


def command(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turns toolkit errors into one line and exit code 2 (tracebacks with --debug).

    The command takes ``ctx: typer.Context`` (typer passes it by that name).
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = kwargs.get("ctx")
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except ToolkitError as e:
            if is_debug(ctx):
                raise
            raise fail(one_line(e), 2) from None
        except KeyboardInterrupt:
            raise fail("interrupted", 130) from None
        except ModuleNotFoundError as e:
            top = (e.name or "").split(".")[0]
            install = _install(top)
            if is_debug(ctx) or install is None:
                raise
            raise fail(
                f"this command needs the module {top!r}, which is not installed: "
                f"pip install {install}",
                2,
            ) from None
        except Exception as e:
            if is_debug(ctx):
                raise
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise fail(
                f"unexpected {type(e).__name__}: {first} "
                "(run `policy-toolkit --debug ...` for the traceback)",
                1,
            ) from None

    return wrapper


def quiet_tensorflow(ctx: typer.Context) -> None:
    """Imports TensorFlow with its C++ start-up lines (CUDA probes, XLA) kept off the
    terminal; ``--debug`` shows them (``toolkit.agents.tensorflow_logs``)."""
    from toolkit.agents import tensorflow_logs

    tensorflow_logs.quiet_import(verbose=is_debug(ctx))


class Stages:
    """Prints one line per stage (a spinner while it runs on a terminal) to stderr."""

    def __init__(self) -> None:
        self.console = console(stderr=True)

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


def tensorflow_stage(ctx: typer.Context, stages: Stages) -> None:
    """The "load TensorFlow" stage of the commands that build or import policies."""
    with stages.stage("load TensorFlow"):
        quiet_tensorflow(ctx)


def verify_stage(stages: Stages, path: Path, samples: int, policy: Any = None) -> Any:
    """The "verify" stage: the bundle's forms (and ``policy``, if given) compared."""
    from exporters import verify as verify_bundle

    with stages.stage("verify") as note:
        report = verify_bundle(path, samples, policy=policy)
        worst = max((r.max_abs for r in report.rows), default=0.0)
        note["detail"] = f"{'OK' if report.ok else 'FAILED'}, max abs diff {worst:.3g}"
    return report


def parse_list(value: str, what: str, allowed: tuple[str, ...] | None = None) -> list[str]:
    """The distinct items of a comma-separated option, checked against ``allowed``."""
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise fail(f"{what}: expected a comma-separated list, got {value!r}")
    if allowed is not None:
        unknown = [v for v in items if v not in allowed]
        if unknown:
            raise fail(f"{what}: expected some of {list(allowed)}, got {unknown}")
    return list(dict.fromkeys(items))


def parse_metadata(pairs: list[str]) -> dict[str, str]:
    """``--metadata key=value`` options as a dict; a key given twice is an error."""
    metadata: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise fail(f"--metadata: expected key=value, got {pair!r}")
        key = key.strip()
        if key in metadata:
            raise fail(f"--metadata: key {key!r} given twice")
        metadata[key] = value
    return metadata


def bundle_must_exist(path: Path) -> None:
    if not path.exists():
        raise fail(f"{path}: no such bundle")


def refuse_existing(output: Path, overwrite: bool) -> None:
    """The overwrite guard: an existing OUTPUT needs ``--overwrite``."""
    if output.exists() and not overwrite:
        raise fail(f"{output}: already exists; pass --overwrite to replace it")


def parse_backend(value: str, what: str = "--backend", *, auto: bool = True) -> Any:
    """A backend of the table (``runtimes.backends``), or None for ``auto``.

    Raises:
      typer.Exit: an unknown name (exit 2, naming the known ones).
    """
    from runtimes import backends

    name = value.strip()
    if auto and name == backends.AUTO:
        return None
    if name not in backends.BACKENDS:
        known = [*([backends.AUTO] if auto else []), *backends.names()]
        raise fail(f"{what}: expected one of {known}, got {name!r}")
    return backends.get(name)


def trust_policy(keys: list[Path] | None) -> Any:
    """The trust policy of ``--trust-key`` options, else of POLICY_TOOLKIT_TRUST_KEYS, or None."""
    from toolkit import bundle as bundle_lib

    return bundle_lib.trust_policy(list(keys) if keys else None)


def load_runtime_policy(
    ctx: typer.Context, bundle: Path, backend: str, seed: int | None, **options: Any
) -> Any:
    """A bundle's runtime policy; TensorFlow is loaded (quietly) only if the backend needs it."""
    from runtimes import backends
    from toolkit import bundle as bundle_lib

    bundle_must_exist(bundle)
    # With a trust policy nothing of the bundle is used, its manifest included, before
    # the signature is checked (load_policy checks it again as it reads).
    trust = options.get("trust") or None
    layout = bundle_lib.read_layout(bundle, check_files=False, trust=trust)
    chosen = backends.choose(backend, layout.formats, str(bundle))
    if not chosen.tf_free:
        quiet_tensorflow(ctx)
    from runtimes import load_policy

    return load_policy(bundle, backend=chosen.name, seed=seed, **options)


def _verify_renderable(report: Any) -> Any:
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, show_edge=False)
    columns = ("form", "reference", "output", "max abs diff", "max rel diff", "")
    for column in columns:
        table.add_column(column, justify="right" if "diff" in column else "left")
    for row in report.rows:
        table.add_row(
            row.form,
            row.reference,
            row.output,
            f"{row.max_abs:.3g}",
            f"{row.max_rel:.3g}",
            "ok" if row.ok else "[red]BEYOND TOLERANCE[/red]",
        )
    return table


def print_verify(report: Any) -> None:
    """A verification report: its status line, the forms it skipped and the table."""
    from rich.text import Text

    out = console()
    line = Text(report.summary())  # plain text: paths may hold rich markup characters
    start = len(f"verify {report.bundle}: ")
    status = "OK" if report.ok else "FAILED"
    line.stylize("green" if report.ok else "red", start, start + len(status))
    out.print(line, soft_wrap=True)
    for skipped in report.skipped_lines():
        out.print(Text(skipped), soft_wrap=True)
    out.print(_verify_renderable(report))
