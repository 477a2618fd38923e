"""Which policy of this project a TF-Agents save becomes (``build_policy``).

* a saved ``distribution`` of a supported family (TFP's, or TF-Agents'
  SquashToSpecNormal / ShiftedCategorical / MaskedCategorical), or a deterministic
  ``action``: a ``TFAgentsPolicy`` over it (with ``greedy``, each leaf is the saved
  distribution's mode: TF-Agents' GreedyPolicy);
* a collect policy that samples inside its saved ``action`` (its distribution only
  raises): TF-Agents' ``EpsilonGreedyPolicy``, ``GaussianPolicy`` and
  ``OUNoisePolicy`` are rebuilt as this project's wrappers of the same names around
  the deterministic core (``TFAgentsPolicy(core=...)``), with epsilon, the noise scale,
  or OU stddev and damping read from the saved graph (``exporters.tf_agents.graph``);
  the wrapper also tracks the core's ``model_variables``, where TF-Agents' checkpoints
  keep them, and a masked random branch's mask becomes the core's action-constraint
  splitter, so the rebuilt random branch draws only allowed actions as TF-Agents' does;
  with ``greedy``, the core alone;
* a ``RandomTFPolicy`` (no variables; only uniform sampling ops): this project's
  RandomTFPolicy over the same specs (the runtime's random derivation).

Where TF-Agents' behaviour differs: its Gaussian and OU wrappers draw one noise vector
per call, shared by every batch entry, and its OU process lives in a variable that
persists across calls and episodes (not reset on FIRST). The rebuilt wrappers draw
independent noise per batch entry, and keep the OU noise in the policy state, reset on
FIRST steps: per entry, the same distribution as TF-Agents' batch-of-one calls.
PPO's collect policy saves an unclipped action (its log-probabilities are of unclipped
samples); the bundle clips sampled actions to the spec, as runtimes must return actions
within it (``action_is_clipped`` tells which saves do not clip).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from exporters.tf_agents import graph as saved_graph
from exporters.tf_agents.policy import TFAgentsPolicy
from exporters.tf_agents.saved import find_concrete, load_saved_policy, random_tf_ops, tf_op_types
from exporters.tf_agents.specs import read_policy_specs
from toolkit import nest
from toolkit.errors import UnsupportedError

__all__ = ["Built", "build_policy"]

_UNIFORM_OPS = frozenset({"RandomUniform", "RandomUniformInt"})
RANDOM = "random"


@dataclasses.dataclass(frozen=True)
class Built:
    """What a save became.

    Attributes:
      policy: the TFPolicy to export.
      adapter: the TFAgentsPolicy inside it (None for a random policy).
      function: the saved function the graph computes: ``distribution``, ``action``,
        ``action_core`` (a collect policy's action with its exploration cut off) or
        ``random`` (nothing: the runtime samples the action spec).
      exploration: ``epsilon_greedy``, ``gaussian``, ``ou``, ``random`` or None.
    """

    policy: Any
    adapter: Any
    function: str
    exploration: str | None


def _random_policy(policy_source: Path) -> Any:
    from toolkit.policies.random_tf_policy import RandomTFPolicy

    specs = read_policy_specs(policy_source)
    return RandomTFPolicy(specs.raw["time_step_spec"], specs.raw["action_spec"])


def _mask_leaf(source: Path, exploration: saved_graph.Exploration) -> int | None:
    """The observation leaf of the random branch's mask (its index among the leaves)."""
    if exploration.mask is None:
        return None
    time_step = read_policy_specs(source).raw["time_step_spec"]
    before = sum(len(nest.flatten(field)) for field in time_step[:3])
    leaves = len(nest.flatten(time_step.observation))
    if not before <= exploration.mask < before + leaves:
        raise UnsupportedError(
            f"{source}: epsilon-greedy: expected the action mask among the observation's "
            "leaves, got another input of the saved action"
        )
    return exploration.mask - before


def build_policy(saved_model_dir: str | os.PathLike, greedy: bool = False) -> Built:
    """The TFPolicy that stands for a TF-Agents saved policy (see the module doc).

    Raises:
      BundleError: the directory is not a TF-Agents saved policy.
      UnsupportedError: what was found and what to save instead.
    """
    from toolkit.policies.epsilon_greedy_policy import EpsilonGreedyPolicy
    from toolkit.policies.gaussian_policy import GaussianPolicy
    from toolkit.policies.ou_noise_policy import OUNoisePolicy

    source = Path(saved_model_dir)
    try:
        # Sampled actions are clipped to the spec even where TF-Agents' saved action
        # is not (PPO's collect policy): runtimes return actions within the spec.
        policy = TFAgentsPolicy(source, greedy=greedy)
    except UnsupportedError as e:
        first_error = e
    else:
        return Built(policy, policy, policy.function, None)
    loaded = load_saved_policy(source)
    concrete = find_concrete(loaded.action)
    if concrete is None:
        raise first_error
    try:
        exploration = saved_graph.analyze_action(concrete)
    except UnsupportedError as e:
        randoms = set(random_tf_ops(tf_op_types(concrete)))
        if not getattr(loaded, "model_variables", ()) and randoms <= _UNIFORM_OPS:
            if greedy:
                raise UnsupportedError(
                    f"{source}: a TF-Agents RandomTFPolicy (no variables, uniform sampling) "
                    "has no deterministic action to import with greedy"
                ) from e
            return Built(_random_policy(source), None, RANDOM, RANDOM)
        raise UnsupportedError(
            f"{first_error}; nor is it one of TF-Agents' EpsilonGreedyPolicy, GaussianPolicy, "
            f"OUNoisePolicy or RandomTFPolicy ({e}): save the agent's greedy `policy` "
            "instead (a deterministic action, or a distribution of TFP's or TF-Agents' "
            "families)"
        ) from e
    core = TFAgentsPolicy(source, core=exploration.core, mask=_mask_leaf(source, exploration))
    if greedy:
        return Built(core, core, core.function, None)
    params = exploration.params
    if params is None:
        raise UnsupportedError(
            f"{source}: found {exploration.found} but cannot read its parameters from the "
            "saved graph: import only the deterministic action with greedy=True "
            "(`import-tf-agents --greedy`), or save the agent's greedy `policy`"
        )
    if exploration.kind == saved_graph.EPSILON_GREEDY:
        wrapped = EpsilonGreedyPolicy(core, params["epsilon"])
    elif exploration.kind == saved_graph.GAUSSIAN:
        wrapped = GaussianPolicy(core, scale=params["scale"], clip=True)
    else:
        wrapped = OUNoisePolicy(
            core, ou_stddev=params["stddev"], ou_damping=params["damping"], clip=True
        )
    # PolicySaver.save_checkpoint keeps the saved policy's variables at
    # policy/model_variables/<i>; inside the wrapper they would be reached through the
    # wrapper's own attributes only (policy/_greedy_policy/_wrapped_policy/...). Tracked
    # at the wrapper too, the export's weights map records TF-Agents' path, so the
    # bundle takes the checkpoint TF-Agents wrote for this collect policy.
    wrapped.model_variables = core.model_variables
    return Built(wrapped, core, core.function, exploration.kind)
