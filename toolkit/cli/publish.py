"""``policy-toolkit publish``: a bundle -> a new version under a model base path.

TF-free: the work is ``runtimes.serving.publish``, imported when the command runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from toolkit.cli import common
from toolkit.cli.sign import SignKeyOption

__all__ = ["publish"]


@common.command
def publish(
    ctx: typer.Context,
    bundle: Annotated[
        Path, typer.Argument(metavar="BUNDLE", help="The bundle to publish.", show_default=False)
    ],
    base: Annotated[
        Path,
        typer.Argument(
            metavar="BASE", help="The model base path (created if missing).", show_default=False
        ),
    ],
    version: Annotated[
        int | None,
        typer.Option("--version", min=0, help="The version number (default: the train step)."),
    ] = None,
    sign_key: SignKeyOption = None,
    trust_key: common.TrustKeyOption = None,
) -> None:
    """Add a bundle to a model base path as a new version, atomically.

    BASE/<version> holds the SavedModel at its root, so both `policy-toolkit serve BASE`
    and `tensorflow_model_server --model_base_path=BASE` serve it.
    """
    from runtimes.serving.publish import publish as publish_bundle

    trust = common.trust_policy(trust_key)
    target = publish_bundle(bundle, base, version, trust=trust, sign_key=sign_key)
    typer.echo(str(target))
