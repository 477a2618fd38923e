"""``policy-toolkit run``: play a bundle's policy in a gymnasium environment.

The work (environments, rollouts, recording) is in ``toolkit.cli.rollout``, imported
when the command runs so ``--help`` stays quick.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from toolkit.cli import common


@common.command
def run(
    ctx: typer.Context,
    bundle: Annotated[
        Path, typer.Argument(metavar="BUNDLE", help="A bundle folder.", show_default=False)
    ],
    env: Annotated[
        str, typer.Option("--env", "-e", help="A gymnasium environment id, e.g. CartPole-v1.")
    ],
    episodes: Annotated[int, typer.Option("--episodes", "-n", min=1)] = 10,
    seed: Annotated[
        int, typer.Option("--seed", help="Episode i resets with seed + i; seeds the policy too.")
    ] = 0,
    backend: Annotated[
        str, typer.Option("--backend", "-b", help="onnx (no TensorFlow), tf or auto.")
    ] = "onnx",
    record: Annotated[
        Path | None,
        typer.Option("--record", help="Save one rendered episode (the first seed) as a .gif."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
) -> None:
    """Play the policy in a gymnasium environment.

    Prints the mean, std, min and max return and the steps per second.
    """
    from toolkit.cli import rollout

    backend = common.parse_list(backend, "--backend", ("onnx", "tf", "auto"))[0]
    if record is not None and record.suffix.lower() != ".gif":
        raise common.fail(f"--record: expected a .gif file, got {record.name!r}")
    gym_env = rollout.make_env(env, min(episodes, rollout.MAX_PARALLEL_ENVS))
    policy = common.load_runtime_policy(ctx, bundle, backend, seed)
    rollout.check_compatible(policy, gym_env, env)
    result = rollout.rollout(policy, gym_env, episodes, seed, env_id=env)
    frames = None
    if record is not None:
        frames = rollout.record_episode(policy, env, seed, record)
    if as_json:
        data = result.to_json()
        if record is not None:
            data["record"] = {"path": str(record), "frames": frames}
        typer.echo(json.dumps(data, indent=2))
        return
    console = common.console()
    title, table = rollout.render_rollout(result, bundle, policy.backend)
    console.print(title, soft_wrap=True)
    console.print(table)
    if record is not None:
        console.print(f"recorded {frames} frames -> {record}", soft_wrap=True)
