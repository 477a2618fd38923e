"""``policy-toolkit import-tf-agents``: a TF-Agents PolicySaver output to a bundle."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Annotated

import typer

from toolkit.cli import common
from toolkit.cli.sign import SignKeyOption, sign_written


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
    greedy: Annotated[
        bool,
        typer.Option(
            "--greedy",
            help="Import only the deterministic action: a collect policy without its "
            "exploration, a stochastic policy's mode.",
        ),
    ] = False,
    sign_key: SignKeyOption = None,
) -> None:
    """Import a TF-Agents PolicySaver output into a bundle.

    TF-Agents itself is not needed. Given the output of PolicySavedModelTrigger,
    imports the saved policy picked with --policy and, with --checkpoint, applies one of
    its checkpoints. The bundle is written only once verified.
    """
    from exporters import formats as export_formats

    format_list = common.parse_list(formats, "--format", tuple(export_formats.choices()))
    meta = common.parse_metadata(metadata or [])
    if not saved_model.is_dir():
        raise common.fail(f"{saved_model}: no such SavedModel folder")
    if checkpoint is not None and checkpoint != "latest" and not checkpoint.isdigit():
        raise common.fail(f"--checkpoint: expected 'latest' or a train step, got {checkpoint!r}")
    # What the import and each format need, before any work.
    common.require(["tensorflow"], "import-tf-agents")
    for name in export_formats.parse(format_list):
        common.require(export_formats.get(name).export_needs, f"import-tf-agents --format {name}")
    from exporters.tf_agents.layout import SAVED_POLICIES, resolve_layout

    if policy not in SAVED_POLICIES:
        raise common.fail(f"--policy: expected one of {', '.join(SAVED_POLICIES)}, got {policy!r}")
    layout = resolve_layout(saved_model, policy)
    common.refuse_existing(output, overwrite)
    stages = common.Stages()
    common.tensorflow_stage(ctx, stages)
    import warnings

    from exporters.tf_agents.layout import import_tf_agents_layout

    # Written beside the output and moved there once verified: a bundle whose forms
    # differ is never left behind (nor does it replace an existing one).
    staging = output.parent / f".{output.name}.importing-{os.getpid()}"
    try:
        with (
            stages.stage(f"import {layout.saved_policy}") as note,
            warnings.catch_warnings(record=True) as seen,
        ):
            warnings.simplefilter("always", UserWarning)
            import_tf_agents_layout(
                saved_model,
                staging,
                policy=policy,
                checkpoint=checkpoint,
                formats=format_list,
                overwrite=True,
                metadata=meta,
                greedy=greedy,
            )
            note["detail"] = str(output)
        for warning in seen:
            if issubclass(warning.category, UserWarning):
                typer.echo(f"note: {warning.message}", err=True)
        report = None
        if verify and len(format_list) > 1:
            report = common.verify_stage(stages, staging, samples)
            if not report.ok:
                common.print_verify(report)
                raise common.fail(
                    f"{output}: not written: the imported SavedModel and ONNX forms differ", 1
                )
        _move_into_place(staging, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    path = output
    if report is not None:
        report.bundle = output
    from toolkit import bundle as bundle_lib

    written = bundle_lib.read_layout(path)
    train_step = written.train_step
    step_text = "" if train_step is None else f", train step {train_step}"
    common.console().print(
        f"imported {written.metadata.get('tf_agents_function')} of {layout.saved_policy}"
        f"{step_text} -> {path}",
        soft_wrap=True,
    )
    sign_written(path, sign_key)
    exploration = written.metadata.get("tf_agents_exploration")
    if exploration is not None:
        typer.echo(f"note: TF-Agents' exploration rebuilt as {exploration}", err=True)
    if report is not None:
        common.print_verify(report)


def _move_into_place(staging: Path, output: Path) -> None:
    """``staging`` becomes ``output``; an existing output is removed only after that."""
    old = output.parent / f".{output.name}.replaced-{os.getpid()}"
    if output.exists():
        output.rename(old)
    try:
        staging.rename(output)
    except OSError:
        if old.exists():
            old.rename(output)
        raise
    shutil.rmtree(old, ignore_errors=True)
