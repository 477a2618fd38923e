"""A bundle's layout: the manifest as typed, immutable records, built once (TF-free).

Every reader (the runtime backends, the server, ``inspect``, ``verify``, ``update``,
``quantize``, the Ray actors) takes a ``Layout`` instead of the manifest dict: specs
decoded once, signatures as ``TensorInfo`` rows, the graph's input and output names by
nest path (docs/bundle-format.md, "Names in the graphs"), the formats with their files,
the weights map. Nothing in it can be changed in place (JSON objects are read-only
mappings, lists are tuples): a reader cannot corrupt what another reader sees, and a
writer that derives a new manifest asks for a copy (``to_json``).

``Layout.of(manifest)`` expects a manifest already validated
(``toolkit.bundle.manifest.validate``); ``toolkit.bundle.read_layout`` does both.
"""

from __future__ import annotations

import types
from collections.abc import Iterable, Mapping
from operator import itemgetter
from pathlib import Path
from typing import Any

from toolkit import distribution_families as families
from toolkit import nest
from toolkit.errors import BundleError, SpecError
from toolkit.specs import array_spec
from toolkit.trajectories.time_step import TimeStep

__all__ = [
    "FileEntry",
    "FormatEntry",
    "GraphNames",
    "Layout",
    "Signature",
    "Specs",
    "TensorInfo",
    "WeightsMap",
    "freeze",
]


