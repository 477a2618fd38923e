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


@common.command
def bench(
    ctx: typer.Context,
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
    from toolkit.cli import timing

    backends = common.parse_list(backend, "--backend", ("onnx", "tf"))
    try:
        batches = [int(b) for b in common.parse_list(batch, "--batch")]
    except ValueError:
        raise common.fail(f"--batch: expected comma-separated integers, got {batch!r}") from None
    if any(b < 1 for b in batches):
        raise common.fail(f"--batch: expected sizes >= 1, got {batches}")
    if plot is not None and plot.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise common.fail(f"--plot: expected a .png, .svg or .pdf file, got {plot.name!r}")
    common.bundle_must_exist(bundle)
    stages = common.Stages()
    rows = []
    for name in backends:
        with stages.stage(f"load {name} backend") as note:
            policy = common.load_runtime_policy(ctx, bundle, name, 0)
            note["detail"] = type(policy).__name__
        for size in batches:
            with stages.stage(f"{name} batch {size}") as note:
                row = timing.measure(policy, name, size, seconds)
                note["detail"] = f"p50 {row.p50_us:.1f} us"
                rows.append(row)
    if plot is not None:
        timing.plot(rows, plot, title=str(bundle))
    if as_json:
        typer.echo(json.dumps([row.to_json() for row in rows], indent=2))
    else:
        console = common.console()
        console.print(f"policy.action on {bundle} (microseconds per call)", soft_wrap=True)
        console.print(timing.render(rows))
        if plot is not None:
            console.print(f"plot -> {plot}", soft_wrap=True)
