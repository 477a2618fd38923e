"""The bundle formats: one module each, one registry line each.

``FORMATS`` maps a format's name (the manifest's ``formats`` entry and section key) to its
``exporters.formats.base.Format``. ``export_policy``, ``update_bundle``, ``verify``,
``inspect``, the CLI's ``--format`` choices and the manifest schema all read this table,
in its order (which is also the order formats are written: a format that reads another's
new files in an update comes after it).

Adding a format (docs/architecture.md, "Adding a format"): write its module with a
``Format`` subclass and ``FORMAT = ...``, and add it to ``_MODULES`` below (or call
``register`` from your own package). ``register`` also adds the format's manifest section
to the schema readers check, so bundles with it load at once;
``python -m exporters.formats --write-schema`` writes it into
``toolkit/schemas/manifest.schema.json`` for readers that never import exporters
(devices). A test checks that file against this table.
"""

from __future__ import annotations

import copy
import importlib
import json
from typing import Any

from exporters.formats.base import Format, NewWeights, Recording, Runner
from toolkit.bundle import schema as schema_lib
from toolkit.errors import ExportError

__all__ = [
    "FORMATS",
    "Format",
    "NewWeights",
    "Recording",
    "Runner",
    "choices",
    "default_formats",
    "get",
    "names",
    "parse",
    "register",
    "schema",
    "unregister",
]

#: The built-in formats' modules, in writing order. One line per format.
_MODULES = (
    "exporters.formats.saved_model",
    "exporters.formats.onnx",
    "exporters.formats.litert",
    "exporters.formats.micro",
    "exporters.formats.c",
    # Last: its update recomputes outputs from the formats written before it.
    "exporters.formats.golden",
)

FORMATS: dict[str, Format] = {}
for _module in _MODULES:
    _format = importlib.import_module(_module).FORMAT
    FORMATS[_format.name] = _format


def register(fmt: Format) -> None:
    """Adds (or replaces) a format, and its section in the schema readers check.

    Formats that record (the golden vectors) stay last: an update recomputes them from
    the others' new files.
    """
    FORMATS[fmt.name] = fmt
    for name in [n for n, f in FORMATS.items() if f.records and n != fmt.name]:
        FORMATS[name] = FORMATS.pop(name)
    schema_lib.register_format(fmt.name, fmt.schema)


def unregister(name: str) -> None:
    """Removes a format added with ``register`` (and its section from the schema)."""
    FORMATS.pop(name, None)
    schema_lib.unregister_format(name)


def names() -> list[str]:
    """The formats' names, in writing order."""
    return list(FORMATS)


def choices() -> list[str]:
    """The formats an export can be asked for (``--format``): all but those written with
    every export."""
    return [name for name, fmt in FORMATS.items() if not fmt.always]


def default_formats() -> tuple[str, ...]:
    """What ``export_policy`` writes when no formats are asked for."""
    return tuple(name for name, fmt in FORMATS.items() if fmt.default or fmt.always)


def get(name: str) -> Format:
    """The format called ``name``.

    Raises:
      ExportError: an unknown name (naming the known ones).
    """
    fmt = FORMATS.get(name)
    if fmt is None:
        raise ExportError(f"formats: expected some of {names()}, got {[name]}")
    return fmt


def parse(formats: Any) -> tuple[str, ...]:
    """Format names from a sequence or a comma-separated string, deduplicated, in writing
    order, with the formats written with every export (``Format.always``: the golden
    vectors).

    Raises:
      ExportError: none, an unknown one (naming the known ones), or only formats that
        record (no form of the policy to run).
    """
    if isinstance(formats, str):
        formats = [f.strip() for f in formats.split(",") if f.strip()]
    asked = list(dict.fromkeys(formats))
    unknown = [f for f in asked if f not in FORMATS]
    if unknown or not asked:
        # The ones to ask for: those written with every export come anyway.
        raise ExportError(f"formats: expected some of {choices()}, got {asked}")
    if all(FORMATS[f].records for f in asked):
        runnable = [n for n, fmt in FORMATS.items() if not fmt.records]
        raise ExportError(f"formats: expected at least one of {runnable}, got {asked}")
    return tuple(name for name, fmt in FORMATS.items() if name in asked or fmt.always)


def schema(base: dict[str, Any] | None = None) -> dict[str, Any]:
    """The manifest schema with every registered format's section and every quantize
    target (from ``base``, the committed schema by default): what ``--write-schema``
    writes."""
    from exporters.quantize.targets import TARGETS

    data = copy.deepcopy(base if base is not None else _committed())
    for name, fmt in FORMATS.items():
        schema_lib.add_format(data, name, fmt.schema)
    quantization = data["properties"]["quantization"]["properties"]
    quantization["target"]["enum"] = list(TARGETS)
    return data


def _committed() -> dict[str, Any]:
    return json.loads(schema_lib.SCHEMA_PATH.read_text())
