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
            metavar="SAVED_MODEL",
            help="A TF-Agents PolicySaver output folder, or the output of "
            "PolicySavedModelTrigger (its root_dir or policies/ folder).",
            show_default=False,
        ),
    ],
    output: common.OutputArgument,
    formats: common.FormatsOption = "saved_model,onnx",
    metadata: common.MetadataOption = None,
    overwrite: common.OverwriteOption = False,
    verify: Annotated[
        bool,
        typer.Option(
            "--verify/--no-verify", help="Compare the bundle's SavedModel and ONNX forms."
        ),
    ] = True,
    samples: common.SamplesOption = 64,
    policy: Annotated[
        str,
        typer.Option(
            "--policy",
            help="For a trigger's output: which saved policy, policy, greedy_policy or "
            "collect_policy.",
        ),
    ] = "greedy_policy",
    checkpoint: Annotated[
        str | None,
        typer.Option(
            "--checkpoint",
            help="latest or a train step: apply that checkpoint of policies/checkpoints/ "
            "(the saved policies hold the weights from before training).",
        ),
    ] = None,
) -> None:
    """Import a TF-Agents PolicySaver output into a bundle.

    TF-Agents itself is not needed. Given the output of PolicySavedModelTrigger,
    imports the saved policy picked with --policy and, with --checkpoint, applies one of
    its checkpoints.
    """
    from toolkit.bundle import FORMATS

    format_list = common.parse_list(formats, "--format", FORMATS)
    meta = common.parse_metadata(metadata or [])
    if not saved_model.is_dir():
        raise common.fail(f"{saved_model}: no such SavedModel folder")
    if checkpoint is not None and checkpoint != "latest" and not checkpoint.isdigit():
        raise common.fail(f"--checkpoint: expected 'latest' or a train step, got {checkpoint!r}")
    from exporters.tf_agents_layout import SAVED_POLICIES, resolve_layout

    if policy not in SAVED_POLICIES:
        raise common.fail(f"--policy: expected one of {', '.join(SAVED_POLICIES)}, got {policy!r}")
    layout = resolve_layout(saved_model, policy)
    common.refuse_existing(output, overwrite)
    stages = common.Stages()
    common.tensorflow_stage(ctx, stages)
    import warnings

    from exporters.tf_agents_layout import import_tf_agents_layout

    with (
        stages.stage(f"import {layout.saved_policy}") as note,
        warnings.catch_warnings(record=True) as seen,
    ):
        warnings.simplefilter("always", UserWarning)
        path = import_tf_agents_layout(
            saved_model,
            output,
            policy=policy,
            checkpoint=checkpoint,
            formats=format_list,
            overwrite=overwrite,
            metadata=meta,
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
        f"imported {manifest['metadata'].get('tf_agents_function')} of {layout.saved_policy}"
        f"{step_text} -> {path}",
        soft_wrap=True,
    )
    if report is not None:
        common.print_verify(report)
        if not report.ok:
            raise common.fail(f"{path}: written, but its SavedModel and ONNX forms differ", 1)
