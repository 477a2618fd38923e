"""Tests of toolkit.networks: shapes, hand-checked outputs, resets, copies, checkpoints, ONNX.

Expected values come from numpy re-implementations of the layers (dense, LSTM cell,
Normal log-density) fed with the networks' own weights, or from hand-derived numbers.

Over 600 lines: one file for every network, sharing its fixtures.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp
import tf_keras

from toolkit.errors import SpecError, SpecMismatchError, StructureError, UnsupportedError
from toolkit.networks.actor_distribution_network import ActorDistributionNetwork
from toolkit.networks.actor_distribution_rnn_network import ActorDistributionRnnNetwork
from toolkit.networks.actor_network import ActorNetwork
from toolkit.networks.critic_network import CriticNetwork
from toolkit.networks.network import Network
from toolkit.networks.q_network import QNetwork
from toolkit.networks.q_rnn_network import QRnnNetwork
from toolkit.specs.array_spec import BoundedArraySpec
from toolkit.specs.tensor_spec import BoundedTensorSpec, TensorSpec
from toolkit.trajectories.time_step import StepType

OBS = TensorSpec((4,), tf.float32, name="obs")
ACTION_3 = BoundedTensorSpec((1,), tf.int32, minimum=-1, maximum=1, name="x")
FLOAT_ACTION = BoundedTensorSpec((3,), tf.float32, minimum=-1.0, maximum=3.0, name="a")
FIRST, MID, LAST = int(StepType.FIRST), int(StepType.MID), int(StepType.LAST)


def _relu(x):
    return np.maximum(x, 0.0)


def _dense(layer, x, activation=None):
    kernel, bias = (v.numpy() for v in layer.weights)
    y = x @ kernel + bias
    return activation(y) if activation else y


def _obs(batch, seed=0, shape=(4,)):
    return np.random.default_rng(seed).normal(size=(batch, *shape)).astype(np.float32)


def _softplus(x):
    return np.log1p(np.exp(x))


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


# --- QNetwork -------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(), (1,)])
@pytest.mark.parametrize("batch", [1, 3])
def test_q_network_output_shape_is_batch_by_num_actions(shape, batch):
    spec = BoundedTensorSpec(shape, tf.int32, minimum=-1, maximum=1)
    net = QNetwork(OBS, spec, fc_layer_params=(8,))
    q_values, state = net(_obs(batch))
    assert net.num_actions == 3
    assert q_values.shape == (batch, 3)
    assert state == ()


def test_q_network_dynamic_batch_in_tf_function():
    net = QNetwork(OBS, ACTION_3, fc_layer_params=(8,))

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32)])
    def q(observation):
        return net(observation)[0]

    assert q.get_concrete_function().structured_outputs.shape.as_list() == [None, 3]
    for batch in (1, 2, 7):
        np.testing.assert_allclose(q(_obs(batch)), net(_obs(batch))[0], rtol=1e-6, atol=1e-6)


def test_q_network_matches_numpy_forward_pass():
    net = QNetwork(OBS, ACTION_3, fc_layer_params=(6, 5))
    observation = _obs(4)
    hidden = _dense(net._encoder._fc_layers[0], observation, _relu)
    hidden = _dense(net._encoder._fc_layers[1], hidden, _relu)
    expected = _dense(net._q_layer, hidden)
    np.testing.assert_allclose(net(observation)[0], expected, rtol=1e-5, atol=1e-6)


def test_q_network_num_actions_mismatch_fails_at_construction():
    with pytest.raises(SpecError) as error:
        QNetwork(OBS, ACTION_3, num_actions=2)
    assert str(error.value) == (
        "QNetwork: num_actions=2 but action_spec 'x' has 3 actions (minimum -1, maximum 1)"
    )
    assert QNetwork(OBS, ACTION_3, num_actions=3, fc_layer_params=()).num_actions == 3


def test_q_network_accepts_array_specs():
    spec = BoundedArraySpec((), np.int64, minimum=2, maximum=6)
    net = QNetwork(OBS, spec, fc_layer_params=())
    assert net(_obs(2))[0].shape == (2, 5)


@pytest.mark.parametrize(
    ("action_spec", "message"),
    [
        (
            {"a": ACTION_3},
            "QNetwork: expected a single bounded integer action spec, got a nest",
        ),
        (
            BoundedTensorSpec((2,), tf.int32, 0, 3, name="pair"),
            "QNetwork: action_spec 'pair' must have shape () or (1,) (one discrete action), "
            "got (2,)",
        ),
        (
            BoundedTensorSpec((), tf.float32, 0.0, 1.0),
            "QNetwork: action_spec must have an integer dtype, got float32",
        ),
        (
            TensorSpec((), tf.int32, name="free"),
            "QNetwork: action_spec 'free' must be a bounded integer spec (BoundedTensorSpec), "
            "got TensorSpec",
        ),
    ],
)
def test_q_network_refuses_unsupported_action_specs(action_spec, message):
    with pytest.raises(SpecError, match=message.replace("(", r"\(").replace(")", r"\)")):
        QNetwork(OBS, action_spec)


def test_input_validation_names_path_expected_and_got():
    net = QNetwork(OBS, ACTION_3, fc_layer_params=())
    with pytest.raises(
        SpecMismatchError,
        match=r"observation: expected a batch of shape "
        r"\[B\] \+ \(4,\), got shape \(2, 5\)",
    ):
        net(np.zeros((2, 5), np.float32))
    with pytest.raises(
        SpecMismatchError, match=r"observation: expected a batch .* got shape \(4,\)"
    ):
        net(np.zeros((4,), np.float32))
    with pytest.raises(
        SpecMismatchError, match="observation: expected dtype float32, got dtype int32"
    ):
        net(tf.zeros((2, 4), tf.int32))
    # numpy values take the spec's dtype, as documented.
    assert net(np.zeros((2, 4), np.float64))[0].dtype == tf.float32

    dict_net = QNetwork(
        {"a": TensorSpec((2,), tf.float32), "b": TensorSpec((), tf.float32)},
        ACTION_3,
        fc_layer_params=(),
    )
    with pytest.raises(
        StructureError,
        match=r"observation: expected keys \['a', 'b'\], "
        r"got missing \['b'\]",
    ):
        dict_net({"a": np.zeros((1, 2))})


# --- a user-defined network, seed style -------------------------------------------------


class SeedStyleQNetwork(Network):
    """The TF-Agents policies tutorial's hand-written QNetwork: one Dense layer, built lazily."""

    def __init__(self, input_tensor_spec, action_spec, num_actions=3, name=None):
        super().__init__(input_tensor_spec, state_spec=(), name=name)
        self._dense = tf_keras.layers.Dense(num_actions)

    def call(self, inputs, step_type=None, network_state=()):
        return self._dense(tf.cast(inputs, tf.float32)), network_state


