"""Image policies end to end: conv Q and conv actor networks on rendered CartPole frames,
exported to SavedModel, ONNX and LiteRT with parity, run on both TF-free backends and
quantized with the agreement measured on real frames.

The frames are CartPole-v1's own renderings (``render_mode="rgb_array"``), downsampled to
20 x 30 x 3 uint8: a real task's images, a few milliseconds each, no download. Training
an image policy by RL takes minutes, so the networks are fitted for a few seconds on a
known good decision instead (push towards the side the pole leans to, read off the
environment's state): their actions then depend on the image, and an agreement of 99%
between float and quantized policies means something (an untrained network picks one
action for nearly every frame). The fixtures are shared: one rendering, one fit and one
export per policy for the whole module.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import tensorflow as tf
import tf_keras
from typer.testing import CliRunner

from exporters import export, parity
from runtimes import load_policy
from toolkit.cli import app
from toolkit.networks.actor_network import ActorNetwork
from toolkit.networks.q_network import QNetwork
from toolkit.policies import actor_policy, greedy_policy, q_policy
from toolkit.specs import tensor_spec
from toolkit.trajectories import time_step as ts

pytestmark = pytest.mark.slow

FRAMES = 160
STRIDE = 20  # 400 x 600 renderings -> 20 x 30
CONV = [(8, 4, 2), (8, 3, 2)]


@pytest.fixture(scope="module")
def rendered() -> tuple[np.ndarray, np.ndarray]:
    """``(frames, pole angles)`` of random-action CartPole episodes."""
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # pygame draws off screen
    import gymnasium as gym

    env = gym.make("CartPole-v1", render_mode="rgb_array")
    rng = np.random.default_rng(0)
    env.reset(seed=0)
    frames, angles = [], []
    for _ in range(FRAMES):
        frames.append(_downsample(env.render()))
        angles.append(float(env.unwrapped.state[2]))
        _, _, terminated, truncated, _ = env.step(int(rng.integers(2)))
        if terminated or truncated:
            env.reset(seed=int(rng.integers(1 << 30)))
    env.close()
    return np.stack(frames), np.asarray(angles, np.float32)


def _downsample(frame: np.ndarray) -> np.ndarray:
    """STRIDE x STRIDE blocks averaged: the thin pole stays visible as a shade (every
    STRIDE-th pixel alone misses it in most frames)."""
    height, width, channels = frame.shape
    blocks = frame.reshape(height // STRIDE, STRIDE, width // STRIDE, STRIDE, channels)
    return blocks.mean(axis=(1, 3)).round().astype(np.uint8)


def _observation_spec(frames: np.ndarray) -> tf.TensorSpec:
    return tensor_spec.BoundedTensorSpec(frames.shape[1:], tf.uint8, 0, 255, name="pixels")


def _fit(network, frames: np.ndarray, loss_fn, steps: int = 200) -> None:
    # 200 steps at 1e-2: the Q fit then gets about 97% of the frames right (100 at 3e-3
    # stayed at the majority action, a quarter of the frames lean right), ~4 s of CPU.
    # One traced step (tf.function): the same updates as eager ones, without eager's
    # per-op dispatch on each of the 200 steps.
    optimizer = tf_keras.optimizers.Adam(1e-2)
    pixels = tf.constant(frames)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            output, _ = network(pixels)
            loss = loss_fn(output)
        variables = network.trainable_variables
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))

    for _ in range(steps):
        step()


@pytest.fixture(scope="module")
def bundles(rendered, tmp_path_factory) -> dict[str, tuple]:
    """The two image policies, each fitted and exported once: name -> (policy, bundle)."""
    frames, angles = rendered
    # Initial weights seeded: a fit from an unlucky start can leave one action everywhere.
    tf_keras.utils.set_random_seed(0)
    spec = _observation_spec(frames)
    time_step_spec = ts.time_step_spec(spec)
    scale = tf_keras.layers.Rescaling(1 / 255.0)
    root = tmp_path_factory.mktemp("image_policies")

    push = tensor_spec.BoundedTensorSpec((), tf.int64, 0, 1, name="push")
    q_net = QNetwork(
        spec,
        push,
        preprocessing_layers=scale,
        conv_layer_params=CONV,
        fc_layer_params=(16,),
    )
    labels = tf.constant((angles > 0).astype(np.int64))
    _fit(
        q_net,
        frames,
        lambda q: tf.reduce_mean(
            tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=q)
        ),
    )
    q = greedy_policy.GreedyPolicy(q_policy.QPolicy(time_step_spec, push, q_net))

    force = tensor_spec.BoundedTensorSpec((1,), tf.float32, -1.0, 1.0, name="force")
    actor_net = ActorNetwork(
        spec,
        force,
        preprocessing_layers=tf_keras.layers.Rescaling(1 / 255.0),
        conv_layer_params=CONV,
        fc_layer_params=(16,),
    )
    targets = tf.constant(np.clip(angles * 8.0, -0.9, 0.9)[:, None])
    _fit(actor_net, frames, lambda a: tf.reduce_mean(tf.square(a - targets)))
    actor = actor_policy.ActorPolicy(time_step_spec, force, actor_net)

    out = {}
    for name, policy in (("q", q), ("actor", actor)):
        path = export.export_policy(policy, root / name, formats=("saved_model", "onnx", "litert"))
        out[name] = (policy, path)
    return out


def _time_step(frames: np.ndarray):
    return ts.restart(frames, batch_size=len(frames))


@pytest.mark.parametrize("name", ["q", "actor"])
def test_conv_policy_bundle_has_parity_and_runs_without_tensorflow(bundles, rendered, name):
    policy, path = bundles[name]
    frames, _ = rendered
    report = parity.verify(path, num_samples=16, policy=policy)
    assert report.ok, str(report)
    expected = policy.action(_time_step(frames)).action.numpy()
    if name == "q":  # the fit made the decision depend on the image
        assert 0.1 < expected.mean() < 0.9
    for backend in ("onnx", "litert"):
        actions = load_policy(path, backend=backend).action(_time_step(frames)).action
        if name == "q":
            np.testing.assert_array_equal(actions, expected)
        else:
            np.testing.assert_allclose(actions, expected, atol=1e-5)


def _agreement(float_path, quantized_path, frames, name) -> float:
    want = load_policy(float_path, backend="onnx").action(_time_step(frames)).action
    got = load_policy(quantized_path, backend="onnx").action(_time_step(frames)).action
    if name == "q":
        return float(np.mean(want == got))
    return float(np.mean(np.abs(want - got) <= 0.05))


@pytest.mark.parametrize("name", ["q", "actor"])
def test_conv_policy_quantizes_with_agreement_on_rendered_frames(bundles, rendered, tmp_path, name):
    _, path = bundles[name]
    frames, _ = rendered
    states = tmp_path / "frames.npz"
    np.savez(states, observation=frames)
    output = tmp_path / "quantized"
    result = CliRunner().invoke(
        app, ["quantize", str(path), str(output), "--observations", str(states)]
    )
    assert result.exit_code == 0, result.output
    assert "passed the agreement gates" in result.output
    # Our own count, on the half of the frames quantize measured on (the second half).
    assert _agreement(path, output, frames[FRAMES // 2 :], name) >= 0.99
