"""The manifest's rules: its JSON Schema, and what a schema cannot say (TF-free).

``validate`` checks a manifest against ``toolkit/schemas/manifest.schema.json``
(``toolkit.bundle.schema``), then what the schema cannot say: spec bounds that fit their
dtype and shape, element counts, file references, and the ``distribution`` signature
agreeing with the specs (names, dtypes, shapes, categories). Every violation is one line
naming the JSON path.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from toolkit.bundle.files import parse_json
from toolkit.bundle.names import MANIFEST
from toolkit.bundle.schema import (
    MAX_VIOLATIONS,
    _dumps,
    format_names,
    join_path,
    schema,
    schema_violations,
    show_value,
)
from toolkit.errors import BundleError

__all__ = [
    "MAX_ELEMENTS",
    "MAX_VIOLATIONS",
    "check_embedded",
    "schema",
    "schema_violations",
    "validate",
    "violations",
    "without_files",
]

#: Largest element count of one array a manifest may describe (a spec leaf, a graph I/O).
MAX_ELEMENTS = 1 << 24


def _semantic(
    manifest: dict[str, Any],
    errors: list[str],
    files_listed: bool = True,
    leaves: dict[int, Any] | None = None,
) -> None:
    """``leaves``: filled with each spec leaf decoded, by ``id`` of its JSON node."""
    from toolkit import distribution_families as families
    from toolkit.errors import SpecError
    from toolkit.specs.array_spec import ArraySpec

    def specs(node: Any, path: str) -> None:
        kind = node.get("kind")
        if kind in ("array_spec", "bounded_array_spec"):
            count = math.prod(node["shape"])
            if count > MAX_ELEMENTS:
                errors.append(
                    f"{path}.shape: expected at most {MAX_ELEMENTS} elements, got {count}"
                )
                return
            try:
                spec = ArraySpec.from_json(node)
            except (SpecError, ValueError, TypeError, OverflowError) as e:
                errors.append(f"{path}: {str(e).splitlines()[0]}")
            else:
                if leaves is not None:
                    leaves[id(node)] = spec
        elif kind == "dict":
            for key, item in node["items"].items():
                specs(item, join_path(join_path(path, "items"), key))
        elif kind in ("tuple", "list", "namedtuple"):
            if kind == "namedtuple" and len(node["fields"]) != len(node["items"]):
                errors.append(
                    f"{path}.items: expected {len(node['fields'])} entries (one per field), "
                    f"got {len(node['items'])}"
                )
            for i, item in enumerate(node["items"]):
                specs(item, join_path(join_path(path, "items"), i))

    for group, node in manifest["specs"].items():
        specs(node, f"specs.{group}")

    def params(node: Any, path: str) -> None:
        kind = node.get("kind")
        if kind == "distribution_params":
            expected = list(families.FAMILIES[node["family"]])
            if node["params"] != expected:
                errors.append(
                    f"{path}.params: expected {_dumps(expected)} for family "
                    f"{node['family']!r}, got {_dumps(node['params'])}"
                )
        elif kind == "dict":
            for key, item in node["items"].items():
                params(item, join_path(join_path(path, "items"), key))
        elif kind in ("tuple", "list", "namedtuple"):
            for i, item in enumerate(node["items"]):
                params(item, join_path(join_path(path, "items"), i))

    params(manifest["distribution"], "distribution")

    for name, signature in manifest["signatures"].items():
        for which in ("inputs", "outputs"):
            seen = set()
            for i, entry in enumerate(signature[which]):
                where = f"signatures.{name}.{which}[{i}]"
                if entry["name"] in seen:
                    errors.append(
                        f"{where}.name: expected a unique name, got {entry['name']!r} again"
                    )
                seen.add(entry["name"])
                dims = [d for d in entry["shape"] or [] if d is not None]
                count = math.prod(dims)
                if count > MAX_ELEMENTS:
                    errors.append(
                        f"{where}.shape: expected at most {MAX_ELEMENTS} elements, got {count}"
                    )

    files = manifest["files"] if files_listed else {}
    listed = manifest["formats"]
    for fmt in format_names():
        section = manifest.get(fmt)
        if not isinstance(section, dict):
            continue
        if fmt not in listed:
            errors.append(
                f"{fmt}: expected no {fmt!r} section where formats "
                f"{_dumps(listed)} lacks it, got one"
            )
        if not files_listed:
            continue
        if isinstance(section.get("file"), str) and section["file"] not in files:
            errors.append(
                f"{fmt}.file: expected a path listed in files, got {show_value(section['file'])}"
            )
        folder = section.get("dir")
        if isinstance(folder, str) and not any(rel.startswith(folder + "/") for rel in files):
            errors.append(
                f"{fmt}.dir: expected a folder with files listed in files, got {show_value(folder)}"
            )


def _signature_entry_text(entry: dict[str, Any]) -> str:
    return f"{entry['dtype']} {_dumps(entry['shape'])}"


def _consistency(
    manifest: dict[str, Any],
    errors: list[str],
    leaves: dict[int, Any] | None = None,
    nests: dict[str, Any] | None = None,
) -> None:
    """The distribution signature agrees with the specs (names, dtypes, shapes, categories).

    ``leaves``: the spec leaves ``_semantic`` decoded (by ``id`` of their JSON node), taken
    instead of decoding them again; ``nests``: filled with the decoded spec nests by group.
    """
    from toolkit import nest
    from toolkit.specs import array_spec

    known = leaves or {}

    def leaf(node: dict[str, Any]) -> Any:
        spec = known.get(id(node))
        # A leaf node is a nest of one leaf: decoded as spec_nest_from_json decodes leaves.
        return spec if spec is not None else array_spec.spec_nest_from_json(node)

    specs = manifest["specs"]
    try:
        time_step = nest.from_json(specs["time_step"], leaf)
        state = nest.from_json(specs["policy_state"], leaf)
        action = nest.from_json(specs["action"], leaf)
        graph_info = nest.from_json(specs["graph_info"], leaf)
        if nests is not None:
            info = nest.from_json(specs["info"], leaf)
    except (ValueError, TypeError, KeyError) as e:  # SpecError is a ValueError
        errors.append(f"specs: {str(e).splitlines()[0]}")
        return
    if nests is not None:
        nests.update(
            time_step=time_step,
            action=action,
            policy_state=state,
            info=info,
            graph_info=graph_info,
        )
    expected_inputs = nest.flatten_with_paths(time_step) + nest.flatten_with_paths(
        state, "policy_state"
    )
    signature = manifest["signatures"]["distribution"]
    inputs = {e["name"]: (i, e) for i, e in enumerate(signature["inputs"])}
    outputs = {e["name"]: (i, e) for i, e in enumerate(signature["outputs"])}
    names = [n for n, _ in expected_inputs]
    if sorted(inputs) != sorted(names):
        errors.append(
            f"signatures.distribution.inputs: expected the inputs {sorted(names)} of the specs, "
            f"got {sorted(inputs)}"
        )
        return

    def agree(table: dict, which: str, name: str, spec: Any, required: bool = True) -> None:
        if name not in table:
            if required:
                errors.append(f"signatures.distribution.{which}: expected {name!r}, got none")
            return
        i, entry = table[name]
        # The batch dim is dynamic, or fixed where the source was (TF-Agents policies
        # saved with a batch size).
        batch = entry["shape"][0] if entry["shape"] else None
        want = {"dtype": spec.dtype.name, "shape": [batch, *spec.shape]}
        if entry["dtype"] != want["dtype"] or entry["shape"] != want["shape"]:
            errors.append(
                f"signatures.distribution.{which}[{i}]: expected {_signature_entry_text(want)} "
                f"for {name!r} (its spec), got {_signature_entry_text(entry)}"
            )

    for name, spec in expected_inputs:
        agree(inputs, "inputs", name, spec)
    for name, spec in nest.flatten_with_paths(state, "next_state"):
        agree(outputs, "outputs", name, spec)
    for name, spec in nest.flatten_with_paths(graph_info, "info"):
        agree(outputs, "outputs", name, spec)
    action_leaves = nest.flatten_with_paths(action, "action")
    for name, spec in action_leaves:
        agree(outputs, "outputs", name, spec, required=False)
    _check_params(manifest, outputs, [s for _, s in action_leaves], errors)


def _check_params(
    manifest: dict[str, Any], outputs: dict, action_leaves: list[Any], errors: list[str]
) -> None:
    from toolkit import distribution_families as families
    from toolkit import nest
    from toolkit.specs.array_spec import BoundedArraySpec

    leaves: list[tuple[str, dict[str, Any]]] = []

    def walk(node: Any, path: str) -> None:
        kind = node.get("kind")
        if kind == "distribution_params":
            leaves.append((path, node))
        elif kind == "dict":
            for key in sorted(node["items"]):
                walk(node["items"][key], nest.join_path(path, key))
        elif kind in ("tuple", "list", "namedtuple"):
            for i, item in enumerate(node["items"]):
                walk(item, nest.join_path(path, i))

    walk(manifest["distribution"], "distribution")
    for index, (path, leaf) in enumerate(leaves):
        rank = 1 + leaf["event_ndims"] + (leaf["family"] == families.CATEGORICAL)
        for param in families.FAMILIES[leaf["family"]]:
            name = nest.join_path(path, param)
            if name not in outputs:
                errors.append(f"signatures.distribution.outputs: expected {name!r}, got none")
                continue
            i, entry = outputs[name]
            shape = entry["shape"]
            if shape is None or len(shape) != rank:
                errors.append(
                    f"signatures.distribution.outputs[{i}].shape: expected rank {rank} (a batch "
                    f"dim first) for {name!r}, got {_dumps(shape)}"
                )
                continue
            if leaf["family"] != families.CATEGORICAL or not action_leaves:
                continue
            spec = action_leaves[index % len(action_leaves)]
            n, shift = shape[-1], leaf.get("shift", 0)
            if isinstance(spec, BoundedArraySpec) and isinstance(n, int):
                low, high = int(spec.minimum.max()), int(spec.maximum.min())
                if shift < low or shift + n - 1 > high:
                    errors.append(
                        f"{path}: expected categories within the action spec's [{low}, {high}], "
                        f"got {shift}..{shift + n - 1} (shift {shift}, {n} logits)"
                    )


def violations(
    manifest: Any, *, files_listed: bool = True, nests: dict[str, Any] | None = None
) -> list[str]:
    """Every violation of the manifest schema (and of the checks beyond it), one per line.

    ``files_listed=False`` skips checking that the formats' files are listed (for the
    copy a lone ONNX file carries, whose file table cannot list the bundle). ``nests``:
    a dict filled with the spec nests decoded on the way (``specs`` group -> nest of
    ``ArraySpec``) when there are no violations, so that a reader of this manifest
    (``Layout.of``) does not decode them again.
    """
    errors = schema_violations(manifest)
    leaves: dict[int, Any] = {}  # the nodes live in ``manifest`` until this returns
    if not errors:
        _semantic(manifest, errors, files_listed, leaves)
    if not errors:
        _consistency(manifest, errors, leaves, nests)
    return errors


def validate(
    manifest: Any,
    where: str = "manifest.json",
    *,
    files_listed: bool = True,
    nests: dict[str, Any] | None = None,
) -> None:
    """Raises BundleError with one line per violation (at most MAX_VIOLATIONS).

    ``nests``: filled with the decoded spec nests (``violations``).
    """
    errors = violations(manifest, files_listed=files_listed, nests=nests)
    if errors:
        lines = [f"{where}: {e}" for e in errors[:MAX_VIOLATIONS]]
        if len(errors) > MAX_VIOLATIONS:
            lines.append(f"{where}: ... and {len(errors) - MAX_VIOLATIONS} more")
        raise BundleError("\n".join(lines))


# --- the manifest's copies -------------------------------------------------------------


def without_files(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest as the formats embed it: everything but the file table."""
    return {k: v for k, v in manifest.items() if k != "files"}


def check_embedded(manifest: dict[str, Any], embedded_text: Any, where: str) -> None:
    """Refuses a manifest that differs from the copy a format carries (``where``)."""
    if embedded_text is None:
        raise BundleError(
            f"{where}: carries no copy of the manifest; not exported by policy-toolkit"
        )
    if isinstance(embedded_text, bytes):
        try:
            embedded_text = embedded_text.decode("utf-8")
        except UnicodeDecodeError:
            raise BundleError(f"{where}: its manifest copy is not UTF-8") from None
    copy = parse_json(embedded_text.encode("utf-8"), Path(where))
    expected = without_files(manifest)
    if copy != expected:
        if isinstance(copy, dict):
            keys = sorted(k for k in set(copy) | set(expected) if copy.get(k) != expected.get(k))
        else:
            keys = ["(all)"]
        raise BundleError(
            f"{MANIFEST}: differs from the copy in {where} at {', '.join(keys[:6])} "
            "(the manifest was edited after export)"
        )