def test_user_subclass_create_variables_and_copy():
    net = SeedStyleQNetwork(OBS, ACTION_3, num_actions=3)
    assert net.variables == ()
    net.create_variables()
    assert [v.shape.as_list() for v in net.variables] == [[4, 3], [3]]
    copy = net.copy()
    assert [v.shape for v in copy.variables] == [v.shape for v in net.variables]
    assert not {id(v) for v in copy.variables} & {id(v) for v in net.variables}
    wider = net.copy(num_actions=5)
    wider.create_variables()
    assert [v.shape.as_list() for v in wider.variables] == [[4, 5], [5]]


@pytest.mark.parametrize(
    "build",
    [
        lambda: QNetwork(OBS, ACTION_3, fc_layer_params=(4,)),
        lambda: ActorNetwork(OBS, FLOAT_ACTION, fc_layer_params=(4,)),
        lambda: ActorDistributionNetwork(OBS, FLOAT_ACTION, fc_layer_params=(4,)),
        lambda: CriticNetwork((OBS, FLOAT_ACTION), observation_fc_layer_params=(4,)),
        lambda: QRnnNetwork(OBS, ACTION_3, lstm_size=(4,)),
        lambda: ActorDistributionRnnNetwork(OBS, FLOAT_ACTION, lstm_size=(4,)),
        lambda: SeedStyleQNetwork(OBS, ACTION_3),
    ],
    ids=["q", "actor", "actor_dist", "critic", "q_rnn", "actor_dist_rnn", "user"],
)
def test_create_variables_inside_tf_function_builds_every_network(build):
    net = build()

    @tf.function
    def build_inside_a_trace():
        net.create_variables()  # lifted out of the trace by tf.init_scope
        return tf.constant(0)

    build_inside_a_trace()
    count = len(net.variables)
    assert count > 0 and all(isinstance(v, tf.Variable) for v in net.variables)
    net.create_variables()
    assert len(net.variables) == count


