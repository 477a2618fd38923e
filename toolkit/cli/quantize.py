"""``policy-toolkit quantize``: a smaller copy of a bundle's policy, judged on real states.

The engine is ``exporters.quantize``; its target table (``exporters.quantize.targets``)
gives the ``--target`` and ``--method`` choices. Candidates from GPTQ and per-tensor
int8 to float16 weights are calibrated and measured on different real states of episodes
(``--env``) or recorded ones (``--observations``), the first (smallest) that passes
the agreement and return gates written. Exit 1 when none passes (nothing written)
unless ``--force``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from exporters.quantize.targets import TARGETS
from toolkit.cli import common
from toolkit.cli.sign import SignKeyOption, is_signed, sign_written


def _methods_help() -> str:
    per_target = "; ".join(f"{', '.join(t.method_names)} ({name})" for name, t in TARGETS.items())
    return f"auto (the smallest candidate that passes), or one of: {per_target}."


def _targets_help() -> str:
    return " or ".join(f"{name} (needs {', '.join(t.needs)})" for name, t in TARGETS.items()) + "."


@common.command
def quantize(
    ctx: typer.Context,
    bundle: Annotated[
        Path,
        typer.Argument(metavar="BUNDLE", help="The float bundle.", show_default=False),
    ],
    output: Annotated[
        Path,
        typer.Argument(metavar="OUTPUT", help="The quantized bundle to write.", show_default=False),
    ],
    env: Annotated[
        str | None,
        typer.Option(
            "--env",
            "-e",
            help="Real states from episodes of the float policy in this gymnasium "
            "environment (e.g. CartPole-v1); also gates on the mean return.",
        ),
    ] = None,
    observations: Annotated[
        Path | None,
        typer.Option(
            "--observations",
            help="Or real states you recorded: an .npz with 'observation' (or "
            "'observation/<key>') arrays, one row per state.",
        ),
    ] = None,
    episodes: Annotated[
        int, typer.Option("--episodes", "-n", min=1, help="Episodes played with --env.")
    ] = 20,
    target: Annotated[str, typer.Option("--target", help=_targets_help())] = "onnx",
    method: Annotated[
        str,
        typer.Option("--method", help=_methods_help()),
    ] = "auto",
    min_agreement: Annotated[
        float,
        typer.Option(
            "--min-agreement",
            min=0.0,
            max=1.0,
            help="Refuse below this share of real states with the float policy's action.",
        ),
    ] = 0.99,
    min_return_ratio: Annotated[
        float,
        typer.Option(
            "--min-return-ratio",
            min=0.0,
            max=1.0,
            help="With --env: refuse below this share of the float policy's mean return.",
        ),
    ] = 0.95,
    force: Annotated[
        bool, typer.Option("--force", help="Write the most faithful candidate below the gates.")
    ] = False,
    tolerance: Annotated[
        float,
        typer.Option(
            "--tolerance", min=0.0, help="Float actions agree within this share of their range."
        ),
    ] = 0.01,
    seed: Annotated[int, typer.Option("--seed", help="Episode i resets with seed + i.")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace OUTPUT.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    sign_key: SignKeyOption = None,
) -> None:
    """Write a quantized copy of a bundle's policy, if it acts like the float one.

    Every candidate is measured on real states (--env or --observations): action
    agreement with the float policy and, with --env, the mean return over the same
    episodes. Calibration uses other real states (--env: as many episodes again,
    seeds from seed + 1,000,000; --observations: the first half of the rows, the
    second half measured). The smallest candidate that passes --min-agreement and --min-return-ratio
    is written; the report lists every candidate and why it was taken or not. Exit 1
    when none passes (nothing written) unless --force.
    """
    common.bundle_must_exist(bundle)
    common.refuse_existing(output, overwrite)
    target = common.parse_list(target, "--target", tuple(TARGETS))[0]
    if (env is None) == (observations is None):
        raise common.fail(
            "expected real states: --env ID (episodes of the float policy) or "
            "--observations FILE.npz (states you recorded)"
        )
    if observations is not None and not observations.is_file():
        raise common.fail(f"--observations: {observations}: no such file")
    # What the target needs is checked before any work (a device may lack it).
    TARGETS[target].check_installed()
    if "tensorflow" in TARGETS[target].needs:
        common.quiet_tensorflow(ctx)
    from exporters.quantize import quantize_bundle

    stages = common.Stages()
    progress = _Progress(stages)
    try:
        report = quantize_bundle(
            bundle,
            output,
            env=env,
            observations=observations,
            episodes=episodes,
            target=target,
            method=method,
            min_agreement=min_agreement,
            min_return_ratio=min_return_ratio,
            force=force,
            tolerance=tolerance,
            overwrite=overwrite,
            seed=seed,
            progress=progress,
        )
    finally:
        progress.close()
    if as_json:
        typer.echo(json.dumps(report.to_json(), indent=2))
    else:
        console = common.console()
        console.print(f"quantize {report.source} -> {report.output}", soft_wrap=True)
        console.print(f"real states: {report.states} ({report.state_source})", soft_wrap=True)
        console.print(
            f"calibrated on: {report.calibration_states} other real states "
            f"({report.calibration_source})",
            soft_wrap=True,
        )
        console.print(_candidates(report))
        console.print(_summary(report))
        console.print(f"chose {report.reason}", soft_wrap=True)
        if report.written:
            console.print(f"wrote {report.output}", soft_wrap=True)
    if report.written:
        sign_written(Path(report.output), sign_key, was_signed=is_signed(bundle))
    if not report.written:
        raise common.fail(f"{report.reason} (--force writes the most faithful anyway)", 1)


class _Progress:
    """Turns the engine's progress lines into finished stages on stderr."""

    def __init__(self, stages: common.Stages):
        self.stages = stages
        self.current: Any = None

    def __call__(self, line: str) -> None:
        self.close()
        self.current = self.stages.stage(line)
        self.current.__enter__()

    def close(self) -> None:
        if self.current is not None:
            self.current.__exit__(None, None, None)
            self.current = None


