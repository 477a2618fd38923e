"""``policy-toolkit update``: a checkpoint's weights written into an existing bundle."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from toolkit.cli import common
from toolkit.cli.sign import SignKeyOption, is_signed, sign_written


@common.command
def update(
    ctx: typer.Context,
    bundle: Annotated[
        Path, typer.Argument(metavar="BUNDLE", help="The bundle to update.", show_default=False)
    ],
    checkpoint: Annotated[
        Path,
        typer.Option(
            "--checkpoint",
            "-c",
            help="A weights-only checkpoint (exporters.save_checkpoint), a training run's "
            "policy checkpoints, TF-Agents' policies/checkpoints/ or a checkpoint prefix "
            "(folders: the latest checkpoint).",
        ),
    ],
    step: Annotated[
        int | None, typer.Option("--step", help="The train step to take (default: the latest).")
    ] = None,
    sign_key: SignKeyOption = None,
) -> None:
    """Write a checkpoint's weights into an existing bundle.

    Both formats and every hash are updated, atomically. Takes a weights-only
    checkpoint, a training run's policy checkpoints, or TF-Agents' policy checkpoints;
    an ONNX-only bundle exported with a weights map takes them all without TensorFlow.
    """
    common.bundle_must_exist(bundle)
    if not checkpoint.exists() and not Path(f"{checkpoint}.index").is_file():
        raise common.fail(f"{checkpoint}: no such checkpoint")
    from toolkit import bundle as bundle_lib

    layout = bundle_lib.read_layout(bundle)
    weights_only = (checkpoint / bundle_lib.CHECKPOINT_FILE).is_file()
    tf_free = layout.weights is not None or weights_only
    if layout.has("saved_model") or layout.has("litert") or not tf_free:
        # A SavedModel restores in TF, and policy.tflite is converted again from it.
        common.quiet_tensorflow(ctx)
    from exporters.update import update_bundle

    was_signed = is_signed(bundle)
    report = update_bundle(bundle, checkpoint, step=step)
    change = ""
    if report.max_weight_change is not None:
        change = f"; largest weight change {report.max_weight_change:.3g}"
    common.console().print(
        f"updated {report.bundle} ({', '.join(report.formats)}): train step "
        f"{report.previous_train_step} -> {report.train_step}{change}",
        soft_wrap=True,
    )
    # An updated bundle is another bundle: the old signature never covers it.
    sign_written(Path(report.bundle), sign_key, was_signed=was_signed)
