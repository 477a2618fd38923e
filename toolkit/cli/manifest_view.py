"""What ``policy-toolkit inspect`` shows: a bundle's manifest as rich tables (TF-free).

Everything comes from the manifest (or, for a lone ``.onnx`` file, the manifest copy in
its metadata), so inspecting a bundle needs neither TensorFlow nor onnx: numpy, rich
and, for a lone ``.onnx`` file, onnxruntime.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from exporters import formats as export_formats
from toolkit import bundle, nest
from toolkit import distribution_families as families
from toolkit.bundle import readers
from toolkit.bundle.layout import Layout, thaw
from toolkit.specs import array_spec

__all__ = ["check_files", "load_for_inspection", "render_manifest"]

_BOUND_WIDTH = 36


def load_for_inspection(path: str | os.PathLike) -> tuple[Layout, str, dict[str, str]]:
    """The layout to show, where it came from, and the state of each listed file.

    Args:
      path: a bundle folder, its manifest.json, or an ``.onnx`` file exported by
        policy-toolkit (inside a bundle the bundle's manifest is used; a lone file
        describes itself through its metadata).

    Returns:
      ``(layout, source, checks)``: source is "bundle" or "onnx metadata"; checks maps
      every file of the manifest to "ok", "missing" (an edge device may hold only
      manifest.json and policy.onnx) or "changed" (size or sha256 differ).

    Raises:
      BundleError: no such bundle, a manifest that cannot be read, or an .onnx file
        with no manifest.
    """
    path = Path(path)
    if path.is_file() and path.suffix == ".onnx" and not (path.parent / bundle.MANIFEST).exists():
        layout = readers.read_lone_onnx(path)
        return layout, "onnx metadata", {name: "ok" for name in layout.files}
    root = bundle.bundle_root(path)
    layout = bundle.read_layout(root, check_files=False)
    return layout, "bundle", check_files(root, layout.files_json)


def check_files(root: Path, files: dict[str, Any]) -> dict[str, str]:
    """``{path: "ok" | "missing" | "changed" | "refused"}`` for a manifest's file table.

    Files are read as every reader reads them (``toolkit.bundle``): "refused" is a
    symbolic link, FIFO, device or folder, which readers refuse.
    """
    return {rel: bundle.file_state(root, rel, entry) for rel, entry in files.items()}


# --- formatting -----------------------------------------------------------------------


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _bound(value: np.ndarray) -> str:
    flat = np.asarray(value).reshape(-1)
    if flat.size and np.all(flat == flat[0]):
        text = _number(flat[0])
    else:
        text = "[" + ", ".join(_number(x) for x in flat) + "]"
    return text if len(text) <= _BOUND_WIDTH else text[: _BOUND_WIDTH - 3] + "..."


def _number(x: Any) -> str:
    x = np.asarray(x).item()
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


def _shape(shape: Any) -> str:
    dims = ["B" if d is None else str(d) for d in shape]
    return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"


def spec_rows(layout: Layout) -> list[tuple[str, str, str, str, str, str]]:
    """``(path, kind, shape, dtype, minimum, maximum)`` for every spec leaf."""
    rows = []
    for group in ("time_step", "action", "policy_state", "info"):
        tree = getattr(layout.specs, group)
        for path, spec in nest.flatten_with_paths(tree, group):
            bounded = isinstance(spec, array_spec.BoundedArraySpec)
            rows.append(
                (
                    path.removeprefix("time_step/"),
                    "bounded" if bounded else "array",
                    _shape(spec.shape),
                    spec.dtype.name,
                    _bound(spec.minimum) if bounded else "",
                    _bound(spec.maximum) if bounded else "",
                )
            )
    return rows


def distribution_rows(layout: Layout) -> list[tuple[str, str, str, str, str]]:
    """``(output prefix, family, params, event dims, action dtype)`` per action leaf."""
    rows = []
    for path, leaf in nest.flatten_with_paths(layout.distribution, "distribution"):
        dtype = str(leaf.static.get("dtype", ""))
        if leaf.family == families.CATEGORICAL and leaf.static.get("shift"):
            dtype = f"{dtype} (+{leaf.static['shift']})"
        rows.append(
            (
                path,
                leaf.family,
                ", ".join(families.FAMILIES[leaf.family]),
                str(leaf.static.get("event_ndims")),
                dtype,
            )
        )
    return rows


def _io(entries: Any) -> str:
    return "\n".join(f"{e.name}  {e.dtype} {_shape(e.shape or ())}" for e in entries) or "-"


def _action_summary(description: Any) -> str:
    kind = description.get("kind", "?")
    extras = []
    if "epsilon" in description:
        extras.append(f"epsilon {description['epsilon']}")
    if "weights" in description:
        extras.append(f"weights {description['weights']}")
    if description.get("clip"):
        extras.append("clipped to the action spec")
    if description.get("emit_log_probability"):
        extras.append("emits log_probability")
    return kind + (f" ({', '.join(extras)})" if extras else "")


def render_manifest(
    layout: Layout,
    where: str,
    source: str = "bundle",
    checks: dict[str, str] | None = None,
) -> list[Any]:
    """The rich renderables ``inspect`` prints, in order."""
    checks = checks or {}
    from rich import box
    from rich.table import Table

    def table(title: str, *columns: str) -> Table:
        t = Table(
            box=box.SIMPLE_HEAD,
            title=title,
            title_justify="left",
            title_style="bold",
            show_edge=False,
        )
        for column in columns:
            t.add_column(column, overflow="fold")
        return t

    summary = Table.grid(padding=(0, 2))
    summary.add_column(style="bold")
    summary.add_column()
    summary.add_row("bundle", f"{where}  ({source})")
    summary.add_row("format", f"{bundle.FORMAT} version {bundle.FORMAT_VERSION}")
    summary.add_row("policy", layout.policy_class or "?")
    summary.add_row("derivation", _action_summary(layout.action))
    summary.add_row("formats", ", ".join(layout.formats))
    train_step = layout.train_step
    summary.add_row("train step", "-" if train_step is None else str(train_step))
    for name, entry in layout.formats.items():
        fmt = export_formats.FORMATS.get(name)
        summary.add_row(name, fmt.describe(entry) if fmt is not None else entry.path)
    if layout.quantization is not None:
        q = layout.quantization
        returns = ""
        if q.get("quantized_return") is not None:
            returns = f"; mean return {q['quantized_return']:.1f}"
            if q.get("float_return") is not None:  # both may be null (the schema's types)
                returns += f" (float {q['float_return']:.1f})"
        summary.add_row(
            "quantized",
            f"{q.get('method')} ({q.get('weight_type')} weights), action agreement "
            f"{100 * q.get('action_agreement', 0):.1f}% on {q.get('states')} real states "
            f"({q.get('state_source')}){returns}",
        )

    specs = table("Specs", "spec", "kind", "shape", "dtype", "minimum", "maximum")
    for row in spec_rows(layout):
        specs.add_row(*row)

    distribution = table("Distribution", "outputs", "family", "params", "event dims", "dtype")
    for row in distribution_rows(layout):
        distribution.add_row(*row)

    signatures = table("Signatures (B = batch)", "function", "inputs", "outputs")
    for name, io in layout.signatures.items():
        signatures.add_row(name, _io(io.inputs), _io(io.outputs))

    files = table("Files", "path", "size", "sha256 (first 16)", "check")
    marks = {
        "ok": "ok",
        "missing": "[yellow]missing[/yellow]",
        "changed": "[red]CHANGED[/red]",
        "refused": "[red]REFUSED[/red]",
    }
    for path, entry in sorted(layout.files.items()):
        # The full hashes are in --json; 16 hex digits tell files apart at a glance.
        files.add_row(
            path,
            _size(entry.size),
            entry.sha256[:16],
            marks.get(checks.get(path, ""), "-"),
        )

    metadata = table("Metadata", "key", "value")
    for key, value in layout.metadata.items():
        metadata.add_row(key, value if isinstance(value, str) else json.dumps(thaw(value)))
    if not layout.metadata:
        metadata.add_row("-", "-")

    producer = table("Producer", "package", "version")
    for key, value in layout.producer.items():
        producer.add_row(key, str(value))

    return [summary, specs, distribution, signatures, files, metadata, producer]
