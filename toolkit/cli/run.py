"""``policy-toolkit run``: play a bundle's policy in a gymnasium environment.

The work (environments, rollouts, recording) is in ``toolkit.cli.rollout``, imported
when the command runs so ``--help`` stays quick.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from toolkit.cli import common
from toolkit.distributed.cluster import CONNECT_TIMEOUT_S


@common.command
def run(
    ctx: typer.Context,
    bundle: common.BundleArgument,
    env: Annotated[
        str, typer.Option("--env", "-e", help="A gymnasium environment id, e.g. CartPole-v1.")
    ],
    episodes: Annotated[int, typer.Option("--episodes", "-n", min=1)] = 10,
    seed: Annotated[
        int, typer.Option("--seed", help="Episode i resets with seed + i; seeds the policy too.")
    ] = 0,
    backend: common.BackendOption = "auto",
    trust_key: common.TrustKeyOption = None,
    record: Annotated[
        Path | None,
        typer.Option("--record", help="Save one rendered episode (the first seed) as a .gif."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
    follow: Annotated[
        Path | None,
        typer.Option(
            "--follow",
            help="Follow a learner: apply each new checkpoint that lands in this folder "
            "(training output, policy_checkpoints/, TF-Agents' policies/checkpoints/) "
            "between steps; episodes run one by one and report their train step.",
        ),
    ] = None,
    interval: Annotated[
        float, typer.Option("--interval", min=0.01, help="Seconds between checks (--follow).")
    ] = 1.0,
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            "-w",
            min=0,
            help="Play the episodes on this many Ray actors (--backend onnx or litert; auto: "
            "onnx if the bundle has it); 0: in this process.",
        ),
    ] = 0,
    ray_address: Annotated[
        str,
        typer.Option(
            "--ray",
            help="With --workers: 'local' (a cluster on 127.0.0.1 for this run) or host:port "
            f"(given up after {CONNECT_TIMEOUT_S:g} s without an answer).",
        ),
    ] = "local",
) -> None:
    """Play the policy in a gymnasium environment.

    Prints the mean, std, min and max return and the steps per second; with --follow,
    also each episode's return and the train step of the weights it was played with.
    With --workers, Ray actors play the episodes; the per-episode returns equal a local
    run's, lost workers or not (a sampling policy draws per block of 32 episodes, so
    past the first block its draws differ from a local run's).
    """
    from toolkit.cli import rollout

    chosen = common.parse_backend(backend)
    backend = "auto" if chosen is None else chosen.name
    if follow is not None and chosen is not None:
        chosen.require("weight_updates", "--follow")
    if record is not None and record.suffix.lower() != ".gif":
        raise common.fail(f"--record: expected a .gif file, got {record.name!r}")
    if workers:
        if follow is not None:
            raise common.fail("--follow: plays locally; run it without --workers")
        if backend == "tf":
            raise common.fail(
                "--backend tf: Ray workers run TF-free backends (onnx, litert); drop --workers "
                "to play tf locally"
            )
        if record is not None:
            raise common.fail("--record: plays locally; run it without --workers")
        quiet = not common.is_debug(ctx)
        # Checked before Ray starts; the workers get the signed bytes (backends.payload).
        trust = common.trust_policy(trust_key) or False
        result, used = _run_distributed(
            bundle, env, episodes, seed, workers, ray_address, backend, as_json, quiet, trust
        )
        if used.lost_workers:
            common.console(stderr=True).print(
                f"note: {used.lost_workers} Ray worker(s) lost; their episodes were played "
                "again on others",
                soft_wrap=True,
            )
        if as_json:
            data = result.to_json()
            data["workers"] = workers
            data["backend"] = used.backend
            typer.echo(json.dumps(data, indent=2))
            return
        console = common.console()
        title, table = rollout.render_rollout(result, bundle, used.backend, workers=workers)
        console.print(title, soft_wrap=True)
        console.print(table)
        return
    parallel = 1 if follow is not None else min(episodes, rollout.MAX_PARALLEL_ENVS)
    policy = common.load_runtime_policy(
        ctx, bundle, backend, seed, trust=common.trust_policy(trust_key) or False
    )
    # A masked bundle takes the environment's info["action_mask"] as an observation leaf.
    masked = policy.action_mask_input is not None
    gym_env = rollout.make_env(env, parallel, action_mask=masked)
    rollout.check_compatible(policy, gym_env, env)
    if record is not None:
        rollout.check_record(env, seed)  # before the episodes, not after
    if follow is not None:
        from runtimes import backends

        backends.get(policy.backend).require("weight_updates", "--follow")
        with policy.follow(follow, interval):
            result = rollout.rollout(
                policy,
                gym_env,
                episodes,
                seed,
                env_id=env,
                on_episode=None if as_json else _print_episode,
            )
    else:
        with _EpisodeBar(f"{env} episodes", episodes, enabled=not as_json) as bar:
            result = rollout.rollout(
                policy, gym_env, episodes, seed, env_id=env, on_ended=bar.advance
            )
    frames = None
    if record is not None:
        frames = rollout.record_episode(policy, env, seed, record)
    if as_json:
        data = result.to_json()
        data["backend"] = policy.backend  # as with --workers: what played the episodes
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


class _EpisodeBar:
    """Episodes played so far, as a rich progress bar on stderr: only on a terminal (and
    not with --json); piped or captured output gets nothing."""

    def __init__(self, description: str, total: int, *, enabled: bool):
        import sys

        self._progress = None
        if not (enabled and sys.stderr.isatty()):
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

        self._progress = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=common.console(stderr=True),
            transient=True,  # the results table follows; the bar is gone once done
        )
        self._task = self._progress.add_task(description, total=total)

    def __enter__(self) -> _EpisodeBar:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.stop()

    def advance(self, n: int) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, n)


def _print_episode(index: int, episode_return: float, length: int, steps: tuple) -> None:
    first, last = steps
    step = str(first) if first == last else f"{first} -> {last}"
    common.console().print(
        f"episode {index}: return {episode_return:.1f}, length {length}, train step {step}",
        soft_wrap=True,
    )


def _run_distributed(
    bundle: Path,
    env: str,
    episodes: int,
    seed: int,
    workers: int,
    address: str,
    backend: str,
    no_progress: bool,
    quiet: bool,
    trust: Any,
) -> tuple[Any, Any]:
    """The episodes on Ray actors, with a progress bar on stderr.

    Returns:
      A RolloutResult and the DistributedResult (its backend and lost workers).
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from runtimes import load_policy
    from toolkit import bundle as bundle_lib
    from toolkit.cli import rollout
    from toolkit.distributed import backends, evaluation

    common.bundle_must_exist(bundle)
    # A bad id, bundle, signature, backend or pairing fails here, before Ray starts; the
    # workers run the backend chosen here (backends.choose), never another.
    layout = bundle_lib.read_layout(bundle, check_files=False, trust=trust or None)
    chosen = backends.choose(layout.formats, backend)
    check = rollout.make_env(env, 1)
    policy = load_policy(bundle, backend=chosen.name, trust=trust)
    if policy.action_mask_input is not None:
        raise common.fail("--workers: Ray actors pass no action masks yet; play it locally")
    rollout.check_compatible(policy, check, env)
    check.close()
    progress = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=no_progress,
    )
    task = progress.add_task(f"{env} episodes", total=episodes)
    shown = []

    def show(_actors: Any) -> None:
        progress.start()
        shown.append(True)

    try:
        # Shown once the workers start: an unreachable cluster is one line, no bar.
        result = evaluation.evaluate(
            bundle,
            env,
            episodes,
            seed,
            workers,
            address=address,
            policy_seed=seed,
            backend=chosen.name,
            on_episodes=lambda n: progress.advance(task, n),
            on_actors=show,
            quiet=quiet,
            trust=trust,
        )
    finally:
        if shown:  # stop() of a bar never shown still prints an empty line
            progress.stop()
    rolled = rollout.RolloutResult(env, seed, result.returns, result.lengths, result.seconds)
    return rolled, result
