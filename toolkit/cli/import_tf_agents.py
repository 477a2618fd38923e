"""``policy-toolkit import-tf-agents``: a TF-Agents PolicySaver output to a bundle."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from toolkit.cli import common


@common.command
def import_tf_agents(
    ctx: typer.Context,
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
    from toolkit.bundle import FORMATS

    format_list = common.parse_list(formats, "--format", FORMATS)
    meta = common.parse_metadata(metadata or [])
    if not saved_model.is_dir():
        raise common.fail(f"{saved_model}: no such SavedModel folder")
    common.refuse_existing(output, overwrite)
    stages = common.Stages()
    common.tensorflow_stage(ctx, stages)
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
        report = common.verify_stage(stages, path, samples)
    from toolkit import bundle as bundle_lib

    manifest = bundle_lib.read_manifest(path)
    train_step = manifest.get("train_step")
    step_text = "" if train_step is None else f", train step {train_step}"
    common.console().print(
        f"imported {manifest['metadata'].get('tf_agents_function')} of {saved_model}"
        f"{step_text} -> {path}",
        soft_wrap=True,
    )
    if report is not None:
        common.print_verify(report)
        if not report.ok:
            raise common.fail(f"{path}: written, but its SavedModel and ONNX forms differ", 1)
