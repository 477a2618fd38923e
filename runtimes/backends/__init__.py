"""The runtime backends: one table, read by ``load_policy``, the CLI, ``serve`` and Ray.

A backend runs one bundle format's graph behind the Python-policy interface
(``runtimes.policy.BundlePolicy``). Each is one module here plus one row of ``BACKENDS``;
the table says what every command needs to know without importing the module (which
loads its engine):

==========  ================================  ===============  =================================
backend     module (policy class)             reads format     engine (pip extra)
==========  ================================  ===============  =================================
``onnx``    runtimes.backends.onnx            ``onnx``         onnxruntime (``[runtime]``)
``litert``  runtimes.backends.litert          ``litert``       ai-edge-litert (``[litert]``)
``micro``   runtimes.backends.micro           ``micro``        tflite-micro (``[micro]``)
``c``       runtimes.backends.c               ``c``            cc and ctypes (tests, benches)
``tf``      runtimes.backends.tf              ``saved_model``  TensorFlow (``[all]``)
==========  ================================  ===============  =================================

Adding a backend (docs/architecture.md, "Adding a backend"): write the module (a
``BundlePolicy`` subclass taking ``(layout, bundle_dir, *, seed, validate_args,
check_finite, threads)``), then add its ``Backend`` row below, or call ``register`` from
your own package. Commands refuse a backend that lacks a capability they need
(``Backend.require``), never substituting another.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from toolkit.errors import BundleError, SpecMismatchError, UnsupportedError

__all__ = [
    "AUTO",
    "BACKENDS",
    "Backend",
    "choose",
    "get",
    "installed",
    "names",
    "not_installed",
    "register",
    "unregister",
]

#: The name that picks the first usable backend (``Backend.auto`` ones, in table order).
AUTO = "auto"


class Backend:
    """One runtime backend: where it lives and what it can do (immutable).

    Attributes:
      name: what users pass (``--backend``, ``load_policy(backend=...)``).
      module: the module defining the policy class, imported on first load.
      policy_class: the ``BundlePolicy`` subclass in ``module``.
      format: the bundle format whose files it reads (a manifest ``formats`` entry).
      engine: the import name of the library it runs on (checked before loading).
      extra: the pip extra that installs the engine.
      label: the format as messages name it ("ONNX").
      engine_label: the engine as messages name it (default: ``engine``).
      tf_free: never imports TensorFlow (devices, Ray workers, ``serve``).
      weight_updates: takes checkpoints (``update_from_checkpoint``, ``follow``).
      threads: honours ``threads=`` (intra-op threads of its engine).
      auto: a candidate for ``backend="auto"`` (tried in table order).
    """

    # A plain class, not a dataclass: the table is read on every cold start, and
    # dataclasses costs about a millisecond to import.
    __slots__ = (
        "auto",
        "engine",
        "engine_label",
        "extra",
        "format",
        "label",
        "module",
        "name",
        "policy_class",
        "tf_free",
        "threads",
        "weight_updates",
    )

    def __init__(
        self,
        name: str,
        module: str,
        policy_class: str,
        format: str,
        engine: str,
        extra: str,
        label: str,
        *,
        engine_label: str | None = None,
        tf_free: bool = True,
        weight_updates: bool = True,
        threads: bool = True,
        auto: bool = True,
    ):
        values = {
            "name": name,
            "module": module,
            "policy_class": policy_class,
            "format": format,
            "engine": engine,
            "extra": extra,
            "label": label,
            "engine_label": engine_label or engine,
            "tf_free": tf_free,
            "weight_updates": weight_updates,
            "threads": threads,
            "auto": auto,
        }
        for key, value in values.items():
            object.__setattr__(self, key, value)

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError(f"Backend is immutable: cannot set {key!r}")

    def __repr__(self) -> str:
        return f"Backend({self.name!r}, {self.module!r}, format={self.format!r})"

    def missing(self) -> str | None:
        """``pip install ...`` advice when the engine is not installed, else None."""
        if _has_module(self.engine):
            return None
        return (
            f"the {self.name} backend needs {self.engine_label} "
            f"(pip install 'policy-toolkit[{self.extra}]')"
        )

    def policy_type(self) -> type:
        """The policy class (imports the module and its engine).

        Raises:
          UnsupportedError: the engine is not installed (the message names the extra).
        """
        advice = self.missing()
        if advice is not None:
            raise UnsupportedError(advice)
        return getattr(importlib.import_module(self.module), self.policy_class)

    def require(self, capability: str, what: str) -> None:
        """Refuses a command that needs ``capability`` ("weight_updates", "tf_free",
        "threads") of a backend without it.

        Raises:
          UnsupportedError: naming the command, the backend and the ones that can.
        """
        if getattr(self, capability):
            return
        able = [b.name for b in BACKENDS.values() if getattr(b, capability)]
        raise UnsupportedError(
            f"{what}: expected a backend with {_CAPABILITIES[capability]} "
            f"({', '.join(able)}), got {self.name!r}"
        )


_CAPABILITIES = {
    "weight_updates": "weight updates from checkpoints",
    "tf_free": "no TensorFlow",
    "threads": "thread control",
}


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a blocked or half-installed module
        return False


#: The backends, in the order ``auto`` tries them. One row per backend.
BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend(
            "onnx", "runtimes.backends.onnx", "OnnxPolicy", "onnx", "onnxruntime", "runtime", "ONNX"
        ),
        Backend(
            "litert",
            "runtimes.backends.litert",
            "LiteRTPolicy",
            "litert",
            "ai_edge_litert",
            "litert",
            "LiteRT",
            # Weights are constants of a LiteRT model: `update` converts it again (with TF).
            weight_updates=False,
        ),
        Backend(
            "micro",
            "runtimes.backends.micro",
            "MicroPolicy",
            "micro",
            "tflite_micro",
            "micro",
            "TFLite Micro",
            engine_label="TFLite Micro (tflite-micro)",
            # An int8 model of the deterministic action, calibrated at export: never a
            # silent pick, no checkpoints, one state per interpreter call.
            weight_updates=False,
            threads=False,
            auto=False,
        ),
        Backend(
            "c",
            "runtimes.backends.c",
            "CPolicy",
            "c",
            "ctypes",
            "runtime",
            "C",
            engine_label="the system C compiler (cc) and ctypes",
            # Compiles the C export (regenerated from its weights) for tests and benches.
            weight_updates=False,
            threads=False,
            auto=False,
        ),
        Backend(
            "tf",
            "runtimes.backends.tf",
            "SavedModelPolicy",
            "saved_model",
            "tensorflow",
            "all",
            "a SavedModel",
            engine_label="TensorFlow",
            tf_free=False,
            threads=False,
            # It runs the SavedModel, a program: chosen by auto only when no TF-free
            # backend can run the bundle.
            auto=False,
        ),
    )
}


def register(backend: Backend) -> None:
    """Adds (or replaces) a backend row: for backends that live outside this package."""
    BACKENDS[backend.name] = backend


def unregister(name: str) -> None:
    """Removes a backend added with ``register``."""
    BACKENDS.pop(name, None)


def names(*, tf_free: bool = False) -> list[str]:
    """The backends' names, in table order (only the TF-free ones with ``tf_free``)."""
    return [b.name for b in BACKENDS.values() if b.tf_free or not tf_free]


