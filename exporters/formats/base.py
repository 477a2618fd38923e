"""What a bundle format is: the hooks every command calls (export, update, verify, inspect).

A format is one module of ``exporters/formats/`` holding a ``Format`` subclass: its
manifest section (and that section's JSON Schema), how it is written from a traced
policy, how it takes new weights, how ``verify`` runs it, and how ``inspect`` shows it.
The module is imported without TensorFlow; each hook imports what it needs when called.

Writing is two steps, for export and update alike, because the formats carry a copy of
the finished manifest (docs/bundle-format.md): every format first writes its files and
returns its section (``write``); once the manifest is whole, each embeds its copy
(``embed``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import numpy as np

from toolkit.bundle.layout import FormatEntry, Layout

__all__ = ["Format", "NewWeights", "Recording", "Runner"]

#: A function of the policy's flat ``distribution`` inputs (numpy arrays by graph name)
#: returning its outputs the same way.
Runner = Any


@dataclasses.dataclass(frozen=True)
class NewWeights:
    """The weights an update brings, in the forms the formats take them.

    Attributes:
      initializers: new ONNX initializer values by name (all, or the mapped ones).
      variables: the weights map's variable values in order (TF checkpoints read through
        the map), or None.
      tf_checkpoint: a TF checkpoint prefix to restore into the SavedModel's ``policy``
        and ``train_step`` (bundles without a weights map), or None.
      train_step: the new train step (None: none).
      source: the checkpoint as the user named it, for messages.
    """

    initializers: dict[str, np.ndarray] | None
    variables: list[np.ndarray] | None
    tf_checkpoint: Path | None
    train_step: int | None
    source: str


class Recording(NamedTuple):
    """Recorded calls of the ``distribution`` function: a reference ``verify`` runs the
    other forms against (``Format.records``).

    Attributes:
      source: what computed the outputs ("tf_policy": the TF policy at export).
      steps: per step, ``(inputs, outputs)``: numpy arrays by flat graph name; the inputs
        include the policy state the source carried into the step.
    """

    source: str
    steps: list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]


class Format:
    """One bundle format. Subclasses set the class attributes and override the hooks."""

    #: the name in ``formats`` and the manifest's section key
    name: ClassVar[str] = ""
    #: how messages name it ("ONNX")
    label: ClassVar[str] = ""
    #: the JSON Schema of the manifest's section (part of manifest.schema.json)
    schema: ClassVar[dict[str, Any]] = {}
    #: exported when no formats are asked for
    default: ClassVar[bool] = False
    #: modules its export needs (checked before any work)
    export_needs: ClassVar[tuple[str, ...]] = ("tensorflow",)
    #: modules its parity runner needs
    runner_needs: ClassVar[tuple[str, ...]] = ()
    #: formats written before this one in an update (their new files are read)
    update_after: ClassVar[tuple[str, ...]] = ()
    #: written with every export, whatever formats are asked for
    always: ClassVar[bool] = False
    #: holds recorded calls (``recording``), not a form of the policy to run: ``verify``
    #: runs the other forms against it, backends never load it
    records: ClassVar[bool] = False

    # --- export ----------------------------------------------------------------------

    def convert(self, module: Any, options: dict[str, Any]) -> Any:
        """The format's content for a traced policy (``exporters.signatures.ExportModule``),
        made before the bundle's temporary folder exists (the slow part of an export).

        ``options`` holds the export's options (``opset``, and the ``format_options``
        given to ``export_policy``, e.g. ``env`` for formats calibrated on real states);
        formats take theirs.
        """
        raise NotImplementedError

    def write(self, content: Any, folder: Path) -> dict[str, Any]:
        """Writes ``content``'s files into the bundle being built; returns the section."""
        raise NotImplementedError

    def embed(self, content: Any, folder: Path, manifest: dict[str, Any]) -> None:
        """Puts the finished manifest's copy into the format's files, if it carries one."""

    # --- update ----------------------------------------------------------------------

    def check_update(self, root: Path, layout: Layout, weights_map: bool) -> None:
        """Refuses, before any work, an update this format cannot take (naming what to
        do instead). ``weights_map``: the update reads TF checkpoints through the map."""

    def updated(self, root: Path, layout: Layout, weights: NewWeights, folder: Path) -> Any | None:
        """The format's content with ``weights``, to ``write`` and ``embed`` as at export
        (``folder`` already holds the formats of ``update_after``); None keeps the
        format's files as they are."""
        return None

    def weight_change(self, content: Any) -> float | None:
        """The largest absolute weight change of an update's ``content``, if measured."""
        return None

    # --- verify ----------------------------------------------------------------------

    def runner(self, root: Path, layout: Layout) -> Runner | None:
        """Runs the format's ``distribution`` function on flat inputs (for ``verify``).

        None: the format does not compute the distribution function within a tolerance
        (e.g. an int8 model of the deterministic action only); its ``extra_checks`` then
        verify it their own way."""
        raise NotImplementedError

    def runner_missing(self) -> str | None:
        """Why ``runner`` cannot run here, with what to install, or None when it can:
        the first module of ``runner_needs`` that is not installed, as the backend table
        names its install (``runtimes.backends.not_installed``)."""
        from runtimes import backends

        for module in self.runner_needs:
            reason = backends.not_installed(module)
            if reason is not None:
                return reason
        return None

    def recording(self, root: Path, layout: Layout) -> Recording:
        """The recorded calls a ``records`` format holds, read and checked."""
        raise NotImplementedError

    def extra_checks(self, root: Path, layout: Layout, batch: int) -> list[Any]:
        """More ``exporters.parity.OutputDiff`` rows for ``verify`` (e.g. initial states)."""
        return []

    # --- inspect ---------------------------------------------------------------------

    def describe(self, entry: FormatEntry) -> str:
        """One line for ``inspect``: the file and what matters about it."""
        return entry.path