# --- ActorNetwork -----------------------------------------------------------------------


def _set_action_bias(layer, bias):
    kernel, layer_bias = layer.weights
    kernel.assign(tf.zeros_like(kernel))
    layer_bias.assign(tf.constant(bias, tf.float32))


def test_actor_network_scales_tanh_into_bounds_hand_checked():
    spec = BoundedTensorSpec((3,), tf.float32, minimum=[-1.0, 0.0, 10.0], maximum=[3.0, 1.0, 20.0])
    net = ActorNetwork(OBS, spec, fc_layer_params=(8,))
    # With a zero kernel the tanh input is the bias: tanh(atanh(t)) = t.
    t = np.array([0.5, -1.0 + 1e-7, 0.0])
    _set_action_bias(net._action_layers[0], np.arctanh(t))
    actions, _ = net(_obs(2))
    # min + (max - min) * (t + 1) / 2: [-1 + 4 * 0.75, 0 + 1 * ~0, 10 + 10 * 0.5]
    np.testing.assert_allclose(actions, [[2.0, 0.0, 15.0]] * 2, atol=1e-5)


def test_actor_network_outputs_stay_in_bounds_when_saturated():
    net = ActorNetwork(
        OBS,
        FLOAT_ACTION,
        fc_layer_params=(16,),
        last_kernel_initializer=tf_keras.initializers.RandomNormal(stddev=100.0),
    )
    actions = net(100.0 * _obs(64))[0].numpy()
    assert actions.min() >= -1.0 and actions.max() <= 3.0
    # Saturation reaches both ends: the scaling really maps onto [-1, 3].
    assert actions.min() < -0.99 and actions.max() > 2.99


def test_actor_network_nested_action_spec():
    spec = {
        "steer": BoundedTensorSpec((), tf.float32, -0.5, 0.5),
        "pedals": BoundedTensorSpec((2,), tf.float32, 0.0, 1.0),
    }
    net = ActorNetwork(OBS, spec, fc_layer_params=(8,))
    actions, _ = net(_obs(5))
    assert set(actions) == {"pedals", "steer"}
    assert actions["steer"].shape == (5,) and actions["pedals"].shape == (5, 2)
    # Default last layer (uniform +-0.003): actions start near the middle of the range.
    np.testing.assert_allclose(actions["pedals"], 0.5, atol=0.05)


def test_actor_network_refuses_unbounded_or_integer_specs():
    with pytest.raises(
        SpecError, match="ActorNetwork: action_spec/1 'x' must be a bounded float spec"
    ):
        ActorNetwork(OBS, (FLOAT_ACTION, ACTION_3))
    with pytest.raises(SpecError, match="must have finite bounds"):
        ActorNetwork(OBS, BoundedTensorSpec((), tf.float32, -np.inf, np.inf))


# --- ActorDistributionNetwork ---------------------------------------------------------


def test_actor_distribution_network_normal_parameters_hand_checked():
    net = ActorDistributionNetwork(OBS, FLOAT_ACTION, fc_layer_params=(8,))
    normal = net._projections[0]
    bias = np.array([0.3, -2.0, 0.0])
    _set_action_bias(normal._means, bias)
    distribution, _ = net(_obs(2))
    assert isinstance(distribution, tfp.distributions.Independent)
    assert distribution.event_shape == (3,) and distribution.batch_shape == (2,)
    expected_loc = 1.0 + 2.0 * np.tanh(bias)  # bounds [-1, 3]: middle 1, half-width 2
    np.testing.assert_allclose(distribution.distribution.loc, [expected_loc] * 2, atol=1e-6)
    np.testing.assert_allclose(distribution.distribution.scale, np.full((2, 3), math.log(2.0)))

    # log_prob sums the diagonal Normal's log-densities over the 3 action elements.
    x = np.array([[0.0, 1.0, 2.0], [2.5, -0.5, 0.1]], np.float32)
    scale = math.log(2.0)
    expected = np.sum(
        -0.5 * ((x - expected_loc) / scale) ** 2 - math.log(scale) - 0.5 * math.log(2 * math.pi),
        axis=-1,
    )
    np.testing.assert_allclose(distribution.log_prob(x), expected, rtol=1e-5)


