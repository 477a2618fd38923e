"""The seed tutorial's policy examples, in TF2 form.

Run: ``python examples/policies_tour.py``. Each section mirrors one example of
``policies_tutorial.md`` and prints what it printed.
"""

from __future__ import annotations

import numpy as np

from toolkit.policies import random_py_policy, scripted_py_policy
from toolkit.specs import array_spec


def python_random_policy() -> None:
    """Python policies, example 1: RandomPyPolicy ignores the time step."""
    print("== Random Python policy ==")
    action_spec = array_spec.BoundedArraySpec((2,), np.int32, -10, 10)
    # The seed asks whether `my` can go; it can.
    policy = random_py_policy.RandomPyPolicy(time_step_spec=None, action_spec=action_spec)
    time_step = None
    print(policy.action(time_step))
    print(policy.action(time_step))


def python_scripted_policy() -> None:
    """Python policies, example 2: ScriptedPyPolicy plays back (num_repeats, action)."""
    print("== Scripted Python policy ==")
    action_spec = array_spec.BoundedArraySpec((2,), np.int32, -10, 10)
    action_script = [
        (1, np.array([5, 2], dtype=np.int32)),
        (0, np.array([0, 0], dtype=np.int32)),  # zero repeats: skipped
        (2, np.array([1, 2], dtype=np.int32)),
        (1, np.array([3, 4], dtype=np.int32)),
    ]
    policy = scripted_py_policy.ScriptedPyPolicy(
        time_step_spec=None, action_spec=action_spec, action_script=action_script
    )
    policy_state = policy.get_initial_state()
    time_step = None
    print("Executing scripted policy...")
    action_step = policy.action(time_step, policy_state)
    print(action_step)
    action_step = policy.action(time_step, action_step.state)
    print(action_step)
    action_step = policy.action(time_step, action_step.state)
    print(action_step)
    print("Resetting my_scripted_py_policy...")
    policy_state = policy.get_initial_state()
    action_step = policy.action(time_step, policy_state)
    print(action_step)


SECTIONS = [python_random_policy, python_scripted_policy]


def main() -> None:
    for section in SECTIONS:
        section()
        print()


if __name__ == "__main__":
    main()
