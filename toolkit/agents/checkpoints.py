"""Training checkpoints and policy-only checkpoints.

Layout of a training output directory ``<out>`` (what the examples write)::

    <out>/checkpoints/                 the whole training state (TrainCheckpointer)
        checkpoint                     tf.train.CheckpointManager's index
        ckpt-<train_step>.index        one tf.train.Checkpoint per save, numbered by the
        ckpt-<train_step>.data-*       train step; the last ``max_to_keep`` are kept.
            agent/...                  networks, target networks, optimizers
            replay_buffer              position, size, contents and sampler state,
                                       one serialized npz (no pickle)
            train_step                 int64 gradient-step counter
    <out>/policy_checkpoints/          what deployment needs (PolicyCheckpointer)
        checkpoint, ckpt-<train_step>.*
            policy/...                 the agent's greedy policy (its object graph)
            model_variables/<i>        the same variables as a list, in
                                       ``policy.variables()`` order: a loader that has
                                       the policy in another form (a SavedModel) can
                                       read them by index
            train_step                 int64
        policy_spec.json               how to rebuild the policy: agent kind, network
                                       class and constructor arguments, specs as JSON,
                                       the action-mask splitter (a MaskSplitter's keys)

``load_policy(<out>/policy_checkpoints)`` rebuilds the policy from ``policy_spec.json``
(only network classes of ``toolkit.networks`` are accepted: no code is loaded from
the file) and restores the latest checkpoint into it; the export CLI's
``export --checkpoint DIR`` builds on it. Resuming training is
``TrainCheckpointer.restore()``, which returns the restored train step.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf

from toolkit import nest
from toolkit.action_masks import MaskSplitter
from toolkit.errors import SpecError, ToolkitError, UnsupportedError
from toolkit.specs import array_spec, tensor_spec

__all__ = [
    "POLICY_SPEC_FILE",
    "LoadedPolicy",
    "PolicyCheckpointer",
    "ReplayBufferState",
    "TrainCheckpointer",
    "load_policy",
    "network_config",
]

POLICY_SPEC_FILE = "policy_spec.json"
POLICY_SPEC_FORMAT = "policy-toolkit/policy-checkpoint"
POLICY_SPEC_VERSION = 1

# Network classes a policy_spec.json may name, and where they live. Nothing else is
# imported, so a spec file cannot make the loader run arbitrary code.
_NETWORKS = {
    "QNetwork": "toolkit.networks.q_network",
    "ActorNetwork": "toolkit.networks.actor_network",
    "CriticNetwork": "toolkit.networks.critic_network",
    "ActorDistributionNetwork": "toolkit.networks.actor_distribution_network",
    "ValueNetwork": "toolkit.networks.value_network",
}
_ACTIVATIONS = {
    "relu": tf.nn.relu,
    "tanh": tf.nn.tanh,
    "elu": tf.nn.elu,
    "sigmoid": tf.nn.sigmoid,
    "silu": tf.nn.silu,
    "gelu": tf.nn.gelu,
    "leaky_relu": tf.nn.leaky_relu,
}


class ReplayBufferState(tf.train.experimental.PythonState):
    """Puts a numpy ReplayBuffer into tf.train.Checkpoints as one serialized npz."""

    def __init__(self, buffer: Any):
        self.buffer = buffer

    def serialize(self) -> bytes:
        stream = io.BytesIO()
        np.savez(stream, **self.buffer.state())
        return stream.getvalue()

    def deserialize(self, string_value: bytes) -> None:
        with np.load(io.BytesIO(string_value), allow_pickle=False) as data:
            self.buffer.load_state({key: data[key] for key in data.files})


def _manager(directory: Path, checkpoint: tf.train.Checkpoint, max_to_keep: int):
    return tf.train.CheckpointManager(checkpoint, str(directory), max_to_keep=max_to_keep)


class TrainCheckpointer:
    """Saves and restores the whole training state under ``directory``.

    Args:
      directory: e.g. ``<out>/checkpoints``.
      agent: an agent of ``toolkit.agents`` (a tf.Module with ``train_step_counter``).
      replay_buffer: the ReplayBuffer to save with it, or None.
      max_to_keep: how many checkpoints to keep.
      **extra: more trackable objects to save (e.g. a schedule variable).
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        agent: Any,
        replay_buffer: Any = None,
        *,
        max_to_keep: int = 3,
        **extra: Any,
    ):
        self.directory = Path(directory)
        self.agent = agent
        objects = {"agent": agent, "train_step": agent.train_step_counter, **extra}
        if replay_buffer is not None:
            objects["replay_buffer"] = ReplayBufferState(replay_buffer)
        self.checkpoint = tf.train.Checkpoint(**objects)
        self.manager = _manager(self.directory, self.checkpoint, max_to_keep)

    @property
    def latest(self) -> str | None:
        """The path prefix of the latest checkpoint, or None."""
        return self.manager.latest_checkpoint

    def save(self) -> str:
        """Writes a checkpoint numbered by the current train step; returns its prefix."""
        return self.manager.save(checkpoint_number=int(self.agent.train_step_counter.numpy()))

    def restore(self) -> int:
        """Restores the latest checkpoint, if any; returns the train step it holds (or 0).

        Raises:
          ToolkitError: when a checkpoint exists but does not match this agent.
        """
        latest = self.manager.latest_checkpoint
        if latest is None:
            return 0
        try:
            self.checkpoint.restore(latest).assert_existing_objects_matched()
        except (AssertionError, ValueError, tf.errors.OpError) as error:
            raise ToolkitError(
                f"{latest}: checkpoint does not match this agent ({error})"
            ) from error
        return int(self.agent.train_step_counter.numpy())


