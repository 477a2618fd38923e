"""The policy-toolkit command line (typer): export, inspect, verify, run, bench, quantize, update,
serve, publish, sign.

One module per command (``toolkit.cli.export``, ...), the plumbing they share in
``toolkit.cli.common``. Commands import what they need inside their bodies, so
``--help`` and the commands that work on ONNX bundles (``inspect``, ``run``/``bench``
with the onnx backend, ``quantize``) start without TensorFlow; the modules that do
the commands' work with numpy (``rollout``, ``timing``, ``manifest_view``,
``sources``) are imported the same way.

Exit codes: 0 ok; 1 a verification or agreement failure (or an unexpected error);
2 a usage or input error. Errors are one line on stderr (``--debug`` shows the
traceback). Progress goes to stderr, results to stdout.
"""

from __future__ import annotations

import os
from typing import Annotated

import typer

from toolkit import __version__
from toolkit.cli import bench as _bench
from toolkit.cli import export as _export
from toolkit.cli import import_tf_agents as _import_tf_agents
from toolkit.cli import inspect as _inspect
from toolkit.cli import publish as _publish
from toolkit.cli import quantize as _quantize
from toolkit.cli import run as _run
from toolkit.cli import serve as _serve
from toolkit.cli import sign as _sign
from toolkit.cli import update as _update
from toolkit.cli import verify as _verify
from toolkit.cli.common import CliState

__all__ = ["app", "main"]

app = typer.Typer(
    name="policy-toolkit",
    help="Build, export, verify and run RL policies: TensorFlow in; SavedModel, ONNX, LiteRT out.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"policy-toolkit {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    ctx: typer.Context,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks and TensorFlow's own logs.")
    ] = False,
) -> None:
    """Build, export, verify and run RL policies."""
    ctx.obj = CliState(debug=debug or bool(os.environ.get("POLICY_TOOLKIT_DEBUG")))


app.command("export")(_export.export)
app.command("inspect")(_inspect.inspect)
app.command("verify")(_verify.verify)
app.command("run")(_run.run)
app.command("bench")(_bench.bench)
app.command("quantize")(_quantize.quantize)
app.command("update")(_update.update)
app.command("import-tf-agents")(_import_tf_agents.import_tf_agents)
app.command("serve")(_serve.serve)
app.command("publish")(_publish.publish)
app.command("sign")(_sign.sign)


def main() -> None:
    """Console-script entry point."""
    app()
