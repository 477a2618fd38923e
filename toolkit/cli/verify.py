"""``policy-toolkit verify``: do a bundle's SavedModel and ONNX forms agree?"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from toolkit.cli import common


@common.command
def verify(
    ctx: typer.Context,
    bundle: common.BundleArgument,
    samples: Annotated[
        int, typer.Option("--samples", "-n", min=1, help="Sampled time steps per step.")
    ] = 64,
    steps: Annotated[
        int | None,
        typer.Option("--steps", min=1, help="Steps per sequence (default 8 if stateful, else 1)."),
    ] = None,
    atol: Annotated[float, typer.Option("--atol", help="Absolute tolerance.")] = 1e-5,
    rtol: Annotated[float, typer.Option("--rtol", help="Relative tolerance.")] = 1e-5,
    seed: Annotated[int, typer.Option("--seed", help="Seeds the sampled time steps.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    trust_key: common.TrustKeyOption = None,
) -> None:
    """Check that a bundle's forms agree (exit 1 if not).

    Runs every form the bundle holds whose runtime is installed (SavedModel, ONNX,
    LiteRT) on the golden vectors recorded from the TF policy at export, and on
    spec-sampled time steps against each other; reports the largest difference per
    output and names each form it skipped (a runtime not installed) and why. With a
    trust policy (--trust-key, POLICY_TOOLKIT_TRUST_KEYS) it first checks the bundle's
    signature, before reading anything else of it (exit 2 if refused).
    """
    common.bundle_must_exist(bundle)
    from exporters import formats
    from toolkit import bundle as bundle_lib

    trust = common.trust_policy(trust_key)
    signature = _signature(bundle_lib, bundle, trust)

    # Only the SavedModel needs TensorFlow; where it is not installed, verify skips it
    # (saying so) and checks the other forms against the golden vectors and each other.
    layout = bundle_lib.read_layout(bundle, check_files=False)
    for name in layout.formats:
        fmt = formats.get(name)
        if "tensorflow" in fmt.runner_needs and fmt.runner_missing() is None:
            common.quiet_tensorflow(ctx)
    from exporters import verify as verify_bundle

    report = verify_bundle(bundle, samples, steps=steps, atol=atol, rtol=rtol, seed=seed)
    if as_json:
        typer.echo(json.dumps({**report.to_json(), "signature": signature}, indent=2))
    else:
        common.print_verify(report)
        if signature is not None:
            common.console().print(_signature_line(signature), soft_wrap=True, markup=False)
    if not report.ok:
        raise typer.Exit(1)


def _signature(bundle_lib: Any, bundle: Path, trust: Any) -> dict[str, Any] | None:
    """The signature's check: verified against ``trust`` (raising TrustError if refused),
    else what model.sig says, unverified; None when unsigned and no policy asks."""
    root = bundle_lib.bundle_root(bundle)
    if trust is not None:
        signed = bundle_lib.verify_bundle(root, trust)
        return {"verified": True, "files": len(signed), "trusted": list(trust.sources)}
    info = bundle_lib.signature_info(root)
    return None if info is None else {"verified": False, **info}


def _signature_line(signature: dict[str, Any]) -> str:
    if signature["verified"]:
        return (
            f"signature: verified, {signature['files']} files signed by a trusted key "
            f"({', '.join(signature['trusted'])})"
        )
    if "error" in signature:
        return f"signature: unreadable ({signature['error']}); not verified"
    return "signature: present, not verified (--trust-key KEY verifies it)"