def get(name: str) -> Backend:
    """The backend called ``name``.

    Raises:
      SpecMismatchError: an unknown name (naming the known ones).
    """
    backend = BACKENDS.get(name)
    if backend is None:
        raise SpecMismatchError("backend", f"one of {[AUTO, *BACKENDS]}", repr(name))
    return backend


def not_installed(module: str) -> str | None:
    """Why ``module`` cannot be used here, naming the install that brings it (the extra of
    the backend whose engine it is): "TensorFlow is not installed (pip install
    'policy-toolkit[all]')"; None when it is installed."""
    if _has_module(module):
        return None
    for backend in BACKENDS.values():
        if backend.engine == module:
            return (
                f"{backend.engine_label} is not installed "
                f"(pip install 'policy-toolkit[{backend.extra}]')"
            )
    return f"the module {module!r} is not installed"


def _install_advice(backends: list[Backend]) -> str:
    """``pip install ...`` for each backend's extra: "pip install 'policy-toolkit[runtime]'
    (onnx backend) or 'policy-toolkit[all]' (tf backend)"."""
    extras = dict.fromkeys(b.extra for b in backends)
    advice = " or ".join(
        f"'policy-toolkit[{extra}]' ({', '.join(b.name for b in backends if b.extra == extra)} "
        "backend)"
        for extra in extras
    )
    return f"pip install {advice}"


def installed(formats: Any = None) -> list[Backend]:
    """The backends whose engine is installed (that read one of ``formats``, if given)."""
    return [
        b
        for b in BACKENDS.values()
        if (formats is None or b.format in formats) and b.missing() is None
    ]


def choose(name: str, formats: Any, where: str) -> Backend:
    """The backend that loads a bundle holding ``formats``: ``name``, or for ``auto`` the
    first ``auto`` backend (table order) whose format the bundle holds and whose engine is
    installed, else one that is not ``auto`` (tf) and reads a format it holds.

    Raises:
      SpecMismatchError: an unknown backend name.
      BundleError: the bundle lacks the backend's format (naming one that fits), or every
        format a backend reads.
      UnsupportedError: ``auto`` found formats but no installed engine for them.
    """
    if name != AUTO:
        backend = get(name)
        if backend.format not in formats:
            readable = [b for b in BACKENDS.values() if b.format in formats]
            usable = [b for b in readable if b.missing() is None]
            if usable:
                hint = f"; use backend={usable[0].name!r}"
            elif readable:
                # None installed: name the install, not a backend that would fail too.
                hint = f"; {_install_advice(readable)}"
            else:
                hint = ""
            raise BundleError(
                f"{where}: the bundle was exported without {backend.label} "
                f"(formats {list(formats)}){hint}"
            )
        return backend
    readable = [b for b in BACKENDS.values() if b.format in formats]
    for backend in readable:
        if backend.auto and backend.missing() is None:
            return backend
    for backend in readable:
        if not backend.auto and backend.missing() is None:
            return backend
    if not readable:
        labels = list(dict.fromkeys(b.label for b in BACKENDS.values()))
        known = ", ".join(labels[:-1]) + " or " + labels[-1] if len(labels) > 1 else labels[0]
        raise BundleError(f"{where}: expected an {known} export, got {list(formats)}")
    # TF-free backends first: the install a device wants.
    readable.sort(key=lambda b: not b.tf_free)
    held = ", ".join(dict.fromkeys(b.format for b in readable))
    raise UnsupportedError(
        f"{where}: no backend for its formats ({held}) is installed: {_install_advice(readable)}"
    )