def test_actor_distribution_network_state_dependent_std():
    net = ActorDistributionNetwork(
        OBS, FLOAT_ACTION, fc_layer_params=(8,), state_dependent_std=True
    )
    observation = _obs(3)
    hidden = _dense(net._encoder._fc_layers[0], observation, _relu)
    expected = _softplus(_dense(net._projections[0]._stds, hidden))
    np.testing.assert_allclose(net(observation)[0].distribution.scale, expected, rtol=1e-5)


def test_actor_distribution_network_categorical_is_unshifted():
    spec = BoundedTensorSpec((2,), tf.int32, minimum=-1, maximum=3)
    net = ActorDistributionNetwork(OBS, {"d": spec, "c": FLOAT_ACTION}, fc_layer_params=(8,))
    distributions, _ = net(_obs(4))
    categorical = distributions["d"]
    assert isinstance(categorical, tfp.distributions.Categorical)
    assert categorical.logits.shape == (4, 2, 5)  # 5 values: -1..3
    samples = categorical.sample(200, seed=1).numpy()
    assert samples.dtype == np.int32 and samples.min() == 0 and samples.max() == 4
    hidden = _dense(net._encoder._fc_layers[0], _obs(4), _relu)
    np.testing.assert_allclose(
        categorical.logits,
        _dense(net._projections[1]._layer, hidden).reshape(4, 2, 5),
        rtol=1e-5,
        atol=1e-6,
    )


def test_actor_distribution_network_parameters_in_tf_function_dynamic_batch():
    net = ActorDistributionNetwork(OBS, FLOAT_ACTION, fc_layer_params=(8,))

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32)])
    def parameters(observation):
        distribution = net(observation)[0].distribution
        return distribution.loc, distribution.scale

    loc, scale = parameters(_obs(6))
    assert loc.shape == (6, 3) and scale.shape == (6, 3)
    np.testing.assert_allclose(loc, net(_obs(6))[0].distribution.loc, rtol=1e-6)


# --- CriticNetwork --------------------------------------------------------------------


def test_critic_network_matches_numpy_forward_pass():
    net = CriticNetwork(
        (OBS, FLOAT_ACTION), observation_fc_layer_params=(6,), joint_fc_layer_params=(5,)
    )
    observation, action = _obs(3), _obs(3, seed=1, shape=(3,))
    values, _ = net((observation, action))
    assert values.shape == (3,)
    encoded = _dense(net._observation_encoder._fc_layers[0], observation, _relu)
    joint = _dense(net._joint_layers[0], np.concatenate([encoded, action], -1), _relu)
    np.testing.assert_allclose(values, _dense(net._value_layer, joint)[:, 0], rtol=1e-5, atol=1e-6)


# --- RNN networks ---------------------------------------------------------------------


def _random_state(net, batch, seed=3):
    rng = np.random.default_rng(seed)
    return tf.nest.map_structure(
        lambda s: tf.constant(rng.normal(size=(batch, *s.shape)).astype(np.float32)),
        net.state_spec,
    )


def test_q_rnn_network_state_spec_and_initial_state():
    net = QRnnNetwork(
        OBS, ACTION_3, lstm_size=(8, 6), input_fc_layer_params=(5,), output_fc_layer_params=()
    )
    assert tf.nest.map_structure(lambda s: s.shape.as_list(), net.state_spec) == (
        ([8], [8]),
        ([6], [6]),
    )

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32)])
    def initial(observation):
        return net.get_initial_state(tf.shape(observation)[0])

    state = initial(_obs(5))
    assert [s.shape for s in tf.nest.flatten(state)] == [(5, 8), (5, 8), (5, 6), (5, 6)]
    assert all(np.all(s.numpy() == 0) for s in tf.nest.flatten(state))


def test_q_rnn_network_stateful_call_requires_state():
    net = QRnnNetwork(OBS, ACTION_3, lstm_size=(4,))
    with pytest.raises(
        StructureError,
        match="network_state: expected a state like .* got an "
        r"empty state \(QRnnNetwork is stateful",
    ):
        net(_obs(2), np.zeros(2, np.int32))


def test_q_rnn_network_num_actions_mismatch():
    with pytest.raises(SpecError, match=r"QRnnNetwork: num_actions=4 but action_spec 'x' has 3"):
        QRnnNetwork(OBS, ACTION_3, num_actions=4)