class PolicyCheckpointer:
    """Saves the deployment policy's variables and the train step, plus policy_spec.json.

    Args:
      directory: e.g. ``<out>/policy_checkpoints``.
      agent: the agent whose ``policy`` is saved; it provides ``policy_config()``.
      max_to_keep: how many checkpoints to keep.
    """

    def __init__(self, directory: str | os.PathLike, agent: Any, *, max_to_keep: int = 3):
        self.directory = Path(directory)
        self.agent = agent
        policy = agent.policy
        self.checkpoint = tf.train.Checkpoint(
            policy=policy,
            model_variables=list(policy.variables()),
            train_step=agent.train_step_counter,
        )
        self.manager = _manager(self.directory, self.checkpoint, max_to_keep)
        self._config = agent.policy_config()

    @property
    def latest(self) -> str | None:
        return self.manager.latest_checkpoint

    def save(self) -> str:
        """Writes a checkpoint (numbered by the train step) and policy_spec.json."""
        self.directory.mkdir(parents=True, exist_ok=True)
        spec_path = self.directory / POLICY_SPEC_FILE
        tmp = spec_path.with_suffix(".json.tmp")
        # No sort_keys: namedtuple fields in the specs keep their order.
        tmp.write_text(json.dumps(self._config, indent=2) + "\n")
        tmp.replace(spec_path)
        return self.manager.save(checkpoint_number=int(self.agent.train_step_counter.numpy()))


class LoadedPolicy(NamedTuple):
    """A policy rebuilt from a policy checkpoint directory."""

    policy: Any
    train_step: int
    checkpoint: str
    config: dict[str, Any]


def load_policy(directory: str | os.PathLike, checkpoint: str | None = None) -> LoadedPolicy:
    """Rebuilds the deployment policy saved by PolicyCheckpointer and restores its variables.

    Args:
      directory: the policy checkpoint directory (holding policy_spec.json).
      checkpoint: a checkpoint prefix in it; the latest by default.

    Raises:
      ToolkitError: no policy_spec.json or no checkpoint, or a checkpoint that does not
        fit the policy the spec describes.
      UnsupportedError: a spec naming an unknown agent kind or network class.
    """
    directory = Path(directory)
    spec_path = directory / POLICY_SPEC_FILE
    if not spec_path.is_file():
        raise ToolkitError(
            f"{directory}: expected a policy checkpoint directory with {POLICY_SPEC_FILE}"
        )
    try:
        config = json.loads(spec_path.read_bytes())
    except (ValueError, RecursionError) as e:  # bad UTF-8 or JSON, or nested too deep
        raise ToolkitError(f"{spec_path}: expected JSON, got {str(e)[:120]}") from e
    if not isinstance(config, dict):
        raise ToolkitError(f"{spec_path}: expected a JSON object, got {type(config).__name__}")
    if config.get("format") != POLICY_SPEC_FORMAT or config.get("version") != POLICY_SPEC_VERSION:
        raise ToolkitError(
            f"{spec_path}: expected format {POLICY_SPEC_FORMAT!r} version {POLICY_SPEC_VERSION}, "
            f"got {config.get('format')!r} version {config.get('version')!r}"
        )
    checkpoint = checkpoint or tf.train.latest_checkpoint(str(directory))
    if checkpoint is None:
        raise ToolkitError(f"{directory}: no checkpoint found")
    policy = build_policy(config)
    train_step = tf.Variable(0, dtype=tf.int64)
    restore = tf.train.Checkpoint(
        policy=policy, model_variables=list(policy.variables()), train_step=train_step
    )
    try:
        # Our objects must all match; the manager's save_counter is not restored.
        restore.read(checkpoint).assert_existing_objects_matched().expect_partial()
    except (AssertionError, ValueError, tf.errors.OpError) as error:
        raise ToolkitError(f"{checkpoint}: does not match {spec_path} ({error})") from error
    return LoadedPolicy(policy, int(train_step.numpy()), checkpoint, config)


# --- policy specs ------------------------------------------------------------------------


def policy_config(
    kind: str,
    time_step_spec: Any,
    action_spec: Any,
    networks: dict[str, Any],
    splitter: Any = None,
):
    """The policy_spec.json content for an agent's deployment policy.

    ``splitter`` (the agent's observation_and_action_constraint_splitter) is saved when
    it is a MaskSplitter; any other function has no JSON form and is marked so, and
    ``load_policy`` then refuses to rebuild the policy (an export factory still can).
    """
    config = {
        "format": POLICY_SPEC_FORMAT,
        "version": POLICY_SPEC_VERSION,
        "agent": kind,
        "time_step_spec": array_spec.spec_nest_to_json(time_step_spec),
        "action_spec": array_spec.spec_nest_to_json(action_spec),
        "networks": {name: network_config(net) for name, net in networks.items()},
    }
    if splitter is not None:
        config["splitter"] = (
            splitter.to_json() if isinstance(splitter, MaskSplitter) else {"unsupported": True}
        )
    return config


