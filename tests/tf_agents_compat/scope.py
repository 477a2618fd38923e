"""Which of TF-Agents' tests run against our modules, and what each is expected to do.

- ``FILES``: the test files of the modules this project mirrors (issue 23's list, and
  ``distributions`` for ShiftedCategorical and DistributionSpecV2's Params); every
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
    "specs/specs_test.py",
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
    "distributions/shifted_categorical_test.py",
    "distributions/utils_test.py",
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
_TF1 = "TF1 only: graphs, sessions or placeholders (this project is TF2, eager or tf.function)"
_FEATURE_COLUMNS_V1 = "TF1's Keras DenseFeatures (feature columns v1) are TF1 only"
_DIST_UTILS = (
    "not mirrored: scale_distribution_to_spec and SquashToSpecNormal (NormalProjectionNetwork's "
    "scale_distribution=True; continuous projections here are 'normal' and 'tanh_normal')"
)

#: test id (or prefix*) -> why it is not collected.
DESELECTED: dict[str, str] = {
    "trajectories/trajectory_test.py::TrajectoryTest::"
    "testToTransitionHandlesTrajectoryFromDriverCorrectly": _DRIVERS,
    "trajectories/trajectory_test.py::TrajectoryTest::testToTransitionSpec": _DRIVERS,
    "policies/random_tf_policy_test.py::RandomTFPolicyTest::testNumActions_*": _BANDITS,
    "policies/epsilon_greedy_policy_test.py::EpsilonGreedyPolicyTest::testInfoSpec": _BANDITS,
    "policies/epsilon_greedy_policy_test.py::EpsilonGreedyPolicyTest::testInfoFromGreedy": (
        _BANDITS
    ),
    "specs/tensor_spec_test.py::ToPlaceholderTest::*": _TF1,
    "utils/nest_utils_test.py::NestedTensorsTest::"
    "testFlattenMultiBatchedNestedTensorsWithPartiallyKnown*": _TF1,
    "utils/nest_utils_test.py::NestedTensorsTest::"
    "testFlattenMultiBatchedNestedTensorsWithSparseTensor": _TF1,
    # PyTFPolicy's tests run it in TF1 sessions; testBuild is the one eager test.
    "policies/py_tf_policy_test.py::PyTFPolicyTest::testAction*": _TF1,
    "policies/py_tf_policy_test.py::PyTFPolicyTest::testAssignSession*": _TF1,
    "policies/py_tf_policy_test.py::PyTFPolicyTest::testDeferredBatching*": _TF1,
    "policies/py_tf_policy_test.py::PyTFPolicyTest::testRaiseValueErrorWithoutSession": _TF1,
    "policies/py_tf_policy_test.py::PyTFPolicyTest::testSave*": _TF1,
    "policies/py_tf_policy_test.py::PyTFPolicyTest::testZeroState*": _TF1,
    "networks/encoding_network_test.py::EncodingNetworkTest::testDenseFeaturesV1RaisesError": (
        _FEATURE_COLUMNS_V1
    ),
    "distributions/utils_test.py::UtilsTest::testScaleDistribution": _DIST_UTILS,
    "distributions/utils_test.py::UtilsTest::testSquashToSpecNormal*": _DIST_UTILS,
    # A module-level helper returning the file's parameterization; pytest takes its name
    # for a test's.
    "policies/actor_policy_test.py::test_cases": "a helper of the test file, not a test",
}

#: test id (or prefix*) -> the name of its line in docs/tf-agents-differences.md.
XFAIL: dict[str, str] = {
    # specs
    "specs/array_spec_test.py::BoundedArraySpecTest::testNotEqualDifferentMinimum": (
        "fractional-integer-bounds"
    ),
    "specs/array_spec_test.py::BoundedArraySpecTest::testNotEqualOtherClass": (
        "fractional-integer-bounds"
    ),
    "specs/array_spec_test.py::BoundedArraySpecTest::testHandleInfLimits": "infinite-bounds",
    "specs/tensor_spec_test.py::FromSpecTest::testFromStringSpec": "string-dtypes",
    "specs/tensor_spec_test.py::BoundedTensorSpecSampleTest::"
    "testIntegerSamplesExcludeMaxOfDtypetf.int*": "inclusive-integer-max",
    # time steps and Python policies
    "policies/random_py_policy_test.py::RandomPyPolicyTest::"
    "testGeneratesBatchedActionsWithoutSpecifyingOuterDims": "time-step-outer-dims",
    "policies/random_py_policy_test.py::RandomPyPolicyTest::testMasking": "time-step-checked",
    "policies/scripted_py_policy_test.py::ScriptedPyPolicyTest::testChecksSpec*": (
        "script-checked-when-built"
    ),
    "policies/scripted_py_policy_test.py::ScriptedPyPolicyTest::testPolicyStateSpecIsEmpty": (
        "script-state-spec"
    ),
    # TF policies
    # (with epsilon 0 every action is the greedy one: those pass)
    **{
        f"policies/epsilon_greedy_policy_test.py::EpsilonGreedyPolicyTest::testEpsilon{kind}"
        f"{epsilon}": "seeded-actions"
        for kind in ("Fixed", "Tensor")
        for epsilon in ("0.2", "0.7", "1.0")
    },
    "policies/tf_policy_test.py::TfPolicyTest::testObservationsContainExtraFields": (
        "extra-observation-keys"
    ),
    "policies/tf_policy_test.py::TfPolicyTest::testValidateArgsDisabled": "empty-specs",
    "policies/q_policy_test.py::QPolicyTest::testActionWithinBounds": "q-policy-minimum",
    "policies/ou_noise_policy_test.py::OuNoisePolicyTest::testActionAddsOUNoise": (
        "ou-noise-state"
    ),
    "policies/ou_noise_policy_test.py::OuNoisePolicyTest::testActionIsInRange": "ou-noise-state",
    "policies/ou_noise_policy_test.py::OuNoisePolicyTest::testActionList": "ou-noise-state",
    # networks
    "networks/encoding_network_test.py::EncodingNetworkTest::"
    "test_preprocessing_layers_no_combiner_error": "default-combiner",
    "networks/encoding_network_test.py::EncodingNetworkTest::test_dict_spec_and_pre_processing": (
        "batched-network-inputs"
    ),
    "networks/q_rnn_network_test.py::QRnnNetworkTest::test_network_builds": (
        "lstm-state-per-layer"
    ),
    "networks/actor_distribution_rnn_network_test.py::ActorDistributionNetworkTest::"
    "testBuildsDynamicUnroll": "lstm-state-per-layer",
    "networks/value_rnn_network_test.py::ValueRnnNetworkTest::testBuilds": ("lstm-state-per-layer"),
}