@pytest.mark.parametrize("network_class", [QRnnNetwork, ActorDistributionRnnNetwork])
def test_rnn_resets_state_on_first_inside_the_call(network_class):
    spec = ACTION_3 if network_class is QRnnNetwork else FLOAT_ACTION
    net = network_class(
        OBS, spec, input_fc_layer_params=(8,), lstm_size=(6,), output_fc_layer_params=(7,)
    )
    observation = _obs(4)
    given = _random_state(net, 4)
    zeros = net.get_initial_state(4)
    step_type = np.array([FIRST, MID, FIRST, LAST], np.int32)
    all_mid = np.full(4, MID, np.int32)

    def output(out):
        return out.numpy() if network_class is QRnnNetwork else out.distribution.loc.numpy()

    mixed_out, mixed_state = net(observation, step_type, given)
    zero_out, zero_state = net(observation, all_mid, zeros)
    given_out, given_state = net(observation, all_mid, given)
    first = step_type == FIRST
    # The check can only fail if the given state matters at all.
    assert np.abs(output(zero_out) - output(given_out)).max() > 1e-4
    np.testing.assert_allclose(output(mixed_out)[first], output(zero_out)[first], atol=1e-6)
    np.testing.assert_allclose(output(mixed_out)[~first], output(given_out)[~first], atol=1e-6)
    for mixed, zero, kept in zip(
        tf.nest.flatten(mixed_state),
        tf.nest.flatten(zero_state),
        tf.nest.flatten(given_state),
        strict=True,
    ):
        np.testing.assert_allclose(mixed.numpy()[first], zero.numpy()[first], atol=1e-6)
        np.testing.assert_allclose(mixed.numpy()[~first], kept.numpy()[~first], atol=1e-6)


