"""The one exception hierarchy of policy-toolkit.

Messages say where (a spec name or nest path), what was expected and what came,
e.g. ``observation/velocity: expected shape (3,), got (4,)``.
"""

from __future__ import annotations


class ToolkitError(Exception):
    """Base class of every error this project raises on purpose."""


class SpecError(ToolkitError, ValueError):
    """A spec that makes no sense (bounds, dtype, shape)."""


class SpecMismatchError(ToolkitError, ValueError):
    """A value that does not conform to its spec.

    Attributes:
      path: nest path of the offending value (e.g. ``observation/velocity``), or "".
      expected: what the spec asks for, as text.
      got: what came, as text.
    """

    def __init__(self, path: str, expected: str, got: str, *, detail: str = ""):
        self.path = path
        self.expected = expected
        self.got = got
        where = f"{path}: " if path else ""
        message = f"{where}expected {expected}, got {got}"
        if detail:
            message += f" ({detail})"
        super().__init__(message)


class StructureError(SpecMismatchError):
    """A nest whose structure (keys, lengths, types) differs from its spec's."""


class PolicyError(ToolkitError):
    """A policy that cannot do what was asked (e.g. a script that ran out)."""


class ScriptExhaustedError(PolicyError, IndexError):
    """A scripted policy was asked for more actions than its script holds."""


class UnsupportedError(ToolkitError, NotImplementedError):
    """A feature that this policy, space or format does not support."""


class ExportError(ToolkitError):
    """An export that could not be completed; nothing was written."""


class BundleError(ToolkitError):
    """A bundle that is missing, corrupted, tampered with or of an unknown version."""


class ArgumentError(ToolkitError, ValueError):
    """An argument outside what a function accepts (a count below 1, a missing choice)."""


class ArgumentTypeError(ToolkitError, TypeError):
    """An argument of a kind a function does not take (keyword arguments it cannot use)."""


class EmptyBufferError(ToolkitError, ValueError):
    """A replay buffer asked for samples before anything was added."""


class EnvironmentIdError(ToolkitError):
    """An environment id gymnasium does not know, or one that cannot be made."""


class ClusterError(ToolkitError):
    """A Ray cluster that cannot be reached, or workers lost for good (toolkit.distributed)."""


class ServingError(ToolkitError):
    """A policy-server request that cannot be answered (runtimes.serving).

    Attributes:
      status: the HTTP status the server answers with (400, 404, 413...), as TF Serving
        maps its error codes (invalid argument 400, not found 404).
    """

    def __init__(self, message: str, status: int = 400):
        self.status = int(status)
        super().__init__(message)


def describe_path(path: str, default: str = "value") -> str:
    """Returns ``path`` or a placeholder for the root of a nest."""
    return path or default


class CheckpointError(BundleError):
    """A checkpoint that is missing, malformed, corrupted or of another policy."""


class OptreeHandoff(Exception):
    """Internal to toolkit.nest: a node type it leaves to optree; never escapes nest."""
