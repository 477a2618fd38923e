"""Which of TF-Agents' tests run against our modules, and what each is expected to do.

- ``FILES``: the test files of the modules this project mirrors (issue 23's list); every
  other test file of the wheel (bandits, agents, drivers, environments, replay buffers,
  policy saving, gin, ...) is out of scope and not collected.
- ``DESELECTED``: tests of those files that test something out of scope (TF1 graph mode,
  unmirrored modules, bandit specs); not collected, each with why.
- ``XFAIL``: tests that check a deliberate difference from TF-Agents; each is a strict
  xfail naming its entry in docs/tf-agents-differences.md, so it fails once the
  difference disappears.

Test ids are ``<file>::<Class>::<test>`` with ``<file>`` the wheel path under
``tf_agents/``; a key ending in ``*`` matches every test id it starts.
"""

from __future__ import annotations

FILES = (
    "specs/array_spec_test.py",
    "specs/tensor_spec_test.py",
    "trajectories/time_step_test.py",
    "trajectories/policy_step_test.py",
    "trajectories/trajectory_test.py",
    "policies/tf_policy_test.py",
    "policies/random_py_policy_test.py",
    "policies/random_tf_policy_test.py",
    "policies/scripted_py_policy_test.py",
    "policies/fixed_policy_test.py",
    "policies/greedy_policy_test.py",
    "policies/epsilon_greedy_policy_test.py",
    "policies/q_policy_test.py",
    "policies/actor_policy_test.py",
    "policies/gaussian_policy_test.py",
    "policies/ou_noise_policy_test.py",
    "policies/py_tf_policy_test.py",
    "networks/encoding_network_test.py",
    "networks/q_network_test.py",
    "networks/actor_distribution_network_test.py",
    "networks/value_network_test.py",
    "networks/q_rnn_network_test.py",
    "networks/actor_distribution_rnn_network_test.py",
    "networks/value_rnn_network_test.py",
    "utils/nest_utils_test.py",
)

#: Tests that capture file descriptor 1 themselves (tf.test's captureWritesToStream, to
#: read what tf.print wrote): pytest's own capture is off while they run, or it would
#: take the output first.
UNCAPTURED = (
    "trajectories/time_step_test.py::TFTimeStepTest::testPrintFormat",
    "trajectories/trajectory_test.py::TrajectoryTest::testPrintFormat",
)

_DRIVERS = "drivers and TF environments are not mirrored (a driver over a TFPyEnvironment)"
_BANDITS = "bandit policies and their per-arm features and policy types are not mirrored"

#: test id (or prefix*) -> why it is not collected.
DESELECTED: dict[str, str] = {
    "trajectories/trajectory_test.py::TrajectoryTest::"
    "testToTransitionHandlesTrajectoryFromDriverCorrectly": _DRIVERS,
    "trajectories/trajectory_test.py::TrajectoryTest::testToTransitionSpec": _DRIVERS,
    "policies/random_tf_policy_test.py::RandomTFPolicyTest::testNumActions_*": _BANDITS,
}

#: test id (or prefix*) -> the id of its line in docs/tf-agents-differences.md.
XFAIL: dict[str, str] = {}
