"""``quantize_bundle``: checks what it was given, gets real states, builds, measures, writes.

The steps live in their own modules (see the package doc); this one runs them in
order and chooses: the target's candidates are tried from the smallest file up and
the first that passes both gates is written.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from exporters import card as card_lib
from exporters.quantize import measure, report, targets
from exporters.quantize.report import Candidate, QuantizeReport
from exporters.quantize.source import FloatBundle, quantized_manifest
from exporters.quantize.states import (
    CALIBRATION_SEED_OFFSET,
    RealStates,
    states_from_env,
    states_from_file,
)
from toolkit import bundle
from toolkit.errors import ExportError

__all__ = ["quantize_bundle"]


def quantize_bundle(
    bundle_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    env: str | None = None,
    observations: str | os.PathLike | None = None,
    episodes: int = 20,
    target: str = "onnx",
    method: str = "auto",
    min_agreement: float = 0.99,
    min_return_ratio: float = 0.95,
    force: bool = False,
    tolerance: float = 1e-2,
    overwrite: bool = False,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> QuantizeReport:
    """Writes an int8 copy of a bundle's policy if it acts like the float one on real states.

    Args:
      bundle_dir: the float bundle (an ONNX graph for target "onnx"; a SavedModel for
        target "litert", since LiteRT quantization converts again).
      output_dir: the quantized bundle to write (the target's format only).
      env: a gymnasium id: real states from ``episodes`` episodes of the float policy,
        and the return gate.
      observations: or an .npz of recorded states (see ``states``).
      episodes: episodes played with ``env`` (per candidate for the return).
      target: a name of ``targets.TARGETS`` ("onnx", "litert" or "micro").
      method: "auto" or one of the target's methods.
      min_agreement: the share of agreeing actions a candidate needs.
      min_return_ratio: with ``env``, the share of the float mean return it needs (for
        negative returns: a drop of at most ``(1 - ratio) * |float return|``).
      force: write the most faithful candidate even below the gates.
      tolerance: float actions agree within this share of the action spec's range.
      overwrite: replace an existing ``output_dir``.
      seed: episode i resets with ``seed + i``.
      progress: called with a short line as each stage starts.

    Returns:
      A QuantizeReport; ``written`` says whether the output exists.

    Raises:
      BundleError: the bundle lacks what the target needs, or is already quantized.
      ExportError: no real states given, bad arguments or states, an existing output,
        or nothing to quantize.
      UnsupportedError: the target needs a module that is not installed (said before
        any work is done).
    """
    say = progress or (lambda _line: None)
    output = Path(output_dir)
    source = FloatBundle.read(Path(bundle_dir))
    spec = targets.target(target)
    methods = spec.methods if method == "auto" else (spec.method(method),)
    source.check_not_quantized()
    module = spec.load()
    members = module.check(source)
    if (env is None) == (observations is None):
        raise ExportError(
            "real states: expected exactly one of env (rollouts of the float policy, e.g. "
            "'CartPole-v1') or observations (an .npz of recorded states)"
        )
    if not 0.0 <= min_agreement <= 1.0:
        raise ExportError(f"min_agreement: expected a share in [0, 1], got {min_agreement}")
    if not 0.0 <= min_return_ratio <= 1.0:
        raise ExportError(f"min_return_ratio: expected a share in [0, 1], got {min_return_ratio}")
    if episodes < 1:
        raise ExportError(f"episodes: expected at least 1, got {episodes}")
    if output.exists() and not overwrite:
        raise ExportError(f"{output.absolute()}: already exists; pass overwrite=True to replace it")
    spec.check_installed()
    source.check_files(members)
    # The float model read and checked (a broken one refused) before any episode.
    prepared = module.prepare(source)

    if env is not None:
        say(f"play {episodes} episodes of {env} with the float policy")
        states = states_from_env(source, env, episodes, seed)
        offset = seed + CALIBRATION_SEED_OFFSET
        say(f"play {episodes} more episodes (seeds {offset}...) to calibrate on")
        calibration = states_from_env(source, env, episodes, offset)
    else:
        calibration, states = states_from_file(Path(observations), source).split()
    reference = measure.reference(source, states)
    # A target whose files or measures depend on the run's states binds to them.
    if hasattr(module, "bind"):
        module = module.bind(prepared, source, states)

    def manifest_for(
        chosen: targets.Method,
        model: bytes,
        keep: tuple[str, ...],
        agreement: float,
        mean_return: float | None,
    ) -> dict[str, Any]:
        entry = module.format_entry(source, model)
        return quantized_manifest(
            source, spec, chosen, entry, keep, states, calibration, agreement, mean_return,
            tolerance,
        )  # fmt: skip

    with tempfile.TemporaryDirectory(prefix="policy-quantize-") as scratch:
        tmp = Path(scratch)
        # name -> (the file as written, float layers, the manifest it was sized with)
        built: dict[str, tuple[bytes, tuple[str, ...], dict[str, Any]]] = {}
        for candidate in methods:
            say(f"quantize: {candidate.name}")
            model, keep = module.build(candidate.name, prepared, source, calibration, tmp)
            # With its own manifest copy (not the source's), so the sizes compared are
            # those a written bundle has (to a few bytes of measured figures).
            own = manifest_for(candidate, model, keep, 1.0, 500.0)
            built[candidate.name] = (module.finish(model, own), keep, own)
        order = sorted(built, key=lambda n: (len(built[n][0]), list(built).index(n)))
        candidates, chosen, measured = _try(
            order, built, source, spec, module, reference, states, tmp, say,
            min_agreement, min_return_ratio, tolerance,
        )  # fmt: skip
        written = chosen is not None or force
        pick = chosen
        if pick is None and measured:
            pick = max(measured, key=lambda n: (measured[n][0], -len(built[n][0])))
        candidates = report.verdicts(candidates, pick, written)
        reason = report.reason(pick, chosen, candidates, force, states.env_id is not None)
        model, keep, _ = built[pick]
        agreement, mean_return = measured[pick]
        latency_before = measure.latency_us(module.runner(prepared.float_model), states)
        latency_after = measure.latency_us(module.runner(model), states)
        new_manifest = manifest_for(spec.method(pick), model, keep, agreement, mean_return)
        model = module.finish(model, new_manifest)
        if written:
            files = measure.files_of(module, spec.writes, model, new_manifest)

            def build(folder: Path) -> dict[str, Any]:
                for rel, data in files.items():
                    (folder / rel).parent.mkdir(parents=True, exist_ok=True)
                    (folder / rel).write_bytes(data)
                # The model card of the quantized policy: its candidate and agreement.
                card = card_lib.make_card(new_manifest, name=Path(output).absolute().name)
                (folder / card_lib.CARD_FILE).write_bytes(card_lib.card_bytes(card))
                return new_manifest

            bundle.write_bundle(output, build, overwrite=overwrite)
    return QuantizeReport(
        source=source.root,
        output=output,
        target=spec.name,
        written=written,
        method=pick,
        reason=reason,
        states=states.count,
        state_source=states.source,
        calibration_states=calibration.count,
        calibration_source=calibration.source,
        action_agreement=agreement,
        min_agreement=min_agreement,
        tolerance=tolerance,
        float_return=states.float_return,
        quantized_return=mean_return,
        min_return_ratio=min_return_ratio,
        size_before=len(prepared.float_model),
        size_after=len(model),
        latency_before_us=latency_before,
        latency_after_us=latency_after,
        candidates=candidates,
    )


def _try(
    order: list[str],
    built: dict[str, tuple[bytes, tuple[str, ...], dict[str, Any]]],
    source: FloatBundle,
    spec: targets.Target,
    module: Any,
    reference: list,
    states: RealStates,
    tmp: Path,
    say: Callable[[str], None],
    min_agreement: float,
    min_return_ratio: float,
    tolerance: float,
) -> tuple[list[Candidate], str | None, dict[str, tuple[float, float | None]]]:
    """Measures the candidates from the smallest file up until one passes both gates.

    Returns:
      The candidates (verdict: why rejected, "" if passed, or "not tried: ..."), the
      one that passed (or None), and ``{name: (agreement, mean return)}`` of those measured.
    """
    candidates: list[Candidate] = []
    chosen: str | None = None
    measured: dict[str, tuple[float, float | None]] = {}
    for name in order:
        model, keep, own = built[name]
        if chosen is not None:
            candidates.append(
                Candidate(name, len(model), None, None, keep, "not tried: larger file")
            )
            continue
        say(f"measure: {name} on {states.count} real states")
        if hasattr(module, "agreement"):  # a target computing actions, not distributions
            agreement = module.agreement(model, tolerance)
        else:
            run = module.runner(model)
            agreement = measure.agreement(source, reference, run, states, tolerance)
        mean_return = None
        why = ""
        if agreement < min_agreement:
            why = f"agreement {100 * agreement:.1f}% < {100 * min_agreement:.1f}%"
        elif states.env_id is not None:
            say(f"play {states.episodes} episodes of {states.env_id} with {name}")
            mean_return = measure.candidate_return(module, spec.writes, model, own, states, tmp)
            floor = report.return_floor(states.float_return, min_return_ratio)
            if mean_return < floor:
                why = f"mean return {mean_return:.1f} < {floor:.1f}"
        measured[name] = (agreement, mean_return)
        candidates.append(Candidate(name, len(model), agreement, mean_return, keep, why))
        if not why:
            chosen = name
    return candidates, chosen, measured