def freeze(value: Any) -> Any:
    """A read-only copy of JSON data: objects as ``MappingProxyType``, lists as tuples."""
    if isinstance(value, dict):
        return types.MappingProxyType({k: freeze(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """The JSON data ``freeze`` was given back (fresh dicts and lists)."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [thaw(v) for v in value]
    return value


class _Record(tuple):
    """An immutable record that behaves as a namedtuple (``_fields``, ``_make``,
    ``_replace``, ``_asdict``, its repr, unpacking, equality, pickling).

    Not ``typing.NamedTuple``: that compiles each class's ``__new__`` from generated
    source (``exec``), ~0.55M instructions a class; this module's nine records were ~5M
    of a runtime's cold start (callgrind), these ~0.1M each. Each record writes its
    ``__new__`` (named arguments, as a namedtuple's) and its fields with ``_field``.
    """

    __slots__ = ()
    _fields: tuple[str, ...] = ()

    @classmethod
    def _make(cls, iterable: Iterable[Any]) -> Any:
        result = tuple.__new__(cls, iterable)
        if len(result) != len(cls._fields):
            raise TypeError(f"expected {len(cls._fields)} arguments, got {len(result)}")
        return result

    def _replace(self, **changes: Any) -> Any:
        result = self._make(map(changes.pop, self._fields, self))
        if changes:
            raise ValueError(f"got unexpected field names: {list(changes)!r}")
        return result

    def _asdict(self) -> dict[str, Any]:
        return dict(zip(self._fields, self, strict=True))

    def __repr__(self) -> str:
        shown = ", ".join(f"{f}={v!r}" for f, v in zip(self._fields, self, strict=True))
        return f"{type(self).__name__}({shown})"

    def __getnewargs__(self) -> tuple[Any, ...]:
        return tuple(self)


def _field(index: int, doc: str) -> property:
    return property(itemgetter(index), doc=doc)


class TensorInfo(_Record):
    """One input or output of a signature: its name, numpy dtype name and shape
    (``None`` dims are dynamic; a ``None`` shape is unknown)."""

    __slots__ = ()
    _fields = __match_args__ = ("name", "dtype", "shape")
    name = _field(0, "the tensor's name in the graph")
    dtype = _field(1, "its numpy dtype name")
    shape = _field(2, "its shape: ``None`` dims dynamic, a ``None`` shape unknown")

    def __new__(cls, name: str, dtype: str, shape: tuple[int | None, ...] | None) -> TensorInfo:
        return tuple.__new__(cls, (name, dtype, shape))

    @classmethod
    def of(cls, entry: Mapping[str, Any]) -> TensorInfo:
        shape = entry["shape"]
        return cls(entry["name"], entry["dtype"], None if shape is None else tuple(shape))

    def to_json(self) -> dict[str, Any]:
        shape = None if self.shape is None else list(self.shape)
        return {"name": self.name, "dtype": self.dtype, "shape": shape}


class Signature(_Record):
    """A function's inputs and outputs, in the graph's order."""

    __slots__ = ()
    _fields = __match_args__ = ("inputs", "outputs")
    inputs = _field(0, "the ``TensorInfo`` of each input")
    outputs = _field(1, "the ``TensorInfo`` of each output")

    def __new__(cls, inputs: tuple[TensorInfo, ...], outputs: tuple[TensorInfo, ...]) -> Signature:
        return tuple.__new__(cls, (inputs, outputs))

    @classmethod
    def of(cls, entry: Mapping[str, Any]) -> Signature:
        return cls(
            tuple(TensorInfo.of(e) for e in entry.get("inputs", ())),
            tuple(TensorInfo.of(e) for e in entry.get("outputs", ())),
        )

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.outputs)

    def to_json(self) -> dict[str, Any]:
        return {
            "inputs": [t.to_json() for t in self.inputs],
            "outputs": [t.to_json() for t in self.outputs],
        }

    def check_graph(
        self,
        which: str,
        graph: Mapping[str, tuple[str, list[int | None] | None]],
        where: str,
        owner: str = "the graph's",
        item: str = "graph",
        name: str = "distribution",
    ) -> None:
        """Refuses a model whose ``which`` ("inputs"/"outputs") differ from this signature.

        Args:
          graph: what the model declares: ``{name: (numpy dtype name, shape)}`` (None
            dims dynamic, a None shape unknown).
          where: the model file, for messages.
          owner, item: how messages name the model's I/O ("the graph's inputs",
            "graph input 'x'").
          name: the signature's name in the manifest.

        Names must be the same sets and dtypes equal; every dim the manifest gives as a
        number must be that number in the model (a ``null`` dim accepts anything).

        Raises:
          BundleError: naming the first difference.
        """
        entries = {e.name: e for e in getattr(self, which)}
        if set(graph) != set(entries):
            missing = sorted(set(entries) - set(graph))
            extra = sorted(set(graph) - set(entries))
            raise BundleError(
                f"{where}: {owner} {which} differ from the manifest's signatures.{name}.{which}: "
                f"missing {missing[:6]}, unexpected {extra[:6]}"
            )
        for key, entry in entries.items():
            dtype, shape = graph[key]
            want = entry.shape
            same_shape = want is None or (
                shape is not None
                and len(shape) == len(want)
                and all(w is None or w == g for w, g in zip(want, shape, strict=True))
            )
            if dtype != entry.dtype or not same_shape:
                shown = None if want is None else list(want)
                raise BundleError(
                    f"{where}: {item} {which[:-1]} {key!r} is {dtype} {shape}, but the manifest "
                    f"says {entry.dtype} {shown}"
                )


class Specs(_Record):
    """The policy's specs (array spec nests): ``policy_state`` and ``graph_info`` are
    ``()`` when the policy has none; ``graph_info`` is ``info`` without the
    log-probability, which readers compute."""

    __slots__ = ()
    _fields = __match_args__ = ("time_step", "action", "policy_state", "info", "graph_info")
    time_step = _field(0, "the ``TimeStep`` of specs")
    action = _field(1, "the action spec nest")
    policy_state = _field(2, "the policy state spec nest, ``()`` if none")
    info = _field(3, "the info spec nest")
    graph_info = _field(4, "``info`` without the log-probability, ``()`` if none")

    def __new__(
        cls, time_step: TimeStep, action: Any, policy_state: Any, info: Any, graph_info: Any
    ) -> Specs:
        return tuple.__new__(cls, (time_step, action, policy_state, info, graph_info))


class GraphNames(_Record):
    """The ``distribution`` graph's I/O names by nest path, in flattening order."""

    __slots__ = ()
    _fields = __match_args__ = ("inputs", "states", "next_states", "infos", "actions")
    inputs = _field(0, "the time step's inputs, then the state's (``policy_state/...``)")
    states = _field(1, "``policy_state/...`` (a suffix of ``inputs``)")
    next_states = _field(2, "``next_state/...``")
    infos = _field(3, "``info/...`` (the graph's info)")
    actions = _field(4, "``action/...``: outputs only where the policy is deterministic")

    def __new__(
        cls,
        inputs: tuple[str, ...],
        states: tuple[str, ...],
        next_states: tuple[str, ...],
        infos: tuple[str, ...],
        actions: tuple[str, ...],
    ) -> GraphNames:
        return tuple.__new__(cls, (inputs, states, next_states, infos, actions))


class FileEntry(_Record):
    """One file of the bundle: its sha256 (hex) and size in bytes."""

    __slots__ = ()
    _fields = __match_args__ = ("sha256", "size")
    sha256 = _field(0, "the file's sha256, hex")
    size = _field(1, "its size in bytes")

    def __new__(cls, sha256: str, size: int) -> FileEntry:
        return tuple.__new__(cls, (sha256, size))


class FormatEntry(_Record):
    """One exported format: its manifest section (read-only) and where its files are."""

    __slots__ = ()
    _fields = __match_args__ = ("name", "section", "path", "is_dir")
    name = _field(0, "the format's name")
    section = _field(1, "the manifest's section for the format (``manifest[name]``), read-only")
    path = _field(
        2, "the bundle-relative path of its file (``section['file']``) or folder (``['dir']``)"
    )
    is_dir = _field(3, "whether ``path`` is a folder")

    def __new__(cls, name: str, section: Mapping[str, Any], path: str, is_dir: bool) -> FormatEntry:
        return tuple.__new__(cls, (name, section, path, is_dir))


class WeightVariable(_Record):
    """One policy variable of the weights map: its name, dtype, shape and object paths."""

    __slots__ = ()
    _fields = __match_args__ = ("name", "dtype", "shape", "paths")
    name = _field(0, "the variable's name")
    dtype = _field(1, "its numpy dtype name")
    shape = _field(2, "its shape")
    paths = _field(3, "its object paths in the policy")

    def __new__(
        cls, name: str, dtype: str, shape: tuple[int, ...], paths: tuple[tuple[str, ...], ...]
    ) -> WeightVariable:
        return tuple.__new__(cls, (name, dtype, shape, paths))


class WeightInitializer(_Record):
    """How an ONNX initializer is made from a variable: transposed, reshaped, cast."""

    __slots__ = ()
    _fields = __match_args__ = ("variable", "shape", "dtype", "transpose")
    variable = _field(0, "the index of its variable in ``WeightsMap.variables``")
    shape = _field(1, "the initializer's shape")
    dtype = _field(2, "its numpy dtype name")
    transpose = _field(3, "the axes the variable is transposed by, or None")

    def __new__(
        cls, variable: int, shape: tuple[int, ...], dtype: str, transpose: tuple[int, ...] | None
    ) -> WeightInitializer:
        return tuple.__new__(cls, (variable, shape, dtype, transpose))


class WeightsMap(_Record):
    """The ONNX graph's weights map (docs/bundle-format.md, "The weights map")."""

    __slots__ = ()
    _fields = __match_args__ = ("version", "variables", "initializers")
    version = _field(0, "the weights map's version")
    variables = _field(1, "the ``WeightVariable`` of each policy variable")
    initializers = _field(
        2,
        "one per ``Layout.onnx_initializers`` entry: a ``WeightInitializer``, None for a constant",
    )

    def __new__(
        cls,
        version: int,
        variables: tuple[WeightVariable, ...],
        initializers: tuple[WeightInitializer | None, ...],
    ) -> WeightsMap:
        return tuple.__new__(cls, (version, variables, initializers))

    @classmethod
    def of(cls, data: Mapping[str, Any]) -> WeightsMap:
        variables = tuple(
            WeightVariable(
                v["name"],
                v["dtype"],
                tuple(v["shape"]),
                tuple(tuple(p) for p in v.get("paths", ())),
            )
            for v in data["variables"]
        )
        initializers = tuple(
            None
            if e is None
            else WeightInitializer(
                e["variable"],
                tuple(e["shape"]),
                e["dtype"],
                None if e.get("transpose") is None else tuple(e["transpose"]),
            )
            for e in data["initializers"]
        )
        return cls(data["version"], variables, initializers)


#: The manifest section key naming a format's file, or its folder.
_PATH_KEYS = (("file", False), ("dir", True))
#: A slot not computed yet.
_UNREAD = object()


class Layout:
    """A validated bundle manifest as immutable records. Build with ``Layout.of``.

    Attributes:
      policy_class: the exported TF policy's class name (information only).
      action_mask: the observation input (nest path) a masked policy reads its action
        mask from, else None (``policy.action_mask``).
      action: how the action is derived from the distribution parameters (read-only).
      specs: the policy's ``Specs``.
      distribution: the ``distribution`` nest of ``toolkit.distribution_families.LeafInfo``.
      signatures: the exported functions' ``Signature`` by name.
      formats: the exported formats' ``FormatEntry``, in the manifest's order.
      train_step: the train step of the weights, or None.
      metadata: the user's metadata (read-only).
      producer: the versions that wrote the bundle (read-only).
      quantization: the quantize report (bundles written by ``quantize``), else None.
      files: the file table: ``FileEntry`` by bundle-relative path.
      names: the ``distribution`` graph's I/O names (``GraphNames``).
    """

    # A plain class with slots, not a dataclass: a runtime builds one on every cold start,
    # and importing dataclasses costs about a millisecond.
    __slots__ = (
        "_manifest",
        "_weights",
        "action",
        "action_mask",
        "distribution",
        "files",
        "formats",
        "metadata",
        "names",
        "policy_class",
        "producer",
        "quantization",
        "signatures",
        "specs",
        "train_step",
    )

    def __init__(self, _manifest: dict[str, Any], **fields: Any):
        for key, value in fields.items():
            object.__setattr__(self, key, value)
        object.__setattr__(self, "_manifest", _manifest)
        object.__setattr__(self, "_weights", _UNREAD)

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError(f"a Layout is immutable: cannot set {key!r}")

    def __repr__(self) -> str:
        return (
            f"Layout(policy={self.policy_class!r}, formats={list(self.formats)}, "
            f"train_step={self.train_step})"
        )

    @classmethod
    def of(
        cls,
        manifest: dict[str, Any],
        where: str | Path = "manifest.json",
        *,
        owned: bool = False,
        specs: Mapping[str, Any] | None = None,
    ) -> Layout:
        """The layout of a validated manifest.

        Args:
          manifest: the validated manifest.
          where: where it came from, for messages.
          owned: the caller hands the dict over (no one else holds it), so it is kept
            as it is instead of copied.
          specs: this manifest's spec nests by ``specs`` group, as its validation decoded
            them (``toolkit.bundle.manifest.validate(nests=)``); decoded here when empty.

        Raises:
          BundleError: a manifest whose specs or distribution cannot be decoded.
        """
        try:
            if specs:
                time_step, action, state, info, graph_info = (
                    specs[k] for k in ("time_step", "action", "policy_state", "info", "graph_info")
                )
            else:
                raw_specs = manifest["specs"]
                time_step = array_spec.spec_nest_from_json(raw_specs["time_step"])
                action = array_spec.spec_nest_from_json(raw_specs["action"])
                state = array_spec.spec_nest_from_json(raw_specs["policy_state"])
                info = array_spec.spec_nest_from_json(raw_specs["info"])
                graph_info = array_spec.spec_nest_from_json(raw_specs["graph_info"])
            distribution = nest.from_json(manifest["distribution"], families.leaf_from_json)
            signatures = {k: Signature.of(v) for k, v in manifest["signatures"].items()}
        except KeyError as e:
            raise BundleError(f"{where}: the manifest has no {e}") from e
        except (TypeError, SpecError) as e:
            raise BundleError(f"{where}: the manifest is malformed: {e}") from e
        if not isinstance(time_step, TimeStep):
            raise BundleError(f"{where}: specs.time_step is not a TimeStep")
        state = () if state is None else state
        graph_info = () if graph_info is None else graph_info
        specs = Specs(time_step, action, state, info, graph_info)
        formats = {}
        for name in manifest.get("formats", ()):
            section = manifest.get(name)
            if not isinstance(section, dict):
                continue
            for key, is_dir in _PATH_KEYS:
                if isinstance(section.get(key), str):
                    formats[name] = FormatEntry(name, freeze(section), section[key], is_dir)
                    break
        state_names = tuple(p for p, _ in nest.flatten_with_paths(state, "policy_state"))
        names = GraphNames(
            inputs=tuple(p for p, _ in nest.flatten_with_paths(time_step)) + state_names,
            states=state_names,
            next_states=tuple(p for p, _ in nest.flatten_with_paths(state, "next_state")),
            infos=tuple(p for p, _ in nest.flatten_with_paths(graph_info, "info")),
            actions=tuple(p for p, _ in nest.flatten_with_paths(action, "action")),
        )
        quantization = manifest.get("quantization")
        return cls(
            manifest if owned else _deepcopy(manifest),
            policy_class=str(manifest["policy"].get("class", "")),
            action_mask=manifest["policy"].get("action_mask"),
            action=freeze(manifest["policy"]["action"]),
            specs=specs,
            distribution=distribution,
            signatures=types.MappingProxyType(signatures),
            formats=types.MappingProxyType(formats),
            train_step=manifest.get("train_step"),
            metadata=freeze(manifest.get("metadata", {})),
            producer=freeze(manifest.get("producer", {})),
            quantization=None if quantization is None else freeze(quantization),
            files=types.MappingProxyType(
                {k: FileEntry(v["sha256"], v["size"]) for k, v in manifest["files"].items()}
            ),
            names=names,
        )

    @classmethod
    def coerce(cls, value: Layout | dict[str, Any]) -> Layout:
        """``value`` if it is a Layout, else the Layout of a (validated) manifest dict."""
        return value if isinstance(value, Layout) else cls.of(value)

    # --- formats -----------------------------------------------------------------------

    def has(self, format_name: str) -> bool:
        """Whether the bundle holds ``format_name`` (listed, with its section)."""
        return format_name in self.formats

    def format(self, format_name: str) -> FormatEntry:
        """The entry of an exported format.

        Raises:
          BundleError: the bundle was exported without it.
        """
        entry = self.formats.get(format_name)
        if entry is None:
            raise BundleError(
                f"expected a bundle with the {format_name} format, got one with "
                f"{list(self.formats)}"
            )
        return entry

    @property
    def files_json(self) -> dict[str, Any]:
        """The file table as the manifest has it (a fresh dict), for the bundle readers."""
        return {k: {"sha256": v.sha256, "size": v.size} for k, v in self.files.items()}

    # --- the ONNX graph's weights ------------------------------------------------------

    @property
    def onnx_initializers(self) -> tuple[str, ...]:
        """The ONNX graph's initializer names in canonical order (``onnx.initializers``)."""
        entry = self.formats.get("onnx")
        return tuple(entry.section.get("initializers", ())) if entry else ()

    @property
    def graph_fingerprint(self) -> str | None:
        """The ONNX graph's structural fingerprint (``onnx.graph_fingerprint``)."""
        entry = self.formats.get("onnx")
        return entry.section.get("graph_fingerprint") if entry else None

    @property
    def weights(self) -> WeightsMap | None:
        """The weights map of the ONNX graph, or None (bundles exported before it, and
        quantized ones). Decoded on first use."""
        weights = self._weights
        if weights is _UNREAD:
            entry = self.formats.get("onnx")
            data = entry.section.get("weights") if entry else None
            weights = None if data is None else WeightsMap.of(data)
            object.__setattr__(self, "_weights", weights)
        return weights

    # --- the manifest itself -----------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The manifest as a fresh dict (for writers that derive a new one)."""
        return _deepcopy(self._manifest)

    def check_copy(self, embedded: Any, where: str) -> None:
        """Refuses a manifest copy a format carries (``where``) that differs from this one.

        Raises:
          BundleError: a missing, malformed or different copy (the manifest was edited
            after export).
        """
        from toolkit.bundle.manifest import check_embedded

        check_embedded(self._manifest, embedded, where)


def _deepcopy(value: Any) -> Any:
    import copy  # not at module import: about 0.2 ms of a runtime's cold start

    return copy.deepcopy(value)
