"""PolicyStep: what a policy returns, and the log-probability helpers of its info (TF-free)."""

from collections.abc import Mapping
from typing import Any, NamedTuple

from toolkit.specs import array_spec

__all__ = [
    "CommonFields",
    "PolicyInfo",
    "PolicyStep",
    "get_log_probability",
    "set_log_probability",
]


@array_spec.register_namedtuple
class PolicyStep(NamedTuple):
    """An action, the policy state to feed back next step, and side information."""

    action: Any = ()
    state: Any = ()
    info: Any = ()

    def replace(self, **kwargs: Any) -> "PolicyStep":
        """A copy with the given fields replaced (``namedtuple._replace``)."""
        return self._replace(**kwargs)


class CommonFields:
    """Names of the info entries policies share."""

    LOG_PROBABILITY = "log_probability"


@array_spec.register_namedtuple
class PolicyInfo(NamedTuple):
    """The info of a policy that emits log-probabilities and has no info of its own.

    As in TF-Agents, ``info.log_probability``; ``info["log_probability"]`` reads it too
    (this project's info was a dict before).
    """

    log_probability: Any

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            if key in self._fields:
                return getattr(self, key)
            raise KeyError(key)
        return tuple.__getitem__(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key) if key in self._fields else default

    def keys(self) -> tuple[str, ...]:
        return self._fields


def set_log_probability(info: Any, log_probability: Any) -> Any:
    """``info`` with its log-probability set: a PolicyInfo for an empty info, a new dict
    with the entry for a dict, ``_replace`` for a namedtuple with the field."""
    if info is None or (isinstance(info, tuple) and not info):
        return PolicyInfo(log_probability=log_probability)
    if isinstance(info, Mapping):
        return {**info, CommonFields.LOG_PROBABILITY: log_probability}
    if getattr(info, "_fields", None) is not None:
        return info._replace(**{CommonFields.LOG_PROBABILITY: log_probability})
    return info


def get_log_probability(info: Any, default_log_probability: Any = None) -> Any:
    """The log-probability entry of a dict or namedtuple info, else the default."""
    if isinstance(info, Mapping):
        return info.get(CommonFields.LOG_PROBABILITY, default_log_probability)
    if getattr(info, "_fields", None) is not None:
        return getattr(info, CommonFields.LOG_PROBABILITY, default_log_probability)
    return default_log_probability
