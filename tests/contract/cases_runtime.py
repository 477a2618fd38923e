"""Contract cases: exported bundles of every exportable policy kind, loaded by every runtime.

Each kind is a TF policy with deterministic weights (``live(kind)`` builds it afresh);
``bundle(kind)`` exports it once per test run (by the first of ``make test``'s workers
that asks, tests/run_cache.py), so the contract suite, the parity tests and the sampling
tests share exports.

Bundles hold a LiteRT model too, except for kinds LiteRT's builtin ops cannot express
(``LITERT_UNSUPPORTED``). ``make()`` of an onnx or litert case loads the bundle anew
(milliseconds). A tf case copies one
loaded template instead: loading a SavedModel takes about a second, and ``copy()`` gives
an independent policy with the template's untouched, seeded generator.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests import run_cache
from tests.contract.case import PolicyCase

# One observation layout per family of cases: flat, and a dict with a float64 leaf
# (exported graphs take it as float64; runtimes convert float64 to float32 elsewhere).
_OBS_SHAPE = (4,)


def _specs():
    import tensorflow as tf

    from toolkit.specs import tensor_spec

    flat = tensor_spec.TensorSpec(_OBS_SHAPE, tf.float32, name="observation")
    dict_obs = {
        "position": tensor_spec.TensorSpec((2,), tf.float32, name="position"),
        "velocity": tensor_spec.BoundedTensorSpec((3,), tf.float64, -1.0, 1.0, name="velocity"),
    }
    seed_discrete = tensor_spec.BoundedTensorSpec((1,), tf.int32, minimum=-1, maximum=1, name="q")
    discrete = tensor_spec.BoundedTensorSpec((), tf.int64, minimum=2, maximum=5, name="move")
    continuous = tensor_spec.BoundedTensorSpec((3,), tf.float32, -1.0, 2.0, name="force")
    return flat, dict_obs, seed_discrete, discrete, continuous


def set_weights(policy, seed: int):
    """Gives every variable of ``policy`` values drawn from a Generator seeded with ``seed``."""
    rng = np.random.default_rng(seed)
    for variable in policy.variables():
        values = rng.normal(0.0, 0.5, variable.shape.as_list())
        variable.assign(values.astype(variable.dtype.as_numpy_dtype))
    return policy


def _q(dict_observation: bool = False, seed: int = 1):
    from toolkit.networks.q_network import QNetwork
    from toolkit.policies import q_policy
    from toolkit.trajectories import time_step as ts

    flat, dict_obs, seed_discrete, _, _ = _specs()
    obs = dict_obs if dict_observation else flat
    network = QNetwork(obs, seed_discrete, fc_layer_params=(8,))
    return set_weights(
        q_policy.QPolicy(ts.time_step_spec(obs), seed_discrete, q_network=network), seed
    )


def _actor():
    from toolkit.networks.actor_network import ActorNetwork
    from toolkit.policies import actor_policy
    from toolkit.trajectories import time_step as ts

    flat, _, _, _, continuous = _specs()
    network = ActorNetwork(flat, continuous, fc_layer_params=(8,))
    policy = actor_policy.ActorPolicy(ts.time_step_spec(flat), continuous, actor_network=network)
    return set_weights(policy, 2)


def _actor_distribution(nested: bool, dict_observation: bool, emit: bool, seed: int):
    from toolkit.networks.actor_distribution_network import ActorDistributionNetwork
    from toolkit.policies import actor_policy
    from toolkit.trajectories import time_step as ts

    flat, dict_obs, _, discrete, continuous = _specs()
    obs = dict_obs if dict_observation else flat
    action_spec = {"move": discrete, "force": continuous} if nested else continuous
    network = ActorDistributionNetwork(obs, action_spec, fc_layer_params=(8,))
    policy = actor_policy.ActorPolicy(
        ts.time_step_spec(obs), action_spec, actor_network=network, emit_log_probability=emit
    )
    return set_weights(policy, seed)


def _actor_rnn(seed: int):
    from toolkit.networks.actor_distribution_rnn_network import ActorDistributionRnnNetwork
    from toolkit.policies import actor_policy
    from toolkit.trajectories import time_step as ts

    flat, _, _, _, continuous = _specs()
    network = ActorDistributionRnnNetwork(
        flat, continuous, input_fc_layer_params=(8,), lstm_size=(5,), output_fc_layer_params=None
    )
    policy = actor_policy.ActorPolicy(ts.time_step_spec(flat), continuous, actor_network=network)
    return set_weights(policy, seed)


def _q_rnn():
    from toolkit.networks.q_rnn_network import QRnnNetwork
    from toolkit.policies import q_policy
    from toolkit.trajectories import time_step as ts

    _, dict_obs, seed_discrete, _, _ = _specs()
    network = QRnnNetwork(
        dict_obs,
        seed_discrete,
        input_fc_layer_params=(8,),
        lstm_size=(5,),
        output_fc_layer_params=(6,),
    )
    policy = q_policy.QPolicy(ts.time_step_spec(dict_obs), seed_discrete, q_network=network)
    return set_weights(policy, 14)


def _greedy(policy):
    from toolkit.policies import greedy_policy

    return greedy_policy.GreedyPolicy(policy)


def _epsilon_greedy():
    from toolkit.policies import epsilon_greedy_policy

    return epsilon_greedy_policy.EpsilonGreedyPolicy(_q(), epsilon=0.3, emit_log_probability=True)


def _gaussian():
    from toolkit.policies import gaussian_policy

    return gaussian_policy.GaussianPolicy(_actor(), scale=0.3, emit_log_probability=True)


def _ou(wrapped):
    from toolkit.policies import ou_noise_policy

    return ou_noise_policy.OUNoisePolicy(wrapped, ou_stddev=0.2, ou_damping=0.15)


def _random_nested():
    import tensorflow as tf

    from toolkit.policies import random_tf_policy
    from toolkit.specs import tensor_spec
    from toolkit.trajectories import time_step as ts

    flat, _, _, discrete, continuous = _specs()
    action_spec = {
        "move": discrete,
        "force": (continuous, tensor_spec.BoundedTensorSpec((1,), tf.uint8, 0, 9, name="gear")),
        "free": tensor_spec.TensorSpec((2,), tf.float64, name="free"),
    }
    return random_tf_policy.RandomTFPolicy(
        ts.time_step_spec(flat), action_spec, emit_log_probability=True
    )


def _mixture():
    from toolkit.policies import mixture_policy, random_tf_policy
    from toolkit.trajectories import time_step as ts

    flat, _, seed_discrete, _, _ = _specs()
    policies = [
        _greedy(_q()),
        random_tf_policy.RandomTFPolicy(ts.time_step_spec(flat), seed_discrete),
    ]
    return mixture_policy.MixturePolicy(policies, [0.25, 0.75])


def _mixture_stateful():
    """A mixture whose first component keeps OU noise in its state: state paths nest."""
    from toolkit.policies import gaussian_policy, mixture_policy

    components = [_ou(_actor()), gaussian_policy.GaussianPolicy(_actor(), scale=0.1)]
    return mixture_policy.MixturePolicy(components, [0.5, 0.5])


#: kind -> (builder of the live TF policy, whether it is deterministic)
KINDS: dict[str, tuple[Callable[[], Any], bool]] = {
    "q": (_q, False),
    "q/dict_obs": (lambda: _q(dict_observation=True, seed=9), False),
    "greedy_q": (lambda: _greedy(_q()), True),
    "actor/action_network": (_actor, True),
    "actor/normal_dict_obs": (lambda: _actor_distribution(False, True, False, 6), False),
    "actor/categorical_normal": (lambda: _actor_distribution(True, False, True, 7), False),
    "greedy_actor/categorical_normal": (
        lambda: _greedy(_actor_distribution(True, False, True, 7)),
        True,
    ),
    "rnn/actor_distribution": (lambda: _actor_rnn(15), False),
    "rnn/greedy_q": (lambda: _greedy(_q_rnn()), True),
    "epsilon_greedy_q": (_epsilon_greedy, False),
    "gaussian_actor": (_gaussian, False),
    "ou_noise_actor": (lambda: _ou(_actor()), False),
    "ou_noise/rnn_greedy": (lambda: _ou(_greedy(_actor_rnn(16))), False),
    "random_tf/nested": (_random_nested, False),
    "mixture": (_mixture, False),
    "mixture/stateful": (_mixture_stateful, False),
}


#: Kinds whose graphs need ops LiteRT's builtins lack (float64 fills and broadcasts).
LITERT_UNSUPPORTED = frozenset({"random_tf/nested"})
LITERT = sorted(k for k in KINDS if k not in LITERT_UNSUPPORTED)


def backends(kind: str) -> tuple[str, ...]:
    """The runtime backends a kind's bundle can be loaded with."""
    return ("onnx", "tf") if kind in LITERT_UNSUPPORTED else ("onnx", "litert", "tf")


