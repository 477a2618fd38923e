"""The TF-Agents API of issue 23: update() of every policy kind, tracking containers,
messages of the checks added for TF-Agents' semantics.

TF-Agents' own tests of the same modules run in tests/tf_agents_compat; these are ours.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp
import tf_keras

from toolkit import nest
from toolkit.errors import (
    ActionDtypeError,
    NoAllowedActionError,
    SpecError,
    SpecMismatchError,
    SpecTypeError,
)
from toolkit.networks.actor_distribution_network import ActorDistributionNetwork
from toolkit.networks.actor_distribution_rnn_network import ActorDistributionRnnNetwork
from toolkit.networks.actor_network import ActorNetwork
from toolkit.networks.network import Network
from toolkit.networks.q_network import QNetwork
from toolkit.networks.q_rnn_network import QRnnNetwork
from toolkit.policies import (
    actor_policy,
    epsilon_greedy_policy,
    fixed_policy,
    gaussian_policy,
    greedy_policy,
    mixture_policy,
    ou_noise_policy,
    py_tf_policy,
    q_policy,
    random_tf_policy,
    tf_policy,
)
from toolkit.specs import array_spec, tensor_spec
from toolkit.trajectories import time_step as ts
from toolkit.trajectories.policy_step import PolicyInfo, PolicyStep

tfd = tfp.distributions

OBS = tensor_spec.TensorSpec((3,), tf.float32, name="observation")
TIME_STEP_SPEC = ts.time_step_spec(OBS)
DISCRETE = tensor_spec.BoundedTensorSpec((), tf.int32, 0, 2, name="move")
CONTINUOUS = tensor_spec.BoundedTensorSpec((2,), tf.float32, -1.0, 1.0, name="force")


class LazyActor(Network):
    """A user network that builds its layer on the first call (TF-Agents' usual style)."""

    def __init__(self, input_tensor_spec, output_tensor_spec, name=None):
        super().__init__(input_tensor_spec, state_spec=(), name=name)
        self._output_tensor_spec = output_tensor_spec
        self._dense = tf_keras.layers.Dense(2, activation="tanh")

    def call(self, observation, step_type=None, network_state=()):
        return self._dense(observation), network_state


def _policy(kind: str):
    """A fresh policy of ``kind``: its networks get new random weights."""
    q = lambda: q_policy.QPolicy(  # noqa: E731
        TIME_STEP_SPEC, DISCRETE, QNetwork(OBS, DISCRETE, fc_layer_params=(4,))
    )
    actor = lambda: actor_policy.ActorPolicy(  # noqa: E731
        TIME_STEP_SPEC, CONTINUOUS, ActorNetwork(OBS, CONTINUOUS, fc_layer_params=(4,))
    )
    builders = {
        "q": q,
        "q_rnn": lambda: q_policy.QPolicy(
            TIME_STEP_SPEC, DISCRETE, QRnnNetwork(OBS, DISCRETE, lstm_size=(3,))
        ),
        "actor": actor,
        "lazy_actor": lambda: actor_policy.ActorPolicy(
            TIME_STEP_SPEC, CONTINUOUS, LazyActor(OBS, CONTINUOUS)
        ),
        "actor_distribution": lambda: actor_policy.ActorPolicy(
            TIME_STEP_SPEC,
            CONTINUOUS,
            ActorDistributionNetwork(OBS, CONTINUOUS, fc_layer_params=(4,)),
        ),
        "actor_distribution_rnn": lambda: actor_policy.ActorPolicy(
            TIME_STEP_SPEC,
            CONTINUOUS,
            ActorDistributionRnnNetwork(OBS, CONTINUOUS, lstm_size=(3,)),
        ),
        "greedy": lambda: greedy_policy.GreedyPolicy(q()),
        "epsilon_greedy": lambda: epsilon_greedy_policy.EpsilonGreedyPolicy(q(), epsilon=0.5),
        "gaussian": lambda: gaussian_policy.GaussianPolicy(actor(), scale=0.3),
        "ou_noise": lambda: ou_noise_policy.OUNoisePolicy(actor(), ou_stddev=0.3),
        "mixture": lambda: mixture_policy.MixturePolicy(
            [q(), random_tf_policy.RandomTFPolicy(TIME_STEP_SPEC, DISCRETE)], [0.5, 0.5]
        ),
        "fixed": lambda: fixed_policy.FixedPolicy(
            np.array([0.5, -0.5], np.float32), TIME_STEP_SPEC, CONTINUOUS
        ),
        "random": lambda: random_tf_policy.RandomTFPolicy(TIME_STEP_SPEC, CONTINUOUS),
    }
    return builders[kind]()


def _act(policy, time_step):
    state = policy.get_initial_state(time_step.step_type.shape[0])
    return policy.action(time_step, state, seed=5).action


@pytest.mark.parametrize(
    "kind",
    [
        "q",
        "q_rnn",
        "actor",
        "lazy_actor",
        "actor_distribution",
        "actor_distribution_rnn",
        "greedy",
        "epsilon_greedy",
        "gaussian",
        "ou_noise",
        "mixture",
        "fixed",
        "random",
    ],
)
def test_update_copies_every_variable_of_every_policy_kind(kind):
    target, source = _policy(kind), _policy(kind)
    time_step = ts.restart(
        tf.constant(np.random.default_rng(0).normal(size=(6, 3)), tf.float32), batch_size=6
    )
    has_variables = bool(source.variables())
    if kind in ("lazy_actor",):  # the bug: a lazily built network had none
        assert len(source.variables()) == 2
    if has_variables:  # two builds, two random initializations
        assert not all(
            np.array_equal(t.numpy(), s.numpy())
            for t, s in zip(target.variables(), source.variables(), strict=True)
        )
    target.update(source)
    for t, s in zip(target.variables(), source.variables(), strict=True):
        np.testing.assert_array_equal(t.numpy(), s.numpy())
    np.testing.assert_array_equal(_act(target, time_step), _act(source, time_step))


def test_update_by_name_and_non_trainable_rate():
    target, source = _policy("q"), _policy("q")
    counter_t = tf.Variable(1, dtype=tf.int64, trainable=False)
    counter_s = tf.Variable(9, dtype=tf.int64, trainable=False)
    frozen_t = tf.Variable(0.0, trainable=False)
    frozen_s = tf.Variable(1.0, trainable=False)
    target._extra, source._extra = [counter_t, frozen_t], [counter_s, frozen_s]
    before = {v.name: v.numpy() for v in target.variables() if v.trainable}
    theirs = {v.name: v.numpy() for v in source.variables() if v.trainable}
    target.update(source, tau=0.5, tau_non_trainable=0.25, sort_variables_by_name=True)
    assert counter_t.numpy() == 9  # integers are copied
    assert frozen_t.numpy() == pytest.approx(0.25)
    for variable in target.variables():
        if variable.trainable:
            expected = 0.5 * before[variable.name] + 0.5 * theirs[variable.name]
            np.testing.assert_allclose(variable.numpy(), expected, rtol=1e-6)
    kept = [v.numpy() for v in target.variables()]
    target.update(source, tau=0.0, tau_non_trainable=0.0)
    for variable, old in zip(target.variables(), kept, strict=True):
        if variable.dtype.is_floating:
            np.testing.assert_array_equal(variable.numpy(), old)
    with pytest.raises(SpecError, match=r"^tau_non_trainable: expected a value in \[0, 1\], got 2"):
        target.update(source, tau_non_trainable=2.0)


class ListOfDistributionsPolicy(tf_policy.TFPolicy):
    """Keeps a list of distributions on self: tf.Module wraps it in a ListWrapper."""

    def __init__(self):
        specs = [
            tensor_spec.BoundedTensorSpec((), tf.float32, -5.0, 5.0, name=f"a{i}") for i in (0, 1)
        ]
        super().__init__(TIME_STEP_SPEC, specs)
        self._fixed = [tfd.Normal(0.0, 1.0), tfd.Normal(3.0, 0.1)]

    def _distribution(self, time_step, policy_state):
        return PolicyStep(self._fixed, policy_state, ())


def test_tracking_containers_are_the_containers_they_hold():
    policy = ListOfDistributionsPolicy()
    assert type(policy._fixed).__name__ == "ListWrapper"
    assert len(nest.flatten(policy._fixed)) == 2
    step = policy.action(ts.restart(tf.zeros([4, 3]), batch_size=4), seed=1)
    assert isinstance(step.action, list) and step.action[1].shape == (4,)
    assert np.all(np.abs(step.action[1].numpy() - 3.0) < 1.0)
    module = tf.Module()
    module.spec = {"b": tf.TensorSpec((), tf.float32), "a": [tf.TensorSpec((2,), tf.int32)]}
    assert nest.flatten_with_paths(module.spec) == [
        ("a/0", tf.TensorSpec((2,), tf.int32)),
        ("b", tf.TensorSpec((), tf.float32)),
    ]
    module.values = [3, 4]  # a ListWrapper: it pairs with a plain list
    assert nest.map_structure(lambda a, b: a + b, [1, 2], module.values) == [4, 6]


def test_log_probabilities_come_in_a_policy_info_like_tf_agents():
    policy = q_policy.QPolicy(
        TIME_STEP_SPEC,
        DISCRETE,
        QNetwork(OBS, DISCRETE, fc_layer_params=(4,)),
        emit_log_probability=True,
    )
    assert isinstance(policy.info_spec, PolicyInfo)
    step = policy.action(ts.restart(tf.zeros([2, 3]), batch_size=2), seed=3)
    assert isinstance(step.info, PolicyInfo)
    assert step.info.log_probability is step.info["log_probability"]
    assert step.info.get("log_probability") is step.info.log_probability
    with pytest.raises(KeyError):
        step.info["entropy"]
    assert tf_policy.without_log_probability(policy.info_spec) == ()


def test_actions_of_another_dtype_are_a_type_error_naming_the_leaf():
    class WrongDtype(tf_policy.TFPolicy):
        def _action(self, time_step, policy_state, seed):
            return PolicyStep(tf.zeros(tf.shape(time_step.step_type), tf.int64))

    policy = WrongDtype(TIME_STEP_SPEC, DISCRETE)
    with pytest.raises(
        ActionDtypeError,
        match=r"^action: expected dtype int32, got int64 \(WrongDtype._action produced an action "
        r"with a dtype that doesn't match its action_spec\)$",
    ):
        policy.action(ts.restart(tf.zeros([2, 3]), batch_size=2))
    assert issubclass(ActionDtypeError, TypeError)


def test_spec_shaped_outputs_stand_for_every_batch_entry():
    class Constant(tf_policy.TFPolicy):
        def _action(self, time_step, policy_state, seed):
            return PolicyStep(tf.constant([0.5, -0.5]))

    step = Constant(TIME_STEP_SPEC, CONTINUOUS).action(ts.restart(tf.zeros([3, 3]), batch_size=3))
    np.testing.assert_array_equal(step.action, [[0.5, -0.5]] * 3)


def test_q_policy_refuses_a_network_of_another_action_spec():
    class WithSpec(QNetwork):
        @property
        def action_spec(self):
            return tensor_spec.BoundedTensorSpec((2,), tf.int32, 0, 2)

    with pytest.raises(SpecMismatchError, match=r"^q_network: expected an action_spec compatible"):
        q_policy.QPolicy(TIME_STEP_SPEC, DISCRETE, WithSpec(OBS, DISCRETE, fc_layer_params=()))


def test_random_tf_policy_stationary_mask_and_unbounded_integers():
    policy = random_tf_policy.RandomTFPolicy(
        TIME_STEP_SPEC, DISCRETE, stationary_mask=[1, 0, 1], emit_log_probability=True
    )
    step = policy.action(ts.restart(tf.zeros([500, 3]), batch_size=500), seed=2)
    assert set(np.unique(step.action)) == {0, 2}
    np.testing.assert_allclose(step.info.log_probability, np.log(0.5), rtol=1e-6)
    with pytest.raises(SpecMismatchError, match=r"^stationary_mask: expected 3 entries"):
        random_tf_policy.RandomTFPolicy(TIME_STEP_SPEC, DISCRETE, stationary_mask=[1, 0])
    unbounded = tensor_spec.TensorSpec((2,), tf.int64)
    wide = random_tf_policy.RandomTFPolicy(TIME_STEP_SPEC, unbounded).action(
        ts.restart(tf.zeros([200, 3]), batch_size=200), seed=4
    )
    assert wide.action.dtype == tf.int64 and np.abs(wide.action.numpy()).max() > 2**40


def test_int_shapes_and_unknown_dtypes_are_type_errors():
    with pytest.raises(
        SpecTypeError, match=r"^expected a shape \(a tuple of ints\), got the int 3$"
    ):
        array_spec.ArraySpec(3, np.int32)
    with pytest.raises(TypeError, match="unknown dtype '32'"):
        array_spec.ArraySpec((1,), "32")
    assert not array_spec.check_arrays_nest(np.array([1]), "a string")
    assert array_spec.BoundedArraySpec((), np.float32, 0.0, 1.0).num_values is None


def test_none_rewards_are_refused_naming_the_leaf():
    with pytest.raises(SpecMismatchError, match=r"^reward/1: expected a number, got None"):
        ts.transition((1, 2), (3.0, None))


def test_conv_encoding_network_layers_and_weight_decay():
    image = tensor_spec.TensorSpec((8, 8, 3), tf.float32)
    net = QNetwork(
        image,
        DISCRETE,
        conv_layer_params=[(4, 3, 2)],
        fc_layer_params=(6,),
        dropout_layer_params=[0.5],
        weight_decay_params=[0.01],
    )
    encoder = net._encoder
    assert [type(layer).__name__ for layer in encoder.layers] == [
        "Conv2D",
        "Flatten",
        "Dense",
        "PermanentDropout",
    ]
    assert [tuple(v.shape) for v in net.variables] == [
        (3, 3, 3, 4),
        (4,),
        (36, 6),
        (6,),
        (6, 3),
        (3,),
    ]
    q_values, _ = net(tf.ones([2, 8, 8, 3]))
    assert q_values.shape == (2, 3)
    assert len(net.losses) == 1 and float(net.losses[0]) > 0
    with pytest.raises(SpecError, match=r"conv_layer_params\[0\]: expected \(filters"):
        QNetwork(image, DISCRETE, conv_layer_params=[(4, 3)])
    with pytest.raises(SpecError, match=r"dropout_layer_params: expected one entry per fully"):
        QNetwork(image, DISCRETE, fc_layer_params=(6,), dropout_layer_params=[0.1, 0.2])


def test_py_tf_policy_keeps_the_compat_update():
    target, source = _policy("q"), _policy("q")
    py_target, py_source = py_tf_policy.PyTFPolicy(target), py_tf_policy.PyTFPolicy(source)
    py_target.update(py_source)
    step = ts.restart(np.ones((4, 3), np.float32), batch_size=4)
    np.testing.assert_array_equal(
        py_target.action(step, seed=1).action, py_source.action(step, seed=1).action
    )


def test_specs_package_gives_tensor_specs_as_tf_agents_specs():
    from toolkit import specs

    assert specs.TensorSpec is tensor_spec.TensorSpec
    assert specs.BoundedTensorSpec is tensor_spec.BoundedTensorSpec
    assert specs.tensor_spec is tensor_spec
    assert specs.ArraySpec is array_spec.ArraySpec
    with pytest.raises(AttributeError, match="module 'toolkit.specs' has no attribute 'Nope'"):
        specs.Nope  # noqa: B018


def test_distribution_outputs_are_distribution_specs_v2():
    from toolkit.distributions.utils import (
        DistributionSpecV2,
        Params,
        get_parameters,
        make_from_parameters,
    )

    discrete = ActorDistributionNetwork(OBS, DISCRETE, fc_layer_params=(4,))
    spec = discrete.create_variables()
    assert isinstance(spec, DistributionSpecV2)
    assert spec.event_shape == () and spec.dtype == tf.int32
    assert spec.event_spec == tf.TensorSpec((), tf.int32)
    # the logits' batch of one is gone: one entry's three logits
    logits = spec.parameters.params["logits"]
    assert logits == tf.TensorSpec((3,), tf.float32)
    assert discrete.create_variables() is spec
    continuous = ActorDistributionNetwork(OBS, CONTINUOUS, fc_layer_params=(4,))
    assert continuous.create_variables().event_shape == (2,)
    # TF-Agents' network_test's expected spec of a Normal over (3,)
    normal = tfd.Normal(loc=tf.zeros([1, 3]), scale=tf.ones([1, 3]))
    params = get_parameters(normal)
    assert params.type_ is tfd.Normal and set(params.params) == {"loc", "scale"}
    again = make_from_parameters(params)
    assert isinstance(again, tfd.Normal)
    np.testing.assert_array_equal(again.scale.numpy(), np.ones([1, 3]))
    expected = DistributionSpecV2(
        (),
        tf.float32,
        Params(tfd.Normal, {"loc": tf.TensorSpec((3,)), "scale": tf.TensorSpec((3,))}),
    )
    assert QNetwork(OBS, DISCRETE).create_variables() == tf.TensorSpec((3,), tf.float32)
    assert expected != spec and expected == DistributionSpecV2(
        [], "float32", Params(tfd.Normal, dict(expected.parameters.params))
    )
    with pytest.raises(TypeError, match="expected tf.TypeSpec parameters, got a tensor"):
        DistributionSpecV2((), tf.float32, params)
    with pytest.raises(TypeError, match=r"expected an object with a `parameters` dict"):
        get_parameters(3)


def test_shifted_categorical_of_probs_as_tf_agents():
    from toolkit.distributions.shifted_categorical import ShiftedCategorical
    from toolkit.distributions.utils import params_from_distribution

    probs = np.array([[0.1, 0.6, 0.3]], np.float32)
    of_probs = ShiftedCategorical(probs=probs, shift=-1)
    of_logits = ShiftedCategorical(np.log(probs), shift=-1)
    values = tf.constant([[-2], [-1], [0], [1], [2]])
    np.testing.assert_allclose(of_probs.prob(values), of_logits.prob(values), rtol=1e-6)
    np.testing.assert_allclose(of_probs.cdf(values)[:, 0], [0.0, 0.1, 0.7, 1.0, 1.0], rtol=1e-6)
    assert of_probs.mode().numpy().tolist() == [0] and of_probs.logits is None
    spec = tensor_spec.BoundedTensorSpec((), tf.int32, -1, 1)
    exported = params_from_distribution(of_probs, spec, batch_size=1)
    assert exported.shift == -1
    np.testing.assert_allclose(tf.nn.softmax(exported.params["logits"]).numpy(), probs, rtol=1e-6)
    with pytest.raises(ValueError, match="expected exactly one of logits and probs, got both"):
        ShiftedCategorical(np.log(probs), probs)
    with pytest.raises(ValueError, match="expected exactly one of logits and probs, got neither"):
        ShiftedCategorical()


def test_a_wrapper_of_a_masked_policy_traces_its_params_without_the_mask_check():
    from toolkit.action_masks import MaskSplitter

    features = tensor_spec.TensorSpec((3,), tf.float32, name="observation/features")
    mask = tensor_spec.BoundedTensorSpec((3,), tf.int8, 0, 1, name="observation/mask")
    observation = {"features": features, "mask": mask}
    masked = q_policy.QPolicy(
        ts.time_step_spec(observation),
        DISCRETE,
        QNetwork(features, DISCRETE, fc_layer_params=(4,)),
        observation_and_action_constraint_splitter=MaskSplitter("features", "mask"),
    )
    greedy = greedy_policy.GreedyPolicy(masked)
    blocked = np.array([[1, 0, 1], [0, 0, 0]], np.int8)
    step = ts.restart({"features": tf.zeros([2, 3]), "mask": tf.constant(blocked)}, batch_size=2)
    # The public calls refuse the blocked row, also where the wrapper asks the Q policy...
    with pytest.raises(NoAllowedActionError, match=r"^observation/mask\[1\]: expected at least"):
        greedy.distribution(step)

    # ...but what an export traces gives the parameters (the runtime checks the mask).
    @tf.function
    def exported(time_step):
        return dict(greedy.distribution_params(time_step)[0].params)

    params = exported(step)
    graph = exported.get_concrete_function(step).graph
    assert not [op.name for op in graph.get_operations() if "check_action_mask" in op.name]
    assert params and all(value.shape[0] == 2 for value in params.values())
    # The same trace of the Q policy itself has the check (it is called from within).
    checked = tf.function(lambda time_step: masked.distribution(time_step).action.logits)
    ops = checked.get_concrete_function(step).graph.get_operations()
    assert [op.name for op in ops if "check_action_mask" in op.name]
