"""``policy-toolkit export``: a TF policy from a factory (and checkpoint) to a verified bundle."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from toolkit.cli import common
from toolkit.cli.sign import SignKeyOption, sign_written


@common.command
def export(
    ctx: typer.Context,
    source: Annotated[
        str,
        typer.Argument(
            metavar="SOURCE",
            help="The policy factory, module:callable (e.g. examples.cartpole_factory:policy); "
            "called with no arguments, it returns a TF policy.",
            show_default=False,
        ),
    ],
    output: common.OutputArgument,
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
    formats: common.FormatsOption = "saved_model,onnx",
    metadata: common.MetadataOption = None,
    card: Annotated[
        list[str] | None,
        typer.Option(
            "--card",
            help="key=value for the model card bom.cdx.json (repeatable): agent, network, "
            "env, env_steps, eval_return, eval_episodes, description, limitation, license.",
        ),
    ] = None,
    overwrite: common.OverwriteOption = False,
    verify: Annotated[
        bool,
        typer.Option("--verify/--no-verify", help="Check every exported form against the policy."),
    ] = True,
    samples: common.SamplesOption = 64,
    env: Annotated[
        str | None,
        typer.Option(
            "--env",
            help="A gymnasium environment (e.g. CartPole-v1) whose real states formats "
            "calibrated on them (micro) play: calibration and held-out episodes.",
        ),
    ] = None,
    episodes: Annotated[
        int,
        typer.Option("--episodes", "-n", min=1, help="Held-out episodes played with --env."),
    ] = 20,
    c_weights: Annotated[
        str,
        typer.Option(
            "--c-weights",
            help="The c format's weights: float32, or int8 (per-channel scales, calibrated "
            "on --env states; refused below 99% agreement with the float policy).",
        ),
    ] = "float32",
    sign_key: SignKeyOption = None,
) -> None:
    """Export a TF policy to a bundle.

    The policy comes from a factory, optionally restored from a training checkpoint;
    the export is verified against it unless --no-verify.
    """
    from exporters import formats as export_formats

    format_list = common.parse_list(formats, "--format", tuple(export_formats.choices()))
    meta = common.parse_metadata(metadata or [])
    from exporters.card import parse_card_options

    card_options = parse_card_options(card or [])
    if step is not None and checkpoint is None:
        raise common.fail("--step needs --checkpoint")
    common.refuse_existing(output, overwrite)
    if checkpoint is not None and not checkpoint.exists():
        raise common.fail(f"{checkpoint}: no such checkpoint")
    from toolkit.cli import sources

    sources.parse_source(source)  # a malformed string fails before TensorFlow loads
    # What the export and each format need, before any work.
    common.require(["tensorflow"], "export")
    for name in export_formats.parse(format_list):
        common.require(export_formats.get(name).export_needs, f"export --format {name}")
    stages = common.Stages()
    common.tensorflow_stage(ctx, stages)

    with stages.stage(f"build {source}") as note:
        policy = sources.load_factory(source)
        note["detail"] = type(policy).__name__
    train_step = None
    if checkpoint is not None:
        with stages.stage(f"restore {checkpoint}") as note:
            restored = sources.restore_checkpoint(policy, checkpoint, step)
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
            card=card_options,
            overwrite=overwrite,
            format_options=(
                {"env": env, "episodes": episodes, "c_weights": c_weights} if env else None
            ),
        )
        note["detail"] = str(path)
    report = common.verify_stage(stages, path, samples, policy=policy) if verify else None
    step_text = "" if train_step is None else f", train step {train_step}"
    common.console().print(f"exported {type(policy).__name__}{step_text} -> {path}", soft_wrap=True)
    sign_written(path, sign_key)
    if report is not None:
        common.print_verify(report)
        if not report.ok:
            raise common.fail(
                f"{path}: written, but an exported form differs from the policy beyond "
                "tolerance (see above)",
                1,
            )