def test_lstm_step_matches_numpy_lstm_cell():
    net = QRnnNetwork(
        OBS, ACTION_3, input_fc_layer_params=(), lstm_size=(5,), output_fc_layer_params=()
    )
    cell = net._lstm._cells[0]
    kernel, recurrent, bias = (v.numpy() for v in cell.weights)
    observation = _obs(3)
    ((h0, c0),) = _random_state(net, 3)
    z = observation @ kernel + h0.numpy() @ recurrent + bias
    i, f, g, o = np.split(z, 4, axis=-1)  # Keras gate order: input, forget, cell, output
    c1 = _sigmoid(f) * c0.numpy() + _sigmoid(i) * np.tanh(g)
    h1 = _sigmoid(o) * np.tanh(c1)
    q_values, ((h, c),) = net(observation, np.full(3, MID), ((h0, c0),))
    np.testing.assert_allclose(h, h1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(c, c1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(q_values, _dense(net._q_layer, h1), rtol=1e-5, atol=1e-6)


def test_rnn_sequence_equals_step_by_step():
    net = QRnnNetwork(
        OBS, ACTION_3, input_fc_layer_params=(8,), lstm_size=(6,), output_fc_layer_params=()
    )
    batch, steps = 2, 4
    observations = _obs(batch * steps).reshape(batch, steps, 4)
    step_types = np.array([[FIRST, MID, LAST, FIRST], [MID, MID, FIRST, MID]], np.int32)
    state = _random_state(net, batch)
    sequence_out, sequence_state = net(observations, step_types, state)
    assert sequence_out.shape == (batch, steps, 3)
    outputs = []
    for t in range(steps):
        out, state = net(observations[:, t], step_types[:, t], state)
        outputs.append(out.numpy())
    np.testing.assert_allclose(sequence_out, np.stack(outputs, 1), atol=1e-5)
    for a, b in zip(tf.nest.flatten(sequence_state), tf.nest.flatten(state), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)

    # The same unroll traced with dynamic batch and time dimensions.
    @tf.function(
        input_signature=[
            tf.TensorSpec([None, None, 4], tf.float32),
            tf.TensorSpec([None, None], tf.int32),
            tf.nest.map_structure(
                lambda s: tf.TensorSpec([None, *s.shape], s.dtype), net.state_spec
            ),
        ]
    )
    def unroll(observations, step_types, state):
        return net(observations, step_types, state)

    traced_out, _ = unroll(observations, step_types, _random_state(net, batch))
    np.testing.assert_allclose(traced_out, sequence_out, atol=1e-5)


# --- copies and checkpoints -----------------------------------------------------------


def test_copy_gives_new_variables_with_same_shapes():
    net = QNetwork(OBS, ACTION_3, fc_layer_params=(8, 6))
    copy = net.copy()
    assert type(copy) is QNetwork and copy.num_actions == 3
    assert [v.shape for v in copy.variables] == [v.shape for v in net.variables]
    assert not {id(v) for v in copy.variables} & {id(v) for v in net.variables}
    # Fresh initialization, so the copy computes something else until updated.
    assert np.abs(copy(_obs(2))[0] - net(_obs(2))[0]).max() > 1e-6
    smaller = net.copy(fc_layer_params=(5,))
    assert [v.shape.as_list() for v in smaller.trainable_variables][:2] == [[4, 5], [5]]


def test_copy_clones_preprocessing_layers():
    spec = {"a": TensorSpec((2,), tf.float32), "b": TensorSpec((3,), tf.float32)}
    net = ActorDistributionRnnNetwork(
        spec,
        FLOAT_ACTION,
        preprocessing_layers={"a": tf_keras.layers.Dense(4), "b": None},
        input_fc_layer_params=(8,),
        lstm_size=(4,),
        output_fc_layer_params=(),
    )
    copy = net.copy()
    assert len(copy.variables) == len(net.variables)
    assert not {id(v) for v in copy.variables} & {id(v) for v in net.variables}


def test_checkpoint_round_trip_into_a_copy(tmp_path):
    net = ActorDistributionNetwork(OBS, FLOAT_ACTION, fc_layer_params=(8,))
    net._projections[0]._std_bias.assign([0.1, 0.2, 0.3])  # a non-initial value to restore
    observation = _obs(3)
    expected = net(observation)[0]
    path = tf.train.Checkpoint(net=net).write(str(tmp_path / "ckpt"))
    restored = net.copy()
    tf.train.Checkpoint(net=restored).read(path).assert_consumed()
    got = restored(observation)[0]
    np.testing.assert_allclose(got.distribution.loc, expected.distribution.loc, rtol=1e-6)
    np.testing.assert_allclose(
        got.distribution.scale, _softplus(np.array([[0.1, 0.2, 0.3]] * 3)), rtol=1e-5
    )


# --- dict observations and preprocessing ------------------------------------------------

DICT_OBS = {
    "velocity": TensorSpec((2,), tf.float32),
    "image": TensorSpec((3, 3), tf.float32),
    "count": TensorSpec((), tf.int32),
}


def _dict_obs(batch):
    rng = np.random.default_rng(7)
    return {
        "velocity": rng.normal(size=(batch, 2)).astype(np.float32),
        "image": rng.normal(size=(batch, 3, 3)).astype(np.float32),
        "count": rng.integers(0, 5, size=(batch,)).astype(np.int32),
    }


def test_dict_observation_default_combiner_flattens_and_concatenates_sorted_keys():
    net = QNetwork(DICT_OBS, ACTION_3, fc_layer_params=(6,))
    observation = _dict_obs(4)
    flat = np.concatenate(
        [
            observation["count"].reshape(4, 1).astype(np.float32),  # keys sorted: count,
            observation["image"].reshape(4, 9),  # image,
            observation["velocity"],  # velocity
        ],
        axis=-1,
    )
    hidden = _dense(net._encoder._fc_layers[0], flat, _relu)
    np.testing.assert_allclose(
        net(observation)[0], _dense(net._q_layer, hidden), rtol=1e-5, atol=1e-6
    )


def test_dict_observation_with_preprocessing_layers_and_combiner():
    layers = {
        "velocity": tf_keras.layers.Dense(3),
        "image": tf_keras.Sequential([tf_keras.layers.Flatten(), tf_keras.layers.Dense(4)]),
        "count": tf_keras.layers.Embedding(5, 2),
    }
    for network_class, spec in [(QNetwork, ACTION_3), (ActorDistributionNetwork, FLOAT_ACTION)]:
        net = network_class(
            DICT_OBS,
            spec,
            fc_layer_params=(6,),
            preprocessing_layers={
                k: tf_keras.layers.deserialize(tf_keras.layers.serialize(v))
                for k, v in layers.items()
            },
            preprocessing_combiner=tf_keras.layers.Concatenate(axis=-1),
        )
        out, _ = net(_dict_obs(5))
        assert (out.shape if network_class is QNetwork else out.batch_shape) == (
            (5, 3) if network_class is QNetwork else (5,)
        )
        assert net._encoder._fc_layers[0].kernel.shape == (3 + 4 + 2, 6)
        # Preprocessing variables belong to the network: dense 2 + sequential 2 + embedding 1,
        # then fc 2, then q_values 2 or (loc 2 + std_bias 1).
        assert len(net.trainable_variables) == 5 + 2 + (2 if network_class is QNetwork else 3)
    rnn = QRnnNetwork(
        DICT_OBS,
        ACTION_3,
        preprocessing_layers={"velocity": tf_keras.layers.Dense(3), "image": None, "count": None},
        lstm_size=(4,),
    )
    out, _ = rnn(_dict_obs(2), np.zeros(2, np.int32), rnn.get_initial_state(2))
    assert out.shape == (2, 3)


def test_preprocessing_layers_must_match_the_observation():
    with pytest.raises(
        StructureError,
        match=r"QNetwork.preprocessing_layers: expected keys "
        r"\['count', 'image', 'velocity'\], got missing \['image'\]",
    ):
        QNetwork(
            DICT_OBS,
            ACTION_3,
            name="QNetwork",
            preprocessing_layers={"velocity": None, "count": None},
        )


def test_keras3_layers_are_refused_with_a_clear_message():
    import keras  # Keras 3: tf.keras in TF 2.21

    with pytest.raises(
        UnsupportedError,
        match="preprocessing_layers/velocity: got a Keras 3 layer .*use tf_keras layers",
    ):
        QNetwork(
            DICT_OBS,
            ACTION_3,
            preprocessing_layers={"velocity": keras.layers.Dense(2), "image": None, "count": None},
        )


# --- export-friendliness: tf2onnx + onnxruntime -----------------------------------------


def _onnx_session(function, signature):
    import onnxruntime
    import tf2onnx

    model, _ = tf2onnx.convert.from_function(function, input_signature=signature, opset=17)
    return onnxruntime.InferenceSession(
        model.SerializeToString(), providers=["CPUExecutionProvider"]
    )


def test_q_and_rnn_networks_convert_to_onnx_and_match_tf():
    q_net = QNetwork(DICT_OBS, ACTION_3, fc_layer_params=(8,))
    q_signature = [
        {
            k: tf.TensorSpec([None, *s.shape], s.dtype, name=f"observation/{k}")
            for k, s in DICT_OBS.items()
        }
    ]

    @tf.function(input_signature=q_signature)
    def q_values(observation):
        return {"q_values": q_net(observation)[0]}

    session = _onnx_session(q_values, q_signature)
    for batch in (1, 5):
        observation = _dict_obs(batch)
        (got,) = session.run(None, {f"observation/{k}": v for k, v in observation.items()})
        np.testing.assert_allclose(got, q_values(observation)["q_values"], atol=1e-5)

    rnn = QRnnNetwork(
        OBS, ACTION_3, input_fc_layer_params=(8,), lstm_size=(6,), output_fc_layer_params=(5,)
    )
    rnn_signature = [
        tf.TensorSpec([None, 4], tf.float32, name="observation"),
        tf.TensorSpec([None], tf.int32, name="step_type"),
        tf.TensorSpec([None, 6], tf.float32, name="policy_state/0/0"),
        tf.TensorSpec([None, 6], tf.float32, name="policy_state/0/1"),
    ]

    @tf.function(input_signature=rnn_signature)
    def rnn_step(observation, step_type, h, c):
        q, ((h_next, c_next),) = rnn(observation, step_type, ((h, c),))
        return {"q_values": q, "next_state/0/0": h_next, "next_state/0/1": c_next}

    session = _onnx_session(rnn_step, rnn_signature)
    names = [o.name for o in session.get_outputs()]
    for batch in (1, 4):
        ((h, c),) = _random_state(rnn, batch)
        inputs = [_obs(batch), np.resize(np.array([FIRST, MID, LAST], np.int32), batch), h, c]
        got = session.run(
            None,
            dict(
                zip([s.name for s in rnn_signature], [np.asarray(x) for x in inputs], strict=True)
            ),
        )
        expected = rnn_step(*inputs)
        for name, value in zip(names, got, strict=True):
            np.testing.assert_allclose(value, expected[name], atol=1e-5)
