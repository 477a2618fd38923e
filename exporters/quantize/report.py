"""What quantize reports: every candidate with its measures and verdict, and the choice."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

__all__ = ["Candidate", "QuantizeReport", "reason", "return_floor", "verdicts"]


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One quantization tried: its file size and what it measured.

    Attributes:
      method: one of its target's methods (``targets.TARGETS``).
      size: bytes of the quantized model file.
      agreement: share of the real states on which its actions agree with the float ones.
      mean_return: its mean return over the same episodes (``env`` only, else None).
      float_layers: nodes kept in float (keep-last methods, gptq).
      verdict: "chosen", "rejected: <why>", or "not tried: <why>".
    """

    method: str
    size: int
    agreement: float | None
    mean_return: float | None
    float_layers: tuple[str, ...]
    verdict: str

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["float_layers"] = list(self.float_layers)
        return data


@dataclasses.dataclass(frozen=True)
class QuantizeReport:
    """What ``quantize_bundle`` measured and whether it wrote the output.

    Attributes:
      source, output: the bundles.
      target: "onnx" or "litert".
      written: False when no candidate passed the gates and ``force`` was not given.
      method: the candidate written (or that would have been), None if none ran.
      reason: why that candidate, in one sentence.
      states: real states compared; ``state_source`` says where they came from.
      calibration_states, calibration_source: the other real states calibration used.
      action_agreement: the chosen candidate's agreement on them (0..1).
      min_agreement, tolerance: the agreement gate and the float-action tolerance.
      float_return, quantized_return: mean returns over the same episodes (env only).
      min_return_ratio: the return gate, a share of the float return.
      size_before, size_after: bytes of the float and quantized model files.
      latency_before_us, latency_after_us: median batch-1 graph call, microseconds.
      candidates: every candidate, in the order tried.
    """

    source: Path
    output: Path
    target: str
    written: bool
    method: str | None
    reason: str
    states: int
    state_source: str
    calibration_states: int
    calibration_source: str
    action_agreement: float
    min_agreement: float
    tolerance: float
    float_return: float | None
    quantized_return: float | None
    min_return_ratio: float
    size_before: int
    size_after: int
    latency_before_us: float
    latency_after_us: float
    candidates: list[Candidate]

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["source"], data["output"] = str(self.source), str(self.output)
        data["candidates"] = [c.to_json() for c in self.candidates]
        return data


def return_floor(float_return: float, ratio: float) -> float:
    """The lowest mean return the gate accepts: ``ratio`` of the float return, counted
    from below for negative returns (a drop of ``(1 - ratio) * |float return|``)."""
    return float_return - (1.0 - ratio) * abs(float_return)


def verdicts(candidates: list[Candidate], pick: str | None, written: bool) -> list[Candidate]:
    """The candidates with their final verdicts ("chosen", "passed", "rejected: ...")."""

    def verdict(c: Candidate) -> str:
        if c.method == pick and written:
            return "chosen"
        if c.verdict.startswith("not tried"):
            return c.verdict
        return f"rejected: {c.verdict}" if c.verdict else "passed"

    return [dataclasses.replace(c, verdict=verdict(c)) for c in candidates]


def reason(
    pick: str | None,
    chosen: str | None,
    candidates: list[Candidate],
    force: bool,
    with_return: bool,
) -> str:
    """Why ``pick`` (the chosen candidate, or the forced one), in one sentence."""
    gates = "agreement" + (" and return" if with_return else "")
    if chosen is not None:
        smaller = [c.method for c in candidates if c.verdict.startswith("rejected")]
        if smaller:
            return (
                f"{chosen}: the smallest file that passed the {gates} gates "
                f"({', '.join(smaller)} did not)"
            )
        return f"{chosen}: the smallest file, and it passed the {gates} gates"
    if force:
        return f"{pick}: forced; no candidate passed the {gates} gates, this one agrees most"
    return f"no candidate passed the {gates} gates; nothing written"
