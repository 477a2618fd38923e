"""One error hierarchy: every exception class in toolkit/errors.py; input errors too."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from tests.subprocess_utils import ROOT
from toolkit import errors
from toolkit.errors import ToolkitError


def test_every_exception_class_lives_in_errors_py():
    found = []
    for package in ("toolkit", "exporters", "runtimes"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if path == ROOT / "toolkit" / "errors.py":
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ClassDef) and any(
                    (getattr(b, "id", None) or getattr(b, "attr", "")).endswith(
                        ("Error", "Exception")
                    )
                    for b in node.bases
                ):
                    found.append(f"{Path(path).relative_to(ROOT)}:{node.name}")
    assert found == []


def test_replay_buffer_input_errors():
    from toolkit.replay_buffer import ReplayBuffer
    from toolkit.specs import array_spec

    spec = {"x": array_spec.ArraySpec((2,), np.float32)}
    with pytest.raises(errors.ArgumentError, match="capacity: expected a positive int, got 0"):
        ReplayBuffer(spec, capacity=0)
    buffer = ReplayBuffer(spec, capacity=4)
    with pytest.raises(errors.EmptyBufferError, match="sample: the replay buffer is empty"):
        buffer.sample(2)
    assert issubclass(errors.ArgumentError, ValueError)
    assert issubclass(errors.EmptyBufferError, ValueError)


def test_driver_and_gym_adapter_input_errors():
    import gymnasium

    from toolkit.environments import driver, gym_adapter
    from toolkit.policies.random_py_policy import RandomPyPolicy

    env = gym_adapter.GymEnvironment("CartPole-v1")
    policy = RandomPyPolicy(env.time_step_spec(), env.action_spec())
    with pytest.raises(ToolkitError, match="Driver: expected max_steps or max_episodes"):
        driver.Driver(env, policy)
    with pytest.raises(errors.ArgumentTypeError, match="need an environment id, not an env"):
        gym_adapter.GymEnvironment(gymnasium.make("CartPole-v1"), render_mode="rgb_array")
    assert issubclass(errors.ArgumentTypeError, TypeError)
    with pytest.raises(errors.ArgumentError, match="num_envs: expected a positive int"):
        gym_adapter.GymVectorEnvironment("CartPole-v1", 0)
