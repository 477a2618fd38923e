"""``policy-toolkit quantize``: an int8 copy of a bundle's ONNX graph, checked for agreement."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from toolkit.cli import common


@common.command
def quantize(
    ctx: typer.Context,
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
    common.bundle_must_exist(bundle)
    common.refuse_existing(output, overwrite)
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
        console = common.console()
        console.print(f"quantize {report.source} -> {report.output}", soft_wrap=True)
        console.print(_renderable(report))
        if report.written:
            console.print(f"wrote {report.output}", soft_wrap=True)
    if not report.written:
        raise common.fail(
            f"action agreement {100 * report.action_agreement:.1f}% is below "
            f"--min-agreement {100 * report.min_agreement:.1f}%: nothing written "
            "(--force writes anyway)",
            1,
        )


def _renderable(report: Any) -> Any:
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
