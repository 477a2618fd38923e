"""The one exception hierarchy of policy-toolkit.

Messages say where (a spec name or nest path), what was expected and what came,
e.g. ``observation/velocity: expected shape (3,), got (4,)``.
"""

from __future__ import annotations

import enum


class ToolkitError(Exception):
    """Base class of every error this project raises on purpose."""


class SpecError(ToolkitError, ValueError):
    """A spec that makes no sense (bounds, dtype, shape)."""


class SpecTypeError(SpecError, TypeError):
    """A spec argument of the wrong kind: a shape that is no sequence, an unknown dtype, a
    nest leaf that is no spec (a TypeError too, as TF-Agents raises)."""


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


class ActionDtypeError(SpecMismatchError, TypeError):
    """A policy's action of another dtype than its action spec's (a TypeError too, as
    TF-Agents raises)."""


class StructureError(SpecMismatchError):
    """A nest whose structure (keys, lengths, types) differs from its spec's."""


class PolicyError(ToolkitError):
    """A policy that cannot do what was asked (e.g. a script that ran out)."""


class NoAllowedActionError(PolicyError, ValueError):
    """A batch entry whose action mask allows no action (there is no action to return).

    Attributes:
      path: where the mask is (e.g. ``observation/mask``), with the entry's index
        (``observation/mask[3]``; none for an unbatched time step).
    """

    problem = "expected at least one allowed action, got none"

    def __init__(self, path: str, index: tuple[int, ...] = ()):
        where = path + (f"[{', '.join(str(int(i)) for i in index)}]" if index else "")
        self.path = where
        super().__init__(f"{where}: {self.problem}")


class ScriptExhaustedError(PolicyError, IndexError, ValueError):
    """A scripted policy was asked for more actions than its script holds (a ValueError
    too, as TF-Agents raises)."""


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


class ErrorKind(enum.IntEnum):
    """What went wrong with a served request, whatever protocol carried it.

    gRPC's canonical status codes (with their numbers); each serving protocol maps a
    kind to its own status (runtimes.serving: an HTTP code for REST, the code for gRPC).
    """

    CANCELLED = 1
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14


class ClusterError(ToolkitError):
    """A Ray cluster that cannot be reached, or workers lost for good (toolkit.distributed)."""


class ServingError(ToolkitError):
    """A policy-server request that cannot be answered (runtimes.serving).

    Attributes:
      kind: an ``ErrorKind`` (invalid argument, not found...), protocol-neutral: each
        protocol's codec answers it with its own status.
    """

    def __init__(self, message: str, kind: ErrorKind = ErrorKind.INVALID_ARGUMENT):
        self.kind = ErrorKind(kind)
        super().__init__(message)


class RequestHeadTooLargeError(ServingError):
    """A request's head (its URL and headers) is over the REST transport's bounds
    (``runtimes.serving.http_server``): answered 431, then the connection closes."""

    def __init__(self, message: str = "the request's head is too large"):
        super().__init__(message, ErrorKind.INVALID_ARGUMENT)


class ConnectionProtocolError(ServingError):
    """A peer broke its connection's wire protocol (HTTP/2 framing on the gRPC port): the
    connection is closed (GOAWAY with ``code``, an HTTP/2 error code); its calls end.

    Attributes:
      code: the HTTP/2 error code the GOAWAY carries.
    """

    def __init__(self, code: int, message: str):
        self.code = int(code)
        super().__init__(message, ErrorKind.UNAVAILABLE)


def describe_path(path: str, default: str = "value") -> str:
    """Returns ``path`` or a placeholder for the root of a nest."""
    return path or default


class TrustError(BundleError):
    """A bundle a trust policy refuses: unsigned, signed by another key, or not the bundle
    that was signed (a changed, added or removed file)."""


class CheckpointError(BundleError):
    """A checkpoint that is missing, malformed, corrupted or of another policy."""


class OptreeHandoff(Exception):
    """Internal to toolkit.nest: a node type it leaves to optree; never escapes nest."""