def _kib(n: int) -> str:
    return f"{n / 1024:.1f} KiB"


def _candidates(report: Any) -> Any:
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, show_edge=False, title_justify="left")
    for column in ("candidate", "size", "vs float", "agreement", "mean return", "verdict"):
        table.add_column(column, justify="left" if column in ("candidate", "verdict") else "right")
    for c in report.candidates:
        table.add_row(
            c.method + (f" (float: {', '.join(c.float_layers)})" if c.float_layers else ""),
            _kib(c.size),
            f"{c.size / report.size_before:.2f}x",
            "-" if c.agreement is None else f"{100 * c.agreement:.1f}%",
            "-" if c.mean_return is None else f"{c.mean_return:.1f}",
            c.verdict,
        )
    return table


def _summary(report: Any) -> Any:
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, show_edge=False)
    table.add_column("")
    table.add_column("float", justify="right")
    table.add_column(report.method or "quantized", justify="right")
    table.add_column("change", justify="right")
    table.add_row(
        f"{report.target} file",
        _kib(report.size_before),
        _kib(report.size_after),
        f"{report.size_after / report.size_before:.2f}x",
    )
    table.add_row(
        "graph latency (batch 1, median)",
        f"{report.latency_before_us:.1f} us",
        f"{report.latency_after_us:.1f} us",
        f"{report.latency_after_us / report.latency_before_us:.2f}x",
    )
    table.add_row(
        "action agreement (real states)",
        "",
        f"{100 * report.action_agreement:.1f}%",
        f"gate {100 * report.min_agreement:.1f}%",
    )
    if report.float_return is not None:
        from exporters.quantize import return_floor

        floor = return_floor(report.float_return, report.min_return_ratio)
        table.add_row(
            f"mean return ({report.state_source.split(':')[0]})",
            f"{report.float_return:.1f}",
            "-" if report.quantized_return is None else f"{report.quantized_return:.1f}",
            f"gate {floor:.1f}",
        )
    return table
