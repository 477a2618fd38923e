"""``policy-toolkit inspect``: a bundle's specs, files and metadata (no TF)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from toolkit.cli import common


@common.command
def inspect(
    ctx: typer.Context,
    bundle: Annotated[
        Path,
        typer.Argument(
            metavar="BUNDLE", help="A bundle folder (or a policy.onnx file).", show_default=False
        ),
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print the manifest as JSON.")] = False,
) -> None:
    """Show a bundle's specs, files and metadata (no TF).

    Specs, signatures, distribution family, files, train step, metadata and producer
    versions. Exits 1 when a
    file differs from the manifest (missing files are only marked: an edge device may
    hold just manifest.json and policy.onnx).
    """
    from toolkit.cli import manifest_view

    common.bundle_must_exist(bundle)
    layout, source, checks = manifest_view.load_for_inspection(bundle)
    if as_json:
        typer.echo(json.dumps(layout.to_json(), indent=2))
    else:
        console = common.console()
        for renderable in manifest_view.render_manifest(layout, str(bundle), source, checks):
            console.print(renderable)
            console.print()
    changed = sorted(path for path, check in checks.items() if check == "changed")
    if changed:
        raise common.fail(
            f"{bundle}: {', '.join(changed)} changed since export (size or sha256 differ "
            "from the manifest)",
            1,
        )
    refused = sorted(path for path, check in checks.items() if check == "refused")
    if refused:
        raise common.fail(
            f"{bundle}: {', '.join(refused)}: not regular files inside the bundle (a symbolic "
            "link, FIFO, device or folder); readers refuse them",
            1,
        )
