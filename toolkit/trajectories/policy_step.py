"""PolicyStep: what a policy returns (TF-free)."""

from __future__ import annotations

from typing import Any, NamedTuple

from toolkit.specs import array_spec

__all__ = ["PolicyStep"]


@array_spec.register_namedtuple
class PolicyStep(NamedTuple):
    """An action, the policy state to feed back next step, and side information."""

    action: Any
    state: Any = ()
    info: Any = ()
