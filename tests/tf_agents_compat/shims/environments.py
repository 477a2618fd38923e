"""Stands for ``tf_agents.environments.suite_gym`` and ``tf_py_environment`` in TF-Agents'
rewritten network tests, which only build a network from a gym task's specs and call it
on its first time step (our code, on ``toolkit.environments.gym_adapter``)."""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from toolkit import nest
from toolkit.environments.gym_adapter import GymEnvironment
from toolkit.specs import tensor_spec


def load(environment_name: str) -> GymEnvironment:
    """The gymnasium task as a Python environment."""
    return GymEnvironment(environment_name)


class TFPyEnvironment:
    """A Python environment seen through tensor specs and a batch of one tensor step."""

    def __init__(self, environment: GymEnvironment):
        self._env = environment

    def observation_spec(self) -> Any:
        return tensor_spec.from_spec(self._env.observation_spec())

    def action_spec(self) -> Any:
        return tensor_spec.from_spec(self._env.action_spec())

    def time_step_spec(self) -> Any:
        return tensor_spec.from_spec(self._env.time_step_spec())

    def current_time_step(self) -> Any:
        step = self._env.current_time_step() or self._env.reset(seed=0)
        return nest.map_structure(lambda x: tf.expand_dims(tf.convert_to_tensor(x), 0), step)
