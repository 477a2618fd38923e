"""``policy-toolkit verify``: do a bundle's SavedModel and ONNX forms agree?"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from toolkit.cli import common


@common.command
def verify(
    ctx: typer.Context,
    bundle: common.BundleArgument,
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

    Runs every form the bundle holds whose runtime is installed (SavedModel, ONNX,
    LiteRT) on the golden vectors recorded from the TF policy at export, and on
    spec-sampled time steps against each other; reports the largest difference per
    output and names each form it skipped (a runtime not installed) and why.
    """
    common.bundle_must_exist(bundle)
    from exporters import formats
    from toolkit import bundle as bundle_lib

    # Only the SavedModel needs TensorFlow; where it is not installed, verify skips it
    # (saying so) and checks the other forms against the golden vectors and each other.
    layout = bundle_lib.read_layout(bundle, check_files=False)
    for name in layout.formats:
        fmt = formats.get(name)
        if "tensorflow" in fmt.runner_needs and fmt.runner_missing() is None:
            common.quiet_tensorflow(ctx)
    from exporters import verify as verify_bundle

    report = verify_bundle(bundle, samples, steps=steps, atol=atol, rtol=rtol, seed=seed)
    if as_json:
        typer.echo(json.dumps(report.to_json(), indent=2))
    else:
        common.print_verify(report)
    if not report.ok:
        raise typer.Exit(1)
