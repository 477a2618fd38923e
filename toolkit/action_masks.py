"""Action masks: which actions a policy may take in each state (TF-free).

TF-Agents' convention, which this project follows: a policy built with an
``observation_and_action_constraint_splitter`` splits each observation into what its
network sees and a mask, ``mask[..., i]`` nonzero where action ``minimum + i`` is
allowed. Masked actions get the lowest logit, so greedy, sampled and epsilon-greedy
choices never take one; a batch entry whose mask allows nothing has no action to take,
and every policy kind raises ``NoAllowedActionError`` naming it.

What the environments, the TF policies, the agents and the runtimes share:

* ``MaskSplitter``: the splitter of a dict observation ``{"observation": ...,
  "mask": ...}`` (what ``GymEnvironment(..., action_mask=True)`` gives); a value with a
  JSON form, so a policy checkpoint can rebuild the policy with it.
* ``mask_path``: the nest path of the observation leaf a splitter reads as the mask; an
  exported bundle declares it (``policy.action_mask`` in the manifest) so that runtimes
  check masks without the splitter.
* ``check_rows``: the numpy check, naming the first entry that allows no action.
* ``allow_every_action``: a time step whose mask allows everything, for the tools that
  act on made-up observations (``serve``'s check of a new version, ``bench``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from toolkit import nest
from toolkit.errors import ArgumentError, ArgumentTypeError, NoAllowedActionError, SpecError

__all__ = [
    "FALLBACK_LABEL",
    "MaskSplitter",
    "allow_every_action",
    "check_rows",
    "mask_label",
    "mask_path",
]

#: How errors name a mask that is no observation leaf (a splitter computing it).
FALLBACK_LABEL = "action mask"

_JSON_KIND = "mask_splitter"


class MaskSplitter:
    """``observation -> (observation[observation_key], observation[mask_key])``.

    Works on observation nests of any kind (numpy arrays, tensors, specs), as TF-Agents'
    splitters must: agents call it on the observation spec to size their networks.

    Args:
      observation_key: the key of what the network sees.
      mask_key: the key of the action mask.
    """

    __slots__ = ("_mask_key", "_observation_key")

    def __init__(self, observation_key: str = "observation", mask_key: str = "mask"):
        for name, key in (("observation_key", observation_key), ("mask_key", mask_key)):
            if not isinstance(key, str) or not key:
                raise ArgumentTypeError(
                    f"MaskSplitter {name}: expected a non-empty str, got {key!r}"
                )
        if observation_key == mask_key:
            raise ArgumentError(
                f"MaskSplitter: expected two different keys, got {observation_key!r} twice"
            )
        self._observation_key = observation_key
        self._mask_key = mask_key

    @property
    def observation_key(self) -> str:
        return self._observation_key

    @property
    def mask_key(self) -> str:
        return self._mask_key

    def __call__(self, observation: Any) -> tuple[Any, Any]:
        return observation[self._observation_key], observation[self._mask_key]

    def to_json(self) -> dict[str, str]:
        return {"kind": _JSON_KIND, "observation": self._observation_key, "mask": self._mask_key}

    @classmethod
    def from_json(cls, data: Any) -> MaskSplitter:
        if (
            not isinstance(data, dict)
            or data.get("kind") != _JSON_KIND
            or set(data) != {"kind", "observation", "mask"}
        ):
            raise SpecError(
                f"splitter: expected {{'kind': {_JSON_KIND!r}, 'observation': str, 'mask': str}}, "
                f"got {data!r:.120}"
            )
        return cls(data["observation"], data["mask"])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MaskSplitter):
            return NotImplemented
        return (self._observation_key, self._mask_key) == (other._observation_key, other._mask_key)

    def __hash__(self) -> int:
        return hash((MaskSplitter, self._observation_key, self._mask_key))

    def __repr__(self) -> str:
        return f"MaskSplitter({self._observation_key!r}, {self._mask_key!r})"


def mask_path(
    splitter: Callable[[Any], Any] | None, observation_spec: Any, prefix: str = "observation"
) -> str | None:
    """The nest path of the observation leaf ``splitter`` returns as the mask, or None.

    The splitter is applied to the spec itself (as TF-Agents' agents do); None when it
    returns no leaf of the spec (it computes the mask, or does not take specs).
    """
    if splitter is None:
        return None
    try:
        _, mask = splitter(observation_spec)
    except (KeyError, IndexError, TypeError, AttributeError, ValueError):
        return None
    for path, leaf in nest.flatten_with_paths(observation_spec, prefix):
        if leaf is mask:
            return path
    return None


def mask_label(splitter: Callable[[Any], Any] | None, observation_spec: Any) -> str:
    """How errors name the mask: its observation path, or ``FALLBACK_LABEL``."""
    return mask_path(splitter, observation_spec) or FALLBACK_LABEL


def check_rows(mask: Any, outer_dims: tuple[int, ...], label: str | Callable[[], str]) -> None:
    """Raises NoAllowedActionError for the first batch entry whose mask allows no action.

    Args:
      mask: ``outer_dims + [..., n]``: per action element, a nonzero for each allowed
        action (an entry needs one allowed action per element).
      outer_dims: the batch dims (``()`` for one unbatched entry).
      label: the mask's name in the error (``observation/mask``), or a function giving
        it (called only to raise).
    """
    allowed = np.asarray(mask).any(axis=-1)
    if allowed.ndim > len(outer_dims):
        allowed = allowed.reshape(tuple(outer_dims) + (-1,)).all(axis=-1)
    if allowed.all():
        return
    flat = int(np.argmin(allowed.reshape(-1)))
    index = np.unravel_index(flat, outer_dims) if outer_dims else ()
    raise NoAllowedActionError(
        label if isinstance(label, str) else label(), tuple(int(i) for i in index)
    )


def allow_every_action(time_step: Any, mask_input: str | None) -> Any:
    """``time_step`` with the observation leaf ``mask_input`` (a bundle's
    ``action_mask_input``) all ones; unchanged when it is None.

    Made-up observations (zeros, spec samples) may allow no action; a tool acting on
    them to check or time a policy sets the mask instead.
    """
    if mask_input is None:
        return time_step
    observation = time_step.observation
    leaves = [
        np.ones_like(value) if path == mask_input else value
        for path, value in nest.flatten_with_paths(observation, "observation")
    ]
    return time_step._replace(observation=nest.pack_sequence_as(observation, leaves))
