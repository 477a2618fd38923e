"""``policy-toolkit inspect``: a bundle's specs, files and metadata (no TF)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from toolkit.cli import common

_CARD = "bom.cdx.json"


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
    versions, the model card (bom.cdx.json) and the signature (model.sig: its key, not
    verified; `run --trust-key` verifies). Exits 1 when a
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
        root = Path(bundle) if Path(bundle).is_dir() else Path(bundle).parent
        for renderable in _card_and_signature(root, layout, checks):
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


def _card_and_signature(root: Path, layout: Any, checks: dict[str, str]) -> list[Any]:
    """The model card's main facts and the signature's key hint (unverified), as tables."""
    from toolkit import bundle as bundle_lib

    out: list[Any] = []
    files = layout.files_json
    if _CARD in files and checks.get(_CARD) == "ok":
        data = bundle_lib.read_member(root, _CARD, key=f"files[{_CARD!r}]", files=files)
        try:
            card = json.loads(data)
        except (ValueError, RecursionError) as e:  # bad UTF-8 or JSON, or nested too deep
            out.append(f"model card: unreadable ({_CARD}: expected JSON, got {_reason(e)})")
        else:
            if not isinstance(card, dict):
                kind = type(card).__name__
                out.append(f"model card: unreadable ({_CARD}: expected a JSON object, got {kind})")
            else:
                out.append(_card_table(card))
    info = bundle_lib.signature_info(root)
    if info is None:
        out.append("signature: none (unsigned)")
    elif "error" in info:
        out.append(f"signature: unreadable ({info['error']})")
    else:
        out.append(
            f"signature: {bundle_lib.SIGNATURE_FILE}, {info['files']} files, key "
            f"{str(info['key_hint'])[:16]}... (not verified here: run --trust-key verifies)"
        )
    return out


def _reason(error: Exception) -> str:
    return str(error).splitlines()[0][:120] if str(error) else type(error).__name__


def _obj(value: Any) -> dict[str, Any]:
    """``value`` if it is a JSON object, else an empty one: the card is the bundle's data,
    shown as far as it has the CycloneDX shape (a hash-matching card may still be
    malformed; inspect shows what it can and never fails on it)."""
    return value if isinstance(value, dict) else {}


def _items(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _card_table(card: dict[str, Any]) -> Any:
    """The model card's main facts as a table (fields of another shape are skipped)."""
    from rich import box
    from rich.table import Table

    model = _obj(_obj(card.get("metadata")).get("component"))
    model_card = _obj(model.get("modelCard"))
    params = _obj(model_card.get("modelParameters"))
    table = Table(
        title=f"model card ({_CARD}, CycloneDX {card.get('specVersion')})",
        box=box.SIMPLE_HEAD,
        show_header=False,
        title_justify="left",
    )
    table.add_column("key")
    table.add_column("value")
    table.add_row("model", f"{model.get('name')} (train step {model.get('version')})")
    table.add_row("approach", str(_obj(params.get("approach")).get("type")))
    table.add_row("agent", str(params.get("architectureFamily")))
    if params.get("modelArchitecture"):
        table.add_row("network", str(params["modelArchitecture"]))
    for entry in _items(params.get("inputs")) + _items(params.get("outputs")):
        table.add_row("io", str(_obj(entry).get("format")))
    analysis = _obj(model_card.get("quantitativeAnalysis"))
    for metric in map(_obj, _items(analysis.get("performanceMetrics"))):
        table.add_row(str(metric.get("type")), f"{metric.get('value')} ({metric.get('slice')})")
    for prop in map(_obj, _items(model_card.get("properties"))):
        name = str(prop.get("name")).removeprefix("policy-toolkit:")
        table.add_row(name, str(prop.get("value")))
    considerations = _obj(model_card.get("considerations"))
    for text in _items(considerations.get("technicalLimitations")):
        table.add_row("limitation", str(text))
    for component in map(_obj, _items(card.get("components"))):
        table.add_row("producer", f"{component.get('name')} {component.get('version')}")
    return table
