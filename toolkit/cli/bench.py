"""``policy-toolkit bench``: action latency and throughput per backend and batch size.

The timing and its table or plot are in ``toolkit.cli.timing``, imported when the
command runs so ``--help`` stays quick.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from toolkit.cli import common


def _label(bundle: Path, backend: str, several: bool) -> str:
    """A row's name: the backend, with the bundle's quantization (or "float") when
    several bundles are compared."""
    if not several:
        return backend
    from toolkit import bundle as bundle_lib

    quantization = bundle_lib.read_layout(bundle, check_files=False).quantization
    if not quantization:
        return f"{backend} float"
    return f"{backend} {str(quantization.get('method', 'quantized')).removeprefix('litert-')}"


def _plan(bundle: Path, explicit: list[str] | None) -> list[str]:
    """The backends to time on a bundle, each checked now (before any timing): the bundle
    holds its format and its engine is installed. ``explicit``: the ones asked for; None:
    every backend the bundle has a format for and whose engine is installed (table order).

    Raises:
      ToolkitError: naming the bundle and what is really missing (the engine's extra, or
        the install for the bundle's formats when none is installed).
    """
    from runtimes import backends
    from toolkit import bundle as bundle_lib
    from toolkit.errors import UnsupportedError

    formats = list(bundle_lib.read_layout(bundle, check_files=False).formats)
    if explicit is None:
        found = [b.name for b in backends.installed(formats)]
        # None installed: choose() names the install for these formats, or refuses them.
        return found or [backends.choose(backends.AUTO, formats, str(bundle)).name]
    for name in explicit:
        backend = backends.choose(name, formats, str(bundle))
        advice = backend.missing()
        if advice is not None:
            raise UnsupportedError(f"{bundle}: {advice}")
    return explicit


@common.command
def bench(
    ctx: typer.Context,
    bundles: Annotated[
        list[Path],
        typer.Argument(
            metavar="BUNDLE...",
            help="One or more bundles (e.g. a float bundle and its quantized copy).",
            show_default=False,
        ),
    ],
    backend: Annotated[
        str,
        typer.Option(
            "--backend",
            "-b",
            help=f"Comma-separated backends ({common.backends_help()}), or auto: every "
            "backend the bundle has a format for and whose engine is installed.",
        ),
    ] = "auto",
    batch: Annotated[
        str, typer.Option("--batch", help="Comma-separated batch sizes.")
    ] = "1,32,256",
    seconds: Annotated[
        float, typer.Option("--seconds", min=0.01, help="Time budget per backend and batch.")
    ] = 1.0,
    trust_key: common.TrustKeyOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
    plot: Annotated[
        Path | None, typer.Option("--plot", help="Save latency and throughput plots (.png).")
    ] = None,
) -> None:
    """Measure action latency and throughput.

    Latency percentiles (p50/p90/p99) of single policy.action calls, and actions per
    second, per bundle, backend and batch size, as a table (or JSON) and optionally a
    plot; give a float bundle and its quantized copy to compare them.
    """
    from runtimes import backends
    from toolkit.cli import timing

    explicit = None
    if backend.strip() != backends.AUTO:
        explicit = common.parse_list(backend, "--backend", tuple(backends.names()))
    try:
        batches = [int(b) for b in common.parse_list(batch, "--batch")]
    except ValueError:
        raise common.fail(f"--batch: expected comma-separated integers, got {batch!r}") from None
    if any(b < 1 for b in batches):
        raise common.fail(f"--batch: expected sizes >= 1, got {batches}")
    if plot is not None and plot.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise common.fail(f"--plot: expected a .png, .svg or .pdf file, got {plot.name!r}")
    if plot is not None:
        common.require(["matplotlib"], "--plot")
    for path in bundles:
        common.bundle_must_exist(path)
    trust = common.trust_policy(trust_key) or False
    # Every bundle's backends are checked before the first is timed.
    plans = [(path, _plan(path, explicit)) for path in bundles]
    stages = common.Stages()
    rows = []
    several = len(bundles) > 1
    for path, names in plans:
        for name in names:
            label = _label(path, name, several)
            with stages.stage(f"load {label} backend") as note:
                policy = common.load_runtime_policy(ctx, path, name, 0, trust=trust)
                note["detail"] = type(policy).__name__
            for size in batches:
                with stages.stage(f"{label} batch {size}") as note:
                    row = timing.measure(policy, label, size, seconds)
                    note["detail"] = f"p50 {row.p50_us:.1f} us"
                    rows.append(row)
    where = ", ".join(str(p) for p in bundles)
    if plot is not None:
        timing.plot(rows, plot, title=where)
    if as_json:
        typer.echo(json.dumps([row.to_json() for row in rows], indent=2))
    else:
        console = common.console()
        console.print(f"policy.action on {where} (microseconds per call)", soft_wrap=True)
        console.print(timing.render(rows))
        if plot is not None:
            console.print(f"plot -> {plot}", soft_wrap=True)
