"""Time steps and policy steps (TF-free)."""

from toolkit.trajectories.policy_step import PolicyStep
from toolkit.trajectories.time_step import (
    StepType,
    TimeStep,
    restart,
    termination,
    time_step_spec,
    transition,
    truncation,
)

__all__ = [
    "PolicyStep",
    "StepType",
    "TimeStep",
    "restart",
    "termination",
    "time_step_spec",
    "transition",
    "truncation",
]