def _splitter(config: dict[str, Any]) -> MaskSplitter | None:
    data = config.get("splitter")
    if data is None:
        return None
    if isinstance(data, dict) and data.get("unsupported"):
        raise UnsupportedError(
            "policy_spec.json: the policy's observation_and_action_constraint_splitter is a "
            "function with no JSON form; rebuild the policy with an export factory, or train "
            "with a toolkit.action_masks.MaskSplitter"
        )
    return MaskSplitter.from_json(data)


def build_policy(config: dict[str, Any]) -> Any:
    """The (untrained) deployment policy a policy_spec.json describes."""
    time_step_spec = tensor_spec.from_spec(array_spec.spec_nest_from_json(config["time_step_spec"]))
    action_spec = tensor_spec.from_spec(array_spec.spec_nest_from_json(config["action_spec"]))
    splitter = _splitter(config)
    networks = {name: build_network(c) for name, c in config.get("networks", {}).items()}
    kind = config.get("agent")
    if kind == "dqn":
        from toolkit.policies.greedy_policy import GreedyPolicy
        from toolkit.policies.q_policy import QPolicy

        return GreedyPolicy(
            QPolicy(
                time_step_spec,
                action_spec,
                networks["q_network"],
                observation_and_action_constraint_splitter=splitter,
            )
        )
    if kind in ("ddpg", "sac", "ppo"):
        # DDPG's actor gives actions, SAC's and PPO's distributions: ActorPolicy takes both.
        from toolkit.policies.actor_policy import ActorPolicy

        return ActorPolicy(
            time_step_spec,
            action_spec,
            networks["actor_network"],
            observation_and_action_constraint_splitter=splitter,
        )
    raise UnsupportedError(
        f"policy_spec.json agent: expected one of 'dqn', 'ddpg', 'sac', 'ppo', got {kind!r}"
    )


def network_config(network: Any) -> dict[str, Any]:
    """A JSON description of a network: its class and the arguments it was built with.

    Arguments that have no JSON form (custom layers, lambdas) are listed under
    ``"unsupported"``; such a network cannot be rebuilt by ``build_network``.
    """
    name = type(network).__name__
    kwargs, unsupported = {}, []
    for key, value in getattr(network, "_init_kwargs", {}).items():
        try:
            kwargs[key] = _encode_argument(value)
        except UnsupportedError:
            unsupported.append(key)
    config = {"class": name, "kwargs": kwargs}
    if name not in _NETWORKS:
        unsupported.append("class")
    if unsupported:
        config["unsupported"] = sorted(unsupported)
    return config


def build_network(config: dict[str, Any]) -> Any:
    """Builds a network from ``network_config`` output (toolkit.networks classes only)."""
    name = config.get("class")
    if config.get("unsupported"):
        raise UnsupportedError(
            f"network {name}: cannot be rebuilt from policy_spec.json, arguments "
            f"{config['unsupported']} have no JSON form"
        )
    if name not in _NETWORKS:
        raise UnsupportedError(f"network class: expected one of {sorted(_NETWORKS)}, got {name!r}")
    import importlib

    cls = getattr(importlib.import_module(_NETWORKS[name]), name)
    kwargs = {key: _decode_argument(value) for key, value in config["kwargs"].items()}
    return cls(**kwargs)


def _is_spec_nest(value: Any) -> bool:
    leaves = nest.flatten(value)
    return bool(leaves) and all(
        isinstance(x, (array_spec.ArraySpec, tf.TensorSpec)) for x in leaves
    )


def _encode_argument(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (array_spec.ArraySpec, tf.TensorSpec)) or (
        isinstance(value, (tuple, list, dict)) and _is_spec_nest(value)
    ):
        return {"spec": array_spec.spec_nest_to_json(value)}
    for key, fn in _ACTIVATIONS.items():
        if value is fn:
            return {"activation": key}
    if isinstance(value, (tuple, list)) and all(
        isinstance(x, (int, float, np.integer, np.floating)) for x in value
    ):
        return {"tuple": [x.item() if isinstance(x, np.generic) else x for x in value]}
    raise UnsupportedError(f"{type(value).__name__} has no JSON form")


def _decode_argument(value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    if "spec" in value:
        return tensor_spec.from_spec(array_spec.spec_nest_from_json(value["spec"]))
    if "activation" in value:
        if value["activation"] not in _ACTIVATIONS:
            raise UnsupportedError(f"activation: unknown {value['activation']!r}")
        return _ACTIVATIONS[value["activation"]]
    if "tuple" in value:
        return tuple(value["tuple"])
    raise SpecError(f"policy_spec.json: cannot decode network argument {value!r:.80}")