def live(kind: str):
    """A fresh TF policy of ``kind`` (same weights every time)."""
    return KINDS[kind][0]()


_ROOT: list[Path] = []


def _root() -> Path:
    """This process's own folder (tests/runtimes/serving/bundles.py exports into it)."""
    if not _ROOT:
        path = Path(tempfile.mkdtemp(prefix="runtime-bundles-"))
        atexit.register(shutil.rmtree, path, True)
        _ROOT.append(path)
    return _ROOT[0]


@functools.cache
def bundle(kind: str) -> Path:
    """The bundle of ``kind``, exported once per test run."""
    from exporters.export import export_policy

    formats = ("saved_model", "onnx") + (() if kind in LITERT_UNSUPPORTED else ("litert",))
    return run_cache.shared(
        "runtime-" + kind.replace("/", "-"),
        lambda to: export_policy(
            live(kind),
            to,
            formats=formats,
            train_step=7,
            metadata={"kind": kind, "source": "tests"},
        ),
    )


@functools.cache
def _template(kind: str, backend: str, seed: int):
    import runtimes

    return runtimes.load_policy(bundle(kind), backend, seed=seed)


def load(kind: str, backend: str, seed: int = 0):
    """A freshly loaded (onnx, litert) or copied (tf) runtime policy of ``kind``."""
    import runtimes

    if backend in ("onnx", "litert"):
        return runtimes.load_policy(bundle(kind), backend, seed=seed)
    return _template(kind, backend, seed).copy()


def _case(kind: str, backend: str, deterministic: bool) -> PolicyCase:
    seed = 100 + sorted(KINDS).index(kind)
    return PolicyCase(
        f"runtime/{backend}/{kind}",
        functools.partial(load, kind, backend, seed),
        deterministic=deterministic,
        marks=(pytest.mark.slow,),
    )


CASES = [
    _case(kind, backend, deterministic)
    for kind, (_, deterministic) in KINDS.items()
    for backend in backends(kind)
]
