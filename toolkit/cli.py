"""The policy-toolkit command line (typer).

Commands import what they need inside their bodies, so ``--help`` and the commands
that work on ONNX bundles start without TensorFlow.
"""

from __future__ import annotations

from typing import Annotated

import typer

from toolkit import __version__

app = typer.Typer(
    name="policy-toolkit",
    help="Build, export, verify and run RL policies: TensorFlow in, ONNX and SavedModel out.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"policy-toolkit {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Build, export, verify and run RL policies."""


@app.command()
def tour() -> None:
    """Run the policies tour: the seed tutorial's examples, in TF2 form."""
    import runpy
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "examples" / "policies_tour.py"
    if not script.exists():
        typer.echo(f"error: {script} not found (the tour ships with the source tree)", err=True)
        raise typer.Exit(2)
    runpy.run_path(str(script), run_name="__main__")


def main() -> None:
    """Console-script entry point."""
    app()
